"""What a reloaded checkpoint and a resumed stage are: the same tower (activation function,
preprocessing, features), the same dtype, the same LoRA init, strict and complete resume state
(issue: right numbers at the paper's setting, items 1, 2, 5 and 10)."""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib
import pytest
import sklearn.datasets
import torch
from model_fixtures import write_tiny_dataset
from PIL import Image

from mage.config import DataSource, VisionConfig
from mage.model import MageModel
from mage.presets import get_preset
from mage.registry import ENCODERS, resolve_encoder
from mage.train import seed_build, train_stage
from mage.train.checkpoint import CheckpointError, CheckpointManager
from mage.train.schedule import build_optimizer
from mage.vision import build_vision_tower, load_vision_tower

PHOTOS = {
    "rgb": Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
    "rgba": Path(matplotlib.get_data_path()) / "sample_data" / "Minduka_Present_Blue_Pack.png",
}


def _photos() -> list[Image.Image]:
    rgb = Image.open(PHOTOS["rgb"])
    rgba = Image.open(PHOTOS["rgba"])
    assert rgba.mode == "RGBA"
    return [rgb, rgb.convert("L"), rgba]  # a colour photo, a greyscale one, an RGBA one


def _activation(tower) -> str:
    """The class of the first MLP activation in the tower's first block."""
    for module in tower.modules():
        name = type(module).__name__
        if name in ("QuickGELU", "GELU", "GELUActivation", "QuickGELUActivation"):
            return repr(module) if name == "GELU" else name  # GELU(approximate='tanh')
        act = getattr(module, "activation_fn", None)
        if act is not None:
            return type(act).__name__
    raise AssertionError("no activation found")


# every registered real tower (not the synthetic world's or the tiny test ones), with the
# activation its architecture tag gives
REAL_TOWERS = [
    ("clip-vit-l-14-336", "QuickGELU"),  # OpenAI's tag builds QuickGELU in open_clip
    ("hf-clip-vit-l-14-336", "QuickGELUActivation"),
    ("siglip-so400m-14-384", "GELU(approximate='none')"),  # timm's SO400M trunk
    ("clip-vit-b-16", "QuickGELU"),
    ("hf-siglip-so400m-14-384", "GELUTanh"),  # transformers' gelu_pytorch_tanh
]


# the transformer block classes of the backends (open_clip, timm, transformers)
BLOCKS = ("ResidualAttentionBlock", "Block", "CLIPEncoderLayer", "SiglipEncoderLayer")


def test_every_registered_real_tower_is_checked():
    real = {i for i in ENCODERS if not i.startswith(("world-", "tiny-"))}
    assert {encoder for encoder, _ in REAL_TOWERS} == real


@pytest.fixture()
def shallow_towers(monkeypatch):
    """The real towers' widths, patch and image sizes, activations and preprocessing, with 2
    blocks (and a 1-block text tower, which open_clip builds beside the visual one): what a
    save and reload must keep does not depend on depth, and 24-27 blocks of random weights
    (400M parameters, twice over for SO400M's text tower) cost about 100 s of the suite."""
    import open_clip
    import open_clip.factory
    import timm

    from mage import vision_hf

    real_config, real_timm = open_clip.factory.get_model_config, timm.create_model

    def shallow_config(name):
        cfg = copy.deepcopy(real_config(name))
        for part, depth in (("vision_cfg", 2), ("text_cfg", 1)):
            if isinstance((cfg or {}).get(part, {}).get("layers"), int):
                cfg[part]["layers"] = depth
        return cfg

    def shallow_timm(name, *args, **kwargs):  # open_clip's timm trunks (SigLIP SO400M)
        return real_timm(name, *args, **({"depth": 2} if name.startswith("vit_") else {}), **kwargs)

    monkeypatch.setattr(open_clip.factory, "get_model_config", shallow_config)
    monkeypatch.setattr(open_clip, "get_model_config", shallow_config)
    monkeypatch.setattr(timm, "create_model", shallow_timm)
    for name, (kind, kwargs) in list(vision_hf.LOCAL_HF_VISION_CFGS.items()):
        shallow = (kind, {**kwargs, "num_hidden_layers": 2})
        monkeypatch.setitem(vision_hf.LOCAL_HF_VISION_CFGS, name, shallow)


