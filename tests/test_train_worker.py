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
