"""Benchmark data as a user has it: MME, MMBench (en, dev) and SEED-Bench saved to disk,
pinned to a dataset revision, and checked for completeness before anything is scored.

- `save_benchmarks(out_dir)` (``mage-harness data benchmarks DIR``) downloads each split from
  the Hugging Face Hub at one resolved commit (a pinned ``revision``, or the current one of
  ``main``, resolved once), refuses a download whose row count is not the official one, and
  writes ``DIR/<benchmark>/`` (``DatasetDict.save_to_disk``, the folders ``harness.eval_tasks``
  reads) plus ``DIR/benchmarks.json``: dataset id, config, split, resolved revision, rows.
  It needs the Hub; `HubSource` is the only part that touches it (tests pass a local one).
- `check_folder(data_dir, benchmark, limit)` is what every evaluation runs on a data folder:
  the split and the official columns are there, and the split has the rows it should have,
  or the evaluation is refused with the split and the counts, unless ``limit`` is given
  (scoring part of a benchmark on purpose). Expected rows: those recorded in
  ``benchmarks.json``; for a synthetic world's ``bench/`` folder, the world's ``world.json``;
  otherwise the official counts (`OFFICIAL`).
- `content_hash(folder)` hashes a folder's data files once: the digest is cached (in this
  process and under ``$MAGE_CACHE_DIR/content-hashes``, default
  ``~/.cache/mage-harness``) by the folder's path and its files' (name, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mage.io import atomic_path, atomic_write_json, cache_root

MANIFEST = "benchmarks.json"


@dataclass(frozen=True)
class Official:
    """An official benchmark split as lmms-eval's task reads it."""

    dataset_id: str
    config: str | None
    split: str
    rows: int
    columns: tuple[str, ...]  # the columns lmms-eval's task code reads
    revision: str | None = None  # a pinned commit of the dataset repository (None: resolve main)
    image_rows: int | None = None  # rows with data_type == "image" (SEED-Bench)


OFFICIAL: dict[str, Official] = {
    # MME: 1,187 images x 2 questions; lmms-eval's aggregation needs both of each image.
    "mme": Official(
        "lmms-lab-encoder/MME", None, "test", 2374,
        tuple("question_id image question answer category".split()),
    ),
    # MMBench en dev: 1,164 questions plus their option-shifted copies (circular evaluation).
    "mmbench": Official(
        "lmms-lab-encoder/MMBench", "en", "dev", 4329,
        tuple("index question hint A B C D answer category image source L2-category split".split()),
    ),
    # SEED-Bench v1 test: 17,990 rows, of which 14,233 image questions (the published
    # SEED-image count) and 3,757 video questions.
    "seedbench": Official(
        "lmms-lab-encoder/SEED-Bench", None, "test", 17990,
        tuple(
            "image question choice_a choice_b choice_c choice_d answer data_type question_id "
            "question_type_id".split()
        ),
        image_rows=14233,
    ),
}  # fmt: skip


class BenchmarkDataError(RuntimeError):
    """A benchmark folder is missing, partial or not in the official schema."""


# ---- the data folder's manifest -----------------------------------------------------------
def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}: not valid JSON ({err})") from None


def write_manifest(data_dir: str | Path, entries: dict[str, dict]) -> dict[str, Any]:
    """Record (or update) what each benchmark folder holds: id, revision, split, rows."""
    manifest = read_manifest(data_dir)
    manifest.update(entries)
    atomic_write_json(Path(data_dir) / MANIFEST, manifest)
    return manifest


def expected_rows(data_dir: Path, benchmark: str) -> tuple[int, int | None, str]:
    """(rows, image rows or None, where that expectation comes from)."""
    entry = read_manifest(data_dir).get(benchmark)
    if isinstance(entry, dict) and "rows" in entry:
        return int(entry["rows"]), entry.get("image_rows"), f"{data_dir / MANIFEST}"
    world = data_dir.parent / "world.json"
    if world.is_file():
        counts = json.loads(world.read_text()).get("counts", {})
        if f"{benchmark}_rows" in counts:
            return int(counts[f"{benchmark}_rows"]), None, f"the synthetic world's {world}"
    official = OFFICIAL[benchmark]
    return official.rows, official.image_rows, f"the official {official.dataset_id} split"


