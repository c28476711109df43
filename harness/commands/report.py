"""`mage-harness report SWEEP_DIR [--out DIR] [--no-figures]`: build a sweep's report
(tables with seed intervals, seed-level and paired tests, the effects, knob importance,
figures) from its results store, checked first (`harness.store_check`);
`mage-harness compare SWEEP_DIR REFERENCE`: does a sweep reproduce a reference store's
numbers (`make demo` ends with it). The work is in reports.build and reports.compare; this
module only parses arguments."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="build tables and figures from a sweep's results store",
        description="Write SWEEP_DIR/report/ (or --out): index.md, a self-contained index.html, "
        "tables/ as Markdown, LaTeX and CSV, figures/ as PNG and PDF.",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a folder written by `sweep`")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="report folder (default: SWEEP_DIR/report)"
    )
    parser.add_argument(
        "--no-figures", action="store_true", help="tables only (faster; no matplotlib output)"
    )
    parser.set_defaults(func=run)

    compare = subparsers.add_parser(
        "compare",
        help="say whether a sweep's numbers equal a reference store's (and what differs)",
        description="Line up the headline numbers of the trials both stores hold, count exact "
        "matches, name the largest differences and what differs in how they were produced "
        "(world, assets' weights, threads, packages, CPU). Exit 0 when compared, whatever "
        "the outcome (1 when a store cannot be read).",
    )
    compare.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep to check")
    compare.add_argument("reference", metavar="REFERENCE", help="a stored sweep to compare with")
    compare.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from reports.compare import compare_stores
    from reports.load import StoreError

    try:
        result = compare_stores(args.sweep_dir, args.reference)
    except StoreError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 1
    print("\n".join(result.lines()))
    return 0


def run(args: argparse.Namespace) -> int:
    from harness.store_check import check_store
    from mage.io import check_output_dir
    from reports.build import REPORT_DIRNAME, build_report

    started = time.perf_counter()
    check_store(args.sweep_dir, "report")
    out = Path(args.out) if args.out is not None else Path(args.sweep_dir) / REPORT_DIRNAME
    # build_report refuses a folder of other files; the whole folder is replaced, so never
    # the current folder or one above it
    check_output_dir(out, "a report folder", lambda p: (p / "index.md").is_file(), replaces=True)
    # this process holds no threads: its figures can be drawn by forked processes
    workers = min(2, os.cpu_count() or 1)
    out = build_report(args.sweep_dir, out_dir=out, figures=not args.no_figures, workers=workers)
    print(f"report written to {out} in {time.perf_counter() - started:.0f} s")
    print(f"  open {out / 'index.html'} (self-contained) or {out / 'index.md'}")
    return 0
