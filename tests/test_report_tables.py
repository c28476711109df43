"""reports tables, loader and importance on the SYNTHETIC fixture store
(tests/fixtures/make_store.py): table numbers are recomputed here from the parquet files with
numpy/scipy directly, not through reports.stats."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import store as hs
from reports import importance as importance_mod
from reports.headlines import MME_COGNITION, MME_PERCEPTION
from reports.importance import param_importances
from reports.load import StoreError, load_sweep
from reports.render import latex_escape, to_csv, to_latex, to_markdown
from reports.summary import summarize
from reports.tables import (
    Table,
    ablation_tables,
    all_tables,
    category_tables,
    failures_table,
    main_table,
)

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_store", FIXTURES / "make_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return load_fixture_module().make_store(tmp_path_factory.mktemp("store") / "sweep")


@pytest.fixture(scope="module")
def summary(store):
    return summarize(load_sweep(store))


def _ok_values(store: Path, benchmark: str, metric: str) -> pd.DataFrame:
    res = pd.read_parquet(store / "results.parquet")
    trials = pd.read_parquet(store / "trials.parquet")
    ok = set(trials.loc[trials["status"] == "ok", "trial_id"])
    hit = res[
        (res["benchmark"] == benchmark)
        & (res["metric"] == metric)
        & (res["category"] == "all")
        & res["trial_id"].isin(ok)
    ]
    return hit


def test_main_table_values_are_seed_means_and_bounded_intervals(store, summary):
    table = main_table(summary)
    data = table.data.set_index("variant_id")
    bounds = {"mme_p": 2000, "mme_c": 800, "mmbench": 100, "seed": 100, "tools": 100}
    for key, metric, bench, scale in [
        ("mme_p", "mme_perception_score", "mme", 1.0),
        ("mme_c", "mme_cognition_score", "mme", 1.0),
        ("mmbench", "gpt_eval_score", "mmbench", 1.0),
        ("seed", "seed_image", "seedbench", 100.0),
        ("tools", "tool_name_accuracy", "tools", 100.0),
    ]:
        values = _ok_values(store, bench, metric)
        for vid, group in values.groupby("variant_id"):
            x = group["value"].to_numpy() * scale
            assert data.at[vid, f"{key}_mean"] == pytest.approx(x.mean())
            assert data.at[vid, f"{key}_sd"] == pytest.approx(x.std(ddof=1))
            assert data.at[vid, f"{key}_n"] == len(x)
            low, high = data.at[vid, f"{key}_ci_low"], data.at[vid, f"{key}_ci_high"]
            assert 0 <= low <= x.mean() <= high <= bounds[key]
            if key == "tools":  # items hold round-trip fidelity: seeds only, inside their range
                assert x.min() <= low and high <= x.max()
    # the failed and the stopped trial are not counted; SEED-all equals SEED here (image-only)
    assert sorted(data[["mme_p_n"]].value_counts().index.get_level_values(0)) == [2, 3]
    assert [h.label for h in summary.headlines] == ["MME-P", "MME-C", "MMBench", "SEED", "Tools"]
    methods = summary.stats.set_index("headline")["interval"]
    assert set(methods["mme_p"]) == {"bootstrap over seeds, then items"}
    assert set(methods["tools"]) == {"bootstrap over seeds"}
    # display: "mean [low, high] (n)", best main-variant mean per column in bold
    row = table.data.reset_index(drop=True)
    main_rows = row[row["role"] == "main"]
    i = int(main_rows["mme_p_mean"].idxmax())
    j = list(table.display.columns).index("MME-P")
    low, high = row.at[i, "mme_p_ci_low"], row.at[i, "mme_p_ci_high"]
    assert table.display.iat[i, j] == f"{row.at[i, 'mme_p_mean']:.1f} [{low:.1f}, {high:.1f}] (3)"
    assert (i, j) in table.bold
    assert f"**{table.display.iat[i, j]}**" in to_markdown(table)
    assert list(table.display["Role"][:2]) == ["baseline", "control"]
    # CSV holds the same numbers; a rebuild draws the same bootstrap
    csv = pd.read_csv(io.StringIO(to_csv(table)))
    assert np.allclose(csv["mme_p_mean"], row["mme_p_mean"], atol=1e-6)
    assert to_csv(main_table(summarize(load_sweep(store)))) == to_csv(table)


def test_ablation_delta_and_mcnemar_against_direct_computation(store, summary):
    tables = {t.name: t for t in ablation_tables(summary)}
    assert set(tables) == {
        "ablation_ian_depth",
        "ablation_loss_mse_weight",
        "ablation_vision_encoder",
    }
    data = tables["ablation_ian_depth"].data
    base = data[data["is_baseline"]]
    assert set(base["label"]) == {"llava_mlp2x (baseline)"}  # spec report.baseline
    row = data[(data["value"] == 2) & (data["headline"] == "mme_p")].iloc[0]
    base_row = base[base["headline"] == "mme_p"].iloc[0]
    values = _ok_values(store, "mme", "mme_perception_score")
    mean = values[values["variant_id"] == row["variant_id"]]["value"].mean()
    base_mean = values[values["variant_id"] == base_row["variant_id"]]["value"].mean()
    assert row["delta"] == pytest.approx(mean - base_mean)
    # Welch's t-test over the per-seed scores
    seeds_a = values[values["variant_id"] == row["variant_id"]]["value"]
    seeds_b = values[values["variant_id"] == base_row["variant_id"]]["value"]
    welch = sps.ttest_ind(seeds_a, seeds_b, equal_var=False)
    assert row["p_value"] == pytest.approx(welch.pvalue)
    ci = welch.confidence_interval(0.95)
    assert (row["delta_low"], row["delta_high"]) == pytest.approx((ci.low, ci.high))
    # McNemar on perception items, seeds paired in order, pooled
    items = pd.read_parquet(store / "items.parquet")
    ok = set(values["trial_id"])
    items = items[
        (items["benchmark"] == "mme")
        & items["category"].isin(MME_PERCEPTION)
        & items["trial_id"].isin(ok)
    ]
    a = items[items["variant_id"] == row["variant_id"]]
    b = items[items["variant_id"] == base_row["variant_id"]]
    n_b = n_c = 0
    for sa, sb in zip(sorted(a["seed"].unique()), sorted(b["seed"].unique())):
        m = a[a["seed"] == sa].merge(b[b["seed"] == sb], on="item_id")
        n_b += int((m["correct_x"] & ~m["correct_y"]).sum())
        n_c += int((~m["correct_x"] & m["correct_y"]).sum())
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (n_b, n_c)
    assert row["mcnemar_p"] == pytest.approx(sps.binomtest(n_b, n_b + n_c, 0.5).pvalue)
    # the other axes are held at the reference point (best grid variant by MME-P)
    labels = set(data["label"]) - {"llava_mlp2x (baseline)"}
    assert len(labels) == 3 and all(lbl.endswith("· λ 1 · world-resnet") for lbl in labels)


def test_category_tables_and_failures(store, summary):
    tables = category_tables(summary)
    assert [t.name for t in tables] == [
        "categories_mme",
        "categories_mmbench",
        "categories_mmbench_l2",
        "categories_seedbench",
        "categories_tools",
    ]
    cats = {t.name: t for t in tables}
    # SEED per question type: stored fraction (metric acc) x 100, mean over ok seeds
    res = pd.read_parquet(store / "results.parquet")
    trials = pd.read_parquet(store / "trials.parquet")
    ok = set(trials.loc[trials["status"] == "ok", "trial_id"])
    seed = res[
        (res["benchmark"] == "seedbench") & (res["metric"] == "acc") & res["trial_id"].isin(ok)
    ]
    expected = seed.groupby(["variant_id", "category"])["value"].mean() * 100
    got = cats["categories_seedbench"].data.set_index(["variant_id", "category"])["mean"]
    assert np.allclose(got.sort_index(), expected.sort_index())
    mme = cats["categories_mme"]
    assert list(mme.display.columns[1:]) == list(MME_PERCEPTION + MME_COGNITION)
    fails = failures_table(summary)
    assert len(fails.display) == 1
    assert fails.display.iat[0, 2].startswith("NonFiniteLossError: loss is nan")


def test_mme_categories_match_lmms_eval():
    # read lmms-eval's eval_type_dict without importing lmms-eval (slow)
    spec = importlib.util.find_spec("lmms_eval")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / "mme" / "utils.py"
    tree = ast.parse(path.read_text())
    node = next(
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "eval_type_dict"
    )
    types = ast.literal_eval(node.value)
    assert tuple(types["Perception"]) == MME_PERCEPTION
    assert tuple(types["Cognition"]) == MME_COGNITION


def test_latex_and_markdown_escaping():
    display = pd.DataFrame({"Variant": ["a_b & c", "50% #1"], "MME-P": ["1.0 ± 2.0 (3)", "x|y"]})
    table = Table("t_x", "T", "λ = 1, {braces} ~ ^", display, display, 1, frozenset({(0, 1)}))
    tex = to_latex(table)
    assert r"a\_b \& c" in tex and r"50\% \#1" in tex
    assert r"\textbf{1.0 $\pm$ 2.0 (3)}" in tex
    assert r"$\lambda$ = 1, \{braces\} \textasciitilde{} \textasciicircum{}" in tex
    assert r"\toprule" in tex and r"\label{tab:t-x}" in tex
    assert latex_escape("\\") == r"\textbackslash{}"
    assert "x\\|y" in to_markdown(table)


def test_importance_ranks_axes_or_says_too_few(summary, monkeypatch):
    result = param_importances(summary)
    assert result.ok and set(result.importances) == {
        "ian.depth",
        "loss.mse_weight",
        "vision.encoder",
    }
    assert math.isclose(sum(result.importances.values()), 1.0, rel_tol=1e-6)
    assert param_importances(summary).importances == result.importances  # seeded
    monkeypatch.setattr(importance_mod, "MIN_TRIALS", 1000)
    few = param_importances(summary)
    assert not few.ok and few.message.startswith("Too few to rank knobs")


def test_missing_required_column_is_named(tmp_path, store):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("trials.parquet", "manifest.json"):
        (bad / name).write_bytes((store / name).read_bytes())
    pd.read_parquet(store / "results.parquet").drop(columns=["metric"]).to_parquet(
        bad / "results.parquet"
    )
    with pytest.raises(StoreError, match=r"results\.parquet: required column\(s\) 'metric'"):
        load_sweep(bad)
    (bad / "results.parquet").unlink()
    with pytest.raises(StoreError, match=r"results\.parquet is missing"):
        load_sweep(bad)
    with pytest.raises(StoreError, match="not a sweep folder"):
        load_sweep(tmp_path / "nowhere")


def test_store_without_optional_files_or_names(tmp_path):
    make = load_fixture_module().make_store
    plain = summarize(load_sweep(make(tmp_path / "plain", with_optional=False, n_seeds=2)))
    assert any("items.parquet is absent" in n for n in plain.notes)
    data = ablation_tables(plain)[0].data
    assert data["mcnemar_p"].isna().all() and data["delta"].notna().any()
    assert data["p_value"].notna().any()  # Welch's test needs no items
    # without a variant_name column, baselines are recognised by their overrides
    unnamed = summarize(load_sweep(make(tmp_path / "unnamed", variant_names=False, n_seeds=2)))
    assert unnamed.variants.table["baseline_name"].dropna().tolist() == ["llava_mlp2x", "blind"]


def test_store_written_by_harness_store_reads_the_same(tmp_path):
    """The sweep's own writer (harness.store: per-trial records, consolidate) gives a store
    that reports read exactly like the fixture's direct parquet files."""
    fixture = load_fixture_module()
    src = fixture.make_store(tmp_path / "src", n_seeds=1)
    frames = {n: pd.read_parquet(src / f"{n}.parquet") for n in ("results", "items", "curves")}
    trials = pd.read_parquet(src / "trials.parquet")
    out = tmp_path / "written"
    for t in trials.to_dict("records"):
        record = hs.TrialRecord(
            trial_id=t["trial_id"],
            variant_id=t["variant_id"],
            variant_name=t["variant_name"],
            seed=int(t["seed"]),
            status=t["status"],
            error=t["error"],
            swept={f: t[f] for f in fixture.FIELDS},
            wall_s=t["wall_s"],
            cpu_hours=t["cpu_hours"],
            gpu_hours=t["gpu_hours"],
            steps=int(t["steps"]),
            planned_steps=900,
            stopped_early=bool(t["stopped_early"]),
        )
        parts = {n: f[f["trial_id"] == t["trial_id"]] for n, f in frames.items()}
        hs.write_trial(
            out,
            record,
            parts["results"][hs.SCORE_COLUMNS],
            parts["items"][hs.ITEM_COLUMNS],
            parts["curves"][hs.CURVE_COLUMNS],
        )
    hs.update_manifest(out, spec=json.loads((src / "manifest.json").read_text())["spec"])
    hs.consolidate(out, "synthetic-fixture", fixture.FIELDS)
    direct = {t.name: to_csv(t) for t in all_tables(summarize(load_sweep(src)))}
    written = {t.name: to_csv(t) for t in all_tables(summarize(load_sweep(out)))}
    assert set(direct) == set(written)
    for name in direct:
        assert written[name] == direct[name], name


def test_a_spec_without_axes_labels_its_base_variant_by_name(store, tmp_path):
    import shutil

    from reports.variants import collect_variants

    copy = Path(shutil.copytree(store, tmp_path / "no_axes"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["spec"]["axes"] = {}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    data = load_sweep(copy)
    grid = collect_variants(data).table.query("is_grid").variant_id
    base = grid.iloc[0]
    for frame in (data.trials, data.results):
        frame.loc[frame.variant_id == base, "variant_name"] = "world-demo"
    variants = collect_variants(data)
    assert variants.label(base) == "world-demo"
    # before the fix the label was built from the swept fields, e.g. "no" for blind=False
    assert all(variants.label(v) != "world-demo" for v in grid.iloc[1:])
