"""Stage and evaluation cache keys cover what shapes the output: the training data's content
(one changed byte trains again, touching a file does not), the code (a change to the model
code trains again, a comment does not), the benchmark data and the MMBench scoring method;
and a stage 2 built on a shared stage 1 describes its own trial.

The real trial (`harness.trial.run_trial`, tiny-test preset, tool-calling score) runs in this
process on a copy of the test world given as real data (``data_dir``), into a sweep folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from PIL import Image

from harness import fingerprint
from harness.plan import plan_sweep
from harness.spec import parse_spec
from harness.stage_cache import code_digest, eval_settings
from harness.trial import TrialContext, run_trial

REPO = Path(__file__).resolve().parent.parent
TOOLS = {"benchmark": "tools", "metric": "argument_f1"}


def real_data_spec(data_dir: Path, **changes):
    """tiny-test on a world folder given as real data: stage data and tool records from it."""
    data = {
        "name": "cache",
        "base": "tiny-test",
        "data_dir": str(data_dir),
        "overrides": {
            f"{s}.data": [{"path": f"{{data}}/{s}.json", "image_root": "{data}"}]
            for s in ("stage1", "stage2")
        },
        "seeds": [0],
        "objective": TOOLS,
        "tasks": ["tools"],
    }
    return parse_spec({**data, **changes})


def run(sweep_dir: Path, spec, variant: int = 0) -> set[str]:
    """Run one trial of ``spec``; return the stages it trained (not loaded from the cache)."""
    plan = plan_sweep(spec)
    v = plan.variants[variant]
    trained: set[str] = set()
    ctx = TrialContext(
        sweep_dir=sweep_dir,
        spec=spec,
        trial_id=v.trial_id(0),
        variant_id=v.variant_id,
        variant_name=v.name,
        seed=0,
        config=plan.trial_config(v, 0),
        on_report=lambda stage, step, metrics: trained.add(stage),
    )
    run_trial(ctx)
    return trained


def evaluations(sweep_dir: Path) -> int:
    return len(list(sweep_dir.glob("stages/*/eval-*/done.json")))


def change_one_byte(path: Path, after: bytes = b'"caption": "') -> None:
    """Change one letter in place: the first caption's (a training target), or the first
    after ``after``."""
    data = bytearray(path.read_bytes())
    i = data.index(after) + len(after)
    data[i] = ord("B") if data[i] != ord("B") else ord("C")
    path.write_bytes(bytes(data))


@pytest.fixture
def data_dir(test_world, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(test_world.root, out)
    return out


def test_code_digest_ignores_comments_and_docstrings_but_not_code():
    source = (REPO / "mage" / "model.py").read_text()
    assert '"""' in source and "terms[0] / terms[1]" in source
    commented = source.replace("terms[0] / terms[1]", "terms[0] / terms[1]  # a new comment", 1)
    redoc = source.replace('"""', '"""Reworded. ', 1)
    changed = source.replace("terms[0] / terms[1]", "terms[0] / terms[1] * 1.0", 1)
    assert code_digest(commented) == code_digest(source) == code_digest(redoc)
    assert code_digest(changed) != code_digest(source)


def test_file_digests_follow_content_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_memo", {})
    path = tmp_path / "data.json"
    path.write_text('[{"caption": "A red square"}]')
    first = fingerprint.file_digest(path)
    os.utime(path, ns=(1, 10**18))  # touched: same bytes, same digest
    assert fingerprint.file_digest(path) == first
    change_one_byte(path)
    assert fingerprint.file_digest(path) != first
    # a file is read once per version: a new process takes its digest from the cache
    monkeypatch.setattr(fingerprint, "_memo", {})
    for entry in (tmp_path / "cache" / "fingerprints").iterdir():
        entry.write_text("f" * 64 + "\n")
    assert fingerprint.file_digest(path) == "f" * 64


