"""`mage-harness data benchmarks DIR`: save MME, MMBench (en, dev) and SEED-Bench from the
Hugging Face Hub into DIR at a resolved revision (`harness.benchmarks.save_benchmarks`), for
``mage-harness eval --data DIR`` and sweeps on machines without the Hub."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add ``benchmarks`` under ``mage-harness data``."""
    parser = data_sub.add_parser(
        "benchmarks",
        help="save MME / MMBench / SEED-Bench from the Hub (pinned revision)",
        description="Download the official MME (test), MMBench (en, dev) and SEED-Bench (test) "
        "splits at one commit each, check their row counts, and save them as DIR/mme, "
        "DIR/mmbench, DIR/seedbench with DIR/benchmarks.json recording id, revision and rows. "
        "Needs the Hugging Face Hub (set HF_TOKEN); evaluations then run offline with --data DIR.",
    )
    parser.add_argument("out", type=Path, help="folder to save into")
    parser.add_argument(
        "--tasks", default="mme,mmbench,seedbench", help="comma-separated benchmarks"
    )
    parser.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="BENCH=REV",
        help="pin a dataset commit or tag for one benchmark (repeatable); default: the "
        "pinned revision, else the current commit of main, resolved once and recorded",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.benchmarks import BenchmarkDataError, save_benchmarks
    from harness.eval_tasks import EvalError, parse_tasks

    try:
        benchmarks = parse_tasks(args.tasks)
        revisions = {}
        for item in args.revision:
            bench, sep, rev = item.partition("=")
            if not sep or not rev:
                raise EvalError(f"--revision {item!r}: expected BENCH=REV (e.g. mme=main)")
            revisions[parse_tasks(bench)[0]] = rev
        save_benchmarks(args.out, benchmarks, revisions=revisions)
    except (BenchmarkDataError, EvalError) as err:
        print(f"mage-harness data benchmarks: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # the Hub: network, auth, a missing revision
        print(
            f"mage-harness data benchmarks: error: {type(err).__name__}: {err} (this command "
            "needs the Hugging Face Hub; set HF_TOKEN)",
            file=sys.stderr,
        )
        return 1
    print(f"benchmarks in {args.out} (see {args.out / 'benchmarks.json'})")
    return 0
