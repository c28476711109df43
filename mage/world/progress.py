"""How the world's long steps (rendering, pretraining) show their progress.

`progress_bar(enabled)` yields a display with rich's ``add_task(description, total)`` /
``advance(task)`` interface and a ``line(text)`` for a finished phase, or None when disabled:

- on a terminal (outside CI), a rich progress bar;
- otherwise (a cluster job's log, ``make demo > log``), one line per finished task, with its
  duration, and every ``line`` printed as is: a log shows each finished step instead of silence
  (or of a bar's control characters).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """A live bar only on a terminal and outside CI."""
    stream = stream or sys.stdout
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return not ci and stream.isatty()


class LineProgress:
    """rich.progress.Progress's add_task / advance, printed as one line per finished task."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._tasks: dict[int, dict] = {}

    def add_task(self, description: str, total: int) -> int:
        task = len(self._tasks)
        self._tasks[task] = {"what": description, "total": total, "done": 0, "t0": time.time()}
        return task

    def advance(self, task: int, advance: int = 1) -> None:
        state = self._tasks[task]
        state["done"] += advance
        if state["done"] == state["total"]:
            seconds = time.time() - state["t0"]
            self.line(f"{state['what']}: {state['total']}/{state['total']} done in {seconds:.0f} s")

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class _RichProgress:
    """rich's Progress with the same ``line``."""

    def __init__(self, bar):
        self._bar = bar

    def add_task(self, description: str, total: int):
        return self._bar.add_task(description, total=total)

    def advance(self, task, advance: int = 1) -> None:
        self._bar.advance(task, advance)

    def line(self, text: str) -> None:
        self._bar.console.print(text, markup=False, highlight=False)


@contextmanager
def progress_bar(enabled: bool, stream: TextIO | None = None):
    """A rich bar on a terminal, `LineProgress` elsewhere, or None when not ``enabled``."""
    if not enabled:
        yield None
        return
    if not interactive(stream):
        yield LineProgress(stream)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    ) as bar:
        yield _RichProgress(bar)
