"""The per-trial records of a results store: ``SWEEP_DIR/trials/<trial_id>/``.

Each trial's directory (``record.json``, ``results.parquet``, ``items.parquet``,
``curves.parquet``, ``config.yaml``) is written by whoever finishes the trial (the trial process
itself, or the driver for a trial Tune stopped early or whose process died) through
`mage.io.atomic_path`, so it is either absent or whole; a trial that is already stored is never
written again (a failed trial run again is first moved to ``retried/``, `harness.retry`). A
running trial's curve points go to ``running/<trial_id>.jsonl`` (`RunningCurves`). The merged
tables are built from these records by `harness.store`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mage.io import atomic_path
from mage.scores import ITEM_COLUMNS, SCORE_COLUMNS

STATUSES = ("ok", "failed", "stopped")


class DamagedStoreError(ValueError):
    """A results store file is unreadable or inconsistent; the message names the file, what is
    wrong with it and how to repair it."""


CURVE_COLUMNS = ["stage", "step", "metric", "value"]


@dataclass
class TrialRecord:
    """One finished trial (ok, failed or stopped early) as stored in ``record.json``."""

    trial_id: str
    variant_id: str
    variant_name: str
    seed: int
    status: str
    error: str | None = None
    swept: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_hours: float = 0.0
    gpu_hours: float = 0.0
    steps: int = 0
    planned_steps: int = 0
    stopped_early: bool = False
    objectives: dict[str, float | None] = field(default_factory=dict)
    eval_record: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def trial_dir(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / "trials" / trial_id


def stored_trial(sweep_dir: str | Path, trial_id: str) -> TrialRecord | None:
    """The stored record of a trial, or None if it has not finished."""
    path = trial_dir(sweep_dir, trial_id) / "record.json"
    if not path.exists():
        return None
    return read_record(path)


def read_record(path: str | Path) -> TrialRecord:
    """One ``record.json``; `DamagedStoreError` naming it if it cannot be read."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return TrialRecord.from_dict(data)
    except (OSError, ValueError, TypeError) as err:  # JSONDecodeError, UnicodeDecodeError too
        raise DamagedStoreError(f"{path}: not a readable trial record ({err})") from None


def checked_frame(data: pd.DataFrame | list | None, columns: list[str], what: str) -> pd.DataFrame:
    """``data`` as a frame of exactly ``columns`` (typed-empty if none); ValueError naming
    ``what`` if a column is missing."""
    frame = pd.DataFrame(data if data is not None else [], columns=None)
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {columns}")
    return frame[columns].reset_index(drop=True)


def write_trial(
    sweep_dir: str | Path,
    record: TrialRecord,
    scores: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    curves: pd.DataFrame | list | None = None,
) -> bool:
    """Store a finished trial once, atomically. Returns False if it was already stored."""
    target = trial_dir(sweep_dir, record.trial_id)
    if (target / "record.json").exists():
        return False
    record.finished_at = record.finished_at or datetime.now(UTC).isoformat(timespec="seconds")
    tables = {
        "results": checked_frame(scores, SCORE_COLUMNS, "scores"),
        "items": checked_frame(items, ITEM_COLUMNS, "items"),
        "curves": checked_frame(curves, CURVE_COLUMNS, "curves"),
    }
    with atomic_path(target) as tmp:
        tmp.mkdir()
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "config.yaml").write_text(yaml.safe_dump(record.config, sort_keys=False))
        (tmp / "record.json").write_text(json.dumps(asdict(record), indent=2, default=str))
    return True


class RunningCurves:
    """The curve points of a running trial (``running/<trial_id>.jsonl``), appended as it
    trains, so that a trial Tune stops early is stored with its curves."""

    def __init__(self, sweep_dir: str | Path, trial_id: str):
        self.path = Path(sweep_dir) / "running" / f"{trial_id}.jsonl"

    def append(self, stage: str, step: int, metrics: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            for name, value in metrics.items():
                if isinstance(value, int | float) and name != "step":
                    row = {"stage": stage, "step": step, "metric": name, "value": value}
                    fh.write(json.dumps(row) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def load_records(sweep_dir: str | Path) -> list[TrialRecord]:
    return [read_record(p) for p in record_paths(sweep_dir)]


def record_paths(sweep_dir: str | Path) -> list[Path]:
    root = Path(sweep_dir) / "trials"
    return sorted(root.glob("*/record.json")) if root.exists() else []


def best_record(records: list[TrialRecord], key: str, mode: str) -> TrialRecord | None:
    """The ok trial with the best value of objective ``key`` (None if there is none)."""
    scored = [r for r in records if r.status == "ok" and r.objectives.get(key) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r.objectives[key])
