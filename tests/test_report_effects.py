"""The report's effects section, roles and intervals on a HAND-MADE store with a known effect
(MSE weight 1 is +120 MME-P over 0 on every seed) and a known null (IAN depth 1 and 2 draw
the same scores), a blind control, a positive control and a baseline; a control is the best
on tool calling, and two seeds of MMBench are far apart near 0, where a Student-t interval
runs below 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from reports.build import render_report
from reports.effects import all_effects, effect_lines
from reports.load import load_sweep
from reports.summary import Summary, summarize
from reports.tables import all_tables
from reports.variants import MAIN

SEEDS = (0, 1, 2)
NOISE = (-6.0, 1.0, 5.0)  # per seed, the same for every variant: no seed makes an effect
# (MME-P, MMBench per seed, SEED fraction, tools fraction) of each variant
MAIN_SCORES = {0.0: 300.0, 1.0: 420.0}  # MSE weight -> MME-P; IAN depth changes nothing
MMBENCH = {"main": (2.0, 9.0, 4.0), "blind": (0.0, 7.5, 0.0), "random-tower": (0.5, 0.0, 6.0),
           "llava-mlp2x": (3.0, 1.0, 8.0)}  # fmt: skip
FIXED = {"blind": 210.0, "random-tower": 250.0, "llava-mlp2x": 330.0}
BOUNDS = {"mme_p": (0, 2000), "mme_c": (0, 800), "mmbench": (0, 100), "seed": (0, 100),
          "tools": (0, 100)}  # fmt: skip


def _variants():
    out = []
    for depth in (1, 2):
        for weight in (0.0, 1.0):
            name = f"ian.depth={depth},loss.mse_weight={weight}"
            fields = {"ian.depth": depth, "loss.mse_weight": weight, "ian.projector": "ian",
                      "blind": False, "vision.pretrained": "world"}  # fmt: skip
            out.append((name, fields, MAIN_SCORES[weight], MMBENCH["main"], 0.90))
    base = {"ian.depth": 1, "loss.mse_weight": 1.0, "ian.projector": "ian", "blind": False,
            "vision.pretrained": "world"}  # fmt: skip
    out.append(("llava-mlp2x", {**base, "ian.projector": "mlp2x_gelu"}, FIXED["llava-mlp2x"],
                MMBENCH["llava-mlp2x"], 0.92))  # fmt: skip
    out.append(("blind", {**base, "blind": True}, FIXED["blind"], MMBENCH["blind"], 0.99))
    out.append(("random-tower", {**base, "vision.pretrained": "none"}, FIXED["random-tower"],
                MMBENCH["random-tower"], 0.91))  # fmt: skip
    return out


def make_effects_store(root: Path) -> Path:
    root.mkdir(parents=True)
    results, trials = [], []
    for i, (name, fields, mme_p, mmbench, tools) in enumerate(_variants()):
        vid = f"v{i:02d}"
        for s in SEEDS:
            tid = f"{vid}-s{s}"
            ids = {"trial_id": tid, "variant_id": vid, "variant_name": name, "seed": s}
            trials.append({**ids, "status": "ok", "error": None, **fields, "wall_s": 60.0,
                           "cpu_hours": 60 / 3600, "gpu_hours": 0.0, "steps": 100,
                           "stopped_early": False})  # fmt: skip
            rows = [
                ("mme", "mme_perception_score", mme_p + NOISE[s]),
                ("mme", "mme_cognition_score", 100.0 + NOISE[s]),
                ("mmbench", "gpt_eval_score", mmbench[s]),
                ("seedbench", "seed_image", 0.30 + NOISE[s] / 1000),
                ("seedbench", "seed_all", 0.30 + NOISE[s] / 1000),
                ("tools", "tool_name_accuracy", tools + NOISE[s] / 1000),
            ]
            for bench, metric, value in rows:
                results.append({"sweep": "effects", **ids, "status": "ok", **fields,
                                "benchmark": bench, "metric": metric, "category": "all",
                                "value": value, "n": 100})  # fmt: skip
    pd.DataFrame(results).to_parquet(root / "results.parquet", index=False)
    pd.DataFrame(trials).to_parquet(root / "trials.parquet", index=False)
    spec = {
        "name": "effects",
        "base": "world-demo",
        "axes": {"ian.depth": {"values": [1, 2]}, "loss.mse_weight": {"values": [0.0, 1.0]}},
        "baselines": [
            {"name": "llava-mlp2x", "overrides": {"ian.projector": "mlp2x_gelu"}},
            {"name": "blind", "blind": True},
            {"name": "random-tower", "overrides": {"vision.pretrained": "none"}, "role": "control"},
        ],
        "objective": [{"benchmark": "mme", "metric": "mme_perception_score"}],
        "report": {"baseline": "llava-mlp2x"},
    }
    (root / "manifest.json").write_text(json.dumps({"spec": spec}))
    return root


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return summarize(load_sweep(make_effects_store(tmp_path_factory.mktemp("fx") / "store")))


def test_roles_and_labels(summary):
    table = summary.variants.table.set_index("variant_name")
    assert (
        table.at["blind", "role"] == "control" and table.at["blind", "label"] == "blind (control)"
    )
    assert table.at["random-tower", "role"] == "control"
    assert table.at["llava-mlp2x", "label"] == "llava-mlp2x (baseline)"
    assert (table.loc[table["is_grid"], "role"] == MAIN).all()


def test_effects_section_finds_the_effect_and_the_null(summary):
    lines = effect_lines(summary)
    weight = next(line for line in lines if line.startswith("MSE weight λ 0 vs 1"))
    assert weight.startswith("MSE weight λ 0 vs 1 (IAN depth = ")
    assert "MME-P -120.0 [" in weight and "p < 0.001" in weight
    depth = next(line for line in lines if line.startswith("IAN depth"))
    assert "no difference beyond seed spread on any benchmark" in depth
    blind = next(line for line in lines if line.startswith("blind (control)"))
    assert "every main variant is above it on MME-P (+90.0 to +210.0, each p" in blind
    positive = next(line for line in lines if line.startswith("random-tower (control)"))
    assert "every main variant is above it on MME-P" in positive
    effects = {(e.topic, e.headline): e for e in all_effects(summary) if e.kind == "axis"}
    known = effects[("loss.mse_weight", "mme_p")]
    assert known.diff == pytest.approx(-120.0) and known.p_value < 0.001
    assert known.low < -120.0 < known.high < 0
    null = effects[("ian.depth", "mme_p")]
    assert null.diff == pytest.approx(0.0) and null.p_value == 1.0


def test_welch_p_and_interval_match_scipy(summary):
    from scipy import stats as sps

    effect = next(e for e in all_effects(summary) if e.b_label == "blind (control)"
                  and e.headline == "mmbench")  # fmt: skip
    a, b = MMBENCH["main"], MMBENCH["blind"]
    assert effect.diff == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert effect.p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (effect.low, effect.high) == pytest.approx((ci.low, ci.high))


def test_no_control_or_baseline_is_bold(summary):
    roles = summary.variants.table.set_index("label")["role"]
    checked = 0
    for table in all_tables(summary):
        if "Variant" not in table.display.columns:
            continue
        col = list(table.display.columns).index("Variant")
        for row, _ in table.bold:
            label = table.display.iat[row, col]
            if label == "Total":  # the cost table's sum row
                continue
            assert roles[label] == MAIN, (table.name, row)
            checked += 1
    assert checked  # some main variant is bold
    # blind has the best tool score: bold goes to the best main variant instead
    main = next(t for t in all_tables(summary) if t.name == "main")
    tools = list(main.display.columns).index("Tools")
    bold_rows = [r for r, c in main.bold if c == tools]
    assert [main.display.iat[r, 0] for r in bold_rows] != ["blind (control)"]


def test_every_interval_of_a_bounded_metric_is_inside_its_bounds(summary):
    main = next(t for t in all_tables(summary) if t.name == "main").data
    for key, (low, high) in BOUNDS.items():
        lows, highs = main[f"{key}_ci_low"].dropna(), main[f"{key}_ci_high"].dropna()
        assert len(lows) == len(main)
        assert (lows >= low).all() and (highs <= high).all(), key
        assert (lows <= main[f"{key}_mean"]).all() and (main[f"{key}_mean"] <= highs).all()
    # blind's MMBench seeds are 0, 7.5, 0: a t-interval would reach -8.2; this one starts at 0
    blind = main[main["label"] == "blind (control)"].iloc[0]
    assert blind["mmbench_ci_low"] == pytest.approx(0.0)
    assert not math.isnan(blind["mmbench_ci_high"]) and blind["mmbench_ci_high"] <= 7.5


def test_report_pages_open_with_the_effects(summary):
    files = render_report(summary.data, figures=False)
    index = files["index.md"].decode()
    assert index.index("## Effects") < index.index("## What the numbers mean")
    assert "Welch's t-test" in index and "McNemar" in index
    assert "effects.md" in {name.split("/")[-1] for name in files}
    assert "<h2>Effects</h2>" in files["index.html"].decode()


def _cut_seeds(root: Path, keep_all: set[str]) -> Summary:
    """The store with seed 0 only, except the variants named in ``keep_all``."""
    for name in ("results.parquet", "trials.parquet"):
        frame = pd.read_parquet(root / name)
        keep = frame["variant_name"].isin(keep_all) | (frame["seed"] == 0)
        frame[keep].to_parquet(root / name, index=False)
    return summarize(load_sweep(root))


def test_a_comparison_with_one_seed_is_said_untested_never_no_difference(tmp_path):
    one_seed = _cut_seeds(make_effects_store(tmp_path / "a"), set())
    lines = effect_lines(one_seed)
    weight = next(line for line in lines if line.startswith("MSE weight λ 0 vs 1"))
    assert "not tested on MME-P" in weight and "no difference" not in weight
    blind = next(line for line in lines if line.startswith("blind (control)"))
    assert "not tested on MME-P" in blind and "above it" not in blind
    # one main variant with 3 seeds, three with 1: "1 of 4", never "the main variant"
    kept = "ian.depth=1,loss.mse_weight=1.0"
    mixed = _cut_seeds(make_effects_store(tmp_path / "b"), {kept, "blind"})
    blind = next(line for line in effect_lines(mixed) if line.startswith("blind (control)"))
    assert "1 of 4 main variants are above it on MME-P (3 not tested)" in blind
    assert "the main variant is above" not in blind and "every main variant" not in blind


def _edit_results(root: Path, change) -> Summary:
    frame = pd.read_parquet(root / "results.parquet")
    change(frame).to_parquet(root / "results.parquet", index=False)
    return summarize(load_sweep(root))


def _mme_p(frame: pd.DataFrame) -> pd.Series:
    return frame["metric"] == "mme_perception_score"


def test_a_variant_without_scores_is_neither_the_reference_nor_counted_as_above(tmp_path):
    """A main variant whose objective is NaN (first in grid order) does not become the point
    the ablation slices hold fixed; one with no scores at all keeps "every main variant"
    from being said of the others."""

    def nan_first(frame):
        frame.loc[_mme_p(frame) & (frame["variant_id"] == "v00"), "value"] = math.nan
        return frame

    nan = _edit_results(make_effects_store(tmp_path / "a"), nan_first)
    assert nan.variants.reference == {"ian.depth": 1, "loss.mse_weight": 1.0}  # best scored
    gone = _edit_results(make_effects_store(tmp_path / "b"), lambda f: f[f["variant_id"] != "v03"])
    blind = next(line for line in effect_lines(gone) if line.startswith("blind (control)"))
    assert "every main variant" not in blind
    assert "3 of 4 main variants are above it on MME-P (1 not tested)" in blind


def test_a_nan_seed_leaves_the_interval_of_the_others(tmp_path):
    def nan_seed(frame):
        frame.loc[_mme_p(frame) & (frame["trial_id"] == "v05-s1"), "value"] = math.nan
        return frame

    summary = _edit_results(make_effects_store(tmp_path / "a"), nan_seed)
    main = next(t for t in all_tables(summary) if t.name == "main").data
    blind = main[main["label"] == "blind (control)"].iloc[0]
    assert blind["mme_p_n"] == 2 and blind["mme_p_ci_low"] <= blind["mme_p_mean"]
    assert blind["mme_p_mean"] <= blind["mme_p_ci_high"]


def test_intervals_that_do_not_resample_items_are_named(tmp_path, summary):
    assert "the store holds no per-item results of MME-P, MME-C, MMBench, SEED: their " in " ".join(
        summary.notes
    )
    smoke = Path(__file__).parent / "fixtures" / "smoke_store"
    store = tmp_path / "smoke"
    store.mkdir()
    for name in ("results", "trials", "curves"):
        (store / f"{name}.parquet").write_bytes((smoke / f"{name}.parquet").read_bytes())
    (store / "manifest.json").write_bytes((smoke / "manifest.json").read_bytes())
    items = pd.read_parquet(smoke / "items.parquet")
    dropped = items["trial_id"].iloc[0]
    items[items["trial_id"] != dropped].to_parquet(store / "items.parquet", index=False)
    notes = summarize(load_sweep(store)).notes
    assert not any("no per-item" in n for n in notes)
    seeds_only = next(n for n in notes if n.startswith("intervals over seeds only"))
    assert "MME-P" in seeds_only and "SEED" in seeds_only


def test_a_one_at_a_time_design_slices_through_its_centre(tmp_path):
    """search: one_at_a_time: the first values are the centre; each axis row compares a value
    with the centre, not with the best-scoring variant (here depth 1 · λ 1)."""
    root = make_effects_store(tmp_path / "oat")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["spec"]["search"] = "one_at_a_time"
    manifest["spec"]["axes"] = {"ian.depth": {"values": [2, 1]},
                                "loss.mse_weight": {"values": [0.0, 1.0]}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    summary = summarize(load_sweep(root))
    assert summary.variants.reference == {"ian.depth": 2, "loss.mse_weight": 0.0}
    lines = effect_lines(summary)
    weight = next(line for line in lines if line.startswith("MSE weight λ 1 vs 0"))
    assert weight.startswith("MSE weight λ 1 vs 0 (IAN depth = 2)") and "MME-P +120.0" in weight
    assert any(line.startswith("IAN depth 1 vs 2 (MSE weight λ = 0)") for line in lines)
    assert any("one-at-a-time centre" in note for note in summary.variants.notes)


def test_a_one_at_a_time_spec_with_a_bundle_axis_keeps_the_usual_reference(tmp_path):
    root = make_effects_store(tmp_path / "bundle")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["spec"]["search"] = "one_at_a_time"
    manifest["spec"]["axes"]["tower"] = {"values": [{"vision.pretrained": "world"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    summary = summarize(load_sweep(root))
    reference = summary.variants.reference
    assert (reference["ian.depth"], reference["loss.mse_weight"]) == (1, 1.0)  # best scored
    assert not any("one-at-a-time centre" in note for note in summary.variants.notes)
