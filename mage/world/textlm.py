"""The world's "pretrained" LLM: a tiny Llama taught the world's language from text alone.

Real MAGE starts from a pretrained Vicuna; the world starts every variant from this tiny
``LlamaForCausalLM`` instead. It is trained once on the world's stage-2 instructions with
the image replaced by its caption (``"<caption>\\n<question>"``), plus caption modelling
(a caption prompt without image -> a caption), using the "world" conversation template
(`mage.template`), loss on reply tokens only and EOS after each reply. Without such a start
a tiny VLM trained for minutes stays at the answer prior (see the CPU-world design note).

Lettered multiple choice needs one more skill than the world's facts: find the option that
says the answer and reply with its letter. Trained only on one-letter replies inside the full
prompt, a tiny model does not find that lookup in the budgets tried. What forms it
(docs/cpu-world.md, "Lettered choice"): a first phase (``lookup_steps``) of option-lookup drills alone
(`option_lookup_conversation`: the options, then "The answer is X.", answered with X's
letter) at a learning rate of 3e-4 (at 1e-3 the drill stalls at about 70%), then the normal
mix with some drills and hinted questions kept in it, so the lookup carries over to the
benchmark prompt.

Reading the image is a third skill. The caption records teach captions without context
(caption modelling), so nothing in the text taught the LLM to describe what its context says,
and stage 1 (the LLM frozen, the IAN learning to make it caption the image) had no reading
circuit to reach for. A last phase (``final_steps``, its own warm-up and cosine schedule) adds
``describe`` conversations: the caption with its objects in a random order in the prompt, the
caption as the reply (`describe_conversation`). With it stage 1 learns about three times
faster and the smoke budget's VLM separates from blind (docs/cpu-world.md, "Describe from
context").

`evaluate_text_llm` measures the text-only upper bound on the held-out benchmark questions
(caption in the prompt): MME-style yes/no accuracy, acc+ (both questions of an image right)
and multiple-choice accuracy, from the first generated token.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mage.template import IMAGE_TOKEN, get_template
from mage.world import text

if TYPE_CHECKING:  # transformers takes a second or two to import: only where an LLM is built
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

IGNORE_INDEX = -100
TEMPLATE = "world"


@dataclass(frozen=True)
class TextLMConfig:
    steps: int
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    initializer_range: float = 0.06  # 0.02 (transformers' default) never leaves the prior
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    max_length: int = 192
    # sampling weights of stage-2 kinds: the one-token answers (yes/no, letters) need more
    # examples than the stage-2 mix gives them; each sample's loss is averaged over its own
    # reply tokens, so a one-letter reply weighs as much as a caption
    kind_weights: tuple[tuple[str, float], ...] = (
        ("caption", 0.1), ("short", 0.25), ("yes_no", 0.3), ("mcq", 0.35)
    )  # fmt: skip
    mcq_hint_rate: float = 0.0
    # first phase: option-lookup drills only (see the docstring)
    lookup_steps: int = 0
    lookup_kind_weights: tuple[tuple[str, float], ...] = (("option_lookup", 1.0),)
    # last phase: its own schedule from ``final_lr`` (see the docstring)
    final_steps: int = 0
    final_lr: float = 3e-4
    final_kind_weights: tuple[tuple[str, float], ...] = ()


def build_llm(tokenizer: PreTrainedTokenizerBase, cfg: TextLMConfig, seed: int) -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=512,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def text_conversations(
    records: list[dict], hint_rate: float = 0.0, seed: int = 0
) -> list[list[dict]]:
    """Stage-2 records with the image replaced by its caption (caption records: no image).

    With ``hint_rate``, that share of multiple-choice records also states the answer
    ("The answer is red."), so the last step (find the option, say its letter) is learnt on
    its own; benchmark prompts never carry a hint."""
    rng = np.random.default_rng([seed, 17])
    out = []
    for rec in records:
        turns = [dict(t) for t in rec["conversations"]]
        human = turns[0]["value"]
        if rec.get("kind") == "caption":
            turns[0]["value"] = human.replace(f"{IMAGE_TOKEN}\n", "")
        else:
            context = rec["caption"]
            if rec.get("kind") == "mcq" and hint_rate and rng.random() < hint_rate:
                option = re.search(rf"^{turns[1]['value']}\. (.+)$", human, re.MULTILINE)
                context += f"\nThe answer is {option.group(1)}."
            turns[0]["value"] = human.replace(IMAGE_TOKEN, context)
        out.append(turns)
    return out


def encode(conversations: list[dict], tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside replies); EOS closes every reply."""
    ids: list[int] = []
    labels: list[int] = []
    for piece, is_target in get_template(TEMPLATE).segments(conversations):
        piece_ids = tokenizer.encode(piece, add_special_tokens=False)
        if is_target:
            piece_ids = piece_ids + [tokenizer.eos_token_id]
        ids += piece_ids
        labels += piece_ids if is_target else [IGNORE_INDEX] * len(piece_ids)
    return ids[:max_length], labels[:max_length]


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