@pytest.mark.slow
def test_a_changed_byte_of_data_trains_again_and_an_unchanged_rerun_reuses_everything(
    data_dir, tmp_path
):
    sweep, spec = tmp_path / "sweep", real_data_spec(data_dir)
    assert run(sweep, spec) == {"stage1", "stage2"}
    assert run(sweep, spec) == set() and evaluations(sweep) == 1  # nothing changed
    os.utime(data_dir / "stage1.json")  # touched, same bytes: still reused
    assert run(sweep, spec) == set() and evaluations(sweep) == 1
    change_one_byte(data_dir / "stage2.json")  # stage 1 stays shared
    assert run(sweep, spec) == {"stage2"} and evaluations(sweep) == 2
    change_one_byte(data_dir / "stage1.json")
    assert run(sweep, spec) == {"stage1", "stage2"} and evaluations(sweep) == 3
    with Image.open(data_dir / "images" / "train" / "train-000000.png") as im:
        image = im.convert("RGB")
    image.putpixel((0, 0), tuple(255 - c for c in image.getpixel((0, 0))))
    image.save(data_dir / "images" / "train" / "train-000000.png")  # an image stage 1 reads
    assert run(sweep, spec) == {"stage1", "stage2"} and evaluations(sweep) == 4
    change_one_byte(
        data_dir / "tools_eval.json", b'"value": "'
    )  # benchmark data: scored again, not trained
    assert run(sweep, spec) == set() and evaluations(sweep) == 5
    assert run(sweep, spec) == set() and evaluations(sweep) == 5


CHANGED_CODE = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import harness
assert harness.__file__.startswith({src!r}), harness.__file__
from test_stage_cache import real_data_spec, run
print(json.dumps(sorted(run(Path({sweep!r}), real_data_spec(Path({data!r}))))))
"""


@pytest.mark.slow
def test_a_change_to_the_model_code_trains_again(data_dir, tmp_path):
    """The re-run is a new process on a copy of the code with one change in mage/model.py."""
    sweep = tmp_path / "sweep"
    assert run(sweep, real_data_spec(data_dir)) == {"stage1", "stage2"}
    src = tmp_path / "src"
    for package in ("mage", "harness"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("*.pyc"))
    model = src / "mage" / "model.py"
    model.write_text(
        model.read_text().replace("terms[0] / terms[1]", "terms[0] / terms[1] * 1.0", 1)
    )
    script = CHANGED_CODE.format(
        tests=str(Path(__file__).parent), src=str(src), sweep=str(sweep), data=str(data_dir)
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["stage1", "stage2"]


def test_eval_settings_cover_scoring_method_data_and_code(test_world):
    spec = real_data_spec(test_world.root, tasks=["tools", "mmbench"], objective=TOOLS)
    tools = str(test_world.root / "tools_eval.json")
    static = eval_settings(spec.model_copy(update={"mmbench_scoring": "static"}), None, tools)
    gpt = eval_settings(spec.model_copy(update={"mmbench_scoring": "gpt"}), None, tools)
    assert static["mmbench_scoring"] == "static" and gpt["mmbench_scoring"] == "gpt"
    assert static["code"] and static["data_content"]
    assert {k for k in static if static[k] != gpt[k]} == {"mmbench_scoring"}


@pytest.mark.slow
def test_a_stage_2_on_a_shared_stage_1_describes_its_own_trial(data_dir, tmp_path):
    spec = real_data_spec(
        data_dir,
        axes={"stage2.lr": {"values": [3e-4, 1e-4]}},
        tasks=["mme"],
        eval_data_dir=str(data_dir / "bench"),
        objective={"benchmark": "mme", "metric": "mme_perception_score"},
    )
    sweep = tmp_path / "sweep"
    assert run(sweep, spec, 0) == {"stage1", "stage2"}
    assert run(sweep, spec, 1) == {"stage2"}  # on the first trial's stage 1
    names = [v.name for v in plan_sweep(spec).variants]
    stage2 = {}
    for done in sweep.glob("stages/*/done.json"):
        if json.loads(done.read_text())["stage"] == "stage2":
            saved = json.loads((done.parent / "model" / "config.json").read_text())
            stage2[saved["name"]] = (done.parent, saved)
    assert sorted(stage2) == sorted(names)
    for name, lr in zip(names, (3e-4, 1e-4)):
        folder, saved = stage2[name]
        assert saved["stage2"]["lr"] == lr
        assert yaml.safe_load((folder / "config.yaml").read_text())["name"] == name
        (record,) = [json.loads(p.read_text()) for p in folder.glob("eval-*/record.json")]
        assert record["model"]["config"]["name"] == name
        assert record["model"]["config"]["stage2"]["lr"] == lr
