"""Inference for `mage.model.MageModel`: greedy generation and continuation losses.

`generate` answers a batch of questions greedily with the LLM's KV cache. Prompts are
left-padded, so every row's last prompt token sits in the same column; each row has its own
token budget and stop strings, and a row that ends (EOS, budget, or a stop string in its
decoded text) leaves the batch: its entries are dropped from the KV cache
(``Cache.batch_select_indices``), so the remaining rows no longer pay decode steps for it.
The prompts go through the LLM in `mage.prefill.prefill`, which runs once what rows of one
image share (MME's two questions, MMBench's circular copies). A row may also end once its
answer so far satisfies its ``enough`` predicate: an evaluation passes one when the
benchmark's scorer reads only the first characters of an answer
(`harness.eval_batches.scored_enough`), so later tokens cannot change the score.
Each row's answer depends only on its own prompt and image, so it is the answer that batch
size 1 gives (``mage-harness bench eval`` checks this on real checkpoints).

Images may be PIL images of any mode (converted by the tower's ``preprocess``, i.e.
`mage.images`), ``None`` (a text-only question), or tensors ``[3, H, W]`` that
`preprocess_image` already produced (the evaluation's loader does that in worker processes,
off the generation loop), or `TowerOutput`s: images already through the tower (an
evaluation's memo of a frozen tower's outputs, `harness.eval_memo`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mage.data import IMAGE_TOKEN_ID, encode_text
from mage.prefill import CACHE_ARG, prefill
from mage.template import IMAGE_TOKEN

if TYPE_CHECKING:
    from mage.model import MageModel


def prompt_ids(model: MageModel, question: str, has_image: bool) -> list[int]:
    """BOS + the conversation template around ``question`` (image placeholders expanded)."""
    text = f"{IMAGE_TOKEN}\n{question}" if has_image else question
    ids = encode_text(model.template.prompt(text), model.tokenizer, model.num_image_tokens)
    bos = model.tokenizer.bos_token_id
    return ([bos] if bos is not None and model.template.bos else []) + ids


def preprocess_image(model: MageModel, image: Any) -> torch.Tensor | None:
    """One image (PIL of any mode, or None) -> the tower's input ``[3, H, W]`` (or None)."""
    if image is None or isinstance(image, torch.Tensor):
        return image
    return model.vision.preprocess([image])[0]


@dataclass(eq=False)
class TowerOutput:
    """An image already through the vision tower: its outputs ``[patches, dim]``."""

    features: torch.Tensor


def tower_outputs(model: MageModel, images: Sequence[Any]) -> list:
    """``images`` through the tower, as `image_tokens` would run it (the batch's distinct
    images stacked in order of first appearance), one `TowerOutput` per distinct image."""
    unique = {id(im): im for im in images if im is not None}
    if not unique:
        return list(images)
    pixels = torch.stack([preprocess_image(model, im) for im in unique.values()])
    features = model.vision(pixels.to(model.device).to(model.vision.dtype))
    outputs = {key: TowerOutput(f) for key, f in zip(unique, features.unbind(0))}
    return [None if im is None else outputs[id(im)] for im in images]


def image_tokens(model: MageModel, images: Sequence[Any]) -> torch.Tensor | None:
    """Projected image tokens of the rows that have an image (None when none has).

    One image object in several rows is encoded once: benchmarks ask several questions of
    one image (MME two, MMBench's circular copies up to four), and the evaluation's loader
    hands a batch's repeated image over as one object (`harness.eval_batches.BatchSource`)."""
    present = [im for im in images if im is not None]
    if not present:
        return None
    passed = [isinstance(im, TowerOutput) for im in present]
    if not all(passed):
        if any(passed):
            raise ValueError("generate: a batch mixes tower outputs with images")
        present = tower_outputs(model, present)  # one object per distinct image stays one
    unique = {id(im): im for im in present}  # first appearance order
    features = torch.stack([im.features for im in unique.values()])
    tokens = model.project_features(features.to(model.device))
    if len(unique) == len(present):
        return tokens
    slot = {key: i for i, key in enumerate(unique)}
    return tokens[torch.tensor([slot[id(im)] for im in present], device=tokens.device)]


def stop_position(text: str, stops: Sequence[str] | None) -> int | None:
    """Where the first of ``stops`` begins in ``text`` (None if none occurs)."""
    found = [text.find(s) for s in stops or () if s]
    found = [p for p in found if p != -1]
    return min(found) if found else None


def _per_row(value: Any, n: int, what: str) -> list:
    if (
        value is None
        or callable(value)
        or isinstance(value, (int, str))
        or (isinstance(value, Sequence) and value and isinstance(value[0], str))
    ):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"generate: {what} has {len(value)} entries for {n} questions")
    return value


