"""A real sweep whose every trial is a driver plus a 2-worker Ray Train group (gloo on the CPU):
trained with FSDP2 across the workers, scored by lmms-eval, stored; its losses are those of
the same trial run in one process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pandas as pd
import psutil
import pytest
import ray

from harness.spec import parse_spec
from harness.sweep import run_sweep, start_ray

pytestmark = pytest.mark.slow


RUN = uuid.uuid4().hex  # marks this module's Ray processes (other Rays may run beside it)


@pytest.fixture(scope="module", autouse=True)
def embedded_ray():
    os.environ["MAGE_TEST_RUN"] = RUN  # inherited by the workers this Ray starts
    started = start_ray()
    yield
    if started:
        ray.shutdown()


def _spec(tmp_path, resources, stage2_steps=4):
    return parse_spec(
        {
            "name": "dist",
            "base": "tiny-test",
            "world": {"size": "test", "seed": 0, "dir": str(tmp_path / "world")},
            "overrides": {
                "stage1.steps": 4,
                "stage2.steps": stage2_steps,
                "stage2.checkpoint_every": 2,
            },
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


def _train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].startswith("ray::RayTrainWorker"):
                if proc.environ().get("MAGE_TEST_RUN") == RUN:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_a_worker_after_checkpoint(stages, killed: list, stop: threading.Event):
    """SIGKILL one Ray Train worker once stage 2 has written a checkpoint (mid-stage)."""
    while not stop.is_set():
        # only stage 2 checkpoints (checkpoint_every); a stage not yet done is training
        marks = [
            p
            for p in stages.glob("*/checkpoints/step-*/complete")
            if not (p.parent.parent.parent / "done.json").exists()
        ]
        workers = _train_workers()
        if marks and workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append((workers[-1].pid, marks[0].parent.name))
            return
        time.sleep(0.05)


def test_a_worker_killed_mid_stage_resumes_from_its_checkpoint_and_scores_the_same(tmp_path):
    group = {"workers": 2, "cpus_per_worker": 0.5, "driver_cpus": 0.5}
    scores = {}
    for run in ("straight", "killed"):
        out = tmp_path / run
        killed: list = []
        stop = threading.Event()
        killer = threading.Thread(
            target=_kill_a_worker_after_checkpoint, args=(out / "stages", killed, stop)
        )
        if run == "killed":
            killer.start()
        try:
            spec = _spec(tmp_path, group, stage2_steps=24)
            summary = run_sweep(spec, out, progress=False, report=False)
        finally:
            stop.set()
        assert summary.counts["ok"] == 1
        if run == "killed":
            killer.join()
            assert killed, "no worker was killed mid-stage"
        results = pd.read_parquet(out / "results.parquet")
        scores[run] = results.set_index(["benchmark", "metric", "category"])["value"].sort_index()
        if run == "killed":  # the resumed stage kept its curve from before the kill
            stage2 = next(
                p.parent for p in (out / "stages").glob("*/done.json")
                if json.loads(p.read_text())["stage"] == "stage2"
            )  # fmt: skip
            steps = pd.read_parquet(stage2 / "curves.parquet").query("metric == 'loss'")["step"]
            assert sorted(steps) == list(range(1, 25))
    assert scores["killed"].index.equals(scores["straight"].index)
    assert scores["killed"].to_numpy() == pytest.approx(scores["straight"].to_numpy(), rel=1e-6)
