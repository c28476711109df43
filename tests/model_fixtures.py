"""Small builders shared by the model and training tests: a few LLaVA-format records with
real PNG images on disk, using words of the synthetic world's vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}


def write_tiny_dataset(root: Path, n: int = 8, size: int = 32) -> Path:
    """``n`` images of one coloured square each, with caption records; returns the JSON path."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        image = Image.new("RGB", (size, size), (128, 128, 128))
        ImageDraw.Draw(image).rectangle(
            [size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=COLORS[color]
        )
        image.save(root / f"img{i}.png")
        records.append(
            {
                "id": f"r{i}",
                "image": f"img{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the square?"},
                    {"from": "gpt", "value": color},
                ],
            }
        )
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path
