"""Learning-rate schedule and optimizer parameter groups of a training stage."""

from __future__ import annotations

import math

import torch


def cosine_with_warmup(total_steps: int, warmup_ratio: float):
    """LR factor per step: linear warmup over ``warmup_ratio`` of the steps, then cosine to 0."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def parameter_groups(model, stage_cfg) -> list[dict]:
    """The trainable weights as optimizer groups: the LLM's at ``llm_lr`` when it is set."""
    llm_ids = {id(p) for p in model.llm.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    llm = [p for p in trainable if id(p) in llm_ids]
    if stage_cfg.llm_lr is None or not llm:
        return [{"params": trainable}]
    rest = [p for p in trainable if id(p) not in llm_ids]
    return [g for g in ({"params": rest}, {"params": llm, "lr": stage_cfg.llm_lr}) if g["params"]]


def build_optimizer(model, stage_cfg, total_steps: int):
    """AdamW over the trainable weights and its cosine-with-warmup scheduler.

    The weights the optimizer sees are fp32 (the engine keeps fp32 master weights and computes
    in ``llm.dtype``), so an update smaller than bf16's spacing is not lost."""
    groups = parameter_groups(model, stage_cfg)
    optimizer = torch.optim.AdamW(groups, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, stage_cfg.warmup_ratio)
    )
    return optimizer, scheduler
