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


MME_CATEGORIES = ("existence", "count", "position", "color", "posters", "celebrity", "scene")


def write_photo_benchmarks(out: Path) -> dict[str, int]:
    """The photos as MME (test), MMBench (en dev, with circular copies) and SEED-Bench (test)
    ``save_to_disk`` folders in the official schemas, with a ``benchmarks.json`` recording
    their rows (as `mage-harness data benchmarks` would). Returns {benchmark: rows}."""
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage

    from harness.benchmarks import write_manifest
    from mage.world.schemas import SEED_FEATURES

    photos = photo_bytes()
    stored = {name: {"bytes": data, "path": None} for name, data in photos.items()}
    mme = []
    for i, (name, image) in enumerate(stored.items()):
        category = MME_CATEGORIES[i % len(MME_CATEGORIES)]
        for answer, word in (("Yes", "a"), ("No", "no")):
            mme.append(
                dict(
                    question_id=f"{category}/{name}.jpg",
                    image=image,
                    question=f"Is there {word} {name} here? Please answer yes or no.",
                    answer=answer,
                    category=category,
                )
            )
    text = {c: Value("string") for c in ("question_id", "question", "answer", "category")}
    DatasetDict(
        test=Dataset.from_list(mme, features=Features(image=HFImage(), **text))
    ).save_to_disk(out / "mme")
    options = ["a flower", "a temple", "a person", "a present"]
    mmbench = []
    for i, (name, image) in enumerate(stored.items()):
        for copy in range(2):  # the question and one option-shifted copy
            shifted = options[copy:] + options[:copy]
            mmbench.append(
                {
                    "index": i + copy * 1_000_000,
                    "question": f"What does the photo {name} show?",
                    "hint": None,
                    **dict(zip("ABCD", shifted)),
                    "answer": "ABCD"[shifted.index(options[i % 4])],
                    "category": "image_topic",
                    "image": image,
                    "source": "real_photos",
                    "L2-category": "coarse_perception",
                    "comment": None,
                    "split": "dev",
                }
            )
    strings = ["question", "hint", "A", "B", "C", "D", "answer", "category", "source"]
    features = Features(
        {
            "index": Value("int64"),
            **{c: Value("string") for c in strings},
            "image": HFImage(),
            "L2-category": Value("string"),
            "comment": Value("string"),
            "split": Value("string"),
        }
    )
    DatasetDict(dev=Dataset.from_list(mmbench, features=features)).save_to_disk(out / "mmbench")
    seed = [
        dict(
            answer="ABCD"[i % 4],
            **{f"choice_{c}": f"{c} {name}" for c in "abcd"},
            data_id=f"{name}.jpg",
            data_type="image",
            question=f"Which describes {name}?",
            question_id=f"q{i}",
            question_type_id=1 + i % 9,
            image=[image],
            segment=None,
        )
        for i, (name, image) in enumerate(stored.items())
    ]
    DatasetDict(test=Dataset.from_list(seed, features=SEED_FEATURES)).save_to_disk(
        out / "seedbench"
    )
    rows = {"mme": len(mme), "mmbench": len(mmbench), "seedbench": len(seed)}
    images = {"seedbench": len(seed)}
    write_manifest(
        out,
        {
            b: {"rows": n, "image_rows": images.get(b), "source": "real_photos"}
            for b, n in rows.items()
        },
    )
    return rows
