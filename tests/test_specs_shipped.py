"""Every shipped sweep spec (ablations/*.yaml) validates, plans and dry-runs here; smoke.yaml
is the embedded default the README runs, so its shape is checked too."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.commands.sweep import plan_text
from harness.plan import plan_sweep
from harness.spec import load_spec

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
SPECS = sorted(ABLATIONS.glob("*.yaml"))


def _plan(path: Path):
    spec = load_spec(path)
    return plan_sweep(spec)


def test_the_specs_are_there():
    names = {p.stem for p in SPECS}
    assert {"smoke", "paper", "depth", "mse_weight", "encoder"} <= names


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_validates_and_dry_runs(path, capsys):
    plan = _plan(path)
    text = plan_text(plan)
    assert f"trials: {plan.num_trials};" in text and "cost estimate" in text
    code = main(["sweep", str(path), "--dry-run"])
    out, err = capsys.readouterr()
    assert f"trials: {plan.num_trials};" in out
    if plan.spec.world is None:  # real data, absent here: the dry run names what is missing
        assert code == 2 and "stage1.data" in err, err
    else:
        assert code == 0, err


def test_smoke_is_a_measurable_cpu_sweep():
    """The embedded default: the paper's axes on the synthetic world (one at a time from the
    preset's depth 1 · λ 1), the LLaVA baseline and two controls declared as such, enough
    seeds for a seed-level test, 2 trials at a time."""
    plan = _plan(ABLATIONS / "smoke.yaml")
    spec = plan.spec
    grid = [v.overrides for v in plan.variants if v.kind == "grid"]
    assert spec.search == "one_at_a_time" and len(grid) == 3
    assert grid[0] == {"ian.depth": 1, "loss.mse_weight": 1.0}
    assert set(spec.axes) == {"ian.depth", "loss.mse_weight"}
    roles = {b.name: b.role for b in spec.baselines}
    baselines = {v.name: v.config for v in plan.variants if v.kind == "baseline"}
    assert baselines["llava-mlp2x"].ian.projector == "mlp2x_gelu"
    assert roles["llava-mlp2x"] == "baseline"
    assert baselines["blind"].blind and roles["blind"] == "control"
    controls = [n for n, r in roles.items() if r == "control" and not baselines[n].blind]
    assert controls, "a positive control besides blind"
    assert len(plan.seeds) >= 3 and spec.world is not None  # Welch's test needs >= 2 per side
    assert spec.resources.cpu == 1 and spec.max_concurrent_trials == 2
    assert "tools" in spec.tasks


def test_paper_spec_is_the_paper_setting():
    plan = _plan(ABLATIONS / "paper.yaml")
    encoders = {v.config.vision.encoder for v in plan.variants}
    assert {"clip-vit-l-14-336", "siglip-so400m-14-384"} <= encoders
    assert {v.config.llm.name for v in plan.variants} == {"vicuna-7b-v1.5"}
    assert {v.config.ian.depth for v in plan.variants if v.kind == "grid"} == {0, 1, 2, 3}
    res = plan.spec.resources
    assert len(plan.seeds) == 3 and res.workers == 4 and res.gpus_per_worker == 1
