"""Vision towers: every registered encoder builds and yields the patch grid it claims.

Random-init tiny towers run on real pixels; the real encoders (CLIP ViT-L/14-336, SigLIP, the
Hugging Face towers) build and run on the meta device (shapes only, offline); the synthetic
world's encoders load "pretrained" files written here the way the assets code writes them.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mage import vision
from mage.config import VisionConfig
from mage.registry import ENCODERS, resolve_encoder
from mage.vision import build_vision_tower
from mage.vision_tower import VisionTowerError

torch.set_num_threads(1)

WORLD_CFGS = {"world-vit": vision.WORLD_VIT_CLIP_CFG, "world-resnet": vision.WORLD_RESNET_CLIP_CFG}


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(50, 70), (64, 64), (33, 91)]
    return [
        Image.fromarray(rng.integers(0, 255, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)
    ]


def _write_assets(root, encoder_id: str, seed: int = 0) -> open_clip.CLIP:
    """Write the two files the assets code writes for a world encoder; return the CLIP."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**WORLD_CFGS[encoder_id])
    folder = root / encoder_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(WORLD_CFGS[encoder_id]))
    save_file(clip.state_dict(), str(folder / "open_clip_model.safetensors"))
    return clip


def _kind(spec) -> str:
    """random: built-in random-init tower; assets: world files; meta: real weights (offline)."""
    source = spec.model_config or spec.model_name
    if "{assets}" in source:
        return "assets"
    return "random" if source.startswith("builtin:") else "meta"


@pytest.mark.parametrize("encoder_id", sorted(ENCODERS))
def test_every_registered_tower_yields_its_claimed_grid(encoder_id, tmp_path):
    registered = ENCODERS[encoder_id]
    kind = _kind(registered)
    if kind == "assets":
        _write_assets(tmp_path, encoder_id)
    spec = resolve_encoder(VisionConfig(encoder=encoder_id), str(tmp_path))
    device = "meta" if kind == "meta" else None
    tower = build_vision_tower(spec, device=device)
    assert (tower.grid_size, tower.feature_dim) == (registered.grid_size, registered.feature_dim)
    assert tower.image_size == registered.image_size
    assert tower.num_patches == registered.grid_size**2
    if kind == "meta":  # shapes only: nothing allocated, nothing downloaded
        assert all(p.is_meta for p in tower.parameters())
        pixels = torch.empty(2, 3, tower.image_size, tower.image_size, device="meta")
    else:
        pixels = tower.preprocess(_images(2))
        assert pixels.shape == (2, 3, tower.image_size, tower.image_size)
    out = tower(pixels)
    assert out.shape == (2, registered.grid_size**2, registered.feature_dim)
    if kind != "meta":
        assert torch.isfinite(out).all() and out.std() > 0


def test_paper_encoder_counts_parameters_on_meta():
    tower = build_vision_tower(ENCODERS["clip-vit-l-14-336"], device="meta")
    n_params = sum(p.numel() for p in tower.parameters())
    assert 300e6 < n_params < 310e6  # CLIP ViT-L/14 vision tower: ~304M
    assert (tower.grid_size, tower.feature_dim, tower.num_patches) == (24, 1024, 576)


@pytest.mark.parametrize("encoder_id", ["world-vit", "world-resnet"])
def test_world_encoder_loads_the_saved_weights(encoder_id, tmp_path):
    clip = _write_assets(tmp_path, encoder_id, seed=3)
    spec = resolve_encoder(VisionConfig(encoder=encoder_id), str(tmp_path))
    tower = build_vision_tower(spec)
    saved = clip.visual.state_dict()
    loaded = tower.visual.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # and the features are those of the saved model, not of a random one
    random_tower = build_vision_tower(replace(spec, pretrained="none"))
    pixels = tower.preprocess(_images(1))
    assert not torch.allclose(tower(pixels), random_tower(pixels))


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    spec = replace(ENCODERS["tiny-vit-random"], pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(VisionTowerError, match=r"not found.*vision\.pretrained: none"):
        build_vision_tower(spec)
    # the same for an open_clip registry model whose tag/file cannot be had (no download)
    spec = replace(ENCODERS["clip-vit-b-16"], pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(VisionTowerError, match=r"vision\.pretrained: none"):
        build_vision_tower(spec)


def test_missing_world_assets_name_the_fix(tmp_path):
    spec = resolve_encoder(VisionConfig(encoder="world-vit"), str(tmp_path))
    with pytest.raises(VisionTowerError, match="model config .* not found; prepare the assets"):
        build_vision_tower(spec)
    folder = tmp_path / "world-vit"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(vision.WORLD_VIT_CLIP_CFG))
    with pytest.raises(VisionTowerError, match=r"pretrained weights .* not found"):
        build_vision_tower(spec)
    tower = build_vision_tower(
        resolve_encoder(VisionConfig(encoder="world-vit", pretrained="none"), str(tmp_path))
    )
    assert tower.grid_size == 8  # random init only when asked for


@pytest.mark.parametrize(
    "encoder_id", ["tiny-vit-random", "tiny-resnet-random", "tiny-hf-clip-random"]
)
def test_frozen_towers_get_no_gradients_and_stay_in_eval(encoder_id):
    tower = build_vision_tower(ENCODERS[encoder_id])
    assert tower.frozen and not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())
    out = tower(tower.preprocess(_images(2)))
    assert not out.requires_grad

    tower = build_vision_tower(ENCODERS[encoder_id], frozen=False).train()
    assert tower.training
    tower(tower.preprocess(_images(2))).square().mean().backward()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("encoder_id", ["tiny-vit-random", "tiny-hf-clip-random"])