_OPTION = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)


def option_lookup_conversation(record: dict, rng: np.random.Generator) -> list[dict]:
    """A multiple-choice record's options as a lookup drill: the options as the benchmark
    lists them, then "The answer is X." for one option drawn at random, answered with its
    letter."""
    options = _OPTION.findall(record["conversations"][0]["value"])
    block = "\n".join(f"{letter}. {option}" for letter, option in options)
    letter, option = options[int(rng.integers(len(options)))]
    return [
        {"from": "human", "value": f"{block}\nThe answer is {option}."},
        {"from": "gpt", "value": letter},
    ]


def describe_conversation(record: dict, rng: np.random.Generator) -> list[dict]:
    """A caption record as a reading drill: its objects in a random order in place of the
    image, its caption (quadrant order) as the reply."""
    turns = [dict(t) for t in record["conversations"]]
    context = text.reordered_caption(record["caption"], rng)
    turns[0]["value"] = turns[0]["value"].replace(IMAGE_TOKEN, context)
    return turns


def training_pool(
    records: list[dict], cfg: TextLMConfig, seed: int
) -> tuple[list[list[dict]], list[str]]:
    """Every text conversation the LLM may be trained on, with its kind: the records' own
    (`text_conversations`), for each multiple-choice record an option-lookup drill
    (``option_lookup``) and a hinted copy (``mcq_hinted``), and for each caption record a
    reading drill (``describe``), each when a phase samples it. The kinds of the last phase
    come last, so adding that phase leaves the earlier phases' draws as they were."""
    conversations = text_conversations(records, cfg.mcq_hint_rate, seed)
    kinds = [r.get("kind", "other") for r in records]
    phases = (*cfg.kind_weights, *(cfg.lookup_kind_weights if cfg.lookup_steps else ()))
    wanted = {kind for kind, weight in phases if weight > 0}
    mcq = [r for r in records if r.get("kind") == "mcq"]
    if "option_lookup" in wanted:
        rng = np.random.default_rng([seed, 23])
        conversations += [option_lookup_conversation(r, rng) for r in mcq]
        kinds += ["option_lookup"] * len(mcq)
    if "mcq_hinted" in wanted:
        conversations += text_conversations(mcq, hint_rate=1.0, seed=seed + 1)
        kinds += ["mcq_hinted"] * len(mcq)
    if cfg.final_steps and "describe" in {k for k, w in cfg.final_kind_weights if w > 0}:
        rng = np.random.default_rng([seed, 29])
        captions = [r for r in records if r.get("kind") == "caption"]
        conversations += [describe_conversation(r, rng) for r in captions]
        kinds += ["describe"] * len(captions)
    return conversations, kinds


