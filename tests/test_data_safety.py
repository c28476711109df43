"""Nothing lost, one clear line: the cases that used to destroy files, damage stores, hang on
an unreachable cluster or end in a traceback, each reproduced through the command line.

- ``data synth .`` and ``data synth USER_FOLDER`` leave the user's files alone;
- ``status`` / ``resume`` refuse a corrupted store before any work, ``resume`` never rewrites
  a table from fewer trials than it holds, ``store rebuild`` repairs what can be repaired;
- ``--ray-address`` to a closed loopback port ends within its deadline, names the address
  given and writes nothing into ``--out``; SIGTERM ends a connection attempt at once;
- a truncated checkpoint is one line naming the file; ``--debug`` shows the traceback;
- a Hugging Face id is reported at once when it cannot be had, and passes when cached;
- ``data check`` lists unreadable images by record; a huge grid needs ``--yes``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from model_fixtures import write_tiny_dataset
from robustness_fixtures import digest, make_recorded_store, save_tiny_checkpoint, truncate

from harness import store
from harness.cli import main, one_line
from harness.store import DamagedStoreError

ROOT = Path(__file__).resolve().parents[1]


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("\\section{Results} months of work\n")
    (path / "figures").mkdir(exist_ok=True)
    (path / "figures" / "plot.png").write_bytes(b"\x89PNG not really")
    return digest(path)


def _cli(*argv: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 60):
    """The command line in its own process: (exit code, stderr, seconds)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


# ---- data synth ------------------------------------------------------------------------------


def test_data_synth_dot_leaves_the_current_folder_alone(tmp_path, monkeypatch, capsys):
    """It used to delete everything in the current folder, then crash."""
    before = _user_folder(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["data", "synth", ".", "--size", "test", "--quiet"]) == 2
    assert "is the current folder" in capsys.readouterr().err
    assert digest(tmp_path / "work") == before


@pytest.mark.parametrize("force", [False, True])
def test_data_synth_into_a_user_folder_is_refused(tmp_path, capsys, force):
    """It used to replace the folder and the user's files in it (exit 0)."""
    before = _user_folder(tmp_path / "mine")
    argv = ["data", "synth", str(tmp_path / "mine"), "--size", "test", "--quiet"]
    assert main(argv + (["--force"] if force else [])) == 2
    assert "is not a world folder" in capsys.readouterr().err
    assert digest(tmp_path / "mine") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left


def test_data_synth_replaces_a_world_only_with_force(tmp_path, capsys):
    argv = ["data", "synth", str(tmp_path / "w"), "--size", "test", "--quiet"]
    assert main(argv) == 0
    before = digest(tmp_path / "w")
    assert main(argv + ["--seed", "1"]) == 2 and "--force" in capsys.readouterr().err
    assert digest(tmp_path / "w") == before
    assert main(argv + ["--seed", "1", "--force"]) == 0
    assert digest(tmp_path / "w") != before


def test_atomic_path_refuses_a_path_without_a_name(tmp_path, monkeypatch):
    from mage.io import PathError, atomic_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    for bad in (".", "..", "/", ""):
        with pytest.raises(PathError, match="without a name"), atomic_path(bad):
            pass
    assert (tmp_path / "keep.txt").read_text() == "x"


# ---- stores ----------------------------------------------------------------------------------


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return make_recorded_store(tmp_path / "sweep")


