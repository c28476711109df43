"""Resume finishes the sweep: failed trials run again with ``resume --retry-failed`` (or the
spec's ``retry_failed: true``) from what their earlier attempt left on disk, the tables then
hold them as ok, and ``status`` says which failures look transient. Also: the MMBench scoring
method is decided once, by the driver, and kept by a resume. Real Ray Tune on the CPU."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
from ray import cloudpickle

import harness.preflight
import harness.sweep
from harness import store
from harness.cli import main as cli_main
from harness.commands.sweep import status_text
from harness.plan import plan_sweep
from harness.retry import failure_kind, prepare_retries, retry_variant
from harness.spec import SpecError, parse_spec
from harness.sweep import resume_sweep, run_sweep, start_ray
from harness.trial import TrialContext, TrialOutcome, execute_trial

# Ray workers cannot import this file (tests/ is not a package): ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

OBJECTIVE = {"benchmark": "mme", "metric": "mme_perception_score"}


@pytest.fixture(scope="module", autouse=True)
def embedded_ray():
    started = start_ray()
    yield
    if started:
        ray.shutdown()


def flaky_trial(ctx):
    """depth 1: out of memory on its first attempt; depth 2: a NaN loss every time."""
    import torch

    attempts = ctx.sweep_dir / "attempts"
    attempts.mkdir(exist_ok=True)
    (attempts / f"{ctx.trial_id}.{os.getpid()}.{time.time_ns()}").touch()
    (ctx.sweep_dir / "scoring").write_text(str(ctx.spec.mmbench_scoring))
    depth = ctx.config.ian.depth
    for step in (1, 2):
        ctx.report("stage1", step, {"loss": 1.0 / step})
    injected = ctx.sweep_dir / "oom-injected"
    if depth == 1 and not injected.exists():
        injected.touch()
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
    if depth == 2:
        from mage.train import NonFiniteLossError

        raise NonFiniteLossError("stage1 step 2: non-finite loss (ce term)")
    row = {"benchmark": "mme", "metric": "mme_perception_score", "category": "all"}
    return TrialOutcome(scores=pd.DataFrame([{**row, "value": 10.0 * depth, "n": 8}]), steps=2)


def flaky_spec(**changes):
    data = {
        "name": "flaky",
        "base": "tiny-test",
        "axes": {"ian.depth": {"values": [0, 1, 2]}},
        "seeds": [0],
        "objective": OBJECTIVE,
        "max_concurrent_trials": 2,
    }
    return parse_spec({**data, **changes})


def attempts(sweep_dir: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (sweep_dir / "attempts").iterdir())


def statuses(sweep_dir: Path) -> dict[str, str]:
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    return dict(zip(trials["variant_name"], trials["status"]))


def test_failures_are_told_apart():
    assert failure_kind("OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB") == (
        "transient"
    )
    assert failure_kind("trial process failed (Tune gave up after max_failures): ActorDied") == (
        "transient"
    )
    assert failure_kind("RayActorError: the node running this actor was preempted") == "transient"
    assert failure_kind("NonFiniteLossError: stage1 step 2: non-finite loss") == "persistent"
    assert failure_kind("DataError: data file not found: missing.json") == "persistent"
    assert failure_kind("ConfigError: ian.stride=5 does not divide the grid") == "persistent"
    assert failure_kind("RuntimeError: something new") == "persistent"


def test_resume_retry_failed_finishes_a_trial_that_ran_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_API_KEY", raising=False)
    out = tmp_path / "sweep"
    summary = run_sweep(flaky_spec(), out, trial_fn=flaky_trial, progress=False, report=False)
    assert summary.counts == {"ok": 1, "failed": 2, "stopped": 0}
    status = status_text(out)
    oom = next(line for line in status.splitlines() if "ian.depth=1" in line)
    nan = next(line for line in status.splitlines() if "ian.depth=2" in line)
    assert "transient" in oom and "OutOfMemoryError" in oom
    assert "persistent" in nan and "NonFiniteLossError" in nan
    assert "--retry-failed" in status
    # MMBench scoring: decided by the driver when the sweep started, given to the trials
    assert (out / "scoring").read_text() == "static"
    assert store.read_manifest(out)["mmbench_scoring"] == "static"

    # the command line, with the trial function swapped for this scripted one; an API key
    # set since does not switch the started sweep to the GPT judge
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    resume = functools.partial(resume_sweep, trial_fn=flaky_trial, progress=False)
    monkeypatch.setattr(harness.sweep, "resume_sweep", resume)
    # the scripted trials read no benchmark data: the command's input check (Hub ids of the
    # benchmarks, unreachable here) is not what this test is about
    monkeypatch.setattr(harness.preflight, "check_plan_inputs", lambda plan, images=False: None)
    assert cli_main(["resume", str(out), "--retry-failed", "--no-report"]) == 0
    assert statuses(out) == {"ian.depth=0": "ok", "ian.depth=1": "ok", "ian.depth=2": "failed"}
    results = pd.read_parquet(out / "results.parquet").set_index("variant_name")
    assert results.loc["ian.depth=1", "value"] == 10.0
    assert results.loc["ian.depth=1", "status"] == "ok"
    ids = {r.variant_name: r.trial_id for r in store.load_records(out)}
    earlier = out / "retried" / ids["ian.depth=1"] / "attempt-1" / "record.json"
    earlier = json.loads(earlier.read_text())
    assert earlier["status"] == "failed" and earlier["error"].startswith("OutOfMemoryError")
    assert attempts(out).count(ids["ian.depth=0"]) == 1  # an ok trial is not run again
    assert attempts(out).count(ids["ian.depth=1"]) == 2
    assert attempts(out).count(ids["ian.depth=2"]) == 2  # retried too: it fails again
    assert (out / "scoring").read_text() == "static"  # the retried trials' scoring
    manifest = store.read_manifest(out)
    assert [s["kind"] for s in manifest["sessions"]] == ["sweep", "resume --retry-failed"]
    assert manifest["totals"]["ok"] == 2 and manifest["mmbench_scoring"] == "static"
    assert "run again after a failure: 2" in status_text(out)


def test_spec_retry_failed_retries_in_the_same_session(tmp_path):
    out = tmp_path / "sweep"
    spec = flaky_spec(retry_failed=True, axes={"ian.depth": {"values": [0, 1]}})
    summary = run_sweep(spec, out, trial_fn=flaky_trial, progress=False, report=False)
    assert summary.counts == {"ok": 2, "failed": 0, "stopped": 0}
    assert len(attempts(out)) == 3


def test_a_gpt_judge_without_a_key_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_API_KEY", raising=False)
    spec = flaky_spec(mmbench_scoring="gpt", tasks=["mme", "mmbench"])
    with pytest.raises(SpecError, match="mmbench_scoring.*OPENAI_API_KEY"):
        run_sweep(spec, tmp_path / "gpt", trial_fn=flaky_trial, progress=False, report=False)
    assert not (tmp_path / "gpt" / "trials").exists()


def oom_in_stage2_once(ctx):
    """The real trial, out of memory at stage 2's third step on its first attempt."""
    import torch

    from harness.trial import run_trial

    inner, flag = ctx.on_report, ctx.sweep_dir / "oom-injected"
    log = ctx.sweep_dir / "steps.jsonl"

    def report(stage, step, metrics):
        with open(log, "a") as fh:
            fh.write(json.dumps([stage, step]) + "\n")
        if stage == "stage2" and step == 3 and not flag.exists():
            flag.touch()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        if inner is not None:
            inner(stage, step, metrics)

    ctx.on_report = report
    return run_trial(ctx)


