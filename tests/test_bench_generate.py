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
    built = []
    build = bg.MageModel.build
    monkeypatch.setattr(
        bg.MageModel, "build", lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    )
    (row,) = bg.bench_generate("tiny-test", (2,), samples=2, prompt_tokens=4, dtype="bfloat16")
    model = built[0]
    assert row["dtype"] == "bfloat16" and row["samples"] == 2
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # tower, IAN and LLM
    vocab = model.llm.get_input_embeddings().num_embeddings
    assert len(model.tokenizer) == vocab and model.tokenizer.decode([3]) == "t3"


def test_llm_flops_count_the_body_per_token_and_the_head_per_answer_token():
    model = bg.MageModel.build(bg.bench_config("tiny-test"))
    llm = model.llm
    head = llm.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in llm.parameters()) - head
    body -= 0 if llm.config.tie_word_embeddings else llm.get_input_embeddings().weight.numel()
    assert bg.llm_flops_per_question(llm, 10, 3) == 2 * body * 12 + 2 * head * 3


def test_the_numbered_tokenizer_decodes_every_id():
    tok = bg.numbered_tokenizer(50)
    assert len(tok) == 50 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.decode([3, 49], skip_special_tokens=True) == "t3 t49"


def test_bad_arguments_are_refused_before_any_model_is_built():
    with pytest.raises(ValueError, match="dtype must be one of"):
        bg.bench_generate("tiny-test", (1,), samples=1, dtype="int8")
    with pytest.raises(ValueError, match="at least the largest batch size"):
        bg.bench_generate("tiny-test", (1, 8), samples=4)
    with pytest.raises(ValueError, match="not a torch device"):
        bg.bench_device("gpu")
