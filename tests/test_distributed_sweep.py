"""A real sweep whose every trial is a driver plus a 2-worker Ray Train group (gloo on the CPU):
trained with FSDP2 across the workers, scored by lmms-eval, stored; its losses are those of
the same trial run in one process."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import ray

from harness.spec import parse_spec
from harness.sweep import run_sweep, start_ray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def embedded_ray():
    started = start_ray()
    yield
    if started:
        ray.shutdown()


def _spec(tmp_path, resources):
    return parse_spec(
        {
            "name": "dist",
            "base": "tiny-test",
            "world": {"size": "test", "seed": 0, "dir": str(tmp_path / "world")},
            "overrides": {"stage1.steps": 4, "stage2.steps": 4, "stage2.checkpoint_every": 2},
            "seeds": [0],
            "objective": {"benchmark": "mme", "metric": "mme_perception_score"},
            "tasks": ["mme"],
            "resources": resources,
        }
    )


def test_every_trial_trains_on_a_two_worker_group_and_matches_one_process(tmp_path):
    group = {"workers": 2, "cpus_per_worker": 0.5, "driver_cpus": 0.5}
    out = tmp_path / "sweep"
    summary = run_sweep(_spec(tmp_path, group), out, progress=False, report=False)
    trials = pd.read_parquet(out / "trials.parquet")
    assert summary.counts == {"ok": 1, "failed": 0, "stopped": 0}, trials["error"].tolist()
    stages = [json.loads(p.read_text()) for p in (out / "stages").glob("*/done.json")]
    assert sorted(s["stage"] for s in stages) == ["stage1", "stage2"]
    assert all(s["summary"]["world_size"] == 2 for s in stages)  # FSDP over two processes
    # Ray Train ran each stage (its run state lives in the stage folder) and the
    # optimizer state was dropped once the stage was exported
    for folder in (p.parent for p in (out / "stages").glob("*/done.json")):
        assert (folder / "checkpoints").is_dir() and not list(folder.glob("checkpoints/step-*"))
    results = pd.read_parquet(out / "results.parquet")
    assert not results.query("benchmark == 'mme'").empty
    assert trials["gpu_hours"].iloc[0] == 0 and trials["cpu_hours"].iloc[0] > 0

    alone = tmp_path / "alone"
    run_sweep(_spec(tmp_path, {"cpu": 1}), alone, progress=False, report=False)
    losses = {
        name: pd.read_parquet(folder / "results.parquet")
        .query("benchmark == 'train'")
        .set_index("metric")["value"]
        for name, folder in (("group", out), ("alone", alone))
    }
    assert losses["group"].sort_index().to_numpy() == pytest.approx(
        losses["alone"].sort_index().to_numpy(), rel=2e-4
    )
