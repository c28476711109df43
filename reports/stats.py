"""Statistics over training seeds and paired items: t-intervals, McNemar, Wilson.

- Seed intervals: a variant's score is the mean over its training seeds, with a two-sided
  Student-t interval (n - 1 degrees of freedom); with one seed the interval is undefined (NaN).
- McNemar's exact test compares two variants on the same benchmark items: only discordant
  pairs count (b = A right and B wrong, c = A wrong and B right), and under the null each is a
  fair coin, so p = scipy.stats.binomtest(b, b + c, 0.5).pvalue (two-sided).
  Pooling over seeds pairs the k-th seed of A with the k-th seed of B (seeds sorted) and sums
  the discordant counts; this treats every (seed, item) pair as independent, which is the
  usual approximation (lm-evaluation-harness does the same per document).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedInterval:
    """Mean over seeds with a t-interval: mean +- half_width = [low, high]."""

    mean: float
    sd: float
    n: int
    half_width: float
    low: float
    high: float


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> SeedInterval:
    """Mean and two-sided Student-t interval of ``values`` (NaNs dropped)."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(arr.size)
    if n == 0:
        return SeedInterval(math.nan, math.nan, 0, math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n < 2:
        return SeedInterval(mean, math.nan, 1, math.nan, math.nan, math.nan)
    sd = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return SeedInterval(mean, sd, n, half, mean - half, mean + half)


def summarize_seeds(
    frame: pd.DataFrame, by: Sequence[str], value: str = "value", confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """One row per ``by`` group: mean, sd, n, ci_half, ci_low, ci_high over its rows."""
    columns = [*by, "mean", "sd", "n", "ci_half", "ci_low", "ci_high"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in frame.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        iv = t_interval(group[value].tolist(), confidence)
        rows.append((*key, iv.mean, iv.sd, iv.n, iv.half_width, iv.low, iv.high))
    return pd.DataFrame(rows, columns=columns)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c (1.0 when b + c = 0)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class McNemarResult:
    """Paired comparison of variant A against B on shared items."""

    b: int  # A right, B wrong
    c: int  # A wrong, B right
    n_pairs: int  # aligned (seed, item) pairs
    p_value: float


def discordant_counts(items_a: pd.DataFrame, items_b: pd.DataFrame) -> tuple[int, int, int]:
    """Align two trials' items by item_id; return (b, c, n_pairs)."""
    for name, frame in (("A", items_a), ("B", items_b)):
        dup = frame["item_id"].duplicated()
        if dup.any():
            raise ValueError(
                f"items of variant {name} repeat item_id {frame['item_id'][dup].iloc[0]!r} within "
                "one trial and benchmark; item ids must be unique per trial."
            )
    merged = items_a[["item_id", "correct"]].merge(
        items_b[["item_id", "correct"]], on="item_id", suffixes=("_a", "_b")
    )
    a = merged["correct_a"].astype(bool).to_numpy()
    b = merged["correct_b"].astype(bool).to_numpy()
    return int((a & ~b).sum()), int((~a & b).sum()), int(len(merged))


def mcnemar_test(
    items_a: pd.DataFrame, items_b: pd.DataFrame, per_seed: bool = False
) -> McNemarResult | list[McNemarResult]:
    """McNemar exact test of variant A vs B on per-item correctness (one benchmark subset).

    ``items_*`` have columns seed, item_id, correct. Seeds are paired in sorted order. With
    ``per_seed`` a result per seed pair is returned, else the counts are pooled."""
    seeds_a = sorted(items_a["seed"].unique())
    seeds_b = sorted(items_b["seed"].unique())
    results = []
    for sa, sb in zip(seeds_a, seeds_b):
        b, c, n = discordant_counts(items_a[items_a["seed"] == sa], items_b[items_b["seed"] == sb])
        results.append(McNemarResult(b, c, n, mcnemar_exact(b, c)))
    if per_seed:
        return results
    b = sum(r.b for r in results)
    c = sum(r.c for r in results)
    n = sum(r.n_pairs for r in results)
    return McNemarResult(b, c, n, mcnemar_exact(b, c) if n else math.nan)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion k / n (NaNs when n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))
