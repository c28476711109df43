"""What an evaluation writes: its record (what each number means: versions, tasks, data,
MME/MMBench/SEED settings; `build_record`) and its result files in ``out_dir``
(`write_outputs`): ``lmms_eval_results.json``, ``samples/<task>.jsonl``, ``scores.parquet``,
``items.parquet`` and ``record.json``, each written atomically.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from harness import eval_tables
from harness.eval_tasks import mmbench_choice, mmbench_scoring_from_env
from mage.io import atomic_write, atomic_write_json, atomic_write_text


def build_record(
    results: dict,
    names: dict[str, str],
    samples: dict,
    datasets: dict,
    lm: Any,
    limit: int | None,
    wall_s: float,
    mmbench_scoring: str | None = None,
) -> dict[str, Any]:
    """What each number means: versions, tasks, data, MME/MMBench/SEED settings."""
    configs = results.get("configs", {})
    tasks = {
        bench: {
            "task": task,
            "task_version": results.get("versions", {}).get(task),
            "metadata": configs.get(task, {}).get("metadata"),
            "generation_kwargs": configs.get(task, {}).get("generation_kwargs"),
            "n_samples": results.get("n-samples", {}).get(task),
        }
        for bench, task in names.items()
    }
    record: dict[str, Any] = {
        "lmms_eval_version": version("lmms_eval"),
        "tasks": tasks,
        "datasets": datasets,
        "model": lm.describe(),
        "batch_size": lm.batch_size,
        "limit": limit,
        "bootstrap_iters": 0,
        "seeds": {
            k: results.get("config", {}).get(k) for k in ("random_seed", "numpy_seed", "torch_seed")
        },
        "wall_s": round(wall_s, 3),
        "scales": {
            "mme": "points (category max 200)",
            "mmbench": "percent",
            "seedbench": "fraction 0-1",
        },
    }
    scoring = (mmbench_scoring or mmbench_scoring_from_env()) if "mmbench" in names else None
    if scoring:
        record["mmbench_scoring"] = scoring  # gpt (GPT answer matching) or static
    extraction = mmbench_choice(scoring)[1] if scoring else None
    record.update(eval_tables.benchmark_notes(results, samples, names, extraction))
    return record


def _jsonable(value: Any) -> Any:
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
        return f"<image {value.mode} {value.size[0]}x{value.size[1]}>"
    return str(value)


def write_outputs(
    out_dir: Path,
    results: dict,
    samples: dict,
    scores: pd.DataFrame,
    items: pd.DataFrame,
    record: dict,
) -> None:
    """Write every result file atomically (a crash never leaves a half-written one)."""
    atomic_write_text(
        out_dir / "lmms_eval_results.json", json.dumps(results, indent=2, default=_jsonable) + "\n"
    )
    for task, task_samples in samples.items():
        lines = "".join(json.dumps(s, default=_jsonable) + "\n" for s in task_samples)
        atomic_write_text(out_dir / "samples" / f"{task}.jsonl", lines)
    atomic_write(out_dir / "scores.parquet", lambda p: scores.to_parquet(p, index=False))
    atomic_write(out_dir / "items.parquet", lambda p: items.to_parquet(p, index=False))
    atomic_write_json(out_dir / "record.json", record)
