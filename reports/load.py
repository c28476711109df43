"""Read a sweep's results store into DataFrames (schema: docs/architecture.md, "Results store").

Strict where reports need a column (a missing one is an error naming the file and column),
tolerant where they can do without: items.parquet (paired tests), curves.parquet (learning
curves) and manifest.json (spec: axes, baselines, objective) may be absent; each absence is
recorded in ``SweepData.notes`` and shown in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS_COLUMNS = (
    "sweep",
    "trial_id",
    "variant_id",
    "seed",
    "status",
    "benchmark",
    "metric",
    "category",
    "value",
    "n",
)
TRIALS_COLUMNS = (
    "trial_id",
    "variant_id",
    "seed",
    "status",
    "error",
    "wall_s",
    "cpu_hours",
    "gpu_hours",
    "steps",
    "stopped_early",
)
ITEMS_COLUMNS = ("trial_id", "variant_id", "seed", "benchmark", "item_id", "category", "correct")
CURVES_COLUMNS = ("trial_id", "stage", "step", "metric", "value")
TRIAL_STATUSES = ("ok", "failed", "stopped")
# columns that may appear beside the schema without being swept config fields
NOT_SWEPT = {"variant_name", "wall_time", "timestamp"}


class StoreError(ValueError):
    """The results store is missing a file or column, or holds a value reports cannot use."""


@dataclass(frozen=True)
class SweepData:
    """One sweep's stored results. ``items``/``curves`` are None when their file is absent."""

    sweep_dir: Path
    results: pd.DataFrame
    trials: pd.DataFrame
    items: pd.DataFrame | None
    curves: pd.DataFrame | None
    manifest: dict[str, Any]
    swept_fields: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.manifest.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def name(self) -> str:
        if self.spec.get("name"):
            return str(self.spec["name"])
        if len(self.results) and "sweep" in self.results:
            return str(self.results["sweep"].iloc[0])
        return self.sweep_dir.name

    @property
    def axes(self) -> dict[str, dict[str, Any]]:
        """Swept axes from the spec (dotted path -> axis spec), in spec order."""
        axes = self.spec.get("axes")
        if isinstance(axes, dict) and axes:
            return {str(k): (v if isinstance(v, dict) else {"values": v}) for k, v in axes.items()}
        return {}


