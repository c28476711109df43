"""How `harness.lmms_model.MageLMM` turns lmms-eval's requests into batches, and feeds them.

- Token budgets (`budget`): each benchmark has a harness default, `TASK_MAX_NEW_TOKENS`, never
  above the task's own ``max_new_tokens``; what each task's scoring reads decides it:

  ======== ============= ==============================================================
  task     task's own    what the official scoring reads, and the harness default
  ======== ============= ==============================================================
  MME      16            "yes"/"no", else the first 4 characters (``parse_pred_ans``):
                         16 (the task's own)
  MMBench  1024          the whole answer, for exactly one option letter or option text
                         (``can_infer``); the prompt asks for the letter: 32
  SEED     none          the first character of the stripped answer: 16
  ======== ============= ==============================================================

  ``budgets="task"`` uses the tasks' own settings instead (MMBench 1024; SEED none, so
  ``default_max_new_tokens``); ``max_new_tokens_cap`` bounds either. The budget and stop
  strings travel with each row: rows of one batch may differ.
- Reading window (`scored_enough`, harness budgets only): MME's scorer
  (``parse_pred_ans``) lower-cases, strips and drops dots, then reads the first 4
  characters (an answer that starts with "yes" or "no" is decided already); SEED's reads
  the first character of the stripped answer. A row of those tasks ends as soon as its
  answer is decided, so the score is the one the full answer would get and a rambling row
  (``Yes at the top right ...``) no longer holds its batch for 14 more decode steps. The
  stored answer is then that prefix. MMBench's ``can_infer`` reads the whole answer: no
  window.
- Order (`plan_batches`): lmms-eval's own ``Collator``, grouped by task (so that the time of
  each benchmark is measured apart) and sorted longest prompt first, as lmms-eval's models
  do (less padding; a batch that does not fit fails first), prompts of equal length in
  document order (a benchmark's questions of one image are adjacent documents: MME's pairs);
  answers return in request order.
- Images (`BatchSource`): each row's doc is fetched from the task's dataset, its images are
  converted with `mage.images.to_rgb` (on the doc, before the task's ``doc_to_visual`` picks
  and ``convert("RGB")``s them, which would drop transparency and saturate 16-bit photos),
  and, for a `MageModel`, preprocessed into the tower's input tensor. Rows of a batch whose
  images have equal pixels get one object, preprocessed once, which
  `mage.generation.image_tokens` encodes once (at batch 32 the world's MME encodes 500 images
  for 1,000 questions instead of 1,000) and `mage.prefill` reads as "these rows may share
  their prompt's prefix".
  `loader` runs this in DataLoader worker processes, so decoding overlaps generation.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.utils import Collator
from PIL import Image

from mage.images import WHITE, to_rgb

TASK_MAX_NEW_TOKENS = {"mme": 16, "mmbench": 32, "seedbench": 16}
TASK_YAMLS = {  # built-in task files, relative to the lmms_eval.tasks package
    "mme": "mme/mme.yaml",
    "mmbench_en_dev": "mmbench/mmbench_en_dev.yaml",
    "mmbench_en_dev_static": "mmbench/mmbench_en_dev_static.yaml",
    "seedbench": "seedbench/seedbench.yaml",
}

LOCAL_PREFIX = "mage_local_"  # task YAMLs of harness.eval_tasks.write_local_task_yamls


def benchmark_of(task: str) -> str | None:
    """``mme`` / ``mmbench`` / ``seedbench`` for an lmms-eval task name (local copies too)."""
    # exact names: other lmms-eval tasks that share a prefix (mmerealworld, seedbench_2_plus)
    # have their own answer formats and must not get these budgets and reading windows
    path = TASK_YAMLS.get(task.removeprefix(LOCAL_PREFIX))
    return path.split("/")[0] if path else None


def budget(
    task: str,
    gen_kwargs: dict,
    budgets: str,
    default: int,
    cap: int | None,
) -> int:
    """New-token budget of one request (see the module docstring)."""
    own = gen_kwargs.get("max_new_tokens")
    harness = TASK_MAX_NEW_TOKENS.get(benchmark_of(task) or "") if budgets == "harness" else None
    if harness is not None:
        value = min(int(own), harness) if own else harness
    else:
        value = int(own) if own else default
    return min(value, cap) if cap is not None else value


def _mme_read(answer: str) -> bool:
    """MME's ``parse_pred_ans`` decides from the first 4 characters of the normalised answer
    once it has them (shorter ones are compared whole). It has decided sooner once the
    answer starts with "yes" (exactly "yes", or "yes" within the first 4) or "no" (exactly
    "no", or "no" first in the first 4, where "yes" no longer fits): a "Yes" need not wait
    for its end-of-sequence token."""
    normal = answer.lower().strip().replace(".", "")
    return len(normal) >= 4 or normal.startswith(("yes", "no"))


def _seed_read(answer: str) -> bool:
    """SEED's ``seed_process_result`` keeps the first character of the stripped answer."""
    return bool(answer.strip())


SCORED_WINDOWS: dict[str, Callable[[str], bool]] = {"mme": _mme_read, "seedbench": _seed_read}


def scored_enough(task: str, budgets: str) -> Callable[[str], bool] | None:
    """The task's reading window as a predicate on the answer so far (None: read whole)."""
    return SCORED_WINDOWS.get(benchmark_of(task) or "") if budgets == "harness" else None