@pytest.mark.slow
@pytest.mark.parametrize(("encoder", "activation"), REAL_TOWERS)
def test_a_saved_real_tower_reloads_with_its_activation_preprocessing_and_features(
    encoder, activation, tmp_path, shallow_towers
):
    torch.manual_seed(0)
    spec = resolve_encoder(VisionConfig(encoder=encoder, pretrained="none"))
    tower = build_vision_tower(spec)
    assert _activation(tower) == activation  # random weights, the tag's architecture
    tower.save(tmp_path / "vision")
    again = load_vision_tower(tmp_path / "vision")
    assert _activation(again) == activation
    photos = _photos()
    pixels, pixels_again = tower.preprocess(photos), again.preprocess(photos)
    assert torch.equal(pixels, pixels_again)
    assert sum(1 for m in tower.modules() if type(m).__name__ in BLOCKS) == 2  # shallow
    with torch.no_grad():
        features, features_again = tower(pixels[1:2]), again(pixels_again[1:2])
    assert features.shape == (1, tower.grid_size**2, tower.feature_dim)
    assert torch.allclose(features, features_again, atol=1e-5)


@pytest.fixture()
def tiny(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    source = [DataSource(path=str(data)).model_dump()]
    return get_preset("tiny-test").with_overrides(
        {"stage1.data": source, "stage2.data": source, "stage2.loader_workers": 0}
    )


def _stage2_losses(cfg, out, init_seed) -> list[float]:
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    torch.manual_seed(init_seed)  # whatever ran before in this process
    losses: list[float] = []
    train_stage(model, cfg, "stage2", out, callback=lambda s, m: losses.append(m["loss"]))
    return losses


def test_lora_adapters_do_not_depend_on_what_ran_before(tiny, tmp_path):
    cfg = tiny.with_overrides({"llm.lora.enabled": True, "llm.lora.r": 4})
    first = _stage2_losses(cfg, tmp_path / "a", init_seed=1)
    second = _stage2_losses(cfg, tmp_path / "b", init_seed=2)
    assert first == second


def test_a_checkpoint_is_evaluated_in_the_variant_dtype_and_trains_in_fp32_master(tiny, tmp_path):
    cfg = tiny.with_overrides({"llm.dtype": "bfloat16", "stage2.steps": 2})
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    assert next(model.llm.parameters()).dtype == torch.bfloat16  # built in its dtype
    train_stage(model, cfg, "stage2", tmp_path / "s2")
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path / "ckpt")
    again = MageModel.from_pretrained(tmp_path / "ckpt")
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}


def test_resume_refuses_a_checkpoint_that_does_not_hold_what_trains(tiny, tmp_path):
    cfg = tiny.with_overrides({"stage2.steps": 4})
    seed_build(cfg.seed)
    train_stage(MageModel.build(cfg), cfg, "stage2", tmp_path / "s2", stop_after=2)
    other = cfg.with_overrides({"stage2.trainable": ["ian"]})  # the LLM no longer trains
    model = MageModel.build(other)
    with pytest.raises(CheckpointError, match="does not hold the weights this stage trains"):
        train_stage(model, other, "stage2", tmp_path / "s2")


def test_resume_state_holds_and_restores_the_cuda_generators(tiny, tmp_path, monkeypatch):
    """No GPU here: CUDA's generator calls are stood in for, to check what is saved and
    restored through the real checkpoint code."""
    import mage.train.seeding as seeding

    saved_cuda = torch.tensor([7], dtype=torch.uint8)  # the generator of the rank's device
    restored = []
    monkeypatch.setattr(seeding, "_cuda_in_use", lambda: True)
    monkeypatch.setattr(seeding.torch.cuda, "get_rng_state", lambda: saved_cuda)
    monkeypatch.setattr(seeding.torch.cuda, "set_rng_state", restored.append)
    monkeypatch.setattr(seeding.torch.cuda, "current_device", lambda: 1)  # resumed on GPU 1
    seed_build(tiny.seed)
    model = MageModel.build(tiny)
    model.set_trainable(["ian"])
    optimizer, scheduler = build_optimizer(model, tiny.stage1, 4)
    manager = CheckpointManager(tmp_path / "ck", tiny.seed, "stage1")
    folder = manager.save(1, model, optimizer, scheduler, global_batch=4)
    assert manager.load(folder, model, optimizer, scheduler, global_batch=4) == 1
    assert restored == [saved_cuda]  # onto the device it uses now, whatever its index
    # a checkpoint of before held every visible device's: the current device's is restored
    older = [torch.tensor([3], dtype=torch.uint8), torch.tensor([5], dtype=torch.uint8)]
    seeding.set_rng_state({**seeding.rng_state(), "cuda": older})
    assert restored[-1] is older[1]
    with pytest.raises(CheckpointError, match="global batch of 4"):
        manager.load(folder, model, optimizer, scheduler, global_batch=8)


