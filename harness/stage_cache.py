"""The stage cache: content addresses of stage outputs and evaluations, and done-markers.

A trial's stages live in ``SWEEP_DIR/stages/<hash>/`` and its evaluation in
``<stage-2 folder>/eval-<hash>/``. A key covers everything that shapes the output, so a
re-run, a resume or a retry can never pick up stale work:

- stage 1: the config fields that shape it (vision, ian, llm, the stage-1 loss terms, stage1,
  seed, blind, max_length), the content of its training data (`harness.fingerprint`: the
  JSON's bytes, the images' paths, sizes and mtimes, and the world's assets), and the version
  of the training code;
- stage 2: the stage-1 key, stage2, the whole loss and the content of stage 2's data (so
  trials that differ only in stage 2 still share stage 1);
- an evaluation (`eval_settings`): the tasks, batch size, limit, token cap, the benchmark
  data's content, the MMBench scoring method (GPT judge or static matching, decided once by
  the sweep's driver) and the version of the training and scoring code.

The code version is a hash of the code itself, not a hand-kept version number: a constant
that someone must remember to bump is forgotten exactly when a quiet bug fix lands, and then a
resumed sweep mixes stages trained before and after the fix. `code_version` hashes the
abstract syntax tree of every module that shapes a stage (the whole ``mage`` package: model,
data, template, prompts, training loop; and the trial driver) and, for evaluations, of the
scoring modules too, with docstrings dropped (an AST has no comments or formatting), plus the
versions of the libraries that compute the numbers (torch, transformers, open_clip, peft,
lmms-eval, datasets). Editing a comment, a docstring or the layout keeps every cache; any
change to code, even a harmless refactor, trains again: a wasted run is cheaper than a wrong
table. The hash is taken once per process from the modules' files.

A folder counts as finished only when its ``done.json`` exists (written last, atomically).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mage.config import MageConfig

DONE = "done.json"
# modules whose code shapes a trained stage; a package stands for all its modules
STAGE_CODE = ("mage", "harness.trial", "harness.train_worker")
STAGE_PACKAGES = ("torch", "transformers", "open_clip_torch", "peft", "tokenizers", "safetensors")
# ... and, in addition, an evaluation's scores
EVAL_CODE = (
    "harness.eval",
    "harness.eval_batches",  # batching and reading windows shape the stored answers
    "harness.eval_memo",
    "harness.eval_parallel",
    "harness.eval_tasks",
    "harness.eval_outputs",
    "harness.eval_tables",
    "harness.lmms_model",
)
EVAL_PACKAGES = ("lmms_eval", "datasets")


def content_hash(data: Any) -> str:
    """A short, stable hash of JSON-able data."""
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache  # the stage and eval scopes share most files; parsing is the cost
def code_digest(source: str) -> str:
    """Hash of Python source as code: its AST without docstrings (comments and layout are
    not in an AST), so only changes to what the code does change it."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()


def _module_files(name: str) -> dict[str, Path]:
    """{relative name: file} of a module, or of every module of a package; {} if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return {}
    if spec.submodule_search_locations:  # a package
        root = Path(next(iter(spec.submodule_search_locations)))
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        return {f"{name}/{p.relative_to(root).as_posix()}": p for p in files}
    return {name: Path(spec.origin)} if spec.origin and spec.origin.endswith(".py") else {}


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@functools.cache
def code_version(scope: str = "stage") -> str:
    """The version of the code that shapes a stage (``stage``) or also its scores (``eval``)."""
    if scope not in ("stage", "eval"):
        raise ValueError(f"scope must be 'stage' or 'eval', not {scope!r}")
    modules = STAGE_CODE + (EVAL_CODE if scope == "eval" else ())
    packages = STAGE_PACKAGES + (EVAL_PACKAGES if scope == "eval" else ())
    files = {k: v for m in modules for k, v in _module_files(m).items()}
    return content_hash(
        {
            "code": {k: code_digest(p.read_text()) for k, p in sorted(files.items())},
            "packages": {p: _package_version(p) for p in packages},
        }
    )


def stage_hash(config: MageConfig, stage: str, data_key: str | Mapping[str, str]) -> str:
    """Content address of a stage's output: the config fields, data and code that shape it.

    ``data_key``: per-stage data keys (`harness.fingerprint.stage_data_keys`), or one key
    for both stages."""
    data = {s: data_key if isinstance(data_key, str) else data_key[s] for s in ("stage1", "stage2")}
    c = config.to_dict()
    loss1 = {k: v for k, v in c["loss"].items() if k != "mse_in_stage2"}
    keys = ("vision", "ian", "llm", "stage1", "seed", "blind", "max_length")
    stage1 = content_hash(
        {"data": data["stage1"], "code": code_version(), "loss": loss1, **{k: c[k] for k in keys}}
    )
    if stage == "stage1":
        return stage1
    return content_hash(
        {"stage1": stage1, "stage2": c["stage2"], "loss": c["loss"], "data": data["stage2"]}
    )


def eval_settings(spec: Any, eval_dir: str | None, tools_json: str | None) -> dict[str, Any]:
    """What shapes an evaluation's scores (its cache key, and its done.json): the spec's
    evaluation fields, the benchmark data's content, the MMBench scoring method and the code.

    ``spec``: a `harness.spec.SweepSpec`; its ``mmbench_scoring`` is the driver's decision
    (unset when a trial runs outside a sweep: then this process's environment decides, as
    `harness.eval.evaluate` does)."""
    from harness.eval_tasks import mmbench_scoring_from_env
    from harness.fingerprint import eval_data_key

    scoring = None
    if "mmbench" in spec.tasks:
        scoring = spec.mmbench_scoring or mmbench_scoring_from_env()
    return {
        "tasks": spec.tasks,
        "batch": spec.eval_batch_size,
        "limit": spec.eval_limit,
        "max_new_tokens": spec.eval_max_new_tokens,
        "data": eval_dir,
        "data_content": eval_data_key(eval_dir, spec.tasks, tools_json),
        "mmbench_scoring": scoring,
        "code": code_version("eval"),
    }


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE).is_file()


def done_summary(folder: str | Path) -> dict | None:
    """A finished stage folder's summary (its done.json), None while it is not finished."""
    done = Path(folder) / DONE
    return json.loads(done.read_text())["summary"] if done.is_file() else None
