"""Who is who in a sweep: one row per variant with its swept field values, a readable label,
its baseline name (from the spec's baselines), its role, the report baseline, and the
reference point that one-factor ablation slices go through.

Roles: ``main`` (the grid variants, what the sweep is about), ``baseline`` (a published
alternative such as LLaVA's mlp2x_gelu projector) and ``control`` (a variant known to be worse
for a known reason: blind, a positive control). The spec's ``baselines[].role`` says which;
a store written before roles existed counts a blind baseline as a control. Labels of
baselines and controls carry their role ("blind (control)"), so every table and figure marks
them, and no table bolds one as the best variant.

Field labels (``ian.depth`` -> "IAN depth") are a small mapping with the dotted path as the
fallback, so a new axis shows up under its config name without code changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.load import SweepData

MAIN, BASELINE, CONTROL = "main", "baseline", "control"
ROLES = (MAIN, BASELINE, CONTROL)

FIELD_LABELS = {
    "ian.depth": "IAN depth",
    "loss.mse_weight": "MSE weight λ",
    "vision.encoder": "vision encoder",
    "ian.projector": "projector",
    "ian.vab_depth": "VAB depth",
    "ian.stride": "SEB stride",
    "llm.name": "LLM",
    "blind": "blind",
}
# figure axis labels, with units where the field has one
FIELD_AXIS_LABELS = {
    "ian.depth": "IAN depth (SEB blocks)",
    "loss.mse_weight": "MSE weight λ (loss = CE + λ·MSE)",
    "vision.encoder": "vision encoder",
}
# prefix used in compact variant labels ("depth 2 · λ 0.5 · world-vit")
SHORT_PREFIX = {"ian.depth": "depth ", "loss.mse_weight": "λ ", "ian.vab_depth": "VAB "}


def field_label(path: str) -> str:
    return FIELD_LABELS.get(path, path)


def axis_label(path: str) -> str:
    return FIELD_AXIS_LABELS.get(path, field_label(path))


def format_value(value: Any) -> str:
    """Stable text for a field value: 1.0 -> "1", 0.25 -> "0.25", True -> "yes"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{float(value):g}" if float(value) != int(value) else str(int(value))
    return str(value)


def native(value: Any) -> Any:
    """numpy scalars -> Python scalars (for comparison, optuna and JSON)."""
    return value.item() if hasattr(value, "item") else value


def same_value(a: Any, b: Any) -> bool:
    a, b = native(a), native(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) and type(a) is type(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def sort_key(value: Any) -> tuple:
    value = native(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, bool | int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))


@dataclass(frozen=True)
class Variants:
    """The variants of a sweep, in report order (named baselines first, then the grid)."""

    table: pd.DataFrame  # variant_id, label, baseline_name, is_grid, role, <swept fields>
    fields: tuple[str, ...]  # swept fields that vary across variants
    axes: tuple[str, ...]  # spec axes (or the varying fields when the spec has none)
    baseline_id: str | None
    reference: dict[str, Any] = field(default_factory=dict)  # axis -> value of ablation slices
    notes: tuple[str, ...] = ()

    def label(self, variant_id: str) -> str:
        return str(self.table.set_index("variant_id").at[variant_id, "label"])

    def order(self) -> list[str]:
        return self.table["variant_id"].tolist()

    def grid(self) -> pd.DataFrame:
        return self.table[self.table["is_grid"]]

    def role(self, variant_id: str) -> str:
        return str(self.table.set_index("variant_id").at[variant_id, "role"])

    def main_ids(self) -> list[str]:
        """The variants that may be called best: the grid, not baselines or controls."""
        return self.table.loc[self.table["role"] == MAIN, "variant_id"].tolist()


