"""One trial of a sweep: data -> stage 1 -> stage 2 -> evaluation, with cached stages.

`run_trial` is the real work. Its inputs are prepared once and shared: the synthetic world
(``mage.world.generate.ensure_world``, keyed by size and seed) and its pretrained assets
(``mage.world.assets.prepare_assets``), each under a file lock. Stage outputs live in a
content-addressed cache, ``SWEEP_DIR/stages/<hash>/``, keyed by the config fields, the data's
content and the code version that shape each stage (`harness.stage_cache`). So a re-run
skips finished stages, trials that share a stage-1 setting train it once (the second waits on
the lock and reuses it), and evaluation is cached beside the stage-2 model. Every stage folder
holds the config that shaped it (``config.yaml``).

`execute_trial` wraps any trial function: it pins the torch threads to the trial's CPUs, times
it, and turns an exception (NaN loss, out of memory, a bad data path, anything) into a
``failed`` record carrying the exception type, message and a short traceback tail, so the
sweep goes on. The record is stored (`harness.store.write_trial`) before the trial's last
report to Tune.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.fingerprint import stage_data_keys
from harness.spec import SweepSpec
from harness.stage_cache import content_hash, eval_settings, is_done, load_stage, stage_hash
from harness.store import CURVE_COLUMNS, TrialRecord, write_trial
from mage.config import MageConfig
from mage.io import atomic_write, atomic_write_json

Reporter = Callable[[str, int, dict], None]


@dataclass
class TrialContext:
    """What a trial function gets: its identity, config, resources and a reporter."""

    sweep_dir: Path
    spec: SweepSpec
    trial_id: str
    variant_id: str
    variant_name: str
    seed: int
    config: MageConfig
    swept: dict[str, Any] = field(default_factory=dict)
    cpus: float = 1.0
    gpus: float = 0.0
    progress: dict[str, Any] | None = None  # from the last Tune checkpoint, if resumed
    on_report: Reporter | None = None  # (stage, step, metrics) -> forwards to Tune
    on_progress: Callable[[dict], None] | None = None  # saves a Tune checkpoint
    curves: list[dict] = field(default_factory=list)

    def report(self, stage: str, step: int, metrics: dict) -> None:
        """Record a training curve point and forward it (Tune, early stopping)."""
        for name, value in metrics.items():
            if isinstance(value, int | float) and name != "step":
                self.curves.append({"stage": stage, "step": step, "metric": name, "value": value})
        if self.on_report is not None:
            self.on_report(stage, step, metrics)

    def save_progress(self, progress: dict) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)


@dataclass
class TrialOutcome:
    """What a trial function returns: the score table (and optionally items, steps, record)."""

    scores: pd.DataFrame  # [benchmark, metric, category, value, n]
    items: pd.DataFrame | None = None
    steps: int = 0
    eval_record: dict[str, Any] = field(default_factory=dict)


TrialFn = Callable[[TrialContext], TrialOutcome]


def planned_steps(config: MageConfig) -> int:
    return config.stage1.steps + config.stage2.steps


def describe_error(err: BaseException) -> str:
    """Exception type, message and the last frames of its traceback (for the store)."""
    kind = type(err).__name__
    hint = ""
    if "OutOfMemory" in kind or isinstance(err, MemoryError):
        hint = " [out of memory: lower the batch size or max_length, or give the trial more memory]"
    tail = "".join(traceback.format_exception(err)[-3:]).strip()
    return f"{kind}: {err}{hint}\n{tail[-1200:]}"


def objective_values(spec: SweepSpec, scores: pd.DataFrame) -> dict[str, float | None]:
    """The spec's objectives read from a score table (None where the row is absent)."""
    out: dict[str, float | None] = {}
    for obj in spec.objective:
        rows = scores[
            (scores["benchmark"] == obj.benchmark)
            & (scores["metric"] == obj.metric)
            & (scores["category"] == obj.category)
        ]
        out[obj.key] = float(rows["value"].iloc[0]) if len(rows) else None
    return out


