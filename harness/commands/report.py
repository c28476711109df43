"""`mage-harness report SWEEP_DIR [--out DIR] [--no-figures]`: build a sweep's report
(tables with seed intervals, seed-level and paired tests, the effects, knob importance,
figures) from its results store; `mage-harness compare SWEEP_DIR REFERENCE`: does a sweep
reproduce a reference store's numbers (`make demo` ends with it). The work is in
reports.build and reports.compare; this module only parses arguments."""

from __future__ import annotations

import argparse
import sys
import time


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
    from reports.build import ReportError, build_report
    from reports.load import StoreError

    started = time.perf_counter()
    try:
        out = build_report(args.sweep_dir, out_dir=args.out, figures=not args.no_figures)
    except (StoreError, ReportError) as err:
        print(f"report: {err}", file=sys.stderr)
        return 1
    print(f"report written to {out} in {time.perf_counter() - started:.0f} s")
    print(f"  open {out / 'index.html'} (self-contained) or {out / 'index.md'}")
    return 0
