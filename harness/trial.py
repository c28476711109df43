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

from harness.eval_job import EvalJob, loader_workers_for
from harness.fingerprint import stage_data_keys
from harness.spec import SweepSpec
from harness.stage_cache import content_hash, done_summary, eval_settings, is_done, stage_hash
from harness.store import TrialRecord, write_trial
from harness.train_worker import StageJob, WorkerGroup
from mage.config import MageConfig
from mage.io import atomic_write_json

Reporter = Callable[[str, int, dict], None]
NOT_CURVES = ("step", "global_step", "total_steps")  # bookkeeping, not curve metrics


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
    cpus: float = 1.0  # what the trial process holds (the driver, for a worker group)
    gpus: float = 0.0
    group: WorkerGroup | None = None  # each stage on a Ray Train worker group; None: in-process
    usage: dict[str, float] = field(default_factory=lambda: {"cpu_s": 0.0, "gpu_s": 0.0})
    progress: dict[str, Any] | None = None  # from the last Tune checkpoint, if resumed
    on_report: Reporter | None = None  # (stage, step, metrics) -> forwards to Tune
    on_progress: Callable[[dict], None] | None = None  # saves a Tune checkpoint
    curves: list[dict] = field(default_factory=list)

    def report(self, stage: str, step: int, metrics: dict) -> None:
        """Record a training curve point and forward it (Tune, early stopping)."""
        for name, value in metrics.items():
            if isinstance(value, int | float) and name not in NOT_CURVES:
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
    """Steps both stages will take when known up front (``steps``; an ``epochs`` stage counts
    its ``steps`` cap, or 0: its length follows from the data)."""
    return (config.stage1.steps or 0) + (config.stage2.steps or 0)


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
        cpu_hours=(wall * ctx.cpus + ctx.usage["cpu_s"]) / 3600,
        gpu_hours=(wall * ctx.gpus + ctx.usage["gpu_s"]) / 3600,
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


def prepare_data(
    spec: SweepSpec, config: MageConfig, records_dir: str | Path | None = None
) -> TrialData:
    """The trial's data: the synthetic world (generated and prepared once, shared) or the
    real data the spec names; the config comes back pointed at it. Its record tables are
    parsed (once, cached in ``records_dir``) to fingerprint it."""
    if spec.world is None:
        data_dir = config.data_dir
        eval_dir = spec.eval_data_dir or data_dir
        tools = str(Path(eval_dir) / "tools_eval.json") if eval_dir else None
        keys = stage_data_keys(config, records_dir=records_dir)
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
    keys = stage_data_keys(source.config, source.fingerprint, records_dir)
    record = {**source.record, "data_keys": keys}
    return TrialData(source.config, source.eval_dir, source.tools_json, keys, record)


def records_dir(sweep_dir: Path) -> Path:
    """Where a sweep keeps its parsed record tables: in the sweep folder, which every node of
    a cluster sees, so each data source is parsed once per sweep."""
    return Path(sweep_dir) / "records"


def _with_training_data(record: dict[str, Any], data: TrialData) -> dict[str, Any]:
    datasets = {**record.get("datasets", {}), "training": data.record}
    return {**record, "datasets": datasets}


def _stage_job(ctx: TrialContext, cfg: MageConfig, stage: str, folder: Path) -> StageJob:
    return StageJob(
        config=cfg.to_dict(),
        stage=stage,
        folder=str(folder),
        records_dir=str(records_dir(ctx.sweep_dir)),
        trial_key=ctx.trial_id,
        live_curves=(str(ctx.sweep_dir), ctx.trial_id),
        threads=max(1, int(ctx.cpus)),
    )


def in_process_device(ctx: TrialContext) -> str | None:
    """Where an in-process trial (no worker group) trains and scores: the GPU Ray gave it
    (``resources`` with a GPU, or ``whole_node`` on a GPU node), else the CPU (None)."""
    import torch

    return "cuda" if ctx.gpus > 0 and torch.cuda.is_available() else None


def _run_stage(ctx: TrialContext, job: StageJob) -> None:
    """Train a stage, on the trial's worker group or in its own process."""
    import time

    from harness.train_worker import run_stage, run_stage_on_workers

    started = time.perf_counter()
    if ctx.group is None:

        def on_step(stage: str, step: int, metrics: dict) -> None:
            ctx.report(stage, step, {**metrics, "global_step": job.step_offset + step})

        run_stage(job, device=in_process_device(ctx), on_step=on_step)
        return
    job.live_curves = (str(ctx.sweep_dir), ctx.trial_id)
    run_stage_on_workers(job, ctx.group, tune_session=ctx.on_report is not None)
    wall = time.perf_counter() - started
    ctx.usage["cpu_s"] += wall * ctx.group.workers * ctx.group.cpus_per_worker
    ctx.usage["gpu_s"] += wall * ctx.group.workers * ctx.group.gpus_per_worker