def execute_trial(ctx: TrialContext, trial_fn: TrialFn) -> TrialRecord:
    """Run ``trial_fn`` and store its record (ok or failed with its cause); never raises
    for an error inside the trial."""
    if "torch" in sys.modules:  # run_trial sets it too, after importing torch
        sys.modules["torch"].set_num_threads(max(1, int(ctx.cpus)))
    started = time.perf_counter()
    outcome, error = None, None
    try:
        outcome = trial_fn(ctx)
        objectives = objective_values(ctx.spec, outcome.scores)
        missing = [k for k, v in objectives.items() if v is None and k == ctx.spec.primary.key]
        if missing:
            available = sorted(
                outcome.scores[["benchmark", "metric", "category"]]
                .astype(str)
                .agg("/".join, axis=1)
            )
            raise KeyError(f"objective {missing[0]} is not in the scores; available: {available}")
    except Exception as err:  # the trial fails, the sweep goes on
        error = describe_error(err)
    wall = time.perf_counter() - started
    steps = outcome.steps if outcome else max((c["step"] for c in ctx.curves), default=0)
    record = TrialRecord(
        trial_id=ctx.trial_id,
        variant_id=ctx.variant_id,
        variant_name=ctx.variant_name,
        seed=ctx.seed,
        status="failed" if error else "ok",
        error=error,
        swept=ctx.swept,
        config=ctx.config.to_dict(),
        wall_s=wall,
        cpu_hours=wall * ctx.cpus / 3600,
        gpu_hours=wall * ctx.gpus / 3600,
        steps=steps,
        planned_steps=planned_steps(ctx.config),
        objectives={} if error else objective_values(ctx.spec, outcome.scores),
        eval_record={} if error else outcome.eval_record,
    )
    write_trial(
        ctx.sweep_dir,
        record,
        scores=None if error else outcome.scores,
        items=None if error else outcome.items,
        curves=ctx.curves,
    )
    return record


# --------------------------------------------------------------------------------------
# The real trial
# --------------------------------------------------------------------------------------


@dataclass
class TrialData:
    config: MageConfig  # with data_dir / assets_dir filled in
    eval_dir: str | None  # benchmark folders (mme/, mmbench/, seedbench/)
    tools_json: str | None  # tool-calling eval records
    fingerprint: dict[str, str]  # per stage, its training data's content (stage hashes)
    record: dict[str, Any] = field(default_factory=dict)  # what the training data is


def prepare_data(spec: SweepSpec, config: MageConfig) -> TrialData:
    """The trial's data: the synthetic world (generated and prepared once, shared) or the
    real data the spec names; the config comes back pointed at it."""
    if spec.world is None:
        data_dir = config.data_dir
        eval_dir = spec.eval_data_dir or data_dir
        tools = str(Path(eval_dir) / "tools_eval.json") if eval_dir else None
        keys = stage_data_keys(config)
        return TrialData(config, eval_dir, tools, keys, {"data_dir": data_dir, "data_keys": keys})
    from mage.world.source import prepare_world_source

    world = spec.world
    source = prepare_world_source(
        config,
        world.size,
        world.seed,
        recipe=world.asset_recipe,
        world_folder=world.dir,
        assets_folder=spec.assets_dir,
        eval_folder=spec.eval_data_dir,
    )
    keys = stage_data_keys(source.config, base=source.fingerprint)
    record = {**source.record, "data_keys": keys}
    return TrialData(source.config, source.eval_dir, source.tools_json, keys, record)


def _with_training_data(record: dict[str, Any], data: TrialData) -> dict[str, Any]:
    datasets = {**record.get("datasets", {}), "training": data.record}
    return {**record, "datasets": datasets}


def _device(ctx: TrialContext) -> str | None:
    """The trial's GPU when Tune gave it one, else the CPU (the default)."""
    import torch

    return "cuda" if ctx.gpus > 0 and torch.cuda.is_available() else None


def _stage(ctx: TrialContext, cfg: MageConfig, stage: str, folder: Path, init: Callable):
    """Load a finished stage's model, or train it (under the stage's lock) and cache it."""
    from filelock import FileLock

    from mage.train import train_stage

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_done(folder):
            return load_stage(folder, cfg, device=_device(ctx))
        model, start = init(), len(ctx.curves)
        cfg.save(folder / "config.yaml")
        summary = train_stage(model, cfg, stage, folder, lambda s, m: ctx.report(stage, s, m))
        model.save_pretrained(folder / "model")
        curves = pd.DataFrame(ctx.curves[start:], columns=CURVE_COLUMNS)
        atomic_write(folder / "curves.parquet", lambda p: curves.to_parquet(p, index=False))
        atomic_write_json(folder / "done.json", {"stage": stage, "summary": summary})
    return model


