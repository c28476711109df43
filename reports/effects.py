"""The effects a sweep measured, in numbers and in words: each swept axis, each control and
each baseline, against the seed spread.

- An **axis effect** compares one value of an axis with the reference value, the other axes
  held at the reference point (the slices of the ablation tables): "IAN depth 2 vs 1".
- A **control or baseline effect** compares every main variant with it: "depth 1 · λ 0 vs
  blind (control)".

Each comparison, per headline benchmark, is the difference of seed means with its 95% Welch
interval and Welch's two-sided p over per-seed scores (reports.stats: the training seed is
the unit); McNemar's exact p on paired items is given beside it as secondary. `effect_lines`
says in one sentence per axis or control what separated at p < 0.05 and what did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from reports.stats import welch_test
from reports.summary import Summary, mcnemar_between, slice_variants
from reports.table import MISSING, Table, fmt_diff, fmt_p
from reports.variants import MAIN, field_label, format_value, same_value

ALPHA = 0.05


@dataclass(frozen=True)
class Effect:
    """mean(a) - mean(b) on one headline."""

    kind: str  # "axis", or the role of b ("control", "baseline")
    topic: str  # the axis (dotted path) or b's label
    a_id: str
    b_id: str
    a_label: str
    b_label: str
    headline: str  # headline key
    diff: float
    low: float
    high: float
    p_value: float  # Welch, seeds
    mcnemar_p: float  # items (secondary); NaN where items do not measure the headline
    n_a: int
    n_b: int

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < ALPHA


def seed_values(summary: Summary, variant_id: str, headline: str) -> list[float]:
    """A variant's per-seed scores of one headline (completed trials, in seed order)."""
    if "seed_values" not in summary.cache:
        v = summary.values.sort_values("seed")
        summary.cache["seed_values"] = {
            key: g["value"].astype(float).tolist()
            for key, g in v.groupby(["variant_id", "headline"], sort=False)
        }
    return summary.cache["seed_values"].get((variant_id, headline), [])


def compare(summary: Summary, kind: str, topic: str, a_id: str, b_id: str) -> list[Effect]:
    """``a`` against ``b`` on every headline."""
    out = []
    labels = summary.variants.table.set_index("variant_id")["label"]
    for h in summary.headlines:
        a, b = seed_values(summary, a_id, h.key), seed_values(summary, b_id, h.key)
        if not a or not b:
            continue
        w = welch_test(a, b)
        result = mcnemar_between(summary, a_id, b_id, h)
        mc = math.nan if result is None else result.p_value
        out.append(
            Effect(
                kind,
                topic,
                a_id,
                b_id,
                str(labels[a_id]),
                str(labels[b_id]),
                h.key,
                w.diff,
                w.low,
                w.high,
                w.p_value,
                mc,
                w.n_a,
                w.n_b,
            )  # fmt: skip
        )
    return out


def axis_effects(summary: Summary) -> list[Effect]:
    """Every non-reference value of each axis against the reference value (one-factor)."""
    v = summary.variants
    out = []
    for axis in v.axes:
        if axis not in v.reference:
            continue
        rows = slice_variants(summary, (axis,))
        ref = rows[[same_value(x, v.reference[axis]) for x in rows[axis]]]
        if ref.empty:
            continue
        ref_id = str(ref["variant_id"].iloc[0])
        for _, row in rows.iterrows():
            if row["variant_id"] != ref_id:
                out += compare(summary, "axis", axis, str(row["variant_id"]), ref_id)
    return out


def control_effects(summary: Summary) -> list[Effect]:
    """Every main variant against each baseline and control."""
    v = summary.variants
    out = []
    for _, other in v.table[v.table["role"] != MAIN].iterrows():
        for main_id in v.main_ids():
            out += compare(summary, other["role"], other["label"], main_id, other["variant_id"])
    return out


def all_effects(summary: Summary) -> list[Effect]:
    return axis_effects(summary) + control_effects(summary)


def _label(summary: Summary, key: str) -> str:
    return next(h.label for h in summary.headlines if h.key == key)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _untested(summary: Summary, effects: list[Effect]) -> str:
    names = ", ".join(_label(summary, e.headline) for e in effects)
    return f"not tested on {names} (fewer than 2 seeds on a side)"


def _axis_line(summary: Summary, axis: str, effects: list[Effect]) -> str:
    v = summary.variants
    table = v.table.set_index("variant_id")
    a_val = format_value(table.at[effects[0].a_id, axis])
    b_val = format_value(table.at[effects[0].b_id, axis])
    held = ", ".join(
        f"{field_label(k)} = {format_value(x)}" for k, x in v.reference.items() if k != axis
    )
    head = f"{field_label(axis)} {a_val} vs {b_val}" + (f" ({held})" if held else "")
    untested = [e for e in effects if math.isnan(e.p_value)]
    found = [e for e in effects if e.significant]
    spread = [e for e in effects if not e.significant and e not in untested]
    clauses = []
    if found:
        clauses.append(
            "; ".join(
                f"{_label(summary, e.headline)} {fmt_diff(e.diff, e.low, e.high)}, {_p(e.p_value)}"
                for e in found
            )
        )
    if spread and not found and not untested:
        details = "; ".join(
            f"{_label(summary, e.headline)} {e.diff:+.1f}, {_p(e.p_value)}" for e in spread
        )
        clauses.append(f"no difference beyond seed spread on any benchmark ({details})")
    elif spread:
        names = ", ".join(_label(summary, e.headline) for e in spread)
        clauses.append(f"no difference beyond seed spread on {names}")
    if untested:
        clauses.append(_untested(summary, untested))
    return f"{head}: {'; '.join(clauses)}."


