"""Training records of the shapes world in LLaVA's conversation format.

Stage 1 (`stage1_record`): one caption per training image. Stage 2 (`stage2_records`): an
instruction mix per image, drawn by kind with `STAGE2_MIX` (captions 0.2, short answers 0.3,
MME-style yes/no 0.25, lettered multiple choice 0.25: the CPU-world design note's recipe); every
prompt is phrased as lmms-eval phrases the benchmark prompts (see `mage.world.text`).

Every record is ``{"id", "image", "conversations", "caption", "kind", "category"}``;
``caption`` feeds the MSE term, ``kind``/``category`` let a trainer re-weight the mix.
"""

from __future__ import annotations

import numpy as np

from mage.template import IMAGE_TOKEN
from mage.world import text
from mage.world.scene import Scene

STAGE2_MIX = {"caption": 0.2, "short": 0.3, "yes_no": 0.25, "mcq": 0.25}


def conversation(prompt: str, reply: str, image: bool = True) -> list[dict]:
    human = f"{IMAGE_TOKEN}\n{prompt}" if image else prompt
    return [{"from": "human", "value": human}, {"from": "gpt", "value": reply}]


def caption_prompt(rng: np.random.Generator) -> str:
    return text.CAPTION_PROMPTS[int(rng.integers(len(text.CAPTION_PROMPTS)))]


def stage1_record(image_id: str, image: str, scene: Scene, rng: np.random.Generator) -> dict:
    cap = text.caption(scene)
    return {
        "id": image_id,
        "image": image,
        "conversations": conversation(caption_prompt(rng), cap),
        "caption": cap,
        "kind": "caption",
        "category": "caption",
    }


def instruction(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """``(category, prompt, reply)`` of one stage-2 instruction of ``kind``."""
    if kind == "caption":
        return "caption", caption_prompt(rng), text.caption(scene)
    if kind == "short":
        category = text.SHORT_CATEGORIES[int(rng.integers(len(text.SHORT_CATEGORIES)))]
        item = text.short_answer(scene, category, rng)
        return category, text.short_prompt(item.question), item.answer
    if kind == "yes_no":
        category = text.YES_NO_CATEGORIES[int(rng.integers(len(text.YES_NO_CATEGORIES)))]
        pair = text.yes_no_pair(scene, category, rng)
        if rng.random() < 0.5:
            return category, text.mme_prompt(pair.yes), text.YES
        return category, text.mme_prompt(pair.no), text.NO
    if kind == "mcq":
        category = text.MCQ_CATEGORIES[int(rng.integers(len(text.MCQ_CATEGORIES)))]
        item = text.multiple_choice(scene, category, rng)
        if rng.random() < 0.5:
            prompt = text.mmbench_prompt(item.question, item.options)
        else:
            prompt = text.seed_prompt(item.question, item.options)
        return category, prompt, item.answer
    raise ValueError(f"unknown stage-2 kind {kind!r}; known: {list(STAGE2_MIX)}")


def stage2_records(
    image_id: str, image: str, scene: Scene, rng: np.random.Generator, n: int
) -> list[dict]:
    """``n`` single-turn instructions about one image, kinds drawn from `STAGE2_MIX`."""
    kinds = list(STAGE2_MIX)
    probs = np.array(list(STAGE2_MIX.values()))
    cap = text.caption(scene)
    records = []
    for k in range(n):
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        category, prompt, reply = instruction(scene, kind, rng)
        records.append(
            {
                "id": f"{image_id}-{k}",
                "image": image,
                "conversations": conversation(prompt, reply),
                "caption": cap,
                "kind": kind,
                "category": category,
            }
        )
    return records
