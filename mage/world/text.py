"""The words of the shapes world: captions, questions and answers, phrased as lmms-eval asks.

Every question kind exists in the forms the benchmarks use, so a model trained on the world
answers the benchmark prompts in the form lmms-eval parses:

- MME-style yes/no pairs (`yes_no_pair`): one question answered "Yes", one "No", about one
  image. In the benchmark split a question ends with MME's " Please answer yes or no.", which
  lmms-eval's ``mme_doc_to_text`` replaces by its post-prompt; `mme_prompt` gives exactly
  what the model then sees, and the training data uses that.
- 4-option lettered multiple choice (`multiple_choice`), shown as MMBench (`mmbench_prompt`)
  or SEED-Bench (`seed_prompt`) would show it, answered with one letter.
- Short open answers (`short_answer`) with LLaVA-1.5's (and lmms-eval's MME) post-prompt.

No question's wording gives its answer away: a model that never sees the image (the blind
baseline) must land at chance. Every "No" question names a value that the scene could have
had (a count of 1..`MAX_OBJECTS`, never an impossible 4), options are either all the values
of an attribute or the answer plus random others, and a counting question asks about the shape
whose count is a drawn target (`shape_with_count`), so that answers "0".."3" are equally
likely where the scene allows it (the benchmarks draw their counting scenes to allow it,
`mage.world.bench`).

The prompt builders copy lmms-eval 0.7.3's ``doc_to_text`` functions and YAML post-prompts;
tests check them against lmms-eval itself (mage/ does not import lmms-eval).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mage.world.scene import COLORS, MAX_OBJECTS, QUADRANTS, SHAPES, SIZES, Scene

# --- lmms-eval's prompt pieces (tasks/mme/mme.yaml, tasks/mmbench/*.yaml, seedbench/utils.py)
MME_QUESTION_SUFFIX = " Please answer yes or no."
SHORT_POST_PROMPT = "\nAnswer the question using a single word or phrase."
MCQ_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
MMBENCH_OPTIONS_HEADER = "There are several options:"
LETTERS = ("A", "B", "C", "D")
YES, NO = "Yes", "No"

CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "What is in the image?",
    "Give a short description of the image.",
)

YES_NO_CATEGORIES = ("existence", "count", "position", "color", "numerical_calculation")
MCQ_CATEGORIES = ("color", "count", "position", "shape")
SHORT_CATEGORIES = ("color", "shape", "position", "size", "count")
# SEED-Bench's own question_type_id numbering (2 Instance Identity, 3 Instance Attributes,
# 4 Instance Location, 5 Instances Counting).
SEED_QUESTION_TYPES = {"shape": 2, "color": 3, "position": 4, "count": 5}

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Question forms; `mage.world.vocab` takes its words from these strings too.
Q_EXISTS = "Is there a {color} {shape} in the image?"
Q_COUNT_ONE = "Is there {n} object in the image?"
Q_COUNT_MANY = "Are there {n} objects in the image?"
Q_POSITION_YN = "Is the {color} {shape} at the {quadrant} of the image?"
Q_COLOR_YN = "Is the {shape} at the {quadrant} {color}?"
Q_ARITHMETIC = "Is the number of objects in the image plus {k} equal to {m}?"
Q_COLOR = "What color is the {shape} at the {quadrant}?"
Q_SHAPE = "What shape is at the {quadrant}?"
Q_POSITION = "Where is the {color} {shape}?"
Q_SIZE = "What size is the {color} {shape}?"
Q_COUNT = "How many objects are in the image?"
Q_COUNT_SHAPE = "How many {plural} are in the image?"
QUESTION_FORMS = (
    Q_EXISTS,
    Q_COUNT_ONE,
    Q_COUNT_MANY,
    Q_POSITION_YN,
    Q_COLOR_YN,
    Q_ARITHMETIC,
    Q_COLOR,
    Q_SHAPE,
    Q_POSITION,
    Q_SIZE,
    Q_COUNT,
    Q_COUNT_SHAPE,
)


@dataclass(frozen=True)
class YesNoPair:
    """Two questions about one image: ``yes`` is answered "Yes", ``no`` is answered "No"."""

    category: str
    yes: str
    no: str


@dataclass(frozen=True)
class MultipleChoice:
    category: str
    question: str
    options: tuple[str, str, str, str]
    answer: str  # letter

    def rotated(self, k: int) -> MultipleChoice:
        """The same question with options shifted by ``k`` (MMBench's circular copies)."""
        options = tuple(self.options[(i + k) % 4] for i in range(4))
        correct = self.options[LETTERS.index(self.answer)]
        return MultipleChoice(
            self.category, self.question, options, LETTERS[options.index(correct)]
        )


@dataclass(frozen=True)
class ShortAnswer:
    category: str
    question: str
    answer: str


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------


def caption(scene: Scene) -> str:
    """``"A large red circle at the top left and a small blue cross at the bottom right."``"""
    return _join_objects([f"a {o.phrase} at the {o.quadrant}" for o in scene.objects])


def _join_objects(parts: list[str]) -> str:
    """``["a x", "a y", "a z"]`` -> ``"A x, a y and a z."``"""
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def reordered_caption(caption_text: str, rng: np.random.Generator) -> str:
    """``caption_text`` with its objects listed in a random order (the inverse of
    `_join_objects`, then the same joining): the same facts, in another order than the
    caption's quadrant order."""
    body = caption_text.removesuffix(".")
    parts = [p[0].lower() + p[1:] for p in re.split(r", | and ", body)]
    return _join_objects([parts[i] for i in rng.permutation(len(parts))])


# --------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def shape_counts(scene: Scene) -> dict[str, int]:
    """How many objects of each shape (zeros included) the scene has."""
    return {shape: sum(o.shape == shape for o in scene.objects) for shape in SHAPES}


def shape_with_count(scene: Scene, rng: np.random.Generator, target: int | None = None) -> str:
    """A shape whose count in ``scene`` is ``target``; with no target, the count is drawn
    uniformly from the counts the scene has (so a blind guess of "0" is no safe bet)."""
    counts = shape_counts(scene)
    if target is None:
        target = _pick(rng, sorted(set(counts.values())))
    shapes = [shape for shape, count in counts.items() if count == target]
    if not shapes:
        raise ValueError(f"no shape occurs {target} times in {caption(scene)!r}")
    return _pick(rng, shapes)


def _other_count(n: int, rng: np.random.Generator) -> int:
    """A wrong object count that a scene could have had: "No" questions as likely as "Yes"
    ones for every count a question names."""
    return _pick(rng, [m for m in range(1, MAX_OBJECTS + 1) if m != n])


def _count_question(n: int) -> str:
    return (Q_COUNT_ONE if n == 1 else Q_COUNT_MANY).format(n=n)


def yes_no_pair(scene: Scene, category: str, rng: np.random.Generator) -> YesNoPair:
    """An MME-style pair for ``category`` (one of `YES_NO_CATEGORIES`)."""
    obj = _pick(rng, scene.objects)
    if category == "existence":
        present = {(o.color, o.shape) for o in scene.objects}
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = _pick(rng, absent)
        return YesNoPair(
            category,
            Q_EXISTS.format(color=obj.color, shape=obj.shape),
            Q_EXISTS.format(color=color, shape=shape),
        )
    if category == "count":
        n = len(scene.objects)
        return YesNoPair(category, _count_question(n), _count_question(_other_count(n, rng)))
    if category == "position":
        other = _pick(rng, [q for q in QUADRANTS if q != obj.quadrant])
        return YesNoPair(
            category,
            Q_POSITION_YN.format(color=obj.color, shape=obj.shape, quadrant=obj.quadrant),
            Q_POSITION_YN.format(color=obj.color, shape=obj.shape, quadrant=other),
        )
    if category == "color":
        other = _pick(rng, [c for c in COLORS if c != obj.color])
        return YesNoPair(
            category,
            Q_COLOR_YN.format(shape=obj.shape, quadrant=obj.quadrant, color=obj.color),
            Q_COLOR_YN.format(shape=obj.shape, quadrant=obj.quadrant, color=other),
        )
    if category == "numerical_calculation":
        n, k = len(scene.objects), int(rng.integers(1, 4))
        wrong = _other_count(n, rng) + k
        return YesNoPair(
            category, Q_ARITHMETIC.format(k=k, m=n + k), Q_ARITHMETIC.format(k=k, m=wrong)
        )
    raise ValueError(f"unknown yes/no category {category!r}; known: {list(YES_NO_CATEGORIES)}")


def multiple_choice(
    scene: Scene, category: str, rng: np.random.Generator, target_count: int | None = None
) -> MultipleChoice:
    """A 4-option question for ``category`` (one of `MCQ_CATEGORIES`), options shuffled.

    A counting question asks how many objects of one shape there are (options "0".."3"),
    the shape chosen by `shape_with_count` (``target_count`` fixes the answer)."""
    obj = _pick(rng, scene.objects)
    if category == "color":
        question = Q_COLOR.format(shape=obj.shape, quadrant=obj.quadrant)
        others = [c for c in COLORS if c != obj.color]
        distractors = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
        correct, options = obj.color, [obj.color, *distractors]
    elif category == "count":
        shape = shape_with_count(scene, rng, target_count)
        question = Q_COUNT_SHAPE.format(plural=PLURALS[shape])
        correct = str(shape_counts(scene)[shape])
        options = [str(m) for m in range(MAX_OBJECTS + 1)]
    elif category == "position":
        question = Q_POSITION.format(color=obj.color, shape=obj.shape)
        correct, options = obj.quadrant, list(QUADRANTS)
    elif category == "shape":
        question = Q_SHAPE.format(quadrant=obj.quadrant)
        correct, options = obj.shape, list(SHAPES)
    else:
        raise ValueError(
            f"unknown multiple-choice category {category!r}; known: {list(MCQ_CATEGORIES)}"
        )
    order = rng.permutation(4)
    shuffled = tuple(options[int(i)] for i in order)
    return MultipleChoice(category, question, shuffled, LETTERS[shuffled.index(correct)])


def short_answer(scene: Scene, category: str, rng: np.random.Generator) -> ShortAnswer:
    """An open question answered with a word or phrase (one of `SHORT_CATEGORIES`)."""
    obj = _pick(rng, scene.objects)
    if category == "color":
        return ShortAnswer(
            category, Q_COLOR.format(shape=obj.shape, quadrant=obj.quadrant), obj.color
        )
    if category == "shape":
        return ShortAnswer(category, Q_SHAPE.format(quadrant=obj.quadrant), obj.shape)
    if category == "position":
        return ShortAnswer(
            category, Q_POSITION.format(color=obj.color, shape=obj.shape), obj.quadrant
        )
    if category == "size":
        return ShortAnswer(category, Q_SIZE.format(color=obj.color, shape=obj.shape), obj.size)
    if category == "count":
        if rng.random() < 0.5:
            return ShortAnswer(category, Q_COUNT, str(len(scene.objects)))
        shape = _pick(rng, SHAPES)
        count = sum(o.shape == shape for o in scene.objects)
        return ShortAnswer(category, Q_COUNT_SHAPE.format(plural=PLURALS[shape]), str(count))
    raise ValueError(f"unknown short-answer category {category!r}; known: {list(SHORT_CATEGORIES)}")


# --------------------------------------------------------------------------------------
# Prompts exactly as lmms-eval builds them (default model kwargs)
# --------------------------------------------------------------------------------------


def mme_question(question: str) -> str:
    """The benchmark split's form of a yes/no question (as in MME's own data)."""
    return question + MME_QUESTION_SUFFIX


def mme_prompt(question: str) -> str:
    """What ``mme_doc_to_text`` shows the model for an MME question (with or without suffix)."""
    return question.strip().replace(MME_QUESTION_SUFFIX, "") + SHORT_POST_PROMPT


def short_prompt(question: str) -> str:
    return question + SHORT_POST_PROMPT


def mmbench_prompt(question: str, options: tuple[str, ...], hint: str | None = None) -> str:
    """What ``mmbench_doc_to_text`` shows the model (``mmbench_en_dev``/``_static``)."""
    lines = [MMBENCH_OPTIONS_HEADER] + [f"{k}. {v}" for k, v in zip(LETTERS, options)]
    body = f"{question} " + "\n".join(lines)
    if hint:
        body = f"{hint} {body}"
    return f"{body}\n{MCQ_POST_PROMPT}"


def seed_prompt(question: str, options: tuple[str, ...]) -> str:
    """What ``seed_doc_to_text`` shows the model."""
    lines = [f"{k}. {v}" for k, v in zip(LETTERS, options)]
    return question + "\n" + "\n".join(lines) + MCQ_POST_PROMPT


def vocabulary_text() -> list[str]:
    """Every fixed string the world writes (placeholders and values come from the scene)."""
    return [
        MME_QUESTION_SUFFIX,
        SHORT_POST_PROMPT,
        MCQ_POST_PROMPT,
        MMBENCH_OPTIONS_HEADER,
        YES,
        NO,
        *LETTERS,
        *CAPTION_PROMPTS,
        *QUESTION_FORMS,
        "A a at the and",
        *SHAPES,
        *PLURALS.values(),
        *COLORS,
        *SIZES,
        *QUADRANTS,
        *NUMBER_WORDS,
    ]
