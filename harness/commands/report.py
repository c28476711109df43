"""`mage-harness report SWEEP_DIR [--out DIR] [--no-figures]`: build a sweep's report
(tables with seed confidence intervals, paired tests, knob importance, figures) from its
results store. The work is reports.build.build_report; this module only parses arguments."""

from __future__ import annotations

import argparse
import sys


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


def run(args: argparse.Namespace) -> int:
    from reports.build import ReportError, build_report
    from reports.load import StoreError

    try:
        out = build_report(args.sweep_dir, out_dir=args.out, figures=not args.no_figures)
    except (StoreError, ReportError) as err:
        print(f"report: {err}", file=sys.stderr)
        return 1
    print(f"report written to {out}")
    print(f"  open {out / 'index.html'} (self-contained) or {out / 'index.md'}")
    return 0
