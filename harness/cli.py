"""The `mage-harness` command line. Thin: each command lives in its own module that exposes
``register(subparsers)``; this file only lists them and dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys

# module path -> the commands it registers; imported lazily so `--help` stays fast.
COMMAND_MODULES = [
    "harness.commands.data",  # data synth, prepare
    "harness.commands.train",  # train
    "harness.commands.eval",  # eval
    "harness.commands.sweep",  # sweep, resume, status
    "harness.commands.report",  # report
    "harness.commands.bench",  # bench train|eval
    "harness.commands.chat",  # chat
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mage-harness",
        description="Train, sweep and score MAGE connector ablations (IAN depth, MSE weight, "
        "vision encoder, ...) on MME, MMBench and SEED through lmms-eval.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
