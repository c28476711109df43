"""Tidy per-trial and per-variant numbers that every table and figure reads.

``summarize(data)`` picks the headline rows (reports.headlines) of completed trials
(status "ok"), scales them for display, and computes per variant, per headline and per
benchmark category the seed mean, the seed standard deviation and a 95% interval that stays
in the metric's range (hierarchical percentile bootstrap over seeds, then items:
reports.intervals). Nothing is written; nothing is recomputed that lmms-eval computes
(the bootstrap re-aggregates items only after checking that they give the stored score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.headlines import (
    CATEGORY_TABLES,
    HEADLINES,
    PERCENT_BENCHMARKS,
    CategoryTable,
    Headline,
)
from reports.intervals import METHOD_SEEDS, bootstrap_interval, items_by_trial, resamples_items
from reports.load import SweepData
from reports.stats import mcnemar_test, summarize_seeds
from reports.variants import Variants, collect_variants, same_value

CATEGORY_COLUMNS = [
    "trial_id",
    "variant_id",
    "seed",
    "benchmark",
    "metric",
    "category",
    "value",
    "table",
]


@dataclass(frozen=True)
class Objective:
    benchmark: str
    metric: str
    category: str = "all"
    mode: str = "max"

    @property
    def label(self) -> str:
        tail = "" if self.category == "all" else f" [{self.category}]"
        return f"{self.benchmark} {self.metric}{tail}"


@dataclass(frozen=True)
class Summary:
    """Everything reports need, derived once from a SweepData."""

    data: SweepData
    variants: Variants
    objective: Objective
    headlines: tuple[Headline, ...]  # the headline columns present in this store
    values: pd.DataFrame  # trial_id, variant_id, seed, headline, value (scaled)
    stats: pd.DataFrame  # variant_id, headline, mean, sd, n, ci_low, ci_high, interval
    category_values: pd.DataFrame  # CATEGORY_COLUMNS: ..., category, value, table (its key)
    category_stats: pd.DataFrame  # table, variant_id, benchmark, metric, category, mean, sd,
    # n, ci_low, ci_high, interval
    notes: tuple[str, ...]
    # (variant_id, headline) -> row of ``stats``; variant_id -> its completed trials' items
    stat_index: dict[tuple[str, str], pd.Series] = field(default_factory=dict, repr=False)
    items_by_variant: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    cache: dict = field(default_factory=dict, repr=False)  # paired tests, computed once

    def stat(self, variant_id: str, headline: str) -> pd.Series | None:
        return self.stat_index.get((variant_id, headline))


def parse_objective(spec: dict[str, Any]) -> Objective:
    """The spec's first objective ({benchmark, metric, category, mode}); MME-P by default."""
    raw = spec.get("objective")
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    if isinstance(raw, dict) and raw.get("benchmark") and raw.get("metric"):
        return Objective(
            str(raw["benchmark"]),
            str(raw["metric"]),
            str(raw.get("category", "all")),
            str(raw.get("mode", "max")),
        )
    return Objective("mme", "mme_perception_score")


def ok_rows(data: SweepData) -> pd.DataFrame:
    """Result rows of completed trials (status "ok" in trials.parquet and in results)."""
    ok_trials = set(data.trials.loc[data.trials["status"] == "ok", "trial_id"])
    res = data.results
    return res[(res["status"] == "ok") & res["trial_id"].isin(ok_trials)]


def objective_values(data: SweepData, objective: Objective) -> pd.DataFrame:
    """trial_id, variant_id, seed, value of the objective for completed trials."""
    res = ok_rows(data)
    hit = res[
        (res["benchmark"] == objective.benchmark)
        & (res["metric"] == objective.metric)
        & (res["category"].astype(str) == objective.category)
    ]
    return hit[["trial_id", "variant_id", "seed", "value"]].reset_index(drop=True)


