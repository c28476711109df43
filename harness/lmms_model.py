"""MAGE as an lmms-eval model, so that MME, MMBench and SEED are scored by lmms-eval's own code.

`MageLMM` adapts a `mage.model.MageModel` (or any object with the same ``generate`` /
``loglikelihood`` methods) to `lmms_eval.api.model.lmms`:

- from the ``lmms-eval`` command line: ``lmms-eval eval --model mage --model_args
  checkpoint=DIR`` (the ``lmms_eval.models`` entry point ``mage`` in pyproject.toml points at
  `manifest`);
- from Python, wrapping the model a trial has just trained: ``MageLMM.wrap(model,
  batch_size=8)``, then ``lmms_eval.evaluator.simple_evaluate(model=lmm, ...)``.

On local data the command line needs task YAMLs under ``--include_path``:
`harness.eval_tasks.write_local_task_yamls` writes ones that include the built-in tasks and
swap only the data (``--tasks mage_local_mme,mage_local_mmbench_en_dev_static,mage_local_seedbench``).

lmms-eval hands the model every request of a type at once; batching is done here
(`harness.eval_batches`): requests are ordered by lmms-eval's ``Collator`` (per task, longest
prompt first), images are decoded, converted (`mage.images`) and preprocessed by loader
workers, each row carries its own token budget and stop strings, and answers come back in
request order. The context lmms-eval builds has no ``<image>`` token: the MAGE model inserts
its own and applies its own conversation template.

Data parallel: lmms-eval shards documents by the model's ``rank`` / ``world_size`` and
gathers results on rank 0 (`harness.eval.evaluate` inside a process group; ``torchrun
--nproc_per_node N -m lmms_eval --model mage ...`` from the shell). ``timings`` holds each
task's samples, model time and wall time on this rank.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from harness.eval_batches import (
    SCORED_WINDOWS,
    TASK_MAX_NEW_TOKENS,
    BatchSource,
    Row,
    budget,
    doc_image,
    plan_batches,
    scored_enough,
    stop_strings,
)
from harness.eval_memo import batch_images
from mage.images import parse_color

MODEL_ID = "mage"
DEFAULT_MAX_NEW_TOKENS = 32  # when neither the harness nor the task gives a budget


def manifest():
    """The `lmms_eval.models` entry point: makes ``--model mage`` resolve to `MageLMM`.

    Imported lazily: lmms-eval calls this while its model package is still initialising."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.MageLMM")


def _non_negative_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise ValueError(f"MageLMM: {name} must be an integer >= 0, got {value!r}")
    return number


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"MageLMM: {name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"MageLMM: {name} must be a positive integer, got {value!r}")
    return number


def truncate_at_stops(text: str, until: str | Sequence[str] | None) -> str:
    """Cut ``text`` at the first occurrence of any stop string (lmms-eval's ``until``)."""
    if not until:
        return text
    stops = [until] if isinstance(until, str) else list(until)
    cut = len(text)
    for stop in stops:
        if stop:
            position = text.find(stop)
            if position != -1:
                cut = min(cut, position)
    return text[:cut]


