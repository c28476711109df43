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
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from harness import eval_parallel, eval_tables
from harness.benchmarks import OFFICIAL, BenchmarkDataError, check_folder, content_hash
from harness.eval_batches import TASK_YAMLS
from mage.io import atomic_write, atomic_write_json, atomic_write_text

BENCHMARKS = ("mme", "mmbench", "seedbench")
ALIASES = {"seed": "seedbench", "seed-bench": "seedbench", "mmb": "mmbench"}
HUB_IDS = {bench: official.dataset_id for bench, official in OFFICIAL.items()}
SPLITS = {bench: official.split for bench, official in OFFICIAL.items()}


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


def check_local_data(
    data_dir: str | Path, benchmarks: Iterable[str], limit: int | None, hash_content: bool = True
) -> dict:
    """Validate ``data_dir/<benchmark>`` folders (`harness.benchmarks.check_folder`: schema,
    and every row there unless ``limit``); return {benchmark: record} with content hashes."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise EvalError(f"data folder not found: {data_dir} (expected mme/, mmbench/, seedbench/)")
    benchmarks = list(benchmarks)
    records = {}
    for bench in sorted(benchmarks, key=lambda b: (data_dir / b).is_dir()):  # missing first
        try:
            records[bench] = check_folder(data_dir, bench, limit)
        except BenchmarkDataError as err:
            raise EvalError(str(err)) from None
        if hash_content:
            records[bench]["content_sha256"] = content_hash(data_dir / bench)
    return {bench: records[bench] for bench in benchmarks}


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
    """lmms-eval's task index of the MME, MMBench and SEED-Bench task folders, built once
    per process (all ~2,000 tasks take seconds to index, in every evaluating process).

    ``model_name="mage"`` selects each task's default prompts, as ``--model mage`` does."""
    import lmms_eval.tasks
    from lmms_eval.tasks import TaskManager

    root = Path(lmms_eval.tasks.__file__).parent
    folders = sorted({str(root / Path(path).parent) for path in TASK_YAMLS.values()})
    return TaskManager("WARNING", model_name="mage", include_path=folders, include_defaults=False)


def _as_lmm(model_or_checkpoint: Any, **settings: Any):
    from harness.lmms_model import MageLMM

    if isinstance(model_or_checkpoint, MageLMM):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, (str, Path)):
        return MageLMM(checkpoint=str(model_or_checkpoint), **settings)
    settings.pop("device", None)
    return MageLMM(model=model_or_checkpoint, **settings)