def _evaluate(ctx: TrialContext, model, data: TrialData, out: Path) -> None:
    """lmms-eval benchmarks (and the tool-calling score) into ``out``."""
    from harness.eval import evaluate

    spec = ctx.spec
    bench = [t for t in spec.tasks if t != "tools"]
    scores, items, record = [], [], {}
    if bench:
        result = evaluate(
            model,
            tasks=bench,
            data_dir=data.eval_dir,
            out_dir=out / "lmms_eval",
            batch_size=spec.eval_batch_size,
            limit=spec.eval_limit,
            max_new_tokens_cap=spec.eval_max_new_tokens,
            mmbench_scoring=spec.mmbench_scoring,
        )
        scores, items, record = [result.scores], [result.items], result.record
    if "tools" in spec.tasks:
        from mage.tools.metrics import evaluate_tools

        tool_json = Path(data.tools_json or "")
        if not tool_json.is_file():
            raise FileNotFoundError(
                f"tasks include 'tools' but the tool eval file {tool_json} does not exist"
            )
        tool_scores, tool_items = evaluate_tools(model, tool_json, batch_size=spec.eval_batch_size)
        scores.append(tool_scores), items.append(tool_items)
    for name, parts in (("scores", scores), ("items", items)):
        frame = pd.concat(parts, ignore_index=True)
        atomic_write(out / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
    atomic_write_json(out / "record.json", record)


def run_trial(ctx: TrialContext) -> TrialOutcome:
    """The real trial: prepare data, train (or reuse) both stages, evaluate (or reuse)."""
    import torch
    from filelock import FileLock

    from mage.model import MageModel
    from mage.train import seed_build

    torch.set_num_threads(max(1, int(ctx.cpus)))
    data = prepare_data(ctx.spec, ctx.config)
    cfg, stages = data.config, ctx.sweep_dir / "stages"
    s1 = stages / stage_hash(cfg, "stage1", data.fingerprint)
    s2 = stages / stage_hash(cfg, "stage2", data.fingerprint)
    settings = eval_settings(ctx.spec, data.eval_dir, data.tools_json)
    ev = s2 / f"eval-{content_hash(settings)}"
    stages.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ev) + ".lock"):
        if not is_done(ev):

            def stage1():
                seed_build(cfg.seed)
                model = _stage(
                    ctx, cfg, "stage1", s1, lambda: MageModel.build(cfg, device=_device(ctx))
                )
                ctx.save_progress({"done": ["stage1"], "stage1": s1.name})
                return model

            model = _stage(ctx, cfg, "stage2", s2, stage1)
            ctx.save_progress({"done": ["stage1", "stage2"], "stage1": s1.name, "stage2": s2.name})
            ev.mkdir(parents=True, exist_ok=True)
            _evaluate(ctx, model, data, ev)
            atomic_write_json(ev / "done.json", settings)
    curves = [pd.read_parquet(folder / "curves.parquet") for folder in (s1, s2)]
    ctx.curves = pd.concat(curves, ignore_index=True).to_dict("records")
    last = pd.DataFrame(ctx.curves).sort_values("step").groupby(["stage", "metric"]).last()
    train = [
        {
            "benchmark": "train",
            "metric": f"{stage}/{metric}_final",
            "category": "all",
            "value": row["value"],
            "n": int(row["step"]),
        }
        for (stage, metric), row in last.iterrows()
        if metric in ("loss", "ce_loss", "mse_loss")
    ]
    scores = pd.concat([pd.read_parquet(ev / "scores.parquet"), pd.DataFrame(train)])
    return TrialOutcome(
        scores=scores.reset_index(drop=True),
        items=pd.read_parquet(ev / "items.parquet"),
        steps=planned_steps(cfg),
        eval_record=_with_training_data(json.loads((ev / "record.json").read_text()), data),
    )
