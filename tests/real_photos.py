"""Real photos that installed packages ship (scikit-learn's ``china.jpg`` and ``flower.jpg``,
matplotlib's ``grace_hopper.jpg`` and its RGBA ``Minduka_Present_Blue_Pack.png``), stored in
the modes and formats real benchmark images come in: greyscale, RGBA, palette (with a
transparent entry), CMYK JPEG, 16-bit PNG, an EXIF-rotated JPEG and a large JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

MPL = Path(__import__("matplotlib").get_data_path()) / "sample_data"
SKLEARN = Path(__import__("sklearn.datasets").datasets.__file__).parent / "images"
SOURCES = {
    "china": SKLEARN / "china.jpg",
    "flower": SKLEARN / "flower.jpg",
    "hopper": MPL / "grace_hopper.jpg",
    "present": MPL / "Minduka_Present_Blue_Pack.png",  # shipped as RGBA
}
LARGE_SIDE = 5120  # above mage.images.MAX_SIDE (4096)


def source(name: str) -> Image.Image:
    with Image.open(SOURCES[name]) as image:
        image.load()
        return image


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def photo_bytes() -> dict[str, bytes]:
    """{name: encoded file}: one real photo per mode/format a benchmark may hold."""
    china, flower, hopper = source("china"), source("flower"), source("hopper")
    palette = china.quantize(64)
    palette.info["transparency"] = 0  # palette entry 0 is transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    big = china.resize((LARGE_SIDE, LARGE_SIDE * china.height // china.width), Image.BICUBIC)
    grey16 = Image.fromarray(np.asarray(hopper.convert("L")).astype(np.uint16) * 257)
    return {
        "rgb": _bytes(flower, "JPEG", quality=90),
        "grey": _bytes(hopper.convert("L"), "PNG"),
        "rgba": SOURCES["present"].read_bytes(),
        "palette": _bytes(palette, "PNG", transparency=0),
        "cmyk": _bytes(flower.convert("CMYK"), "JPEG", quality=90),
        "sixteen_bit": _bytes(grey16, "PNG"),
        "exif_rotated": _bytes(china.transpose(Image.ROTATE_90), "JPEG", exif=exif, quality=90),
        "large": _bytes(big, "JPEG", quality=80),
    }


def open_photo(data: bytes) -> Image.Image:
    """Decode lazily, as the datasets library hands images to lmms-eval's tasks."""
    return Image.open(io.BytesIO(data))
