"""The world LLM's text pretraining data: option-lookup drills and the lookup-first schedule."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np

from mage.world import text, textlm


def _mcq_records(test_world) -> list[dict]:
    records = json.loads(test_world.stage2.read_text())
    return [r for r in records if r.get("kind") == "mcq"]


def test_option_lookup_states_one_option_and_answers_its_letter(test_world):
    records = _mcq_records(test_world)[:40]
    rng = np.random.default_rng(0)
    asked = set()
    for record in records:
        prompt = record["conversations"][0]["value"]
        options = dict(re.findall(r"^([A-D])\. (.+)$", prompt, re.M))
        human, reply = textlm.option_lookup_conversation(record, rng)
        assert (human["from"], reply["from"]) == ("human", "gpt")
        stated = re.search(r"\nThe answer is (.+)\.$", human["value"]).group(1)
        assert options[reply["value"]] == stated
        # the options are listed as the benchmark prompt lists them
        assert all(f"{letter}. {text}" in human["value"] for letter, text in options.items())
        asked.add(reply["value"])
    assert asked == {"A", "B", "C", "D"}  # the stated option is drawn, not always the answer


def test_training_pool_adds_lookup_kinds_only_when_a_phase_samples_them(test_world):
    records = json.loads(test_world.stage2.read_text())
    n_mcq = len(_mcq_records(test_world))
    plain = textlm.TextLMConfig(steps=1)
    _, kinds = textlm.training_pool(records, plain, seed=0)
    assert len(kinds) == len(records)
    curriculum = textlm.TextLMConfig(
        steps=1, lookup_steps=1, kind_weights=(("mcq", 0.8), ("mcq_hinted", 0.2))
    )
    conversations, kinds = textlm.training_pool(records, curriculum, seed=0)
    counts = Counter(kinds)
    assert counts["option_lookup"] == n_mcq and counts["mcq_hinted"] == n_mcq
    hinted = [c for c, k in zip(conversations, kinds) if k == "mcq_hinted"]
    assert all("The answer is" in c[0]["value"] for c in hinted)


def test_schedule_draws_lookup_kinds_first_then_the_mix(test_world):
    records = json.loads(test_world.stage2.read_text())
    cfg = textlm.TextLMConfig(steps=20, lookup_steps=5, batch_size=8)
    conversations, kinds = textlm.training_pool(records, cfg, seed=0)
    lengths = [len(c[0]["value"]) for c in conversations]
    schedule = textlm.batch_schedule(lengths, kinds, cfg, seed=0)
    batches = [next(schedule) for _ in range(cfg.steps)]
    first = {kinds[i] for b in batches[:5] for i in b}
    later = {kinds[i] for b in batches[5:] for i in b}
    assert first == {"option_lookup"}
    assert "option_lookup" not in later and {"yes_no", "mcq"} <= later
    again = textlm.batch_schedule(lengths, kinds, cfg, seed=0)
    assert [next(again) for _ in range(cfg.steps)] == batches  # deterministic


def test_reordered_caption_keeps_every_object_and_changes_the_order():
    caption = "A small red circle at the top left, a large blue cross at the top right and a small green square at the bottom left."
    objects = {"small red circle at the top left", "large blue cross at the top right",
               "small green square at the bottom left"}  # fmt: skip
    seen = set()
    for seed in range(12):
        out = text.reordered_caption(caption, np.random.default_rng(seed))
        assert out[0].isupper() and out.endswith(".")
        parts = re.split(r", | and ", out.removesuffix("."))
        assert {p.lower().removeprefix("a ") for p in parts} == objects
        seen.add(out)
    assert caption in seen and len(seen) > 2  # every order is drawn, the caption's own too
    single = "A large yellow triangle at the bottom left."
    assert text.reordered_caption(single, np.random.default_rng(0)) == single


def test_describe_drills_put_the_reordered_objects_in_place_of_the_image(test_world):
    records = json.loads(test_world.stage2.read_text())
    cfg = textlm.TextLMConfig(
        steps=1, final_steps=1, final_kind_weights=(("caption", 0.5), ("describe", 0.5))
    )
    conversations, kinds = textlm.training_pool(records, cfg, seed=0)
    captions = [r for r in records if r.get("kind") == "caption"]
    drills = [c for c, k in zip(conversations, kinds) if k == "describe"]
    assert len(drills) == len(captions) > 0
    for record, (human, reply) in zip(captions, drills):
        assert reply["value"] == record["caption"]
        context = human["value"].split("\n")[0]
        assert "<image>" not in human["value"]
        words = sorted(re.findall(r"\w+", context.lower()))
        assert words == sorted(re.findall(r"\w+", record["caption"].lower()))


def test_the_final_phase_leaves_the_earlier_phases_draws_as_they_were(test_world):
    records = json.loads(test_world.stage2.read_text())
    before = textlm.TextLMConfig(steps=30, lookup_steps=5, batch_size=8)
    after = textlm.TextLMConfig(
        steps=30, lookup_steps=5, batch_size=8, final_steps=4,
        final_kind_weights=(("yes_no", 0.5), ("describe", 0.5)),
    )  # fmt: skip
    batches = []
    for cfg in (before, after):
        conversations, kinds = textlm.training_pool(records, cfg, seed=0)
        lengths = [len(c[0]["value"]) for c in conversations]
        schedule = textlm.batch_schedule(lengths, kinds, cfg, seed=0)
        batches.append([[conversations[i] for i in next(schedule)] for _ in range(cfg.steps)])
    assert batches[0] == batches[1]


def test_train_text_llm_runs_the_final_phase_after_the_others(test_world):
    from mage.world.vocab import world_tokenizer

    records = json.loads(test_world.stage2.read_text())
    cfg = textlm.TextLMConfig(
        steps=3, num_layers=1, batch_size=4, warmup=1, final_steps=2,
        final_kind_weights=(("describe", 1.0),),
    )  # fmt: skip
    seen: list[int] = []
    model, log = textlm.train_text_llm(records, world_tokenizer(), cfg, seed=0, on_step=seen.append)
    assert seen == [0, 1, 2, 3, 4]
    assert log["final_steps"] == 2 and not model.training
