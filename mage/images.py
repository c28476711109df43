"""Any decoded image -> the 8-bit RGB picture a vision tower sees, once, the same way everywhere.

Training data, evaluation and `mage.vision_tower.VisionTower.preprocess` all go through these
functions, so a photo is converted the same way whether it is learned from or scored:

- `to_rgb(image, background)`: the call for a decoded PIL image of any mode. EXIF orientation
  is applied (phones store rotated pixels plus a tag); transparency (RGBA, LA, palette with a
  transparent entry) is composited on ``background`` (white by default, stated in the
  evaluation record) rather than dropped, as ``convert("RGB")`` would; 16-bit and 32-bit
  integer greyscale (``I;16``, ``I``) are scaled from 0..65535 to 0..255 (``convert`` clips
  them, which turns most 16-bit photos white); float images (``F``) are clipped to 0..255;
  CMYK, YCbCr, LAB, HSV, 1-bit and greyscale go through Pillow's own conversion. Very large
  images (longer side above `MAX_SIDE`) are reduced by an integer box filter first; a JPEG
  that is not decoded yet is decoded at a reduced scale (``Image.draft``), which saves the
  full-size decode.
- `expand2square(image, background_color)`: LLaVA's padding of a non-square image to a
  square, centred, filled with the tower's mean colour (LLaVA-1.5 ``image_aspect_ratio:
  pad``), before the tower's own resize.
- `prepare_image(image, aspect, fill)`: both, for a tower: ``aspect="pad"`` pads as LLaVA-1.5
  does; ``"crop"`` leaves it to the tower's transform (resize the shorter side, centre crop:
  CLIP's own preprocessing).
- `open_image(path)`: decode a file and `to_rgb` it.
- `truncated_images_refused()`: a cut-off file fails to decode while inside, whatever
  lmms-eval set for the whole process (training data and `mage-harness data check`).

An image that is already 8-bit RGB, upright and not larger than `MAX_SIDE` comes back
unchanged (pixel for pixel), so the synthetic world's PNGs are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

WHITE = (255, 255, 255)
MAX_SIDE = 4096  # longer side above this is box-reduced first (a 336 px tower gains nothing)
ASPECTS = ("pad", "crop")
ORIENTATION = 0x0112  # the EXIF tag
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _reduce_large(image: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(image.size) <= max_side:
        return image
    if image.mode in ("P", "1") or image.mode in _SIXTEEN_BIT - {"I"}:
        return image  # Pillow cannot reduce these: `to_rgb` reduces after converting
    if image.format == "JPEG" and getattr(image, "fp", None) is not None:
        # Not decoded yet: let libjpeg decode at 1/2, 1/4 or 1/8 scale (no effect once loaded).
        scale = max_side / max(image.size)
        image.draft(image.mode, tuple(max(1, math.ceil(s * scale)) for s in image.size))
    factor = math.ceil(max(image.size) / max_side)
    return image.reduce(factor) if factor > 1 else image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(values / 257.0, 0, 255).round().astype(np.uint8)  # 65535 -> 255
    return Image.fromarray(scaled, mode="L")


def to_rgb(
    image: Image.Image, background: tuple[int, int, int] = WHITE, max_side: int | None = MAX_SIDE
) -> Image.Image:
    """A decoded image of any mode -> upright 8-bit RGB; transparency composited on
    ``background``. Returns ``image`` itself when there is nothing to change."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"to_rgb needs a PIL image, got {type(image).__name__}")
    image = _reduce_large(image, max_side)
    if image.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    return _reduce_large(_converted(image, background), max_side)  # P, 1, I;16: now


def _converted(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        return _sixteen_bit_to_l(image).convert("RGB")
    if mode == "F":
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return Image.fromarray(values, mode="L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("PA", "LA", "La", "RGBa"):
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "RGBA":
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's own conversion


def expand2square(image: Image.Image, background_color: Any) -> Image.Image:
    """LLaVA's ``expand2square``: pad the shorter side to a centred square of
    ``background_color`` (LLaVA passes the image processor's mean colour)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def parse_color(value: Any, what: str = "colour") -> tuple[int, int, int]:
    """``"white"``, ``"black"``, ``"R,G,B"`` or a 3-sequence of 0-255 -> an RGB triple."""
    named = {"white": WHITE, "black": (0, 0, 0)}
    if isinstance(value, str):
        value = named.get(value.strip().lower()) or value.split(",")
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"{what} must be white, black or R,G,B (0-255), got {value!r}")
    return rgb  # type: ignore[return-value]


def mean_color(mean: Any) -> tuple[int, int, int]:
    """A normalisation mean (0-1 floats, as image processors give it) as an RGB fill colour,
    exactly as LLaVA computes it: ``tuple(int(x * 255) for x in image_mean)``."""
    values = tuple(float(x) for x in mean)
    if len(values) != 3:
        raise ValueError(f"mean_color needs three channel means, got {values}")
    return tuple(int(x * 255) for x in values)  # type: ignore[return-value]


def prepare_image(
    image: Image.Image,
    aspect: str = "pad",
    fill: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] = WHITE,
) -> Image.Image:
    """`to_rgb`, then LLaVA's square padding when ``aspect == "pad"`` (``"crop"``: the
    tower's own resize-and-centre-crop decides)."""
    if aspect not in ASPECTS:
        raise ValueError(f"image aspect must be one of {ASPECTS}, got {aspect!r}")
    image = to_rgb(image, background)
    return expand2square(image, fill) if aspect == "pad" else image


def open_image(path: str | Path, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode an image file and convert it with `to_rgb` (the file is closed afterwards)."""
    with Image.open(path) as image:
        rgb = to_rgb(image, background)
        if rgb is image:  # still backed by the file: load before it is closed
            rgb = image.copy()
        return rgb


@contextmanager
def truncated_images_refused() -> Iterator[None]:
    """PIL refuses a cut-off file while inside. lmms-eval sets PIL's process-wide
    ``LOAD_TRUNCATED_IMAGES`` when it is imported, after which a truncated image decodes
    (padded grey) instead of failing, so a check in that process would pass it."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
