"""MageModel: losses, stage-1 freezing, save/load, batched generation, meta-device counts."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import write_tiny_dataset

from mage.config import DataSource
from mage.data import DataError
from mage.model import MageModel
from mage.presets import get_preset
from mage.train import build_dataset, train_stage


@pytest.fixture()
def tiny(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    cfg = get_preset("tiny-test").with_overrides(
        {
            "stage1.data": [DataSource(path=str(data)).model_dump()],
            "stage2.data": [DataSource(path=str(data)).model_dump()],
        }
    )
    torch.manual_seed(0)
    return cfg, MageModel.build(cfg)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage1_trains_only_the_ian(tiny, tmp_path):
    cfg, model = tiny
    llm, vision, ian = _state(model.llm), _state(model.vision), _state(model.projector)
    train_stage(model, cfg, "stage1", tmp_path / "s1")
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in llm.items())
    assert all(torch.equal(v, model.vision.state_dict()[k]) for k, v in vision.items())
    changed = [k for k, v in ian.items() if not torch.equal(v, model.projector.state_dict()[k])]
    assert changed, "stage 1 did not change the IAN"


@pytest.mark.parametrize(("mse_weight", "has_mse"), [(0.0, False), (0.5, True)])
def test_mse_metric_is_reported_only_when_the_term_is_on(tiny, tmp_path, mse_weight, has_mse):
    cfg, model = tiny
    cfg = cfg.with_overrides({"loss.mse_weight": mse_weight, "stage1.steps": 2})
    seen = []
    final = train_stage(model, cfg, "stage1", tmp_path / "s1", callback=lambda s, m: seen.append(m))
    assert ("mse_loss" in final) is has_mse and all(("mse_loss" in m) is has_mse for m in seen)
    if has_mse:
        assert final["mse_loss"] > 0 and final["loss"] > final["ce_loss"]


def _one_batch(cfg, model, stage="stage1", with_captions=True):
    from mage.data import Collator

    ds = build_dataset(cfg, stage)
    collate = Collator(
        model.tokenizer,
        model.template,
        model.vision.preprocess,
        model.num_image_tokens,
        cfg.max_length,
        with_captions=with_captions,
    )
    return collate([ds[i] for i in range(4)])


def test_the_loss_from_target_logits_equals_the_loss_over_every_position(tiny):
    cfg, model = tiny
    batch = _one_batch(cfg, model, "stage2")
    out = model(**batch)
    full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    targets = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        full[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    assert out.logits.shape == (int((targets != -100).sum()), full.shape[-1])
    assert out.logits.shape[0] < targets.numel()  # the prompt's positions were left out
    assert torch.allclose(out.ce_sum, expected, rtol=1e-5)
    assert int(out.ce_tokens) == int((targets != -100).sum())


def test_loss_is_ce_plus_weighted_mse(tiny):
    cfg, model = tiny
    batch = _one_batch(cfg, model)
    pure = model(**batch, mse_weight=0.0)
    assert pure.mse_loss is not None and pure.mse_loss > 0
    assert torch.equal(pure.loss, pure.ce_loss)
    mixed = model(**batch, mse_weight=2.5)
    assert torch.allclose(mixed.loss, mixed.ce_loss + 2.5 * mixed.mse_loss)


def test_save_load_gives_identical_logits(tiny, tmp_path):
    cfg, model = tiny
    train_stage(model, cfg, "stage1", tmp_path / "s1")
    model.save_pretrained(tmp_path / "ckpt")
    again = MageModel.from_pretrained(tmp_path / "ckpt")
    batch = _one_batch(cfg, model)
    model.eval()
    assert torch.equal(model(**batch).logits, again(**batch).logits)


def test_stop_and_resume_gives_the_same_losses(tiny, tmp_path):
    cfg, _ = tiny
    cfg = cfg.with_overrides({"stage2.steps": 6})

    def run(out, stop_after=None):
        torch.manual_seed(0)
        model = MageModel.build(cfg)
        losses = []
        if stop_after:
            train_stage(
                model,
                cfg,
                "stage2",
                out,
                callback=lambda s, m: losses.append(m["loss"]),
                stop_after=stop_after,
            )
            torch.manual_seed(0)  # a resumed trial rebuilds the same (frozen) tower ...
            model = MageModel.build(cfg)
            torch.manual_seed(123)  # ... but its RNG is elsewhere: the checkpoint restores it
        train_stage(model, cfg, "stage2", out, callback=lambda s, m: losses.append(m["loss"]))
        return losses

    straight = run(tmp_path / "a")
    resumed = run(tmp_path / "b", stop_after=3)
    assert len(straight) == 6
    assert resumed == straight


def test_tiny_model_overfits_a_handful_of_samples(tiny, tmp_path):
    cfg, _ = tiny
    cfg = cfg.with_overrides({"stage2.steps": 60, "stage2.lr": 3e-3, "stage2.warmup_ratio": 0.0})
    torch.manual_seed(0)
    model = MageModel.build(cfg)
    losses = []
    train_stage(
        model, cfg, "stage2", tmp_path / "s2", callback=lambda s, m: losses.append(m["ce_loss"])
    )
    assert losses[0] > 1.5
    assert min(losses[-5:]) < 0.3, losses[-5:]


def test_batched_generation_equals_one_at_a_time(tiny, tmp_path):
    cfg, model = tiny
    cfg = cfg.with_overrides({"stage2.steps": 20, "stage2.lr": 3e-3})
    train_stage(model, cfg, "stage2", tmp_path / "s2")
    ds = build_dataset(cfg, "stage2")
    images = [ds.load_image(ds.record(i)) for i in range(5)] + [None]
    questions = [
        "What color is the square?",
        "What color is the square? Answer with one word.",
        "What",
        "color",
        "Is the square red?",
        "What color is the square?",
    ]
    batched = model.generate(images, questions, max_new_tokens=6)
    single = [model.generate([im], [q], max_new_tokens=6)[0] for im, q in zip(images, questions)]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)


def test_paper_preset_counts_parameters_on_meta():
    cfg = get_preset("mage-7b").with_overrides(
        {"llm.random_init": True, "vision.pretrained": "none"}
    )
    model = MageModel.build(cfg, device="meta")
    counts = model.param_counts()
    assert model.num_image_tokens == 144
    assert 290e6 < counts["vision"] < 320e6  # CLIP ViT-L/14 vision tower
    assert 6.5e9 < counts["llm"] < 6.9e9  # Vicuna-7B
    assert 10e6 < counts["ian"] < 400e6


def test_missing_and_corrupt_images_name_the_record(tiny, tmp_path):
    cfg, model = tiny
    data = write_tiny_dataset(tmp_path / "bad", n=4)
    (tmp_path / "bad" / "img1.png").unlink()
    bad = cfg.with_overrides({"stage1.data": [{"path": str(data)}]})
    with pytest.raises(DataError, match=r"record 'r1'.*img1.png"):
        build_dataset(bad, "stage1")
    data = write_tiny_dataset(tmp_path / "corrupt", n=4)
    (tmp_path / "corrupt" / "img2.png").write_bytes(b"not a png")
    bad = cfg.with_overrides({"stage1.data": [{"path": str(data)}]})
    ds = build_dataset(bad, "stage1")
    with pytest.raises(DataError, match=r"record 'r2'.*img2.png"):
        ds.load_image(ds.record(2))
    skipping = bad.with_overrides({"stage1.on_bad_image": "skip"})
    ds = build_dataset(skipping, "stage1")
    assert ds.load_image(ds.record(2)) is None
    record, image, skipped = ds[2]
    assert image is None and "img2.png" in skipped


def test_stage2_with_lora_trains_adapters_and_ian_only_and_reloads(tiny, tmp_path):
    cfg, _ = tiny
    cfg = cfg.with_overrides({"llm.lora.enabled": True, "llm.lora.r": 4, "llm.lora.alpha": 8})
    torch.manual_seed(0)
    model = MageModel.build(cfg)
    base = {k: v.clone() for k, v in model.llm.state_dict().items()}
    train_stage(model, cfg, "stage2", tmp_path / "s2")
    assert model.lora_active
    trained = {n for n, p in model.llm.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    frozen_now = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in model.llm.state_dict().items()
        if "lora_" not in k
    }
    assert all(torch.equal(v, frozen_now[k]) for k, v in base.items())
    model.save_pretrained(tmp_path / "ckpt")
    again = MageModel.from_pretrained(tmp_path / "ckpt")
    batch = _one_batch(cfg, model, "stage2")
    model.eval()
    assert torch.equal(model(**batch).logits, again(**batch).logits)


def test_params_command_reports_parts_of_the_paper_preset(capsys):
    from harness.cli import main

    assert main(["params", "mage-7b", "--set", "ian.depth=2"]) == 0
    out = capsys.readouterr().out
    assert "144 image tokens" in out
    assert all(part in out for part in ("vision", "ian", "llm", "total"))


def test_a_source_can_keep_only_some_kinds(tiny, tmp_path):
    cfg, _ = tiny
    data = write_tiny_dataset(tmp_path / "mix", n=6)
    records = json.loads(data.read_text())
    for i, record in enumerate(records):
        record["kind"] = "mcq" if i % 3 == 0 else "short"
    data.write_text(json.dumps(records))
    mix = cfg.with_overrides(
        {"stage1.data": [{"path": str(data)}, {"path": str(data), "kinds": ["mcq"]}]}
    )
    ds = build_dataset(mix, "stage1")
    by_source = [ds.ids(part) for part in range(len(ds.tables))]
    assert by_source == [[f"r{i}" for i in range(6)], ["r0", "r3"]]
    none = cfg.with_overrides(
        {"stage1.data": [{"path": str(data)}, {"path": str(data), "kinds": ["tool"]}]}
    )
    with pytest.raises(DataError, match=r"no records of kinds \['tool'\]"):
        build_dataset(none, "stage1")


@pytest.mark.parametrize("llm_lr", [None, 1e-9])
def test_llm_lr_sets_the_llm_step_size_apart_from_the_ian(tiny, tmp_path, llm_lr):
    cfg, model = tiny
    cfg = cfg.with_overrides(
        {"stage2.steps": 2, "stage2.lr": 1e-3, "stage2.warmup_ratio": 0.0, "stage2.llm_lr": llm_lr}
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_stage(model, cfg, "stage2", tmp_path / "s2")

    def moved(prefix: str) -> float:
        return max(
            (p.detach() - before[n]).abs().max().item()
            for n, p in model.named_parameters()
            if n.startswith(prefix)
        )

    assert moved("projector.") > 1e-4
    assert (moved("llm.") > 1e-4) == (llm_lr is None)
