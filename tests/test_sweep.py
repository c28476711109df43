"""Sweeps through real Ray Tune on the CPU: failed trials stored with their cause while the
others finish, Optuna with seeds, ASHA early stopping, a driver killed with SIGKILL and resumed
(no finished trial re-run, nothing stored lost), and the real trial end to end (identical
scores for the same config and seed, NaN and bad-data trials stored as failed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

from harness import store  # noqa: E402
from harness.cli import main as cli_main  # noqa: E402
from harness.experiment import shared_name  # noqa: E402
from harness.spec import parse_spec  # noqa: E402
from harness.sweep import resume_sweep, run_sweep, start_ray  # noqa: E402
from harness.trial import TrialOutcome  # noqa: E402

# Ray workers cannot import this file (tests/ is not a package): ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

OBJECTIVE = {"benchmark": "mme", "metric": "mme_perception_score"}
OBJECTIVE_KEY = "mme/mme_perception_score/all"


@pytest.fixture(scope="module", autouse=True)
def embedded_ray():
    started = start_ray()  # the embedded mode: 127.0.0.1 only, a per-session token
    yield
    if started:
        ray.shutdown()


def scripted_trial(ctx):
    """A trial without a model: depth 2 -> NaN loss, depth 3 -> missing data, else a score."""
    markers = ctx.sweep_dir / "markers"
    markers.mkdir(exist_ok=True)
    (markers / f"{ctx.trial_id}.{os.getpid()}.{time.time_ns()}").touch()
    delay = 0.25 if (ctx.sweep_dir / "slow").exists() else 0.0
    depth, weight = ctx.config.ian.depth, ctx.config.loss.mse_weight
    for step in range(1, ctx.config.stage1.steps + 1):
        time.sleep(delay)
        ctx.report("stage1", step, {"loss": (1.0 + weight) / step + 0.01 * ctx.seed})
        if depth == 2 and step == 2:
            from mage.train import NonFiniteLossError

            raise NonFiniteLossError("stage1 step 2: non-finite loss (ce term)")
    if depth == 3:
        raise FileNotFoundError("data file not found: missing.json")
    value = 100.0 * depth + ctx.seed - weight
    row = {"benchmark": "mme", "metric": "mme_perception_score", "category": "all"}
    return TrialOutcome(scores=pd.DataFrame([{**row, "value": value, "n": 8}]), steps=4)


def engine_spec(**changes):
    data = {
        "name": "engine",
        "base": "tiny-test",
        "axes": {"ian.depth": {"values": [0, 1, 2, 3]}},
        "seeds": [0],
        "objective": OBJECTIVE,
        "baselines": [{"name": "blind", "blind": True}],
        "max_concurrent_trials": 2,
    }
    return parse_spec({**data, **changes})


def markers(sweep_dir: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (sweep_dir / "markers").iterdir())


def test_failed_trials_are_stored_with_their_cause_and_the_sweep_goes_on(tmp_path):
    summary = run_sweep(
        engine_spec(), tmp_path, trial_fn=scripted_trial, progress=False, report=False
    )
    assert summary.counts == {"ok": 3, "failed": 2, "stopped": 0}
    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("variant_name")
    nan, data = trials.loc["ian.depth=2", "error"], trials.loc["ian.depth=3", "error"]
    assert nan.startswith("NonFiniteLossError: stage1 step 2: non-finite loss")
    assert data.startswith("FileNotFoundError: data file not found: missing.json")
    assert "in scripted_trial" in nan  # the traceback tail says where
    results = pd.read_parquet(tmp_path / "results.parquet")
    assert set(results["status"]) == {"ok"} and len(results) == 3
    assert (
        results.set_index("variant_name").loc["ian.depth=1", "value"] == 99.0
    )  # 100 * depth - mse_weight
    curves = pd.read_parquet(tmp_path / "curves.parquet")
    assert curves.groupby("trial_id").size().min() >= 2  # failed trials keep their curves
    assert summary.best["value"] == 99.0
    # the same spec into the same folder continues it: nothing finished runs again
    before = markers(tmp_path)
    run_sweep(engine_spec(), tmp_path, trial_fn=scripted_trial, progress=False, report=False)
    assert markers(tmp_path) == before and len(before) == 5


def test_optuna_trains_each_sampled_variant_for_every_seed(tmp_path):
    optuna = pytest.importorskip("optuna")
    axes = {"ian.depth": {"low": 0, "high": 1}, "loss.mse_weight": {"low": 0.1, "high": 1.0}}
    shared = f"sqlite:///{tmp_path / 'lab-optuna.db'}"  # a lab's storage, shared by sweeps
    spec = engine_spec(
        axes=axes, search="optuna", num_samples=3, seeds=[0, 1], baselines=[],
        optuna_storage=shared,
    )  # fmt: skip
    sweep = tmp_path / "sweep"
    summary = run_sweep(spec, sweep, trial_fn=scripted_trial, progress=False, report=False)
    assert sum(summary.counts.values()) == 6
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert (trials.groupby("variant_id")["seed"].apply(sorted) == [[0, 1]] * 3).all()
    # the study is this sweep's own: a re-run of the spec into another folder gets another
    name = store.read_manifest(sweep)["shared_name"]
    assert name.startswith("engine-") and shared_name(spec, tmp_path / "rerun") != name
    study = optuna.load_study(study_name=name, storage=shared)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:  # Optuna is told the mean over seeds 0 and 1 (scores differ by 1)
        expected = 100.0 * t.params["ian.depth"] + 0.5 - t.params["loss.mse_weight"]
        assert t.value == pytest.approx(expected)


def test_two_sweeps_of_one_spec_in_a_shared_storage_path_each_run_their_trials(tmp_path):
    """Tune's experiments under a user's storage_path are named per sweep: a re-run of the
    spec into a new folder does not restore the first sweep's finished experiment."""
    spec = engine_spec(
        axes={"ian.depth": {"values": [0, 1]}}, baselines=[],
        storage_path=str(tmp_path / "lab-tune"),
    )  # fmt: skip
    for out in ("a", "b"):
        summary = run_sweep(
            spec, tmp_path / out, trial_fn=scripted_trial, progress=False, report=False
        )
        assert summary.counts["ok"] == 2 and len(markers(tmp_path / out)) == 2, out
    names = {store.read_manifest(tmp_path / out)["shared_name"] for out in ("a", "b")}
    assert len(names) == 2
    # a resume of the first finds its own experiment: nothing runs again
    run_sweep(spec, tmp_path / "a", trial_fn=scripted_trial, progress=False, report=False)
    assert len(markers(tmp_path / "a")) == 2


