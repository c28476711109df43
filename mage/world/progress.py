"""A rich progress display for the world's long steps (rendering, pretraining), or nothing."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_bar(enabled: bool):
    """Yield a `rich.progress.Progress` when ``enabled``, else None (quiet in tests)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    ) as bar:
        yield bar
