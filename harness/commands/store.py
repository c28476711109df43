"""`mage-harness store rebuild SWEEP_DIR [--drop-missing]`: repair a sweep's results store by
rewriting its tables (and a missing or damaged manifest) from the trial records under
``trials/`` (`harness.store_check.rebuild_store`). Nothing is deleted: unreadable trial
folders (with ``--drop-missing``) and a damaged manifest are moved to ``damaged/``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    store = sub.add_parser("store", help="results store upkeep: `store rebuild SWEEP_DIR`")
    kinds = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    p = kinds.add_parser(
        "rebuild",
        help="rewrite a sweep's tables (and a damaged manifest) from trials/*/record.json",
        description="Rewrite results/trials/items/curves.parquet from the trial records, and "
        "manifest.json from spec.yaml when it is missing or damaged. Refused when it would "
        "drop trials the tables hold (their records are missing or unreadable) unless "
        "--drop-missing; then unreadable trial folders move to damaged/ and `mage-harness "
        "resume` runs those trials again (grid points, random draws and baselines; a dropped "
        "Optuna sample is not re-run: the search goes on without it).",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument(
        "--drop-missing",
        action="store_true",
        help="rebuild even if the tables then hold fewer trials (resume re-runs them)",
    )
    p.set_defaults(func=_rebuild)


def _rebuild(args) -> int:
    from harness.store_check import rebuild_store

    done = rebuild_store(args.sweep_dir, drop_missing=args.drop_missing)
    print(f"{args.sweep_dir}: tables rebuilt from {done['trials']} trial record(s)")
    for path in done["moved"]:
        print(f"  moved aside: {path}")
    if done.get("manifest"):
        print(f"  manifest.json {done['manifest']}")
    if done["dropped"]:
        print(f"  no longer in the tables: {', '.join(done['dropped'])} (resume runs them again)")
    return 0
