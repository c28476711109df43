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


def _spec(tmp_path, resources, stage2_steps):
    return parse_spec(
        {
            "name": "dist",
            "base": "tiny-test",
            "world": {"size": "test", "seed": 0, "dir": str(tmp_path / "world")},
            "overrides": {
                "stage1.steps": 4,
                "stage2.steps": stage2_steps,
                "stage2.checkpoint_every": 6,
            },
            "seeds": [0],
            "objective": {"benchmark": "mme", "metric": "mme_perception_score"},
            "tasks": ["mme"],
            "resources": resources,
        }
    )


GROUP = {"workers": 2, "cpus_per_worker": 0.5, "driver_cpus": 0.5}
STAGE2_STEPS = 24  # long enough to kill a worker between a checkpoint and the end


def _scores(out):
    """Benchmark and training numbers (not the evaluation's timings)."""
    results = pd.read_parquet(out / "results.parquet").query("benchmark != 'eval'")
    return results.set_index(["benchmark", "metric", "category"])["value"].sort_index()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted sweep of one trial on a 2-worker group."""
    tmp = tmp_path_factory.mktemp("straight")
    out = tmp / "sweep"
    summary = run_sweep(_spec(tmp, GROUP, STAGE2_STEPS), out, progress=False, report=False)
    return tmp, out, summary


def test_every_trial_trains_on_a_two_worker_group_and_matches_one_process(straight):
    tmp, out, summary = straight
    trials = pd.read_parquet(out / "trials.parquet")
    assert summary.counts == {"ok": 1, "failed": 0, "stopped": 0}, trials["error"].tolist()
    stages = [json.loads(p.read_text()) for p in (out / "stages").glob("*/done.json")]
    assert sorted(s["stage"] for s in stages) == ["stage1", "stage2"]
    assert all(s["summary"]["world_size"] == 2 for s in stages)  # FSDP over two processes
    # Ray Train ran each stage (its run state lives in the stage folder) and the
    # optimizer state was dropped once the stage was exported
    for folder in (p.parent for p in (out / "stages").glob("*/done.json")):
        assert (folder / "checkpoints").is_dir() and not list(folder.glob("checkpoints/step-*"))
    assert not pd.read_parquet(out / "results.parquet").query("benchmark == 'mme'").empty
    assert trials["gpu_hours"].iloc[0] == 0 and trials["cpu_hours"].iloc[0] > 0

    alone = tmp / "alone"
    run_sweep(_spec(tmp, {"cpu": 1}, STAGE2_STEPS), alone, progress=False, report=False)
    group, single = _scores(out).loc["train"], _scores(alone).loc["train"]
    assert len(group) >= 4 and group.index.equals(single.index)
    assert group.to_numpy() == pytest.approx(single.to_numpy(), rel=2e-4)


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


def test_a_worker_killed_mid_stage_resumes_from_its_checkpoint_and_scores_the_same(
    straight, tmp_path
):
    tmp, reference, _ = straight
    out = tmp_path / "killed"
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_a_worker_after_checkpoint, args=(out / "stages", killed, stop)
    )
    killer.start()
    try:
        summary = run_sweep(_spec(tmp, GROUP, STAGE2_STEPS), out, progress=False, report=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-stage"
    assert summary.counts["ok"] == 1
    stage2 = next(
        p.parent for p in (out / "stages").glob("*/done.json")
        if json.loads(p.read_text())["stage"] == "stage2"
    )  # fmt: skip
    steps = pd.read_parquet(stage2 / "curves.parquet").query("metric == 'loss'")["step"]
    assert sorted(steps) == list(range(1, STAGE2_STEPS + 1))  # the curve from before the kill
    # the same scores and final losses as the run that was never interrupted
    assert _scores(out).index.equals(_scores(reference).index)
    assert _scores(out).to_numpy() == pytest.approx(_scores(reference).to_numpy(), rel=1e-6)
