"""The world tokenizer: deterministic, exact round trip for all world text and tool calls."""

from __future__ import annotations

import json

import datasets
from transformers import AutoTokenizer

from mage.template import get_template
from mage.world.vocab import TOOL_ARGUMENT_KEYS, TOOL_NAMES, TOOL_WORDS, world_tokenizer


def _world_texts(world) -> list[str]:
    texts = []
    for path in (world.stage1, world.stage2):
        for record in json.loads(path.read_text()):
            texts += [turn["value"] for turn in record["conversations"]]
            template = get_template("world")
            texts.append("".join(piece for piece, _ in template.segments(record["conversations"])))
    # the benchmark columns lmms-eval puts into prompts or compares with answers
    shown = {"question", "answer", "hint", "A", "B", "C", "D", "choice_a", "choice_b"}
    shown |= {"choice_c", "choice_d"}
    for name in ("mme", "mmbench", "seedbench"):
        split = next(iter(datasets.load_from_disk(str(world.bench[name])).values()))
        for row in split.remove_columns("image").to_list():
            texts += [v for k, v in row.items() if k in shown and isinstance(v, str)]
    return texts


def _round_trips(tok, text: str) -> bool:
    ids = tok.encode(text, add_special_tokens=False)
    return tok.unk_token_id not in ids and tok.decode(ids) == text


def test_every_world_text_round_trips_without_unknown_words(test_world):
    tok = world_tokenizer()
    texts = _world_texts(test_world)
    assert len(texts) > 1000
    bad = [t for t in texts if not _round_trips(tok, t)]
    assert not bad, bad[:5]


def test_tool_calls_round_trip():
    tok = world_tokenizer()
    calls = [
        {
            "name": "image_generation",
            "arguments": {"prompt": "a small green triangle at the top right"},
        },
        {"name": "image_editing", "arguments": {"instruction": "turn the red circle blue"}},
        {"name": "text_to_speech", "arguments": {"text": "There is a large purple cross."}},
    ]
    for call in calls:
        text = f"<tool_call>{json.dumps(call)}</tool_call>"
        assert _round_trips(tok, text), text
        tokens = tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
        assert tokens[0] == "<tool_call>" and tokens[-1] == "</tool_call>"
    for word in (*TOOL_NAMES, *TOOL_ARGUMENT_KEYS, *TOOL_WORDS):
        assert _round_trips(tok, f"please {word} it"), word
    assert _round_trips(tok, "Draw me a picture of a red square in the upper left corner.")


def test_unknown_words_become_unk_and_spacing_is_kept():
    tok = world_tokenizer()
    assert tok.unk_token_id in tok.encode("a zebra", add_special_tokens=False)
    text = "USER: <image>\nIs there a red circle?  Yes\n\nNo"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_deterministic_and_reloadable(tmp_path):
    a, b = world_tokenizer(), world_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert (a.pad_token_id, a.eos_token_id) == (0, 3)
    a.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = 'USER: <image>\nWhat color is the circle? ASSISTANT: red</s><tool_call>{"name": "x"}'
    assert reloaded.encode(text) == a.encode(text)
    assert reloaded.decode(reloaded.encode(text)) == a.decode(a.encode(text))
    assert reloaded.eos_token == "</s>" and reloaded.pad_token == "<pad>"