def evaluate(
    model_or_checkpoint: Any,
    tasks: str | Iterable[str] = BENCHMARKS,
    data_dir: str | Path | None = None,
    out_dir: str | Path = "eval",
    batch_size: int = 8,
    limit: int | None = None,
    max_new_tokens_cap: int | None = None,
    loader_workers: int = 1,
    budgets: str = "harness",
    device: str | None = None,
    mmbench_scoring: str | None = None,
) -> EvalResult:
    """Score a model (a MageModel, a checkpoint folder, or a `MageLMM`) with lmms-eval.

    Data parallel: inside an initialised ``torch.distributed`` process group (gloo on CPU,
    NCCL on GPU; ``RANK`` / ``WORLD_SIZE`` as the launcher sets them), every rank calls this
    with the same arguments and its own full copy of the model (on its own device). lmms-eval
    gives each rank a shard of the documents and gathers the results on rank 0, which alone
    writes ``out_dir``; every rank returns the same `EvalResult` (after rank 0 wrote it).
    Scores and per-sample answers do not depend on the number of ranks.

    ``loader_workers`` processes decode and preprocess images ahead of generation;
    ``budgets`` picks the token budgets (`harness.eval_batches`); ``device`` places a model
    loaded from a checkpoint. ``mmbench_scoring``: ``gpt`` or ``static`` (`MMBENCH_SCORING`);
    default: decided here, once, from this process's environment (`mmbench_scoring_from_env`),
    and recorded.

    Raises EvalError when the data cannot be read, lmms-eval fails, or a task yields no
    scores; `eval_tables.EvalConsistencyError` when derived rows disagree with lmms-eval.
    """
    try:
        rank, world = eval_parallel.process_group()
    except eval_parallel.ProcessGroupError as err:
        raise EvalError(str(err)) from None
    benchmarks = parse_tasks(tasks)
    scoring = (mmbench_scoring or mmbench_scoring_from_env()) if "mmbench" in benchmarks else None
    names = task_names(benchmarks, scoring)
    extraction = mmbench_choice(scoring)[1] if scoring else None
    out_dir = Path(out_dir)
    if data_dir is not None:
        data_records = check_local_data(data_dir, benchmarks, limit, hash_content=rank == 0)
    else:
        from huggingface_hub import get_token

        if not get_token():
            raise EvalError(_hub_hint("no Hugging Face token is configured"))
    lm = _as_lmm(
        model_or_checkpoint,
        batch_size=batch_size,
        max_new_tokens_cap=max_new_tokens_cap,
        loader_workers=loader_workers,
        budgets=budgets,
        device=device,
    )

    from lmms_eval.evaluator import simple_evaluate

    lm.reset_timings()
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
            # as lmms-eval's own command line decides: torchrun collectives inside a group
            distributed_executor_backend="torchrun" if world > 1 else "accelerate",
        )
    except Exception as err:
        hint = "" if data_dir is not None else "; " + _hub_hint("the datasets could not be loaded")
        if "MME only supports pairwise evaluation" in str(err):
            hint = "; every MME image needs both its questions (choose a limit that keeps pairs)"
        raise EvalError(
            f"lmms-eval failed on {list(names.values())}: {type(err).__name__}: {err}{hint}"
        ) from err
    timings = eval_parallel.gather_to_all(lm.timings)
    wall_s = time.time() - began
    outcome: Any = None
    if rank == 0:
        try:
            local = data_records if data_dir is not None else None
            details = out_dir / "lmms_eval" / "submissions"
            outcome = _finish(results, names, local, details, extraction)
            record = build_record(
                results, names, outcome.samples, outcome.datasets, lm, limit, wall_s, scoring
            )
            record["costs"] = eval_parallel.eval_costs(timings, names, lm.device, wall_s)
            scores = pd.concat(
                [outcome.scores, eval_parallel.cost_rows(record["costs"])], ignore_index=True
            )
            write_outputs(out_dir, results, outcome.samples, scores, outcome.items, record)
            outcome = EvalResult(scores, outcome.items, record)
        except (EvalError, eval_tables.EvalConsistencyError) as err:
            outcome = f"{type(err).__name__}: {err}"
            if world == 1:
                raise
    outcome = eval_parallel.broadcast(outcome)
    if isinstance(outcome, str):
        raise EvalError(f"rank 0 could not score the evaluation: {outcome}")
    return outcome


@dataclass
class _Scored:
    scores: pd.DataFrame
    items: pd.DataFrame
    samples: dict
    datasets: dict


def _finish(
    results: dict | None,
    names: dict,
    data_records: dict | None,
    details_dir: Path,
    extraction: str | None,
):
    """Rank 0: lmms-eval's results -> tables (checked against the headlines). ``details_dir``
    is where lmms-eval's MMBench aggregation wrote its category accuracies."""
    if not results or not results.get("results"):
        raise EvalError(f"lmms-eval returned no results for {list(names.values())}")
    samples = results.pop("samples", {})
    for bench, task in names.items():
        if task not in results["results"] or not samples.get(task):
            raise EvalError(f"lmms-eval produced no scored samples for {task} ({bench})")
    scores, items = eval_tables.derive_tables(results, samples, names, extraction, details_dir)
    datasets = data_records if data_records is not None else _hub_records(names, results, names)
    return _Scored(scores, items, samples, datasets)


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
