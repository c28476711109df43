"""Up-front checks of LLaVA-format training data, so that a bad file or image fails before a
stage starts instead of when it is first sampled, possibly hours in.

`read_source` parses one data source with `mage.records.parse_records` (every record
checked: conversations alternate starting with the human turn, image files exist; a file that
is not UTF-8 JSON is the file's fault) into `CheckedRecord`s. `unreadable_images` then opens
every image once,
in parallel threads (PIL decodes outside the GIL), and returns the ones that cannot be
decoded, by record. ``mage-harness data check FILE`` and the sweep's dry run use both.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mage.config import DataSource
from mage.images import truncated_images_refused
from mage.records import DataError, parse_records


@dataclass(frozen=True)
class CheckedRecord:
    id: str
    image_path: Path | None
    source: str


def read_source(source: DataSource, field: str | None = None) -> list[CheckedRecord]:
    """Every record of ``source``, checked; `DataError` naming the file (and ``field``, the
    config field the source comes from, e.g. ``stage1.data[0]``)."""
    path = Path(source.path)
    at = f"{field}." if field else ""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise DataError(f"{at}path: data file {what}: {path} (a LLaVA-format JSON list)")
    if source.image_root and not Path(source.image_root).is_dir():
        raise DataError(f"{at}image_root: image folder not found: {source.image_root}")
    columns = parse_records(source, caption_from_reply=False)
    return [
        CheckedRecord(rid, Path(image) if image else None, str(path))
        for rid, image in zip(columns["id"], columns["image"], strict=True)
    ]


def _open(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except Exception as err:  # PIL raises many types for a damaged or foreign file
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def unreadable_images(records: list[CheckedRecord], workers: int | None = None) -> list[str]:
    """'<file> record <id>: cannot read image <path>: <why>' for each image that does not
    decode (a truncated one included, whatever else in the process set); each distinct image
    is opened once."""
    paths = sorted({r.image_path for r in records if r.image_path is not None})
    workers = workers or min(16, os.cpu_count() or 1)
    with truncated_images_refused(), ThreadPoolExecutor(max_workers=workers) as pool:
        errors = dict(zip(paths, pool.map(_open, paths), strict=True))
    return [
        f"{r.source} record {r.id!r}: cannot read image {r.image_path}: {errors[r.image_path]}"
        for r in records
        if r.image_path is not None and errors.get(r.image_path)
    ]
