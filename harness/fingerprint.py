"""Content fingerprints of training and benchmark data, for the stage and evaluation cache keys.

Data files (a stage's LLaVA-format JSON, a benchmark's Arrow files, the tool-call records) are
fingerprinted by their bytes (SHA-256): one changed byte changes the key, while moving, copying
or touching an unchanged file does not. Hashing a 1 GB JSON takes seconds, so each digest is
cached on disk (``$MAGE_CACHE_DIR/fingerprints``, default ``~/.cache/mage-harness``) under the
file's identity: its resolved path, size, mtime (ns) and inode. A file is read once per
version; a trial that finds its files unchanged only stats them.

Images are fingerprinted by what the records name, not by their bytes: each image's path
relative to its root, its size and its mtime (ns). Why: a LLaVA stage reads ~558k images (tens
of GB), and hashing them would cost a full read per new data set and one cache entry per image,
while a stat costs microseconds; any ordinary edit of an image (re-encoded, replaced, copied
without keeping times) changes its size or mtime. What this misses, a same-size rewrite that
restores the old mtime, does not happen by accident; a copied image folder (new mtimes) trains
again, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mage.config import DataSource, MageConfig
from mage.io import atomic_write_text, cache_root

STAGES = ("stage1", "stage2")
_memo: dict[tuple, str] = {}  # file identity -> digest, for this process


def cache_dir() -> Path:
    """``$MAGE_CACHE_DIR/fingerprints``, else ``~/.cache/mage-harness/fingerprints``."""
    return cache_root() / "fingerprints"


def _sha1(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, computed once per (path, size, mtime, inode)."""
    real = Path(path).resolve()
    st = real.stat()
    identity = (str(real), st.st_size, st.st_mtime_ns, st.st_ino)
    if identity in _memo:
        return _memo[identity]
    entry = cache_dir() / f"{_sha1(identity)}.sha256"
    digest = entry.read_text().strip() if entry.is_file() else ""
    if len(digest) != 64:
        sha = hashlib.sha256()
        with open(real, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
        try:
            atomic_write_text(entry, digest + "\n")
        except OSError:  # a read-only cache only costs a re-hash next time
            pass
    _memo[identity] = digest
    return digest


def folder_digest(folder: str | Path, skip: tuple[str, ...] = ("state.json",)) -> str:
    """Digest over every file's relative path and content digest (``skip``: names left out;
    a ``datasets`` folder's state.json holds a fingerprint that varies between saves)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip)
    return _sha1([[p.relative_to(folder).as_posix(), file_digest(p)] for p in files])


def source_fingerprint(
    source: DataSource, caption_from_reply: bool = False, records_dir: str | Path | None = None
) -> dict[str, str]:
    """A data source's JSON by content and the images its (kept) records name by path,
    size and mtime. Reads the source's parsed record table (`mage.records`, the one training
    reads), so a JSON is parsed once; raises `mage.data.DataError` for a missing file or
    image, as training would."""
    from mage.records import record_table

    root = Path(source.image_root) if source.image_root else Path(source.path).parent
    prefix = os.path.join(os.path.abspath(root), "")  # the table's paths start with it
    images = set()
    table = record_table(source, caption_from_reply, records_dir)
    for path in set(table.with_format("arrow")["image"].to_pylist()) - {None}:
        st = os.stat(path)
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
        images.add((Path(rel).as_posix(), st.st_size, st.st_mtime_ns))
    return {"file": file_digest(source.path), "images": _sha1(sorted(images))}


def stage_data_keys(
    config: MageConfig, base: str = "", records_dir: str | Path | None = None
) -> dict[str, str]:
    """Per stage, a key of the data it trains on (its sources' fingerprints plus ``base``:
    e.g. the world's assets), so stage 1 stays shared when only stage 2's data differ."""
    keys = {}
    for stage in STAGES:
        sources = [
            source_fingerprint(s, stage == "stage1", records_dir)
            for s in config.data_sources(stage)
        ]
        keys[stage] = _sha1({"base": base, "sources": sources})[:16]
    return keys


def eval_data_key(eval_dir: str | None, tasks: list[str], tools_json: str | None) -> str:
    """Key of the benchmark data an evaluation reads: each local benchmark folder and, with
    the ``tools`` task, the tool-call records, by content; ``hub`` when the benchmarks come
    from the Hugging Face Hub (the evaluation record then holds their resolved revisions)."""
    parts: dict[str, Any] = {}
    for task in tasks:
        if task == "tools":
            tools = Path(tools_json) if tools_json else None
            parts[task] = file_digest(tools) if tools and tools.is_file() else "missing"
        elif eval_dir is None:
            parts[task] = "hub"
        else:
            folder = Path(eval_dir) / task
            parts[task] = folder_digest(folder) if folder.is_dir() else "missing"
    return _sha1(parts)[:16]