class MageLMM(lmms):
    """A MAGE model behind lmms-eval's ``lmms`` interface.

    Args:
        checkpoint: a folder written by ``MageModel.save_pretrained`` (the command-line path).
        batch_size: questions per ``model.generate`` / ``model.loglikelihood`` call.
        device: torch device for a loaded checkpoint; ``cuda`` under torchrun means
            ``cuda:LOCAL_RANK``.
        budgets: ``harness`` (per-task defaults, `harness.eval_batches.TASK_MAX_NEW_TOKENS`,
            and the scorers' reading windows, `harness.eval_batches.scored_enough`) or
            ``task`` (each task's own ``max_new_tokens``, answers generated in full).
        default_max_new_tokens: token budget when neither gives one.
        max_new_tokens_cap: optional upper bound on every budget. Recorded with the scores.
        loader_workers: processes that decode and preprocess images ahead of generation.
        background: colour transparent pixels are composited on (``white``, ``R,G,B``).

    Data parallel: under a process group (or ``torchrun``), lmms-eval gives each rank its
    shard of the documents (``rank``, ``world_size``) and gathers results on rank 0.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        budgets: str = "harness",
        default_max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        max_new_tokens_cap: int | str | None = None,
        loader_workers: int | str = 1,
        background: Any = "white",
        max_batch_size: Any = None,  # passed by lmms-eval's CLI; batches are fixed-size here
        model: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"MageLMM: unknown model_args {sorted(unknown)}; known: checkpoint, batch_size, "
                "device, budgets, default_max_new_tokens, max_new_tokens_cap, loader_workers, "
                "background"
            )
        if (checkpoint is None) == (model is None):
            raise ValueError(
                "MageLMM needs exactly one of checkpoint=DIR (a MageModel.save_pretrained "
                "folder) or an in-memory model (MageLMM.wrap(model))"
            )
        if budgets not in ("harness", "task"):
            raise ValueError(f"MageLMM: budgets must be 'harness' or 'task', got {budgets!r}")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.budgets = budgets
        self.default_max_new_tokens = _positive_int(
            "default_max_new_tokens", default_max_new_tokens
        )
        self.max_new_tokens_cap = (
            None
            if max_new_tokens_cap in (None, "", "None")
            else _positive_int("max_new_tokens_cap", max_new_tokens_cap)
        )
        self.loader_workers = _non_negative_int("loader_workers", loader_workers)
        self.background = parse_color(background, what="MageLMM: background")
        self._rank, self._world_size = process_rank()
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.model = model if model is not None else self._load(self.checkpoint, device)
        # the frozen tower's outputs kept between evaluations (`harness.eval_memo`); set by
        # `harness.eval.evaluate` when the model's config asks for cached tower outputs
        self.tower_memo = None
        self.reset_timings()

    def reset_timings(self) -> None:
        """Start counting afresh (an evaluation's costs are its own)."""
        self.timings: dict[str, Any] = {"generate_s": 0.0, "generate_n": 0, "tasks": {}}

    @classmethod
    def wrap(cls, model: Any, batch_size: int = 8, **kwargs: Any) -> MageLMM:
        """Score an in-memory model (e.g. the one a trial has just trained)."""
        return cls(model=model, batch_size=batch_size, **kwargs)

    @staticmethod
    def _load(checkpoint: str, device: str | None) -> Any:
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(
                f"MageLMM: checkpoint folder not found: {checkpoint} (model_args checkpoint=DIR "
                "must be a folder written by MageModel.save_pretrained)"
            )
        from mage.model import MageModel

        if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per torchrun process
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        model = MageModel.from_pretrained(checkpoint)
        if device:
            model = model.to(device)
        return model

    @property
    def device(self) -> torch.device:
        """Where the model (and lmms-eval's rank-count tensors) live."""
        device = getattr(self.model, "device", None)
        return device if isinstance(device, torch.device) else torch.device("cpu")

    def clean(self) -> None:
        """Keep the model: lmms-eval's default drops every nn.Module attribute after
        generation (to make room for a local LLM judge, which these tasks do not use), which
        would leave a wrapped model unusable for the next evaluation."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextmanager
    def _inference(self):
        """Eval mode and no gradients; the model's training flag is restored afterwards."""
        was_training = bool(getattr(self.model, "training", False))
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            if was_training:
                self.model.train()

    def describe(self) -> dict[str, Any]:
        """What was scored and how: goes into the evaluation record."""
        config = getattr(self.model, "config", None)
        to_dict = getattr(config, "to_dict", None)
        return {
            "checkpoint": self.checkpoint,
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "config": to_dict() if callable(to_dict) else None,
            "batch_size": self.batch_size,
            "budgets": self.budgets,
            "task_max_new_tokens": dict(TASK_MAX_NEW_TOKENS) if self.budgets == "harness" else None,
            "reading_windows": sorted(SCORED_WINDOWS) if self.budgets == "harness" else [],
            "default_max_new_tokens": self.default_max_new_tokens,
            "max_new_tokens_cap": self.max_new_tokens_cap,
            "loader_workers": self.loader_workers,
            "image_background": list(self.background),
            "image_aspect": getattr(getattr(self.model, "vision", None), "image_aspect", None),
            "world_size": self.world_size,
        }

    # ---- lmms-eval interface --------------------------------------------------------------
    def _is_mage(self) -> bool:
        from mage.model import MageModel

        return isinstance(self.model, MageModel)

    def _prompts(self) -> Callable[[str, bool], list[int]] | None:
        """(context, has_image) -> the MAGE prompt's token ids, each tokenized once per call
        (the sort by length and the generation both need them); None for other models."""
        if not self._is_mage():
            return None
        from mage.generation import prompt_ids

        return functools.cache(
            lambda context, has_image: prompt_ids(self.model, context, has_image)
        )

    def _rows(self, requests: list[Instance]) -> list[Row]:
        rows = []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            gen_kwargs = gen_kwargs or {}
            value = budget(
                task, gen_kwargs, self.budgets, self.default_max_new_tokens, self.max_new_tokens_cap
            )
            stops = stop_strings(gen_kwargs)
            enough = scored_enough(task, self.budgets)
            padding = bool((getattr(req, "metadata", None) or {}).get("__padding_only__"))
            rows.append(
                Row(i, context, value, stops, doc_to_visual, doc_id, task, split, enough, padding)
            )
        return rows

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers in request order; see `harness.eval_batches` for the batching."""
        from mage.generation import preprocess_image

        prompts = self._prompts()
        # Sort by token count (characters for a model without a tokenizer).
        length = (lambda context: len(prompts(context, True))) if prompts else len
        collator, batches = plan_batches(self._rows(requests), self.batch_size, length)
        prepare = (lambda image: preprocess_image(self.model, image)) if prompts else None
        images_of = batch_images(
            batches,
            lambda subset: BatchSource(subset, self.task_dict, prepare, self.background),
            self.loader_workers,
            self.tower_memo if prompts else None,
            self.model,
        )
        outputs: list[str] = []
        progress = tqdm(
            total=len(requests),
            desc="mage generate_until",
            disable=None if self.rank == 0 else True,
        )
        seen: set[tuple[str, int]] = set()
        waited = time.perf_counter()
        with self._inference():
            for index, images in images_of:
                began = time.perf_counter()
                rows = batches[index]
                mage_only = {}
                if prompts:
                    mage_only = {
                        "enough": [r.enough for r in rows],
                        "prompts": [
                            prompts(r.context, im is not None) for r, im in zip(rows, images)
                        ],
                    }
                answers = self.model.generate(
                    images,
                    [r.context for r in rows],
                    max_new_tokens=[r.budget for r in rows],
                    stop=[r.stops for r in rows],
                    **mage_only,
                )
                if len(answers) != len(rows):
                    raise RuntimeError(
                        f"MageLMM: model.generate returned {len(answers)} answers for "
                        f"{len(rows)} questions"
                    )
                done = time.perf_counter()
                self._time(rows, seen, generate_s=done - began, wall_s=done - waited)
                waited = done
                for row, text in zip(rows, answers):
                    answer = truncate_at_stops(text, row.stops)
                    outputs.append(answer)
                    gen_kwargs = requests[row.index].args[1] or {}
                    self.cache_hook.add_partial("generate_until", (row.context, gen_kwargs), answer)
                progress.update(len(rows))
        progress.close()
        return collator.get_original(outputs)

    def _time(self, rows: list[Row], seen: set, generate_s: float, wall_s: float) -> None:
        """Per-task model and wall time; samples counted once per (task, doc), leaving out
        lmms-eval's padding copies (equal shards across ranks; a request for doc 0 on a rank
        that got no documents), which every rank would otherwise count again."""
        task = self.timings["tasks"].setdefault(
            rows[0].task, {"samples": 0, "rows": 0, "generate_s": 0.0, "wall_s": 0.0}
        )
        fresh = {(r.task, r.doc_id) for r in rows if not r.padding} - seen
        seen |= fresh
        task["samples"] += len(fresh)
        task["rows"] += len(rows)
        task["generate_s"] += generate_s
        task["wall_s"] += wall_s
        self.timings["generate_s"] += generate_s
        self.timings["generate_n"] += len(rows)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(loss, is_greedy) per request; the loss is the summed NLL of the continuation.

        lmms-eval's multiple-choice scoring takes the argmin of the loss. ``is_greedy`` is
        always False: `MageModel.loglikelihood` returns losses only.
        """
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            images, contexts, continuations = [], [], []
            for req in chunk:
                context, target, doc_to_visual, doc_id, task, split = req.args
                row = Row(start, context, 0, [], doc_to_visual, doc_id, task, split)
                doc = self.task_dict[task][split][doc_id]
                images.append(doc_image(self.task_dict, row, self.background))
                contexts.append(context)
                continuations.append(target if isinstance(target, str) else target(doc))
            with self._inference():
                losses = self.model.loglikelihood(images, contexts, continuations)
            results.extend((float(loss), False) for loss in losses)
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "MageLMM does not support multi-round generation (generate_until_multi_round); "
            "MAGE is scored on single-turn tasks: mme, mmbench_en_dev(_static), seedbench"
        )


def process_rank() -> tuple[int, int]:
    """(rank, world size): the process group's if one is initialised, else the launcher's
    ``RANK`` / ``WORLD_SIZE`` (torchrun sets them before lmms-eval builds the group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
