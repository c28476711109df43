"""The prefill of a generation batch: every prompt through the LLM once, filling its KV cache.

Benchmarks ask several questions of one image: MME two, MMBench's circular evaluation one
question up to four times with its options rotated. Their prompts begin alike (the template,
the image's tokens, often the first words of the question), and at the paper's scale the
image's 576 tokens are most of a prompt. When rows of a batch share an image, `prefill` runs
the tokens they share once:

1. a first pass over one copy of each shared prefix;
2. its KV cache is copied to every row of that image (``Cache.batch_select_indices`` with
   repeated indices);
3. a second pass over the rest of every row, attending to that cache.

A row is laid out as ``[its shared prefix, left-padded][the rest, left-padded]``; the attention
mask hides both pads and positions count real tokens only, so every row sees exactly the
tokens and positions of a one-pass prefill: the same answer, up to floating-point rounding (as
between batch sizes; ``mage-harness bench eval`` compares every answer with batch 1's). A
batch shares only when that saves at least `MIN_SHARED_FRACTION` of the prefill's work, pads
included, without widening the KV cache by more than `MIN_CACHE_GROWTH` (`worth_sharing`), and
only on an LLM whose layers all attend in full (`full_attention_only`); batch size 1 never
shares.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import LlamaForCausalLM

from mage.data import pad_left
from mage.llm import base_llm

if TYPE_CHECKING:
    from mage.model import MageModel

# transformers renamed `past_key_values` to `cache` during 5.x; use whichever this one has.
CACHE_ARG = (
    "cache"
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else "past_key_values"
)
MIN_SHARED_FRACTION = 0.1  # sharing must save this much of the prefill's token slots ...
MIN_CACHE_GROWTH = 0.25  # ... and may widen the KV cache by at most this much


def keeps_last_logits(llm: Any) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` when the causal LM accepts it, else ``{}``.

    Without it the prefill computes logits at every prompt position, of which generation
    reads only the last: at a 32k vocabulary, batch 32 and ~650 prompt tokens that is a
    2.7 GB float32 tensor, and the LM head's work grows with the prompt."""
    return {"logits_to_keep": 1} if _takes_logits_to_keep(type(base_llm(llm))) else {}


@functools.cache
def _takes_logits_to_keep(llm_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(llm_class.forward).parameters


@dataclass
class Prefilled:
    """What the decode loop continues from."""

    logits: torch.Tensor  # [rows, vocab] at each row's last prompt token
    cache: Any  # the LLM's KV cache, one entry per row
    mask: torch.Tensor  # [rows, columns]: 1 where a column holds a real token
    positions: torch.Tensor  # [rows, 1]: the position of each row's last prompt token


def shared_prefixes(seqs: list[list[int]], images: list[Any]) -> list[int]:
    """Per row, how many leading tokens it shares with every other row of its image (one
    object; the text-only rows, image None, form one group too); 0 for a row alone. Each
    row keeps at least one token of its own, whose logits start its answer."""
    groups: dict[int, list[int]] = {}
    for row, image in enumerate(images):
        groups.setdefault(id(image), []).append(row)
    shared = [0] * len(seqs)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        first, most = seqs[rows[0]], min(len(seqs[r]) for r in rows) - 1
        length = 0
        while length < most and all(seqs[r][length] == first[length] for r in rows):
            length += 1
        for r in rows:
            shared[r] = length
    return shared


def worth_sharing(seqs: list[list[int]], images: list[Any], shared: list[int]) -> bool:
    """True when the two passes cost at least `MIN_SHARED_FRACTION` less than one: counted in
    token slots as the LLM runs them, pads included (one row per shared prefix, as wide as
    the longest, then every row as wide as the longest rest), and with a KV cache at most
    that fraction wider than one pass leaves. A row that shares nothing makes the rest as
    wide as its whole prompt, so a batch of a few pairs and some lone rows runs in one pass."""
    if not any(shared):
        return False
    longest = max(len(s) for s in seqs)
    width = max(shared)
    rest = max(len(s) - k for s, k in zip(seqs, shared))
    prefixes = len({id(image) for image, k in zip(images, shared) if k})
    two_passes = prefixes * width + len(seqs) * rest
    one_pass = len(seqs) * longest
    return (
        two_passes <= (1 - MIN_SHARED_FRACTION) * one_pass
        and width + rest <= (1 + MIN_CACHE_GROWTH) * longest
    )


def full_attention_only(llm: Any) -> bool:
    """Whether every layer attends to every earlier token. Sliding-window layers (Mistral,
    Gemma 3, ...) count columns, not tokens: the pads between a row's shared prefix and its
    rest would shift that window, so such models always prefill in one pass."""
    config = base_llm(llm).config
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return all(kind == "full_attention" for kind in layer_types)


def prefill(
    model: MageModel,
    seqs: list[list[int]],
    images: list[Any],
    image_tokens: torch.Tensor | None,
) -> Prefilled:
    """Run the prompts ``seqs`` (`mage.generation.prompt_ids`, one per row, with its image
    or None in ``images``; ``image_tokens``: the projected tokens of the rows that have an
    image, in row order) through the LLM, sharing what rows of one image share."""
    shared = shared_prefixes(seqs, images)
    if not (full_attention_only(model.llm) and worth_sharing(seqs, images, shared)):
        shared = [0] * len(seqs)
    pad = model.tokenizer.pad_token_id
    head_ids, head_mask = pad_left([s[:k] for s, k in zip(seqs, shared)], pad)
    tail_ids, tail_mask = pad_left([s[k:] for s, k in zip(seqs, shared)], pad)
    ids = torch.cat([head_ids, tail_ids], dim=1).to(model.device)
    mask = torch.cat([head_mask, tail_mask], dim=1).to(model.device)
    embeds = model.embed(ids, image_tokens)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = keeps_last_logits(model.llm)
    width = head_ids.shape[1]
    cache_arg = {}
    if width:
        # one row per shared prefix; a row that shares nothing reads the first one's cache,
        # which its mask hides
        firsts: dict[int, int] = {}  # image -> the first row of its group
        for row, length in enumerate(shared):
            if length:
                firsts.setdefault(id(images[row]), row)
        reps = list(firsts.values())
        slot = {key: i for i, key in enumerate(firsts)}
        out = model.llm(
            inputs_embeds=embeds[reps, :width],
            attention_mask=mask[reps, :width],
            position_ids=positions[reps, :width],
            use_cache=True,
            **keep,
        )
        cache = getattr(out, CACHE_ARG)
        rows_slot = [slot[id(image)] if k else 0 for image, k in zip(images, shared)]
        cache.batch_select_indices(torch.tensor(rows_slot, device=mask.device))
        cache_arg = {CACHE_ARG: cache}
    out = model.llm(
        inputs_embeds=embeds[:, width:],
        attention_mask=mask,
        position_ids=positions[:, width:],
        use_cache=True,
        **cache_arg,
        **keep,
    )
    return Prefilled(out.logits[:, -1], getattr(out, CACHE_ARG), mask, positions[:, -1:])
