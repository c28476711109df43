"""Parsed record tables (`mage.records`): a sweep's own table folder and the user's cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from model_fixtures import write_tiny_dataset

from mage import records
from mage.config import DataSource


def _rows(table) -> list[dict]:
    return [dict(row) for row in table]


def test_a_table_parsed_for_one_sweep_is_linked_for_the_next(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGE_RECORDS_DIR", str(tmp_path / "user-cache"))
    source = DataSource(path=str(write_tiny_dataset(tmp_path / "data", n=5)))
    first = records.record_table(source, True, tmp_path / "sweep-a" / "records")
    key = records.table_key(source, True)
    assert (tmp_path / "user-cache" / key / "dataset_info.json").is_file()

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(records, "parse_records", no_parse)
    second = records.record_table(source, True, tmp_path / "sweep-b" / "records")
    assert _rows(second) == _rows(first)
    assert len(second) == 5 and second[0]["caption"] is not None
    # the sweep's own copy stands alone: removing the user's cache leaves it readable
    shutil.rmtree(tmp_path / "user-cache")
    again = records.record_table(source, True, tmp_path / "sweep-b" / "records")
    assert _rows(again) == _rows(first)


def test_an_edited_source_is_parsed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGE_RECORDS_DIR", str(tmp_path / "user-cache"))
    path = write_tiny_dataset(tmp_path / "data", n=5)
    source = DataSource(path=str(path))
    records.record_table(source, False, tmp_path / "sweep-a")
    path.write_text(path.read_text().replace('"r0"', '"renamed"'))
    table = records.record_table(source, False, tmp_path / "sweep-b")
    assert table[0]["id"] == "renamed"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MAGE_RECORDS_DIR": "R", "MAGE_CACHE_DIR": "C"}, Path("R")),
        ({"MAGE_CACHE_DIR": "C"}, Path("C") / "records"),
        ({}, Path.home() / ".cache" / "mage-harness" / "records"),
    ],
)
def test_the_user_cache_follows_the_environment(monkeypatch, env, expected):
    for name in ("MAGE_RECORDS_DIR", "MAGE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert records.default_records_dir() == expected
