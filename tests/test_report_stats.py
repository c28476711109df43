"""reports.stats: seed t-intervals, McNemar's exact test, Wilson intervals, checked against
hand computations and scipy called directly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports.stats import (
    discordant_counts,
    mcnemar_exact,
    mcnemar_test,
    summarize_seeds,
    t_interval,
    wilson_interval,
)


def test_mcnemar_exact_hand_case():
    # b=1, c=9: two-sided exact p = 2 * sum_{k<=1} C(10, k) / 2^10 = 2 * 11 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375, abs=1e-12)
    assert mcnemar_exact(9, 1) == pytest.approx(0.021484375, abs=1e-12)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 3)


def _items(seed: int, correct: list[bool], prefix: str = "q") -> pd.DataFrame:
    return pd.DataFrame(
        {"seed": seed, "item_id": [f"{prefix}{i}" for i in range(len(correct))], "correct": correct}
    )


def test_mcnemar_test_aligns_by_item_id_and_pools_seeds():
    # 20 items: 10 both right, 1 only A right, 9 only B right -> b=1, c=9
    a = [True] * 10 + [True] + [False] * 9
    b = [True] * 10 + [False] + [True] * 9
    items_a = _items(0, a)
    items_b = _items(0, b).iloc[::-1]  # other order: alignment must use item_id
    result = mcnemar_test(items_a, items_b)
    assert (result.b, result.c, result.n_pairs) == (1, 9, 20)
    assert result.p_value == pytest.approx(0.021484375)
    # two seeds: the same training seed paired, counts pooled
    pooled = mcnemar_test(
        pd.concat([_items(0, a), _items(1, a)]), pd.concat([_items(0, b), _items(1, b)])
    )
    assert (pooled.b, pooled.c, pooled.n_pairs) == (2, 18, 40)
    assert pooled.p_value == pytest.approx(sps.binomtest(2, 20, 0.5).pvalue)
    # a failed trial: B lacks seed 1, so A's seed 2 meets B's seed 2, not B's next one
    a2 = [True] * 20  # seed 2 of A, all right: against B's seed 2, b=1 and c=0
    per_seed = mcnemar_test(
        pd.concat([_items(0, a), _items(1, a), _items(2, a2)]),
        pd.concat([_items(0, b), _items(2, b)]),
        True,
    )
    assert [(r.b, r.c) for r in per_seed] == [(1, 9), (1, 0)]  # by position: (1, 9) twice
    assert mcnemar_test(_items(0, a), _items(5, b)).n_pairs == 0  # no shared seed
    # items only one side has are not paired
    assert discordant_counts(_items(0, [True, False]), _items(0, [False]))[2] == 1


def test_duplicate_item_ids_are_refused():
    dup = pd.DataFrame({"seed": 0, "item_id": ["x", "x"], "correct": [True, False]})
    with pytest.raises(ValueError, match="repeat item_id 'x'"):
        discordant_counts(dup, dup)


def test_t_interval_matches_scipy():
    values = [1510.7, 1490.2, 1533.9]
    iv = t_interval(values)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert iv.n == 3
    assert iv.mean == pytest.approx(np.mean(values))
    assert (iv.low, iv.high) == pytest.approx((low, high))
    assert iv.half_width == pytest.approx((high - low) / 2)
    one = t_interval([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.half_width)
    assert t_interval([]).n == 0
    assert t_interval([1.0, float("nan"), 3.0]).n == 2


def test_summarize_seeds_groups():
    frame = pd.DataFrame({"v": ["a", "a", "b", "b", "b"], "value": [1.0, 3.0, 2.0, 4.0, 9.0]})
    out = summarize_seeds(frame, ["v"]).set_index("v")
    assert out.at["a", "mean"] == 2.0 and out.at["b", "n"] == 3
    assert out.at["b", "ci_high"] == pytest.approx(
        sps.t.interval(0.95, 2, loc=5.0, scale=sps.sem([2.0, 4.0, 9.0]))[1]
    )


def test_wilson_interval_formula():
    k, n, z = 7, 20, sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_welch_test_matches_scipy_and_needs_two_seeds():
    from reports.stats import welch_test

    a, b = [330.5, 312.0, 351.5], [222.0, 240.5]
    result = welch_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert result.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert result.p_value == pytest.approx(ref.pvalue)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high))
    assert result.df == pytest.approx(ref.df)
    one = welch_test([330.5], b)
    assert one.diff == pytest.approx(330.5 - np.mean(b)) and math.isnan(one.p_value)
    flat = welch_test([5.0, 5.0], [5.0, 5.0])
    assert flat.p_value == 1.0 and (flat.low, flat.high) == (0.0, 0.0)
    # no spread on either side: not p = 0, but what 3 seeds against 3 can show at best
    apart = welch_test([50.0, 50.0, 50.0], [60.0, 60.0, 60.0])
    assert apart.p_value == pytest.approx(2 / 20) and (apart.low, apart.high) == (-10.0, -10.0)
    assert welch_test([50.0] * 4, [60.0] * 4).p_value == pytest.approx(2 / 70)
    assert welch_test([50.0] * 2, [60.0] * 3).p_value == pytest.approx(0.2)  # scipy's two-sided
    # equal floats whose sample variance is not exactly 0 (61.7 x 3) are constant too
    assert welch_test([61.7] * 3, [62.3] * 3).p_value == pytest.approx(0.1)
    assert welch_test([1.5] * 30, [2.5] * 30).p_value > 0  # closed form: no enumeration


def test_hierarchical_bootstrap_widths_and_bounds():
    from reports.stats import hierarchical_bootstrap, stable_rng

    # seeds only, many seeds: close to the normal interval of the mean
    scores = list(np.random.default_rng(0).normal(50.0, 10.0, size=60))
    low, high = hierarchical_bootstrap(scores, [None] * 60, stable_rng("a"))
    half = 1.96 * np.std(scores, ddof=1) / math.sqrt(60)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    # one seed, items only: close to the binomial interval of a proportion, in percent
    correct = np.array([1.0] * 30 + [0.0] * 170)

    def items(rng, m):
        return 100 * correct[rng.integers(200, size=(m, 200))].mean(1)

    low, high = hierarchical_bootstrap([15.0], [items], stable_rng("b"))
    half = 196 * math.sqrt(0.15 * 0.85 / 200)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    # a score at the edge of its range: the interval stays inside it (a t-interval does not)
    low, high = hierarchical_bootstrap([0.0, 7.5, 0.0], [None] * 3, stable_rng("c"))
    assert 0.0 <= low and high <= 7.5
    assert t_interval([0.0, 7.5, 0.0]).low < 0
    # the same key draws the same interval
    assert hierarchical_bootstrap([1.0, 2.0], [None, None], stable_rng("d")) == (
        hierarchical_bootstrap([1.0, 2.0], [None, None], stable_rng("d"))
    )
