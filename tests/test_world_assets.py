"""Prepared world assets: loadable by their consumers, cached, and fingerprint-checked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.cli import main as cli_main
from mage import vision
from mage.config import VisionConfig
from mage.registry import resolve_encoder
from mage.world.asset_recipes import COMPONENTS, AssetsError
from mage.world.assets import check_assets, prepare_assets
from mage.world.encoders import load_clip, normalise
from mage.world.generate import generate_world
from mage.world.scene import Scene, WorldObject, render_scene
from mage.world.vocab import world_tokenizer


def test_layout_and_manifest(test_world, test_assets):
    manifest = check_assets(test_assets, test_world)
    assert set(manifest["components"]) == set(COMPONENTS)
    assert manifest["world_content_hash"] == test_world.info()["content_hash"]
    for name in ("world-vit", "world-resnet"):
        cfg = json.loads((test_assets / name / "open_clip_config.json").read_text())
        assert set(cfg) == {"embed_dim", "vision_cfg", "text_cfg"}
        model = open_clip.CLIP(**cfg)
        model.load_state_dict(load_file(str(test_assets / name / "open_clip_model.safetensors")))
        assert cfg["text_cfg"]["vocab_size"] == len(world_tokenizer())
    llm_eval = manifest["logs"]["world-llm"]["text_eval"]
    assert {"yes_no_acc", "yes_no_acc_plus", "mcq_acc"} <= set(llm_eval)


def test_world_llm_loads_with_auto_classes(test_assets):
    directory = test_assets / "world-llm"
    model = AutoModelForCausalLM.from_pretrained(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.initializer_range == pytest.approx(0.06)
    assert tok.get_vocab() == world_tokenizer().get_vocab()
    assert model.config.eos_token_id == tok.eos_token_id
    ids = tok("USER: What is in the image? ASSISTANT:", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


@pytest.mark.parametrize("encoder, dim", [("world-vit", 64), ("world-resnet", 128)])
def test_registry_vision_tower_loads_the_encoders(test_assets, encoder, dim):
    spec = resolve_encoder(VisionConfig(encoder=encoder), str(test_assets))
    tower = vision.build_vision_tower(spec)
    assert tower.grid_size == 8 and tower.feature_dim == dim
    scene = Scene((WorldObject("cross", "orange", "large", "bottom left"),), jitter_seed=3)
    image = render_scene(scene)
    pixels = tower.preprocess([image])
    # the tower normalises exactly as the encoders were pretrained
    reference = normalise(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None])
    assert torch.allclose(pixels, reference, atol=1e-5)
    assert tower(pixels).shape == (1, 64, dim)
    clip = load_clip(test_assets / encoder)
    own = dict(clip.visual.state_dict())
    assert all(torch.equal(own[k], v) for k, v in tower.visual.state_dict().items())


def test_second_prepare_is_cached(test_world, test_assets):
    weights = test_assets / "world-llm" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_assets(test_world, test_assets, size="test", progress=False) == test_assets
    assert weights.stat().st_mtime_ns == before


def test_assets_for_another_world_are_refused(test_world, test_assets, tmp_path):
    other = generate_world(tmp_path / "other", seed=1, size="test")
    with pytest.raises(AssetsError, match="another world or recipe .training inputs"):
        prepare_assets(other, test_assets, size="test", progress=False)
    with pytest.raises(AssetsError, match="were prepared for world"):
        check_assets(test_assets, other)


def test_assets_of_a_changed_recipe_name_the_changed_component(
    test_world, test_assets, tmp_path, monkeypatch
):
    from dataclasses import replace

    from mage.world import asset_recipes, assets

    copy = tmp_path / "assets"
    shutil.copytree(test_assets, copy)
    test_recipe = asset_recipes.ASSET_CONFIGS["test"]
    changed = replace(test_recipe, llm=replace(test_recipe.llm, steps=test_recipe.llm.steps + 1))
    monkeypatch.setitem(assets.ASSET_CONFIGS, "test", changed)
    with pytest.raises(AssetsError, match="as it was before its world-llm changed"):
        prepare_assets(test_world, copy, size="test", progress=False)


def test_tampered_fingerprint_is_refused(test_world, test_assets, tmp_path):
    copy = tmp_path / "assets"
    shutil.copytree(test_assets, copy)
    fingerprint = copy / "world-vit" / "fingerprint.json"
    fingerprint.write_text(json.dumps({"fingerprint": "0" * 64}))
    with pytest.raises(AssetsError, match="fingerprint does not match"):
        check_assets(copy)
    with pytest.raises(AssetsError, match="fingerprint does not match"):
        prepare_assets(test_world, copy, size="test", progress=False)
    (copy / "assets.json").unlink()  # a half-built folder with a foreign component
    with pytest.raises(AssetsError, match="world-vit was prepared for another world"):
        prepare_assets(test_world, copy, size="test", progress=False)
    with pytest.raises(AssetsError, match="mage-harness prepare"):
        check_assets(tmp_path / "nothing")


def test_cli_synth_and_cached_prepare(test_world, test_assets, tmp_path, capsys):
    assert cli_main(["data", "synth", str(tmp_path / "w"), "--seed", "3", "--size", "test",
                     "--quiet"]) == 0  # fmt: skip
    info = json.loads((tmp_path / "w" / "world.json").read_text())
    assert (info["seed"], info["size"]) == (3, "test")
    args = ["prepare", "--world", str(test_world.root), "--out", str(test_assets)]
    assert cli_main([*args, "--size", "test", "--quiet"]) == 0
    assert str(test_assets) in capsys.readouterr().out


def test_default_cache_name_follows_the_recipe(monkeypatch):
    from dataclasses import replace

    from mage.world import asset_recipes

    name = asset_recipes.assets_cache_name("demo", 0)
    assert re.fullmatch(r"demo-seed0-[0-9a-f]{10}", name)
    assert asset_recipes.assets_cache_name("demo", 1) != name
    demo = asset_recipes.ASSET_CONFIGS["demo"]
    changed = replace(demo, llm=replace(demo.llm, steps=demo.llm.steps + 1))
    monkeypatch.setitem(asset_recipes.ASSET_CONFIGS, "demo", changed)
    assert asset_recipes.assets_cache_name("demo", 0) != name  # a new recipe gets a new folder
    with pytest.raises(AssetsError, match="unknown assets size"):
        asset_recipes.assets_cache_name("huge", 0)


def test_prepare_and_the_spec_offer_every_recipe():
    import typing

    from harness.commands import data
    from harness.spec import WorldSpec
    from mage.world.asset_recipes import ASSET_CONFIGS

    assert set(data.RECIPES) == set(ASSET_CONFIGS)
    literal = typing.get_args(WorldSpec.model_fields["assets"].annotation)[0]
    assert set(typing.get_args(literal)) == set(ASSET_CONFIGS)


def test_weights_are_hashed_and_checked(test_world, test_assets, tmp_path):
    from mage.world.asset_recipes import weights_sha256

    manifest = check_assets(test_assets, test_world)
    assert manifest["threads"] == 1
    assert manifest["source"] == dict.fromkeys(COMPONENTS, "prepared")
    for name in COMPONENTS:
        assert manifest["weights_sha256"][name] == weights_sha256(test_assets / name)
    copy = Path(shutil.copytree(test_assets, tmp_path / "assets"))
    weights = copy / "world-llm" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one flipped bit in the last weight
    weights.write_bytes(bytes(blob))
    with pytest.raises(AssetsError, match="weights are not the ones recorded"):
        check_assets(copy)


def test_shipped_assets_are_copied_when_they_match(test_world, test_assets, tmp_path, monkeypatch):
    from mage.world import assets

    shipped = tmp_path / "shipped" / "test-seed0"
    for name in COMPONENTS:
        shutil.copytree(test_assets / name, shipped / name)
    monkeypatch.setattr(assets, "SHIPPED_DIR", shipped.parent)
    out = prepare_assets(test_world, tmp_path / "copied", size="test", progress=False)
    manifest = check_assets(out, test_world)
    assert manifest["source"] == dict.fromkeys(COMPONENTS, "shipped")
    assert manifest["weights_sha256"] == check_assets(test_assets)["weights_sha256"]
    # a damaged shipped copy is refused, not used
    weights = shipped / "world-vit" / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(AssetsError, match="not the ones its fingerprint.json records"):
        prepare_assets(test_world, tmp_path / "damaged", size="test", progress=False)
    # shipped for other training inputs: not copied, and the reason is said before training
    other = generate_world(tmp_path / "other", seed=2, size="test")
    reason = assets.shipped_mismatch(shipped, ["world-llm"], other.info()["training_hash"])
    assert reason and "were trained on world inputs" in reason
    stamp = json.loads((shipped / "world-llm" / "fingerprint.json").read_text())
    assert assets.shipped_component(shipped, "world-llm", stamp["fingerprint"]) is not None
    assert assets.shipped_component(shipped, "world-llm", "another") is None


def test_shipped_demo_assets_match_the_recipe():
    """The demo assets in the repository are the ones this code's `demo` recipe builds: the
    fingerprint of this recipe for the world inputs they record, and the recorded weights."""
    from mage.world import asset_recipes, assets

    folder = assets.SHIPPED_DIR / "demo-seed0"
    shipped = [n for n in COMPONENTS if (folder / n / "fingerprint.json").is_file()]
    assert shipped == list(COMPONENTS)  # all three: `make demo` trains none of them
    cfg = asset_recipes.ASSET_CONFIGS["demo"]
    for name in shipped:
        stamp = json.loads((folder / name / "fingerprint.json").read_text())
        expected = asset_recipes.component_fingerprint(name, cfg, stamp["world_training_hash"])
        assert stamp["fingerprint"] == expected, name
        assert stamp["weights_sha256"] == asset_recipes.weights_sha256(folder / name), name
        assert stamp["threads"] == cfg.threads
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 9 * 2**20  # about 8 MB, 3 MB of it world-resnet's unused attention pool


def test_assets_follow_the_training_inputs_only(test_world, test_assets, tmp_path):
    """New benchmark splits or tool data (another world content hash, same training inputs)
    keep the prepared assets; other training inputs do not."""
    world = Path(shutil.copytree(test_world.root, tmp_path / "world"))
    info = json.loads((world / "world.json").read_text())
    (world / "world.json").write_text(json.dumps({**info, "content_hash": "0" * 64}))
    assert check_assets(test_assets, world)["world_training_hash"] == info["training_hash"]
    (world / "world.json").write_text(json.dumps({**info, "training_hash": "1" * 64}))
    with pytest.raises(AssetsError, match="other training inputs"):
        check_assets(test_assets, world)
