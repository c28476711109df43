"""The results store of a sweep folder: per-trial records, merged into tidy parquet tables.

Layout (schema: docs/architecture.md, "Results store")::

    SWEEP_DIR/trials/<trial_id>/     one finished trial, written once, as a whole directory
        record.json                  status, cause of failure, swept values, config, hours
        results.parquet              [benchmark, metric, category, value, n]
        items.parquet                [benchmark, item_id, category, correct]
        curves.parquet               [stage, step, metric, value]
        config.yaml                  the trial's resolved MageConfig
    SWEEP_DIR/results.parquet, trials.parquet, items.parquet, curves.parquet, manifest.json

How it is written: each trial's directory is written by whoever finishes the trial (the trial
process itself, or the driver for a trial Tune stopped early or whose process died) through
`mage.io.atomic_path`, so it is either absent or whole; a trial that is already stored is never
written again (a failed trial run again is first moved to ``retried/``, `harness.retry`). The top-level tables are a merge of the trial directories, rewritten atomically
(`consolidate`) by the driver each time a trial finishes and at the end, and again by
``mage-harness resume``/``status``; they can always be rebuilt from ``trials/``, so a driver
killed mid-write loses nothing. Readers use the top-level files (`reports.load`).

Checked before work (`check_store`, by ``status``, ``resume`` and ``report``): the tables
and the manifest must be readable and the records whole; ``resume`` also needs every trial
in the tables to have its record, so that it never rewrites a table from fewer trials than
it holds (`consolidate` refuses that too). `rebuild_store` (``mage-harness store rebuild``)
rewrites the tables (and a damaged manifest) from ``trials/``; the checks live in
`harness.store_check`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mage.io import atomic_path, atomic_write, atomic_write_json
from mage.scores import ITEM_COLUMNS, SCORE_COLUMNS

STATUSES = ("ok", "failed", "stopped")
DAMAGED_DIRNAME = "damaged"  # where `rebuild_store(drop_missing=True)` moves unreadable trials


class DamagedStoreError(ValueError):
    """A results store file is unreadable or inconsistent; the message names the file, what is
    wrong with it and how to repair it."""


CURVE_COLUMNS = ["stage", "step", "metric", "value"]
TABLES = ("results", "trials", "items", "curves")


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


def _frame(data: pd.DataFrame | list | None, columns: list[str], what: str) -> pd.DataFrame:
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
        "results": _frame(scores, SCORE_COLUMNS, "scores"),
        "items": _frame(items, ITEM_COLUMNS, "items"),
        "curves": _frame(curves, CURVE_COLUMNS, "curves"),
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


def _ids(record: TrialRecord) -> dict[str, Any]:
    return {
        "trial_id": record.trial_id,
        "variant_id": record.variant_id,
        "variant_name": record.variant_name,
        "seed": record.seed,
    }


def _cell(value: Any) -> Any:
    """A swept value as a table cell: lists and mappings (e.g. ``stage2.data``) as JSON."""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def build_tables(
    sweep_dir: str | Path, sweep: str, swept_fields: list[str]
) -> dict[str, pd.DataFrame]:
    """Merge every stored trial into the four tidy tables (not written)."""
    records = load_records(sweep_dir)
    results, trials, items, curves = [], [], [], []
    for r in records:
        folder = trial_dir(sweep_dir, r.trial_id)
        swept = {f: _cell(r.swept.get(f)) for f in swept_fields}
        trials.append(
            {
                **_ids(r),
                "status": r.status,
                "error": r.error,
                **swept,
                "wall_s": r.wall_s,
                "cpu_hours": r.cpu_hours,
                "gpu_hours": r.gpu_hours,
                "steps": r.steps,
                "stopped_early": r.stopped_early,
            }
        )
        head = {"sweep": sweep, **_ids(r), "status": r.status, **swept}
        results.append(pd.read_parquet(folder / "results.parquet").assign(**head))
        items.append(pd.read_parquet(folder / "items.parquet").assign(**_ids(r)))
        curves.append(pd.read_parquet(folder / "curves.parquet").assign(trial_id=r.trial_id))
    ids = ["trial_id", "variant_id", "variant_name", "seed"]
    columns = {
        "results": ["sweep", *ids, "status", *swept_fields, *SCORE_COLUMNS],
        "trials": [
            *ids,
            "status",
            "error",
            *swept_fields,
            "wall_s",
            "cpu_hours",
            "gpu_hours",
            "steps",
            "stopped_early",
        ],
        "items": [*ids, *ITEM_COLUMNS],
        "curves": ["trial_id", *CURVE_COLUMNS],
    }
    parts = {"results": results, "items": items, "curves": curves}
    out = {"trials": _frame(trials, columns["trials"], "trials")}
    for name, frames in parts.items():
        frames = [f for f in frames if not f.empty]
        merged = pd.concat(frames, ignore_index=True) if frames else None
        out[name] = _frame(merged, columns[name], name)
    if not out["trials"].empty:
        out["trials"]["seed"] = out["trials"]["seed"].astype("int64")
        out["trials"]["stopped_early"] = out["trials"]["stopped_early"].astype(bool)
    return out


RETRIED = "retried"  # SWEEP_DIR/retried/<trial_id>/attempt-<n>/: earlier attempts (harness.retry)


def consolidate(
    sweep_dir: str | Path, sweep: str, swept_fields: list[str], allow_fewer: bool = False
) -> dict[str, pd.DataFrame]:
    """Rewrite the top-level tables and the manifest's trial sections from ``trials/``.

    Refuses (`DamagedStoreError`) to drop a trial the current ``trials.parquet`` holds but
    ``trials/`` has no record of, unless ``allow_fewer``."""
    sweep_dir = Path(sweep_dir)
    tables = build_tables(sweep_dir, sweep, swept_fields)
    if not allow_fewer:
        retrying = {p.name for p in (sweep_dir / RETRIED).glob("*")}  # moved aside to run again
        recorded = set(tables["trials"]["trial_id"])
        dropped = sorted(table_trial_ids(sweep_dir) - recorded - retrying)
        if dropped:
            raise DamagedStoreError(
                f"{sweep_dir / 'trials.parquet'} holds {len(dropped)} trial(s) that trials/ has "
                f"no record of (e.g. {dropped[0]}); the tables were not rewritten from fewer "
                f"trials: restore trials/, or `mage-harness store rebuild {sweep_dir} "
                "--drop-missing` to keep only the recorded ones"
            )
    for name, frame in tables.items():
        atomic_write(sweep_dir / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
    records = load_records(sweep_dir)
    sections = manifest_trial_sections(records)
    sections.update(reproducibility_sections(read_manifest(sweep_dir), sections["datasets"]))
    update_manifest(sweep_dir, **sections)
    return tables


def reproducibility_sections(manifest: dict[str, Any], datasets: dict[str, Any]) -> dict:
    """What a re-run must match to give the same numbers: the prepared assets (their recipe
    key and weight hashes, from the assets folder's assets.json) and the thread counts."""
    out: dict[str, Any] = {}
    assets_dir = (datasets.get("training") or {}).get("assets_dir")
    info = read_manifest_file(Path(assets_dir) / "assets.json") if assets_dir else None
    if info:
        keep = ("key", "size", "world_content_hash", "weights_sha256", "threads", "torch", "source")
        out["assets"] = {k: info.get(k) for k in keep}
    resources = (manifest.get("spec") or {}).get("resources")
    if isinstance(resources, dict):  # trials pin torch to their CPUs (harness.trial)
        out["determinism"] = {
            "trial_threads": max(1, int(resources.get("cpu", 1))),
            "assets_threads": info.get("threads") if info else None,
        }
    return out


def read_manifest_file(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_table(sweep_dir: str | Path, name: str) -> pd.DataFrame:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; tables: {TABLES}")
    path = Path(sweep_dir) / f"{name}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run or resume the sweep to write it")
    return pd.read_parquet(path)


def table_trial_ids(sweep_dir: str | Path) -> set[str]:
    """Trial ids in ``trials.parquet`` (empty if it is absent or unreadable)."""
    path = Path(sweep_dir) / "trials.parquet"
    try:
        return set(pd.read_parquet(path, columns=["trial_id"])["trial_id"].astype(str))
    except Exception:  # absent or damaged: nothing to protect that could be read
        return set()


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` ({} if absent); `DamagedStoreError` naming it if unreadable."""
    path = Path(sweep_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedStoreError(
            f"{path}: not readable JSON ({err}); `mage-harness store rebuild "
            f"{Path(sweep_dir)}` rewrites it from spec.yaml and trials/"
        ) from None
    if not isinstance(data, dict):
        raise DamagedStoreError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_spec(sweep_dir: str | Path) -> Any:
    """The parsed ``spec.yaml`` of a sweep folder; `DamagedStoreError` if unreadable."""
    path = Path(sweep_dir) / "spec.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise DamagedStoreError(
            f"{path}: not readable YAML ({type(err).__name__}); it is the sweep's spec: "
            "restore it from the spec file the sweep was started with"
        ) from None


