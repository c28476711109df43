"""Sweep specs: bad specs are refused before anything starts, with the field named; plans
(grid, random, Optuna space, bundles, baselines, seeds, swept fields) come out as specified."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from harness.plan import plan_sweep
from harness.spec import SpecError, load_spec, parse_spec

BASE = {
    "name": "t",
    "base": "tiny-test",
    "axes": {"ian.depth": {"values": [0, 1]}, "loss.mse_weight": {"values": [0.0, 1.0]}},
    "seeds": 2,
    "objective": {"benchmark": "mme", "metric": "mme_perception_score"},
    "baselines": [
        {"name": "mlp2x", "overrides": {"ian.projector": "mlp2x_gelu"}},
        {"name": "blind", "blind": True},
    ],
    "report": {"baseline": "mlp2x"},
}


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def plan_of(data):
    return plan_sweep(parse_spec(data))


def test_misspelt_axis_is_refused_before_ray_starts(tmp_path):
    ray = pytest.importorskip("ray")
    from harness.sweep import run_sweep

    data = spec_with(axes={"ian.depht": {"values": [1, 2]}})
    with pytest.raises(SpecError, match=r"axes\['ian.depht'\]: unknown config field 'ian.depht'"):
        run_sweep(parse_spec(data), tmp_path / "sweep", progress=False)
    assert ray.is_initialized() is False
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_whose_variants_now_resolve_differently_is_not_continued(tmp_path):
    ray = pytest.importorskip("ray")
    import yaml

    from harness import store
    from harness.sweep import resume_sweep, run_sweep

    spec = parse_spec(spec_with())
    plan = plan_sweep(spec)
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    same = [{"name": v.name, "variant_id": v.variant_id} for v in plan.variants]
    other = [dict(v, variant_id="0123456789") if v["name"] == "blind" else v for v in same]
    store.update_manifest(folder, plan={"variants": other})  # as if a preset had changed
    with pytest.raises(SpecError, match=r"resolves to other configs .*\(blind: a preset"):
        run_sweep(spec, folder, progress=False)
    with pytest.raises(SpecError, match=r"resolves to other configs"):
        resume_sweep(folder, progress=False)
    assert ray.is_initialized() is False


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"axis": {}}, r"axis: unknown field"),
        (
            {"axes": {"ian.projector": {"values": ["mlp3x"]}}},
            r"axes\['ian.projector'\] value 'mlp3x'",
        ),
        (
            {"axes": {"ian.depth": {"values": [-1]}}},
            r"(?s)axes\['ian.depth'\] value -1.*ian.depth: Input should be greater",
        ),
        ({"axes": {"ian.stride": {"values": [3]}}}, r"ian.stride=3 does not divide"),
        ({"axes": {"ian.depth": {"low": 0, "high": 3}}}, r"search: grid needs `values"),
        ({"axes": {"ian.depth": {"values": []}}}, r"`values` is empty"),
        ({"search": "optuna"}, r"needs num_samples"),
        ({"report": {"baseline": "nope"}}, r"report.baseline: 'nope' is not a variant"),
        ({"base": "no-such-preset"}, r"base: unknown preset 'no-such-preset'"),
        ({"overrides": {"stage1.stpes": 3}}, r"overrides: unknown config field 'stage1.stpes'"),
        ({"seeds": [1, 1]}, r"seeds: .*without repeats"),
        ({"world": {"size": "demo", "assets": "huge"}}, r"world.assets: .*'demo-plain'"),
        ({"objective": {"benchmark": "tools", "metric": "parse_rate"}}, r"not among tasks"),
        (
            {
                "baselines": [
                    {"name": "d0", "overrides": {"ian.depth": 0, "loss.mse_weight": 0.0}}
                ],
                "report": {},
            },
            r"are the same config",
        ),
        (
            {"search": "optuna", "num_samples": 2, "early_stopping": {"grace_period": 2}},
            r"early_stopping with search: optuna/random and several seeds is refused",
        ),
    ],
)
def test_bad_specs_name_the_field(changes, message):
    with pytest.raises(SpecError, match=message):
        plan_of(spec_with(**changes))


def test_world_asset_recipes_are_the_ones_assets_can_prepare():
    from typing import get_args

    from harness.spec import WorldSpec
    from mage.world.asset_recipes import ASSET_CONFIGS

    optional = WorldSpec.model_fields["assets"].annotation
    recipes = next(a for a in get_args(optional) if a is not type(None))
    assert set(get_args(recipes)) == set(ASSET_CONFIGS)
    assert WorldSpec(size="demo").asset_recipe == "demo"
    assert WorldSpec(size="demo", assets="demo-plain").asset_recipe == "demo-plain"


def test_grid_plan_variants_seeds_and_swept_fields():
    plan = plan_of(BASE)
    assert [v.kind for v in plan.variants] == ["grid"] * 4 + ["baseline"] * 2
    assert plan.num_trials == 6 * 2
    assert plan.seeds == [0, 1]
    assert plan.swept_fields == ["ian.depth", "loss.mse_weight", "ian.projector", "blind"]
    depth1 = plan.variants[2]
    assert depth1.overrides == {"ian.depth": 1, "loss.mse_weight": 0.0}
    assert depth1.config.ian.depth == 1
    # seeds of a variant share its id; trials differ by seed; variants differ
    a, b = plan.trial_config(depth1, 0), plan.trial_config(depth1, 1)
    assert (a.seed, b.seed) == (0, 1)
    assert len({v.variant_id for v in plan.variants}) == 6
    assert depth1.trial_id(1) == f"{depth1.variant_id}-s1"
    assert plan.swept_values(plan.variants[-1].config)["blind"] is True
    assert plan.swept_values(plan.variants[-2].config)["ian.projector"] == "mlp2x_gelu"


def test_a_grid_without_axes_runs_the_base_preset_against_its_baselines():
    plan = plan_of(spec_with(axes={}))
    assert [(v.name, v.kind) for v in plan.variants] == [
        ("tiny-test", "grid"), ("mlp2x", "baseline"), ("blind", "baseline")
    ]  # fmt: skip
    assert plan.variants[0].overrides == {} and plan.num_trials == 3 * 2
    assert plan.swept_fields == ["ian.projector", "blind"]


def test_bundle_axis_sets_fields_together():
    bundle = {
        "values": [
            {"vision.encoder": "tiny-vit-random", "ian.stride": 2},
            {"vision.encoder": "tiny-resnet-random", "ian.stride": 4},
        ]
    }
    plan = plan_of(spec_with(axes={"encoder": bundle}, baselines=[], report={}))
    assert [v.config.ian.stride for v in plan.variants] == [2, 4]
    assert plan.swept_fields == ["vision.encoder", "ian.stride"]
    bad = {"values": [{"vision.encoder": "tiny-resnet-random", "ian.stride": 3}]}
    with pytest.raises(SpecError, match=r"(?s)axes\['encoder'\].*does not divide"):
        plan_of(spec_with(axes={"encoder": bad}))


def test_random_search_draws_the_same_plan_for_the_same_seed():
    axes = {
        "ian.depth": {"low": 0, "high": 3},
        "loss.mse_weight": {"low": 0.01, "high": 10, "log": True},
    }
    data = spec_with(axes=axes, search="random", num_samples=4, baselines=[], report={})
    first, again = plan_of(data), plan_of(data)
    other = plan_of({**data, "search_seed": 1})
    overrides = [v.overrides for v in first.variants]
    assert overrides == [v.overrides for v in again.variants]
    assert overrides != [v.overrides for v in other.variants]
    assert len(overrides) == 4
    for o in overrides:
        assert isinstance(o["ian.depth"], int) and 0 <= o["ian.depth"] <= 3
        assert 0.01 <= o["loss.mse_weight"] <= 10


def test_random_search_refuses_more_samples_than_the_axes_hold():
    """ian.depth 0..3 in steps of 2 holds 2 points: 3 samples would silently plan 2."""
    axes = {"ian.depth": {"low": 0, "high": 3, "step": 2}}
    data = spec_with(axes=axes, search="random", num_samples=3, baselines=[], report={})
    with pytest.raises(SpecError, match=r"num_samples: 3 distinct points .* only 2"):
        plan_of(data)
    assert len(plan_of({**data, "num_samples": 2}).variants) == 2


def test_optuna_space_types_and_trial_count():
    pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from harness.experiment import optuna_space

    axes = {
        "ian.depth": {"low": 0, "high": 3},
        "loss.mse_weight": {"low": 0.01, "high": 10, "log": True},
        "ian.projector": {"choices": ["ian", "vab"]},
    }
    plan = plan_of(
        spec_with(
            axes=axes,
            search="optuna",
            num_samples=5,
            baselines=[{"name": "blind", "blind": True}],
            report={},
        )
    )
    space = optuna_space(plan)
    assert isinstance(space["ian.depth"], IntDistribution)
    assert isinstance(space["loss.mse_weight"], FloatDistribution) and space["loss.mse_weight"].log
    assert isinstance(space["ian.projector"], CategoricalDistribution)
    assert [v.name for v in plan.variants] == ["blind"]  # searched variants come from Optuna
    assert plan.num_trials == (5 + 1) * 2


def test_load_spec_names_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"s.yaml: not valid YAML"):
        load_spec(path)
    path.write_text("name: t\nbase: tiny-test\nobjective: {benchmark: mme, metric: x}\nseeds: 0\n")
    with pytest.raises(SpecError, match=r"(?s)s.yaml.*seeds: .*>= 1"):
        load_spec(path)
    with pytest.raises(SpecError, match="sweep spec not found"):
        load_spec(tmp_path / "missing.yaml")


def test_baseline_role_is_checked():
    from harness.spec import parse_spec

    base = {"name": "x", "base": "tiny-test",
            "objective": {"benchmark": "mme", "metric": "mme_perception_score"}}  # fmt: skip
    spec = parse_spec({**base, "baselines": [{"name": "rand", "role": "control"}]})
    assert spec.baselines[0].role == "control"
    with pytest.raises(SpecError, match=r"baselines\[0\]\.role"):
        parse_spec({**base, "baselines": [{"name": "rand", "role": "best"}]})


def test_a_misspelt_objective_metric_is_refused_before_any_trial():
    from harness.spec import parse_spec

    spec = {
        "name": "x",
        "base": "tiny-test",
        "objective": {"benchmark": "mme", "metric": "mme_perceptoin_score"},
    }
    with pytest.raises(SpecError, match="'mme_perceptoin_score' is not a mme metric; known: "):
        parse_spec(spec)
    spec["objective"] = {"benchmark": "train", "metric": "stage2/ce_loss_final", "mode": "min"}
    assert parse_spec(spec).primary.key == "train/stage2/ce_loss_final/all"


def test_a_baseline_named_like_a_grid_variant_is_refused():
    from harness.plan import plan_sweep
    from harness.spec import parse_spec

    spec = parse_spec({"name": "x", "base": "tiny-test", "baselines": [{"name": "tiny-test", "blind": True}],
                       "objective": {"benchmark": "mme", "metric": "mme_perception_score"}})  # fmt: skip
    with pytest.raises(SpecError, match="two variants are named 'tiny-test'"):
        plan_sweep(spec)


def test_relative_folders_are_read_against_the_folder_the_sweep_starts_from(tmp_path, monkeypatch):
    """Ray Tune runs each trial in its own folder: a relative path must not reach a trial."""
    from harness.spec import parse_spec

    monkeypatch.chdir(tmp_path)
    objective = {"benchmark": "mme", "metric": "mme_perception_score"}
    spec = parse_spec({"name": "x", "base": "tiny-test", "data_dir": "data", "eval_data_dir": "./bench",
                       "assets_dir": "/abs/assets", "objective": objective})  # fmt: skip
    assert spec.data_dir == str(tmp_path / "data") and spec.eval_data_dir == str(tmp_path / "bench")
    assert spec.assets_dir == "/abs/assets"
    world = parse_spec({"name": "x", "base": "world-test", "world": {"size": "test", "dir": "w"},
                        "objective": objective})  # fmt: skip
    assert world.world.dir == str(tmp_path / "w")
    assert parse_spec(spec.to_dict()).to_dict() == spec.to_dict()  # a stored spec reads the same
    # Tune's storage_path too (pyarrow refused a relative one mid-run); a URI stays as it is
    tune = parse_spec({"name": "x", "base": "tiny-test", "objective": objective,
                       "storage_path": "tune"})  # fmt: skip
    assert tune.storage_path == str(tmp_path / "tune")
    cloud = parse_spec({"name": "x", "base": "tiny-test", "objective": objective,
                        "storage_path": "s3://bucket/tune"})  # fmt: skip
    assert cloud.storage_path == "s3://bucket/tune"


def test_a_sweep_folder_is_told_from_a_user_folder_that_holds_a_spec_yaml(tmp_path):
    from harness.commands.sweep import is_sweep_dir

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "spec.yaml").write_text("name: x\n")
    assert is_sweep_dir(folder)  # a sweep stopped while preparing its inputs
    (folder / "records").mkdir()
    assert is_sweep_dir(folder)
    (folder / "notes.txt").write_text("mine")
    assert not is_sweep_dir(folder)  # the user's own project folder
    (folder / "manifest.json").write_text("{}")
    assert is_sweep_dir(folder)


def test_a_sampled_integer_range_is_checked_value_by_value_and_a_bad_sample_is_refused():
    """Strides 1, 2 and 4 divide tiny-test's 4x4 patch grid, 3 does not: the ends of the
    range are fine, so every integer in it is checked before the sweep; a sampled point that
    still turns out invalid ends as a failed trial, never as a crashed sweep."""
    from types import SimpleNamespace

    from harness.tune_trial import StoreCallback, _refused

    axes = {"ian.stride": {"low": 1, "high": 4}}
    data = spec_with(axes=axes, search="optuna", num_samples=2, baselines=[], report={})
    with pytest.raises(SpecError, match=r"(?s)axes\['ian.stride'\] value 3: .*does not divide"):
        plan_of(data)
    plan = plan_of({**data, "axes": {"ian.stride": {"low": 1, "high": 2}}})
    callback = StoreCallback(Path("unused"), plan)
    callback.consolidate = lambda: None
    callback.handle(SimpleNamespace(config={"ian.stride": 3}), error=False)  # no exception
    refused = _refused({"ian.stride": 3, "__trial_index__": 0})
    assert refused["trial_status"] == "failed" and math.isnan(refused["objective"])


def test_one_at_a_time_runs_the_centre_and_each_other_value_alone():
    plan = plan_of(spec_with(search="one_at_a_time", axes={
        "ian.depth": {"values": [1, 0, 2]}, "loss.mse_weight": {"values": [1.0, 0.0]}}))  # fmt: skip
    main = [v.overrides for v in plan.variants if v.kind == "grid"]
    assert main == [
        {"ian.depth": 1, "loss.mse_weight": 1.0},  # the centre: first values
        {"ian.depth": 0, "loss.mse_weight": 1.0},
        {"ian.depth": 2, "loss.mse_weight": 1.0},
        {"ian.depth": 1, "loss.mse_weight": 0.0},
    ]
    assert plan.num_trials == parse_spec(plan.spec.to_dict()).trial_count == (4 + 2) * 2
    with pytest.raises(SpecError, match="search: one_at_a_time needs `values"):
        parse_spec(spec_with(search="one_at_a_time", axes={"ian.depth": {"low": 0, "high": 2}}))
