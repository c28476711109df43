"""Cached encoder features: computed by the registry's tower, fingerprint-checked on load."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mage import vision
from mage.world.asset_recipes import AssetsError
from mage.world.generate import generate_world


def test_cached_features_match_the_tower_and_refuse_another_world(
    test_world, test_assets, tmp_path
):
    from mage.world.features import cache_features, features_path, load_features

    path = cache_features(test_world, test_assets, "world-vit")
    assert path == features_path(test_assets, "world-vit")
    mtime = path.stat().st_mtime_ns
    assert cache_features(test_world, test_assets, "world-vit").stat().st_mtime_ns == mtime
    ids, features = load_features(test_assets, "world-vit", test_world)
    records = json.loads(test_world.stage1.read_text())
    assert ids == [r["id"] for r in records]
    assert features.shape == (len(records), 64, 64) and features.dtype == torch.float16
    from mage.config import VisionConfig
    from mage.registry import resolve_encoder

    tower = vision.build_vision_tower(
        resolve_encoder(VisionConfig(encoder="world-vit"), str(test_assets))
    )
    image = Image.open(test_world.root / records[7]["image"]).convert("RGB")
    expected = tower(tower.preprocess([image]))[0]
    assert torch.allclose(features[7].float(), expected, atol=2e-2, rtol=1e-2)
    other = generate_world(tmp_path / "other", seed=2, size="test")
    with pytest.raises(AssetsError, match="fingerprint mismatch"):
        load_features(test_assets, "world-vit", other)
    with pytest.raises(AssetsError, match="prepare --features"):
        load_features(test_assets, "world-resnet", test_world)