def test_feature_layer_is_a_python_index_over_blocks(encoder_id):
    torch.manual_seed(0)
    spec = ENCODERS[encoder_id]
    tower = build_vision_tower(replace(spec, feature_layer=0))
    pixels = tower.preprocess(_images(2))
    other = build_vision_tower(replace(spec, feature_layer=-2))  # 2 blocks: the same block
    other.load_state_dict(tower.state_dict())
    last = build_vision_tower(replace(spec, feature_layer=-1))
    last.load_state_dict(tower.state_dict())
    assert torch.equal(tower(pixels), other(pixels))
    assert not torch.allclose(tower(pixels), last(pixels))
    with pytest.raises(VisionTowerError, match=r"vision\.feature_layer=2 .* -2\.\.1"):
        build_vision_tower(replace(spec, feature_layer=2))


def test_open_clip_vit_tokens_are_the_block_outputs_without_cls():
    spec = replace(ENCODERS["tiny-vit-random"], feature_layer=-2)
    tower = build_vision_tower(spec)
    pixels = tower.preprocess(_images(2))
    visual = tower.visual
    x = visual._embeds(pixels)
    with torch.no_grad():
        x = visual.transformer.resblocks[0](
            x if visual.transformer.batch_first else x.transpose(0, 1)
        )
    x = x if visual.transformer.batch_first else x.transpose(0, 1)
    assert torch.allclose(tower(pixels), x[:, 1:], atol=1e-6)
    keep = build_vision_tower(replace(spec, drop_cls=False))
    keep.load_state_dict(tower.state_dict())
    assert keep.num_patches == tower.grid_size**2 + 1
    assert torch.allclose(keep(pixels), x, atol=1e-6)


def test_resnet_stages_give_the_grid_they_claim():
    spec = replace(
        ENCODERS["tiny-resnet-random"], feature_layer=3, grid_size=None, feature_dim=None
    )
    tower = build_vision_tower(spec)
    out = tower(tower.preprocess(_images(1)))
    assert (tower.grid_size, tower.feature_dim) == (4, 128)  # 64 px: stem /4, layer2 /2, layer3 /2
    assert out.shape == (1, 16, 128)
    with pytest.raises(VisionTowerError, match=r"vision\.feature_layer=-2 for a ResNet"):
        build_vision_tower(replace(spec, feature_layer=-2))


def test_wrong_registry_claim_and_bad_inputs_are_clear_errors():
    with pytest.raises(VisionTowerError, match="claims grid_size=5 .* fix the entry"):
        build_vision_tower(replace(ENCODERS["tiny-vit-random"], grid_size=5))
    tower = build_vision_tower(ENCODERS["tiny-vit-random"])
    with pytest.raises(ValueError, match=r"expects pixel_values \[B, 3, 32, 32\]"):
        tower(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="list of PIL images"):
        tower.preprocess([np.zeros((8, 8, 3))])


def test_backends_registry_is_the_dispatch():
    assert set(vision.BACKENDS) == {"open_clip", "hf"}
    assert {spec.backend for spec in ENCODERS.values()} <= set(vision.BACKENDS)
    with pytest.raises(VisionTowerError, match="unknown backend"):
        build_vision_tower(replace(ENCODERS["tiny-vit-random"], backend="nope"))


def test_hf_tower_loads_a_local_directory(tmp_path):
    """The path real Hugging Face ids take: config, weights and image processor from disk."""
    torch.manual_seed(1)
    tiny = build_vision_tower(ENCODERS["tiny-hf-clip-random"])
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    spec = resolve_encoder(VisionConfig(encoder=f"hf:{tmp_path}"))
    tower = build_vision_tower(spec)
    assert (tower.grid_size, tower.feature_dim, tower.num_patches) == (4, 32, 16)
    pixels = tower.preprocess(_images(2))
    assert torch.equal(pixels, tiny.preprocess(_images(2)))
    assert torch.allclose(tower(pixels), tiny(pixels), atol=1e-6)


@pytest.mark.parametrize(
    "encoder_id",
    [i for i, s in ENCODERS.items() if s.backend == "open_clip" and s.model_config is None],
)
def test_a_local_weights_file_keeps_the_registry_tags_architecture(encoder_id):
    """Offline, `vision.pretrained` names a local file: OpenAI's CLIP must still get
    QuickGELU and SigLIP its own mean, std and resize mode, as with the tag itself."""
    from mage.config import VisionConfig
    from mage.vision import _create_registry_model

    def built(pretrained: str | None) -> tuple:
        spec = resolve_encoder(VisionConfig(encoder=encoder_id, pretrained=pretrained))
        model, kwargs = _create_registry_model(spec, meta=True)
        return kwargs["quick_gelu"], model.visual.preprocess_cfg

    assert built("/data/local-weights.bin") == built("none")
