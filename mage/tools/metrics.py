"""Scoring tool calls: parse rate, tool-name accuracy, argument match and round-trip fidelity.

`evaluate_tools` runs a model over ``tools_eval.json`` and scores its replies;
`score_tool_predictions` is the pure scoring part (records + reply texts -> tables), so it
can be tested on hand-made replies. Per item:

- ``parse_rate``: the reply holds a well-formed call to a known tool with valid arguments;
- ``tool_name_accuracy``: the first call's name (even with bad arguments) is the target's;
- ``argument_exact_match``: right tool and every argument equal (whitespace-normalised);
- ``argument_f1``: per target argument, token F1 of the predicted value (0 if absent),
  averaged over the target's arguments;
- ``round_trip_fidelity``: the call, executed by the synthetic-world executor, does what was
  asked: for pictures, the rendered PNG is read back from its pixels (`scene_from_image`)
  and its (shape, color, size, quadrant) set must equal the target scene; for speech, the
  spoken text must equal the target text (the placeholder voice cannot be listened to).

Scores are ``[benchmark="tools", metric, category, value, n]`` with category ``"all"``, one
per target tool name, and ``phrasing=seen`` / ``phrasing=unseen``: requests worded as in
training, and in a held-out wording (`mage.tools.data.PHRASINGS`). Items are ``[benchmark,
item_id, category, correct]`` with ``correct`` = round-trip fidelity (the end-to-end outcome).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from mage.scores import ITEM_COLUMNS, SCORE_COLUMNS
from mage.tools.data import scene_from_records
from mage.tools.errors import ToolCallError, ToolExecutionError
from mage.tools.parser import ToolCall, parse_tool_calls
from mage.tools.registry import TOOLS, Tool, execute
from mage.tools.scene_pixels import scene_from_image
from mage.tools.scene_text import scene_key

PHRASING_PREFIX = "phrasing="
METRICS = (
    "parse_rate",
    "tool_name_accuracy",
    "argument_exact_match",
    "argument_f1",
    "round_trip_fidelity",
)


def normalize(value: Any) -> str:
    return " ".join(str(value).lower().split())


def token_f1(prediction: str, target: str) -> float:
    """SQuAD-style bag-of-tokens F1 between two strings (lower-cased, whitespace tokens)."""
    pred, gold = normalize(prediction).split(), normalize(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _fidelity(call: ToolCall, target: Mapping[str, Any]) -> float:
    if call.name == "text_to_speech":
        return float(normalize(call.arguments.get("text", "")) == normalize(target.get("text", "")))
    context = {"voice": "placeholder"}
    if target.get("input_scene") is not None:
        context["scene"] = scene_from_records(target["input_scene"])
    try:
        result = execute(call, TOOLS, context=context)
    except ToolExecutionError:
        return 0.0
    drawn = scene_from_image(result.image())
    return float(scene_key(drawn) == scene_key(scene_from_records(target["scene"])))


def score_item(
    record: Mapping[str, Any], reply: str, tools: Mapping[str, Tool] | None = None
) -> dict[str, float]:
    """The five metrics for one eval record (with ``tool_target``) and one model reply."""
    target = record.get("tool_target")
    if not isinstance(target, Mapping) or "name" not in target:
        raise ValueError(f"eval record {record.get('id')!r} has no 'tool_target' with a 'name'")
    scores = dict.fromkeys(METRICS, 0.0)
    try:
        loose = parse_tool_calls(reply, validate=False, first=True)[0]
    except ToolCallError:
        return scores
    scores["tool_name_accuracy"] = float(loose.name == target["name"])
    wanted = target["arguments"]
    if wanted:
        scores["argument_f1"] = sum(
            token_f1(loose.arguments.get(k, ""), v) for k, v in wanted.items()
        ) / len(wanted)
    try:
        call = parse_tool_calls(reply, tools, first=True)[0]
    except ToolCallError:
        return scores
    scores["parse_rate"] = 1.0
    if call.name != target["name"]:
        return scores
    same = {k: normalize(v) for k, v in call.arguments.items()} == {
        k: normalize(v) for k, v in wanted.items()
    }
    scores["argument_exact_match"] = float(same)
    scores["round_trip_fidelity"] = _fidelity(call, target)
    return scores


def score_tool_predictions(
    records: list[Mapping[str, Any]], replies: list[str], tools: Mapping[str, Tool] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, items) tables for eval records and the model's replies, in the same order."""
    if len(records) != len(replies):
        raise ValueError(f"{len(records)} eval records but {len(replies)} replies")
    rows = []
    for record, reply in zip(records, replies):
        target = record.get("tool_target")
        rows.append(
            {
                "item_id": str(record.get("id")),
                "category": target["name"] if isinstance(target, Mapping) else None,
                "phrasing": target.get("phrasing") if isinstance(target, Mapping) else None,
                **score_item(record, reply, tools),
            }
        )
    per_item = pd.DataFrame(rows, columns=["item_id", "category", "phrasing", *METRICS])
    scores = []
    groups = [("all", per_item)] + [(c, g) for c, g in per_item.groupby("category", sort=True)]
    groups += [
        (phrasing_category(p), g)
        for p, g in per_item.dropna(subset=["phrasing"]).groupby("phrasing", sort=True)
    ]
    for category, group in groups:
        for metric in METRICS:
            value = float(group[metric].mean()) if len(group) else float("nan")
            scores.append(("tools", metric, category, value, len(group)))
    items = per_item.assign(benchmark="tools", correct=per_item["round_trip_fidelity"] == 1.0)
    return pd.DataFrame(scores, columns=SCORE_COLUMNS), items[ITEM_COLUMNS].reset_index(drop=True)


def phrasing_category(phrasing: str) -> str:
    """The score category of a phrasing split: ``phrasing=seen`` / ``phrasing=unseen``."""
    return f"{PHRASING_PREFIX}{phrasing}"


def load_eval_records(eval_json: str | Path) -> list[dict[str, Any]]:
    path = Path(eval_json)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the tool eval JSON: {err}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a JSON list of records (tools_eval.json)")
    return records


def question(record: Mapping[str, Any]) -> str:
    """The user's turn without the ``<image>`` marker (the model inserts image tokens)."""
    human = next(t["value"] for t in record["conversations"] if t.get("from") in ("human", "user"))
    return human.replace("<image>", "").strip()


def evaluate_tools(
    model: Any,
    eval_json: str | Path,
    image_root: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    tools: Mapping[str, Tool] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate a reply per eval record with ``model.generate(images, questions,
    max_new_tokens)`` and score them. ``image_root`` defaults to the JSON's folder."""
    records = load_eval_records(eval_json)
    root = Path(image_root) if image_root is not None else Path(eval_json).parent
    replies: list[str] = []
    for start in range(0, len(records), max(1, batch_size)):
        batch = records[start : start + max(1, batch_size)]
        images = []
        for record in batch:
            if record.get("image"):
                path = root / record["image"]
                if not path.is_file():
                    raise FileNotFoundError(
                        f"image {path} of eval record {record.get('id')!r} not found; check image_root"
                    )
                images.append(Image.open(path).convert("RGB"))
            else:
                images.append(None)
        replies += model.generate(
            images, [question(r) for r in batch], max_new_tokens=max_new_tokens
        )
    return score_tool_predictions(records, replies, tools)
