"""Generate a synthetic shapes world on disk: images, training JSONs and benchmark splits.

``generate_world(out_dir, seed, size)`` writes, atomically (the whole folder appears at once)::

    world.json            seed, size, counts, content hash over every other file, and the
                          hash of the training inputs alone (images, stage1/stage2.json)
    scenes.json           every image's scene (id -> split, objects, jitter seed)
    images/train/*.png    training images (64 x 64)
    stage1.json           captions (LLaVA format)
    stage2.json           instruction mix (LLaVA format; see mage.world.samples)
    tools_train.json, tools_eval.json, tools_images/
                          tool-calling samples (mage.tools.data; see add_tool_data)
    bench/{mme,mmbench,seedbench}/   DatasetDict.save_to_disk, official schemas and splits

Determinism: image ``i`` of split ``s`` takes its scene from its own stream
``default_rng([seed, SPLIT_CODES[s], i, 0])`` and its questions from ``[..., 1]`` (stage-1
prompts from ``[..., 2]``), so adding a question kind never moves an image, and a smaller
world's training images are a prefix of a larger one's. Held-out images come from other
splits' streams, so they are different images from the training ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from mage.io import atomic_path, atomic_write_json, check_output_dir
from mage.world import bench, samples
from mage.world.progress import progress_bar
from mage.world.scene import render_scene, sample_scene

# Bumped whenever the generator's output changes (2: answers balanced against blind guessing;
# 3: tool-calling phrasings held out of training), so that cached worlds, and the assets
# prepared for them, are rebuilt.
FORMAT_VERSION = 3
IMAGE_SIZE = 64
SPLIT_CODES = {"train": 0, "mme": 1, "mmbench": 2, "seedbench": 3}
HASH_EXCLUDE = ("world.json",)
# what the world's "pretrained" assets are trained on (mage.world.assets): their fingerprints
# follow these files only, so new benchmark splits or tool data keep the prepared assets
TRAINING_INPUTS = ("images/train", "stage1.json", "stage2.json")


@dataclass(frozen=True)
class WorldSize:
    n_train: int  # training images
    n_bench: int  # held-out images per benchmark
    stage2_per_image: int  # stage-2 instructions per training image
    n_tool_train: int  # tool-calling samples (mage.tools.data)
    n_tool_eval: int


WORLD_SIZES = {
    "test": WorldSize(n_train=96, n_bench=12, stage2_per_image=5, n_tool_train=32, n_tool_eval=16),
    "demo": WorldSize(
        n_train=10_000, n_bench=500, stage2_per_image=5, n_tool_train=2_000, n_tool_eval=200
    ),
}


@dataclass(frozen=True)
class WorldPaths:
    """Where everything of a generated world lives (paths under ``root``)."""

    root: Path
    world_json: Path = field(init=False)
    scenes: Path = field(init=False)
    images: Path = field(init=False)
    stage1: Path = field(init=False)
    stage2: Path = field(init=False)
    tools_train: Path = field(init=False)
    tools_eval: Path = field(init=False)
    bench: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        root = Path(self.root)
        object.__setattr__(self, "root", root)
        for name, rel in (
            ("world_json", "world.json"),
            ("scenes", "scenes.json"),
            ("images", "images"),
            ("stage1", "stage1.json"),
            ("stage2", "stage2.json"),
            ("tools_train", "tools_train.json"),
            ("tools_eval", "tools_eval.json"),
        ):
            object.__setattr__(self, name, root / rel)
        object.__setattr__(self, "bench", {b: root / "bench" / b for b in bench.BUILDERS})

    def info(self) -> dict:
        """The parsed world.json (seed, size, counts, content_hash)."""
        return read_world_info(self.root)


class WorldError(ValueError):
    """A world folder is missing, incomplete or of another format; the message says what to do."""


def scene_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], i, 0])


def question_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], i, 1])


def prompt_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], i, 2])


def image_id(split: str, i: int) -> str:
    return f"{split}-{i:06d}"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def generate_world(
    out_dir: str | Path, seed: int, size: str = "demo", progress: bool = False
) -> WorldPaths:
    """Write a world to ``out_dir`` (replacing it atomically) and return its paths.

    ``out_dir`` must be new, empty or a world (`mage.io.PathError` otherwise): a folder of
    someone else's files is never replaced."""
    if size not in WORLD_SIZES:
        raise WorldError(f"unknown world size {size!r}; choose one of {sorted(WORLD_SIZES)}")
    if not isinstance(seed, int) or seed < 0:
        raise WorldError(f"seed must be a non-negative integer, got {seed!r}")
    spec = WORLD_SIZES[size]
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "a world folder", is_world_dir, replaces=True)
    with atomic_path(out_dir) as tmp, progress_bar(progress) as bar:
        paths = WorldPaths(tmp)
        scenes: dict[str, dict] = {}
        stage1, stage2 = _training_split(paths, seed, spec, scenes, bar)
        atomic_write_json(paths.stage1, stage1)
        atomic_write_json(paths.stage2, stage2)
        counts = {"train_images": spec.n_train, "stage1": len(stage1), "stage2": len(stage2)}
        for name, builder in bench.BUILDERS.items():
            items = _held_out(name, seed, spec.n_bench, scenes, bar)
            dd = builder(items)
            _save_quietly(dd, paths.bench[name])
            counts[f"{name}_images"] = len(items)
            counts[f"{name}_rows"] = sum(len(split) for split in dd.values())
        add_tool_data(paths, seed, spec)
        atomic_write_json(paths.scenes, scenes)
        info = {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "size": size,
            "image_size": IMAGE_SIZE,
            "counts": counts,
            "content_hash": content_hash(tmp),
            "training_hash": content_hash(tmp, TRAINING_INPUTS),
        }
        atomic_write_json(paths.world_json, info)
    return WorldPaths(out_dir)