def _checked_prompts(model: MageModel, prompts: Sequence[list[int]], images: Sequence) -> list:
    """The caller's prompt ids, refused unless each row holds its own image's placeholders
    (else one row's image tokens would fill another row's slots)."""
    if len(prompts) != len(images):
        raise ValueError(
            f"generate: prompts has {len(prompts)} entries for {len(images)} questions"
        )
    for row, (ids, image) in enumerate(zip(prompts, images)):
        want, have = model.num_image_tokens if image is not None else 0, ids.count(IMAGE_TOKEN_ID)
        if have != want:
            raise ValueError(
                f"generate: prompts[{row}] has {have} image placeholder ids; its image needs "
                f"{want} (use prompt_ids)"
            )
    return list(prompts)


def _decode(model: MageModel, tokens: list[int]) -> str:
    return model.tokenizer.decode(tokens, skip_special_tokens=True).strip()


@torch.no_grad()
def generate(
    model: MageModel,
    images: Sequence[Any],
    questions: Sequence[str],
    max_new_tokens: int | Sequence[int] = 32,
    stop: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
    enough: Callable[[str], bool] | Sequence[Callable[[str], bool] | None] | None = None,
    prompts: Sequence[list[int]] | None = None,
) -> list[str]:
    """Greedy answers, one per question; ``max_new_tokens``, ``stop`` and ``enough`` per row
    or shared. ``prompts``: each question's `prompt_ids`, when the caller already has them
    (an evaluation tokenizes every prompt once, to sort by length).

    A row ends at EOS, after its budget, once its decoded text contains one of its stop
    strings, or once ``enough(answer so far)`` is true; the answer is the decoded text
    (stripped), cut before the stop string."""
    if len(images) != len(questions):
        raise ValueError("generate needs one image (or None) per question")
    n = len(questions)
    budgets = [int(b) for b in _per_row(max_new_tokens, n, "max_new_tokens")]
    stops = [[s] if isinstance(s, str) else s for s in _per_row(stop, n, "stop")]
    enoughs = _per_row(enough, n, "enough")
    if n == 0:
        return []
    if prompts is None:
        seqs = [prompt_ids(model, q, im is not None) for q, im in zip(questions, images)]
    else:
        seqs = _checked_prompts(model, prompts, images)
    start = prefill(model, seqs, list(images), image_tokens(model, images))
    mask, positions = start.mask, start.positions
    eos = model.tokenizer.eos_token_id
    tokens: list[list[int]] = [[] for _ in range(n)]
    answers: list[str | None] = [None] * n
    rows = list(range(n))  # batch position -> question index
    for row, budget in enumerate(budgets):
        if budget < 1:
            answers[row] = ""
    logits, cache = start.logits, start.cache
    droppable = hasattr(cache, "batch_select_indices")  # else finished rows ride along
    while True:
        next_ids = logits.argmax(-1)
        for row, token in zip(rows, next_ids.tolist()):
            if answers[row] is not None:
                continue
            if token == eos:
                answers[row] = _decode(model, tokens[row])
                continue
            tokens[row].append(token)
            text = _decode(model, tokens[row])
            cut = stop_position(text, stops[row])
            if cut is not None:
                answers[row] = text[:cut]
            elif len(tokens[row]) >= budgets[row] or (enoughs[row] and enoughs[row](text)):
                answers[row] = text
        running = [j for j, row in enumerate(rows) if answers[row] is None]
        if not running:
            break
        if droppable and len(running) < len(rows):  # finished rows leave batch and KV cache
            keep = torch.tensor(running, device=mask.device)
            cache.batch_select_indices(keep)
            mask, positions, next_ids = mask[keep], positions[keep], next_ids[keep]
            rows = [rows[j] for j in running]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions + 1
        out = model.llm(
            inputs_embeds=model.llm.get_input_embeddings()(next_ids).unsqueeze(1),
            attention_mask=mask,
            position_ids=positions,
            **{CACHE_ARG: cache},
            use_cache=True,
        )
        logits, cache = out.logits[:, -1], getattr(out, CACHE_ARG)
    return [a if a is not None else "" for a in answers]


@torch.no_grad()
def loglikelihood(
    model: MageModel,
    images: Sequence[Any],
    contexts: Sequence[str],
    continuations: Sequence[str],
) -> list[float]:
    """Summed negative log-likelihood of each continuation (a loss: lower is likelier)."""
    losses = []
    for image, context, continuation in zip(images, contexts, continuations):
        prompt = prompt_ids(model, context, image is not None)
        target = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + target], device=model.device)
        mask = torch.ones_like(ids)
        embeds = model.embed(ids, image_tokens(model, [image]))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        logp = logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        picked = logp.gather(1, torch.tensor(target, device=ids.device)[:, None])
        losses.append(-float(picked.sum()))
    return losses