def update_manifest(sweep_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Merge top-level sections into manifest.json (atomically); returns the new manifest."""
    manifest = read_manifest(sweep_dir)
    manifest.update(sections)
    atomic_write_json(Path(sweep_dir) / "manifest.json", manifest)
    return manifest


def _finite(value: float) -> float:
    return value if isinstance(value, int | float) and math.isfinite(value) else 0.0


def manifest_trial_sections(records: list[TrialRecord]) -> dict[str, Any]:
    """Per-trial configs, hours, totals, dataset records and early-stopping savings."""
    ok = [r for r in records if r.status == "ok" and r.steps]
    stopped = [r for r in records if r.status == "stopped"]
    saved_cpu = saved_gpu = saved_steps = 0.0
    for r in stopped:
        # what the remaining steps would have cost at this trial's own rate
        frac = (r.planned_steps - r.steps) / r.steps if r.steps else 0.0
        saved_steps += max(0, r.planned_steps - r.steps)
        saved_cpu += _finite(r.cpu_hours) * max(frac, 0.0)
        saved_gpu += _finite(r.gpu_hours) * max(frac, 0.0)
    datasets: dict[str, Any] = {}
    for r in ok:
        for key, value in (r.eval_record.get("datasets") or {}).items():
            datasets.setdefault(key, value)
    return {
        "trial_configs": {r.trial_id: r.config for r in records},
        "trial_hours": {
            r.trial_id: {"wall_s": r.wall_s, "cpu_hours": r.cpu_hours, "gpu_hours": r.gpu_hours}
            for r in records
        },
        "totals": {
            "trials": len(records),
            **{s: sum(r.status == s for r in records) for s in STATUSES},
            "cpu_hours": sum(_finite(r.cpu_hours) for r in records),
            "gpu_hours": sum(_finite(r.gpu_hours) for r in records),
            "trial_wall_s": sum(_finite(r.wall_s) for r in records),
        },
        "early_stopping": {
            "stopped_trials": len(stopped),
            "steps_saved": int(saved_steps),
            "est_cpu_hours_saved": saved_cpu,
            "est_gpu_hours_saved": saved_gpu,
            "basis": "each stopped trial's own hours per step times the steps it did not run",
        },
        "eval_record": ok[0].eval_record if ok else {},
        "datasets": datasets,
    }


def best_record(records: list[TrialRecord], key: str, mode: str) -> TrialRecord | None:
    """The ok trial with the best value of objective ``key`` (None if there is none)."""
    scored = [r for r in records if r.status == "ok" and r.objectives.get(key) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r.objectives[key])


def _cpu_model() -> str | None:
    """The CPU's model name (float results may differ between instruction sets)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def provenance() -> dict[str, Any]:
    """Code revision, package versions and hardware of the machine running the driver."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    repo = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = None
    packages = {}
    for name in (
        "mage-harness",
        "torch",
        "transformers",
        "open_clip_torch",
        "lmms_eval",
        "ray",
        "optuna",
        "pandas",
        "pyarrow",
        "datasets",
        "pydantic",
        "numpy",
    ):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    torch = sys.modules.get("torch")  # only if loaded: the driver does not need torch
    if torch is not None and torch.cuda.is_available():
        hardware["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"code_revision": revision, "packages": packages, "hardware": hardware}