def add_tool_data(paths: WorldPaths, seed: int, spec: WorldSize) -> None:
    """Tool-calling samples (mage.tools.data), written before the content hash is taken:
    ``tools_train.json``, ``tools_eval.json`` and ``tools_images/``."""
    from mage.tools.data import generate_world_tool_data

    generate_world_tool_data(paths.root, seed, spec.n_tool_train, spec.n_tool_eval)


def _training_split(paths: WorldPaths, seed: int, spec: WorldSize, scenes: dict, bar):
    image_dir = paths.images / "train"
    image_dir.mkdir(parents=True, exist_ok=True)
    stage1, stage2 = [], []
    task = bar.add_task("render + write training images", total=spec.n_train) if bar else None
    for i in range(spec.n_train):
        iid = image_id("train", i)
        scene = sample_scene(scene_rng(seed, "train", i))
        rel = f"images/train/{iid}.png"
        render_scene(scene, IMAGE_SIZE).save(paths.root / rel, format="PNG")
        scenes[iid] = {"split": "train", **scene.to_dict()}
        stage1.append(samples.stage1_record(iid, rel, scene, prompt_rng(seed, "train", i)))
        stage2 += samples.stage2_records(
            iid, rel, scene, question_rng(seed, "train", i), spec.stage2_per_image
        )
        if bar:
            bar.advance(task)
    return stage1, stage2


def _held_out(name: str, seed: int, n: int, scenes: dict, bar) -> list[bench.HeldOut]:
    items = []
    task = bar.add_task(f"render {name} images", total=n) if bar else None
    for i in range(n):
        iid = image_id(name, i)
        scene, target = bench.held_out_scene(name, i, scene_rng(seed, name, i))
        png = _png(render_scene(scene, IMAGE_SIZE))
        scenes[iid] = {"split": name, **scene.to_dict()}
        items.append(bench.HeldOut(iid, i, scene, png, question_rng(seed, name, i), target))
        if bar:
            bar.advance(task)
    return items


def _save_quietly(dd: datasets.DatasetDict, path: Path) -> None:
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dd.save_to_disk(str(path))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def content_hash(root: str | Path, only: tuple[str, ...] | None = None) -> str:
    """SHA-256 over every file's relative path and bytes (world.json excluded), or over the
    files and folders named in ``only`` (e.g. `TRAINING_INPUTS`)."""
    root = Path(root)
    digest = hashlib.sha256()

    def wanted(rel: str) -> bool:
        if only is None:
            return rel not in HASH_EXCLUDE
        return any(rel == o or rel.startswith(o + "/") for o in only)

    files = sorted(
        p for p in root.rglob("*") if p.is_file() and wanted(p.relative_to(root).as_posix())
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def is_world_dir(path: str | Path) -> bool:
    """A folder `generate_world` wrote (it holds world.json)."""
    return (Path(path) / "world.json").is_file()


def read_world_info(root: str | Path) -> dict:
    """world.json of a generated world, with a clear error when it is not one."""
    path = Path(root) / "world.json"
    if not path.is_file():
        raise WorldError(
            f"{root} is not a generated world (no world.json); create one with "
            "`mage-harness data synth DIR --seed N`"
        )
    info = json.loads(path.read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise WorldError(
            f"{path}: world format {info.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; regenerate it with `mage-harness data synth`"
        )
    return info


def load_world(root: str | Path) -> WorldPaths:
    """The paths of an existing world (checked to be one)."""
    read_world_info(root)
    return WorldPaths(Path(root))


def default_world_dir() -> Path:
    """``$MAGE_WORLD_DIR``, else ``~/.cache/mage-harness/world``."""
    env = os.environ.get("MAGE_WORLD_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mage-harness" / "world"


def ensure_world(root: str | Path, seed: int = 0, size: str = "demo", progress: bool = False):
    """Reuse the world at ``root`` if it has this seed, size and format, else generate it
    there (a world cached by an older generator is replaced)."""
    root = Path(root)
    if (root / "world.json").is_file():
        info = json.loads((root / "world.json").read_text())
        wanted = {"format_version": FORMAT_VERSION, "seed": seed, "size": size}
        if all(info.get(key) == value for key, value in wanted.items()):
            return WorldPaths(root)
    return generate_world(root, seed, size, progress=progress)