def collect_variants(data: SweepData, objective_means: dict[str, float] | None = None) -> Variants:
    """Build the variant table; ``objective_means`` (variant_id -> mean) picks the reference
    point when the report baseline is not itself a grid variant."""
    notes: list[str] = []
    rows = _field_rows(data)
    fields = tuple(f for f in data.swept_fields if rows[f].map(format_value).nunique() > 1)
    axes = tuple(data.axes) or fields
    names = _baseline_names(data, rows, axes)
    rows["baseline_name"] = rows["variant_id"].map(names)
    rows["is_grid"] = rows["baseline_name"].isna()
    roles = _baseline_roles(data.spec)
    rows["role"] = [
        MAIN if not isinstance(name, str) else roles.get(name, BASELINE)
        for name in rows["baseline_name"]
    ]
    rows["label"] = [
        f"{name} ({role})"
        if isinstance(name, str)
        else _grid_label(row, axes, runs_base=bool(data.spec) and not data.axes)
        for name, role, (_, row) in zip(rows["baseline_name"], rows["role"], rows.iterrows())
    ]
    rows = _order(rows, data, axes)
    baseline_id = _resolve_baseline(data, rows, notes)
    centre = _centre(data.spec, axes) if data.spec.get("search") == "one_at_a_time" else {}
    if centre:  # a one-at-a-time design: its slices go through the centre
        reference = centre
        notes.append(
            "ablation slices go through the one-at-a-time centre ("
            + ", ".join(f"{field_label(a)} = {format_value(v)}" for a, v in centre.items())
            + "): each axis row changes one thing."
        )
    else:
        reference = _reference_point(rows, axes, baseline_id, objective_means or {}, notes)
    return Variants(rows, fields, axes, baseline_id, reference, tuple(notes))


def _field_rows(data: SweepData) -> pd.DataFrame:
    """First stored value of every swept field per variant (trials first, then results)."""
    frames = []
    wanted = ["variant_name", *data.swept_fields]
    for frame in (data.trials, data.results):
        cols = ["variant_id", "seed", *[f for f in wanted if f in frame.columns]]
        frames.append(frame[cols])
    both = pd.concat(frames, ignore_index=True).sort_values(["variant_id", "seed"], kind="stable")
    out = both.groupby("variant_id", sort=True).first().reset_index()
    for f in wanted:
        if f not in out.columns:
            out[f] = None
    return out.drop(columns=["seed"])


def _baseline_specs(spec: dict) -> list[tuple[str, dict]]:
    raw = spec.get("baselines") or []
    if isinstance(raw, dict):
        return [(str(k), dict(v or {})) for k, v in raw.items()]
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("name", f"baseline_{i}"))
        overrides = entry.get("overrides")
        if overrides is None:
            overrides = {k: v for k, v in entry.items() if k not in ("name", "blind", "role")}
        overrides = dict(overrides)
        if entry.get("blind"):  # harness.spec.BaselineSpec: `blind: true` beside overrides
            overrides["blind"] = True
        out.append((name, overrides))
    return out


def _baseline_roles(spec: dict) -> dict[str, str]:
    """Baseline name -> role: the spec's ``role``, else control for a blind baseline."""
    raw = spec.get("baselines") or []
    entries = [{"name": k, **(v or {})} for k, v in raw.items()] if isinstance(raw, dict) else raw
    out = {}
    for entry in entries:
        if isinstance(entry, dict) and "name" in entry:
            role = entry.get("role") or (CONTROL if entry.get("blind") else BASELINE)
            out[str(entry["name"])] = role if role in ROLES else BASELINE
    return out


def _baseline_names(data: SweepData, rows: pd.DataFrame, axes: tuple[str, ...]) -> dict[str, str]:
    """variant_id -> baseline name: by the stored variant_name when the store has one (the
    sweep names each baseline variant after its spec entry), else by variant_id == name or by
    matching the baseline's overrides against the swept field values."""
    specs = _baseline_specs(data.spec)
    names: dict[str, str] = {}
    if rows["variant_name"].notna().any():
        spec_names = {name for name, _ in specs}
        for vid, name in zip(rows["variant_id"], rows["variant_name"]):
            if isinstance(name, str) and name in spec_names:
                names[vid] = name
        return names
    for name, overrides in specs:
        if name in set(rows["variant_id"]):
            names.setdefault(name, name)
            continue
        keys = [k for k in overrides if k in rows.columns]
        if not keys:
            continue
        match = rows[
            [all(same_value(r[k], overrides[k]) for k in keys) for _, r in rows.iterrows()]
        ]
        # a baseline that only sets axis values is a grid point: name it only if unambiguous
        if any(k not in axes for k in keys) or len(match) == 1:
            for vid in match["variant_id"]:
                names.setdefault(vid, name)
    return names