def test_status_refuses_a_corrupted_results_table(sweep_dir, capsys):
    """It used to say '0/20 trials stored' and exit 0 (it read only the records)."""
    (sweep_dir / "results.parquet").write_bytes(b"PAR1 this was a parquet file")
    assert main(["status", str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert "results.parquet cannot be read" in err and "store rebuild" in err


def test_resume_refuses_a_corrupted_store_before_any_work(sweep_dir):
    """It used to start preparing the world and Ray without looking at the store."""
    truncate(sweep_dir / "results.parquet")
    before = digest(sweep_dir)
    code, err, seconds = _cli("resume", str(sweep_dir))
    assert code == 2 and "results.parquet cannot be read" in err, err
    assert "preparing" not in err and len(err.strip().splitlines()) == 1, err
    assert digest(sweep_dir) == before


def test_resume_never_rewrites_the_tables_from_fewer_trials(sweep_dir, capsys):
    gone = sorted((sweep_dir / "trials").iterdir())[0]
    shutil.rmtree(gone)  # a record lost, the tables still hold its trial
    before = digest(sweep_dir)
    assert main(["resume", str(sweep_dir)]) == 2
    assert "from fewer trials" in capsys.readouterr().err
    with pytest.raises(DamagedStoreError, match="not rewritten from fewer"):
        store.consolidate(sweep_dir, "robust", ["ian.depth"])
    assert digest(sweep_dir) == before
    # the repair the message names: keep only the recorded trials; resume would re-run it
    assert main(["store", "rebuild", str(sweep_dir), "--drop-missing"]) == 0
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(trials) == 3 and gone.name not in set(trials["trial_id"])


def test_store_rebuild_repairs_a_corrupted_table_and_manifest(sweep_dir, capsys):
    original = pd.read_parquet(sweep_dir / "results.parquet")
    for path in (sweep_dir / "trials").glob("*/record.json"):  # scored as a sweep records it
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "eval_record": {"mmbench_scoring": "static"}}))
    (sweep_dir / "results.parquet").write_bytes(b"garbage")
    (sweep_dir / "manifest.json").write_text('{"spec": ')
    assert main(["status", str(sweep_dir)]) == 2
    capsys.readouterr()
    assert main(["store", "rebuild", str(sweep_dir)]) == 0
    assert "damaged/manifest.json" in capsys.readouterr().out  # kept, not deleted
    # a resumed sweep scores MMBench as its first trials did: the method is recovered
    assert store.read_manifest(sweep_dir)["mmbench_scoring"] == "static"
    pd.testing.assert_frame_equal(pd.read_parquet(sweep_dir / "results.parquet"), original)
    assert main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "4/4 trials stored (4 ok" in out and "best mme/mme_perception_score/all: 101" in out


def test_status_of_a_published_store_reads_its_tables(sweep_dir, capsys):
    """A copy of the tables without trials/ (like the committed smoke store) is whole."""
    shutil.rmtree(sweep_dir / "trials")
    assert main(["status", str(sweep_dir)]) == 0
    assert "4/4 trials stored (4 ok, 0 failed, 0 stopped)" in capsys.readouterr().out


# ---- Ray -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: cluster\nbase: world-test\nworld: {size: test}\nseeds: [0]\n"
        "objective: {benchmark: mme, metric: mme_perception_score}\ntasks: [mme]\n"
    )
    return spec


def test_default_connect_deadline_is_30_s(monkeypatch):
    from harness.ray_cluster import DEFAULT_CONNECT_TIMEOUT_S, connect_timeout_s

    monkeypatch.delenv("MAGE_RAY_CONNECT_TIMEOUT", raising=False)
    assert connect_timeout_s() == DEFAULT_CONNECT_TIMEOUT_S == 30.0
    monkeypatch.setenv("MAGE_RAY_CONNECT_TIMEOUT", "7.5")
    assert connect_timeout_s() == 7.5


def test_ray_address_to_a_closed_port_fails_in_time_naming_it(tmp_path):
    """It used to retry for ever (naming another address) with spec.yaml already in --out."""
    address = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "out"
    code, err, seconds = _cli(
        "sweep",
        str(_world_spec(tmp_path)),
        "--out",
        str(out),
        "--ray-address",
        address,
        env={"MAGE_RAY_CONNECT_TIMEOUT": "5"},
    )
    assert code == 2 and f"no Ray cluster answers at {address}" in err, err
    assert len(err.strip().splitlines()) == 1 and seconds < 40
    assert not out.exists()  # nothing written before connecting


