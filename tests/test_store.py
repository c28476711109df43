"""Results store: per-trial records written once and atomically, merged into the tidy tables of
docs/architecture.md, readable by reports.load; manifest totals and early-stopping savings."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness import store
from reports import load

SWEPT = ["ian.depth", "vision.encoder"]


def record(trial_id, status="ok", **kw):
    depth = int(trial_id[1])
    defaults = dict(
        trial_id=trial_id,
        variant_id=f"v{depth}",
        variant_name=f"ian.depth={depth}",
        seed=int(trial_id[-1]),
        status=status,
        swept={"ian.depth": depth, "vision.encoder": "world-vit"},
        config={"ian": {"depth": depth}},
        wall_s=36.0,
        cpu_hours=0.01,
        steps=10,
        planned_steps=10,
        objectives={"mme/mme_perception_score/all": 100.0 + depth},
    )
    return store.TrialRecord(**{**defaults, **kw})


def scores(value):
    rows = [("mme", "mme_perception_score", "all", value, 20), ("mme", "acc", "color", 0.5, 4)]
    return pd.DataFrame(rows, columns=store.SCORE_COLUMNS)


def items():
    return pd.DataFrame(
        [("mme", "q1", "color", True), ("mme", "q2", "count", False)], columns=store.ITEM_COLUMNS
    )


def curves():
    return [{"stage": "stage1", "step": s, "metric": "loss", "value": 1.0 / s} for s in (1, 2)]


@pytest.fixture
def sweep(tmp_path):
    store.write_trial(tmp_path, record("d0-s0"), scores(100.0), items(), curves())
    store.write_trial(tmp_path, record("d1-s0"), scores(101.0), items(), curves())
    failed = record("d2-s0", "failed", error="NonFiniteLossError: stage1 step 2", objectives={})
    store.write_trial(tmp_path, failed, curves=curves())
    stopped = record("d3-s1", "stopped", steps=4, stopped_early=True, objectives={})
    store.write_trial(tmp_path, stopped, curves=curves())
    store.consolidate(tmp_path, "demo", SWEPT)
    return tmp_path


def test_tables_follow_the_schema(sweep):
    results = pd.read_parquet(sweep / "results.parquet")
    ids = ["trial_id", "variant_id", "variant_name", "seed"]
    assert list(results.columns) == ["sweep", *ids, "status", *SWEPT, *store.SCORE_COLUMNS]
    assert len(results) == 4  # numbers only from the two ok trials
    assert set(results["trial_id"]) == {"d0-s0", "d1-s0"}
    assert (results["sweep"] == "demo").all()
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert list(trials.columns) == [
        *ids, "status", "error", *SWEPT,
        "wall_s", "cpu_hours", "gpu_hours", "steps", "stopped_early",
    ]  # fmt: skip
    assert dict(zip(trials["trial_id"], trials["status"])) == {
        "d0-s0": "ok", "d1-s0": "ok", "d2-s0": "failed", "d3-s1": "stopped",
    }  # fmt: skip
    assert trials["seed"].dtype == "int64" and trials["stopped_early"].dtype == bool
    assert trials.set_index("trial_id").loc["d2-s0", "error"].startswith("NonFiniteLossError")
    item_frame = pd.read_parquet(sweep / "items.parquet")
    assert list(item_frame.columns) == [*ids, *store.ITEM_COLUMNS] and len(item_frame) == 4
    curve_frame = pd.read_parquet(sweep / "curves.parquet")
    assert list(curve_frame.columns) == ["trial_id", *store.CURVE_COLUMNS]
    assert len(curve_frame) == 8  # failed and stopped trials keep their curves


def test_reports_can_read_the_store(sweep):
    store.update_manifest(sweep, spec={"name": "demo", "axes": {"ian.depth": {"values": [0, 1]}}})
    data = load.load_sweep(sweep)
    assert set(data.trials["status"]) == {"ok", "failed", "stopped"}
    assert "ian.depth" in data.swept_fields


def test_a_stored_trial_is_never_written_again(sweep):
    before = (sweep / "trials" / "d0-s0" / "record.json").read_bytes()
    assert store.write_trial(sweep, record("d0-s0"), scores(5.0)) is False
    assert (sweep / "trials" / "d0-s0" / "record.json").read_bytes() == before
    assert store.stored_trial(sweep, "d0-s0").objectives["mme/mme_perception_score/all"] == 100.0
    assert store.stored_trial(sweep, "nope") is None


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    bad = pd.DataFrame({"benchmark": ["mme"], "value": [1.0]})  # columns missing
    with pytest.raises(ValueError, match="scores: missing column"):
        store.write_trial(tmp_path, record("d0-s0"), bad)
    assert not (tmp_path / "trials" / "d0-s0").exists()
    assert store.load_records(tmp_path) == []


def test_manifest_totals_and_early_stopping_savings(sweep):
    manifest = json.loads((sweep / "manifest.json").read_text())
    totals = manifest["totals"]
    assert (totals["trials"], totals["ok"], totals["failed"], totals["stopped"]) == (4, 2, 1, 1)
    assert totals["cpu_hours"] == pytest.approx(0.04)
    es = manifest["early_stopping"]
    # the stopped trial ran 4 of 10 steps in 0.01 CPU-hours: 6 more would have cost 0.015
    assert es["stopped_trials"] == 1 and es["steps_saved"] == 6
    assert es["est_cpu_hours_saved"] == pytest.approx(0.015)
    assert set(manifest["trial_configs"]) == {"d0-s0", "d1-s0", "d2-s0", "d3-s1"}


def test_running_curves_survive_a_torn_last_line(tmp_path):
    live = store.RunningCurves(tmp_path, "t-s0")
    live.append("stage1", 1, {"loss": 2.0, "lr": 1e-3, "step": 1, "note": "x"})
    with open(live.path, "a") as fh:
        fh.write('{"stage": "stage1", "st')  # a driver killed mid-write
    rows = live.read()
    assert [(r["metric"], r["value"]) for r in rows] == [("loss", 2.0), ("lr", 1e-3)]
    live.remove()
    assert live.read() == []