def _grid_label(row: pd.Series, axes: tuple[str, ...], runs_base: bool) -> str:
    """A grid variant's label; a spec without axes runs its base preset, named as stored."""
    if runs_base and isinstance(row.get("variant_name"), str):
        return str(row["variant_name"])
    return _compact_label(row, axes)


def _compact_label(row: pd.Series, axes: tuple[str, ...]) -> str:
    parts = [f"{SHORT_PREFIX.get(a, '')}{format_value(row[a])}" for a in axes if a in row]
    return " · ".join(parts) if parts else str(row["variant_id"])


def _order(rows: pd.DataFrame, data: SweepData, axes: tuple[str, ...]) -> pd.DataFrame:
    spec_order = {name: i for i, (name, _) in enumerate(_baseline_specs(data.spec))}

    def key(row: pd.Series) -> tuple:
        if isinstance(row["baseline_name"], str):
            head = (0, spec_order.get(row["baseline_name"], len(spec_order)), row["baseline_name"])
        else:
            head = (1, 0, "")
        return (head, *[sort_key(row[a]) for a in axes if a in row], row["variant_id"])

    keys = [key(r) for _, r in rows.iterrows()]
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    return rows.iloc[order].reset_index(drop=True)


def _resolve_baseline(data: SweepData, rows: pd.DataFrame, notes: list[str]) -> str | None:
    wanted = (data.spec.get("report") or {}).get("baseline")
    if wanted is not None:
        wanted = str(wanted)
        for col in ("variant_id", "variant_name", "baseline_name", "label"):
            hit = rows[rows[col].astype(str) == wanted]
            if len(hit):
                return str(hit["variant_id"].iloc[0])
        notes.append(
            f"report.baseline {wanted!r} matches no variant id or name in this store; "
            "tables compare against the first variant instead."
        )
    elif len(rows):
        notes.append("the spec sets no report.baseline; tables compare against the first variant.")
    return str(rows["variant_id"].iloc[0]) if len(rows) else None


def _reference_point(
    rows: pd.DataFrame,
    axes: tuple[str, ...],
    baseline_id: str | None,
    objective_means: dict[str, float],
    notes: list[str],
) -> dict[str, Any]:
    """Axis values that ablation slices hold fixed: the baseline's when it is a grid variant,
    else those of the grid variant with the best objective mean (a one-at-a-time design's
    centre replaces either: `_centre`)."""
    grid = rows[rows["is_grid"]]
    if grid.empty:
        return {}
    base = rows[rows["variant_id"] == baseline_id]
    if len(base) and bool(base["is_grid"].iloc[0]):
        source = base.iloc[0]
    else:
        scored = [
            (_rank_value(objective_means.get(v)), -i) for i, v in enumerate(grid["variant_id"])
        ]
        best = max(range(len(grid)), key=lambda i: scored[i])
        source = grid.iloc[best]
        notes.append(
            f"ablation slices hold the other axes at the best grid variant ({source['label']}), "
            "because the report baseline is not a grid point."
        )
    return {a: native(source[a]) for a in axes if a in source}


def _centre(spec: dict, axes: tuple[str, ...]) -> dict[str, Any]:
    """A one-at-a-time design's centre: each axis at its first value (`harness.plan`)."""
    values = {name: (axis or {}).get("values") for name, axis in (spec.get("axes") or {}).items()}
    if any(isinstance(v[0], dict) for v in values.values() if v):
        return {}  # a bundle axis: its stored label is not its value; the usual reference
    return {a: native(values[a][0]) for a in axes if values.get(a)}


def _rank_value(mean: float | None) -> float:
    """A variant without an objective score (none, or NaN) ranks below every scored one."""
    return -math.inf if mean is None or math.isnan(mean) else mean
