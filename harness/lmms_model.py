"""MAGE as an lmms-eval model, so that MME, MMBench and SEED are scored by lmms-eval's own code.

`MageLMM` adapts a `mage.model.MageModel` (or any object with the same ``generate`` /
``loglikelihood`` methods) to `lmms_eval.api.model.lmms`:

- from the ``lmms-eval`` command line: ``lmms-eval eval --model mage --model_args
  checkpoint=DIR`` (the ``lmms_eval.models`` entry point ``mage`` in pyproject.toml points at
  `manifest`);
- from Python, wrapping the model a trial has just trained: ``MageLMM.wrap(model,
  batch_size=8)``, then ``lmms_eval.evaluator.simple_evaluate(model=lmm, ...)``.

On local data the command line needs task YAMLs under ``--include_path``:
`write_local_task_yamls` writes ones that include the built-in tasks and swap only the data
(``--tasks mage_local_mme,mage_local_mmbench_en_dev_static,mage_local_seedbench``).

lmms-eval hands the model every request of a type at once; batching is done here: requests
are sorted by prompt length (and grouped by their token budget), generated in batches of
``batch_size`` and returned in the original order. The context lmms-eval builds has no
``<image>`` token: the MAGE model inserts its own and applies its own conversation template.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

MODEL_ID = "mage"
DEFAULT_MAX_NEW_TOKENS = 32  # used when a task's generation_kwargs give none (SEED)


def manifest():
    """The `lmms_eval.models` entry point: makes ``--model mage`` resolve to `MageLMM`.

    Imported lazily: lmms-eval calls this while its model package is still initialising."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.MageLMM")


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
        device: optional torch device to move a loaded checkpoint to.
        default_max_new_tokens: token budget when a task sets none (SEED sets none).
        max_new_tokens_cap: optional upper bound on every task's budget (MMBench asks for
            1024); ``None`` keeps the tasks' own settings. Recorded with the scores.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        default_max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        max_new_tokens_cap: int | str | None = None,
        max_batch_size: Any = None,  # passed by lmms-eval's CLI; batches are fixed-size here
        model: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"MageLMM: unknown model_args {sorted(unknown)}; known: checkpoint, batch_size, "
                "device, default_max_new_tokens, max_new_tokens_cap"
            )
        if (checkpoint is None) == (model is None):
            raise ValueError(
                "MageLMM needs exactly one of checkpoint=DIR (a MageModel.save_pretrained "
                "folder) or an in-memory model (MageLMM.wrap(model))"
            )
        self.batch_size = _positive_int("batch_size", batch_size)
        self.default_max_new_tokens = _positive_int(
            "default_max_new_tokens", default_max_new_tokens
        )
        self.max_new_tokens_cap = (
            None
            if max_new_tokens_cap in (None, "", "None")
            else _positive_int("max_new_tokens_cap", max_new_tokens_cap)
        )
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.model = model if model is not None else self._load(self.checkpoint, device)
        self.timings = {"generate_s": 0.0, "generate_n": 0, "loglikelihood_s": 0.0}

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

        model = MageModel.from_pretrained(checkpoint)
        if device:
            model = model.to(device)
        return model

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
            "default_max_new_tokens": self.default_max_new_tokens,
            "max_new_tokens_cap": self.max_new_tokens_cap,
        }

    # ---- lmms-eval interface --------------------------------------------------------------
    def _doc_and_image(self, doc_to_visual: Any, doc_id: int, task: str, split: str):
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if callable(doc_to_visual) else None
        # SEED rows give a list of frames; MAGE takes one image per question.
        return doc, (visuals[0] if visuals else None)

    def _budget(self, gen_kwargs: dict) -> int:
        budget = gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens
        budget = int(budget)
        if self.max_new_tokens_cap is not None:
            budget = min(budget, self.max_new_tokens_cap)
        return budget

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, batched by token budget and prompt length, in request order."""
        order = sorted(
            range(len(requests)),
            key=lambda i: (self._budget(requests[i].args[1] or {}), -len(requests[i].args[0])),
        )
        answers: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), desc="mage generate_until", disable=None)
        start = 0
        while start < len(order):
            budget = self._budget(requests[order[start]].args[1] or {})
            batch = [order[start]]
            while (
                len(batch) < self.batch_size
                and start + len(batch) < len(order)
                and self._budget(requests[order[start + len(batch)]].args[1] or {}) == budget
            ):
                batch.append(order[start + len(batch)])
            start += len(batch)
            questions, images = [], []
            for i in batch:
                context, _gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                images.append(self._doc_and_image(doc_to_visual, doc_id, task, split)[1])
                questions.append(context)
            began = time.perf_counter()
            with self._inference():
                outputs = self.model.generate(images, questions, max_new_tokens=budget)
            self.timings["generate_s"] += time.perf_counter() - began
            self.timings["generate_n"] += len(batch)
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"MageLMM: model.generate returned {len(outputs)} answers for "
                    f"{len(batch)} questions"
                )
            for i, text in zip(batch, outputs):
                gen_kwargs = requests[i].args[1] or {}
                answers[i] = truncate_at_stops(text, gen_kwargs.get("until"))
                self.cache_hook.add_partial(
                    "generate_until", (requests[i].args[0], gen_kwargs), answers[i]
                )
            progress.update(len(batch))
        progress.close()
        return answers  # type: ignore[return-value]

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
                doc, image = self._doc_and_image(doc_to_visual, doc_id, task, split)
                continuation = target if isinstance(target, str) else target(doc)
                images.append(image)
                contexts.append(context)
                continuations.append(continuation)
            began = time.perf_counter()
            with self._inference():
                losses = self.model.loglikelihood(images, contexts, continuations)
            self.timings["loglikelihood_s"] += time.perf_counter() - began
            results.extend((float(loss), False) for loss in losses)
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "MageLMM does not support multi-round generation (generate_until_multi_round); "
            "MAGE is scored on single-turn tasks: mme, mmbench_en_dev(_static), seedbench"
        )


# ---- the lmms-eval command line on local data --------------------------------------------
TASK_YAMLS = {  # built-in task files, relative to the lmms_eval.tasks package
    "mme": "mme/mme.yaml",
    "mmbench_en_dev": "mmbench/mmbench_en_dev.yaml",
    "mmbench_en_dev_static": "mmbench/mmbench_en_dev_static.yaml",
    "seedbench": "seedbench/seedbench.yaml",
}


def write_local_task_yamls(
    data_dir: str | Path,
    include_dir: str | Path,
    benchmarks: Iterable[str] = ("mme", "mmbench", "seedbench"),
) -> dict[str, str]:
    """Task YAMLs for ``lmms-eval --include_path include_dir``: {benchmark: task name}.

    Each includes the built-in task file (official prompts and scoring) and only swaps the
    dataset for the local copy; names are ``mage_local_<task>`` (a YAML may not reuse a
    built-in name)."""
    import lmms_eval.tasks

    from harness.eval import task_names
    from mage.io import atomic_write_text

    tasks_root = Path(lmms_eval.tasks.__file__).parent
    include_dir = Path(include_dir)
    out = {}
    for bench, task in task_names(benchmarks).items():
        name = f"mage_local_{task}"
        text = (
            f"include: {tasks_root / TASK_YAMLS[task]}\n"
            f"task: {name}\n"
            f"dataset_path: {Path(data_dir).resolve() / bench}\n"
            "dataset_kwargs:\n  load_from_disk: true\n"
        )
        atomic_write_text(include_dir / f"{name}.yaml", text)
        out[bench] = name
    return out
