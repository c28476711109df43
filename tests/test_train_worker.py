"""`harness.train_worker.ray_stage_worker` when Ray Train restarts it: a stage that had
finished training (its evaluation failed after) is not trained again; its evaluation runs."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import ray.train.torch
import torch

from harness import eval_job, train_worker
from harness.stage_cache import done_summary
from harness.train_worker import StageJob, ray_stage_worker


def test_a_restart_after_a_finished_stage_evaluates_without_training_again(tmp_path, monkeypatch):
    folder = tmp_path / "stage2"
    folder.mkdir()
    job = StageJob(config={}, stage="stage2", folder=str(folder), extra={"then_eval": {"x": 1}})
    assert done_summary(folder) is None

    def train(*args, **kwargs):
        raise AssertionError("trained again")

    evaluated = []
    monkeypatch.setattr(train_worker, "run_stage", train)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(eval_job, "EvalJob", lambda **kw: kw)
    monkeypatch.setattr(eval_job, "run_eval", lambda job, device: evaluated.append(job))
    with pytest.raises(AssertionError, match="trained again"):  # not done yet: it trains
        ray_stage_worker(asdict(job))
    summary = {"step": 300, "loss": 0.5}
    (folder / "done.json").write_text(json.dumps({"stage": "stage2", "summary": summary}))
    assert ray_stage_worker(asdict(job)) == summary and evaluated == [{"x": 1}]


def test_an_in_process_trial_given_a_gpu_trains_and_scores_on_it(tmp_path, monkeypatch):
    """``resources`` with a GPU and no worker group (or ``whole_node``): the trial's own
    process holds the GPU, and its stages and evaluation run there, not on the CPU."""
    from harness import trial

    devices = []
    monkeypatch.setattr(
        train_worker, "run_stage", lambda job, device, on_step: devices.append(device)
    )
    monkeypatch.setattr(eval_job, "run_eval", lambda job, device: devices.append(device))
    ctx = trial.TrialContext(tmp_path, None, "t-s0", "t", "t", 0, None, gpus=1.0)
    job = StageJob(config={}, stage="stage1", folder=str(tmp_path / "s1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    trial._run_stage(ctx, job)
    trial._evaluate(ctx, None)
    ctx.gpus = 0.0  # no GPU reserved: the CPU, even where one is visible
    trial._run_stage(ctx, job)
    assert devices == ["cuda", "cuda", None]


@pytest.mark.parametrize(("cpus", "workers"), [(1.0, 0), (1.5, 0), (2.0, 1), (8.0, 1)])
def test_an_evaluation_decodes_images_in_a_process_of_its_own_only_with_a_spare_cpu(
    tmp_path, cpus, workers
):
    """On one CPU a decoding process only competes with generation (the smoke sweep's 2
    trials on 2 cores); the trial's evaluation job says how many it gets."""
    from harness import trial
    from harness.spec import parse_spec
    from mage.presets import get_preset

    spec = parse_spec(
        {
            "name": "s",
            "base": "tiny",
            "tasks": ["mme"],
            "objective": {"benchmark": "mme", "metric": "mme_perception_score"},
            "resources": {"cpu": cpus, "gpu": 0},
        }
    )
    ctx = trial.TrialContext(tmp_path, spec, "t-s0", "t", "t", 0, None, cpus=cpus)
    config = get_preset("tiny-test")
    data = trial.TrialData(config, str(tmp_path / "bench"), None, {})
    job = trial._eval_job(ctx, tmp_path / "model", data, tmp_path / "eval")
    assert job.loader_workers == workers == eval_job.loader_workers_for(cpus)
    assert job.tower_memo is None  # no cached tower outputs asked for
