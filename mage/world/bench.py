"""Held-out benchmark splits of the shapes world in MME's, MMBench's and SEED-Bench's schemas.

Each builder takes the held-out images of its benchmark (``HeldOut``: id, scene, PNG bytes,
question stream) and returns a `datasets.DatasetDict` with exactly the official features and
split name (`mage.world.schemas`), so lmms-eval scores it with its own code:

- MME: per image one yes/no pair (same ``question_id``, answers "Yes" and "No"); categories
  cycle through `text.YES_NO_CATEGORIES` (4 perception + ``numerical_calculation``).
- MMBench (dev): per image one 4-option question; categories cycle through
  `text.MCQ_CATEGORIES`; three circular copies with rotated options at
  ``index + k * 1_000_000`` (k = 1..3), as in MMBench's circular evaluation.
- SEED-Bench: per image one 4-option question with SEED's ``question_type_id``.

Answers are balanced so that a model that never sees the image lands at chance (see
`mage.world.text`): a lettered counting question's image is drawn (`held_out_scene`, from
the image's own scene stream) until it has a shape with a target count, the target drawn
uniformly from the options "0".."3", as real benchmarks balance their answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict

from mage.world import text
from mage.world.scene import MAX_OBJECTS, Scene, sample_scene
from mage.world.schemas import (
    BENCHMARKS,
    MMBENCH_CIRCULAR_OFFSET,
    MMBENCH_FEATURES,
    MME_FEATURES,
    SEED_FEATURES,
)

MMBENCH_SOURCE = "shapes_world"
# MMBench's L2 categories for the world's question kinds.
MMBENCH_L2 = {
    "color": "finegrained_perception (instance-level)",
    "shape": "finegrained_perception (instance-level)",
    "position": "finegrained_perception (instance-level)",
    "count": "finegrained_perception (cross-instance)",
}


# The question category of each held-out image cycles through its benchmark's categories.
CATEGORIES = {
    "mme": text.YES_NO_CATEGORIES,
    "mmbench": text.MCQ_CATEGORIES,
    "seedbench": tuple(text.SEED_QUESTION_TYPES),
}
# Benchmarks whose counting questions are lettered (their answer is a drawn target count).
TARGET_COUNT_BENCHMARKS = ("mmbench", "seedbench")
# Scene draws before giving up on a target count (the rarest, 3 of a shape, takes ~75).
MAX_SCENE_DRAWS = 10_000


@dataclass(frozen=True)
class HeldOut:
    """One held-out image: its id, scene, PNG bytes and its own question stream;
    ``target_count`` is the answer of its lettered counting question (else None)."""

    image_id: str
    index: int
    scene: Scene
    png: bytes
    rng: np.random.Generator
    target_count: int | None = None


def category_of(name: str, index: int) -> str:
    """The question category of held-out image ``index`` of benchmark ``name``."""
    categories = CATEGORIES[name]
    return categories[index % len(categories)]


def held_out_scene(name: str, index: int, rng: np.random.Generator) -> tuple[Scene, int | None]:
    """The scene of held-out image ``index`` of ``name`` (from its scene stream ``rng``) and
    its target count: for a lettered counting question a count 0..MAX_OBJECTS is drawn
    first, then scenes until one has a shape with that count."""
    if name not in TARGET_COUNT_BENCHMARKS or category_of(name, index) != "count":
        return sample_scene(rng), None
    target = int(rng.integers(MAX_OBJECTS + 1))
    for _ in range(MAX_SCENE_DRAWS):
        scene = sample_scene(rng)
        if target in text.shape_counts(scene).values():
            return scene, target
    raise RuntimeError(f"no scene with a shape counted {target} in {MAX_SCENE_DRAWS} draws")


def _image(png: bytes) -> dict:
    return {"bytes": png, "path": None}


def _columns(rows: list[dict], features) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in features}


def build_mme(items: list[HeldOut]) -> DatasetDict:
    rows = []
    for item in items:
        category = category_of("mme", item.index)
        pair = text.yes_no_pair(item.scene, category, item.rng)
        qid = f"{category}/{item.image_id}.png"
        for question, answer in ((pair.yes, text.YES), (pair.no, text.NO)):
            rows.append(
                {
                    "question_id": qid,
                    "image": _image(item.png),
                    "question": text.mme_question(question),
                    "answer": answer,
                    "category": category,
                }
            )
    return _dataset_dict("mme", rows, MME_FEATURES)


def build_mmbench(items: list[HeldOut]) -> DatasetDict:
    main, copies = [], []
    for item in items:
        category = category_of("mmbench", item.index)
        mcq = text.multiple_choice(item.scene, category, item.rng, item.target_count)
        for k in range(4):
            rotated = mcq.rotated(k)
            row = {
                "index": k * MMBENCH_CIRCULAR_OFFSET + item.index,
                "question": rotated.question,
                "hint": None,
                **dict(zip(text.LETTERS, rotated.options)),
                "answer": rotated.answer,
                "category": category,
                "image": _image(item.png),
                "source": MMBENCH_SOURCE,
                "L2-category": MMBENCH_L2[category],
                "comment": None,
                "split": "dev",
            }
            (main if k == 0 else copies).append(row)
    return _dataset_dict("mmbench", main + copies, MMBENCH_FEATURES)


def build_seedbench(items: list[HeldOut]) -> DatasetDict:
    rows = []
    for item in items:
        category = category_of("seedbench", item.index)
        mcq = text.multiple_choice(item.scene, category, item.rng, item.target_count)
        choices = dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), mcq.options))
        rows.append(
            {
                "answer": mcq.answer,
                "choice_a": choices["choice_a"],
                "choice_b": choices["choice_b"],
                "choice_c": choices["choice_c"],
                "choice_d": choices["choice_d"],
                "data_id": f"{item.image_id}.png",
                "data_type": "image",
                "question": mcq.question,
                "question_id": item.image_id,
                "question_type_id": text.SEED_QUESTION_TYPES[category],
                "image": [_image(item.png)],
                "segment": None,
            }
        )
    return _dataset_dict("seedbench", rows, SEED_FEATURES)


BUILDERS = {"mme": build_mme, "mmbench": build_mmbench, "seedbench": build_seedbench}


def _dataset_dict(name: str, rows: list[dict], features) -> DatasetDict:
    split = BENCHMARKS[name][1]
    return DatasetDict({split: Dataset.from_dict(_columns(rows, features), features=features)})
