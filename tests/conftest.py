"""Shared pytest setup: one CPU thread per test process, and a test-size synthetic world.

`test_world` (a generated test-size world, `mage.world.generate.WorldPaths`) and
`test_assets` (the path of test-size assets prepared for it: world-vit, world-resnet,
world-llm) are session-scoped: built once, in seconds, and shared by every test module.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(1)
# Parsed record tables (mage.records) go to a throwaway folder, not the user's cache,
# removed when the test run ends.
if "MAGE_RECORDS_DIR" not in os.environ:
    os.environ["MAGE_RECORDS_DIR"] = tempfile.mkdtemp(prefix="mage-records-")
    atexit.register(shutil.rmtree, os.environ["MAGE_RECORDS_DIR"], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def fingerprint_cache(tmp_path_factory):
    """Data fingerprints (`harness.fingerprint`) cached in a temporary folder, not the user's
    cache; set before any test starts Ray, so its workers inherit it."""
    os.environ["MAGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def test_world(tmp_path_factory):
    from mage.world.generate import generate_world

    return generate_world(tmp_path_factory.mktemp("world") / "world", seed=0, size="test")


@pytest.fixture(scope="session")
def test_assets(test_world, tmp_path_factory):
    from mage.world.assets import prepare_assets

    out = tmp_path_factory.mktemp("assets") / "assets"
    return prepare_assets(test_world, out, size="test", progress=False)
