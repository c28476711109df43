"""Cached frozen-encoder features of the world's training images (optional, for fast training).

``features/<encoder>.safetensors`` under the assets folder holds one tensor ``features``
``[N, grid_size**2, feature_dim]`` (float16), computed by the registry's own vision tower
(`mage.vision.build_vision_tower`, so exactly what the model would compute), for the
training images in stage1.json order. Its metadata: ``ids`` (JSON list of image ids, e.g.
``"train-000042"``; image ``images/train/<id>.png``), ``encoder``, ``spec`` (JSON of the
encoder spec used: feature layer, CLS handling, size) and ``fingerprint`` = hash of (the
encoder's asset fingerprint, the spec, the world's content hash). `load_features` refuses a
file whose fingerprint does not match the current encoder weights and world.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mage.io import atomic_path
from mage.world.asset_recipes import AssetsError
from mage.world.assets import check_assets, resolve_world
from mage.world.generate import WorldPaths

FEATURES_FORMAT = 1


def _spec(assets_dir: Path, encoder_id: str):
    from mage.config import VisionConfig
    from mage.registry import resolve_encoder

    return resolve_encoder(VisionConfig(encoder=encoder_id), str(assets_dir))


def features_path(assets_dir: str | Path, encoder_id: str) -> Path:
    return Path(assets_dir) / "features" / f"{encoder_id}.safetensors"


def features_fingerprint(assets_dir: str | Path, encoder_id: str, world_hash: str) -> str:
    manifest = check_assets(assets_dir)
    if encoder_id not in manifest["components"]:
        raise AssetsError(
            f"{assets_dir} has no encoder {encoder_id!r} (has {sorted(manifest['components'])})"
        )
    spec = dataclasses.asdict(_spec(Path(assets_dir), encoder_id))
    spec = {k: v for k, v in spec.items() if k not in ("pretrained", "model_config")}  # paths
    data = {"format": FEATURES_FORMAT, "encoder": manifest["components"][encoder_id],
            "spec": spec, "world": world_hash}  # fmt: skip
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def cache_features(
    world: WorldPaths | str | Path, assets_dir: str | Path, encoder_id: str, batch_size: int = 256
) -> Path:
    """Compute and save the features of every training image (skipped when up to date)."""
    from mage.vision import build_vision_tower

    paths, info = resolve_world(world)
    assets_dir = Path(assets_dir)
    check_assets(assets_dir, paths)
    fingerprint = features_fingerprint(assets_dir, encoder_id, info["content_hash"])
    target = features_path(assets_dir, encoder_id)
    if target.is_file() and _metadata(target).get("fingerprint") == fingerprint:
        return target
    tower = build_vision_tower(_spec(assets_dir, encoder_id))
    records = json.loads(paths.stage1.read_text())
    chunks = []
    for i in range(0, len(records), batch_size):
        images = [
            Image.open(paths.root / r["image"]).convert("RGB") for r in records[i : i + batch_size]
        ]
        chunks.append(tower(tower.preprocess(images)).to(torch.float16))
    metadata = {
        "ids": json.dumps([r["id"] for r in records]),
        "encoder": encoder_id,
        "spec": json.dumps(dataclasses.asdict(tower.spec), default=str),
        "fingerprint": fingerprint,
    }
    with atomic_path(target) as tmp:
        save_file({"features": torch.cat(chunks).contiguous()}, str(tmp), metadata=metadata)
    return target


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def load_features(
    assets_dir: str | Path, encoder_id: str, world: WorldPaths | str | Path
) -> tuple[list[str], torch.Tensor]:
    """``(image ids, features [N, tokens, dim] float16)``; refuses stale or foreign caches."""
    _, info = resolve_world(world)
    path = features_path(assets_dir, encoder_id)
    if not path.is_file():
        raise AssetsError(f"no cached features {path}; run `mage-harness prepare --features`")
    expected = features_fingerprint(assets_dir, encoder_id, info["content_hash"])
    meta = _metadata(path)
    if meta.get("fingerprint") != expected:
        raise AssetsError(
            f"{path} was computed for other encoder weights, settings or world (fingerprint "
            "mismatch); delete it and run `mage-harness prepare --features` again"
        )
    with safe_open(str(path), framework="pt") as fh:
        features = fh.get_tensor("features")
    return json.loads(meta["ids"]), features
