"""The `mage-harness` command line. Thin: each command lives in its own module that exposes
``register(subparsers)``; this file only lists them, dispatches, and is the one error
boundary.

The boundary: an error of the project's own (an exception whose class is defined in
``mage``, ``harness`` or ``reports``: config, spec, data, world, assets, checkpoint, store,
evaluation, cluster, path) is printed as one line, ``mage-harness COMMAND: error: ...``, and
the exit code is 2, without a traceback; ``--debug`` or ``MAGE_HARNESS_DEBUG=1`` shows it.
Anything else is a bug and keeps its traceback. Library errors from reading a user's file
are turned into project errors where the file is read, so that the line names the file.
SIGTERM ends a command as Ctrl-C does (exit 130 / 143), running its clean-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

# module path -> the commands it registers; imported lazily so `--help` stays fast.
COMMAND_MODULES = [
    "harness.commands.data",  # data synth|check|tools|benchmarks, prepare
    "harness.commands.train",  # train, params
    "harness.commands.eval",  # eval
    "harness.commands.sweep",  # sweep, resume, status
    "harness.commands.store",  # store rebuild
    "harness.commands.report",  # report, compare
    "harness.commands.bench",  # bench train|records|eval|generate
    "harness.commands.chat",  # chat
]
PROJECT_PACKAGES = ("mage", "harness", "reports")
DEBUG_ENV = "MAGE_HARNESS_DEBUG"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that its `finally` clean-up runs."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mage-harness",
        description="Train, sweep and score MAGE connector ablations (IAN depth, MSE weight, "
        "vision encoder, ...) on MME, MMBench and SEED through lmms-eval.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def is_project_error(err: BaseException) -> bool:
    """An exception whose class (or a base class) is defined in the project's packages."""
    return any(
        cls.__module__.split(".")[0] in PROJECT_PACKAGES
        for cls in type(err).__mro__
        if cls not in (BaseException, Exception)
    )


def one_line(message: str) -> str:
    """A message on one line: 'head:\\n  a\\n  b' -> 'head: a; b'."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head, rest = lines[0], lines[1:]
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    name = " ".join(
        str(v)
        for v in (
            args.command,
            *(getattr(args, k, None) for k in ("data_command", "store_command", "bench_kind")),
        )
        if v is not None
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except Terminated:
        print(f"mage-harness {name}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mage-harness {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not is_project_error(err):
            raise
        print(f"mage-harness {name}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
