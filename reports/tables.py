"""Paper tables from a Summary: main results, effects, one ablation per swept axis,
per-category results, tool calling on seen and unseen phrasings, cost, and failed trials.
Pure: each builder returns a ``Table`` (display strings for Markdown/LaTeX plus numeric data
for CSV); reports.render turns it into text.

Cost and failure tables live in reports.costs, the effects table in reports.effects; the
Table type and cell formats in reports.table. Cells read "mean [low, high] (n)": the mean over
n training seeds with a 95% interval that stays in the metric's range (reports.intervals).
Differences are tested with Welch's t-test over seeds (reports.stats); McNemar's item-level
test is shown beside it as secondary. Rows are in variant order (named baselines and
controls, then the grid sorted by axis values), so the same store always gives the same
tables. Only main variants can be bold as the best of a column.
"""

from __future__ import annotations

import math

import pandas as pd

from reports.costs import cost_table, failures_table
from reports.effects import effects_table, seed_values
from reports.headlines import CATEGORY_TABLES, category_order
from reports.stats import welch_test
from reports.summary import Summary, category_spec, mcnemar_between, slice_variants
from reports.table import MISSING, Table, bold_best, fmt_ci, fmt_interval, fmt_p
from reports.tools_table import tools_phrasing_table
from reports.variants import MAIN, field_label, format_value

ALPHA = 0.05


def main_table(summary: Summary) -> Table:
    """Variants x headline benchmarks, best main-variant mean per column in bold."""
    v = summary.variants
    fields = list(v.fields)
    disp_rows, data_rows, means = [], [], []
    for _, row in v.table.iterrows():
        vid = row["variant_id"]
        cells = [row["label"], row["role"], *[format_value(row[f]) for f in fields]]
        record = {
            "variant_id": vid,
            "label": row["label"],
            "role": row["role"],
            **{f: row[f] for f in fields},
        }
        row_means = {}
        for h in summary.headlines:
            st = summary.stat(vid, h.key)
            mean, low, high, n = (
                (st["mean"], st["ci_low"], st["ci_high"], int(st["n"]))
                if st is not None
                else (math.nan, math.nan, math.nan, 0)
            )
            cells.append(fmt_interval(mean, low, high, n))
            record.update(
                {
                    f"{h.key}_mean": mean,
                    f"{h.key}_sd": st["sd"] if st is not None else math.nan,
                    f"{h.key}_ci_low": low,
                    f"{h.key}_ci_high": high,
                    f"{h.key}_n": n,
                }
            )
            row_means[h.label] = mean
        disp_rows.append(cells)
        data_rows.append(record)
        means.append(row_means)
    columns = [
        "Variant",
        "Role",
        *[field_label(f) for f in fields],
        *[h.label for h in summary.headlines],
    ]
    display = pd.DataFrame(disp_rows, columns=columns)
    means_df = pd.DataFrame(means, columns=[h.label for h in summary.headlines])
    eligible = (v.table["role"] == MAIN).tolist()
    bold = bold_best(display, means_df, 2 + len(fields), eligible)
    caption = (
        "Main results. Each cell: mean over training seeds [95% interval] (number of seeds); "
        "the interval is a percentile bootstrap over seeds, then benchmark items, so it stays "
        "in the metric's range. Best main-variant mean per column in bold; baselines and "
        "controls (Role) are never bold. " + " ".join(h.meaning for h in summary.headlines)
    )
    return Table(
        "main",
        "Main results",
        caption,
        display,
        pd.DataFrame(data_rows),
        2 + len(fields),
        frozenset(bold),
    )


def ablation_tables(summary: Summary) -> list[Table]:
    """One table per swept axis: its values at the reference point, delta vs the baseline."""
    return [_ablation_table(summary, axis) for axis in summary.variants.axes]


