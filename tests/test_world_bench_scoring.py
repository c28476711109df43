"""The world's benchmark splits scored by lmms-eval's OWN functions (process_results +
aggregation): an oracle gets the maximum, trivial answerers get the chance levels."""

from __future__ import annotations

import random
from types import SimpleNamespace

import datasets
import pytest


def _docs(world, name: str) -> list[dict]:
    dd = datasets.load_from_disk(str(world.bench[name]))
    return next(iter(dd.values())).remove_columns("image").to_list()


def _mme_by_category(docs, answer) -> dict[str, float]:
    from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_process_results

    results: dict[str, list] = {}
    for doc in docs:
        out = mme_process_results(doc, [answer(doc)])
        (value,) = out.values()
        results.setdefault(doc["category"], []).append(value)
    return {cat: mme_aggregate_results(values) for cat, values in results.items()}


def test_mme_oracle_200_and_always_yes_50_per_category(test_world):
    docs = _docs(test_world, "mme")
    oracle = _mme_by_category(docs, lambda d: d["answer"])
    assert oracle and all(score == 200.0 for score in oracle.values())
    always_yes = _mme_by_category(docs, lambda d: "Yes")
    assert all(score == 50.0 for score in always_yes.values())
    assert "numerical_calculation" in oracle  # a cognition category


def _mmbench_static(docs, answer, tmp_path) -> float:
    from lmms_eval.tasks.mmbench.en_utils import (
        mmbench_aggregate_dev_results_static,
        mmbench_process_results,
    )

    results = [mmbench_process_results(doc, [answer(doc)])["gpt_eval_score"] for doc in docs]
    return mmbench_aggregate_dev_results_static(results, SimpleNamespace(output_path=str(tmp_path)))


def test_mmbench_oracle_100_circular_random_near_chance(test_world, tmp_path):
    docs = _docs(test_world, "mmbench")
    assert _mmbench_static(docs, lambda d: d["answer"], tmp_path) == pytest.approx(100.0)
    rng = random.Random(0)
    # circular evaluation: a random letter must hit all 4 rotations (chance ~0.4%)
    assert _mmbench_static(docs, lambda d: rng.choice("ABCD"), tmp_path) < 20.0
    # a constant letter is right at most once per circular group
    assert _mmbench_static(docs, lambda d: "A", tmp_path) == 0.0


def test_seedbench_oracle_1_random_near_chance(test_world):
    from lmms_eval.tasks.seedbench.utils import seed_aggregation_result, seed_process_result

    docs = _docs(test_world, "seedbench")

    def score(answer) -> tuple[float, float]:
        outs = [seed_process_result(doc, [answer(doc)]) for doc in docs]
        return (
            seed_aggregation_result([o["seed_image"] for o in outs]),
            seed_aggregation_result([o["seed_all"] for o in outs]),
        )

    assert score(lambda d: d["answer"]) == (1.0, 1.0)
    rng = random.Random(0)
    random_scores = [score(lambda d: rng.choice("ABCD"))[1] for _ in range(40)]
    assert 0.15 < sum(random_scores) / len(random_scores) < 0.35