def test_keep_optimizer_saves_the_last_step_and_a_run_resumed_there_reports_how_it_ended(
    tiny, tmp_path
):
    """checkpoint_every 0 saves nothing, unless keep_optimizer asks for the last step's state;
    a stage that crashed after its last checkpoint (say, while exporting) resumes with no
    step left and still returns its final step and loss."""
    plain = tiny.with_overrides({"stage2.steps": 3})
    seed_build(plain.seed)
    train_stage(MageModel.build(plain), plain, "stage2", tmp_path / "plain")
    assert CheckpointManager(tmp_path / "plain" / "checkpoints", 0, "stage2").latest() is None
    cfg = plain.with_overrides({"stage2.keep_optimizer": True})
    seed_build(cfg.seed)
    first = train_stage(MageModel.build(cfg), cfg, "stage2", tmp_path / "s2")
    latest = CheckpointManager(tmp_path / "s2" / "checkpoints", cfg.seed, "stage2").latest()
    assert latest is not None and latest.name == "step-00000003"
    again = train_stage(MageModel.build(cfg), cfg, "stage2", tmp_path / "s2")
    assert (again["step"], again["loss"]) == (first["step"], first["loss"]) == (3, first["loss"])


def test_a_checkpoint_holds_its_curve_before_it_is_marked_complete(tiny, tmp_path, monkeypatch):
    """The training curve up to a checkpoint is part of what ``complete`` vouches for: a
    crash right after the marker cannot leave a resumable checkpoint without its curve, and
    a resumed stage's curve runs from step 1 without a gap."""
    from harness.train_worker import _curves_so_far

    cfg = tiny.with_overrides({"stage2.steps": 4, "stage2.checkpoint_every": 1})
    seed_build(cfg.seed)
    manager = CheckpointManager(tmp_path / "s2" / "checkpoints", cfg.seed, "stage2")
    seen = []  # what the marker's writer finds in the folder it marks
    import mage.train.checkpoint as checkpoint

    real = checkpoint.atomic_write_json

    def marker(path, data):
        seen.append(CheckpointManager.saved_history(Path(path).parent))
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_json", marker)
    train_stage(MageModel.build(cfg), cfg, "stage2", tmp_path / "s2", stop_after=2)
    assert [[h["step"] for h in s] for s in seen] == [[1], [1, 2]]
    seed_build(cfg.seed)
    train_stage(MageModel.build(cfg), cfg, "stage2", tmp_path / "s2")
    history = CheckpointManager.saved_history(manager.latest())
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert history[:2] == seen[1]  # the resumed run kept the first session's steps
    curve = _curves_so_far(tmp_path / "s2", cfg, "stage2")
    assert [r["step"] for r in curve if r["metric"] == "loss"] == [1, 2, 3, 4]


def test_a_lora_checkpoint_without_its_adapter_is_refused_naming_the_file(tiny, tmp_path):
    from mage.checkpoint_check import CheckpointError as DamagedCheckpoint
    from mage.checkpoint_check import check_checkpoint

    cfg = tiny.with_overrides({"llm.lora.enabled": True, "llm.lora.r": 4})
    model = MageModel.build(cfg)
    model.enable_lora()
    model.save_pretrained(tmp_path / "ck")
    check_checkpoint(tmp_path / "ck")  # whole
    (tmp_path / "ck" / "llm_adapter" / "adapter_config.json").unlink()
    with pytest.raises(DamagedCheckpoint, match=r"adapter_config.json: missing; mage.json says"):
        check_checkpoint(tmp_path / "ck")


def test_a_tower_that_does_not_train_in_a_stage_stays_in_eval_mode(tiny, tmp_path):
    """vision.frozen: false alone does not train the tower (a stage's trainable list does):
    in train mode its batch-norm statistics would drift and be saved."""
    cfg = tiny.with_overrides({"vision.frozen": False, "stage1.steps": 2})
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    modes = []
    train_stage(model, cfg, "stage1", tmp_path / "s1", callback=lambda s, m: modes.append(
        (model.vision.training, model.projector.training)))  # fmt: skip
    assert modes == [(False, True), (False, True)]
