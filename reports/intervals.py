"""Intervals of a variant's score that stay inside the metric's range: a hierarchical
percentile bootstrap over training seeds, then benchmark items (reports.stats).

For each (variant, headline) and (variant, category) the seed scores come from the results
store; each seed's items (items.parquet) give the item-level resamples, with the score
recomputed the way lmms-eval aggregates it:

- MME: per category, acc + acc+ (both questions of an image right) in percent, summed over
  the headline's categories; items are resampled by image within each category;
- MMBench (circular questions) and SEED: percent of items right.

A resampler is used only where the items reproduce the stored score of that trial exactly
(to 1e-6); elsewhere (tool calling, whose items hold round-trip fidelity; MMBench
L2-categories; a store without items) the bootstrap resamples seeds only, which still keeps
the interval inside the range of the seed scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.stats import hierarchical_bootstrap, stable_rng

Resampler = Callable[[np.random.Generator, int], np.ndarray]
METHOD_ITEMS = "bootstrap over seeds, then items"
METHOD_SEEDS = "bootstrap over seeds"


def mme_image(item_id: str) -> str:
    """The image of an MME question (``existence/mme-000001.png#0`` -> ``...png``): acc+
    counts an image right when both its questions are."""
    return item_id.rsplit("#", 1)[0]


@dataclass(frozen=True)
class CategoryItems:
    """One trial's items of one (benchmark, category): correctness, and for MME per image."""

    correct: np.ndarray  # float 0/1 per item
    right: np.ndarray  # MME: questions right per image
    asked: np.ndarray  # MME: questions per image


TrialItems = dict[tuple[str, str], CategoryItems]


def items_by_trial(items: pd.DataFrame | None) -> dict[str, TrialItems]:
    """trial_id -> (benchmark, category) -> arrays, built once for every bootstrap."""
    if items is None or items.empty:
        return {}
    out: dict[str, TrialItems] = {}
    frame = items[["trial_id", "benchmark", "category", "item_id", "correct"]]
    for (trial, bench, cat), group in frame.groupby(
        ["trial_id", "benchmark", "category"], sort=True, observed=True
    ):
        correct = group["correct"].to_numpy(dtype=float)
        right = asked = np.empty(0)
        if bench == "mme":
            _, image = np.unique(group["item_id"].map(mme_image).to_numpy(), return_inverse=True)
            right = np.bincount(image, weights=correct)
            asked = np.bincount(image).astype(float)
        out.setdefault(str(trial), {})[(str(bench), str(cat))] = CategoryItems(
            correct, right, asked
        )
    return out


def _mme_score(parts: list[CategoryItems]) -> float:
    return float(
        sum(100 * (c.right.sum() / c.asked.sum() + (c.right == c.asked).mean()) for c in parts)
    )


def _mme_resampler(parts: list[CategoryItems]) -> Resampler:
    def draw(rng: np.random.Generator, m: int) -> np.ndarray:
        total = np.zeros(m)
        for c in parts:
            idx = rng.integers(len(c.right), size=(m, len(c.right)))
            k, q = c.right[idx], c.asked[idx]
            total += 100 * (k.sum(1) / q.sum(1) + (k == q).mean(1))
        return total

    return draw


def _percent_resampler(correct: np.ndarray, rows_at_once: int = 2**22) -> Resampler:
    def draw(rng: np.random.Generator, m: int) -> np.ndarray:
        # drawn in blocks of replicates (the same numbers as one draw: numpy fills in order),
        # so that SEED's 14k items x 2,000 replicates do not need one 200-million-int array
        n, out = len(correct), []
        block = max(1, rows_at_once // max(n, 1))
        for start in range(0, m, block):
            picks = rng.integers(n, size=(min(block, m - start), n))
            out.append(100 * correct[picks].mean(1))
        return np.concatenate(out) if out else np.empty(0)

    return draw


def resamples_items(benchmark: str) -> bool:
    """Whether intervals of this benchmark's scores resample its items (`item_resampler`)."""
    return benchmark in ("mme", "mmbench", "seedbench")


def item_resampler(
    benchmark: str, items: TrialItems, categories: tuple[str, ...] | None, stored: float
) -> Resampler | None:
    """Item-level resampler of one trial's score, or None when its items (of ``categories``,
    None = all) do not give the ``stored`` (displayed) value."""
    parts = [
        part
        for (bench, cat), part in sorted(items.items())
        if bench == benchmark and (categories is None or cat in categories)
    ]
    if not parts:
        return None
    if benchmark == "mme":
        value, fn = _mme_score(parts), _mme_resampler(parts)
    elif resamples_items(benchmark):
        correct = np.concatenate([p.correct for p in parts])
        value, fn = 100 * float(correct.mean()), _percent_resampler(correct)
    else:
        return None
    return fn if math.isclose(value, stored, rel_tol=1e-6, abs_tol=1e-6) else None


def bootstrap_interval(
    rows: pd.DataFrame,
    by_trial: dict[str, TrialItems],
    benchmark: str,
    categories: tuple[str, ...] | None,
    key: tuple,
) -> tuple[float, float, str]:
    """(low, high, method) for the seed rows (trial_id, value) of one variant and score."""
    rows = rows.sort_values("trial_id")
    rows = rows[np.isfinite(rows["value"].astype(float))]  # as the mean and n leave NaN out
    scores = rows["value"].astype(float).tolist()
    fns = []
    for trial, value in zip(rows["trial_id"], scores):
        items = by_trial.get(trial)
        fns.append(None if items is None else item_resampler(benchmark, items, categories, value))
    if not scores or (len(scores) < 2 and fns[0] is None):
        return (math.nan, math.nan, METHOD_SEEDS)
    method = METHOD_ITEMS if all(f is not None for f in fns) else METHOD_SEEDS
    if method == METHOD_SEEDS:
        fns = [None] * len(fns)  # one method per interval
    low, high = hierarchical_bootstrap(scores, fns, stable_rng(*key))
    return (low, high, method)
