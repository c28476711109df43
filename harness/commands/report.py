"""`mage-harness report SWEEP_DIR [--out DIR] [--no-figures]`: build a sweep's report
(tables with seed confidence intervals, paired tests, knob importance, figures) from its
results store. The store is checked first (`harness.store_check`); the work is
reports.build.build_report; this module only parses arguments."""

from __future__ import annotations

import argparse
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


def run(args: argparse.Namespace) -> int:
    from harness.store_check import check_store
    from mage.io import check_output_dir
    from reports.build import REPORT_DIRNAME, build_report

    check_store(args.sweep_dir, "report")
    out = Path(args.out) if args.out is not None else Path(args.sweep_dir) / REPORT_DIRNAME
    # build_report refuses a folder of other files; the whole folder is replaced, so never
    # the current folder or one above it
    check_output_dir(out, "a report folder", lambda p: (p / "index.md").is_file(), replaces=True)
    out = build_report(args.sweep_dir, out_dir=out, figures=not args.no_figures)
    print(f"report written to {out}")
    print(f"  open {out / 'index.html'} (self-contained) or {out / 'index.md'}")
    return 0