def test_sigterm_ends_a_connection_attempt_at_once(tmp_path):
    """A port that accepts and then says nothing (not a Ray head): the attempt waits for its
    deadline, and SIGTERM ends it at once, its probe process with it."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(
        target=lambda: [held.append(server.accept()[0]) for _ in range(8)], daemon=True
    ).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    out = tmp_path / "out"
    argv = ["sweep", str(_world_spec(tmp_path)), "--out", str(out), "--ray-address", address]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAGE_RAY_CONNECT_TIMEOUT": "300"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:  # the probe has reached the port
            time.sleep(0.2)
        assert held, "the command never reached the port"
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    err = proc.stderr.read()
    assert code == 143 and "terminated" in err and took < 10, (code, took, err)
    assert not out.exists()


# ---- checkpoints, debug ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint")


def test_a_truncated_checkpoint_is_one_line_naming_the_file(checkpoint, tmp_path, capsys):
    broken = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    truncate(broken / "llm" / "model.safetensors")
    assert main(["chat", str(broken), "hi", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "llm/model.safetensors: damaged" in err, err
    assert "truncated" in err
    shutil.copy(checkpoint / "llm" / "model.safetensors", broken / "llm" / "model.safetensors")
    truncate(broken / "config.json")
    assert main(["chat", str(broken), "hi", "--out", str(tmp_path / "out")]) == 2
    assert "config.json: damaged" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from mage.io import PathError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PathError):
        main(["--debug", "data", "synth", "."])
    monkeypatch.setenv("MAGE_HARNESS_DEBUG", "1")
    with pytest.raises(PathError):
        main(["data", "synth", "."])


def test_one_line_messages():
    assert one_line("invalid sweep spec x.yaml:\n  a: bad\n  b: worse") == (
        "invalid sweep spec x.yaml: a: bad; b: worse"
    )
    assert one_line("one\ntwo") == "one; two" and one_line("single") == "single"


# ---- inputs up front -------------------------------------------------------------------------


def test_a_hub_id_is_reported_at_once_offline_and_passes_when_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from mage.hub import HubError, check_hub_id

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with pytest.raises(HubError, match="llm.name 'lmsys/vicuan-7b': not found locally and the Hub"):
        check_hub_id("lmsys/vicuan-7b", "llm.name")
    assert time.monotonic() - started < 5
    snapshot = tmp_path / "hub" / "models--lmsys--vicuna-7b" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    check_hub_id("lmsys/vicuna-7b", "llm.name")  # cached: no Hub needed


def test_data_check_lists_unreadable_images_by_record(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data", n=6)
    assert main(["data", "check", str(data), "--workers", "3"]) == 0
    assert "6 records, 6 images" in capsys.readouterr().out
    (tmp_path / "data" / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    truncate(tmp_path / "data" / "img4.png", 0.4)
    assert main(["data", "check", str(data)]) == 1
    out = capsys.readouterr().out
    assert "record 'r2'" in out and "record 'r4'" in out and "record 'r3'" not in out


def test_a_truncated_image_is_refused_by_check_and_training_after_lmms_eval_was_imported(
    tmp_path, capsys
):
    import lmms_eval.api.task  # noqa: F401  (sets PIL's LOAD_TRUNCATED_IMAGES at import)
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES  # what made a cut-off image pass the check
    data = write_tiny_dataset(tmp_path / "data", n=3)
    truncate(tmp_path / "data" / "img1.png", 0.4)
    assert main(["data", "check", str(data)]) == 1
    assert "record 'r1'" in capsys.readouterr().out
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # the process's setting is left as it was
    # training (a reused Tune actor has run an evaluation before): skipped, not padded grey
    from mage.config import DataSource
    from mage.data import ConversationDataset

    dataset = ConversationDataset(
        [DataSource(path=str(data))], on_bad_image="skip", records_dir=tmp_path / "records"
    )
    skipped = [dataset[i][2] for i in range(len(dataset))]
    assert [bool(s) for s in skipped] == [False, True, False]
    assert "img1.png" in skipped[1]


def test_a_huge_grid_needs_yes_after_its_count_and_cost(tmp_path, capsys):
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "name: big\nbase: tiny-test\nseeds: 3\n"
        "axes: {ian.depth: {values: [0, 1, 2, 3, 4, 5, 6, 7]}, "
        "loss.mse_weight: {values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, "
        "ian.num_heads: {values: [1, 2, 4, 8, 16]}}\n"
        "objective: {benchmark: mme, metric: mme_perception_score}\n"
        "estimate: {trial_s: 60, basis: a guess}\n"
    )
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1,200 trials" in out and "20.0 trial-hours" in out and "needs --yes" in out
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "1,200 trials need --yes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