def test_a_trial_dropped_by_store_rebuild_runs_again_on_resume(tmp_path):
    """`store rebuild --drop-missing` moves an unreadable trial aside and says resume runs it
    again; Tune's restored experiment counts it finished, so the resume runs it itself."""
    from harness.store_check import rebuild_store

    spec = engine_spec(axes={"ian.depth": {"values": [0, 1]}}, baselines=[])
    run_sweep(spec, tmp_path, trial_fn=scripted_trial, progress=False, report=False)
    victim = sorted((tmp_path / "trials").iterdir())[0]
    (victim / "record.json").write_text("{not json")
    assert rebuild_store(tmp_path, drop_missing=True)["moved"] == [f"damaged/{victim.name}"]
    summary = resume_sweep(tmp_path, trial_fn=scripted_trial, progress=False, report=False)
    assert summary.counts["ok"] == 2
    assert markers(tmp_path).count(victim.name) == 2  # its first run, and the one after the drop


def test_asha_stops_worse_trials_and_the_store_says_so(tmp_path):
    spec = engine_spec(
        axes={"loss.mse_weight": {"values": [0.0, 4.0, 8.0]}},
        overrides={"stage1.steps": 16},
        baselines=[],
        max_concurrent_trials=1,
        early_stopping={"grace_period": 2, "reduction_factor": 2, "metric": "stage1/loss"},
    )
    summary = run_sweep(spec, tmp_path, trial_fn=scripted_trial, progress=False, report=False)
    assert summary.counts["stopped"] >= 1 and summary.counts["failed"] == 0
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    stopped = trials[trials["status"] == "stopped"]
    assert stopped["stopped_early"].all() and (stopped["steps"] < 20).all()
    curves = pd.read_parquet(tmp_path / "curves.parquet")
    assert set(stopped["trial_id"]) <= set(curves["trial_id"])
    manifest = store.read_manifest(tmp_path)
    assert manifest["early_stopping"]["stopped_trials"] == len(stopped)
    assert manifest["early_stopping"]["steps_saved"] > 0


