"""The world's benchmark questions do not give their answers away: a "blind" guesser that
learns the most frequent answer of every question text (and option set) on one half of the
held-out questions stays at chance on the other half, per category. Before answers were
balanced, counting questions leaked (a "4" was never right, "0" was the usual count)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from mage.world import bench, text
from mage.world.generate import question_rng, scene_rng

N_IMAGES = 1_600  # per benchmark; no rendering, so this takes about a second


def _held_out(name: str) -> list[tuple[str, object, np.random.Generator, int | None]]:
    items = []
    for i in range(N_IMAGES):
        scene, target = bench.held_out_scene(name, i, scene_rng(0, name, i))
        items.append((bench.category_of(name, i), scene, question_rng(0, name, i), target))
    return items


def _blind_accuracy(pairs: list[tuple[object, str]]) -> float:
    """Fit the majority answer per key on the first half, score it on the second."""
    half = len(pairs) // 2
    seen: dict[object, Counter] = defaultdict(Counter)
    for key, answer in pairs[:half]:
        seen[key][answer] += 1
    rng = np.random.default_rng(0)
    hits = []
    for key, answer in pairs[half:]:
        if key in seen:
            guess = seen[key].most_common(1)[0][0]
        else:  # an unseen question: guess among its options
            options = key[1] if isinstance(key, tuple) else (text.YES, text.NO)
            guess = sorted(options)[int(rng.integers(len(options)))]
        hits.append(guess == answer)
    return float(np.mean(hits))


def test_mme_yes_no_questions_are_balanced():
    pairs: dict[str, list] = defaultdict(list)
    for category, scene, rng, _ in _held_out("mme"):
        pair = text.yes_no_pair(scene, category, rng)
        pairs[category] += [(pair.yes, text.YES), (pair.no, text.NO)]
    rng = np.random.default_rng(1)
    for category, rows in pairs.items():
        order = rng.permutation(len(rows))
        accuracy = _blind_accuracy([rows[i] for i in order])
        assert accuracy < 0.57, f"MME {category}: a blind guess scores {accuracy:.2f}"


@pytest.mark.parametrize("name", ["mmbench", "seedbench"])
def test_lettered_questions_are_balanced(name):
    pairs: dict[str, list] = defaultdict(list)
    answers: dict[str, Counter] = defaultdict(Counter)
    for category, scene, rng, target in _held_out(name):
        mcq = text.multiple_choice(scene, category, rng, target)
        correct = mcq.options[text.LETTERS.index(mcq.answer)]
        pairs[category].append(((mcq.question, frozenset(mcq.options)), correct))
        answers[category][correct] += 1
    for category, rows in pairs.items():
        accuracy = _blind_accuracy(rows)
        assert accuracy < 0.33, f"{name} {category}: a blind guess scores {accuracy:.2f}"
    # counting answers 0..3 are about equally common (the rarest scene, 3 of a shape, too)
    counts = answers["count"]
    assert set(counts) == {"0", "1", "2", "3"}
    assert min(counts.values()) > 0.17 * sum(counts.values())


def test_target_counts_come_from_the_image_stream():
    scene, target = bench.held_out_scene("seedbench", 3, scene_rng(0, "seedbench", 3))
    assert bench.category_of("seedbench", 3) == "count"
    assert target in text.shape_counts(scene).values()
    again = bench.held_out_scene("seedbench", 3, scene_rng(0, "seedbench", 3))
    assert again == (scene, target)
    assert bench.held_out_scene("mme", 1, scene_rng(0, "mme", 1))[1] is None
