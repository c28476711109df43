"""The cost table shows evaluation beside training when the store has evaluation costs
(benchmark ``eval`` rows that harness.eval writes), and is unchanged when it has none."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

from reports.costs import cost_table
from reports.load import load_sweep
from reports.summary import summarize

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_store", FIXTURES / "make_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_store(tmp_path_factory.mktemp("store") / "sweep", n_seeds=2)


def _with_eval_costs(store: Path) -> dict[str, float]:
    """Add eval cost rows (as harness.eval_parallel.cost_rows writes them) to ok trials."""
    results = pd.read_parquet(store / "results.parquet")
    trials = pd.read_parquet(store / "trials.parquet")
    ok = trials[trials.status == "ok"]
    head = results.drop_duplicates("trial_id").set_index("trial_id")
    rows, rate = [], {}
    for i, trial in enumerate(ok.trial_id):
        rate[trial] = 10.0 + i
        for bench in ("mme", "mmbench", "seedbench"):
            for metric, value in (("samples_per_s", rate[trial]), ("device_hours", 0.01)):
                rows.append(
                    {
                        **head.loc[trial].drop(["benchmark", "metric", "category", "value", "n"]),
                        "trial_id": trial,
                        "benchmark": "eval",
                        "metric": f"{bench}/{metric}",
                        "category": "all",
                        "value": value,
                        "n": 100,
                    }
                )
            rows.append({**rows[-1], "metric": f"{bench}/gpu_hours", "value": 0.0})
    extra = pd.DataFrame(rows)[results.columns]
    pd.concat([results, extra], ignore_index=True).to_parquet(store / "results.parquet")
    return rate


def test_cost_table_adds_evaluation_columns_only_when_costs_are_stored(store):
    before = cost_table(summarize(load_sweep(store)))
    assert "eval GPU-h" not in before.display.columns

    rate = _with_eval_costs(store)
    summary = summarize(load_sweep(store))
    table = cost_table(summary)
    assert list(table.display.columns[-3:]) == [
        "eval device-h",
        "eval GPU-h",
        "eval samples/s (MME / MMBench / SEED)",
    ]
    total = table.data.set_index("variant_id").loc["total"]
    assert total["eval_device_hours"] == pytest.approx(0.03 * len(rate))
    assert total["eval_gpu_hours"] == 0.0
    assert total["mme/samples_per_s"] == pytest.approx(sum(rate.values()) / len(rate))
    # a variant whose trials all failed has no evaluation: shown as missing, not as zero
    trials = summary.data.trials
    failed_only = [v for v, g in trials.groupby("variant_id") if (g.status != "ok").all()]
    for vid in failed_only:
        assert math.isnan(table.data.set_index("variant_id").loc[vid, "mme/samples_per_s"])
    assert table.display.iloc[-1, -1].count("/") == 2
