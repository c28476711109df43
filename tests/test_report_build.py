"""reports.build and `mage-harness report`: the report folder's contents, byte-identical
tables from the same store, refusal to overwrite a foreign folder, CLI exit codes. Runs on
the SYNTHETIC fixture store (tests/fixtures/make_store.py)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

import pytest

from harness.commands import report as report_command
from reports.build import ReportError, build_report, table_mismatches
from reports.load import load_sweep
from reports.summary import summarize

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_store", FIXTURES / "make_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_store(tmp_path_factory.mktemp("store") / "sweep", n_seeds=2)


@pytest.fixture(scope="module")
def report(store) -> Path:
    return build_report(store)  # with figures, once for the module


def test_report_folder_contents(report, store):
    assert report == store / "report"
    tables = {p.name for p in (report / "tables").iterdir()}
    for stem in ("main", "ablation_ian_depth", "categories_mme", "cost", "failures"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= tables
    figures = {p.name for p in (report / "figures").iterdir()}
    for stem in ("score_vs_depth", "score_vs_mse_weight", "encoder_comparison", "importance"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= figures
    assert (report / "figures" / "score_vs_depth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "figures" / "importance.pdf").read_bytes()[:5] == b"%PDF-"
    index = (report / "index.md").read_text()
    assert "SYNTHETIC TEST FIXTURE" in index and "## Which knob mattered" in index
    assert "fANOVA importance" in index
    html = (report / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures) // 2
    assert "<table>" in html and 'src="figures/' not in html  # self-contained


@pytest.fixture(scope="module")
def tables_only(store, tmp_path_factory) -> Path:
    return build_report(store, out_dir=tmp_path_factory.mktemp("again") / "report", figures=False)


def test_same_store_gives_byte_identical_tables(report, tables_only):
    first = sorted((report / "tables").iterdir())
    second = sorted((tables_only / "tables").iterdir())
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_table_mismatches_finds_changed_missing_and_extra_files(store, tables_only, tmp_path):
    report = tmp_path / "report"
    shutil.copytree(tables_only, report)
    summary = summarize(load_sweep(store))
    assert table_mismatches(summary, report) == []
    main = report / "tables" / "main.csv"
    main.write_text(main.read_text().replace("llava_mlp2x", "llava_mlp2X", 1))
    (report / "tables" / "cost.md").unlink()
    (report / "tables" / "old.csv").write_text("x\n")
    assert table_mismatches(summary, report) == [
        "cost.md (not in the stored report)",
        "old.csv (not regenerated)",
        "main.csv (differs)",
    ]


def test_refuses_to_replace_a_foreign_folder(store, tmp_path):
    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "draft.tex").write_text("keep me")
    with pytest.raises(ReportError, match="not a report folder"):
        build_report(store, out_dir=foreign, figures=False)
    assert (foreign / "draft.tex").read_text() == "keep me"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_report_command_replaces_a_report_in_place(store, tables_only, tmp_path, capsys):
    before = (tables_only / "tables" / "main.tex").read_bytes()
    assert _cli(["report", str(store), "--out", str(tables_only), "--no-figures"]) == 0
    assert (tables_only / "tables" / "main.tex").read_bytes() == before
    assert not list(tables_only.parent.glob(".report.*"))  # no temporary left behind
    assert "report written to" in capsys.readouterr().out
    from harness.cli import main

    assert main(["report", str(tmp_path / "missing")]) == 2  # the CLI's error boundary
    assert "not a sweep folder" in capsys.readouterr().err


def test_heatmap_fits_long_category_names_with_few_variants():
    """MMBench's L2 names (about 40 characters) under two variants: the figure grows to hold
    them, so constrained layout applies (it used to warn and clip the labels)."""
    import dataclasses
    import warnings

    from reports.figures import category_heatmap, figure_bytes

    summary = summarize(load_sweep(FIXTURES / "smoke_store"))
    stats = summary.category_stats
    two = sorted(stats["variant_id"].unique())[:2]
    summary = dataclasses.replace(summary, category_stats=stats[stats["variant_id"].isin(two)])
    fig = category_heatmap(summary, "categories_mmbench_l2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure_bytes(fig, "png")
    assert fig.get_size_inches()[1] > 4.0


def test_figures_drawn_by_two_processes_are_the_same_files(report, store, tmp_path):
    """`mage-harness report` draws the figures in forked processes: every file, figures
    (PNG and PDF) included, is byte for byte the one a single process writes."""
    parallel = build_report(store, out_dir=tmp_path / "parallel", workers=2)
    files = sorted(p.relative_to(report) for p in report.rglob("*") if p.is_file())
    assert [p for p in files if p.suffix == ".pdf"]  # figures were drawn
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    for rel in files:
        assert (parallel / rel).read_bytes() == (report / rel).read_bytes(), rel
