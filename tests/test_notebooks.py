"""The reviewer notebooks run top to bottom with nbclient, with no manual step, on a results
store given through MAGE_SWEEP_DIR (here the SYNTHETIC fixture store with a built report;
reproduce_tables.ipynb asserts that its regenerated tables equal the report's files)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from reports.build import build_report

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_store", ROOT / "tests" / "fixtures" / "make_store.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = module.make_store(tmp_path_factory.mktemp("nb") / "sweep", n_seeds=2)
    build_report(store, figures=False)  # the stored report the notebook compares against
    return store


def run_notebook(name: str, sweep_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("MAGE_SWEEP_DIR", str(sweep_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on failure
    return nb


def _outputs(nb: nbformat.NotebookNode) -> str:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(texts)


def test_reproduce_tables_notebook(sweep_dir, monkeypatch):
    nb = run_notebook("reproduce_tables.ipynb", sweep_dir, monkeypatch)
    text = _outputs(nb)
    assert f"sweep folder: {sweep_dir}" in text
    assert "match the stored report byte for byte" in text
    assert "regenerated figures: score_vs_depth" in text


def test_explore_sweep_notebook(sweep_dir, monkeypatch):
    nb = run_notebook("explore_sweep.ipynb", sweep_dir, monkeypatch)
    text = _outputs(nb)
    assert "failed:" in text and "NonFiniteLossError" in text
    assert "baseline: llava_mlp2x" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images == 2  # learning curves and the MME difference heatmap


SMOKE_STORE = ROOT / "tests" / "fixtures" / "smoke_store"


@pytest.mark.skipif(
    not (SMOKE_STORE / "results.parquet").exists(), reason="no committed smoke-sweep store"
)
def test_reproduce_tables_notebook_on_the_committed_smoke_store(monkeypatch, tmp_path):
    """The real smoke-sweep output in the repo: its committed report is regenerated exactly."""
    store = Path(shutil.copytree(SMOKE_STORE, tmp_path / "smoke_store"))
    nb = run_notebook("reproduce_tables.ipynb", store, monkeypatch)
    assert "match the stored report byte for byte" in _outputs(nb)


@pytest.mark.parametrize("name", ["reproduce_tables.ipynb", "explore_sweep.ipynb"])
def test_a_folder_without_a_store_stops_the_notebook(name, monkeypatch, tmp_path):
    """A mistyped MAGE_SWEEP_DIR is an error naming the folder, never made-up numbers."""
    from nbclient.exceptions import CellExecutionError

    empty = tmp_path / "no_store_here"
    empty.mkdir()
    with pytest.raises(CellExecutionError) as info:
        run_notebook(name, empty, monkeypatch)
    message = str(info.value)
    assert "FileNotFoundError" in message and f"No results store in {empty}" in message
    assert "SYNTHETIC" not in message
