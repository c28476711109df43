"""LLaVA-format training records as memory-mapped Arrow tables, parsed once and cached.

A source (`mage.config.DataSource`: a conversation JSON, its image root, optional ``kinds``)
is parsed and checked once (every record's shape, its assistant turn, that its image file
exists; errors name the file and the record) into a Hugging Face ``datasets`` table saved on
disk. Every later trial, rank and DataLoader worker opens that table memory-mapped instead of
parsing a JSON of hundreds of thousands of records again, and nothing keeps decoded images.

Tables live under a cache folder (`default_records_dir`: ``$MAGE_RECORDS_DIR``, else
``$MAGE_CACHE_DIR/records``, else ``~/.cache/mage-harness/records``; a sweep passes its own
``SWEEP_DIR/records`` so that every node of a cluster sees them, linked from and to the
user's cache), named by a hash of the file's path, size and modification time and of the
parsing options, and built under a file lock, so concurrent trials build one table.

Columns: ``id``, ``conversations`` (the turns as JSON text), ``image`` (absolute path or
None), ``caption`` (the record's own, or for caption data the first reply), ``kind``,
``num_words`` (words in the turns: LLaVA's length estimate for length grouping) and
``has_image``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mage.config import DataSource
from mage.template import IMAGE_TOKEN

FORMAT = 4  # bump when the columns or the checks change: older tables are rebuilt


class DataError(ValueError):
    """A training record or image is unusable; the message names the file and the record."""


def default_records_dir() -> Path:
    """``$MAGE_RECORDS_DIR``, else ``$MAGE_CACHE_DIR/records``, else
    ``~/.cache/mage-harness/records``."""
    from mage.io import cache_root

    env = os.environ.get("MAGE_RECORDS_DIR")
    return Path(env) if env else cache_root() / "records"


def table_key(source: DataSource, caption_from_reply: bool) -> str:
    """Names a source's table: the file (path, size, mtime) and how it is parsed."""
    path = Path(source.path).resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path} (a LLaVA-format conversation JSON)") from None
    image_root = str(Path(source.image_root).resolve()) if source.image_root else None
    data = [FORMAT, str(path), stat.st_size, stat.st_mtime_ns, image_root, source.kinds]
    data.append(caption_from_reply)
    return hashlib.sha1(json.dumps(data).encode()).hexdigest()[:16]


HUMAN_ROLES, ASSISTANT_ROLES = ("human", "user"), ("gpt", "assistant")


def alternation_error(turns: list) -> str | None:
    """Why a conversation is not human, assistant, human, ... (None if it is)."""
    for i, turn in enumerate(turns):
        role = turn.get("from") if isinstance(turn, dict) else None
        if role not in (HUMAN_ROLES if i % 2 == 0 else ASSISTANT_ROLES):
            got = f"'from': {role!r}" if isinstance(turn, dict) else type(turn).__name__
            return (
                f"conversations[{i}] is {got}; turns must alternate human ('human') and "
                "assistant ('gpt'), starting with the human turn"
            )
    return None


def image_tag_error(turns: list) -> str | None:
    """Why the ``<image>`` tags of a record with an image are misplaced (None if they are
    not): the image goes into a human turn once (or nowhere: it is put first); a tag in a
    reply would become a training target."""
    for i, turn in enumerate(turns):
        if turn.get("from") in ASSISTANT_ROLES and IMAGE_TOKEN in turn["value"]:
            return f"conversations[{i}] (a reply) holds {IMAGE_TOKEN}; the image tag goes in a human turn"
    count = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    if count > 1:
        return f"holds {IMAGE_TOKEN} {count} times; a record has one image, tagged once"
    return None


def _read_json(path: Path) -> list:
    try:
        raw = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return raw


