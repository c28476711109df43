"""Data-parallel evaluation: a trained tiny model scored on the world's benchmarks by two
gloo processes (``mage-harness eval --workers 2``, which joins a process group on each rank
and calls `harness.eval.evaluate` there, as a trial's workers do) gives exactly the
per-sample answers, scores and items of one process; rank 0 writes, the costs add up."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.eval import evaluate
from harness.eval_parallel import COST_METRICS, eval_costs
from harness.eval_tasks import EvalError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_checkpoint(test_world, test_assets, tmp_path_factory) -> Path:
    """world-test trained for its few steps on the test world, saved."""
    from mage.model import MageModel
    from mage.presets import get_preset
    from mage.train import seed_build, train_stage

    root = tmp_path_factory.mktemp("trained")
    cfg = get_preset("world-test").with_overrides(
        {"data_dir": str(test_world.root), "assets_dir": str(test_assets)}
    )
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    for stage in ("stage1", "stage2"):
        train_stage(model, cfg, stage, root / stage)
    model.save_pretrained(root / "checkpoint")
    return root / "checkpoint"


def _answers(out: Path) -> dict[tuple[str, int], list]:
    answers = {}
    for path in sorted((out / "samples").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            answers[(path.stem, sample["doc_id"])] = sample["filtered_resps"]
    return answers


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_two_gloo_workers_give_the_answers_and_scores_of_one(
    trained_checkpoint, test_world, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = Path(test_world.bench["mme"]).parent
    one = evaluate(str(trained_checkpoint), data_dir=data, out_dir=tmp_path / "one", batch_size=4)
    argv = ["eval", str(trained_checkpoint), "--data", str(data), "--out", str(tmp_path / "two")]
    code = main([*argv, "--workers", "2", "--batch-size", "4", "--threads", "1"])
    assert code == 0, capsys.readouterr().err

    answers_one, answers_two = _answers(tmp_path / "one"), _answers(tmp_path / "two")
    assert len(answers_one) == 24 + 48 + 12  # every row of the test world's three splits
    assert answers_two == answers_one
    assert len({a[0] for a in answers_one.values()}) > 2  # a trained model, not one answer
    two_scores = pd.read_parquet(tmp_path / "two" / "scores.parquet")
    scored = lambda frame: _sorted(frame[frame.benchmark != "eval"])  # noqa: E731 (not costs)
    pd.testing.assert_frame_equal(scored(two_scores), scored(one.scores))
    assert set(two_scores[two_scores.benchmark == "eval"].metric) == {
        f"{b}/{m}" for b in ("mme", "mmbench", "seedbench") for m in COST_METRICS
    }
    two_items = pd.read_parquet(tmp_path / "two" / "items.parquet")
    pd.testing.assert_frame_equal(_sorted(two_items), _sorted(one.items))

    costs = json.loads((tmp_path / "two" / "record.json").read_text())["costs"]
    assert costs["workers"] == 2 and one.record["costs"]["workers"] == 1
    for bench, rows in (("mme", 24), ("mmbench", 48), ("seedbench", 12)):
        for record in (costs, one.record["costs"]):
            part = record["benchmarks"][bench]
            assert part["samples"] == rows and part["samples_per_s"] > 0
            assert part["gpu_hours"] == 0.0 and part["device_hours"] > 0


def test_costs_sum_ranks_and_take_the_slowest_wall_time():
    names = {"mme": "mme"}
    timings = [
        {"tasks": {"mme": {"samples": 10, "wall_s": 2.0, "generate_s": 1.5}}},
        {"tasks": {"mme": {"samples": 6, "wall_s": 4.0, "generate_s": 3.0}}},
    ]
    on_gpu = eval_costs(timings, names, torch.device("cuda", 0), wall_s=10.0)
    part = on_gpu["benchmarks"]["mme"]
    assert part["samples"] == 16 and part["wall_s"] == 4.0 and part["samples_per_s"] == 4.0
    assert part["gpu_hours"] == pytest.approx(6.0 / 3600) and part["model_s"] == 3.0
    assert on_gpu["gpu_hours"] == pytest.approx(20.0 / 3600)
    on_cpu = eval_costs(timings, names, torch.device("cpu"), wall_s=10.0)
    assert on_cpu["gpu_hours"] == 0.0 and on_cpu["benchmarks"]["mme"]["gpu_hours"] == 0.0


def test_a_world_size_without_a_process_group_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EvalError, match="init_process_group"):
        evaluate(object(), tasks="mme", data_dir=tmp_path, out_dir=tmp_path / "out")


def test_every_rank_ends_when_rank_0_fails_to_write(trained_checkpoint, test_world, tmp_path):
    """Rank 0 alone scores and writes: any error there (a full disk, not only a scoring
    error) reaches the other ranks, which would otherwise wait in a collective forever."""
    from dist_helpers import eval_with_rank0_failing, spawn_ranks

    data = Path(test_world.bench["mme"]).parent
    seen = tmp_path / "ended"
    spawn_ranks(eval_with_rank0_failing, 2, str(trained_checkpoint), str(data),
                str(tmp_path / "out"), str(seen))  # fmt: skip
    for rank in (0, 1):
        ended = (tmp_path / f"ended.{rank}").read_text()
        assert "rank 0 could not score the evaluation: OSError" in ended, (rank, ended)
        assert "No space left on device" in ended


def test_a_second_evaluation_reads_the_kept_tower_outputs_and_scores_alike(
    trained_checkpoint, test_world, tmp_path, monkeypatch
):
    """`harness.eval_memo` through real lmms-eval: the first evaluation with ``tower_memo``
    keeps each batch's tower outputs, the second runs the tower on no image, and both give
    the answers, scores and items of an evaluation without the memo."""
    from mage.model import MageModel

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = Path(test_world.bench["mme"]).parent
    model = MageModel.from_pretrained(trained_checkpoint)
    towered: list[int] = []
    real_tower = model.vision.forward
    monkeypatch.setattr(model.vision, "forward", lambda x: towered.append(len(x)) or real_tower(x))
    run = lambda name, memo: evaluate(  # noqa: E731
        model, data_dir=data, out_dir=tmp_path / name, batch_size=4, tower_memo=memo
    )
    plain = run("plain", None)
    assert sum(towered) > 0
    towered.clear()
    cold = run("cold", tmp_path / "memo")
    kept = list((tmp_path / "memo").glob("*/*.safetensors"))
    assert len(kept) == len(towered) > 0  # one file per batch, one tower call each
    towered.clear()
    warm = run("warm", tmp_path / "memo")
    assert towered == []
    scored = lambda frame: _sorted(frame[frame.benchmark != "eval"])  # noqa: E731 (not costs)
    for result, name in ((cold, "cold"), (warm, "warm")):
        assert _answers(tmp_path / name) == _answers(tmp_path / "plain")
        pd.testing.assert_frame_equal(scored(result.scores), scored(plain.scores))
        pd.testing.assert_frame_equal(_sorted(result.items), _sorted(plain.items))
