"""The frozen tower's outputs on an evaluation's batches, kept from one evaluation to the next.

Every trial of a sweep scores its checkpoint on the same benchmarks; when the variants share a
frozen vision tower (the synthetic world's, or CLIP in LLaVA's recipe), each evaluation would
decode the same images, preprocess them and run the same tower on them again. With
``vision.feature_cache`` set, an evaluation keeps the tower's outputs of each batch in
``<feature cache>/eval/<namespace>/<batch>.safetensors`` and the next evaluation reads them
instead (`batch_images`): 6.2 -> 4.9 s an evaluation of a world checkpoint, two at once.

The numbers are exactly those the tower gives: a batch is keyed by what decides its tower
input (the benchmark's content hash, the rows' documents in their order), and its file holds
the tower's output for that very batch, so no matmul runs on another batch shape. The
namespace hashes what decides the tower's output: its settings and weights
(`mage.feature_cache.tower_fingerprint`), its dtype, the image background, the torch thread
count and the versions of torch and lmms-eval (which builds the documents).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.eval_batches import BatchSource, Row, loader
from mage.io import atomic_path

FORMAT = 1


class TowerMemo:
    """Per-batch tower outputs of one model's tower on benchmarks of known content."""

    def __init__(self, folder: str | Path, model: Any, task_content: dict[str, str],
                 background: tuple[int, int, int]) -> None:  # fmt: skip
        from importlib.metadata import version

        from mage.feature_cache import tower_fingerprint

        tower = model.vision
        namespace = {
            "format": FORMAT,
            "tower": tower_fingerprint(tower),
            "dtype": str(tower.dtype),
            "background": list(background),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lmms_eval": version("lmms_eval"),
        }
        digest = hashlib.sha256(json.dumps(namespace, sort_keys=True).encode()).hexdigest()
        self.folder = Path(folder) / digest[:32]
        self.task_content = dict(task_content)  # lmms-eval task -> its data's content hash

    def key(self, rows: list[Row]) -> str | None:
        """The batch's name, or None when a row's task has no known content (not kept)."""
        if any(row.task not in self.task_content for row in rows):
            return None
        parts = [[r.task, self.task_content[r.task], r.split, int(r.doc_id)] for r in rows]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def holds(self, key: str) -> bool:
        return (self.folder / f"{key}.safetensors").is_file()

    def load(self, key: str) -> list | None:
        """The batch's images as `TowerOutput`s (None for a row without one), or None."""
        from mage.generation import TowerOutput

        path = self.folder / f"{key}.safetensors"
        try:
            saved = load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError):
            return None  # absent, or cut short: computed again and rewritten
        outputs = [TowerOutput(features) for features in saved["features"].unbind(0)]
        return [None if slot < 0 else outputs[slot] for slot in saved["slots"].tolist()]

    def store(self, key: str, images: list) -> None:
        """Keep a batch's `TowerOutput`s (rows that share an image share one output)."""
        unique = {id(im): im for im in images if im is not None}
        slot = {k: i for i, k in enumerate(unique)}
        features = (  # a batch of text-only rows is kept too: it needs no decoding either
            torch.stack([im.features for im in unique.values()]).cpu().contiguous()
            if unique
            else torch.zeros(0)
        )
        slots = torch.tensor([-1 if im is None else slot[id(im)] for im in images])
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{key}.safetensors") as tmp:
            save_file({"features": features, "slots": slots}, str(tmp))


def batch_images(
    batches: list[list[Row]],
    make_source: Callable[[list[list[Row]]], BatchSource],
    workers: int,
    memo: TowerMemo | None,
    model: Any,
) -> Iterator[tuple[int, list]]:
    """(batch index, its images) in order: from the memo where it holds the batch; else
    decoded by ``make_source``'s loader (``workers`` processes) and, with a memo, run
    through the tower here and kept."""
    from mage.generation import tower_outputs

    keys = [memo.key(rows) if memo is not None else None for rows in batches]
    # which batches to decode, decided up front (the loader prepares them ahead); the kept
    # ones are read one at a time (a whole benchmark of CLIP-L outputs would take GBs)
    kept = {k for k, key in enumerate(keys) if key is not None and memo.holds(key)}
    todo = [rows for k, rows in enumerate(batches) if k not in kept]
    fresh = iter(loader(make_source(todo), workers))
    for k, key in enumerate(keys):
        images = memo.load(key) if k in kept else None
        if images is None:  # not kept, or its file became unreadable: decode it here
            images = next(fresh).images if k not in kept else make_source([batches[k]])[0].images
            if key is not None:
                images = tower_outputs(model, images)
                memo.store(key, images)
        yield k, images
