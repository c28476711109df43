"""Training-speed benchmark: steps/s, tokens/s and peak memory of one preset and projector.

Weights are random (``llm.random_init``, vision ``pretrained: none``) and batches are random
token ids (the image tokens plus 64 text tokens, or ``--seq-len``) plus random pixels, so the figure
measures the architecture at its real shapes, not data loading. On CUDA the model runs in
bf16 autocast, as in training.
"""

from __future__ import annotations

import resource
import time

import torch

from mage.config import MageConfig
from mage.data import IGNORE_INDEX, IMAGE_TOKEN_ID
from mage.model import MageModel
from mage.presets import get_preset


def bench_config(preset: str, overrides: dict | None = None) -> MageConfig:
    cfg = get_preset(preset).with_overrides(
        {"llm.random_init": True, "vision.pretrained": "none", **(overrides or {})}
    )
    return cfg


def random_batch(model: MageModel, batch_size: int, seq_len: int, with_caption: bool) -> dict:
    n_img = model.num_image_tokens
    if seq_len <= n_img + 2:
        raise ValueError(f"seq_len {seq_len} leaves no room for text after {n_img} image tokens")
    vocab = model.llm.get_input_embeddings().num_embeddings
    ids = torch.randint(3, vocab, (batch_size, seq_len))
    ids[:, 1 : 1 + n_img] = IMAGE_TOKEN_ID
    labels = ids.clone()
    labels[:, : 1 + n_img] = IGNORE_INDEX
    size = model.vision.image_size
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(batch_size, 3, size, size),
    }
    if with_caption:
        batch["caption_ids"] = torch.randint(3, vocab, (batch_size, 24))
        batch["caption_mask"] = torch.ones_like(batch["caption_ids"])
    return batch


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_train(
    preset: str,
    stage: str = "stage1",
    steps: int = 10,
    warmup: int = 2,
    batch_size: int | None = None,
    seq_len: int | None = None,
    text_len: int = 64,
    overrides: dict | None = None,
    device: str | None = None,
) -> dict:
    """Time ``steps`` optimizer steps after ``warmup``; returns a dict of figures."""
    cfg = bench_config(preset, overrides)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = MageModel.build(cfg, device=device)
    stage_cfg = getattr(cfg, stage)
    if stage == "stage2" and cfg.llm.lora.enabled:
        model.enable_lora()
    model.set_trainable(stage_cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr)
    bs = batch_size or stage_cfg.batch_size
    length = seq_len or model.num_image_tokens + text_len  # image tokens + text, as in training
    batch = {k: v.to(device) for k, v in random_batch(model, bs, length, stage == "stage1").items()}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(**batch)
        out.loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    counts = model.param_counts()
    return {
        "preset": preset,
        "projector": cfg.ian.projector,
        "ian.depth": cfg.ian.depth,
        "stage": stage,
        "device": str(device),
        "batch_size": bs,
        "seq_len": length,
        "image_tokens": model.num_image_tokens,
        "trainable_params": sum(p.numel() for p in params),
        **{f"params_{k}": v for k, v in counts.items()},
        "steps_per_s": steps / elapsed,
        "tokens_per_s": steps * bs * length / elapsed,
        "peak_memory_mb": _peak_memory_mb(device),
    }
