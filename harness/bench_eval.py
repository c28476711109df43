"""Evaluation speed at batch size 1 vs N, and whether batching changes any answer.

`bench_eval` scores the same data twice through the real lmms-eval path
(`harness.eval.evaluate`), once with one question per ``generate`` call and once with
``batch_size``; it reports samples per second of model time (``MageLMM.timings``, so
lmms-eval's data loading and scoring are not counted) and end to end, and compares every
answer of the two runs. Other harnesses saw answers change with batch size (padding side,
attention masks): ``answers_identical`` must be True. `mage-harness bench eval` prints it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def run_answers(out_dir: Path) -> dict[tuple[str, int], str]:
    """(task, doc_id) -> the model's answer, from the per-sample logs of one evaluation."""
    answers = {}
    for path in sorted((out_dir / "samples").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            answers[(path.stem, sample["doc_id"])] = sample["filtered_resps"][0]
    return answers


def compare_answers(batch_1: dict, batch_n: dict, show: int = 5) -> dict[str, Any]:
    """Which (task, doc_id) answers differ between two runs (a missing one differs too)."""
    keys = sorted(set(batch_1) | set(batch_n))
    differ = [k for k in keys if batch_1.get(k) != batch_n.get(k)]
    return {
        "answers_identical": not differ,
        "n_compared": len(keys),
        "n_different": len(differ),
        "examples": [
            {"task": t, "doc_id": d, "batch_1": batch_1.get((t, d)), "batch_n": batch_n.get((t, d))}
            for t, d in differ[:show]
        ],
    }


def bench_eval(
    model: Any,
    data_dir: str | Path,
    tasks: str | Iterable[str] = ("mme", "mmbench", "seedbench"),
    batch_size: int = 8,
    limit: int | None = None,
    max_new_tokens_cap: int | None = None,
) -> dict[str, Any]:
    """Samples/s at batch 1 and at ``batch_size`` on the same data; answers must agree.

    Returns a flat dict (one table row): tasks, batch_size, limit, samples, per run
    ``batch_{1,n}_samples_per_s`` (model time), ``batch_{1,n}_wall_s`` (end to end),
    ``speedup``, ``answers_identical``, ``n_different`` and a few differing ``examples``.
    """
    from harness.eval import evaluate
    from harness.lmms_model import MageLMM

    report: dict[str, Any] = {"batch_size": batch_size, "limit": limit}
    answers = {}
    with tempfile.TemporaryDirectory(prefix="mage-bench-eval-") as tmp:
        for label, size in (("batch_1", 1), ("batch_n", batch_size)):
            lmm = MageLMM.wrap(model, batch_size=size, max_new_tokens_cap=max_new_tokens_cap)
            out_dir = Path(tmp) / label
            began = time.perf_counter()
            result = evaluate(
                lmm, tasks=tasks, data_dir=data_dir, out_dir=out_dir, batch_size=size, limit=limit
            )
            wall = time.perf_counter() - began
            model_s = lmm.timings["generate_s"]
            report["tasks"] = ",".join(t["task"] for t in result.record["tasks"].values())
            report["samples"] = lmm.timings["generate_n"]
            report[f"{label}_samples_per_s"] = report["samples"] / model_s if model_s else None
            report[f"{label}_wall_s"] = round(wall, 3)
            answers[label] = run_answers(out_dir)
    one, many = report["batch_1_samples_per_s"], report["batch_n_samples_per_s"]
    report["speedup"] = many / one if one and many else None
    report.update(compare_answers(answers["batch_1"], answers["batch_n"]))
    return report
