"""The training loop of one stage: stage 1 aligns (only the IAN trains, CE + mse_weight * MSE),
stage 2 instruction-tunes (IAN + LLM, full or LoRA; MSE only if ``loss.mse_in_stage2``).

The same loop runs in one process or on every rank of a process group (a Ray Train worker
group, torchrun); it knows no dataset in particular and nothing of Ray:

- the model is laid out by `mage.train.parallel.prepare_model` (fp32 master weights, compute in
  ``llm.dtype``, FSDP2 across ranks, activation checkpointing);
- the batches come from `mage.train.pipeline` (a global batch per step fixed by
  ``(seed, stage, step)``, this rank's share in micro-batches, loaded by a DataLoader);
- the loss of a step is normalised by the **whole global batch**: the cross-entropy summed over
  every rank's and micro-batch's target tokens divided by their all-reduced count, the MSE
  summed over captioned samples divided by theirs. So 2 workers x batch b, 1 worker x 2b and
  1 worker x b with accumulation 2 train the same model (to float tolerance);
- AdamW with a cosine schedule and warmup, gradient clipping, a check for a non-finite loss
  (on every rank at once, so none is left waiting);
- with ``vision.feature_cache``, the frozen tower's outputs come from `mage.feature_cache`
  (built on first use) instead of decoded images;
- checkpoints (`mage.train.checkpoint`, DCP) every ``checkpoint_every`` steps; a call resumes
  from the newest complete one under ``out_dir/checkpoints``.

A callback sees ``(step, metrics)`` after every optimizer step on every rank (``metrics``
holds ``checkpoint`` when one was just written) and can stop training by returning False.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from mage.config import MageConfig
from mage.data import Collator, ConversationDataset
from mage.feature_cache import FeatureCache
from mage.train.checkpoint import CheckpointManager
from mage.train.parallel import distributed, prepare_model
from mage.train.pipeline import RankMicroBatches, global_batches, rank_loader
from mage.train.schedule import build_optimizer
from mage.train.seeding import stable_seed

Callback = Callable[[int, dict], bool | None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message says at which step and which term."""


def build_dataset(cfg: MageConfig, stage: str, records_dir=None) -> ConversationDataset:
    stage_cfg = getattr(cfg, stage)
    return ConversationDataset(
        cfg.data_sources(stage),
        caption_from_reply=(stage == "stage1"),
        on_bad_image=stage_cfg.on_bad_image,
        records_dir=records_dir,
    )


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if distributed():
        dist.all_reduce(tensor)
    return tensor


def _counts(batch: dict) -> list[float]:
    """Target tokens, captioned samples (the MSE's), input tokens of a collated micro-batch."""
    targets = float((batch["labels"][:, 1:] != -100).sum())
    captioned = float((batch["caption_mask"].sum(1) > 0).sum()) if "caption_mask" in batch else 0
    return [targets, captioned, float(batch["attention_mask"].sum())]