def _ablation_table(summary: Summary, axis: str) -> Table:
    v = summary.variants
    base_id = v.baseline_id
    rows = slice_variants(summary, (axis,))
    ids = [vid for vid in rows["variant_id"] if vid != base_id]
    disp_rows, data_rows, bold = [], [], set()
    for i, vid in enumerate([base_id, *ids] if base_id else ids):
        row = v.table.set_index("variant_id").loc[vid]
        is_base = vid == base_id
        cells = [format_value(row[axis]) if row["is_grid"] else MISSING, row["label"]]
        for j, h in enumerate(summary.headlines):
            st = summary.stat(vid, h.key)
            mean = st["mean"] if st is not None else math.nan
            rec = {
                "axis": axis,
                "value": row[axis],
                "variant_id": vid,
                "label": row["label"],
                "is_baseline": is_base,
                "headline": h.key,
                "mean": mean,
                "ci_low": st["ci_low"] if st is not None else math.nan,
                "ci_high": st["ci_high"] if st is not None else math.nan,
                "n": int(st["n"]) if st is not None else 0,
                "delta": math.nan,
                "delta_low": math.nan,
                "delta_high": math.nan,
                "p_value": math.nan,
                "mcnemar_b": math.nan,
                "mcnemar_c": math.nan,
                "mcnemar_p": math.nan,
            }
            if is_base or st is None:
                cells.append(fmt_interval(mean, rec["ci_low"], rec["ci_high"], rec["n"]))
            else:
                welch = welch_test(
                    seed_values(summary, vid, h.key), seed_values(summary, base_id, h.key)
                )
                rec.update(delta=welch.diff, delta_low=welch.low, delta_high=welch.high)
                rec.update(p_value=welch.p_value)
                text = MISSING if math.isnan(welch.diff) else f"{welch.diff:+.1f}"
                parts = [] if math.isnan(welch.p_value) else [fmt_p(welch.p_value)]
                test = _mcnemar(summary, vid, base_id, h)
                if test is not None:
                    rec.update(mcnemar_b=test.b, mcnemar_c=test.c, mcnemar_p=test.p_value)
                    parts.append(f"items {fmt_p(test.p_value)}")
                text += f" ({'; '.join(parts)})" if parts else ""
                if welch.p_value < ALPHA:
                    bold.add((i, 2 + j))
                cells.append(text)
            data_rows.append(rec)
        disp_rows.append(cells)
    label = field_label(axis)
    display = pd.DataFrame(
        disp_rows, columns=[label, "Variant", *[h.label for h in summary.headlines]]
    )
    held = ", ".join(
        f"{field_label(a)} = {format_value(x)}" for a, x in v.reference.items() if a != axis
    )
    base_label = v.label(base_id) if base_id else MISSING
    caption = (
        f"Ablation over {label}"
        + (f" (other axes held at {held})" if held else "")
        + f". First row: the comparison variant {base_label}, mean [95% interval] (seeds). "
        "Other rows: difference of seed means from it, with p of Welch's t-test over seeds "
        f"(bold where p < {ALPHA}) and, secondary, 'items p': McNemar's exact test on paired "
        "per-item correctness pooled over seeds, which ignores seed-to-seed spread."
        + (" No McNemar p: the store has no items.parquet." if summary.data.items is None else "")
        + _unpaired_note(summary)
    )
    safe = axis.replace(".", "_")
    return Table(
        f"ablation_{safe}",
        f"Ablation: {label}",
        caption,
        display,
        pd.DataFrame(data_rows),
        2,
        frozenset(bold),
    )


def _unpaired_note(summary: Summary) -> str:
    labels = [h.label for h in summary.headlines if not h.pairs_items]
    if not labels or summary.data.items is None:
        return ""
    return (
        f" {', '.join(labels)}: no McNemar p (the stored per-item correctness measures "
        "something else: tools items hold round-trip fidelity)."
    )


def _mcnemar(summary: Summary, vid: str, base_id: str, headline):
    return mcnemar_between(summary, vid, base_id, headline)


def category_tables(summary: Summary) -> list[Table]:
    """Variants x categories: MME's 14, MMBench categories and L2-categories, SEED question
    types, tools per tool (reports.headlines.CATEGORY_TABLES), in that order."""
    tables = []
    stats = summary.category_stats
    order_keys = [t.key for t in CATEGORY_TABLES]
    keys = sorted(
        stats["table"].unique(),
        key=lambda k: (k not in order_keys, order_keys.index(k) if k in order_keys else 0, k),
    )
    for key in keys:
        spec = category_spec(key)
        part = stats[stats["table"] == key]
        bench = spec.benchmark
        cats = category_order(bench, sorted(part["category"].unique()))
        metric = str(part["metric"].iloc[0])
        disp_rows, means, eligible = [], [], []
        data = part[["variant_id", "category", "mean", "sd", "n", "ci_low", "ci_high"]].copy()
        for vid, label in zip(summary.variants.order(), summary.variants.table["label"]):
            vpart = part[part["variant_id"] == vid].set_index("category")
            if vpart.empty:
                continue
            cells, row_means = [label], {}
            for c in cats:
                if c in vpart.index:
                    r = vpart.loc[c]
                    cells.append(
                        fmt_interval(
                            r["mean"], r["ci_low"], r["ci_high"], int(r["n"]), with_n=False
                        )
                    )
                    row_means[c] = r["mean"]
                else:
                    cells.append(MISSING)
                    row_means[c] = math.nan
            disp_rows.append(cells)
            means.append(row_means)
            eligible.append(summary.variants.role(vid) == MAIN)
        display = pd.DataFrame(disp_rows, columns=["Variant", *cats])
        bold = bold_best(display, pd.DataFrame(means, columns=cats), 1, eligible)
        order = {vid: i for i, vid in enumerate(summary.variants.order())}
        data["_v"] = data["variant_id"].map(order)
        data["_c"] = data["category"].map({c: i for i, c in enumerate(cats)})
        data = data.sort_values(["_v", "_c"]).drop(columns=["_v", "_c"])
        data.insert(
            1,
            "label",
            data["variant_id"].map(summary.variants.table.set_index("variant_id")["label"]),
        )
        caption = (
            f"{spec.title} ({spec.unit}; stored metric {bench}/{metric}), mean over seeds "
            "[95% bootstrap interval]; best main variant per column in bold. " + spec.source
        ).strip()
        tables.append(
            Table(
                key,
                spec.title,
                caption,
                display,
                data.reset_index(drop=True),
                1,
                frozenset(bold),
            )
        )
    return tables


def all_tables(summary: Summary) -> list[Table]:
    """Every table of the report, in report order."""
    tools = tools_phrasing_table(summary)
    return [
        main_table(summary),
        effects_table(summary),
        *ablation_tables(summary),
        *category_tables(summary),
        *([tools] if tools is not None else []),
        cost_table(summary),
        failures_table(summary),
    ]


__all__ = [
    "Table",
    "all_tables",
    "main_table",
    "ablation_tables",
    "category_tables",
    "cost_table",
    "failures_table",
    "fmt_ci",
]
