"""MageConfig: YAML round trip, presets, and clear errors that name the field."""

from __future__ import annotations

import pytest

from mage.config import ConfigError, MageConfig
from mage.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml(name, tmp_path):
    cfg = get_preset(name)
    cfg.save(tmp_path / "c.yaml")
    assert MageConfig.load(tmp_path / "c.yaml") == cfg
    cfg.save(tmp_path / "c.json")
    assert MageConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize(
    "overrides, field, hint",
    [
        ({"vision": {"encoder": "resnet-9000"}}, "vision.encoder", "registered"),
        ({"ian": {"depth": -1}}, "ian.depth", "greater than or equal to 0"),
        ({"ian": {"projector": "qformer"}}, "ian.projector", "'mlp2x_gelu'"),
        ({"ian": {"stride": 5}}, "ian.stride", "allowed strides: [1, 2, 4, 8]"),
        ({"loss": {"mse_weight": -0.5}}, "loss.mse_weight", "greater than or equal to 0"),
        ({"stage1": {"lr": 0}}, "stage1.lr", "greater than 0"),
        ({"ian": {"dept": 2}}, "ian.dept", "unknown field"),
        ({"llm": {"name": "gpt-17"}}, "llm.name", "registered"),
    ],
)
def test_bad_values_fail_at_load_naming_the_field(overrides, field, hint):
    with pytest.raises(ConfigError) as err:
        MageConfig.from_dict({"vision": {"encoder": "world-resnet"}, **overrides})
    assert field in str(err.value)
    assert hint in str(err.value)


def test_dotted_overrides_and_unknown_paths():
    cfg = get_preset("tiny-test").with_overrides({"ian.depth": 3, "loss.mse_weight": 0.0})
    assert cfg.ian.depth == 3 and cfg.loss.mse_weight == 0.0
    with pytest.raises(ConfigError, match="ian.depht"):
        cfg.with_overrides({"ian.depht": 2})


def test_data_placeholders_need_a_data_dir(monkeypatch):
    cfg = get_preset("mage-7b")
    monkeypatch.delenv("MAGE_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="data_dir"):
        cfg.data_sources("stage1")
    sources = cfg.with_overrides({"data_dir": "/data"}).data_sources("stage1")
    assert sources[0].path.startswith("/data/")


def test_epochs_without_steps_run_whole_epochs_and_steps_given_beside_them_cap():
    from mage.config import StageConfig

    assert StageConfig().steps == 100  # no epochs: the default length
    assert StageConfig(epochs=1).steps is None  # not cut at 100 steps
    assert StageConfig(epochs=1, steps=50).steps == 50
    cfg = get_preset("world-demo").with_overrides({"stage2.epochs": 1})
    assert cfg.stage2.steps is None and cfg.stage1.steps == get_preset("world-demo").stage1.steps
    cfg = get_preset("world-demo").with_overrides({"stage2.epochs": 1, "stage2.steps": 7})
    assert cfg.stage2.steps == 7
    reloaded = MageConfig.from_dict({"stage2": {"epochs": 2}})  # a config file's stage
    assert reloaded.stage2.steps is None and reloaded.stage2.epochs == 2


def test_the_stride_check_reads_the_grid_at_the_configured_image_size():
    """CLIP ViT-L/14 at 280 px has a 20x20 grid, not the registry's 24x24 at 336 px."""
    small = get_preset("mage-7b").with_overrides({"vision.image_size": 280, "ian.stride": 5})
    assert small.ian.stride == 5
    with pytest.raises(ConfigError, match=r"does not divide the 20x20 patch grid"):
        get_preset("mage-7b").with_overrides({"vision.image_size": 280, "ian.stride": 3})