def train_stage(
    model,
    cfg: MageConfig,
    stage: str,
    out_dir: str | Path,
    callback: Callback | None = None,
    dataset: ConversationDataset | None = None,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    records_dir: str | Path | None = None,
) -> dict:
    """Train one stage; resume from ``out_dir/checkpoints`` if it holds one. Returns the final
    metrics. ``stop_after`` ends the run after that many steps with a checkpoint (tests of
    stop-and-resume); ``device`` defaults to where the model is."""
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', not {stage!r}")
    stage_cfg = getattr(cfg, stage)
    rank, world = rank_and_world()
    device = torch.device(device) if device is not None else model.device
    # Seed before LoRA draws its adapters, so they do not depend on what ran before.
    torch.manual_seed(stable_seed(cfg.seed, stage))
    if stage == "stage2" and cfg.llm.lora.enabled:
        model.enable_lora()
    model.set_trainable(stage_cfg.trainable)
    mse_weight = cfg.loss.mse_weight if (stage == "stage1" or cfg.loss.mse_in_stage2) else 0.0
    dataset = dataset or build_dataset(cfg, stage, records_dir)
    batches = global_batches(dataset, stage_cfg, cfg.seed, stage)
    sampler_probe = RankMicroBatches(batches, rank, world, stage_cfg.batch_size)  # checks N
    autocast = prepare_model(model, cfg, stage, device)
    features = None
    if cfg.vision.feature_cache:  # after prepare_model: the tower as this stage runs it
        features = FeatureCache.ensure(
            cfg.feature_cache_dir(), model.vision, dataset.image_paths(), cfg.data_root()
        )
        dataset.decode_images = False  # (a dataset passed in too) its paths stand for images
    optimizer, scheduler = build_optimizer(model, stage_cfg, batches.total_steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    checkpoints = CheckpointManager(Path(out_dir) / "checkpoints", cfg.seed, stage)
    start, metrics, history = 0, {}, []
    if (latest := checkpoints.latest()) is not None:
        start = checkpoints.load(latest, model, optimizer, scheduler, batches.global_batch)
        history = checkpoints.saved_history(latest) or []
        metrics = dict(history[-1]) if history else {}  # what it ends with if no step is left
    sampler = RankMicroBatches(batches, rank, world, stage_cfg.batch_size, start)
    collate = Collator(
        model.tokenizer,
        model.template,
        model.vision.preprocess,
        model.num_image_tokens,
        cfg.max_length,
        with_captions=mse_weight > 0,
        features=features,
    )
    loader = rank_loader(
        dataset,
        sampler,
        collate,
        stage_cfg.loader_workers,
        pin_memory=device.type == "cuda",
        seed=stable_seed(cfg.seed, stage, start, rank),
    )
    model.train()
    if model.vision.frozen or "vision" not in stage_cfg.trainable:
        model.vision.eval()  # a tower this stage does not train keeps its batch-norm statistics
    started, tokens, skipped = time.perf_counter(), 0.0, 0
    batches_in = iter(loader)
    for step in range(start, batches.total_steps):
        micro = [next(batches_in) for _ in range(sampler_probe.per_step)]
        here = sum(len(b.pop("skipped", [])) for b in micro)  # bad images left out, this rank
        totals = [sum(c) for c in zip(*map(_counts, micro))] + [here]
        counts = _all_reduce(torch.tensor(totals, dtype=torch.float64, device=device)).cpu()
        n_targets, n_captioned = max(float(counts[0]), 1.0), float(counts[1])
        tokens += float(counts[2])
        skipped += int(counts[3])  # every rank's, as tokens
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in micro:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = model(**batch, mse_weight=mse_weight)
            loss = out.ce_sum / n_targets
            sums[0] += out.ce_sum.detach().double()
            if mse_weight > 0 and out.mse_sum is not None:
                loss = loss + mse_weight * out.mse_sum / n_captioned
                sums[1] += out.mse_sum.detach().double()
            (loss * world).backward()  # FSDP averages over ranks: undo it, the loss is global
        sums = _all_reduce(sums).cpu()
        ce = float(sums[0]) / n_targets
        # no MSE term at weight 0 (or no captions): its metric is absent, not a misleading 0
        mse = float(sums[1]) / n_captioned if mse_weight > 0 and n_captioned else None
        for term, value in (("ce", ce), ("mse", mse)):
            if value is not None and not torch.isfinite(torch.tensor(value)):
                raise NonFiniteLossError(f"{stage} step {step}: non-finite loss ({term} term)")
        if stage_cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, stage_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        done = step + 1
        metrics = {
            "loss": ce + (mse_weight * mse if mse is not None else 0.0),
            "ce_loss": ce,
            **({"mse_loss": mse} if mse is not None else {}),
            "lr": scheduler.get_last_lr()[0],
            "step": done,
            "total_steps": batches.total_steps,
        }
        history.append(dict(metrics))
        save = (
            (stage_cfg.checkpoint_every and done % stage_cfg.checkpoint_every == 0)
            or (stop_after is not None and done - start >= stop_after)
            or (stage_cfg.keep_optimizer and done == batches.total_steps)  # the state to keep
        )
        if save:
            folder = checkpoints.save(
                done, model, optimizer, scheduler, batches.global_batch, history
            )
            metrics["checkpoint"] = str(folder)
        stop = callback is not None and callback(done, dict(metrics)) is False
        if distributed() and callback is not None:  # one rank's stop stops all
            stop = bool(_all_reduce(torch.tensor([float(stop)], device=device))[0] > 0)
        if stop_after is not None and done - start >= stop_after:
            return {**metrics, "stopped": True}
        if stop:
            break
    elapsed = time.perf_counter() - started
    model.eval()
    metrics.pop("checkpoint", None)
    return {
        **metrics,
        "wall_s": elapsed,
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "skipped_images": skipped,
        "world_size": world,
    }
