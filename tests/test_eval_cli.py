"""Command lines: `mage-harness eval` fails with the cause on bad input and scores a real
checkpoint; ``lmms-eval eval --model mage`` (the entry point) scores a saved MageModel on
local data, checked by reading its results file (lmms-eval exits 0 even on failure)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_eval_benchdata import bench_data_dir  # noqa: F401

from harness.cli import main
from mage.model import MageModel
from mage.presets import tiny_test

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_eval_command_fails_with_the_cause(tmp_path, capsys, bench_data_dir):  # noqa: F811
    code, err = _run_cli(["eval", str(tmp_path), "--data", str(tmp_path / "nope")], capsys)
    assert code != 0 and "data folder not found" in err and "nope" in err

    code, err = _run_cli(["eval", str(tmp_path), "--tasks", "mme,gqa"], capsys)
    assert code != 0 and "unknown task 'gqa'" in err

    partial = tmp_path / "partial"
    shutil.copytree(bench_data_dir / "mme", partial / "mme")
    code, err = _run_cli(["eval", str(tmp_path), "--data", str(partial)], capsys)
    assert code != 0 and "mmbench" in err and "dataset_dict.json" in err
    # a copy away from its world is checked against the official MME: refused, with counts
    code, err = _run_cli(["eval", str(tmp_path), "--data", str(partial), "--tasks", "mme"], capsys)
    assert code != 0 and "split 'test' has 24 rows, expected 2,374" in err and "limit" in err

    code, err = _run_cli(
        ["eval", str(tmp_path / "no-ckpt"), "--data", str(bench_data_dir), "--tasks", "mme"], capsys
    )
    assert code != 0 and "checkpoint folder not found" in err


def _pair_limit(data_dir: Path, at_least: int = 6) -> int:
    """The smallest prefix of MME rows (>= at_least) that keeps question pairs whole."""
    import datasets

    ids = datasets.load_from_disk(str(data_dir / "mme"))["test"]["question_id"]
    for n in range(at_least, len(ids) + 1):
        if all(ids[:n].count(q) == 2 for q in ids[:n]):
            return n
    return len(ids)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real MageModel (tiny random preset) saved with save_pretrained."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    MageModel.build(tiny_test()).save_pretrained(path)
    return path


def test_torchrun_lmms_eval_with_two_processes(checkpoint, bench_data_dir, tmp_path):  # noqa: F811
    """``torchrun --nproc_per_node 2 -m lmms_eval --model mage``: lmms-eval shards the docs
    over the two ranks (gloo) and rank 0 writes every sample."""
    from harness.eval_tasks import write_local_task_yamls

    names = write_local_task_yamls(bench_data_dir, tmp_path / "tasks", ["mme"])
    out = tmp_path / "out"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    limit = _pair_limit(bench_data_dir)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lmms_eval",
        "--model",
        "mage",
        "--model_args",
        f"checkpoint={checkpoint},max_new_tokens_cap=4",
        "--include_path",
        str(tmp_path / "tasks"),
        "--tasks",
        names["mme"],
        "--limit",
        str(limit),
        "--batch_size",
        "2",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    found = sorted(p for p in out.rglob("*_results.json") if "submissions" not in p.parts)
    assert found, (
        f"no results file; exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    results = json.loads(found[-1].read_text())
    scored = results["results"][names["mme"]]
    score = scored.get("mme_perception_score,none", scored.get("mme_cognition_score,none"))
    assert isinstance(score, float) and 0.0 <= score
    assert "mage" in results["config"]["model"]
    logs = sorted(out.rglob("*samples_*.jsonl"))
    assert logs, "no per-sample log"
    doc_ids = sorted(json.loads(line)["doc_id"] for line in logs[0].read_text().splitlines())
    assert doc_ids == list(range(limit))  # both ranks' shards, gathered on rank 0


def test_mage_harness_eval_scores_a_checkpoint(checkpoint, bench_data_dir, tmp_path, capsys):  # noqa: F811
    import pandas as pd

    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            str(checkpoint),
            "--data",
            str(bench_data_dir),
            "--tasks",
            "mme",
            "--limit",
            str(_pair_limit(bench_data_dir)),
            "--batch-size",
            "3",
            "--max-new-tokens-cap",
            "4",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "mme_perception_score" in captured.out
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores.benchmark) == {"mme", "eval"} and (scores.category == "all").any()
    assert scores.query("benchmark == 'eval' and metric == 'mme/samples_per_s'").value.item() > 0
    record = json.loads((out / "record.json").read_text())
    assert record["model"]["checkpoint"] == str(checkpoint)
    assert record["model"]["max_new_tokens_cap"] == 4
