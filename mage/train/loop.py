"""Two-stage training: stage 1 aligns (only the IAN trains, CE + mse_weight * MSE), stage 2
instruction-tunes (IAN + LLM, full or LoRA; MSE only if ``loss.mse_in_stage2``).

AdamW, cosine schedule with linear warmup, gradient accumulation, gradient clipping, bf16
autocast on CUDA. The batch at step ``s`` is drawn from a generator seeded by
``(seed, stage, s)``, so the data order needs no saved state; checkpoints carry the trainable
weights, optimizer, scheduler, step and RNG state, and a stopped-then-resumed run gives the same
losses as an uninterrupted one. A callback sees ``(step, metrics)`` after every optimizer step
and can stop training by returning False (the sweep's early stopping plugs in here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from mage.config import MageConfig
from mage.data import Collator, ConversationDataset
from mage.train.checkpoint import load_checkpoint, save_checkpoint
from mage.train.schedule import build_optimizer
from mage.train.seeding import stable_seed

Callback = Callable[[int, dict], bool | None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message says at which step and which term."""


def build_dataset(cfg: MageConfig, stage: str) -> ConversationDataset:
    stage_cfg = getattr(cfg, stage)
    return ConversationDataset(
        cfg.data_sources(stage),
        caption_from_reply=(stage == "stage1"),
        on_bad_image=stage_cfg.on_bad_image,
    )


def _batch_generator(seed: int, stage: str, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(seed, stage, step, micro))


def train_stage(
    model,
    cfg: MageConfig,
    stage: str,
    out_dir: str | Path,
    callback: Callback | None = None,
    dataset: ConversationDataset | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train one stage; resume from ``out_dir/checkpoint`` if present. Returns final metrics.

    ``stop_after`` ends the run after that many steps (to test stop-and-resume).
    """
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', not {stage!r}")
    stage_cfg = getattr(cfg, stage)
    out_dir = Path(out_dir)
    if stage == "stage2" and cfg.llm.lora.enabled:
        model.enable_lora()
    model.set_trainable(stage_cfg.trainable)
    mse_weight = cfg.loss.mse_weight if (stage == "stage1" or cfg.loss.mse_in_stage2) else 0.0
    dataset = dataset or build_dataset(cfg, stage)
    collate = Collator(
        model.tokenizer,
        model.template,
        model.vision.preprocess,
        model.num_image_tokens,
        cfg.max_length,
        with_captions=mse_weight > 0,
    )
    optimizer, scheduler = build_optimizer(model, stage_cfg, stage_cfg.steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.manual_seed(stable_seed(cfg.seed, stage))
    start = 0
    checkpoint_dir = out_dir / "checkpoint"
    if (checkpoint_dir / "step.json").exists():
        start = load_checkpoint(checkpoint_dir, model, optimizer, scheduler)
    device = model.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    model.train()
    if model.vision.frozen:
        model.vision.eval()
    metrics: dict = {}
    started, tokens = time.perf_counter(), 0
    for step in range(start, stage_cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        # no MSE term at weight 0: its metric is absent (not a misleading 0)
        totals = {"loss": 0.0, "ce_loss": 0.0, **({"mse_loss": 0.0} if mse_weight > 0 else {})}
        for micro in range(stage_cfg.grad_accum):
            gen = _batch_generator(cfg.seed, stage, step, micro)
            records = [
                dataset.records[i] for i in dataset.sample_indices(gen, stage_cfg.batch_size)
            ]
            batch = collate([(r, dataset.load_image(r)) for r in records])
            batch = {k: v.to(device) for k, v in batch.items()}
            tokens += int(batch["attention_mask"].sum())
            with autocast or nullcontext():
                out = model(**batch, mse_weight=mse_weight)
            loss = out.loss / stage_cfg.grad_accum
            if not torch.isfinite(loss):
                term = (
                    "mse" if out.mse_loss is not None and not torch.isfinite(out.mse_loss) else "ce"
                )
                raise NonFiniteLossError(f"{stage} step {step}: non-finite loss ({term} term)")
            loss.backward()
            totals["loss"] += out.loss.item() / stage_cfg.grad_accum
            totals["ce_loss"] += out.ce_loss.item() / stage_cfg.grad_accum
            if "mse_loss" in totals and out.mse_loss is not None:
                totals["mse_loss"] += out.mse_loss.item() / stage_cfg.grad_accum
        if stage_cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, stage_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        metrics = {**totals, "lr": scheduler.get_last_lr()[0], "step": step + 1}
        done = step + 1
        if stage_cfg.checkpoint_every and done % stage_cfg.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, model, optimizer, scheduler, done)
        if callback is not None and callback(done, metrics) is False:
            break
        if stop_after is not None and done - start >= stop_after:
            save_checkpoint(checkpoint_dir, model, optimizer, scheduler, done)
            return {**metrics, "stopped": True}
    elapsed = time.perf_counter() - started
    if stage_cfg.steps > start:
        save_checkpoint(checkpoint_dir, model, optimizer, scheduler, metrics.get("step", start))
    model.eval()
    return {
        **metrics,
        "wall_s": elapsed,
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "skipped_images": len(dataset.skipped),
    }
