"""Tool metrics on hand-made replies: perfect, wrong tool, malformed, half right, reworded."""

from __future__ import annotations

import json

import pytest

from mage.tools.data import generate_world_tool_data
from mage.tools.metrics import (
    ITEM_COLUMNS,
    METRICS,
    SCORE_COLUMNS,
    evaluate_tools,
    score_item,
    score_tool_predictions,
    token_f1,
)
from mage.tools.parser import format_tool_call


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools_eval")
    paths = generate_world_tool_data(root, seed=3, n_train=0, n_eval=24)
    return root, paths["eval"], json.loads(paths["eval"].read_text())


def gold(record) -> str:
    return record["conversations"][1]["value"]


def first(records, kind):
    return next(r for r in records if r["tool_target"]["kind"] == kind)


def test_token_f1():
    assert token_f1("a red circle", "a red circle") == 1.0
    assert token_f1("a blue circle", "a red circle") == pytest.approx(2 / 3)
    assert token_f1("", "a red circle") == 0.0
    assert token_f1("square", "a red circle") == 0.0


def test_perfect_replies_score_one_everywhere(eval_set):
    _, _, records = eval_set
    scores, items = score_tool_predictions(records, [gold(r) for r in records])
    assert list(scores.columns) == SCORE_COLUMNS and list(items.columns) == ITEM_COLUMNS
    assert set(scores["benchmark"]) == {"tools"} and set(scores["metric"]) == set(METRICS)
    tool_names = {"image_generation", "image_editing", "text_to_speech"}
    phrasings = {"phrasing=seen", "phrasing=unseen"}
    assert set(scores["category"]) == {"all", *tool_names, *phrasings}
    assert (scores["value"] == 1.0).all()
    headline = scores[scores.category == "all"]
    assert (headline["n"] == len(records)).all()
    per_tool = scores[scores.category.isin(tool_names) & (scores.metric == "parse_rate")]
    assert per_tool["n"].sum() == len(records)
    per_phrasing = scores[scores.category.isin(phrasings) & (scores.metric == "parse_rate")]
    assert per_phrasing["n"].sum() == len(records)
    assert items["correct"].all() and len(items) == len(records)


def test_seen_and_unseen_phrasings_are_scored_apart(eval_set):
    _, _, records = eval_set
    # a model that only knows the training phrasings: right on seen, no call on unseen
    replies = [
        gold(r) if r["tool_target"]["phrasing"] == "seen" else "I do not know." for r in records
    ]
    scores, _ = score_tool_predictions(records, replies)
    name = scores[scores.metric == "tool_name_accuracy"].set_index("category")["value"]
    assert name["phrasing=seen"] == 1.0 and name["phrasing=unseen"] == 0.0
    unseen = sum(r["tool_target"]["phrasing"] == "unseen" for r in records)
    assert name["all"] == pytest.approx(1 - unseen / len(records))


def test_wrong_tool_malformed_and_half_right(eval_set):
    _, _, records = eval_set
    generation = first(records, "generation")
    prompt = generation["tool_target"]["arguments"]["prompt"]
    wrong_tool = score_item(generation, format_tool_call("text_to_speech", {"text": prompt}))
    assert wrong_tool == {
        "parse_rate": 1.0,
        "tool_name_accuracy": 0.0,
        "argument_exact_match": 0.0,
        "argument_f1": 0.0,
        "round_trip_fidelity": 0.0,
    }
    malformed = score_item(generation, gold(generation)[:-5])  # cut off before </tool_call>
    assert set(malformed.values()) == {0.0}
    colour = next(c for c in ("red", "green", "blue") if c in prompt.split())
    other = "yellow" if colour != "yellow" else "purple"
    changed = prompt.replace(colour, other, 1)
    half = score_item(generation, format_tool_call("image_generation", {"prompt": changed}))
    assert half["parse_rate"] == half["tool_name_accuracy"] == 1.0
    assert half["argument_exact_match"] == half["round_trip_fidelity"] == 0.0
    assert 0.5 < half["argument_f1"] < 1.0
    bad_args = score_item(
        generation,
        '<tool_call>{"name": "image_generation", "arguments": {"prompt": 7}}</tool_call>',
    )
    assert (bad_args["parse_rate"], bad_args["tool_name_accuracy"]) == (0.0, 1.0)
    # arguments that are not an object: the name still counts (and parses for none else)
    text_args = score_item(
        generation, '<tool_call>{"name": "image_generation", "arguments": "hi"}</tool_call>'
    )
    assert (text_args["parse_rate"], text_args["tool_name_accuracy"]) == (0.0, 1.0)
    # the first call is scored: a malformed one after it does not undo it
    trailing = score_item(generation, gold(generation) + '<tool_call>{"name": oops}</tool_call>')
    assert trailing == score_item(generation, gold(generation))


def test_reworded_but_equivalent_call_is_faithful(eval_set):
    _, _, records = eval_set
    edit = first(records, "edit")
    instruction = edit["tool_target"]["arguments"]["instruction"]
    reworded = "please " + instruction.replace("make ", "turn ", 1) + " in this picture"
    scores = score_item(
        edit, "Sure. " + format_tool_call("image_editing", {"instruction": reworded})
    )
    assert scores["argument_exact_match"] == 0.0
    assert scores["round_trip_fidelity"] == 1.0


def test_evaluate_tools_runs_a_model_in_batches(eval_set):
    root, eval_json, records = eval_set
    questions = [r["conversations"][0]["value"].removeprefix("<image>\n") for r in records]

    class ReplayModel:  # replays the gold replies in order, wrong on every third of a batch
        calls: list = []
        cursor = 0

        def generate(self, images, batch_questions, max_new_tokens):
            self.calls.append((len(batch_questions), max_new_tokens))
            replies = []
            for i, (image, question) in enumerate(zip(images, batch_questions)):
                record = records[self.cursor]
                assert question == questions[self.cursor] and "<image>" not in question
                assert (image is not None) == ("image" in record)
                assert image is None or image.size == (64, 64)
                replies.append(gold(record) if i % 3 else "no idea")
                self.cursor += 1
            return replies

    model = ReplayModel()
    scores, items = evaluate_tools(model, eval_json, root, batch_size=5, max_new_tokens=40)
    assert model.calls == [(5, 40)] * 4 + [(4, 40)]
    parse_rate = scores.query("metric == 'parse_rate' and category == 'all'")["value"].item()
    expected = 1 - sum(1 for i in range(len(records)) if i % 5 % 3 == 0) / len(records)
    assert parse_rate == pytest.approx(expected)
    assert items["correct"].mean() == pytest.approx(expected)


def test_missing_target_is_a_clear_error(eval_set):
    _, _, records = eval_set
    record = {k: v for k, v in records[0].items() if k != "tool_target"}
    with pytest.raises(ValueError, match="no 'tool_target'"):
        score_tool_predictions([record], [gold(records[0])])
