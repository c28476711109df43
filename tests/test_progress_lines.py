"""Progress in a log: when stdout is not a terminal (a cluster job, `make demo > log`), the
long steps print one line each as they finish (world rendering, each asset's pretraining
phase, each trial with its scores and the time left) instead of staying silent."""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import store
from harness.progress import SweepProgress
from mage.world.assets import check_assets, prepare_assets
from mage.world.generate import generate_world


@contextmanager
def stdout_to(path: Path):
    """sys.stdout is a real file (not a terminal), as in `make demo > log`; set inside the
    test body, since pytest sets its own sys.stdout at the start of each test phase."""
    saved = sys.stdout
    with path.open("w") as log:
        sys.stdout = log
        try:
            yield
        finally:
            sys.stdout = saved


@pytest.fixture(autouse=True)
def no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def test_world_and_asset_preparation_print_a_line_per_finished_phase(
    test_world, test_assets, tmp_path
):
    log = tmp_path / "log.txt"
    with stdout_to(log):
        generate_world(tmp_path / "world", seed=4, size="test", progress=True)
        again = prepare_assets(test_world, tmp_path / "assets", size="test", progress=True)
    # preparation is deterministic: the same weights, bit for bit, as the session's assets
    assert check_assets(again)["weights_sha256"] == check_assets(test_assets)["weights_sha256"]
    lines = log.read_text().splitlines()
    assert "render + write training images: 96/96 done in" in lines[0]
    assert any(line.startswith("render mme images: 12/12 done in") for line in lines)
    for phase in ("pretrain world-vit (CLIP): 8/8", "pretrain world-resnet (CLIP): 8/8",
                  "pretrain world-llm (text): question mix: 12/12"):  # fmt: skip
        assert any(line.startswith(phase) for line in lines), phase
    check = next(line for line in lines if line.startswith("world-llm text-only check"))
    assert "yes_no_acc " in check and "mcq_acc " in check
    assert any(line.startswith("assets test: world-llm ready (") for line in lines)
    assert not any("\x1b[" in line for line in lines)  # no terminal control codes


def test_each_finished_trial_prints_its_scores_and_the_time_left(tmp_path):
    record = store.TrialRecord(
        trial_id="abc-s1",
        variant_id="abc",
        variant_name="ian.depth=2",
        seed=1,
        status="ok",
        wall_s=118.4,
        objectives={"mme/mme_perception_score/all": 330.5, "seedbench/seed_image/all": 0.251},
    )
    store.write_trial(tmp_path / "sweep", record)
    progress = SweepProgress("smoke:main", total=4, sweep_dir=tmp_path / "sweep")
    final = {"trial_final": 1, "trial_key": "abc-s1", "objective": 330.5, "trial_status": "ok"}
    log = tmp_path / "log.txt"
    with stdout_to(log):
        progress.setup()
        progress.on_trial_result(0, [], None, final)
        progress.on_trial_result(1, [], None, final)  # Tune may repeat a result: one line
        progress.on_trial_result(2, [], None, {"trial_final": 0, "trial_key": "x-s0"})
        # a trial ASHA stopped (no final result) and one that errored count as finished too
        stopped = types.SimpleNamespace(trial_id="t2", last_result={"trial_key": "x-s0"})
        progress.on_trial_complete(3, [], stopped)
        progress.on_trial_complete(4, [], stopped)
        crashed = types.SimpleNamespace(trial_id="t3", last_result=None)
        progress.on_trial_error(5, [], crashed)
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    line = lines[0]
    assert line.startswith("smoke:main: trial 1/4 ian.depth=2 seed 1: ok in 118 s")
    assert "MME-P 330.5, SEED 25.1" in line and "left" in line
    assert lines[1].startswith("smoke:main: trial 2/4 x-s0") and "trial 3/4 t3: error" in lines[2]


def test_a_resumed_sweep_counts_the_trials_of_earlier_sessions(tmp_path, monkeypatch):
    """Tune restores the trials an earlier session finished without firing their events: the
    count starts after them, and the time left comes from this session's rate alone."""
    import harness.progress as progress_module

    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "time", lambda: now[0])
    progress = SweepProgress("smoke:main", total=10, sweep_dir=tmp_path)
    restored = [types.SimpleNamespace(status="TERMINATED")] * 6
    log = tmp_path / "log.txt"
    with stdout_to(log):
        progress.setup()
        progress.on_step_end(0, [*restored, types.SimpleNamespace(status="RUNNING")])
        now[0] += 100.0  # this session's first trial took 100 s
        progress.on_trial_result(1, [], None, {"trial_final": 1, "trial_key": "k-s0"})
    line = log.read_text().splitlines()[0]
    assert line.startswith("smoke:main: trial 7/10 k-s0"), line
    assert line.endswith("elapsed 00:01:40, about 00:05:00 left"), line  # 3 left at 100 s


def test_the_time_left_shares_the_trials_left_among_the_slots_that_run_at_once(tmp_path):
    """Two trials of about 120 s run side by side: when the first ends, 20 are left, 10
    rounds of 2, about 20 min (elapsed / finished would say 40 min)."""
    import harness.progress as progress_module

    for seed, wall in ((0, 120.0), (1, 124.0)):
        record = store.TrialRecord(
            trial_id=f"abc-s{seed}", variant_id="abc", variant_name="main", seed=seed,
            status="ok", wall_s=wall, objectives={},
        )  # fmt: skip
        store.write_trial(tmp_path / "sweep", record)
    now = [1000.0]
    progress = SweepProgress("smoke:main", total=21, sweep_dir=tmp_path / "sweep")
    running = [types.SimpleNamespace(status="RUNNING")] * 2
    log = tmp_path / "log.txt"
    with stdout_to(log), pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress_module.time, "time", lambda: now[0])
        progress.setup()
        progress.on_step_end(0, running)
        now[0] += 122.0
        progress.on_trial_result(1, [], None, {"trial_final": 1, "trial_key": "abc-s0"})
        now[0] += 2.0
        progress.on_trial_result(2, [], None, {"trial_final": 1, "trial_key": "abc-s1"})
    first, second = log.read_text().splitlines()
    assert first.endswith("elapsed 00:02:02, about 00:20:00 left"), first  # 120 s x 20 / 2
    assert second.endswith("elapsed 00:02:04, about 00:19:19 left"), second  # 122 s x 19 / 2


def test_the_clock_counts_hours_past_a_day():
    from harness.progress import _clock

    assert (
        _clock(30 * 3600 + 61) == "30:01:01"
        and _clock(59) == "00:00:59"
        and _clock(-3) == "00:00:00"
    )
