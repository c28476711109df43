"""A corpus of bad inputs across every command, as a hostile but realistic user gives them:
specs, `--set`, config files, training data, images, checkpoints, benchmark folders, results
stores, tool files, output folders and Ray addresses.

Each case must exit non-zero with one line on stderr that names the bad field or file, print
no traceback, and leave every file that existed before byte-identical (the case's whole
folder, its current folder included, is hashed before and after; no file may appear either).
Most cases run `harness.cli.main` in this process; those that reach Ray run the command line
in a subprocess. `test_corpus_size_and_outcomes` counts the cases per outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from model_fixtures import write_tiny_dataset
from robustness_fixtures import digest, make_recorded_store, save_tiny_checkpoint, truncate

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVE = {"benchmark": "mme", "metric": "mme_perception_score"}


@dataclass
class Ctx:
    """One case's folder (``root``, all of it hashed) and the shared read-only inputs."""

    root: Path
    checkpoint_src: Path
    world: Path
    store_src: Path

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def user(self) -> Path:
        """A folder of someone's own files."""
        return self.root / "user"

    @property
    def bench(self) -> Path:
        return self.world / "bench"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def checkpoint(self, damage: Callable[[Path], None] | None = None) -> Path:
        if damage is None:
            return self.checkpoint_src
        path = Path(shutil.copytree(self.checkpoint_src, self.root / "ckpt"))
        damage(path)
        return path

    def store(self, damage: Callable[[Path], None] | None = None) -> Path:
        path = Path(shutil.copytree(self.store_src, self.root / "sweep"))
        if damage is not None:
            damage(path)
        return path

    def data(self, records: list | None = None) -> Path:
        """A LLaVA-format JSON with real PNGs beside it (records replaced if given)."""
        path = write_tiny_dataset(self.root / "data", n=4)
        if records is not None:
            path.write_text(json.dumps(records))
        return path

    def spec(self, name: str = "spec.yaml", real_data: bool = True, **changes) -> Path:
        """A small sweep spec: real data (tiny-test on files here) or the synthetic world."""
        if real_data:
            self.data()
            data = [{"path": "{data}/data.json", "image_root": "{data}"}]
            base = {
                "name": "case",
                "base": "tiny-test",
                "data_dir": str(self.root / "data"),
                "eval_data_dir": str(self.bench),
                "overrides": {"stage1.data": data, "stage2.data": data},
            }
        else:
            base = {"name": "case", "base": "world-test", "world": {"size": "test"}}
        spec = {
            **base,
            "axes": {"ian.depth": {"values": [0, 1]}},
            "seeds": [0],
            "objective": OBJECTIVE,
            "tasks": ["mme"],
            **changes,
        }
        return self.write(name, yaml.safe_dump(spec, sort_keys=False))


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expect: str  # must appear in the one-line message: the bad field or file
    code: int = 2
    env: tuple[tuple[str, str], ...] = ()
    subprocess: bool = False  # reaches Ray: run the command line in its own process


def _turns(*roles: str) -> list[dict]:
    return [{"from": r, "value": "<image>\nhi" if i == 0 else "a"} for i, r in enumerate(roles)]


def _check_turns(question: str, reply: str) -> Callable[[Ctx], list[str]]:
    """`data check` of one record with an image and these two turns."""
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
    return lambda c: ["data", "check", str(c.data(_record(turns)))]


def _record(turns: list[dict], image: str | None = "img0.png") -> list[dict]:
    return [{"id": "r0", **({"image": image} if image else {}), "conversations": turns}]


