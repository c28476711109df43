"""Score a MAGE model on MME, MMBench and SEED-Bench through lmms-eval, into tidy tables.

`evaluate` runs ``lmms_eval.evaluator.simple_evaluate`` with the model object (wrapped in
`harness.lmms_model.MageLMM`) on lmms-eval's own tasks, so every headline number is
lmms-eval's official scoring. Per-category rows and per-item correctness are derived from
the per-sample log (`harness.eval_tables`) and checked against the headlines.

Data: ``data_dir=None`` loads the real datasets from the Hugging Face Hub (needs
``HF_TOKEN``: the task YAMLs send a token even for public data). ``data_dir=DIR`` reads
``DIR/{mme,mmbench,seedbench}`` (``DatasetDict.save_to_disk`` folders in the official
schemas and splits) through lmms-eval's ``load_from_disk`` override, which keeps the
official task and scoring; no network is needed (set ``HF_DATASETS_OFFLINE=1
HF_HUB_OFFLINE=1`` to be sure). `harness.lmms_model.write_local_task_yamls` does the same
for the ``lmms-eval`` command line.

Outputs in ``out_dir``: ``lmms_eval_results.json``, ``samples/<task>.jsonl``,
``scores.parquet``, ``items.parquet``, ``record.json`` (atomic writes), and lmms-eval's own
side files under ``lmms_eval/``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from harness import eval_tables
from mage.io import atomic_write, atomic_write_json, atomic_write_text

BENCHMARKS = ("mme", "mmbench", "seedbench")
ALIASES = {"seed": "seedbench", "seed-bench": "seedbench", "mmb": "mmbench"}
HUB_IDS = {
    "mme": "lmms-lab-encoder/MME",
    "mmbench": "lmms-lab-encoder/MMBench",
    "seedbench": "lmms-lab-encoder/SEED-Bench",
}
SPLITS = {"mme": "test", "mmbench": "dev", "seedbench": "test"}
REQUIRED_COLUMNS = {  # official columns that lmms-eval's task code reads
    "mme": tuple("question_id image question answer category".split()),
    "mmbench": tuple(
        "index question hint A B C D answer category image source L2-category split".split()
    ),
    "seedbench": tuple(
        "image question choice_a choice_b choice_c choice_d answer data_type question_id "
        "question_type_id".split()
    ),
}


class EvalError(RuntimeError):
    """Evaluation could not run or did not produce scores; the message says why and what to do."""


@dataclass
class EvalResult:
    scores: pd.DataFrame  # [benchmark, metric, category, value, n]
    items: pd.DataFrame  # [benchmark, item_id, category, correct]
    record: dict[str, Any]  # what each number means: versions, datasets, settings


# ---- tasks and data ---------------------------------------------------------------------
def parse_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """Benchmark names from ``"mme,mmbench,seed"`` or a list; unknown names raise EvalError."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for raw in names:
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in BENCHMARKS:
            raise EvalError(
                f"unknown task {raw.strip()!r}; known: {', '.join(BENCHMARKS)} (alias: seed)"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise EvalError(f"no tasks given; choose from {', '.join(BENCHMARKS)}")
    return tuple(out)


# MMBench scoring method -> (lmms-eval task, answer extraction)
MMBENCH_SCORING = {
    "gpt": ("mmbench_en_dev", "openai"),
    "static": ("mmbench_en_dev_static", "static"),
}


def mmbench_scoring_from_env() -> str:
    """``gpt`` (GPT answer matching) when this process has an OpenAI/Azure key, else ``static``.

    A sweep decides this once in its driver (workers may not see the driver's environment)."""
    api_type = os.environ.get("API_TYPE", "openai")
    key = os.environ.get("AZURE_API_KEY" if api_type == "azure" else "OPENAI_API_KEY")
    return "gpt" if key else "static"


def mmbench_choice(scoring: str | None = None) -> tuple[str, str]:
    """(task name, answer extraction) of an MMBench scoring method (default: the environment's)."""
    scoring = scoring or mmbench_scoring_from_env()
    if scoring not in MMBENCH_SCORING:
        raise EvalError(
            f"unknown MMBench scoring {scoring!r}; choose one of {list(MMBENCH_SCORING)}"
        )
    if scoring == "gpt" and mmbench_scoring_from_env() != "gpt":
        raise EvalError(
            "MMBench scoring 'gpt' (GPT answer matching) needs OPENAI_API_KEY (or AZURE_API_KEY "
            "with API_TYPE=azure) in this process; set it, or score with 'static'"
        )
    return MMBENCH_SCORING[scoring]


def task_names(benchmarks: Iterable[str], mmbench_scoring: str | None = None) -> dict[str, str]:
    return {b: mmbench_choice(mmbench_scoring)[0] if b == "mmbench" else b for b in benchmarks}


def check_local_data(data_dir: str | Path, benchmarks: Iterable[str], limit: int | None) -> dict:
    """Validate ``data_dir/<benchmark>`` folders; return {benchmark: record}."""
    import datasets

    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise EvalError(f"data folder not found: {data_dir} (expected mme/, mmbench/, seedbench/)")
    records = {}
    for bench in benchmarks:
        folder = data_dir / bench
        if not (folder / "dataset_dict.json").is_file():
            raise EvalError(
                f"{folder}: no DatasetDict here (dataset_dict.json missing); write it with "
                f"datasets.load_dataset({HUB_IDS[bench]!r}).save_to_disk(...) or "
                "mage.world.generate.generate_world"
            )
        dataset = datasets.load_from_disk(str(folder))
        split = SPLITS[bench]
        if split not in dataset:
            raise EvalError(f"{folder}: split {split!r} missing (has {sorted(dataset)})")
        missing = [c for c in REQUIRED_COLUMNS[bench] if c not in dataset[split].column_names]
        if missing:
            raise EvalError(f"{folder}: split {split!r} lacks official columns {missing}")
        if bench == "mme" and limit is not None:
            counts = Counter(dataset[split]["question_id"][:limit])
            broken = sorted(q for q, n in counts.items() if n != 2)
            if broken:
                raise EvalError(
                    f"limit={limit} splits MME question pairs ({broken[:3]}...): lmms-eval scores "
                    "both questions of an image together; choose a limit that keeps pairs"
                )
        records[bench] = {
            "local_path": str(folder),
            "split": split,
            "rows": dataset[split].num_rows,
            "content_sha256": content_hash(folder),
            "official_id": HUB_IDS[bench],
        }
    return records


def content_hash(folder: Path) -> str:
    """sha256 over the data files (not state.json, whose fingerprint may vary)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "state.json"):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def task_specs(
    benchmarks: Iterable[str], data_dir: str | Path | None, mmbench_scoring: str | None = None
) -> list[str | dict]:
    """Task arguments for simple_evaluate: names, or load_from_disk overrides of them."""
    names = task_names(benchmarks, mmbench_scoring)
    if data_dir is None:
        return list(names.values())
    root = Path(data_dir).resolve()
    return [
        {"task": task, "dataset_path": str(root / b), "dataset_kwargs": {"load_from_disk": True}}
        for b, task in names.items()
    ]


def _hub_records(benchmarks: Iterable[str], results: dict, names: dict[str, str]) -> dict:
    records = {}
    for bench in benchmarks:
        config = results.get("configs", {}).get(names[bench], {})
        dataset_id = config.get("dataset_path", HUB_IDS[bench])
        revision = (config.get("dataset_kwargs") or {}).get("revision")
        try:
            from huggingface_hub import HfApi

            resolved = HfApi().dataset_info(dataset_id, revision=revision).sha
        except Exception as err:  # network or auth: record why the revision is unknown
            resolved = f"unknown ({type(err).__name__})"
        records[bench] = {
            "dataset_id": dataset_id,
            "config": config.get("dataset_name"),
            "split": SPLITS[bench],
            "revision": revision or "main",
            "resolved_revision": resolved,
        }
    return records


# ---- the evaluation ---------------------------------------------------------------------
@functools.cache
def task_manager() -> Any:
    """lmms-eval's task index, built once per process (indexing its YAMLs takes seconds).

    ``model_name="mage"`` selects each task's default prompts, as ``--model mage`` does."""
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", model_name="mage")


def _as_lmm(model_or_checkpoint: Any, batch_size: int, max_new_tokens_cap: int | None):
    from harness.lmms_model import MageLMM

    if isinstance(model_or_checkpoint, MageLMM):
        return model_or_checkpoint
    source = (
        {"checkpoint": str(model_or_checkpoint)}
        if isinstance(model_or_checkpoint, (str, Path))
        else {"model": model_or_checkpoint}
    )
    return MageLMM(**source, batch_size=batch_size, max_new_tokens_cap=max_new_tokens_cap)


def evaluate(
    model_or_checkpoint: Any,
    tasks: str | Iterable[str] = BENCHMARKS,
    data_dir: str | Path | None = None,
    out_dir: str | Path = "eval",
    batch_size: int = 8,
    limit: int | None = None,
    max_new_tokens_cap: int | None = None,
    mmbench_scoring: str | None = None,
) -> EvalResult:
    """Score a model (a MageModel, a checkpoint folder, or a `MageLMM`) with lmms-eval.

    ``mmbench_scoring``: ``gpt`` or ``static`` (`MMBENCH_SCORING`); default: decided here, once,
    from this process's environment (`mmbench_scoring_from_env`), and recorded.

    Raises EvalError when the data cannot be read, lmms-eval fails, or a task yields no
    scores; `eval_tables.EvalConsistencyError` when derived rows disagree with lmms-eval.
    """
    benchmarks = parse_tasks(tasks)
    scoring = (mmbench_scoring or mmbench_scoring_from_env()) if "mmbench" in benchmarks else None
    names = task_names(benchmarks, scoring)
    extraction = mmbench_choice(scoring)[1] if scoring else None
    out_dir = Path(out_dir)
    if data_dir is not None:
        data_records = check_local_data(data_dir, benchmarks, limit)
    else:
        from huggingface_hub import get_token

        if not get_token():
            raise EvalError(_hub_hint("no Hugging Face token is configured"))
    lm = _as_lmm(model_or_checkpoint, batch_size, max_new_tokens_cap)

    from lmms_eval.evaluator import simple_evaluate

    cli_args = argparse.Namespace(output_path=str(out_dir / "lmms_eval"), process_with_media=False)
    began = time.time()
    try:
        results = simple_evaluate(
            model=lm,
            tasks=task_specs(benchmarks, data_dir, scoring),
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,
            cli_args=cli_args,
            verbosity="WARNING",
            task_manager=task_manager(),
        )
    except Exception as err:
        hint = "" if data_dir is not None else "; " + _hub_hint("the datasets could not be loaded")
        if "MME only supports pairwise evaluation" in str(err):
            hint = "; every MME image needs both its questions (choose a limit that keeps pairs)"
        raise EvalError(
            f"lmms-eval failed on {list(names.values())}: {type(err).__name__}: {err}{hint}"
        ) from err
    if not results or not results.get("results"):
        raise EvalError(f"lmms-eval returned no results for {list(names.values())}")
    wall_s = time.time() - began
    samples = results.pop("samples", {})

    for bench, task in names.items():
        if task not in results["results"] or not samples.get(task):
            raise EvalError(f"lmms-eval produced no scored samples for {task} ({bench})")
    scores, item_frame = eval_tables.derive_tables(
        results, samples, names, extraction, out_dir / "lmms_eval" / "submissions"
    )

    if data_dir is None:
        data_records = _hub_records(benchmarks, results, names)
    record = build_record(results, names, samples, data_records, lm, limit, wall_s, scoring)
    write_outputs(out_dir, results, samples, scores, item_frame, record)
    return EvalResult(scores=scores, items=item_frame, record=record)


def _hub_hint(cause: str) -> str:
    ids = ", ".join(HUB_IDS.values())
    return (
        f"{cause}: data_dir=None reads {ids} from the Hugging Face Hub; set HF_TOKEN (the "
        "lmms-eval task YAMLs send a token even for public data) and check connectivity, "
        "or pass a data folder with save_to_disk copies (mme/, mmbench/, seedbench/)"
    )


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
