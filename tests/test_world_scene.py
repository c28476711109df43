"""Scenes of the shapes world: sampling invariants and deterministic, faithful rendering."""

from __future__ import annotations

import numpy as np
import pytest

from mage.world.scene import (
    BACKGROUND,
    COLORS,
    QUADRANTS,
    SHAPES,
    SIZES,
    Scene,
    WorldObject,
    render_scene,
    sample_scene,
)


def test_constants():
    assert SHAPES == ("circle", "square", "triangle", "cross")
    assert set(COLORS) == {"red", "green", "blue", "yellow", "purple", "orange"}
    assert SIZES == ("small", "large")
    assert QUADRANTS == ("top left", "top right", "bottom left", "bottom right")


def test_sampled_scenes_follow_the_rules():
    counts = set()
    for i in range(300):
        scene = sample_scene(np.random.default_rng([7, i]))
        counts.add(len(scene.objects))
        quadrants = [o.quadrant for o in scene.objects]
        assert len(set(quadrants)) == len(quadrants)
        assert quadrants == sorted(quadrants, key=QUADRANTS.index)  # caption order
        pairs = [(o.color, o.shape) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)
    assert counts == {1, 2, 3}


def test_sampling_is_deterministic():
    a = sample_scene(np.random.default_rng([3, 5]))
    b = sample_scene(np.random.default_rng([3, 5]))
    assert a == b
    assert Scene.from_dict(a.to_dict()) == a


def test_render_is_deterministic_and_draws_each_object_in_its_quadrant():
    scene = Scene(
        (
            WorldObject("square", "red", "large", "top left"),
            WorldObject("circle", "blue", "large", "bottom right"),
        ),
        jitter_seed=11,
    )
    first, second = render_scene(scene), render_scene(scene)
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    pixels = np.asarray(first).astype(int)
    for obj, (y, x) in ((scene.objects[0], (16, 16)), (scene.objects[1], (48, 48))):
        assert np.abs(pixels[y, x] - np.array(COLORS[obj.color])).max() <= 12
    assert tuple(pixels[48, 16]) == BACKGROUND  # empty bottom-left quadrant
    other_jitter = render_scene(Scene(scene.objects, jitter_seed=12))
    assert not np.array_equal(np.asarray(other_jitter), pixels)


@pytest.mark.parametrize(
    "objects, message",
    [
        ((WorldObject("circle", "red", "small", "top left"),) * 2, "share a quadrant"),
        (
            (
                WorldObject("circle", "red", "small", "top left"),
                WorldObject("circle", "red", "large", "top right"),
            ),
            "pair occurs twice",
        ),
        ((), "1-4 objects"),
    ],
)
def test_invalid_scenes_are_refused(objects, message):
    with pytest.raises(ValueError, match=message):
        Scene(objects)


def test_unknown_attribute_names_the_field():
    with pytest.raises(ValueError, match="WorldObject.color='pink'"):
        WorldObject("circle", "pink", "small", "top left")