def summarize(data: SweepData) -> Summary:
    notes = list(data.notes)
    objective = parse_objective(data.spec)
    obj = objective_values(data, objective)
    sign = -1.0 if objective.mode == "min" else 1.0
    means = {v: sign * m for v, m in obj.groupby("variant_id")["value"].mean().items()}
    variants = collect_variants(data, means)
    notes += variants.notes

    res = ok_rows(data)
    headline_rows, present = [], []
    overall = res[res["category"].astype(str) == "all"]
    for h in HEADLINES:
        part = overall[overall["benchmark"] == h.benchmark]
        metric = next((m for m in h.metrics if (part["metric"] == m).any()), None)
        if metric is None:
            continue
        if h.key == "seed_all" and _same_as(part, "seed_all", "seed_image"):
            continue  # image-only benchmark: SEED-all would repeat SEED
        rows = part[part["metric"] == metric][["trial_id", "variant_id", "seed", "value"]].copy()
        rows["value"] = rows["value"] * h.scale
        rows["headline"] = h.key
        headline_rows.append(rows)
        present.append(h)
    values = _concat(headline_rows, ["trial_id", "variant_id", "seed", "value", "headline"])
    values = values[values["variant_id"].isin(variants.order())]
    by_trial = items_by_trial(data.items)
    by_key = {h.key: h for h in present}
    stats = _with_intervals(
        summarize_seeds(values, ["variant_id", "headline"]),
        values,
        ["variant_id", "headline"],
        lambda key: (by_key[key[1]].benchmark, by_key[key[1]].item_categories),
        by_trial,
    )
    notes += _interval_notes(stats, variants, by_key, data.items)
    cat_values = _category_values(res)
    cat_keys = ["table", "variant_id", "benchmark", "metric", "category"]
    cat_stats = _with_intervals(
        summarize_seeds(cat_values, cat_keys),
        cat_values,
        cat_keys,
        lambda key: (key[2], (str(key[4]),)),
        by_trial,
    )
    stat_index = {(r["variant_id"], r["headline"]): r for _, r in stats.iterrows()}
    items_by_variant = {}
    if data.items is not None:
        ok_items = data.items[data.items["trial_id"].isin(set(values["trial_id"]))]
        items_by_variant = {str(v): g for v, g in ok_items.groupby("variant_id", sort=False)}
    return Summary(
        data,
        variants,
        objective,
        tuple(present),
        values,
        stats,
        cat_values,
        cat_stats,
        tuple(notes),
        stat_index,
        items_by_variant,
    )


def _with_intervals(stats, values, keys, score_of, by_trial) -> pd.DataFrame:
    """``stats`` with ci_low / ci_high from reports.intervals (instead of Student-t) and the
    method in ``interval``; ``score_of(key)`` gives (benchmark, item categories)."""
    stats = stats.drop(columns=["ci_half", "ci_low", "ci_high"]).copy()
    lows, highs, methods = [], [], []
    groups = dict(iter(values.groupby(keys, sort=True, dropna=False))) if len(values) else {}
    for _, row in stats.iterrows():
        key = tuple(row[k] for k in keys)
        benchmark, categories = score_of(key)
        low, high, method = bootstrap_interval(
            groups[key], by_trial, benchmark, categories, ("interval", *map(str, key))
        )
        lows.append(low), highs.append(high), methods.append(method)
    return stats.assign(ci_low=lows, ci_high=highs, interval=methods)


def _interval_notes(
    stats: pd.DataFrame, variants: Variants, by_key: dict, items: pd.DataFrame | None
) -> list[str]:
    """Where a headline cell's interval is not the bootstrap over seeds, then items that the
    captions describe: say so, naming the cells (or the benchmark, where the store holds
    none of its items)."""
    stored = set() if items is None else set(items["benchmark"])
    seeds_only, one_seed, no_items = [], [], []
    for _, row in stats.iterrows():
        headline = by_key[row["headline"]]
        if not resamples_items(headline.benchmark) or pd.isna(row["ci_low"]):
            continue
        if headline.benchmark not in stored:
            no_items += [headline.label] if headline.label not in no_items else []
            continue
        cell = f"{variants.label(row['variant_id'])} on {headline.label}"
        if row["interval"] == METHOD_SEEDS:
            seeds_only.append(cell)
        elif row["n"] == 1:
            one_seed.append(cell)
    order = [h.label for h in by_key.values()]  # headline order, as in the tables
    no_items.sort(key=order.index)
    notes = []
    if no_items:
        notes.append(
            f"the store holds no per-item results of {', '.join(no_items)}: their intervals "
            "are over seeds only."
        )
    if seeds_only:
        notes.append(
            "intervals over seeds only (the items of some trials are missing or do not give "
            f"the stored score, so items are not resampled): {', '.join(seeds_only)}."
        )
    if one_seed:
        notes.append(
            "intervals over items only (one seed: no seed-to-seed spread in them): "
            f"{', '.join(one_seed)}."
        )
    return notes