def _control_line(summary: Summary, label: str, effects: list[Effect]) -> str:
    """What the main variants do against one control or baseline; a main variant with fewer
    than 2 seeds on a side is counted as untested, never as "above" or "not above"."""
    parts, none, untested_only = [], [], []
    n_main = len(summary.variants.main_ids())  # a main variant with no scores is untested too
    for h in summary.headlines:
        every = [e for e in effects if e.headline == h.key]
        part = [e for e in every if not math.isnan(e.p_value)]
        if not part:
            untested_only += [h.label] if every else []
            continue
        total = max(n_main, len(every))
        note = f" ({total - len(part)} not tested)" if total > len(part) else ""
        above = [e for e in part if e.significant and e.diff > 0]
        below = [e for e in part if e.significant and e.diff < 0]
        if len(above) == total:
            lo, hi = min(e.diff for e in above), max(e.diff for e in above)
            worst = max(e.p_value for e in above)
            if total == 1:
                parts.append(f"the main variant is above it on {h.label} ({lo:+.1f}, {_p(worst)})")
            else:
                bound = _p(worst).replace("=", "≤")
                parts.append(
                    f"every main variant is above it on {h.label} ({lo:+.1f} to {hi:+.1f}, "
                    f"each {bound})"
                )
        elif above:
            parts.append(f"{len(above)} of {total} main variants are above it on {h.label}{note}")
        elif note:
            parts.append(f"no tested main variant is above it on {h.label}{note}")
        else:
            none.append(h.label)
        if below:
            parts.append(f"{len(below)} of {total} are below it on {h.label}")
    if none:
        parts.append(f"no main variant is above it beyond seed spread on {', '.join(none)}")
    if untested_only:
        parts.append(f"not tested on {', '.join(untested_only)} (fewer than 2 seeds on a side)")
    return f"{label}: {'; '.join(parts)}." if parts else f"{label}: no seed-level comparison."


def effect_lines(summary: Summary) -> list[str]:
    """One sentence per axis value and per baseline or control."""
    effects = all_effects(summary)
    lines = []
    axis_pairs = dict.fromkeys((e.topic, e.a_id) for e in effects if e.kind == "axis")
    for axis, a_id in axis_pairs:
        lines.append(
            _axis_line(summary, axis, [e for e in effects if e.topic == axis and e.a_id == a_id])
        )
    for label in dict.fromkeys(e.topic for e in effects if e.kind != "axis"):
        lines.append(_control_line(summary, label, [e for e in effects if e.topic == label]))
    return lines


def effects_table(summary: Summary) -> Table:
    """Every comparison of `all_effects`: difference [95% Welch interval], Welch p, McNemar p."""
    rows, disp = [], []
    for e in all_effects(summary):
        rows.append(
            {
                "kind": e.kind,
                "topic": e.topic,
                "a_variant_id": e.a_id,
                "a_label": e.a_label,
                "b_variant_id": e.b_id,
                "b_label": e.b_label,
                "headline": e.headline,
                "diff": e.diff,
                "diff_low": e.low,
                "diff_high": e.high,
                "p_value": e.p_value,
                "mcnemar_p": e.mcnemar_p,
                "n_a": e.n_a,
                "n_b": e.n_b,
            }
        )
        disp.append(
            [
                field_label(e.topic) if e.kind == "axis" else e.kind,
                f"{e.a_label} vs {e.b_label}",
                _label(summary, e.headline),
                fmt_diff(e.diff, e.low, e.high),
                fmt_p(e.p_value),
                MISSING if math.isnan(e.mcnemar_p) else fmt_p(e.mcnemar_p),
                f"{e.n_a} / {e.n_b}",
            ]
        )
    columns = ["Effect of", "Comparison", "Benchmark", "Difference [95% CI]", "p (seeds)",
               "p (items)", "seeds"]  # fmt: skip
    caption = (
        "Effects: difference of seed means (A - B) with its 95% Welch interval and the p of "
        "Welch's two-sided t-test over per-seed scores (the training seed is the unit: seeds "
        "differ by more than items suggest). 'p (items)': McNemar's exact test on paired "
        "per-item correctness pooled over seeds, secondary: it treats every item of every seed "
        f"as independent. Significant: p (seeds) < {ALPHA}; no correction for the number of "
        "comparisons. Axis rows hold the other axes at the reference point."
    )
    return Table(
        "effects",
        "Effects",
        caption,
        pd.DataFrame(disp, columns=columns),
        pd.DataFrame(rows, columns=list(rows[0]) if rows else None),
        3,
        frozenset(),
    )
