"""Score a MAGE model on MME, MMBench and SEED-Bench through lmms-eval, into tidy tables.

`evaluate` runs ``lmms_eval.evaluator.simple_evaluate`` with the model object (wrapped in
`harness.lmms_model.MageLMM`) on lmms-eval's own tasks, so every headline number is
lmms-eval's official scoring. Per-category rows and per-item correctness are derived from
the per-sample log (`harness.eval_tables`) and checked against the headlines.

Tasks and data (`harness.eval_tasks`): ``data_dir=None`` loads the real datasets from the
Hugging Face Hub (needs ``HF_TOKEN``); ``data_dir=DIR`` reads ``DIR/{mme,mmbench,seedbench}``
(``DatasetDict.save_to_disk`` folders) through lmms-eval's ``load_from_disk`` override, with no
network.

Outputs in ``out_dir`` (`harness.eval_outputs`): ``lmms_eval_results.json``,
``samples/<task>.jsonl``, ``scores.parquet``, ``items.parquet``, ``record.json`` (atomic
writes), and lmms-eval's own side files under ``lmms_eval/``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import eval_parallel, eval_tables
from harness.eval_batches import TASK_YAMLS
from harness.eval_outputs import build_record, write_outputs
from harness.eval_tasks import (
    BENCHMARKS,
    EvalError,
    check_local_data,
    hub_hint,
    hub_records,
    mmbench_choice,
    mmbench_scoring_from_env,
    parse_tasks,
    task_names,
    task_specs,
)

# lmms-eval scores documents in a thread pool (simple_evaluate's default: 4 threads); the
# scorers of MME, MMBench and SEED are pure Python, which threads only slow down
PROCESS_DOCS_PARALLEL = 1


@dataclass
class EvalResult:
    scores: pd.DataFrame  # [benchmark, metric, category, value, n]
    items: pd.DataFrame  # [benchmark, item_id, category, correct]
    record: dict[str, Any]  # what each number means: versions, datasets, settings


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
    tower_memo: str | Path | None = None,
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
    and recorded. ``tower_memo``: a folder where the tower's outputs on each batch are kept
    for the next evaluation of a model with the same tower (`harness.eval_memo`; local data
    only, whose content hashes name the batches).

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
        hashed = rank == 0 or tower_memo is not None
        data_records = check_local_data(data_dir, benchmarks, limit, hash_content=hashed)
    else:
        from huggingface_hub import get_token

        if not get_token():
            raise EvalError(hub_hint("no Hugging Face token is configured"))
    lm = _as_lmm(
        model_or_checkpoint,
        batch_size=batch_size,
        max_new_tokens_cap=max_new_tokens_cap,
        loader_workers=loader_workers,
        budgets=budgets,
        device=device,
    )

    from lmms_eval.evaluator import simple_evaluate

    if tower_memo is not None and data_dir is not None and lm._is_mage():
        from harness.eval_memo import TowerMemo

        content = {names[b]: data_records[b]["content_sha256"] for b in benchmarks}
        lm.tower_memo = TowerMemo(tower_memo, lm.model, content, lm.background)
    lm.reset_timings()
    cli_args = argparse.Namespace(output_path=str(out_dir / "lmms_eval"), process_with_media=False)
    began = time.time()
    keep = eval_tables.kept_mmbench_verdicts() if "mmbench" in benchmarks else nullcontext({})
    try:
        with keep as verdicts:  # MMBench's verdicts as lmms-eval reaches them (rank 0)
            results = simple_evaluate(
                model=lm,
                tasks=task_specs(benchmarks, data_dir, scoring),
                limit=limit,
                log_samples=True,
                bootstrap_iters=0,
                cli_args=cli_args,
                verbosity="WARNING",
                process_docs_parallel=PROCESS_DOCS_PARALLEL,
                task_manager=task_manager(),
                # as lmms-eval's own command line decides: torchrun collectives inside a group
                distributed_executor_backend="torchrun" if world > 1 else "accelerate",
            )
    except Exception as err:
        hint = "" if data_dir is not None else "; " + hub_hint("the datasets could not be loaded")
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
            outcome = _finish(results, names, local, details, extraction, verdicts)
            record = build_record(
                results, names, outcome.samples, outcome.datasets, lm, limit, wall_s, scoring
            )
            record["costs"] = eval_parallel.eval_costs(timings, names, lm.device, wall_s)
            scores = pd.concat(
                [outcome.scores, eval_parallel.cost_rows(record["costs"])], ignore_index=True
            )
            write_outputs(out_dir, results, outcome.samples, scores, outcome.items, record)
            outcome = EvalResult(scores, outcome.items, record)
        except Exception as err:  # whatever failed (a full disk too), every rank must hear it
            if world == 1:
                raise
            outcome = f"{type(err).__name__}: {err}"
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
    mmbench_verdicts: dict[int, int] | None = None,
):
    """Rank 0: lmms-eval's results -> tables (checked against the headlines). ``details_dir``
    is where lmms-eval's MMBench aggregation wrote its category accuracies."""
    if not results or not results.get("results"):
        raise EvalError(f"lmms-eval returned no results for {list(names.values())}")
    samples = results.pop("samples", {})
    for bench, task in names.items():
        if task not in results["results"] or not samples.get(task):
            raise EvalError(f"lmms-eval produced no scored samples for {task} ({bench})")
    scores, items = eval_tables.derive_tables(
        results, samples, names, extraction, details_dir, mmbench_verdicts
    )
    datasets = data_records if data_records is not None else hub_records(names, results, names)
    return _Scored(scores, items, samples, datasets)
