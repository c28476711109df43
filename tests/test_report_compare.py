"""`mage-harness compare`: whether a sweep reproduces a reference store, on the SYNTHETIC
fixture store (tests/fixtures/make_store.py): identical copies match, a changed number and a
changed asset hash are named, and the command never fails on a difference."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main as cli_main
from reports.compare import compare_stores

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_store", FIXTURES / "make_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = module.make_store(tmp_path_factory.mktemp("ref") / "sweep", n_seeds=2)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["assets"] = {"weights_sha256": {"world-llm": "a" * 64, "world-vit": "b" * 64}}
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store


def test_identical_stores_match(reference, tmp_path):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    result = compare_stores(run, reference)
    assert result.identical and result.cells > 0
    assert result.lines()[0].endswith(f"all {result.cells} headline cells identical (exact match)")


def test_a_changed_number_and_its_cause_are_named(reference, tmp_path, capsys):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    results = pd.read_parquet(run / "results.parquet")
    hit = (results["benchmark"] == "mme") & (results["metric"] == "mme_perception_score")
    row = results[hit].index[0]
    results.loc[row, "value"] += 41.0
    results.to_parquet(run / "results.parquet", index=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["assets"]["weights_sha256"]["world-llm"] = "c" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = compare_stores(run, reference)
    assert not result.identical and len(result.differing) == 1
    text = "\n".join(result.lines())
    assert f"1 of {result.cells} headline cells differ" in text
    assert "mme_perception_score" in text and "(+41)" in text
    assert "assets' weights (SHA-256): world-llm differ" in text
    assert cli_main(["compare", str(run), str(reference)]) == 0  # said, not a failure
    assert "headline cells differ" in capsys.readouterr().out
    assert cli_main(["compare", str(tmp_path / "nothing"), str(reference)]) == 1


def test_stores_without_a_common_trial_are_said_to_be_incomparable(reference, tmp_path):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    for name in ("results", "trials"):
        table = pd.read_parquet(run / f"{name}.parquet")
        table["trial_id"] = "other-" + table["trial_id"].astype(str)
        table.to_parquet(run / f"{name}.parquet", index=False)
    result = compare_stores(run, reference)
    assert result.cells == 0 and "no trial in common" in "\n".join(result.lines())


def test_a_run_that_lacks_a_reference_trial_is_not_identical(reference, tmp_path):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    trials = pd.read_parquet(run / "trials.parquet")
    failed = trials["trial_id"].iloc[0]
    trials.loc[trials["trial_id"] == failed, "status"] = "failed"
    trials.to_parquet(run / "trials.parquet", index=False)
    result = compare_stores(run, reference)
    assert result.differing.empty and result.only_there == 1 and not result.identical
    assert "stores hold different trials" in result.lines()[0]
    assert "only in the reference: 1" in "\n".join(result.lines())