def _category_values(res: pd.DataFrame) -> pd.DataFrame:
    """Per-category rows for each CategoryTable (first stored metric of its list), scaled;
    a benchmark no CategoryTable names gets one table of its first stored metric."""
    cats = res[res["category"].astype(str) != "all"]
    specs = list(CATEGORY_TABLES)
    for bench in sorted(set(cats["benchmark"]) - {t.benchmark for t in specs} - {"train"}):
        metric = sorted(cats.loc[cats["benchmark"] == bench, "metric"].unique())[0]
        specs.append(CategoryTable(f"categories_{bench}", bench, (metric,), bench, metric, ""))
    frames = []
    # tool scores by phrasing (seen / unseen) have their own table (reports.tools_table)
    cats = cats[~cats["category"].astype(str).str.startswith("phrasing=")]
    for spec in specs:
        part = cats[cats["benchmark"] == spec.benchmark]
        metric = next((m for m in spec.metrics if (part["metric"] == m).any()), None)
        if metric is None:
            continue
        rows = part[part["metric"] == metric][CATEGORY_COLUMNS[:-1]].copy()
        rows["category"] = rows["category"].astype(str)
        rows["value"] = rows["value"] * PERCENT_BENCHMARKS.get(spec.benchmark, 1.0)
        rows["table"] = spec.key
        frames.append(rows)
    return _concat(frames, CATEGORY_COLUMNS)


def category_spec(key: str) -> CategoryTable:
    """The CategoryTable of a ``table`` key (a generic one for benchmarks not listed)."""
    known = {t.key: t for t in CATEGORY_TABLES}
    if key in known:
        return known[key]
    bench = key.removeprefix("categories_")
    return CategoryTable(key, bench, (), f"{bench} per category", "score", "")


def _same_as(part: pd.DataFrame, a: str, b: str) -> bool:
    left = part[part["metric"] == a].set_index("trial_id")["value"]
    right = part[part["metric"] == b].set_index("trial_id")["value"]
    if left.empty or right.empty or set(left.index) != set(right.index):
        return False
    return all(same_value(left[t], right[t]) for t in left.index)


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def slice_variants(summary: Summary, free: tuple[str, ...]) -> pd.DataFrame:
    """Grid variants whose axes other than ``free`` sit at the reference point."""
    grid = summary.variants.grid()
    ref = summary.variants.reference
    keep = [
        all(same_value(row[a], ref[a]) for a in ref if a not in free and a in row)
        for _, row in grid.iterrows()
    ]
    return grid[keep]


def mcnemar_between(summary: Summary, a_id: str, b_id: str, headline: Headline):
    """McNemar's test of two variants on a headline's items (None without shared items),
    computed once per summary (tables and the effects section ask for the same pairs)."""
    key = ("mcnemar", a_id, b_id, headline.key)
    if key not in summary.cache:
        a, b = paired_items(summary, a_id, headline), paired_items(summary, b_id, headline)
        result = None if a is None or b is None else mcnemar_test(a, b)
        summary.cache[key] = None if result is None or result.n_pairs == 0 else result
    return summary.cache[key]


def paired_items(summary: Summary, variant_id: str, headline: Headline) -> pd.DataFrame | None:
    """seed, item_id, correct of a variant's completed trials on a headline's item subset."""
    key = ("items", variant_id, headline.key)
    if key not in summary.cache:
        items = summary.items_by_variant.get(variant_id)
        part = None
        if items is not None and headline.pairs_items:
            part = items[items["benchmark"] == headline.benchmark]
            if headline.item_categories is not None:
                part = part[part["category"].astype(str).isin(headline.item_categories)]
            part = part[["seed", "item_id", "correct"]] if len(part) else None
        summary.cache[key] = part
    return summary.cache[key]
