"""Generation speed at a preset's real shapes, with random weights: no checkpoint, no data.

`bench_generate` answers ``samples`` questions at each batch size with `MageModel.generate`
(the path `harness.lmms_model.MageLMM` runs in an evaluation): a random image per question,
``prompt_tokens`` text tokens after the image placeholders (an MME question in Vicuna's
template is about 60-70 tokens), and exactly ``new_tokens`` decode steps per question (MME's
answer is "Yes" or "No" then EOS: 2 steps). Random weights rarely say EOS, so every row costs
the same. The model runs in ``dtype`` (bf16 by default on CUDA, as a checkpoint of the
paper's presets is evaluated), so the figures are what an evaluation of a ``mage-7b``
checkpoint costs on that device: samples/s, the LLM's TFLOP/s (2 x parameters x tokens
processed; divide by the device's peak for MFU) and peak memory.

A preset whose tokenizer is not available offline (``mage-7b`` without the Hub) gets a
word-level tokenizer with the LLM's vocabulary size: answers are meaningless with random
weights anyway, and decoding them costs about what any fast tokenizer's decode costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from harness.bench import _peak_memory_mb, bench_config
from mage.data import IMAGE_TOKEN_ID
from mage.llm import DTYPES
from mage.model import MageModel


def numbered_tokenizer(vocab_size: int) -> Any:
    """A fast word-level tokenizer over ``vocab_size`` ids: ``<unk> <s> </s> t3 t4 ...``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<unk>",
    )  # fmt: skip


def random_questions(
    model: MageModel, n: int, prompt_tokens: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """``n`` (preprocessed random image, prompt ids): BOS, the image placeholders, then
    ``prompt_tokens`` random text ids."""
    size = model.vision.image_size
    vocab = model.llm.get_input_embeddings().num_embeddings
    images = [torch.randn(3, size, size, generator=generator) for _ in range(n)]
    bos = model.tokenizer.bos_token_id
    head = ([bos] if bos is not None else []) + [IMAGE_TOKEN_ID] * model.num_image_tokens
    special = set(model.tokenizer.all_special_ids)
    prompts = []
    for _ in range(n):
        text = torch.randint(3, vocab, (prompt_tokens,), generator=generator).tolist()
        prompts.append(head + [t if t not in special else 3 for t in text])
    return images, prompts


def bench_generate(
    preset: str,
    batch_sizes: Sequence[int] = (1, 8, 32),
    samples: int = 64,
    prompt_tokens: int = 64,
    new_tokens: int = 2,
    overrides: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size: samples/s of ``samples`` questions after one warm-up batch."""
    device_ = bench_device(device)
    dtype = dtype or ("bfloat16" if device_.type == "cuda" else "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if samples < max(batch_sizes):
        raise ValueError(
            f"samples ({samples}) must be at least the largest batch size ({max(batch_sizes)})"
        )
    cfg = bench_config(preset, {"llm.dtype": dtype, **(overrides or {})})
    model = MageModel.build(cfg, device=device_)
    model.to(DTYPES[dtype]).eval()  # as `MageModel.from_pretrained` does for evaluation
    if model.tokenizer is None:
        model.tokenizer = numbered_tokenizer(model.llm.get_input_embeddings().num_embeddings)
    images, prompts = random_questions(
        model, samples, prompt_tokens, torch.Generator().manual_seed(0)
    )
    images = [im.to(device_) for im in images]
    flops = llm_flops_per_question(model.llm, len(prompts[0]), new_tokens)
    memory = "peak_memory_mb" if device_.type == "cuda" else "process_peak_rss_mb"
    rows: list[dict[str, Any]] = []
    for batch_size in batch_sizes:
        ask = _asker(model, images, prompts, batch_size, new_tokens)
        ask(0)  # warm-up: kernels chosen, caches allocated
        if device_.type == "cuda":
            torch.cuda.synchronize(device_)
            torch.cuda.reset_peak_memory_stats(device_)  # per batch size on CUDA
        began = time.perf_counter()
        answered = sum(ask(start) for start in range(0, samples, batch_size))
        if device_.type == "cuda":
            torch.cuda.synchronize(device_)
        seconds = time.perf_counter() - began
        rows.append(
            {
                "preset": preset,
                "device": str(device_),
                "dtype": dtype,
                "batch_size": batch_size,
                "samples": answered,
                "prompt_tokens": len(prompts[0]),
                "new_tokens": new_tokens,
                "samples_per_s": answered / seconds,
                "llm_tflops_per_s": flops * answered / seconds / 1e12,
                memory: _peak_memory_mb(device_),  # on CPU: the whole process so far
                "wall_s": round(seconds, 3),
            }
        )
    for row in rows:
        row["speedup"] = row["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def bench_device(device: str | None) -> torch.device:
    """``device`` (default: cuda if available, else cpu), refused when it cannot be used."""
    try:
        device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    if device_.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only cpu and cuda are benchmarked")
    return device_


def llm_flops_per_question(llm: Any, prompt_tokens: int, new_tokens: int) -> float:
    """Matrix-multiply FLOPs of the LLM for one question: 2 x the body's weights for each
    token it runs (the prompt, then every generated token but the last, which ends the row),
    and 2 x the LM head's weights for each generated token (the prefill keeps the last
    position's logits only). Embedding lookups and attention scores are not counted."""
    embed = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings().weight
    skip = {id(embed), id(head)}
    body = sum(p.numel() for p in llm.parameters() if id(p) not in skip)
    return 2.0 * body * (prompt_tokens + new_tokens - 1) + 2.0 * head.numel() * new_tokens


def _asker(model: MageModel, images: list, prompts: list, batch_size: int, new_tokens: int):
    """start -> answers the batch of questions from ``start`` and returns how many."""

    def ask(start: int) -> int:
        rows = slice(start, start + batch_size)
        n = len(prompts[rows])
        with torch.inference_mode():
            model.generate(images[rows], [""] * n, max_new_tokens=new_tokens, prompts=prompts[rows])
        return n

    return ask
