"""Safe writes. Results and checkpoints are written to a temporary sibling and renamed, so a
crash never leaves a half-written file where a reader expects a whole one; and a folder is
written only when it is new, empty, or of the kind the writing command makes itself, so the
project never replaces or mixes into files it did not write."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The project's cache folder: ``$MAGE_CACHE_DIR``, else ``~/.cache/mage-harness``."""
    return Path(os.environ.get("MAGE_CACHE_DIR") or Path.home() / ".cache" / "mage-harness")


class PathError(ValueError):
    """A path the project refuses to write: it has no name, or it is an existing folder (or
    file) the writing command did not make; the message names it and says how to proceed."""


def _named(path: str | Path) -> Path:
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise PathError(
            f"{str(path) or '(empty path)'}: a path without a name cannot be written atomically "
            "(it would replace a folder above the one meant); give a folder or file name, "
            "e.g. ./out"
        )
    return path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Works for files and for directories (a directory is swapped in with two renames).
    Refuses (`PathError`) a path without a name, such as ``.``, ``..`` or ``/``."""
    path = _named(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.")) / path.name
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def check_output_dir(
    path: str | Path, what: str, is_own: Callable[[Path], bool], replaces: bool = False
) -> bool:
    """May a command write ``path``, a folder of kind ``what`` (e.g. "a world folder")?

    Returns True when it already holds one (``is_own`` recognises it by its marker file),
    False when it is new or empty. Raises `PathError` for a file, for a non-empty folder that
    is not of this kind (the project did not write it), and, for a command that ``replaces``
    the whole folder, for the root, the home folder and the current folder or one above it
    (replacing those would take everything in them)."""
    path = Path(path)
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if replaces:
        special = (
            "the root folder"
            if resolved == Path(resolved.anchor)
            else "your home folder"
            if resolved == Path.home().resolve()
            else "the current folder"
            if resolved == cwd
            else "a folder above the current one"
            if cwd.is_relative_to(resolved)
            else None
        )
        if special:
            raise PathError(
                f"{path}: is {special}; {what} is replaced as a whole, so it is never written "
                "there; give a new folder, e.g. ./out"
            )
    if not path.exists():
        return False
    if not path.is_dir():
        raise PathError(f"{path}: exists and is a file, not {what}; give a folder path")
    if is_own(path):
        return True
    if any(path.iterdir()):
        raise PathError(
            f"{path}: exists and is not {what} (it holds files mage-harness did not write); "
            "nothing was written; give a new or empty folder"
        )
    return False
