"""`harness.benchmarks`: saving the benchmarks from a (local, fake) hub at a pinned revision,
refusing partial folders with the split and the counts, and hashing a folder once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import pytest

from harness import benchmarks
from harness.benchmarks import BenchmarkDataError, check_folder, content_hash, save_benchmarks
from harness.eval_tasks import EvalError, check_local_data

BENCHES = ("mme", "mmbench", "seedbench")


class LocalHub:
    """A hub whose datasets are the test world's saved splits; revisions map to commits."""

    def __init__(self, world_bench: Path):
        self.root = world_bench
        self.loads: list[tuple[str, str]] = []
        self.commits = {"main": "a" * 40, "v1": "b" * 40}

    def resolve(self, dataset_id: str, revision: str | None) -> str:
        return self.commits[revision or "main"]

    def load(self, dataset_id: str, config, split: str, revision: str):
        self.loads.append((dataset_id, revision))
        bench = {o.dataset_id: b for b, o in benchmarks.OFFICIAL.items()}[dataset_id]
        return datasets.load_from_disk(str(self.root / bench))[split]


@pytest.fixture()
def world_bench(test_world) -> Path:
    return Path(test_world.bench["mme"]).parent


def _world_rows(world_bench: Path) -> dict[str, int]:
    counts = json.loads((world_bench.parent / "world.json").read_text())["counts"]
    return {b: counts[f"{b}_rows"] for b in BENCHES}


def test_save_pins_and_records_the_revision_and_keeps_a_saved_folder(world_bench, tmp_path):
    hub, rows = LocalHub(world_bench), _world_rows(world_bench)
    out = tmp_path / "bench"
    saved = save_benchmarks(out, hub=hub, expected=rows, log=lambda *_: None)
    manifest = json.loads((out / "benchmarks.json").read_text())
    assert set(manifest) == set(BENCHES) and manifest == json.loads(json.dumps(saved))
    assert manifest["mme"]["revision"] == "a" * 40 and manifest["mme"]["rows"] == rows["mme"]
    assert manifest["mmbench"]["config"] == "en" and manifest["mmbench"]["split"] == "dev"
    assert len(hub.loads) == 3 and all(rev == "a" * 40 for _, rev in hub.loads)
    # an evaluation checks the folder against the recorded rows
    records = check_local_data(out, BENCHES, limit=None)
    assert records["mme"]["revision"] == "a" * 40 and records["mme"]["expected_rows"] == 24

    save_benchmarks(out, hub=hub, expected=rows, log=lambda *_: None)
    assert len(hub.loads) == 3  # same revision: kept, not downloaded again
    save_benchmarks(out, ("mme",), hub=hub, revisions={"mme": "v1"}, expected=rows, log=print)
    assert hub.loads[-1] == ("lmms-lab-encoder/MME", "b" * 40)
    assert json.loads((out / "benchmarks.json").read_text())["mme"]["revision"] == "b" * 40


def test_a_partial_download_and_a_foreign_folder_are_refused(world_bench, tmp_path):
    hub = LocalHub(world_bench)
    out = tmp_path / "bench"
    with pytest.raises(BenchmarkDataError, match="has 24 rows, expected 2,374: not saved"):
        save_benchmarks(out, ("mme",), hub=hub, log=lambda *_: None)
    assert not (out / "mme").exists() and not (out / "benchmarks.json").exists()
    (out / "seedbench").mkdir()
    (out / "seedbench" / "mine.txt").write_text("a user's file")
    with pytest.raises(BenchmarkDataError, match="left alone"):
        save_benchmarks(out, ("seedbench",), hub=hub, expected=_world_rows(world_bench))
    assert (out / "seedbench" / "mine.txt").read_text() == "a user's file"


