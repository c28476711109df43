"""Reading tool calls out of a model reply, and writing them (the training targets).

A call is written ``<tool_call>{"name": "image_generation", "arguments": {"prompt": "..."}}
</tool_call>``, with any text around it. `parse_tool_calls` finds every such block, decodes the
JSON and checks it against the registry's schemas, raising one typed error per failure kind
(`NoToolCall`, `MalformedJSON`, `UnknownTool`, `SchemaViolation`; all `ToolCallError`).

Parsing is lenient about spacing only: a word-level tokenizer decodes ``"image_generation"``
as ``" image_generation "`` or ``" image _ generation "`` and ``<tool_call>`` as
``< tool_call >``; names and keys are stripped and string values have their whitespace
collapsed. Everything else (quotes, braces, the closing tag) must be there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mage.tools.errors import (
    CALL_FORMAT,
    MalformedJSON,
    NoToolCall,
    SchemaViolation,
    ToolCallError,
    UnknownTool,
)
from mage.tools.registry import Tool, get_tool

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_OPEN_RE = re.compile(r"<\s*tool\s*_\s*call\s*>")
_CLOSE_RE = re.compile(r"<\s*/\s*tool\s*_\s*call\s*>")
_CLOSE_AFTER_RE = re.compile(r"\s*<\s*/\s*tool\s*_\s*call\s*>")  # right after the JSON
_DECODER = json.JSONDecoder()


def _closing(text: str, start: int) -> re.Match | None:
    """The end of a call whose body starts at ``start``: the closing tag right after its JSON
    object when that parses (a string in it may hold the tag itself), else the first one."""
    try:
        _, end = _DECODER.raw_decode(text, len(text) - len(text[start:].lstrip()))
    except ValueError:
        return _CLOSE_RE.search(text, start)
    return _CLOSE_AFTER_RE.match(text, end) or _CLOSE_RE.search(text, start)


__all__ = [
    "ToolCall",
    "parse_tool_calls",
    "format_tool_call",
    "ToolCallError",
    "NoToolCall",
    "MalformedJSON",
    "UnknownTool",
    "SchemaViolation",
]


@dataclass(frozen=True)
class ToolCall:
    """One parsed call, with where it sat in the reply and the text before it."""

    name: str
    arguments: dict[str, Any] = field(hash=False)
    start: int = 0  # span of the whole <tool_call>...</tool_call> block in the reply
    end: int = 0
    before: str = ""  # reply text between the previous call (or the start) and this one


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The canonical text of a call (the form used in the training data)."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{OPEN}{body}{CLOSE}"


def _name(value: str) -> str:
    """Undo a word-level decode's spacing: ' image _ generation ' -> 'image_generation'."""
    return re.sub(r"\s*_\s*", "_", value.strip())


class _DuplicateKey(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (json keeps the last of a repeated key,
    so ``{"name": "a", "name": "b"}`` would be read as a call to b)."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _DuplicateKey(f"the key {repeated[0]!r} appears twice")
    return dict(pairs)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict):
        return _unique([(_name(str(k)), _clean(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _decode(body: str, index: int, strict: bool = True) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of one call body, or MalformedJSON saying what is wrong; not
    ``strict``: arguments that are not an object read as none (the name still counts)."""
    where = f"tool call {index + 1}"
    try:
        data = _clean(json.loads(body, object_pairs_hook=_unique))
    except json.JSONDecodeError as err:
        snippet = body.strip()[:120]
        raise MalformedJSON(
            f"{where}: invalid JSON ({err.msg} at char {err.pos}) in {snippet!r}; "
            f"write {CALL_FORMAT}"
        ) from None
    except _DuplicateKey as err:  # also keys that differ only by spacing (" name ")
        raise MalformedJSON(f"{where}: {err}; write {CALL_FORMAT}") from None
    if not isinstance(data, dict):
        raise MalformedJSON(
            f"{where}: expected a JSON object, got {type(data).__name__}; write {CALL_FORMAT}"
        )
    missing = [k for k in ("name", "arguments") if k not in data]
    extra = sorted(set(data) - {"name", "arguments"})
    if missing or extra:
        raise MalformedJSON(
            f"{where}: the object needs exactly the keys 'name' and 'arguments' "
            f"(missing {missing}, unexpected {extra}); write {CALL_FORMAT}"
        )
    if not isinstance(data["name"], str) or not data["name"]:
        raise MalformedJSON(f"{where}: 'name' must be a non-empty string, got {data['name']!r}")
    if not isinstance(data["arguments"], dict):
        if not strict:  # the name still counts
            return _name(data["name"]), {}
        raise SchemaViolation(
            f"{where} ({data['name']}): 'arguments' must be a JSON object, "
            f"got {type(data['arguments']).__name__}"
        )
    return _name(data["name"]), data["arguments"]


def parse_tool_calls(
    text: str, tools: Mapping[str, Tool] | None = None, validate: bool = True, first: bool = False
) -> list[ToolCall]:
    """Every ``<tool_call>`` block of ``text``, in order, checked against ``tools``' schemas.

    ``validate=False`` skips the registry (unknown names and bad arguments, even arguments
    that are not an object, pass): the metrics use it to score the tool name of a call whose
    arguments are wrong. ``first``: only the first call, whatever follows it (the metrics
    score the first call; a malformed later one does not undo it)."""
    calls: list[ToolCall] = []
    position = 0
    while True:
        opening = _OPEN_RE.search(text, position)
        if opening is None:
            stray = _CLOSE_RE.search(text, position)
            if stray is not None:
                raise MalformedJSON(
                    f"'{CLOSE}' at char {stray.start()} without an opening '{OPEN}'"
                )
            break
        closing = _closing(text, opening.end())
        if closing is None:
            raise MalformedJSON(
                f"tool call {len(calls) + 1}: '{OPEN}' at char {opening.start()} is never closed "
                f"with '{CLOSE}' (reply cut off? raise max_new_tokens)"
            )
        nested = _OPEN_RE.search(text, opening.end(), closing.start())
        if nested is not None:
            raise MalformedJSON(
                f"tool call {len(calls) + 1}: '{OPEN}' opened twice before '{CLOSE}'"
            )
        name, arguments = _decode(text[opening.end() : closing.start()], len(calls), validate)
        if validate:
            tool = get_tool(name, tools)
            try:
                tool.validate(arguments)
            except SchemaViolation as err:
                raise SchemaViolation(f"tool call {len(calls) + 1}: {err}") from None
        before = text[position : opening.start()]
        calls.append(ToolCall(name, arguments, opening.start(), closing.end(), before))
        position = closing.end()
        if first:
            break
    if not calls:
        raise NoToolCall(
            f"no tool call in the reply {text[:120]!r}; a call is written {CALL_FORMAT}"
        )
    return calls