def _stage(
    ctx: TrialContext,
    cfg: MageConfig,
    stage: str,
    folder: Path,
    after: Path | None = None,
    then_eval: EvalJob | None = None,
) -> bool:
    """Train a stage unless its folder is done (under the stage's lock, shared by trials);
    ``after``: the stage folder it starts from (stage 2: stage 1's), trained first if needed.
    ``then_eval``: on a worker group, the same workers score the stage right after it. True
    when the stage was trained here (and ``then_eval`` ran)."""
    from dataclasses import asdict

    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_done(folder):
            return False
        job = _stage_job(ctx, cfg, stage, folder)
        if after is not None:
            _stage(ctx, cfg, "stage1", after)
            ctx.save_progress({"done": ["stage1"], "stage1": after.name})
            # stage 2 starts from stage 1's export; its steps follow stage 1's on Tune's axis
            job.init_from, job.step_offset = str(after / "model"), _steps_done(after)
        if then_eval is not None and ctx.group is not None:
            job.extra["then_eval"] = asdict(then_eval)
        cfg.save(folder / "config.yaml")
        _run_stage(ctx, job)
        if not is_done(folder):
            raise RuntimeError(f"{stage} ended without marking {folder} done")
        return True


def _steps_done(folder: Path) -> int:
    return int((done_summary(folder) or {}).get("step", 0))


def _eval_job(ctx: TrialContext, checkpoint: Path, data: TrialData, out: Path) -> EvalJob:
    spec = ctx.spec
    return EvalJob(
        checkpoint=str(checkpoint),
        out=str(out),
        tasks=list(spec.tasks),
        data_dir=data.eval_dir,
        tools_json=data.tools_json,
        batch_size=spec.eval_batch_size,
        limit=spec.eval_limit,
        max_new_tokens=spec.eval_max_new_tokens,
        mmbench_scoring=spec.mmbench_scoring,
        threads=max(1, int(ctx.cpus)),
        loader_workers=loader_workers_for(ctx.cpus),
        tower_memo=tower_memo_dir(data.config),
    )


def tower_memo_dir(cfg: MageConfig) -> str | None:
    """Where evaluations keep the frozen tower's outputs (`harness.eval_memo`): beside the
    training's cached tower outputs, when the config asks for those (``vision.feature_cache``)."""
    folder = cfg.feature_cache_dir()
    return str(Path(folder) / "eval") if folder else None


def _evaluate(ctx: TrialContext, job: EvalJob) -> None:
    """Score the stage-2 checkpoint, on the trial's worker group or in-process."""
    import time

    from harness.eval_job import run_eval, run_eval_on_workers

    if ctx.group is None:
        run_eval(job, device=in_process_device(ctx))
        return
    started = time.perf_counter()
    run_eval_on_workers(job, ctx.group)
    wall = time.perf_counter() - started
    ctx.usage["cpu_s"] += wall * ctx.group.workers * ctx.group.cpus_per_worker
    ctx.usage["gpu_s"] += wall * ctx.group.workers * ctx.group.gpus_per_worker


def run_trial(ctx: TrialContext) -> TrialOutcome:
    """The real trial: prepare data, train (or reuse) both stages, evaluate (or reuse)."""
    import torch
    from filelock import FileLock

    torch.set_num_threads(max(1, int(ctx.cpus)))
    data = prepare_data(ctx.spec, ctx.config, records_dir(ctx.sweep_dir))
    cfg, stages = data.config, ctx.sweep_dir / "stages"
    s1 = stages / stage_hash(cfg, "stage1", data.fingerprint)
    s2 = stages / stage_hash(cfg, "stage2", data.fingerprint)
    settings = eval_settings(ctx.spec, data.eval_dir, data.tools_json)
    ev = s2 / f"eval-{content_hash(settings)}"
    stages.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ev) + ".lock"):
        if not is_done(ev):
            ev.mkdir(parents=True, exist_ok=True)
            job = _eval_job(ctx, s2 / "model", data, ev)
            scored = _stage(ctx, cfg, "stage2", s2, after=s1, then_eval=job)
            ctx.save_progress({"done": ["stage1", "stage2"], "stage1": s1.name, "stage2": s2.name})
            if not (scored and ctx.group is not None):  # else the stage's workers scored it
                _evaluate(ctx, job)
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
        steps=_steps_done(s1) + _steps_done(s2),
        eval_record=_with_training_data(json.loads((ev / "record.json").read_text()), data),
    )