def parse_records(source: DataSource, caption_from_reply: bool) -> dict[str, list]:
    """Check every record of a source and return the table's columns."""
    path = Path(source.path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (a LLaVA-format conversation JSON)")
    root = Path(source.image_root) if source.image_root else path.parent
    # one absolute root, joined per record: resolving each of hundreds of thousands of image
    # paths (a realpath per path) was most of the parse time
    root_abs = os.path.abspath(root)
    columns: dict[str, list] = {
        k: [] for k in ("id", "conversations", "image", "caption", "kind", "num_words")
    }
    for i, item in enumerate(_read_json(path)):
        rid = item.get("id", f"#{i}") if isinstance(item, dict) else f"#{i}"
        where = f"{path} record {rid!r}"
        if source.kinds is not None and isinstance(item, dict):
            if item.get("kind") not in source.kinds:
                continue
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            raise DataError(f"{where}: needs a 'conversations' list")
        turns = item["conversations"]
        bad = alternation_error(turns)
        if bad:
            raise DataError(f"{where}: {bad}")
        if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
            raise DataError(f"{where}: every turn needs a 'from' and a text 'value'")
        if not any(t.get("from") in ("gpt", "assistant") for t in turns):
            raise DataError(f"{where}: has no assistant ('gpt') turn to learn from")
        image = None
        if item.get("image"):
            if bad := image_tag_error(turns):
                raise DataError(f"{where}: {bad}")
            image = os.path.normpath(os.path.join(root_abs, item["image"]))
            if not os.path.isfile(image):
                raise DataError(f"{where}: image file not found: {image}")
        caption = item.get("caption")
        if caption is None and caption_from_reply and image is not None:
            caption = next(t["value"] for t in turns if t.get("from") in ("gpt", "assistant"))
        columns["id"].append(str(rid))
        columns["conversations"].append(json.dumps(turns))
        columns["image"].append(image)
        columns["caption"].append(caption)
        columns["kind"].append(item.get("kind"))
        columns["num_words"].append(sum(len(t["value"].split()) for t in turns))
    if not columns["id"]:
        wanted = f" of kinds {source.kinds}" if source.kinds is not None else ""
        raise DataError(f"{path}: no records{wanted}")
    columns["has_image"] = [image is not None for image in columns["image"]]
    return columns


def record_table(source: DataSource, caption_from_reply: bool, cache_dir: str | Path | None = None):
    """The source's records as a memory-mapped ``datasets.Dataset`` (built once, then reused).

    ``cache_dir`` (a sweep's own folder) may differ from the user's cache
    (`default_records_dir`): a table the user's cache already holds is linked from there
    instead of parsed again (a second sweep of the same data starts seconds sooner), and a
    table parsed here is linked there too. Both copies are written atomically."""
    import datasets
    from filelock import FileLock

    key = table_key(source, caption_from_reply)
    folder = Path(cache_dir or default_records_dir()) / key
    shared = default_records_dir() / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not _is_table(folder):
            if shared != folder and _is_table(shared):
                _link_tree(shared, folder)
            else:
                _build_table(source, caption_from_reply, folder)
                if shared != folder:
                    try:
                        _link_tree(folder, shared)
                    except OSError:  # a read-only user cache only costs a parse next time
                        pass
    return datasets.load_from_disk(str(folder))


def _is_table(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file()


def _build_table(source: DataSource, caption_from_reply: bool, folder: Path) -> None:
    import datasets

    from mage.io import atomic_path

    columns = parse_records(source, caption_from_reply)
    table = datasets.Dataset.from_dict(columns, features=_features())
    quiet = not datasets.utils.are_progress_bars_disabled()
    if quiet:  # one table per source: no progress bar per save
        datasets.utils.disable_progress_bars()
    try:
        with atomic_path(folder) as tmp:
            table.save_to_disk(str(tmp))
    finally:
        if quiet:
            datasets.utils.enable_progress_bars()


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of the table ``src``, its files hard-linked where the file
    system allows (a saved table's files are never written again), atomically."""
    import shutil

    from mage.io import atomic_path

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy)


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "id": text,
            "conversations": text,
            "image": text,
            "caption": text,
            "kind": text,
            "num_words": datasets.Value("int32"),
            "has_image": datasets.Value("bool"),
        }
    )