def stop_strings(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until")
    return [until] if isinstance(until, str) else [s for s in until or [] if s]


@dataclass
class Row:
    """One generate_until request, as the batches carry it."""

    index: int  # position in lmms-eval's request list
    context: str
    budget: int
    stops: list[str]
    doc_to_visual: Callable | None
    doc_id: int
    task: str
    split: str
    enough: Callable[[str], bool] | None = None  # the task's reading window (`scored_enough`)
    padding: bool = False  # lmms-eval's copy for equal shards across ranks: not a sample


def plan_batches(
    rows: list[Row], batch_size: int, prompt_length: Callable[[str], int]
) -> tuple[Collator, list[list[Row]]]:
    """lmms-eval's Collator: per task, longest prompt first, in batches of ``batch_size``."""
    collator = Collator(
        rows,
        # equal lengths in document order: a benchmark's questions of one image are adjacent
        # documents (MME's pairs), so they share a batch and its image is encoded once
        sort_fn=lambda row: (-prompt_length(row.context), row.doc_id, row.context),
        group_fn=lambda row: {"task": row.task},
        grouping=True,
    )
    return collator, [list(batch) for batch in collator.get_batched(n=batch_size)]


def rgb_doc(doc: dict, background: tuple[int, int, int] = WHITE) -> dict:
    """A copy of ``doc`` whose images (and lists of images) went through `to_rgb`."""
    out = dict(doc)
    for key, value in doc.items():
        if isinstance(value, Image.Image):
            out[key] = to_rgb(value, background)
        elif isinstance(value, list) and value and all(isinstance(v, Image.Image) for v in value):
            out[key] = [to_rgb(v, background) for v in value]
    return out


def doc_image(
    task_dict: dict, row: Any, background: tuple[int, int, int] = WHITE
) -> Image.Image | None:
    """The row's first visual (SEED video rows give frames: MAGE takes one image)."""
    doc = rgb_doc(task_dict[row.task][row.split][row.doc_id], background)
    visuals = row.doc_to_visual(doc) if callable(row.doc_to_visual) else None
    return visuals[0] if visuals else None


@dataclass
class Batch:
    index: int  # which planned batch (rows stay in the parent: doc_to_visual may not pickle)
    images: list  # PIL images, preprocessed tensors, or None


class BatchSource(torch.utils.data.Dataset):
    """Batch k with its images decoded, converted and (optionally) preprocessed."""

    def __init__(
        self,
        batches: list[list[Row]],
        task_dict: dict,
        preprocess: Callable[[Image.Image], Any] | None,
        background: tuple[int, int, int],
    ) -> None:
        self.batches, self.task_dict = batches, task_dict
        self.preprocess, self.background = preprocess, background

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Batch:
        images = []
        seen: dict[tuple, Any] = {}
        for row in self.batches[k]:
            image = doc_image(self.task_dict, row, self.background)
            key = _content_key(image)
            if key is not None and key in seen:
                # rows with equal pixels get one object: preprocessed once, encoded once
                images.append(seen[key])
                continue
            if image is not None and self.preprocess is not None:
                image = self.preprocess(image)
            if key is not None:
                seen[key] = image
            images.append(image)
        in_worker = torch.utils.data.get_worker_info() is not None
        return Batch(k, _one_storage(images) if in_worker else images)


def _content_key(image: Any) -> tuple | None:
    """Equal for images of equal mode, size and pixels (a digest: a batch holds few); None
    for what is neither a PIL image nor a tensor."""
    if isinstance(image, Image.Image):
        head, data = ("pil", image.mode, image.size), image.tobytes()
    elif isinstance(image, torch.Tensor):
        head = ("tensor", tuple(image.shape), str(image.dtype))
        data = image.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    else:
        return None
    return (*head, hashlib.blake2b(data, digest_size=16).digest())


def _one_storage(images: list) -> list:
    """The batch's image tensors as views of one stacked tensor, so that a worker hands the
    batch over as one shared-memory block (one file descriptor to receive) instead of one per
    image, which cost about 0.4 ms per image in the receiving process. A tensor that several
    rows share stays one object (one view), so generation still sees it as one image."""
    unique = {id(im): im for im in images if isinstance(im, torch.Tensor)}
    if len(unique) < 2 or len({tuple(t.shape) for t in unique.values()}) != 1:
        return images
    views = dict(zip(unique, torch.stack(list(unique.values())).unbind(0)))
    return [views[id(im)] if isinstance(im, torch.Tensor) else im for im in images]


def loader(source: BatchSource, workers: int) -> Iterable[Batch]:
    """Batches in order; prepared by ``workers`` forked processes (0: in this process).

    Fork keeps the task datasets and ``doc_to_visual`` functions (loaded by lmms-eval from
    task files, not importable by name) without pickling; where fork is unavailable the
    batches are prepared inline."""
    if workers < 1 or len(source) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return (source[k] for k in range(len(source)))
    return torch.utils.data.DataLoader(
        source,
        batch_size=None,
        num_workers=min(workers, len(source)),
        multiprocessing_context="fork",
        collate_fn=_as_is,
    )


def _as_is(batch: Batch) -> Batch:
    return batch
