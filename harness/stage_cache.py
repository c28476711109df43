"""The stage cache: content addresses of stage outputs and evaluations, and done-markers.

A trial's stages live in ``SWEEP_DIR/stages/<hash>/``. The stage-1 hash covers the config fields
that shape stage 1 (vision, ian, llm, the stage-1 loss terms, stage1, seed, blind, max_length)
and the training data's fingerprint; the stage-2 hash covers the stage-1 hash, stage2 and the
whole loss; an evaluation's folder sits beside its stage-2 model, keyed by its settings. A
folder counts as finished only when its ``done.json`` exists (written last, atomically).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mage.config import MageConfig

DONE = "done.json"


def content_hash(data: Any) -> str:
    """A short, stable hash of JSON-able data."""
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hash(config: MageConfig, stage: str, data_key: str) -> str:
    """Content address of a stage's output: the config fields that shape that stage."""
    c = config.to_dict()
    loss1 = {k: v for k, v in c["loss"].items() if k != "mse_in_stage2"}
    keys = ("vision", "ian", "llm", "stage1", "seed", "blind", "max_length")
    stage1 = content_hash({"data": data_key, "loss": loss1, **{k: c[k] for k in keys}})
    if stage == "stage1":
        return stage1
    return content_hash({"stage1": stage1, "stage2": c["stage2"], "loss": c["loss"]})


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE).is_file()
