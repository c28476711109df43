"""The documented way onto an existing Ray cluster works: a cluster started here with
``ray start --head --node-ip-address 127.0.0.1`` (token authentication on, as Ray 2.60
starts it when a token exists), reached with ``--ray-address`` and the cluster's token in
``RAY_AUTH_TOKEN`` as the README says, or with only the ``~/.ray/auth_token`` that ``ray
start`` reads; its scores equal the embedded run's. A wrong token is one line saying what
to set.

The cluster runs in its own temporary folder and home, and is stopped by terminating the
``ray start --block`` process that owns it (never ``ray stop``, which would end every Ray on
the machine, other people's included), then by killing, by pid, any process still naming
the cluster's folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")

DRIVER = """
import json, sys
import pandas as pd
from harness.spec import parse_spec
from harness.sweep import run_sweep
from harness.trial import TrialOutcome


def trial(ctx):
    for step in range(1, 4):
        ctx.report("stage1", step, {"loss": 1.0 / step + ctx.config.loss.mse_weight})
    value = 100.0 * ctx.config.ian.depth + ctx.seed + 0.5 * ctx.config.loss.mse_weight
    row = {"benchmark": "mme", "metric": "mme_perception_score", "category": "all"}
    return TrialOutcome(scores=pd.DataFrame([{**row, "value": value, "n": 8}]), steps=3)


spec = parse_spec({
    "name": "cluster",
    "base": "tiny-test",
    "axes": {"ian.depth": {"values": [0, 1]}},
    "seeds": [1],
    "objective": {"benchmark": "mme", "metric": "mme_perception_score"},
    "max_concurrent_trials": 2,
})
address = sys.argv[2] if len(sys.argv) > 2 else None
summary = run_sweep(spec, sys.argv[1], ray_address=address, trial_fn=trial, progress=False,
                    report=False)
print(json.dumps(summary.counts))
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    return {**env, "HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_leftovers(marker: str) -> None:
    """Kill, by pid, processes whose command line names this cluster's folder."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def cluster():
    """(address, token, home with ~/.ray/auth_token) of a token-auth head on loopback."""
    root = Path(tempfile.mkdtemp(prefix="mhrc", dir="/tmp"))  # short: Ray's socket paths
    home = root / "home"
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes
    (home / ".ray" / "auth_token").write_text(token)
    port = _free_port()
    log = open(root / "ray_start.log", "w")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
        + ["--port", str(port), "--temp-dir", str(root / "ray"), "--num-cpus", "2"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        env=_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (root / "ray_start.log").read_text():
            assert head.poll() is None, (root / "ray_start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ray start did not come up in 120 s"
            time.sleep(0.5)
        started = (root / "ray_start.log").read_text()
        assert "Token authentication is enabled" in started, started[-2000:]
        yield f"127.0.0.1:{port}", token, home
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        _kill_leftovers(str(root))
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _drive(out: Path, env: dict, address: str | None = None) -> pd.DataFrame:
    argv = [sys.executable, "-c", textwrap.dedent(DRIVER), str(out)] + (
        [address] if address else []
    )
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    print(f"driver {out.name}: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ok": 2, "failed": 0, "stopped": 0}
    results = pd.read_parquet(out / "results.parquet")
    return results.sort_values("trial_id").reset_index(drop=True)[["trial_id", "value"]]


def _mode(out: Path) -> str:
    from harness.store import read_manifest

    return read_manifest(out)["sessions"][-1]["ray"]["mode"]


@pytest.mark.slow
def test_the_documented_ways_onto_a_token_cluster_run_and_match_the_embedded_run(cluster, tmp_path):
    address, token, home = cluster
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    embedded = _drive(tmp_path / "embedded", _env(empty_home))
    # the README: --ray-address ADDR with the cluster's token in RAY_AUTH_TOKEN
    readme = _drive(tmp_path / "readme", _env(empty_home, RAY_AUTH_TOKEN=token), address)
    # Ray's default: only the ~/.ray/auth_token that `ray start` read
    token_file = _drive(tmp_path / "file", _env(home), address)
    assert _mode(tmp_path / "readme") == _mode(tmp_path / "file") == "existing cluster"
    assert _mode(tmp_path / "embedded") == "embedded"
    pd.testing.assert_frame_equal(readme, embedded)
    pd.testing.assert_frame_equal(token_file, embedded)


@pytest.mark.slow
def test_a_wrong_token_is_one_line_saying_what_to_set(cluster, tmp_path):
    address, _, _ = cluster
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: c\nbase: world-test\nworld: {size: test}\nseeds: [0]\n"
        "objective: {benchmark: mme, metric: mme_perception_score}\ntasks: [mme]\n"
    )
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--out", str(out), "--ray-address", address]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        env=_env(empty_home, RAY_AUTH_TOKEN="0" * 64),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert f"the Ray cluster at {address} refused the connection" in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0] and took < 30
    assert not out.exists()


def test_whole_node_trials_take_a_gpu_node_not_the_gpu_less_head():
    from harness.experiment import whole_node

    head = {"Alive": True, "Resources": {"CPU": 8}}
    gpus = [{"Alive": True, "Resources": {"CPU": 64, "GPU": 8}},
            {"Alive": True, "Resources": {"CPU": 48, "GPU": 4}},
            {"Alive": False, "Resources": {"CPU": 2, "GPU": 1}}]  # fmt: skip
    assert whole_node([head, *gpus]) == {"CPU": 48, "GPU": 4}
    assert whole_node([head]) == {"CPU": 8, "GPU": 0}  # a CPU cluster: its smallest node
