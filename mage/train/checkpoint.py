"""Resumable checkpoints of a training stage (trainable weights, optimizer, scheduler, RNG)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mage.io import atomic_path, atomic_write_json
from mage.train.seeding import rng_state as _rng_state
from mage.train.seeding import set_rng_state as _set_rng_state


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int) -> None:
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
            },
            tmp / "state.pt",
        )
        atomic_write_json(tmp / "step.json", {"step": step})


def load_checkpoint(directory: Path, model, optimizer, scheduler) -> int:
    weights = load_file(str(directory / "trainable.safetensors"))
    missing = model.load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(
            f"checkpoint {directory} does not match the model: {missing.unexpected_keys[:3]}"
        )
    state = torch.load(directory / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return json.loads((directory / "step.json").read_text())["step"]
