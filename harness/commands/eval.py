"""`mage-harness eval CHECKPOINT`: score a saved MAGE model on MME, MMBench and SEED.

Runs `harness.eval.evaluate` (lmms-eval's official scoring), writes the result files to
``--out`` (a new or empty folder, or one an evaluation wrote) and prints the headline and
per-category numbers. ``--workers N`` runs it data-parallel on N processes started by torch's
own launcher (`harness.eval_parallel`). The arguments, the data and the checkpoint's files are
checked before a model is loaded; errors reach the CLI's error boundary (one line, exit 2).
With ``--data`` the run is
offline: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set unless already set.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a checkpoint on MME / MMBench / SEED through lmms-eval",
        description="Score a MageModel checkpoint with lmms-eval's own MME, MMBench and "
        "SEED-Bench scoring; writes scores.parquet, items.parquet, record.json, "
        "lmms_eval_results.json and samples/ to --out.",
    )
    parser.add_argument("checkpoint", help="folder written by MageModel.save_pretrained")
    parser.add_argument(
        "--tasks",
        default="mme,mmbench,seedbench",
        help="comma-separated: mme, mmbench, seedbench (alias seed)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="folder with mme/, mmbench/, seedbench/ save_to_disk copies "
        "(default: the real datasets from the Hugging Face Hub; needs HF_TOKEN)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: CHECKPOINT/eval)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate call")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N rows of each task (for quick checks)",
    )
    parser.add_argument(
        "--max-new-tokens-cap",
        type=int,
        default=None,
        help="cap every task's token budget",
    )
    parser.add_argument(
        "--budgets",
        choices=("harness", "task"),
        default="harness",
        help="token budgets: the harness's per-task defaults (MME 16, MMBench 32, SEED 16) "
        "or each task's own (MMBench 1024)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-parallel processes (torch's launcher; gloo on CPU, one GPU each with NCCL)",
    )
    parser.add_argument(
        "--loader-workers", type=int, default=1, help="image-loading processes per worker"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per worker (default: cores / workers)",
    )
    parser.set_defaults(func=run)


def is_eval_dir(path: Path) -> bool:
    """A folder `evaluate` wrote (lmms-eval's results or its own folder are there)."""
    return (path / "lmms_eval_results.json").is_file() or (path / "lmms_eval").is_dir()


def check_loader_workers(value: int) -> None:
    from harness.eval_tasks import EvalError

    if value < 0:
        raise EvalError(f"--loader-workers must be 0 (decode inline) or more, got {value}")


def check_data(data_dir: str, benchmarks: list[str], limit: int | None) -> None:
    """`check_local_data`, with a damaged benchmark folder reported as that folder's fault."""
    from harness.cli import is_project_error
    from harness.eval_tasks import EvalError, check_local_data

    try:
        check_local_data(data_dir, benchmarks, limit, hash_content=False)
    except Exception as err:
        if is_project_error(err):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EvalError(
            f"--data {data_dir}: a benchmark folder cannot be read ({type(err).__name__}: "
            f"{first[:200]}); save it again with datasets' save_to_disk"
        ) from None


def run(args: argparse.Namespace) -> int:
    from harness.eval_tasks import HUB_IDS, EvalError, parse_tasks
    from mage.checkpoint_check import check_checkpoint
    from mage.hub import check_hub_id
    from mage.io import check_output_dir

    benchmarks = parse_tasks(args.tasks)
    for name, value in (
        ("--batch-size", args.batch_size),
        ("--limit", args.limit),
        ("--max-new-tokens-cap", args.max_new_tokens_cap),
        ("--workers", args.workers),
        ("--threads", args.threads),
    ):
        if value is not None and value < 1:
            raise EvalError(f"{name} must be a positive integer, got {value}")
    check_loader_workers(args.loader_workers)
    if args.data is not None:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        check_data(args.data, benchmarks, args.limit)  # fail before loading a model
    else:
        for bench in benchmarks:  # the official datasets, from the Hub or its cache
            check_hub_id(HUB_IDS[bench], f"--tasks {bench} (without --data):", "dataset")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise EvalError(f"checkpoint folder not found: {checkpoint}")
    check_checkpoint(checkpoint)
    out = Path(args.out) if args.out else checkpoint / "eval"
    check_output_dir(out, "an evaluation folder", is_eval_dir)
    settings = dict(
        model_or_checkpoint=str(checkpoint),
        tasks=benchmarks,
        data_dir=args.data,
        out_dir=str(out),
        batch_size=args.batch_size,
        limit=args.limit,
        max_new_tokens_cap=args.max_new_tokens_cap,
        loader_workers=args.loader_workers,
        budgets=args.budgets,
    )
    if args.workers > 1:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        from harness.eval_parallel import launch

        try:
            scores = launch(args.workers, settings, threads=args.threads)["scores"]
        except ChildFailedError as err:  # a worker process failed: its own error, first line
            raise EvalError(f"a worker failed: {_first_failure(err)}") from None
    else:
        import torch

        from harness.eval import evaluate

        if args.threads:
            torch.set_num_threads(args.threads)
        scores = evaluate(**settings).scores
    print_scores(scores)
    print(f"results in {out}")
    return 0


def _first_failure(err) -> str:
    failures = getattr(err, "failures", {}) or {}
    for failure in failures.values():
        message = getattr(failure, "message", None)
        if isinstance(message, dict):
            message = message.get("message", {}).get("message") or str(message)
        if message:
            return str(message).strip().splitlines()[-1]
    return str(err).strip().splitlines()[0]


def print_scores(scores) -> None:
    """Headline rows first, then per-category rows, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lmms-eval scores (category 'all' = lmms-eval's headline)")
    for column in ("benchmark", "metric", "category", "value", "n"):
        table.add_column(column, justify="right" if column in ("value", "n") else "left")
    from harness.eval_tasks import BENCHMARKS

    order = {name: i for i, name in enumerate(BENCHMARKS)}
    ordered = scores.assign(
        _bench=scores["benchmark"].map(order), _headline=scores["category"] != "all"
    ).sort_values(["_bench", "_headline"], kind="stable")
    for row in ordered.itertuples():
        table.add_row(row.benchmark, row.metric, row.category, f"{row.value:.3f}", str(row.n))
    Console().print(table)