KILLED_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_sweep import engine_spec, scripted_trial
from harness.sweep import run_sweep
spec = engine_spec(axes={{"ian.depth": {{"values": [0, 1, 4]}}}}, seeds=[0, 1], baselines=[])
run_sweep(spec, {out!r}, trial_fn=scripted_trial, progress=False, report=False)
"""


def test_a_killed_driver_is_resumed_without_rerunning_finished_trials(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "slow").touch()
    script = KILLED_DRIVER.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "CI": "true"}
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env)
    deadline = time.time() + 180
    while len(store.load_records(out)) < 2:
        assert driver.poll() is None, "the driver ended before it could be killed"
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {p.parent.name: p.read_bytes() for p in (out / "trials").glob("*/record.json")}
    assert 2 <= len(before) < 6
    summary = resume_sweep(out, trial_fn=scripted_trial, progress=False, report=False)
    assert summary.counts["ok"] == 6
    records = store.load_records(out)
    assert len(records) == 6 and len({r.trial_id for r in records}) == 6
    for trial_id, content in before.items():  # stored before the kill: kept, not re-run
        assert (out / "trials" / trial_id / "record.json").read_bytes() == content
        assert markers(out).count(trial_id) == 1
    assert len(markers(out)) <= 6 + 2  # at most the two trials in flight ran twice
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    sessions = store.read_manifest(out)["sessions"]
    assert [s["kind"] for s in sessions] == ["sweep", "resume"]


@pytest.mark.slow
def test_real_trial_end_to_end(tmp_path, capsys):
    """tiny-test on the test world through Ray Tune, scored on MME by lmms-eval."""
    spec = parse_spec(
        {
            "name": "e2e",
            "base": "tiny-test",
            "world": {"size": "test", "seed": 0, "dir": str(tmp_path / "world")},
            # checkpointing does not change the maths: two trials that must score the same
            "axes": {"stage1.checkpoint_every": {"values": [0, 2]}},
            "seeds": [0],
            "objective": OBJECTIVE,
            "tasks": ["mme"],
            "baselines": [
                {"name": "nan-lr", "overrides": {"stage1.lr": 1e30}},
                {
                    "name": "bad-data",
                    "overrides": {"stage2.data": [{"path": "{data}/missing.json"}]},
                },
            ],
            "max_concurrent_trials": 1,
        }
    )
    out = tmp_path / "sweep"
    summary = run_sweep(spec, out, progress=False, report=False)
    trials = pd.read_parquet(out / "trials.parquet").set_index("variant_name")
    assert summary.counts == {"ok": 2, "failed": 2, "stopped": 0}, trials["error"].to_dict()
    assert trials.loc["nan-lr", "error"].startswith("NonFiniteLossError")
    assert "missing.json" in trials.loc["bad-data", "error"]
    results = pd.read_parquet(out / "results.parquet")
    mme = results[results["benchmark"] == "mme"]
    a, b = (g.set_index(["metric", "category"])["value"] for _, g in mme.groupby("trial_id"))
    assert len(a) > 1 and a.sort_index().equals(b.sort_index())  # same config + seed: same scores
    train = results[results["benchmark"] == "train"]
    assert set(train["metric"]) >= {"stage1/loss_final", "stage2/loss_final"}
    # bad-data shared stage 1 with the checkpoint_every=0 trial: two stage-1 runs, not three
    done = [p.read_text() for p in (out / "stages").glob("*/done.json")]
    assert sum('"stage": "stage1"' in d for d in done) == 2
    manifest = store.read_manifest(out)
    assert manifest["eval_record"]["lmms_eval_version"] and manifest["packages"]["torch"]
    assert (out / "trials" / trials.loc["nan-lr", "trial_id"] / "config.yaml").exists()
    # a reviewer retraining a stage's config from the command line gets the sweep's losses
    stage1 = next(
        p.parent for p in (out / "stages").glob("*/done.json") if "stage1" in p.read_text()
    )
    curve = pd.read_parquet(stage1 / "curves.parquet").query("metric == 'loss'")
    capsys.readouterr()
    argv = ["train", "--config", str(stage1 / "config.yaml"), "--out", str(tmp_path / "again")]
    assert cli_main([*argv, "--stages", "stage1", "--threads", "1"]) == 0
    printed = [line for line in capsys.readouterr().err.splitlines() if " loss " in line]
    assert printed[-1].endswith(f"loss {curve['value'].iloc[-1]:.4f}"), printed[-1]


def two_stage_trial(ctx):
    """Stage 1 then stage 2, each reporting a loss; stage 2's CE is worse with a larger MSE
    weight (what early stopping should rank on); then a score."""
    weight = ctx.config.loss.mse_weight
    for step in range(1, ctx.config.stage1.steps + 1):
        ctx.report("stage1", step, {"loss": 1.0 / step, "ce_loss": 1.0 / step})
    for step in range(1, ctx.config.stage2.steps + 1):
        ce = (1.0 + weight) / step
        ctx.report("stage2", step, {"loss": ce, "ce_loss": ce})
    row = {"benchmark": "mme", "metric": "mme_perception_score", "category": "all"}
    return TrialOutcome(scores=pd.DataFrame([{**row, "value": 10.0 - weight, "n": 8}]), steps=8)


def test_optuna_with_asha_scores_the_survivors_and_prunes_the_stopped(tmp_path):
    import optuna

    spec = engine_spec(
        axes={"loss.mse_weight": {"low": 0.0, "high": 8.0}},
        overrides={"stage1.steps": 4, "stage2.steps": 8},
        baselines=[],
        search="optuna",
        num_samples=6,
        max_concurrent_trials=1,
        early_stopping={"grace_period": 2, "reduction_factor": 2},  # on stage-2 CE
    )
    summary = run_sweep(spec, tmp_path, trial_fn=two_stage_trial, progress=False, report=False)
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    assert summary.counts["ok"] >= 1 and summary.counts["stopped"] >= 1, trials["status"].tolist()
    assert summary.counts["failed"] == 0 and len(trials) == 6
    records = {r.trial_id: r for r in store.load_records(tmp_path)}
    for trial_id, status in zip(trials["trial_id"], trials["status"]):
        objectives = records[trial_id].objectives
        if status == "ok":  # ran to the end: scored
            assert objectives[OBJECTIVE_KEY] == pytest.approx(
                10.0 - records[trial_id].config["loss"]["mse_weight"]
            )
        else:  # stopped: its last stage-2 training value, and no score
            assert objectives["train/stage2/ce_loss/all"] > 0 and OBJECTIVE_KEY not in objectives
    study = optuna.load_study(study_name="engine", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == summary.counts["ok"] and all(np.isfinite(t.value) for t in complete)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == summary.counts["stopped"]
    for trial in pruned:  # its stage-2 CE curve up to where ASHA stopped it
        assert trial.intermediate_values and all(
            np.isfinite(list(trial.intermediate_values.values()))
        )
