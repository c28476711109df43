"""Statistics over training seeds and paired items.

The unit of replication is the training seed: a re-run of a sweep draws new seeds, and one
variant's score moves by more from one seed to the next than the item sampling of one trial
suggests. So:

- **Differences between variants** (effects, ablation tables) use Welch's t-test on the
  per-seed scores (`welch_test`): the difference of seed means, its 95% Welch interval and a
  two-sided p, with Welch-Satterthwaite degrees of freedom, so that few seeds give wide
  intervals and large p (as in Colas et al. 2018, "How many random seeds?"). It needs two
  seeds per side.
- **A variant's interval** is a hierarchical percentile bootstrap (`hierarchical_bootstrap`):
  draw seeds with replacement, then each drawn seed's benchmark items with replacement, and
  recompute the score the way lmms-eval aggregates it (reports.intervals). Every replicate is
  a score the benchmark could give, so the interval stays inside the metric's range (a
  percentage in 0-100, MME-P in 0-2000), which a Student-t interval over 2-3 seeds does not.
  With few seeds a percentile bootstrap is narrow (it sees a seed spread of (n-1)/n of the
  true one); differences are therefore tested with Welch's test, not with the bootstrap.
- McNemar's exact test compares two variants on the same benchmark items: only discordant
  pairs count (b = A right and B wrong, c = A wrong and B right), and under the null each is a
  fair coin, so p = scipy.stats.binomtest(b, b + c, 0.5).pvalue (two-sided).
  Pooling over seeds pairs the k-th seed of A with the k-th seed of B (seeds sorted) and sums
  the discordant counts; this treats every (seed, item) pair as independent and ignores how
  much a variant moves from one seed to the next, so it overstates certainty across re-runs.
  Reports show it as a secondary, item-level test.
- `t_interval` (Student-t over seeds) and `wilson_interval` remain for unbounded values and
  single proportions.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
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
    ids_a, ids_b = items_a["item_id"].to_numpy(), items_b["item_id"].to_numpy()
    _, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    a = items_a["correct"].to_numpy(dtype=bool)[ia]
    b = items_b["correct"].to_numpy(dtype=bool)[ib]
    return int((a & ~b).sum()), int((~a & b).sum()), int(len(ia))


def mcnemar_test(
    items_a: pd.DataFrame, items_b: pd.DataFrame, per_seed: bool = False
) -> McNemarResult | list[McNemarResult]:
    """McNemar exact test of variant A vs B on per-item correctness (one benchmark subset).

    ``items_*`` have columns seed, item_id, correct. Seeds are paired by number (the same
    training seed); a seed that only one side has (a failed trial) is left out. With
    ``per_seed`` a result per shared seed is returned, else the counts are pooled."""
    seeds = sorted(set(items_a["seed"].unique()) & set(items_b["seed"].unique()))
    results = []
    for seed in seeds:
        b, c, n = discordant_counts(
            items_a[items_a["seed"] == seed], items_b[items_b["seed"] == seed]
        )
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


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of mean(A) - mean(B) over per-seed scores."""

    diff: float
    low: float
    high: float
    p_value: float
    df: float
    n_a: int
    n_b: int


def _finite(values: Iterable[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def welch_test(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE):
    """Welch's two-sided t-test and interval for mean(a) - mean(b) (NaN p and interval with
    fewer than 2 values on a side). When neither side varies over its seeds the t statistic
    is undefined (scipy's gives p = 0 for unequal means, which no seed count supports): p is
    then the exact permutation test's over seeds, 1 for equal means and otherwise
    2 / C(n_a + n_b, n_a) (scipy's two-sided convention: only the observed labelling is that
    far apart; 3 seeds against 3 give 0.1, the smallest p so few seeds can give), and the
    interval is the point."""
    x, y = _finite(a), _finite(b)
    diff = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return WelchResult(diff, math.nan, math.nan, math.nan, math.nan, int(x.size), int(y.size))
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # not se == 0: equal floats can leave var > 0
        p = 1.0 if x[0] == y[0] else min(1.0, 2.0 / math.comb(x.size + y.size, x.size))
        return WelchResult(diff, diff, diff, p, math.inf, int(x.size), int(y.size))
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    p = float(2 * sps.t.sf(abs(diff) / se, df))  # = scipy.stats.ttest_ind(equal_var=False)
    half = float(sps.t.ppf(0.5 + confidence / 2, df) * se)
    return WelchResult(diff, diff - half, diff + half, p, float(df), int(x.size), int(y.size))


BOOTSTRAP_REPLICATES = 2000


def stable_rng(*key: object) -> np.random.Generator:
    """A generator seeded from ``key`` (the same on every machine and run): a report built
    twice from one store has the same intervals."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def hierarchical_bootstrap(
    seed_scores: Sequence[float],
    item_replicates: Sequence[Callable[[np.random.Generator, int], np.ndarray] | None],
    rng: np.random.Generator,
    replicates: int = BOOTSTRAP_REPLICATES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile interval of the mean over seeds, resampling seeds, then items.

    ``seed_scores[k]`` is seed k's score; ``item_replicates[k](rng, m)`` returns m scores of
    seed k recomputed on its items drawn with replacement, or is None where items cannot give
    the score (then that seed contributes its own score: seeds-only bootstrap)."""
    n = len(seed_scores)
    if n == 0:
        return (math.nan, math.nan)
    draws = rng.integers(n, size=(replicates, n))
    values = np.empty((replicates, n))
    for k in range(n):
        hit = draws == k
        count = int(hit.sum())
        if not count:
            continue
        fn = item_replicates[k]
        values[hit] = fn(rng, count) if fn is not None else seed_scores[k]
    means = values.mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    # a mean lies between its smallest and largest input; float rounding may not say so
    return (float(max(low, values.min())), float(min(high, values.max())))
