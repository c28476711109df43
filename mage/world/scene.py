"""Scenes of the synthetic shapes world and how they are drawn.

A scene holds one to three coloured shapes, each in its own quadrant of a grey square image;
every (colour, shape) pair occurs at most once per image, so "the red circle" always names
one object. `sample_scene` draws a scene from a numpy Generator; `render_scene` draws it
deterministically: the small colour and position jitter comes from the scene's own
``jitter_seed``, so the same scene always gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SIZES: tuple[str, ...] = ("small", "large")
# Quadrant names as they appear in text ("the red circle at the top left"); also the
# canonical order of objects in a caption.
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

BACKGROUND = (128, 128, 128)
COLOR_JITTER = 12  # max absolute change per RGB channel
POSITION_JITTER = 0.04  # max shift of an object's centre, as a fraction of the image side
# Half-extent of a shape, as a fraction of the image side (a quadrant is 0.5 wide).
SIZE_EXTENT = {"small": 0.11, "large": 0.19}
MAX_OBJECTS = 3


@dataclass(frozen=True)
class WorldObject:
    """One shape in a scene; every attribute is one of the module constants."""

    shape: str
    color: str
    size: str
    quadrant: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, tuple(COLORS)),
            ("size", self.size, SIZES),
            ("quadrant", self.quadrant, QUADRANTS),
        ):
            if value not in allowed:
                raise ValueError(f"WorldObject.{name}={value!r} is not one of {list(allowed)}")

    @property
    def phrase(self) -> str:
        """``"large red circle"``: the words that name the object in captions and prompts."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects in quadrant order; ``jitter_seed`` fixes the rendering's small random jitter."""

    objects: tuple[WorldObject, ...]
    jitter_seed: int = 0

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: QUADRANTS.index(o.quadrant)))
        object.__setattr__(self, "objects", objects)
        if not 1 <= len(objects) <= len(QUADRANTS):
            raise ValueError(f"a scene needs 1-{len(QUADRANTS)} objects, got {len(objects)}")
        quadrants = [o.quadrant for o in objects]
        if len(set(quadrants)) != len(quadrants):
            raise ValueError(f"two objects share a quadrant: {quadrants}")
        pairs = [(o.color, o.shape) for o in objects]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"a (color, shape) pair occurs twice in one scene: {pairs}")

    def at(self, quadrant: str) -> WorldObject | None:
        """The object in ``quadrant``, or None when that quadrant is empty."""
        return next((o for o in self.objects if o.quadrant == quadrant), None)

    def find(self, color: str, shape: str) -> WorldObject | None:
        """The object with this colour and shape, or None."""
        return next((o for o in self.objects if o.color == color and o.shape == shape), None)

    def to_dict(self) -> dict:
        return {
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "quadrant": o.quadrant}
                for o in self.objects
            ],
            "jitter_seed": self.jitter_seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(tuple(WorldObject(**o) for o in data["objects"]), int(data["jitter_seed"]))


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    """A random scene: 1..max_objects objects in distinct quadrants, unique (colour, shape)."""
    n = int(rng.integers(1, max_objects + 1))
    quadrants = rng.choice(len(QUADRANTS), size=n, replace=False)
    pairs = rng.choice(len(COLORS) * len(SHAPES), size=n, replace=False)
    colors = list(COLORS)
    objects = []
    for q, pair in zip(quadrants, pairs):
        color, shape = colors[int(pair) // len(SHAPES)], SHAPES[int(pair) % len(SHAPES)]
        size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append(WorldObject(shape, color, size, QUADRANTS[int(q)]))
    return Scene(tuple(objects), jitter_seed=int(rng.integers(2**31)))


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene on a grey ``image_size`` square; deterministic for a given scene."""
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to draw shapes (use >= 16)")
    rng = np.random.default_rng(scene.jitter_seed)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        q = QUADRANTS.index(obj.quadrant)
        centre = np.array([0.25 + 0.5 * (q % 2), 0.25 + 0.5 * (q // 2)])
        centre = centre + rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
        base = np.array(COLORS[obj.color])
        rgb = np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
        _draw_shape(
            draw,
            obj.shape,
            centre * image_size,
            SIZE_EXTENT[obj.size] * image_size,
            tuple(int(c) for c in rgb),
        )
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre, half: float, fill) -> None:
    x, y = float(centre[0]), float(centre[1])
    if shape == "circle":
        draw.ellipse([x - half, y - half, x + half, y + half], fill=fill)
    elif shape == "square":
        s = half * 0.85
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif shape == "triangle":
        draw.polygon(
            [(x, y - half), (x - half, y + half * 0.8), (x + half, y + half * 0.8)], fill=fill
        )
    elif shape == "cross":
        t = half * 0.35
        draw.rectangle([x - half, y - t, x + half, y + t], fill=fill)
        draw.rectangle([x - t, y - half, x + t, y + half], fill=fill)
    else:  # pragma: no cover - WorldObject validates shapes
        raise ValueError(f"unknown shape {shape!r}")
