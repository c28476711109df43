"""Evaluation speed at several batch sizes and worker counts, and whether any answer changed.

`bench_eval` scores the same data several times through the real lmms-eval path
(`harness.eval.evaluate`; with more than one worker, `harness.eval_parallel.launch`): once
per batch size on one worker, then at the largest batch size on each other worker count. Each
run reports samples per second of loading and generation (the evaluation record's costs:
lmms-eval's own data loading and scoring are not counted; with several workers, the slowest
rank's time) and the end-to-end wall time, and every answer is compared with the first run.
With ``repeats`` above 1 the whole plan runs that many rounds, one configuration after the
other in each round (so that a slow spell of a shared machine hits every configuration
alike), and each row reports its best round, as ``timeit`` does: the noise of a busy machine
only ever slows a run down; every round's figure stays in ``samples_per_s_rounds``.
Other harnesses saw answers change with batch size (padding side, attention masks):
``answers_identical`` must be True. `mage-harness bench eval` prints the table.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Sequence
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


def compare_answers(reference: dict, other: dict, show: int = 5) -> dict[str, Any]:
    """Which (task, doc_id) answers differ between two runs (a missing one differs too)."""
    keys = sorted(set(reference) | set(other))
    differ = [k for k in keys if reference.get(k) != other.get(k)]
    return {
        "answers_identical": not differ,
        "n_compared": len(keys),
        "n_different": len(differ),
        "examples": [
            {
                "task": t,
                "doc_id": d,
                "reference": reference.get((t, d)),
                "this_run": other.get((t, d)),
            }
            for t, d in differ[:show]
        ],
    }


def plan_runs(batch_sizes: Sequence[int], workers: Sequence[int]) -> list[tuple[int, int]]:
    """(batch size, workers): every batch size on one worker, then the largest batch size on
    each other worker count."""
    runs = [(b, 1) for b in batch_sizes]
    runs += [(max(batch_sizes), w) for w in workers if w != 1]
    return runs


def bench_eval(
    model: Any,
    data_dir: str | Path,
    tasks: str | Iterable[str] = ("mme", "mmbench", "seedbench"),
    batch_sizes: Sequence[int] = (1, 8),
    workers: Sequence[int] = (1,),
    limit: int | None = None,
    max_new_tokens_cap: int | None = None,
    loader_workers: int = 1,
    threads: int | None = None,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """One row per run (see `plan_runs`), its best of ``repeats`` rounds; the first run is
    the reference for speedups and answers (every round's answers are compared).
    ``model``: an in-memory model, or a checkpoint folder (needed for workers > 1)."""
    from harness.eval import evaluate
    from harness.eval_parallel import launch
    from harness.eval_tasks import parse_tasks

    tasks = parse_tasks(tasks)
    if any(w > 1 for w in workers) and not isinstance(model, (str, Path)):
        raise ValueError("bench_eval: more than one worker needs a checkpoint folder")
    if repeats < 1:
        raise ValueError(f"bench_eval: repeats must be 1 or more, got {repeats}")
    plan = plan_runs(batch_sizes, workers)
    rounds: list[list[dict[str, Any]]] = [[] for _ in plan]
    reference: dict | None = None
    with tempfile.TemporaryDirectory(prefix="mage-bench-eval-") as tmp:
        rounds_plan = [(r, i, run) for r in range(repeats) for i, run in enumerate(plan)]
        for r, i, (batch_size, n_workers) in rounds_plan:
            out_dir = Path(tmp) / f"run{i}-round{r}"
            settings = dict(
                model_or_checkpoint=str(model) if isinstance(model, Path) else model,
                tasks=tasks,
                data_dir=str(data_dir),
                out_dir=str(out_dir),
                batch_size=batch_size,
                limit=limit,
                max_new_tokens_cap=max_new_tokens_cap,
                loader_workers=loader_workers,
            )
            began = time.perf_counter()
            if n_workers > 1:
                record = launch(n_workers, settings, threads=threads)["record"]
            else:
                record = evaluate(**settings).record
            wall = time.perf_counter() - began
            row = _row(record, batch_size, n_workers, wall)
            answers = run_answers(out_dir)
            reference = answers if reference is None else reference
            row.update(compare_answers(reference, answers))
            rounds[i].append(row)
    rows = [_best(runs) for runs in rounds]
    first = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup"] = row["samples_per_s"] / first if first and row["samples_per_s"] else None
    return rows


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the most samples/s; answers count as identical only if every round's
    were, and every round's samples/s is kept."""
    best = dict(max(runs, key=lambda run: run["samples_per_s"] or 0.0))
    worst = max(runs, key=lambda run: run["n_different"])
    for key in ("answers_identical", "n_different", "examples"):
        best[key] = worst[key]
    best["samples_per_s_rounds"] = [
        round(run["samples_per_s"], 1) if run["samples_per_s"] else None for run in runs
    ]
    return best


def _row(record: dict, batch_size: int, workers: int, wall: float) -> dict[str, Any]:
    costs = record["costs"]["benchmarks"]
    samples = sum(part["samples"] for part in costs.values())
    seconds = sum(part["wall_s"] for part in costs.values())
    model_s = sum(part["model_s"] for part in costs.values())
    return {
        "tasks": ",".join(t["task"] for t in record["tasks"].values()),
        "batch_size": batch_size,
        "workers": workers,
        "samples": samples,
        "samples_per_s": samples / seconds if seconds else None,
        "model_samples_per_s": samples / model_s if model_s else None,
        "wall_s": round(wall, 3),
    }