# ---- checks before an evaluation ----------------------------------------------------------
def check_folder(data_dir: str | Path, benchmark: str, limit: int | None) -> dict[str, Any]:
    """Validate ``data_dir/<benchmark>``; return its record (without the content hash)."""
    import datasets

    data_dir = Path(data_dir).resolve()
    official = OFFICIAL[benchmark]
    folder = data_dir / benchmark
    if not (folder / "dataset_dict.json").is_file():
        raise BenchmarkDataError(
            f"{folder}: no DatasetDict here (dataset_dict.json missing); save the benchmarks "
            f"with `mage-harness data benchmarks {data_dir}` (or "
            f"datasets.load_dataset({official.dataset_id!r}).save_to_disk(...)), or generate a "
            "world with `mage-harness data synth`"
        )
    dataset = datasets.load_from_disk(str(folder))
    split = official.split
    if split not in dataset:
        raise BenchmarkDataError(f"{folder}: split {split!r} missing (has {sorted(dataset)})")
    table = dataset[split]
    missing = [c for c in official.columns if c not in table.column_names]
    if missing:
        raise BenchmarkDataError(f"{folder}: split {split!r} lacks official columns {missing}")
    rows, image_rows, source = expected_rows(data_dir, benchmark)
    have_images = sum(t == "image" for t in table["data_type"]) if image_rows is not None else None
    if limit is None and (table.num_rows != rows or have_images != image_rows):
        what = f"{table.num_rows:,} rows, expected {rows:,}"
        if image_rows is not None:
            what += f" ({have_images:,} image rows, expected {image_rows:,})"
        raise BenchmarkDataError(
            f"{folder}: split {split!r} has {what} (as in {source}): a partial folder? Save it "
            f"again (`mage-harness data benchmarks {data_dir}`), or pass a limit to score part "
            "of it on purpose"
        )
    if benchmark == "mme" and limit is not None:
        from collections import Counter

        counts = Counter(table["question_id"][:limit])
        broken = sorted(q for q, n in counts.items() if n != 2)
        if broken:
            raise BenchmarkDataError(
                f"limit={limit} splits MME question pairs ({broken[:3]}...): lmms-eval scores "
                "both questions of an image together; choose a limit that keeps pairs"
            )
    entry = read_manifest(data_dir).get(benchmark) or {}
    return {
        "local_path": str(folder),
        "split": split,
        "rows": table.num_rows,
        "expected_rows": rows,
        "expected_from": source,
        "official_id": official.dataset_id,
        "revision": entry.get("revision"),
    }


# The dataset column whose values name the categories of a per-category score
# (`harness.eval_tables`): (benchmark, metric), or (benchmark, None) for every metric.
CATEGORY_COLUMNS: dict[tuple[str, str | None], str] = {
    ("mme", None): "category",
    ("mmbench", "acc"): "category",
    ("mmbench", "l2_acc"): "L2-category",
    ("seedbench", None): "question_type_id",
}


def categories(data_dir: str | Path, benchmark: str, metric: str) -> set[str] | None:
    """The category names a per-category ``metric`` of ``data_dir/<benchmark>`` can have, as
    the results table writes them; None when the folder or its column is not there."""
    import datasets

    column = CATEGORY_COLUMNS.get((benchmark, metric)) or CATEGORY_COLUMNS.get((benchmark, None))
    folder = Path(data_dir) / benchmark
    if column is None or not (folder / "dataset_dict.json").is_file():
        return None
    try:
        dataset = datasets.load_from_disk(str(folder))
        split = OFFICIAL[benchmark].split
        if split not in dataset or column not in dataset[split].column_names:
            return None
        return {str(value) for value in dataset[split].unique(column)}
    except Exception as err:  # a damaged folder: say which, in one line
        raise BenchmarkDataError(
            f"{folder}: cannot read its {column!r} column ({type(err).__name__}: {err}); save "
            "the benchmark again"
        ) from None


# ---- content hash, once per folder --------------------------------------------------------
_HASHES: dict[str, str] = {}


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "state.json")
    return [(str(p.relative_to(folder)), *_size_mtime(p)) for p in files]