def _corrupt_image(c: Ctx) -> Path:
    path = c.data()
    (path.parent / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rm(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def _cut(rel: str) -> Callable[[Path], None]:
    return lambda root: truncate(root / rel)


def _garble(rel: str, data: bytes = b"\x00garbage\xff") -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(data)


def _first_record(root: Path) -> Path:
    return sorted((root / "trials").iterdir())[0] / "record.json"


def _published(root: Path) -> None:
    shutil.rmtree(root / "trials")  # only the tables, as in a copy made to share results


C = Case
CASES = [
    # ---- data synth: never into a folder it did not write -------------------------------
    C("synth-dot", lambda c: ["data", "synth", ".", "--size", "test"], "current folder"),
    C("synth-parent", lambda c: ["data", "synth", "..", "--size", "test"], "above the current"),
    C("synth-root", lambda c: ["data", "synth", "/", "--size", "test"], "root folder"),
    C("synth-user-folder", lambda c: ["data", "synth", str(c.user)], "not a world folder"),
    C("synth-user-folder-force", lambda c: ["data", "synth", str(c.user), "--force"], "user"),
    C("synth-onto-file", lambda c: ["data", "synth", str(c.user / "notes.txt")], "is a file"),
    C(
        "synth-existing-world",
        lambda c: ["data", "synth", str(shutil.copytree(c.world, c.root / "w"))],
        "--force",
    ),
    C(
        "synth-negative-seed",
        lambda c: ["data", "synth", str(c.root / "new"), "--seed", "-1"],
        "seed",
    ),
    # ---- data check: training data and images ---------------------------------------------
    C("check-missing-file", lambda c: ["data", "check", str(c.root / "nope.json")], "nope.json"),
    C(
        "check-not-utf8",
        lambda c: [
            "data",
            "check",
            str(c.write("d.json", '[{"id": "caf\xe9"}]'.encode("latin-1"))),
        ],
        "not UTF-8",
    ),
    C(
        "check-bad-json",
        lambda c: ["data", "check", str(c.write("d.json", "[{,]"))],
        "not valid JSON",
    ),
    C("check-not-a-list", lambda c: ["data", "check", str(c.write("d.json", "{}"))], "JSON list"),
    C(
        "check-assistant-first",
        lambda c: ["data", "check", str(c.data(_record(_turns("gpt", "human"))))],
        "conversations[0]",
    ),
    C(
        "check-two-human-turns",
        lambda c: ["data", "check", str(c.data(_record(_turns("human", "human"))))],
        "conversations[1]",
    ),
    C(
        "check-unknown-role",
        lambda c: ["data", "check", str(c.data(_record(_turns("human", "robot"))))],
        "conversations[1]",
    ),
    C(
        "check-image-tag-in-a-reply",
        _check_turns("What colour?", "<image> red"),
        "conversations[1] (a reply) holds <image>",
    ),
    C(
        "check-image-tagged-twice",
        _check_turns("<image>\nWhat colour? <image>", "red"),
        "holds <image> 2 times",
    ),
    C(
        "check-missing-image",
        lambda c: ["data", "check", str(c.data(_record(_turns("human", "gpt"), "gone.png")))],
        "gone.png",
    ),
    C(
        "check-image-root-missing",
        lambda c: ["data", "check", str(c.data()), "--image-root", str(c.root / "imgs")],
        "image_root",
    ),
    C("check-corrupt-image", lambda c: ["data", "check", str(_corrupt_image(c))], "record", code=1),
    # ---- prepare --------------------------------------------------------------------------
    C("prepare-world-not-a-world", lambda c: ["prepare", "--world", str(c.user)], "world.json"),
    C(
        "prepare-world-json-damaged",
        lambda c: ["prepare", "--world", str(_damaged_world(c))],
        "world.json",
    ),
    C(
        "prepare-out-user-folder",
        lambda c: ["prepare", "--world", str(c.world), "--out", str(c.user)],
        "not an assets folder",
    ),
    C("prepare-world-missing", lambda c: ["prepare", "--world", str(c.root / "gone")], "gone"),
    C(
        "prepare-assets-env-user-folder",  # $MAGE_ASSETS_DIR is the assets folder itself
        lambda c: ["prepare", "--world", str(c.world)],
        "not an assets folder",
        env=(("MAGE_ASSETS_DIR", "../user"),),
    ),
    # ---- train: presets, config files, --set, output folder, data, Hub ids -------------------
    C("train-unknown-preset", lambda c: ["train", "--preset", "nope", "--out", "r"], "'nope'"),
    C(
        "train-config-missing",
        lambda c: ["train", "--config", str(c.root / "cfg.yaml"), "--out", "r"],
        "cfg.yaml",
    ),
    C(
        "train-config-bad-yaml",
        lambda c: ["train", "--config", str(c.write("cfg.yaml", "ian: [depth: 2\n")), "--out", "r"],
        "cfg.yaml",
    ),
    C(
        "train-config-not-utf8",
        lambda c: ["train", "--config", str(c.write("cfg.yaml", b"name: caf\xe9\n")), "--out", "r"],
        "cfg.yaml",
    ),
    C(
        "train-config-unknown-field",
        lambda c: [
            "train",
            "--config",
            str(c.write("cfg.yaml", "ian: {depht: 2}\n")),
            "--out",
            "r",
        ],
        "ian.depht",
    ),
    C(
        "train-config-not-a-mapping",
        lambda c: ["train", "--config", str(c.write("cfg.yaml", "- 1\n- 2\n")), "--out", "r"],
        "cfg.yaml",
    ),
    C("train-config-is-folder", lambda c: ["train", "--config", str(c.user), "--out", "r"], "user"),
    C(
        "train-set-bad-value",
        lambda c: ["train", "--set", "ian.depth=deep", "--out", "r"],
        "ian.depth",
    ),
    C("train-set-unknown", lambda c: ["train", "--set", "ian.deep=2", "--out", "r"], "ian.deep"),
    C(
        "train-nothing-trainable",
        lambda c: ["train", "--set", "stage2.trainable=[]", "--out", "r"],
        "stage2.trainable",
    ),
    C("train-set-no-equals", lambda c: ["train", "--set", "ian.depth", "--out", "r"], "--set"),
    C("train-set-bad-yaml", lambda c: ["train", "--set", "ian.depth=[", "--out", "r"], "ian.depth"),
    C("train-set-negative-seed", lambda c: ["train", "--set", "seed=-3", "--out", "r"], "seed"),
    C("train-stages", lambda c: ["train", "--stages", "stage3", "--out", "r"], "--stages"),
    C(
        "train-float16",
        lambda c: ["train", "--set", "llm.dtype=float16", "--out", "r"],
        "llm.dtype=float16",
    ),
    C("train-threads", lambda c: ["train", "--threads", "0", "--out", "r"], "--threads"),
    C("train-out-user-folder", lambda c: ["train", "--out", str(c.user)], "not a training run"),
    C(
        "train-data-missing",
        lambda c: ["train", "--set", "stage1.data=[{path: /no/such.json}]", "--out", "r"],
        "stage1.data[0].path",
    ),
    C(
        "train-data-placeholder-unset",
        lambda c: ["train", "--set", "stage1.data=[{path: '{data}/x.json'}]", "--out", "r"],
        "stage1.data",
    ),
    C(
        "train-hub-id-offline",
        lambda c: ["train", "--set", "llm.name=lmsys/vicuna-7b-v1.6", "--out", "r"],
        "lmsys/vicuna-7b-v1.6",
    ),
    C(
        "train-world-preset-no-assets",
        lambda c: [
            "train",
            "--preset",
            "world-test",
            "--set",
            f"assets_dir={c.root}/a",
            "--out",
            "r",
        ],
        "assets_dir",
    ),
    C(
        "train-resume-export-truncated",
        lambda c: ["train", "--out", str(_run_dir(c, "export"))],
        "trainable.safetensors",
    ),
    C(
        "train-resume-state-damaged",
        lambda c: ["train", "--out", str(_run_dir(c, "state"))],
        "train_state.pt",
    ),
    C(
        "train-resume-changed-config",
        lambda c: ["train", "--out", str(_run_dir(c, "state")), "--set", "ian.depth=2"],
        "ian.depth differ",
    ),
    # ---- params -----------------------------------------------------------------------------
    C("params-unknown-preset", lambda c: ["params", "nope"], "'nope'"),
    C("params-bad-set", lambda c: ["params", "mage-7b", "--set", "ian.depth=-1"], "ian.depth"),
    C(
        "params-hub-id-offline",
        lambda c: ["params", "tiny-test", "--set", "llm.name=nosuchorg/nosuchmodel"],
        "nosuchorg/nosuchmodel",
    ),
    # ---- eval: tasks, benchmark folders, checkpoints, output folder --------------------------
    C("eval-unknown-task", lambda c: ["eval", str(c.checkpoint()), "--tasks", "gqa"], "gqa"),
    C(
        "eval-loader-workers-negative",
        lambda c: ["eval", str(c.checkpoint()), "--loader-workers", "-1"],
        "--loader-workers",
    ),
    C(
        "eval-data-missing",
        lambda c: ["eval", str(c.checkpoint()), "--data", str(c.root / "bench")],
        "bench",
    ),
    C(
        "eval-data-partial",
        lambda c: [
            "eval",
            str(c.checkpoint()),
            "--data",
            str(Path(shutil.copytree(c.bench / "mme", c.root / "b" / "mme")).parent),
        ],
        "mmbench",
    ),
    C(
        "eval-data-damaged",
        lambda c: [
            "eval",
            str(c.checkpoint()),
            "--tasks",
            "mme",
            "--data",
            str(_damaged_bench(c)),
        ],
        "--data",
    ),
    C(
        "eval-checkpoint-missing",
        lambda c: ["eval", str(c.root / "nock"), "--data", str(c.bench), "--tasks", "mme"],
        "nock",
    ),
    C(
        "eval-checkpoint-truncated-weights",
        lambda c: [
            "eval",
            str(c.checkpoint(_cut("llm/model.safetensors"))),
            "--data",
            str(c.bench),
            "--tasks",
            "mme",
        ],
        "llm/model.safetensors",
    ),
    C(
        "eval-checkpoint-half-config",
        lambda c: [
            "eval",
            str(c.checkpoint(_cut("config.json"))),
            "--data",
            str(c.bench),
            "--tasks",
            "mme",
        ],
        "config.json",
    ),
    C(
        "eval-checkpoint-no-llm-config",
        lambda c: [
            "eval",
            str(c.checkpoint(_rm("llm/config.json"))),
            "--data",
            str(c.bench),
            "--tasks",
            "mme",
        ],
        "llm/config.json",
    ),
    C(
        "eval-out-user-folder",
        lambda c: [
            "eval",
            str(c.checkpoint()),
            "--data",
            str(c.bench),
            "--tasks",
            "mme",
            "--out",
            str(c.user),
        ],
        "not an evaluation folder",
    ),
    C(
        "eval-batch-size-zero",
        lambda c: ["eval", str(c.checkpoint()), "--batch-size", "0"],
        "--batch-size",
    ),
    C(
        "eval-hub-datasets-offline",
        lambda c: ["eval", str(c.checkpoint()), "--tasks", "mme"],
        "lmms-lab-encoder/MME",
    ),
    # ---- bench --------------------------------------------------------------------------------
    C("bench-train-unknown-preset", lambda c: ["bench", "train", "--preset", "nope"], "'nope'"),
    C("bench-train-steps-zero", lambda c: ["bench", "train", "--steps", "0"], "--steps"),
    C(
        "bench-train-bad-projector",
        lambda c: ["bench", "train", "--projector", "mlp9x"],
        "ian.projector",
    ),
    C(
        "bench-eval-truncated-weights",
        lambda c: [
            "bench",
            "eval",
            str(c.checkpoint(_cut("vision/vision.safetensors"))),
            "--data",
            str(c.bench),
        ],
        "vision/vision.safetensors",
    ),
    C(
        "bench-eval-data-missing",
        lambda c: ["bench", "eval", str(c.checkpoint()), "--data", str(c.root / "bench")],
        "bench",
    ),
    C(
        "bench-eval-loader-workers-negative",
        lambda c: [
            "bench",
            "eval",
            str(c.checkpoint()),
            "--data",
            str(c.bench),
            "--loader-workers",
            "-1",
        ],
        "--loader-workers",
    ),
    C(
        "bench-eval-repeats-zero",
        lambda c: ["bench", "eval", str(c.checkpoint()), "--data", str(c.bench), "--repeats", "0"],
        "--repeats",
    ),
    C(
        "bench-generate-samples-zero",
        lambda c: ["bench", "generate", "--samples", "0"],
        "--samples",
    ),
    C(
        "bench-generate-samples-below-batch",
        lambda c: ["bench", "generate", "--samples", "4", "--batch-size", "8"],
        "--samples",
    ),
    C(
        "bench-generate-bad-device",
        lambda c: ["bench", "generate", "--device", "gpu"],
        "--device",
    ),
    C(
        "bench-generate-bad-set",
        lambda c: ["bench", "generate", "--set", "ian.depth=-1"],
        "ian.depth",
    ),
    # ---- chat: checkpoints, images, tool files, output folder --------------------------------
    C(
        "chat-image-not-an-image",
        lambda c: ["chat", str(c.checkpoint()), "--image", str(c.user / "notes.txt"), "hi"],
        "notes.txt",
    ),
    C(
        "chat-image-missing",
        lambda c: ["chat", str(c.checkpoint()), "--image", str(c.root / "p.png"), "hi"],
        "p.png",
    ),
    C(
        "chat-tools-bad-yaml",
        lambda c: [
            "chat",
            str(c.checkpoint()),
            "--tools",
            str(c.write("t.yaml", "tools: [\n")),
            "hi",
        ],
        "t.yaml",
    ),
    C(
        "chat-tools-unknown-setting",
        lambda c: [
            "chat",
            str(c.checkpoint()),
            "--tools",
            str(c.write("t.yaml", "tools: {image_generation: {colour: red}}\n")),
            "hi",
        ],
        "t.yaml",
    ),
    C(
        "chat-tools-missing",
        lambda c: ["chat", str(c.checkpoint()), "--tools", str(c.root / "t.yaml"), "hi"],
        "t.yaml",
    ),
    C(
        "chat-checkpoint-truncated",
        lambda c: ["chat", str(c.checkpoint(_cut("projector.safetensors"))), "hi"],
        "projector.safetensors",
    ),
    C(
        "chat-checkpoint-empty-weights",
        lambda c: ["chat", str(c.checkpoint(_garble("llm/model.safetensors", b""))), "hi"],
        "llm/model.safetensors",
    ),
    C(
        "chat-checkpoint-damaged-mage-json",
        lambda c: ["chat", str(c.checkpoint(_garble("mage.json", b"{"))), "hi"],
        "mage.json",
    ),
    C("chat-checkpoint-missing", lambda c: ["chat", str(c.root / "nock"), "hi"], "nock"),
    C(
        "chat-out-user-folder",
        lambda c: ["chat", str(c.checkpoint()), "--out", str(c.user), "hi"],
        "not a chat",
    ),
    # ---- sweep: spec files and fields, inputs at dry-run time, output folder -----------------
    C("sweep-spec-missing", lambda c: ["sweep", str(c.root / "s.yaml"), "--dry-run"], "s.yaml"),
    C(
        "sweep-spec-bad-yaml",
        lambda c: ["sweep", str(c.write("s.yaml", "axes: [\n")), "--dry-run"],
        "s.yaml",
    ),
    C(
        "sweep-spec-not-utf8",
        lambda c: ["sweep", str(c.write("s.yaml", b"name: caf\xe9\n")), "--dry-run"],
        "s.yaml",
    ),
    C("sweep-spec-is-folder", lambda c: ["sweep", str(c.user), "--dry-run"], "user"),
    C(
        "sweep-spec-unknown-key",
        lambda c: ["sweep", str(c.spec(seeeds=[0])), "--dry-run"],
        "seeeds",
    ),
    C(
        "sweep-spec-unknown-axis",
        lambda c: ["sweep", str(c.spec(axes={"ian.depht": {"values": [1]}})), "--dry-run"],
        "ian.depht",
    ),
    C(
        "sweep-spec-bad-axis-value",
        lambda c: ["sweep", str(c.spec(axes={"ian.depth": {"values": [1, "two"]}})), "--dry-run"],
        "ian.depth",
    ),
    C(
        "sweep-axis-repeats-a-value",
        lambda c: ["sweep", str(c.spec(axes={"ian.depth": {"values": [1, 1]}})), "--dry-run"],
        "an axis repeats a value",
    ),
    C("sweep-negative-seed", lambda c: ["sweep", str(c.spec(seeds=[0, -1])), "--dry-run"], "seeds"),
    C(
        "sweep-objective-metric-misspelt",
        lambda c: [
            "sweep",
            str(c.spec(objective={"benchmark": "mme", "metric": "mme_p"})),
            "--dry-run",
        ],
        "'mme_p' is not a mme metric",
    ),
    C(
        "sweep-objective-headline-with-a-category",
        lambda c: [
            "sweep",
            str(
                c.spec(
                    objective={
                        "benchmark": "mme",
                        "metric": "mme_perception_score",
                        "category": "colour",
                    }
                )
            ),  # fmt: skip
            "--dry-run",
        ],
        "is a score of the whole benchmark",
    ),
    C(
        "sweep-objective-per-category-metric-without-one",
        lambda c: [
            "sweep",
            str(c.spec(objective={"benchmark": "mme", "metric": "acc"})),
            "--dry-run",
        ],
        "is stored per category",
    ),
    C(
        "sweep-objective-category-misspelt",
        lambda c: [
            "sweep",
            str(c.spec(objective={"benchmark": "mme", "metric": "acc", "category": "colour"})),
            "--dry-run",
        ],
        "category 'colour' is not in",
    ),
    C(
        "sweep-optuna-int-axis-half-step",
        lambda c: _optuna_sweep(c, {"low": 0, "high": 3, "step": 0.5}),
        "Optuna cannot search",
    ),
    C(
        "sweep-optuna-storage-bad",
        lambda c: _optuna_sweep(c, {"low": 0, "high": 3}, optuna_storage="nosuchdb://x"),
        "optuna_storage",
    ),
    C(
        "sweep-early-stopping-grace-above-max-t",
        lambda c: ["sweep", str(c.spec(early_stopping={"grace_period": 100000})), "--dry-run"],
        "early_stopping.grace_period (100000) is above max_t",
    ),
    C(
        "sweep-early-stopping-stage-without-steps",
        lambda c: [
            "sweep",
            str(
                c.spec(
                    real_data=False,
                    overrides={"stage1.steps": 0},
                    early_stopping={"metric": "stage1/loss"},
                )
            ),  # fmt: skip
            "--dry-run",
        ],
        "stage1 has no steps",
    ),
    C(
        "sweep-huge-seed-count",
        lambda c: ["sweep", str(c.spec(seeds=10**12)), "--dry-run"],
        "seeds",
    ),
    C(
        "sweep-dry-run-into-another-sweep",
        lambda c: ["sweep", str(c.spec()), "--dry-run", "--out", str(c.store())],
        "holds another sweep",
    ),
    C(
        "sweep-dry-run-gpt-judge-without-key",
        lambda c: [
            "sweep",
            str(c.spec(tasks=["mme", "mmbench"], mmbench_scoring="gpt")),
            "--dry-run",
            "--out",
            str(c.root / "new"),
        ],
        "OPENAI_API_KEY",
    ),
    C(
        "sweep-huge-grid",
        lambda c: [
            "sweep",
            str(
                c.spec(
                    axes={
                        "ian.depth": {"values": list(range(32))},
                        "loss.mse_weight": {"values": list(range(40))},
                    }
                )
            ),
        ],
        "--yes",
    ),
    C(
        "sweep-data-dir-missing",
        lambda c: ["sweep", str(c.spec(data_dir=str(c.root / "nd"))), "--dry-run"],
        "data_dir",
    ),
    C(
        "sweep-stage-data-missing",
        lambda c: [
            "sweep",
            str(c.spec(overrides={"stage1.data": [{"path": "{data}/none.json"}]})),
            "--dry-run",
        ],
        "stage1.data[0].path",
    ),
    C(
        "sweep-image-root-missing",
        lambda c: [
            "sweep",
            str(
                c.spec(
                    overrides={
                        "stage2.data": [{"path": "{data}/data.json", "image_root": "{data}/im"}]
                    }
                )
            ),
            "--dry-run",
        ],
        "stage2.data[0].image_root",
    ),
    C(
        "sweep-bench-folder-missing",
        lambda c: ["sweep", str(c.spec(eval_data_dir=str(c.user))), "--dry-run"],
        "eval_data_dir",
    ),
    C(
        "sweep-world-bench-missing",
        lambda c: ["sweep", str(c.spec(real_data=False, eval_data_dir=str(c.user))), "--dry-run"],
        "eval_data_dir",
    ),
    C(
        "sweep-world-dir-user-folder",
        lambda c: [
            "sweep",
            str(c.spec(real_data=False, world={"size": "test", "dir": str(c.user)})),
            "--dry-run",
        ],
        "world.dir",
    ),
    C(
        "sweep-assistant-first",
        lambda c: ["sweep", str(_spec_with_records(c, _turns("gpt", "human"))), "--dry-run"],
        "conversations[0]",
    ),
    C(
        "sweep-corrupt-image",
        lambda c: ["sweep", str(_spec_with_corrupt_image(c)), "--dry-run"],
        "img1.png",
    ),
    C(
        "sweep-hub-id-offline",
        lambda c: [
            "sweep",
            str(c.spec(overrides=_data_overrides({"llm.name": "lmsys/vicuna-7b-v1.6"}))),
            "--dry-run",
        ],
        "lmsys/vicuna-7b-v1.6",
    ),
    C(
        "sweep-out-user-folder",
        lambda c: ["sweep", str(c.spec()), "--out", str(c.user)],
        "not a sweep folder",
    ),
    C(
        "sweep-out-folder-of-the-spec",  # the user's folder holds its own spec.yaml
        lambda c: ["sweep", str(c.spec(name="spec.yaml")), "--out", str(c.spec().parent)],
        "not a sweep folder",
    ),
    C(
        "sweep-out-another-sweep",
        lambda c: ["sweep", str(c.spec()), "--out", str(c.store())],
        "another sweep",
    ),
    C(
        "sweep-ray-timeout-zero",
        lambda c: ["sweep", str(c.spec()), "--ray-timeout", "0"],
        "--ray-timeout",
    ),
    C(
        "sweep-ray-timeout-env",
        lambda c: ["sweep", str(c.spec())],
        "MAGE_RAY_CONNECT_TIMEOUT",
        env=(("MAGE_RAY_CONNECT_TIMEOUT", "soon"),),
    ),
    C(
        "sweep-ray-address-closed-port",
        lambda c: [
            "sweep",
            str(c.spec()),
            "--out",
            str(c.root / "out"),
            "--ray-address",
            f"127.0.0.1:{_closed_port()}",
        ],
        "127.0.0.1:",
        env=(("MAGE_RAY_CONNECT_TIMEOUT", "3"),),
        subprocess=True,
    ),
    C(
        "sweep-ray-address-malformed",
        lambda c: [
            "sweep",
            str(c.spec()),
            "--out",
            str(c.root / "out"),
            "--ray-address",
            "127.0.0.1:port",
        ],
        "127.0.0.1:port",
        env=(("MAGE_RAY_CONNECT_TIMEOUT", "10"),),
        subprocess=True,
    ),
    # ---- status, resume, report, store rebuild: damaged stores -------------------------------
    C("status-not-a-sweep", lambda c: ["status", str(c.user)], "not a sweep folder"),
    C(
        "status-results-corrupt",
        lambda c: ["status", str(c.store(_garble("results.parquet")))],
        "results.parquet",
    ),
    C(
        "status-trials-truncated",
        lambda c: ["status", str(c.store(_cut("trials.parquet")))],
        "trials.parquet",
    ),
    C(
        "status-manifest-damaged",
        lambda c: ["status", str(c.store(_cut("manifest.json")))],
        "manifest.json",
    ),
    C(
        "status-manifest-missing",
        lambda c: ["status", str(c.store(_rm("manifest.json")))],
        "manifest.json",
    ),
    C(
        "status-record-damaged",
        lambda c: ["status", str(c.store(lambda r: truncate(_first_record(r))))],
        "record.json",
    ),
    C(
        "resume-results-corrupt",
        lambda c: ["resume", str(c.store(_garble("results.parquet")))],
        "results.parquet",
    ),
    C(
        "resume-items-truncated",
        lambda c: ["resume", str(c.store(_cut("items.parquet")))],
        "items.parquet",
    ),
    C("resume-published-store", lambda c: ["resume", str(c.store(_published))], "fewer trials"),
    C("resume-no-spec", lambda c: ["resume", str(c.store(_rm("spec.yaml")))], "spec.yaml"),
    C(
        "resume-spec-damaged",
        lambda c: ["resume", str(c.store(_garble("spec.yaml", b"name: [\n")))],
        "spec.yaml",
    ),
    C(
        "resume-trial-table-damaged",
        lambda c: [
            "resume",
            str(c.store(lambda r: truncate(_first_record(r).parent / "results.parquet"))),
        ],
        "trials/",
    ),
    C("resume-user-folder", lambda c: ["resume", str(c.user)], "user"),
    C(
        "report-trials-corrupt",
        lambda c: ["report", str(c.store(_garble("trials.parquet")))],
        "trials.parquet",
    ),
    C(
        "report-out-user-folder",
        lambda c: ["report", str(c.store()), "--out", str(c.user), "--no-figures"],
        "not a report folder",
    ),
    C(
        "report-out-current-folder",
        lambda c: ["report", str(c.store()), "--out", ".", "--no-figures"],
        "current folder",
    ),
    C("report-not-a-sweep", lambda c: ["report", str(c.user)], "not a sweep folder"),
    C(
        "rebuild-published-store",
        lambda c: ["store", "rebuild", str(c.store(_published))],
        "--drop-missing",
    ),
    C("rebuild-not-a-sweep", lambda c: ["store", "rebuild", str(c.user)], "not a sweep folder"),
    C(
        "rebuild-record-damaged",
        lambda c: ["store", "rebuild", str(c.store(lambda r: truncate(_first_record(r))))],
        "record.json",
    ),
]


def _data_overrides(extra: dict) -> dict:
    data = [{"path": "{data}/data.json", "image_root": "{data}"}]
    return {"stage1.data": data, "stage2.data": data, **extra}


def _spec_with_records(c: Ctx, turns: list[dict]) -> Path:
    spec = c.spec()
    (c.root / "data" / "data.json").write_text(json.dumps(_record(turns)))
    return spec


def _spec_with_corrupt_image(c: Ctx) -> Path:
    spec = c.spec()
    (c.root / "data" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return spec


def _optuna_sweep(c: Ctx, depth_axis: dict, **changes) -> list[str]:
    """A dry run of an Optuna search over ian.depth."""
    spec = c.spec(search="optuna", num_samples=2, axes={"ian.depth": depth_axis}, **changes)
    return ["sweep", str(spec), "--dry-run"]


def _run_dir(c: Ctx, damage: str) -> Path:
    """A `train --out` folder left by an interrupted run, its stage 1 damaged: the stage
    export cut short (``export``) or the newest checkpoint's train state (``state``)."""
    from mage.presets import tiny_test

    run = c.root / "run"
    stage = run / "stage1"
    (stage / "model").mkdir(parents=True)
    tiny_test().save(run / "config.yaml")
    weights = (c.checkpoint_src / "projector.safetensors").read_bytes()
    cut = len(weights) // 2 if damage == "export" else len(weights)
    (stage / "model" / "trainable.safetensors").write_bytes(weights[:cut])
    step = stage / "checkpoints" / "step-00000002"
    step.mkdir(parents=True)
    (step / "complete").write_text('{"step": 2, "world_size": 1}')
    (step / "train_state.pt").write_bytes(b"PK\x03\x04 cut short")
    return run


def _damaged_world(c: Ctx) -> Path:
    world = Path(shutil.copytree(c.world, c.root / "w"))
    (world / "world.json").write_bytes(b'{"format_version": 2, "seed"')
    return world


def _damaged_bench(c: Ctx) -> Path:
    bench = Path(shutil.copytree(c.bench / "mme", c.root / "b" / "mme")).parent
    for arrow in (bench / "mme").rglob("*.arrow"):
        truncate(arrow, 0.3)
    return bench


@pytest.fixture(scope="module")
def shared(tmp_path_factory, test_world):
    """The read-only inputs every case may point at (never modified by a case)."""
    root = tmp_path_factory.mktemp("shared")
    checkpoint = save_tiny_checkpoint(root / "checkpoint")
    store = make_recorded_store(root / "store")
    return checkpoint, Path(test_world.root), store


def _isolate(monkeypatch, c: Ctx, env: tuple) -> dict[str, str]:
    """The case's current folder and environment (restored after the case)."""
    for folder in (c.cwd, c.user):
        folder.mkdir(parents=True)
    (c.user / "notes.txt").write_text("my own notes: not to be lost\n")
    (c.user / "results.csv").write_text("a,b\n1,2\n")
    (c.cwd / "todo.txt").write_text("mine\n")
    monkeypatch.chdir(c.cwd)
    values = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **dict(env)}
    for key in ("MAGE_RAY_CONNECT_TIMEOUT", "RAY_ADDRESS", "MAGE_HARNESS_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def _run(case: Case, argv: list[str], c: Ctx, env: dict, capsys) -> tuple[int, str]:
    if case.subprocess:
        full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", *argv],
            cwd=c.cwd,
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.returncode, proc.stderr
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_nothing_is_lost(
    case, shared, tmp_path, monkeypatch, capsys
):
    c = Ctx(tmp_path, *shared)
    env = _isolate(monkeypatch, c, case.env)
    argv = case.argv(c)
    capsys.readouterr()
    before = digest(tmp_path)
    shared_before = digest(c.checkpoint_src)
    code, err = _run(case, argv, c, env, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("mage-harness "), err
    print(lines[0])
    assert case.expect in lines[0], err
    assert digest(tmp_path) == before  # nothing changed, nothing added
    assert digest(c.checkpoint_src) == shared_before


def test_corpus_size_and_outcomes():
    """At least 60 cases over every command; the outcomes, for the record."""
    outcomes = Counter(f"exit {c.code}" for c in CASES)
    names = Counter(c.id.split("-")[0] for c in CASES)
    print(f"corpus: {len(CASES)} cases; outcomes {dict(outcomes)}; by command {dict(names)}")
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert set(names) >= {
        "synth", "check", "prepare", "train", "params", "eval", "bench", "chat", "sweep",
        "status", "resume", "report", "rebuild",
    }  # fmt: skip


def test_a_good_spec_passes_the_same_dry_run(shared, tmp_path, monkeypatch, capsys):
    """The control: the spec the sweep cases damage dry-runs cleanly (exit 0)."""
    c = Ctx(tmp_path, *shared)
    _isolate(monkeypatch, c, ())
    assert main(["sweep", str(c.spec()), "--dry-run"]) == 0, capsys.readouterr().err
    assert "inputs: every data file, image" in capsys.readouterr().out