def load_sweep(sweep_dir: str | Path) -> SweepData:
    """Read SWEEP_DIR's results store. Raises StoreError naming the file/column at fault."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise StoreError(
            f"{sweep_dir}: not a sweep folder (expected results.parquet, trials.parquet, "
            "manifest.json inside); pass the folder a sweep wrote (mage-harness sweep --out)."
        )
    notes: list[str] = []
    results = _read_parquet(sweep_dir / "results.parquet", RESULTS_COLUMNS, required=True)
    trials = _read_parquet(sweep_dir / "trials.parquet", TRIALS_COLUMNS, required=True)
    items = _read_parquet(sweep_dir / "items.parquet", ITEMS_COLUMNS, required=False)
    curves = _read_parquet(sweep_dir / "curves.parquet", CURVES_COLUMNS, required=False)
    if items is None:
        notes.append("items.parquet is absent: no paired (McNemar) tests between variants.")
    if curves is None:
        notes.append("curves.parquet is absent: no learning curves.")
    manifest = _read_manifest(sweep_dir / "manifest.json", notes)

    _check_statuses(trials, "trials.parquet")
    results = _normalise_ids(results)
    trials = _normalise_ids(trials)
    results["value"] = pd.to_numeric(results["value"], errors="coerce")
    if items is not None:
        items = _normalise_ids(items)
        items["item_id"] = items["item_id"].astype(str)
        items["correct"] = items["correct"].astype(bool)
    if curves is not None:
        curves["trial_id"] = curves["trial_id"].astype(str)

    for axis, options in _bundle_axes(manifest).items():
        results = _add_bundle_column(results, axis, options, "results.parquet")
        trials = _add_bundle_column(trials, axis, options, "trials.parquet")
    swept = _swept_fields(results, trials, manifest)
    return SweepData(sweep_dir, results, trials, items, curves, manifest, swept, tuple(notes))


def _read_parquet(path: Path, columns: tuple[str, ...], required: bool) -> pd.DataFrame | None:
    if not path.exists():
        if required:
            raise StoreError(
                f"{path.name} is missing in {path.parent}: a results store needs it "
                f"(columns {', '.join(columns)}); re-run or resume the sweep to write it."
            )
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise StoreError(f"{path}: cannot be read as parquet ({err}); re-write it.") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StoreError(
            f"{path.name}: required column(s) {', '.join(repr(c) for c in missing)} missing "
            f"(found {', '.join(map(str, frame.columns))}); the store schema is in "
            "docs/architecture.md, section 'Results store'."
        )
    return frame


def _read_manifest(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        notes.append(
            "manifest.json is absent: axes are inferred from the results columns; no "
            "report.baseline, objective or provenance."
        )
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: not valid JSON ({err}); re-write the manifest.") from err
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: expected a JSON object at the top level.")
    return manifest


def _check_statuses(trials: pd.DataFrame, name: str) -> None:
    unknown = sorted(set(trials["status"].astype(str)) - set(TRIAL_STATUSES))
    if unknown:
        raise StoreError(
            f"{name}: column 'status' holds {unknown}; expected one of {list(TRIAL_STATUSES)}."
        )


def _normalise_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col in ("trial_id", "variant_id"):
        frame[col] = frame[col].astype(str)
    frame["seed"] = pd.to_numeric(frame["seed"], errors="raise").astype("int64")
    return frame


def _swept_fields(results: pd.DataFrame, trials: pd.DataFrame, manifest: dict) -> tuple[str, ...]:
    """Columns beside the schema (dotted config paths), spec axes first, then sorted."""
    fixed = set(RESULTS_COLUMNS) | set(TRIALS_COLUMNS) | NOT_SWEPT
    found = [c for c in results.columns if c not in fixed and not str(c).startswith("_")]
    found += [c for c in trials.columns if c not in fixed and c not in found]
    spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
    axes = list((spec.get("axes") or {}).keys()) if isinstance(spec.get("axes"), dict) else []
    missing = [a for a in axes if a not in found]
    if missing:
        raise StoreError(
            f"results.parquet: no column for swept axis {', '.join(map(repr, missing))} of "
            "manifest.json spec.axes; every swept field must be a column named by its dotted path."
        )
    return tuple(axes + sorted(c for c in found if c not in axes))


def _bundle_axes(manifest: dict) -> dict[str, list[dict]]:
    """Spec axes whose values are override bundles ({path: value, ...}), e.g. an encoder with
    its stride: the store has a column per path, not one for the axis."""
    spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
    axes = spec.get("axes") if isinstance(spec.get("axes"), dict) else {}
    out = {}
    for name, axis in axes.items():
        options = _options(axis)
        if options and all(isinstance(o, dict) and o for o in options):
            out[str(name)] = options
    return out


def _options(axis: Any) -> list | None:
    """An axis spec's finite values (``values`` or ``choices``), or None for a range."""
    if not isinstance(axis, dict):
        return axis if isinstance(axis, list) else None
    return axis.get("values") if axis.get("values") is not None else axis.get("choices")


def bundle_label(overrides: dict) -> str:
    """The name harness.spec gives a bundle value: "path=value,path=value"."""
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def _add_bundle_column(
    frame: pd.DataFrame, axis: str, options: list[dict], name: str
) -> pd.DataFrame:
    if axis in frame.columns:
        return frame
    paths = sorted({p for o in options for p in o})
    missing = [p for p in paths if p not in frame.columns]
    if missing:
        raise StoreError(
            f"{name}: no column for {', '.join(map(repr, missing))}, set by the bundle axis "
            f"{axis!r} of manifest.json spec.axes; every swept field must be a column."
        )

    def label(row: pd.Series):
        for option in options:
            if all(_equal(row[p], v) for p, v in option.items()):
                return bundle_label(option)
        return None

    combos = frame[paths].astype(str).agg("\x1f".join, axis=1)
    firsts = frame[paths].groupby(combos.to_numpy(), sort=False).head(1)
    labels = {combos[i]: label(r) for i, r in firsts.iterrows()}
    frame = frame.copy()
    frame[axis] = combos.map(labels)
    return frame


def _equal(a: Any, b: Any) -> bool:
    a = a.item() if hasattr(a, "item") else a
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b
