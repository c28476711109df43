"""The tool registry: which tools a MAGE reply may call, their argument schemas and executors.

`TOOLS` holds the three Any-to-Any tools of the synthetic world (image_generation,
image_editing, text_to_speech), each with a JSON schema for its arguments (checked with
`jsonschema`) and the built-in world executor. `load_tools(config)` swaps executors, or adds
tools, from a YAML file or a dict::

    tools:
      image_generation:
        executor: {type: http, url: "http://127.0.0.1:8000/generate", timeout_s: 120}
      text_to_speech:
        executor: {type: shell, command: "espeak-ng -w {output} {text}"}
      image_captioning:            # a new tool needs description, parameters, media_type
        description: "..."
        parameters: {type: object, properties: {...}, required: [...]}
        media_type: "text/plain"
        executor: {type: callable, target: "mypackage.tools:caption"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from PIL import Image

from mage.tools.errors import SchemaViolation, ToolExecutionError, UnknownTool
from mage.tools.executors import WORLD_EXECUTORS, Executor, ToolRequest, ToolResult, build_executor


def _text_schema(key: str, what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {key: {"type": "string", "minLength": 1, "description": what}},
        "required": [key],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Tool:
    """A callable tool: name, what it does, JSON schema of its arguments, and its executor."""

    name: str
    description: str
    parameters: dict[str, Any] = field(hash=False)
    executor: Executor | None = field(default=None, hash=False, compare=False)
    media_type: str = "image/png"  # what the artefact is
    takes_image: bool = False  # the request's input picture is part of the call

    def validate(self, arguments: Any) -> None:
        """Raise SchemaViolation naming each offending field if ``arguments`` do not fit."""
        validator = jsonschema.Draft202012Validator(self.parameters)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [
                f"arguments{''.join(f'.{p}' for p in e.absolute_path)}: {e.message}" for e in errors
            ]
            keys = sorted(self.parameters.get("properties", {}))
            raise SchemaViolation(
                f"tool {self.name!r} got invalid arguments ({'; '.join(lines)}); "
                f"expected an object with keys {keys} (required {self.parameters.get('required', [])})"
            )

    def run(
        self,
        arguments: dict[str, Any],
        image: Image.Image | None = None,
        context: dict[str, Any] | None = None,
    ) -> ToolResult:
        """Validate the arguments and run the executor."""
        self.validate(arguments)
        if self.executor is None:
            raise ToolExecutionError(f"tool {self.name!r} has no executor configured")
        if self.takes_image and image is None and not (context or {}).get("scene"):
            raise ToolExecutionError(f"tool {self.name!r} needs an input image")
        request = ToolRequest(
            self.name, dict(arguments), self.media_type, image, dict(context or {})
        )
        return self.executor(request)


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool(
            "image_generation",
            "Draw a new picture from a description of its objects.",
            _text_schema("prompt", "what to draw, e.g. 'a small green triangle at the top right'"),
            WORLD_EXECUTORS["image_generation"],
        ),
        Tool(
            "image_editing",
            "Change the input picture as instructed.",
            _text_schema("instruction", "the edit, e.g. 'make the red circle blue'"),
            WORLD_EXECUTORS["image_editing"],
            takes_image=True,
        ),
        Tool(
            "text_to_speech",
            "Say a text out loud (returns a WAV).",
            _text_schema("text", "the words to say"),
            WORLD_EXECUTORS["text_to_speech"],
            media_type="audio/wav",
        ),
    ]
}
TOOL_NAMES = tuple(TOOLS)


def get_tool(name: str, tools: Mapping[str, Tool] | None = None) -> Tool:
    tools = TOOLS if tools is None else tools
    if name not in tools:
        raise UnknownTool(f"unknown tool {name!r}; known tools: {sorted(tools)}")
    return tools[name]


def execute(
    call: Any,
    tools: Mapping[str, Tool] | None = None,
    image: Image.Image | None = None,
    context: dict[str, Any] | None = None,
) -> ToolResult:
    """Run a parsed `ToolCall` (anything with ``.name`` and ``.arguments``)."""
    return get_tool(call.name, tools).run(call.arguments, image, context)


def load_tools(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Tool]:
    """The default registry with the overrides and additions of a YAML file or mapping."""
    tools = dict(TOOLS)
    if config is None:
        return tools
    where = "tool config"
    if isinstance(config, (str, Path)):
        path, where = Path(config), str(config)
        if not path.is_file():
            raise ToolExecutionError(f"tool config file not found: {path}")
        config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, Mapping) or set(config) - {"tools"}:
        raise ToolExecutionError(f"{where}: expected a mapping with one key 'tools'")
    entries = config.get("tools") or {}
    if not isinstance(entries, Mapping):
        raise ToolExecutionError(f"{where}: 'tools' must map tool names to settings")
    allowed = {"description", "parameters", "media_type", "takes_image", "executor"}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping) or set(entry) - allowed:
            bad = sorted(set(entry) - allowed) if isinstance(entry, Mapping) else entry
            raise ToolExecutionError(
                f"{where}: tools.{name}: unknown settings {bad}; allowed {sorted(allowed)}"
            )
        base = tools.get(name)
        if base is None:
            missing = [k for k in ("description", "parameters", "executor") if k not in entry]
            if missing:
                raise ToolExecutionError(f"{where}: new tool tools.{name} needs {missing}")
            base = Tool(name, entry["description"], entry["parameters"])
        fields = {k: v for k, v in entry.items() if k != "executor"}
        if "parameters" in fields:
            try:
                jsonschema.Draft202012Validator.check_schema(fields["parameters"])
            except jsonschema.SchemaError as err:
                raise ToolExecutionError(
                    f"{where}: tools.{name}.parameters is not a JSON schema: {err.message}"
                ) from None
        if "executor" in entry:
            keys = tuple((fields.get("parameters") or base.parameters).get("properties", {}))
            fields["executor"] = build_executor(entry["executor"], name, keys)
        tools[name] = replace(base, **fields)
    return tools