def _size_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def hash_files(folder: Path, names: list[str]) -> str:
    """sha256 over each data file's name and bytes (state.json, whose fingerprint varies
    between saves of the same data, is left out)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def content_hash(folder: str | Path) -> str:
    """The folder's content digest, computed once per (path, files' names, sizes, mtimes)."""
    folder = Path(folder).resolve()
    listing = _listing(folder)
    key = hashlib.sha256(json.dumps([str(folder), listing]).encode()).hexdigest()
    if key in _HASHES:
        return _HASHES[key]
    cached = cache_root() / "content-hashes" / f"{key}.json"
    try:
        digest = json.loads(cached.read_text())["content_sha256"]
    except (OSError, ValueError, KeyError):
        digest = hash_files(folder, [name for name, _, _ in listing])
        try:
            atomic_write_json(cached, {"folder": str(folder), "content_sha256": digest})
        except OSError:  # a read-only cache only costs a re-hash next time
            pass
    _HASHES[key] = digest
    return digest


# ---- saving from the Hub ------------------------------------------------------------------
class HubSource:
    """The Hugging Face Hub: resolve a revision to its commit, load a split at it."""

    def resolve(self, dataset_id: str, revision: str | None) -> str:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset_id, revision=revision or "main").sha

    def load(self, dataset_id: str, config: str | None, split: str, revision: str) -> Any:
        import datasets

        return datasets.load_dataset(dataset_id, config, split=split, revision=revision)


def save_benchmarks(
    out_dir: str | Path,
    benchmarks: tuple[str, ...] = tuple(OFFICIAL),
    hub: Any = None,
    revisions: dict[str, str] | None = None,
    expected: dict[str, int] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Save each benchmark's official split into ``out_dir/<benchmark>/`` at one revision.

    ``revisions`` pins commits ({benchmark: sha or tag}); ``expected`` overrides the official
    row counts (for test hubs). A folder already saved at the same revision is kept; a
    folder this command did not write is never replaced."""
    from datasets import DatasetDict

    hub = hub or HubSource()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)
    saved = {}
    for bench in benchmarks:
        official = OFFICIAL[bench]
        wanted = (revisions or {}).get(bench) or official.revision
        sha = hub.resolve(official.dataset_id, wanted)
        folder, entry = out_dir / bench, manifest.get(bench) or {}
        if folder.exists() and not entry:
            raise BenchmarkDataError(
                f"{folder} exists but {out_dir / MANIFEST} does not record it: not written by "
                "`mage-harness data benchmarks`, so it is left alone; move it or pick another DIR"
            )
        if entry.get("revision") == sha and (folder / "dataset_dict.json").is_file():
            log(f"{bench}: {official.dataset_id}@{sha[:12]} already saved in {folder}")
            saved[bench] = entry
            continue
        log(f"{bench}: loading {official.dataset_id} ({official.split}) at {sha[:12]}")
        table = hub.load(official.dataset_id, official.config, official.split, sha)
        rows = (expected or {}).get(bench, official.rows)
        if table.num_rows != rows:
            raise BenchmarkDataError(
                f"{official.dataset_id}@{sha[:12]} split {official.split!r} has "
                f"{table.num_rows:,} rows, expected {rows:,}: not saved (an incomplete download "
                "or a changed dataset; pin a revision with --revision)"
            )
        missing = [c for c in official.columns if c not in table.column_names]
        if missing:
            raise BenchmarkDataError(f"{official.dataset_id}@{sha[:12]}: no columns {missing}")
        with atomic_path(folder) as tmp:
            DatasetDict({official.split: table}).save_to_disk(str(tmp))
        image_rows = sum(t == "image" for t in table["data_type"]) if official.image_rows else None
        saved[bench] = {
            "dataset_id": official.dataset_id,
            "config": official.config,
            "split": official.split,
            "revision": sha,
            "requested_revision": wanted or "main",
            "rows": table.num_rows,
            "image_rows": image_rows,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_manifest(out_dir, {bench: saved[bench]})
        log(f"{bench}: {table.num_rows:,} rows saved in {folder}")
    return saved