def test_a_partial_folder_is_refused_naming_the_split_and_counts(world_bench, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(world_bench, folder)  # away from its world.json: official counts apply
    with pytest.raises(EvalError, match=r"mmbench: split 'dev' has 48 rows, expected 4,329"):
        check_local_data(folder, ["mmbench"], limit=None)
    assert check_local_data(folder, ["mmbench"], limit=8)["mmbench"]["rows"] == 48
    # a folder saved with a manifest, then cut short: refused against the manifest's count
    benchmarks.write_manifest(folder, {"seedbench": {"rows": 12, "revision": "c" * 40}})
    part = datasets.load_from_disk(str(world_bench / "seedbench"))["test"].select(range(5))
    shutil.rmtree(folder / "seedbench")
    datasets.DatasetDict(test=part).save_to_disk(str(folder / "seedbench"))
    with pytest.raises(BenchmarkDataError, match=r"split 'test' has 5 rows, expected 12"):
        check_folder(folder, "seedbench", limit=None)


def test_seed_image_rows_are_checked_too(world_bench, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(world_bench / "seedbench", folder / "seedbench")
    table = datasets.load_from_disk(str(folder / "seedbench"))["test"]
    images = sum(t == "image" for t in table["data_type"])
    benchmarks.write_manifest(folder, {"seedbench": {"rows": 12, "image_rows": images + 1}})
    with pytest.raises(
        BenchmarkDataError, match=rf"\({images} image rows, expected {images + 1}\)"
    ):
        check_folder(folder, "seedbench", limit=None)


def test_the_content_hash_is_computed_once_per_folder(world_bench, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(benchmarks, "_HASHES", {})
    folder = tmp_path / "mme"
    shutil.copytree(world_bench / "mme", folder)
    calls = []
    real = benchmarks.hash_files
    monkeypatch.setattr(benchmarks, "hash_files", lambda *a: calls.append(a) or real(*a))

    first = content_hash(folder)
    assert content_hash(folder) == first and len(calls) == 1
    benchmarks._HASHES.clear()  # another process: the on-disk cache answers
    assert content_hash(folder) == first and len(calls) == 1
    arrow = next(folder.rglob("*.arrow"))
    stat = arrow.stat()
    os.utime(arrow, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert content_hash(folder) == first and len(calls) == 2  # same bytes, new mtime: rehashed
    arrow.write_bytes(arrow.read_bytes() + b"x")
    assert content_hash(folder) != first and len(calls) == 3


def test_the_command_needs_the_hub_and_says_so(tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "benchmarks", str(tmp_path / "b"), "--revision", "mme"]) == 1
    assert "BENCH=REV" in capsys.readouterr().err
    assert main(["data", "benchmarks", str(tmp_path / "b"), "--tasks", "mme"]) == 1
    err = capsys.readouterr().err
    assert "needs the Hugging Face Hub" in err and not (tmp_path / "b" / "mme").exists()


def test_a_per_category_objective_must_name_a_category_of_the_benchmark_folder(world_bench):
    """Checked once the world's benchmarks exist, before any trial: a misspelt category
    would otherwise fail every trial after it trained."""
    from harness.preflight import InputError, check_objective_categories
    from harness.spec import parse_spec

    mme = benchmarks.categories(world_bench, "mme", "acc")
    assert mme and {"existence", "count", "position", "color"} <= mme and "colour" not in mme
    seed = benchmarks.categories(world_bench, "seedbench", "acc")
    assert seed and all(c.isdigit() for c in seed)  # as the results table writes question_type_id
    assert benchmarks.categories(world_bench, "mmbench", "l2_acc")
    assert benchmarks.categories(world_bench.parent, "mme", "acc") is None  # no folder there
    damaged = world_bench.parent.parent / "damaged"
    (damaged / "mme").mkdir(parents=True, exist_ok=True)
    (damaged / "mme" / "dataset_dict.json").write_text('{"splits": ["test"]}')
    with pytest.raises(BenchmarkDataError, match=r"damaged/mme: cannot read its 'category'"):
        benchmarks.categories(damaged, "mme", "acc")

    def spec(*objectives):
        return parse_spec(
            {"name": "s", "base": "tiny-test", "axes": {"ian.depth": {"values": [1]}},
             "seeds": [0], "objective": list(objectives)}
        )  # fmt: skip

    good = {"benchmark": "mme", "metric": "acc", "category": "count"}
    check_objective_categories(spec(good), world_bench)
    check_objective_categories(spec({**good, "category": "colour"}), None)  # Hub data: unknown
    bad = spec(good, {"benchmark": "mme", "metric": "score", "category": "colour"})
    with pytest.raises(InputError, match=r"objective\[1\] \(mme/score/colour\).*'color'"):
        check_objective_categories(bad, world_bench)


def test_a_world_sweep_refuses_a_misspelt_category_once_its_world_is_prepared(
    test_world, test_assets, tmp_path
):
    from harness import sweep
    from harness.plan import plan_sweep
    from harness.preflight import InputError
    from harness.spec import parse_spec

    spec = parse_spec(
        {"name": "s", "base": "world-test", "assets_dir": str(test_assets),
         "world": {"size": "test", "seed": 0, "dir": str(test_world.root)},
         "axes": {"ian.depth": {"values": [1]}}, "seeds": [0], "tasks": ["mme"],
         "objective": [{"benchmark": "mme", "metric": "acc", "category": "colour"}]}
    )  # fmt: skip
    with pytest.raises(InputError, match="category 'colour' is not in"):
        sweep._prepare_shared_inputs(plan_sweep(spec), tmp_path / "sweep")
