"""Best-effort reading of a world Scene back from a picture's pixels.

Used where the scene behind a picture is not known (the chat command edits a PNG file) and
for round-trip fidelity (draw the call's picture, read it back, compare with the request).
Per quadrant: pixels far from the background colour are the object; its colour is the
nearest colour of the world's palette; its largest connected blob, cropped to its bounding
box, is compared (intersection over union, centres aligned) with the world renderer's own
drawing of every (shape, size); the best match wins. Palette and shape templates come from
`render_scene` itself, so nothing here hard-codes the world's look. It is reliable on the
world's renders (colour and position jitter included) and approximate on anything else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from mage.tools.scene_text import make_scene, quadrant_words, world

BACKGROUND_DISTANCE = 60  # summed |RGB| difference that separates an object from the background
COLOR_DISTANCE = 90  # ... and a pixel of the object's colour from its palette colour


def _quadrant_box(quadrant: str, image_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a quadrant, from its words (left/right, top/bottom)."""
    vertical, horizontal = quadrant_words(quadrant)
    half = image_size // 2
    left = half if horizontal == "right" else 0
    top = half if vertical == "bottom" else 0
    return left, top, left + half, top + half


def _array(image: Image.Image, image_size: int) -> np.ndarray:
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.int32)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask``, cropped to its bounding box."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros((0, 0), dtype=bool)
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    blob = labels == int(np.argmax(sizes)) + 1
    rows, cols = np.nonzero(blob)
    return blob[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _single(obj: Any, image_size: int) -> np.ndarray:
    w = world()
    return _array(w.render_scene(w.Scene((obj,)), image_size=image_size), image_size)


@lru_cache(maxsize=4)
def _references(image_size: int):
    """(background RGB, {color: RGB}, {(shape, size): blob}) drawn by the world's renderer."""
    w = world()
    first, last = w.QUADRANTS[0], w.QUADRANTS[-1]
    probe = _single(w.WorldObject(w.SHAPES[0], list(w.COLORS)[0], w.SIZES[-1], first), image_size)
    left, top, right, bottom = _quadrant_box(last, image_size)
    background = np.median(probe[top:bottom, left:right].reshape(-1, 3), axis=0)
    palette, blobs = {}, {}
    for color in w.COLORS:
        pixels = _single(w.WorldObject(w.SHAPES[0], color, w.SIZES[-1], first), image_size)
        mask = np.abs(pixels - background).sum(-1) > BACKGROUND_DISTANCE
        palette[color] = np.median(pixels[mask], axis=0)
    for shape in w.SHAPES:
        for size in w.SIZES:
            pixels = _single(w.WorldObject(shape, list(w.COLORS)[0], size, first), image_size)
            blobs[shape, size] = _largest_blob(
                np.abs(pixels - background).sum(-1) > BACKGROUND_DISTANCE
            )
    return background, palette, blobs


def _centred(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), dtype=bool)
    top, left = (height - mask.shape[0]) // 2, (width - mask.shape[1]) // 2
    canvas[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
    return canvas


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Best IoU of two cropped masks with centres aligned (shifted by up to one pixel)."""
    height, width = max(a.shape[0], b.shape[0]) + 2, max(a.shape[1], b.shape[1]) + 2
    a, b = _centred(a, height, width), _centred(b, height, width)  # 1-pixel margin: roll is safe
    best = 0.0
    for shift in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        moved = np.roll(b, shift, axis=(0, 1))
        union = np.logical_or(a, moved).sum()
        best = max(best, float(np.logical_and(a, moved).sum() / max(union, 1)))
    return best


def scene_from_image(image: Image.Image, image_size: int = 64) -> Any:
    """The world Scene that best explains ``image``, quadrant by quadrant."""
    w = world()
    pixels = _array(image, image_size)
    background, palette, blobs = _references(image_size)
    min_side = max(3, image_size // 16)
    objects = []
    for quadrant in w.QUADRANTS:
        left, top, right, bottom = _quadrant_box(quadrant, image_size)
        crop = pixels[top:bottom, left:right]
        foreground = np.abs(crop - background).sum(-1) > BACKGROUND_DISTANCE
        if foreground.sum() < min_side * min_side:
            continue
        mean = crop[foreground].mean(axis=0)
        color = min(palette, key=lambda c: float(np.abs(palette[c] - mean).sum()))
        blob = _largest_blob(np.abs(crop - palette[color]).sum(-1) < COLOR_DISTANCE)
        if min(blob.shape) < min_side:
            continue  # a sliver of a neighbour's shape, not an object
        shape, size = max(blobs, key=lambda key: _iou(blob, blobs[key]))
        objects.append(w.WorldObject(shape, color, size, quadrant))
    return make_scene(objects)
