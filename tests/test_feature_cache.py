"""The frozen tower's cached outputs: the tower's own numbers, built once, extended, keyed by
weights, refused for a trained tower, and training on them matches training on images."""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import pytest
import torch
from model_fixtures import write_tiny_dataset
from safetensors import safe_open

from mage.config import ConfigError, DataSource
from mage.data import Collator
from mage.feature_cache import FeatureCache, image_key, tower_fingerprint
from mage.images import open_image
from mage.model import MageModel
from mage.presets import get_preset
from mage.train import build_dataset, train_stage


@pytest.fixture()
def tiny(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    source = [DataSource(path=str(data)).model_dump()]
    cfg = get_preset("tiny-test").with_overrides({"stage1.data": source, "stage2.data": source})
    torch.manual_seed(0)
    return cfg, MageModel.build(cfg), data.parent


def test_the_cache_holds_the_towers_outputs_and_is_built_once_then_extended(tiny, tmp_path):
    _, model, data = tiny
    images = sorted(str(p) for p in data.glob("*.png"))
    first = FeatureCache.ensure(tmp_path / "fc", model.vision, images[:3], root=data)
    assert first.path.name == f"{tower_fingerprint(model.vision)}.safetensors"
    mtime = first.path.stat().st_mtime_ns
    again = FeatureCache.ensure(tmp_path / "fc", model.vision, images[:2], root=data)
    assert again.path.stat().st_mtime_ns == mtime and len(again) == 3  # nothing to add
    full = FeatureCache.ensure(tmp_path / "fc", model.vision, images, root=data)
    assert len(full) == len(images) and full.path.stat().st_mtime_ns != mtime
    for path in images:
        with torch.no_grad():
            live = model.vision(model.vision.preprocess([open_image(path)]))[0]
        assert torch.allclose(full.get(path), live, atol=1e-6)
    # keyed relative to the data folder: a moved folder keeps its cache
    with safe_open(str(full.path), "pt") as fh:
        keys = json.loads(fh.metadata()["images"])
    assert keys == sorted(os.path.basename(p) for p in images)


def test_other_weights_get_another_file(tiny, tmp_path):
    _, model, data = tiny
    images = [str(p) for p in data.glob("*.png")]
    a = FeatureCache.ensure(tmp_path / "fc", model.vision, images, root=data)
    other = copy.deepcopy(model.vision)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    b = FeatureCache.ensure(tmp_path / "fc", other, images, root=data)
    assert a.path != b.path and not torch.equal(a.features, b.features)


def test_image_keys_are_relative_inside_the_root_and_absolute_outside(tmp_path):
    assert image_key(tmp_path / "d" / "a.png", tmp_path / "d") == "a.png"
    assert image_key(tmp_path / "x" / "a.png", tmp_path / "d") == str(tmp_path / "x" / "a.png")
    assert image_key(tmp_path / "dd" / "a.png", tmp_path / "d").startswith(str(tmp_path))


def test_a_tower_that_trains_refuses_the_cache(tiny):
    cfg, _, _ = tiny
    with pytest.raises(ConfigError, match=r"vision\.feature_cache needs a frozen tower.*stage2"):
        cfg.with_overrides({"vision.feature_cache": "x", "stage2.trainable": ["ian", "vision"]})
    with pytest.raises(ConfigError, match="vision.frozen is false"):
        cfg.with_overrides({"vision.feature_cache": "x", "vision.frozen": False})


def test_training_on_cached_features_matches_training_on_images(tiny, tmp_path):
    cfg, model, _ = tiny
    cfg = cfg.with_overrides({"stage1.steps": 4, "stage2.steps": 3})
    cached_cfg = cfg.with_overrides({"vision.feature_cache": str(tmp_path / "fc")})
    twin = copy.deepcopy(model)
    runs = []
    for run_cfg, run_model, out in ((cfg, model, "live"), (cached_cfg, twin, "cached")):
        losses = []
        for stage in ("stage1", "stage2"):
            train_stage(run_model, run_cfg, stage, tmp_path / out / stage,
                        callback=lambda s, m, seen=losses: seen.append(m["loss"]))  # fmt: skip
        runs.append((losses, run_model))
    (live, a), (cached, b) = runs
    assert len(live) == 7 and live == pytest.approx(cached, rel=1e-5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert list((tmp_path / "fc").glob("*.safetensors"))  # the cache was built and used


def test_a_micro_batch_without_images_runs_the_connector_only(tiny, tmp_path):
    cfg, model, data = tiny
    cache = FeatureCache.ensure(
        tmp_path / "fc", model.vision, [str(p) for p in data.glob("*.png")], root=data
    )
    collate = Collator(model.tokenizer, model.template, model.vision.preprocess,
                       model.num_image_tokens, cfg.max_length, with_captions=False,
                       features=cache)  # fmt: skip
    record = build_dataset(cfg, "stage1").record(0)
    text_only = dataclasses.replace(record, image_path=None)
    batch = collate([(text_only, None)])
    assert batch["image_features"].shape == (0, *cache.features.shape[1:])
    assert "pixel_values" not in batch
    ran = []
    model.vision.register_forward_hook(lambda *a: ran.append(1))
    model.train()
    out = model(**batch)
    out.ce_sum.backward()
    assert torch.isfinite(out.ce_sum) and not ran  # the tower never ran
    assert any(p.grad is not None for p in model.projector.parameters())  # FSDP sees its unit


def test_prepare_features_fills_the_cache_a_world_trial_reads(test_world, test_assets):
    """`prepare --features` (`cache_features`) writes what a world-test stage then finds: the
    tower as a trial builds it, every training image, keyed relative to the world folder."""
    from mage.world.assets import cache_features

    files = cache_features(test_world, test_assets)
    assert len(files) == 2 and all(f.parent == test_assets / "features" for f in files)
    cfg = get_preset("world-test").with_overrides(
        {"data_dir": str(test_world.root), "assets_dir": str(test_assets)}
    )
    model = MageModel.build(cfg)
    dataset = build_dataset(cfg, "stage1")
    stamps = {f: f.stat().st_mtime_ns for f in files}
    cache = FeatureCache.ensure(
        cfg.feature_cache_dir(), model.vision, dataset.image_paths(), cfg.data_root()
    )
    assert cache.path in stamps and cache.path.stat().st_mtime_ns == stamps[cache.path]
    assert all(not os.path.isabs(key) for key in cache.rows)
