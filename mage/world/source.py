"""The synthetic world as a training and evaluation data source.

Resolved from plain values (size, seed, folders), not from a sweep spec, so the model package
never imports the harness: `prepare_world_source` generates the world (once, under a file lock),
prepares its pretrained assets when the config's encoder or LLM lives in ``{assets}`` (once,
locked), fills ``data_dir`` / ``assets_dir`` and the default stage data into the config, and
returns what a trial needs to train and score on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mage.config import DataSource, MageConfig


@dataclass
class WorldSource:
    """A prepared world: the config pointed at it, where its benchmarks are, its fingerprint."""

    config: MageConfig  # with data_dir / assets_dir and default stage data filled in
    eval_dir: str  # benchmark folders (mme/, mmbench/, seedbench/)
    tools_json: str  # tool-calling eval records
    fingerprint: str  # world content (and assets key): part of every stage's cache key
    record: dict[str, Any] = field(default_factory=dict)  # what the data is, for provenance


def world_dir(size: str, seed: int, explicit: str | None = None) -> Path:
    """``explicit``, else ``<size>-seed<seed>`` under $MAGE_WORLD_DIR or the user cache."""
    from mage.world.generate import default_world_dir

    return Path(explicit) if explicit else default_world_dir() / f"{size}-seed{seed}"


def needs_assets(config: MageConfig) -> bool:
    """Whether the config's encoder or LLM is one of the world's prepared assets."""
    from mage import registry

    enc = registry.ENCODERS.get(config.vision.encoder)
    llm = registry.LLMS.get(config.llm.name)
    parts = [enc.pretrained, enc.model_config] if enc else []
    parts += [llm.name_or_path] if llm else []
    return any(p and "{assets}" in p for p in parts)


def assets_dir_for(recipe: str, seed: int, explicit: str | None = None) -> Path:
    """``explicit`` (or $MAGE_ASSETS_DIR) as is, else a cache folder named by the recipe hash."""
    from mage.registry import default_assets_dir
    from mage.world.asset_recipes import assets_cache_name

    explicit = explicit or os.environ.get("MAGE_ASSETS_DIR")
    if explicit:
        return Path(explicit)
    return Path(default_assets_dir()) / assets_cache_name(recipe, seed)


def _digest(data: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare_world_source(
    config: MageConfig,
    size: str,
    seed: int,
    recipe: str | None = None,
    world_folder: str | None = None,
    assets_folder: str | None = None,
    eval_folder: str | None = None,
) -> WorldSource:
    """Ensure the world (and, if the config needs them, its assets) exist; point the config at
    them. Shared between concurrent trials through file locks."""
    from filelock import FileLock

    from mage.world.generate import ensure_world

    root = world_dir(size, seed, world_folder)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        world = ensure_world(root, seed, size)
    update: dict[str, Any] = {"data_dir": str(world.root)}
    for stage, name in (("stage1", "stage1.json"), ("stage2", "stage2.json")):
        if not getattr(config, stage).data:
            source = DataSource(path="{data}/" + name, image_root="{data}")
            update[stage] = getattr(config, stage).model_copy(update={"data": [source]})
    fingerprint = world.info()["content_hash"]
    if needs_assets(config):
        from mage.world.assets import prepare_assets

        assets = assets_dir_for(recipe or size, seed, assets_folder or config.assets_dir)
        assets.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(assets) + ".lock"):
            prepare_assets(world, assets, recipe or size, progress=False)
        update["assets_dir"] = str(assets)
        # stages trained on other assets are not reused
        manifest = json.loads((assets / "assets.json").read_text())
        fingerprint = _digest({"world": fingerprint, "assets": manifest["key"]})
    record = {"world": world.info(), "assets_dir": update.get("assets_dir")}
    return WorldSource(
        config=config.model_copy(update=update),
        eval_dir=eval_folder or str(world.root / "bench"),
        tools_json=str(world.root / "tools_eval.json"),
        fingerprint=fingerprint,
        record=record,
    )
