"""`harness.bench_generate`: generation speed at a preset's shapes with random weights (the
GPU check of a mage-7b evaluation), run here at tiny shapes."""

from __future__ import annotations

import pytest
import torch

from harness import bench_generate as bg

torch.set_num_threads(1)


def test_each_batch_size_runs_real_generation_at_its_shapes(monkeypatch):
    shapes: list[tuple[int, int]] = []
    built = []
    build = bg.MageModel.build

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.llm.register_forward_pre_hook(
            lambda m, a, kw: shapes.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True
        )
        built.append(model)
        return model

    monkeypatch.setattr(bg.MageModel, "build", build_and_watch)
    rows = bg.bench_generate("tiny-test", (1, 4), samples=8, prompt_tokens=10, new_tokens=3)
    assert [r["batch_size"] for r in rows] == [1, 4] and rows[0]["speedup"] == 1.0
    prompt = rows[0]["prompt_tokens"]
    assert all(r["samples"] == 8 and r["samples_per_s"] > 0 for r in rows)
    prefills = [s for s in shapes if s[1] == prompt]
    # one warm-up and then 8 questions per batch size: 1 + 8 prefills of 1 row, 1 + 2 of 4
    assert [b for b, _ in prefills] == [1] * 9 + [4] * 3
    assert len(shapes) <= 3 * len(prefills)  # at most new_tokens forwards per batch
    assert prompt == 1 + built[0].num_image_tokens + 10  # BOS, the image placeholders, the text


def test_a_preset_without_an_offline_tokenizer_runs_in_bf16(monkeypatch):
    monkeypatch.setattr("mage.llm._try_tokenizer", lambda spec: None)
    (row,) = bg.bench_generate("tiny-test", (2,), samples=2, prompt_tokens=4, dtype="bfloat16")
    assert row["dtype"] == "bfloat16" and row["samples"] == 2


def test_the_numbered_tokenizer_decodes_every_id():
    tok = bg.numbered_tokenizer(50)
    assert len(tok) == 50 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.decode([3, 49], skip_special_tokens=True) == "t3 t49"


def test_a_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        bg.bench_generate("tiny-test", (1,), samples=1, dtype="int8")
