"""SEED as the paper reports it: the headline SEED is lmms-eval's seed_image (SEED-Bench's image
questions, as MAGE and LLaVA-1.5 report it); seed_all (image and video) stays available as
SEED-all. Checked on the synthetic fixture store with some SEED items turned into video
questions, so that the two numbers differ."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_report_tables import load_fixture_module

from harness.spec import load_spec
from reports.headlines import HEADLINES_BY_KEY
from reports.load import load_sweep
from reports.summary import paired_items, summarize
from reports.tables import main_table

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
VIDEO_TYPE = "11"  # SEED-Bench's Action Prediction, a video question
IMAGE_TYPES = [str(t) for t in range(1, 10)]  # SEED-Bench's image dimensions


@pytest.fixture(scope="module")
def video_store(tmp_path_factory) -> Path:
    """The fixture store with SEED type 4 recast as a video type: seed_image and seed_all
    recomputed from the items, so they differ."""
    store = load_fixture_module().make_store(tmp_path_factory.mktemp("seed") / "sweep", n_seeds=2)
    items = pd.read_parquet(store / "items.parquet")
    seed = items["benchmark"] == "seedbench"
    items.loc[seed & (items["category"] == "4"), "category"] = VIDEO_TYPE
    items.to_parquet(store / "items.parquet")
    results = pd.read_parquet(store / "results.parquet")
    seed_items = items[seed]
    image = seed_items[seed_items["category"].isin(IMAGE_TYPES)]
    truth = {
        "seed_image": image.groupby("trial_id")["correct"].mean(),
        "seed_all": seed_items.groupby("trial_id")["correct"].mean(),
    }
    rows = (results["benchmark"] == "seedbench") & (results["category"] == "all")
    for metric, by_trial in truth.items():
        hit = rows & (results["metric"] == metric) & results["trial_id"].isin(by_trial.index)
        results.loc[hit, "value"] = results.loc[hit, "trial_id"].map(by_trial)
    acc = (results["benchmark"] == "seedbench") & (results["category"] == "4")
    results.loc[acc, "category"] = VIDEO_TYPE
    results.to_parquet(store / "results.parquet")
    return store


def test_seed_is_seed_image_and_seed_all_is_labelled(video_store):
    summary = summarize(load_sweep(video_store))
    labels = [h.label for h in summary.headlines]
    assert "SEED" in labels and "SEED-all" in labels
    table = main_table(summary).data.set_index("variant_id")
    results = pd.read_parquet(video_store / "results.parquet")
    trials = pd.read_parquet(video_store / "trials.parquet")
    ok = set(trials.loc[trials["status"] == "ok", "trial_id"])
    overall = results[
        (results["benchmark"] == "seedbench")
        & (results["category"] == "all")
        & results["trial_id"].isin(ok)
    ]
    for key, metric in [("seed", "seed_image"), ("seed_all", "seed_all")]:
        means = overall[overall["metric"] == metric].groupby("variant_id")["value"].mean() * 100
        for variant, mean in means.items():
            assert table.at[variant, f"{key}_mean"] == pytest.approx(mean)
    image_mean = overall[overall["metric"] == "seed_image"]["value"].mean()
    all_mean = overall[overall["metric"] == "seed_all"]["value"].mean()
    assert image_mean != pytest.approx(all_mean)  # the two really differ here
    assert "seed_image" in HEADLINES_BY_KEY["seed"].meaning
    assert "video" in HEADLINES_BY_KEY["seed_all"].meaning


def test_seed_pairs_image_questions_only(video_store):
    summary = summarize(load_sweep(video_store))
    variant = summary.variants.order()[0]
    items = summary.items_by_variant[variant]
    seed_items = items[items["benchmark"] == "seedbench"]
    image = paired_items(summary, variant, HEADLINES_BY_KEY["seed"])
    every = paired_items(summary, variant, HEADLINES_BY_KEY["seed_all"])
    assert len(every) == len(seed_items)
    assert len(image) == (seed_items["category"] != VIDEO_TYPE).sum() < len(every)


def test_an_image_only_seed_shows_one_column(tmp_path):
    """The synthetic world has image questions only: SEED-all would repeat SEED."""
    store = load_fixture_module().make_store(tmp_path / "sweep", n_seeds=2)
    summary = summarize(load_sweep(store))
    assert [h.key for h in summary.headlines if h.benchmark == "seedbench"] == ["seed"]


def test_the_paper_spec_ranks_on_seed_image():
    spec = load_spec(ABLATIONS / "paper.yaml")
    seed = [o for o in spec.objective if o.benchmark == "seedbench"]
    assert [o.metric for o in seed] == ["seed_image"]