def test_a_retried_real_trial_continues_from_its_stage_cache_and_checkpoint(test_world, tmp_path):
    """The real trial, in this process: its first attempt is stored as failed; the retry (the
    target `prepare_retries` gives, as the sweep's retry experiment runs it) finishes it."""
    spec = parse_spec(
        {
            "name": "retry-real",
            "base": "tiny-test",
            "world": {"size": "test", "seed": 0, "dir": str(test_world.root)},
            "overrides": {"stage2.checkpoint_every": 2},
            "seeds": [0],
            "objective": {"benchmark": "tools", "metric": "argument_f1"},
            "tasks": ["tools"],
        }
    )
    plan, out = plan_sweep(spec), tmp_path / "sweep"

    def attempt(variant, seed):
        config = plan.trial_config(variant, seed)
        ctx = TrialContext(
            sweep_dir=out,
            spec=spec,
            trial_id=variant.trial_id(seed),
            variant_id=variant.variant_id,
            variant_name=variant.name,
            seed=seed,
            config=config,
            swept=plan.swept_values(config),
        )
        return execute_trial(ctx, oom_in_stage2_once)

    assert attempt(plan.variants[0], 0).status == "failed"
    first = [tuple(json.loads(line)) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert first == [("stage1", s) for s in (1, 2, 3, 4)] + [("stage2", s) for s in (1, 2, 3)]
    (target,) = prepare_retries(out, plan, failed=True)
    assert store.load_records(out) == []  # moved to retried/ for the retry
    assert attempt(*retry_variant(plan, target)).status == "ok"
    steps = [tuple(json.loads(line)) for line in (out / "steps.jsonl").read_text().splitlines()]
    # stage 1 came from the stage cache, stage 2 from its checkpoint at step 2
    assert steps[len(first) :] == [("stage2", 3), ("stage2", 4)]
    store.consolidate(out, spec.name, plan.swept_fields)
    assert statuses(out) == {"tiny-test": "ok"}


def fails_first_attempt(ctx):
    """Every trial runs out of memory once, then scores 10 x depth + MSE weight."""
    import torch

    marker = ctx.sweep_dir / f"failed-once-{ctx.trial_id}"
    if not marker.exists():
        marker.touch()
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")
    row = {"benchmark": "mme", "metric": "mme_perception_score", "category": "all"}
    value = 10.0 * ctx.config.ian.depth + ctx.config.loss.mse_weight
    return TrialOutcome(scores=pd.DataFrame([{**row, "value": value, "n": 8}]), steps=2)


def test_a_retried_searched_variant_reaches_the_optuna_study(tmp_path):
    import optuna

    axes = {"ian.depth": {"low": 0, "high": 2}, "loss.mse_weight": {"low": 0.1, "high": 1.0}}
    spec = flaky_spec(axes=axes, search="optuna", num_samples=2, retry_failed=True)
    out = tmp_path / "sweep"
    summary = run_sweep(spec, out, trial_fn=fails_first_attempt, progress=False, report=False)
    assert summary.counts == {"ok": 2, "failed": 0, "stopped": 0}
    study = optuna.load_study(study_name="flaky", storage=f"sqlite:///{out / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]  # the search saw them fail
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:  # added after the retry
            p = trial.params
            assert trial.value == pytest.approx(10.0 * p["ian.depth"] + p["loss.mse_weight"])
            assert trial.user_attrs["retried"] is True


def test_a_driver_killed_after_moving_failed_trials_aside_resumes_them(tmp_path, monkeypatch):
    """`resume --retry-failed` moves the failed trials to retried/ first; if the driver dies
    before any of them is stored again, trials.parquet still lists them: resume must accept
    that store and run them."""
    from harness.store_check import check_store

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_API_KEY", raising=False)
    out = tmp_path / "sweep"
    spec = flaky_spec()
    run_sweep(spec, out, trial_fn=flaky_trial, progress=False, report=False)
    moved = prepare_retries(out, plan_sweep(spec), failed=True)  # ... then the driver dies
    assert len(moved) == 2 and not check_store(out, "resume").table_only
    resume_sweep(out, trial_fn=flaky_trial, progress=False, report=False)
    assert statuses(out) == {"ian.depth=0": "ok", "ian.depth=1": "ok", "ian.depth=2": "failed"}
