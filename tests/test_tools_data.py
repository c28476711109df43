"""Tool-calling data: LLaVA format, deterministic per seed, every call executable, and (once the
world tokenizer exists) every text encodable without <unk> and decoded back exactly."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from mage.tools.data import convert_captions_to_tool_samples, generate_world_tool_data
from mage.tools.parser import parse_tool_calls
from mage.world import vocab


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world_tools(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    paths = generate_world_tool_data(root, seed=11, n_train=40, n_eval=30)
    return root, paths


def test_layout_and_llava_format(world_tools):
    root, paths = world_tools
    assert paths == {
        "train": root / "tools_train.json",
        "eval": root / "tools_eval.json",
        "images": root / "tools_images",
    }
    train, evaluation = (json.loads(paths[s].read_text()) for s in ("train", "eval"))
    assert (len(train), len(evaluation)) == (40, 30)
    assert len({r["id"] for r in train + evaluation}) == 70
    for record in train + evaluation:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") == ("image" in record)
        if "image" in record:
            assert (root / record["image"]).is_file()
        (call,) = parse_tool_calls(gpt["value"])
        assert gpt["value"].startswith("<tool_call>") and gpt["value"].endswith("</tool_call>")
        if record in evaluation:
            target = record["tool_target"]
            assert (call.name, call.arguments) == (target["name"], target["arguments"])
    assert all("tool_target" not in r for r in train)
    kinds = Counter(r["tool_target"]["kind"] for r in evaluation)
    assert set(kinds) == {"generation", "edit", "describe_aloud", "say"}
    assert len({r["conversations"][0]["value"].split()[0] for r in train}) >= 8  # varied templates


def test_held_out_phrasings_never_reach_training(tmp_path):
    from mage.tools.data import PHRASINGS

    root = tmp_path / "phrasings"
    paths = generate_world_tool_data(root, seed=5, n_train=300, n_eval=120)
    train = [r["conversations"][0]["value"].removeprefix("<image>\n") for r in
             json.loads(paths["train"].read_text())]  # fmt: skip
    evaluation = json.loads(paths["eval"].read_text())
    # what is held out: the "can you" frame, the verbs paint / show / speak, "X, do it" order
    for marker in ("can you", "paint", "show", "speak", ", "):
        assert not any(marker in t for t in train), marker
    unseen = [r for r in evaluation if r["tool_target"]["phrasing"] == "unseen"]
    assert 0.3 < len(unseen) / len(evaluation) < 0.7
    assert sum(any(m in r["conversations"][0]["value"] for m in ("can you", "paint", "show",
               "speak", ", ")) for r in unseen) == len(unseen)  # fmt: skip
    for request, split in PHRASINGS.items():  # the two splits share no template
        assert not set(split["seen"]) & set(split["unseen"]), request


def test_deterministic_per_seed_and_per_sample(world_tools, tmp_path):
    root, _ = world_tools
    again = generate_world_tool_data(tmp_path / "again", seed=11, n_train=40, n_eval=30)
    assert digest(again["train"].parent) == digest(root)
    fewer = generate_world_tool_data(tmp_path / "fewer", seed=11, n_train=10, n_eval=5)
    full = json.loads((root / "tools_train.json").read_text())
    assert json.loads(fewer["train"].read_text()) == full[:10]  # each sample has its own stream
    other = generate_world_tool_data(tmp_path / "other", seed=12, n_train=40, n_eval=30)
    assert json.loads(other["train"].read_text()) != full


def test_world_tokenizer_encodes_every_text_exactly(world_tools):
    tokenizer = vocab.world_tokenizer()
    root, paths = world_tools
    records = json.loads(paths["train"].read_text()) + json.loads(paths["eval"].read_text())
    for record in records:
        for turn in record["conversations"]:
            text = turn["value"].removeprefix("<image>\n")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids, (text, tokenizer.convert_ids_to_tokens(ids))
            decoded = tokenizer.decode(ids, skip_special_tokens=True)
            assert decoded == text
    gpt = records[0]["conversations"][1]["value"]
    assert parse_tool_calls(tokenizer.decode(tokenizer(gpt)["input_ids"], skip_special_tokens=True))


def test_convert_captions(tmp_path):
    source = tmp_path / "lcs.json"
    records = [
        {
            "id": f"img{i}",
            "image": f"images/{i}.jpg",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nRender a clear and concise summary of the photo.",
                },
                {"from": "gpt", "value": f'A dog named "Rex {i}" runs on the beach.'},
            ],
        }
        for i in range(12)
    ]
    source.write_text(json.dumps(records))
    out = convert_captions_to_tool_samples(source, tmp_path / "tools.json", seed=0)
    samples = json.loads(out.read_text())
    assert len(samples) == 12
    names = Counter()
    for sample, record in zip(samples, records):
        (call,) = parse_tool_calls(sample["conversations"][1]["value"])
        names[call.name] += 1
        caption = record["conversations"][1]["value"]
        if call.name == "text_to_speech":
            assert sample["image"] == record["image"] and call.arguments == {"text": caption}
        else:
            assert "image" not in sample and call.arguments == {"prompt": caption}
            assert "rex" in sample["conversations"][0]["value"].lower()
    assert set(names) == {"text_to_speech", "image_generation"}
    again = convert_captions_to_tool_samples(source, tmp_path / "again.json", seed=0)
    assert again.read_text() == out.read_text()

    records[3]["conversations"] = records[3]["conversations"][:1]
    source.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 3 .*'img3'.* no assistant caption"):
        convert_captions_to_tool_samples(source, tmp_path / "bad.json", seed=0)
    assert not (tmp_path / "bad.json").exists()