def train_text_llm(
    records: list[dict], tokenizer, cfg: TextLMConfig, seed: int, on_step=None
) -> tuple[LlamaForCausalLM, dict]:
    """Train the tiny Llama on the text form of ``records``; returns ``(model, log)``.

    The first ``cfg.lookup_steps`` steps sample kinds by ``cfg.lookup_kind_weights``, the
    next ones by ``cfg.kind_weights``, up to ``cfg.steps``; then ``cfg.final_steps`` by
    ``cfg.final_kind_weights`` (`final_phase`). ``on_step`` gets the step index across all
    phases."""
    model = build_llm(tokenizer, cfg, seed)
    conversations, kinds = training_pool(records, cfg, seed)
    encoded = [encode(c, tokenizer, cfg.max_length) for c in conversations]
    schedule = batch_schedule([len(ids) for ids, _ in encoded], kinds, cfg, seed)
    start = time.perf_counter()
    losses = _train(model, encoded, schedule, cfg.steps, cfg.lr, cfg.warmup, tokenizer, on_step)
    final_losses = final_phase(model, encoded, kinds, tokenizer, cfg, seed, on_step, cfg.steps)
    log = {
        "steps": cfg.steps,
        "lookup_steps": cfg.lookup_steps,
        "final_steps": cfg.final_steps,
        "train_samples": len(encoded),
        "final_loss": float(np.mean((losses + final_losses)[-50:])) if losses else None,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    return model, log


def final_phase(
    model, encoded: list, kinds: list[str], tokenizer, cfg: TextLMConfig, seed: int,
    on_step=None, first_step: int = 0,
) -> list[float]:  # fmt: skip
    """The last phase on the trained ``model`` (in place), over the encoded `training_pool`:
    ``cfg.final_steps`` steps drawn by ``cfg.final_kind_weights``, a fresh optimizer warming
    up to ``cfg.final_lr`` then a cosine decay; returns the losses."""
    if not cfg.final_steps:
        return []
    rng = np.random.default_rng([seed, 31])
    weights = _kind_weights(kinds, dict(cfg.final_kind_weights))
    schedule = _length_grouped_batches([len(i) for i, _ in encoded], weights, cfg.batch_size, rng)
    step_hook = (lambda s: on_step(first_step + s)) if on_step else None
    return _train(
        model, encoded, schedule, cfg.final_steps, cfg.final_lr, cfg.warmup, tokenizer, step_hook
    )


def _train(model, encoded, schedule, steps: int, lr: float, warmup: int, tokenizer, on_step):
    """``steps`` AdamW steps on batches from ``schedule``: linear warm-up over ``warmup``
    steps, then a cosine decay to 0 at ``steps``; returns the losses (model left in eval)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, warmup))
            * 0.5
            * (1 + np.cos(np.pi * min(1.0, s / max(1, steps))))
        ),
    )
    model.train()
    losses = []
    for step, indices in zip(range(steps), schedule):
        batch = collate([encoded[i] for i in indices], tokenizer.pad_token_id)
        loss = per_sample_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step(step)
    model.eval()
    return losses


def batch_schedule(lengths: list[int], kinds: list[str], cfg: TextLMConfig, seed: int):
    """Endless index batches: ``cfg.lookup_steps`` by ``lookup_kind_weights``, then by
    ``kind_weights``."""
    rng = np.random.default_rng(seed)
    if cfg.lookup_steps:
        weights = _kind_weights(kinds, dict(cfg.lookup_kind_weights))
        first = _length_grouped_batches(lengths, weights, cfg.batch_size, rng)
        for _ in range(cfg.lookup_steps):
            yield next(first)
    yield from _length_grouped_batches(
        lengths, _kind_weights(kinds, dict(cfg.kind_weights)), cfg.batch_size, rng
    )


def per_sample_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy averaged over each sample's reply tokens, then over the samples."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="none",
        ignore_index=IGNORE_INDEX,
    ).view(labels.shape)  # fmt: skip
    counts = (labels != IGNORE_INDEX).sum(1)
    keep = counts > 0
    return (token_loss.sum(1)[keep] / counts[keep]).mean()


def _kind_weights(kinds: list[str], kind_weights: dict[str, float]) -> np.ndarray:
    """Sampling probability of each item: its kind's weight shared among that kind."""
    present = {k: kinds.count(k) for k in set(kinds)}
    weight = np.array([kind_weights.get(k, 0.0) / present[k] for k in kinds])
    if weight.sum() <= 0:  # no known kinds: uniform
        weight = np.ones(len(kinds))
    return weight / weight.sum()


def _length_grouped_batches(
    lengths: list[int], weights: np.ndarray, batch_size: int, rng: np.random.Generator,
    group: int = 16,
):  # fmt: skip
    """Endless batches drawn with ``weights``; each run of ``group`` batches is split by
    length, so a batch pads little (about 1.5x fewer tokens on the world's mixed lengths)."""
    batch_size = min(batch_size, len(lengths))
    lengths = np.asarray(lengths)
    while True:
        pool = rng.choice(len(lengths), size=batch_size * group, p=weights)
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        for k in rng.permutation(len(chunks)):
            yield [int(i) for i in chunks[k]]


@torch.no_grad()
def first_token_answers(model, tokenizer, prompts: list[str], batch_size: int = 64) -> list[str]:
    """Greedy first reply token for each user prompt (left-padded batches), decoded."""
    template = get_template(TEMPLATE)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        encoded = [
            tokenizer.encode(template.prompt(p), add_special_tokens=False)
            for p in prompts[i : i + batch_size]
        ]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, e in enumerate(encoded):
            ids[j, width - len(e) :] = torch.tensor(e)
            mask[j, width - len(e) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        out += [tokenizer.decode([t]).strip() for t in logits[:, -1].argmax(-1).tolist()]
    return out


def evaluate_text_llm(model, tokenizer, bench_items: dict[str, list[dict]]) -> dict:
    """Text-only accuracy with the caption in the prompt.

    ``bench_items``: ``{"yes_no": [{"caption", "question", "answer", "pair"}...],
    "mcq": [{"caption", "prompt", "answer"}...]}`` (see asset_training.text_eval_items)."""
    result: dict = {}
    yn = bench_items.get("yes_no", [])
    if yn:
        preds = first_token_answers(
            model, tokenizer, [f"{x['caption']}\n{text.mme_prompt(x['question'])}" for x in yn]
        )
        right = [p == x["answer"] for p, x in zip(preds, yn)]
        pairs: dict[str, list[bool]] = {}
        for ok, x in zip(right, yn):
            pairs.setdefault(x["pair"], []).append(ok)
        result.update(
            yes_no_acc=float(np.mean(right)),
            yes_no_acc_plus=float(np.mean([all(v) for v in pairs.values()])),
            yes_no_n=len(yn),
            yes_rate=float(np.mean([p == text.YES for p in preds])),
        )
    mcq = bench_items.get("mcq", [])
    if mcq:
        preds = first_token_answers(
            model, tokenizer, [f"{x['caption']}\n{x['prompt']}" for x in mcq]
        )
        result.update(
            mcq_acc=float(np.mean([p == x["answer"] for p, x in zip(preds, mcq)])),
            mcq_n=len(mcq),
        )
    return result


def save_text_llm(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
