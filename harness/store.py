"""The results store of a sweep folder: per-trial records, merged into tidy parquet tables.

Layout (schema: docs/architecture.md, "Results store")::

    SWEEP_DIR/trials/<trial_id>/     one finished trial, written once, as a whole directory
        record.json                  status, cause of failure, swept values, config, hours
        results.parquet              [benchmark, metric, category, value, n]
        items.parquet                [benchmark, item_id, category, correct]
        curves.parquet               [stage, step, metric, value]
        config.yaml                  the trial's resolved MageConfig
    SWEEP_DIR/results.parquet, trials.parquet, items.parquet, curves.parquet, manifest.json

This module is the store's API; its parts live in `harness.store_records` (the per-trial
records, written once and atomically) and `harness.store_manifest` (manifest.json, spec.yaml,
provenance), and are re-exported here. The top-level tables are a merge of the trial
directories, rewritten atomically (`consolidate`) by the driver each time a trial finishes and
at the end, and again by ``mage-harness resume``/``status``; they can always be rebuilt from
``trials/``, so a driver killed mid-write loses nothing. Readers use the top-level files
(`reports.load`).

Checked before work (`check_store`, by ``status``, ``resume`` and ``report``): the tables
and the manifest must be readable and the records whole; ``resume`` also needs every trial
in the tables to have its record, so that it never rewrites a table from fewer trials than
it holds (`consolidate` refuses that too). `rebuild_store` (``mage-harness store rebuild``)
rewrites the tables (and a damaged manifest) from ``trials/``; the checks live in
`harness.store_check`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from harness.store_manifest import (
    manifest_trial_sections,
    provenance,
    read_manifest,
    read_spec,
    reproducibility_sections,
    update_manifest,
)
from harness.store_records import (
    CURVE_COLUMNS,
    STATUSES,
    DamagedStoreError,
    RunningCurves,
    TrialRecord,
    best_record,
    checked_frame,
    load_records,
    read_record,
    record_paths,
    stored_trial,
    trial_dir,
    write_trial,
)
from mage.io import atomic_write
from mage.scores import ITEM_COLUMNS, SCORE_COLUMNS

__all__ = [  # the store's API; callers use `harness.store.<name>`
    "CURVE_COLUMNS", "DAMAGED_DIRNAME", "ITEM_COLUMNS", "RETRIED", "SCORE_COLUMNS", "STATUSES",
    "TABLES", "DamagedStoreError", "RunningCurves", "TrialRecord", "best_record",
    "build_tables", "consolidate", "load_records", "provenance", "read_manifest", "read_record",
    "read_spec", "read_table", "record_paths", "stored_trial", "table_trial_ids", "trial_dir",
    "update_manifest", "write_trial",
]  # fmt: skip

DAMAGED_DIRNAME = "damaged"  # where `rebuild_store(drop_missing=True)` moves unreadable trials
TABLES = ("results", "trials", "items", "curves")


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
    out = {"trials": checked_frame(trials, columns["trials"], "trials")}
    for name, frames in parts.items():
        frames = [f for f in frames if not f.empty]
        merged = pd.concat(frames, ignore_index=True) if frames else None
        out[name] = checked_frame(merged, columns[name], name)
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
