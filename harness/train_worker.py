"""One training stage as a job: built, trained, exported, on one process or on every rank.

`run_stage` is what every rank runs (a Ray Train worker, a torchrun process, or the trial's
own process): build the model from its config (stage 2 on top of stage 1's export), train it
with `mage.train.train_stage` (which resumes from the stage folder's newest checkpoint),
export what later work loads, drop the optimizer state (unless ``keep_optimizer``), and mark
the folder done. The stage folder is the unit of caching and of restore:

```
<stage folder>/config.yaml       the config that shaped it (written by the driver)
              checkpoints/       step-N/ DCP checkpoints while it trains (Ray Train's, too)
              model/             stage 1: trainable.safetensors (the connector) + config.json
                                 stage 2: a whole checkpoint (mage/persist.py)
              curves.parquet     the stage's training curve (rank 0)
              done.json          written last: the stage's summary
```

`ray_stage_worker` is the ``train_loop_per_worker`` of a `ray.train.torch.TorchTrainer`
(`run_stage_on_workers` builds it): Ray Train starts the process group (gloo on CPU, nccl on
GPU) and restarts failed workers (``FailureConfig``), which then resume from the checkpoint;
a stage-2 job may carry the trial's evaluation (``extra["then_eval"]``), which the same
workers then run, data-parallel (one worker-group start-up fewer per trial);
every rank reports its metrics and checkpoints through ``ray.train.report`` (a barrier), and
Ray Tune sees rank 0's through ``TuneReportCallback``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TRAIN_RUN = "checkpoints"  # Ray Train's run folder inside a stage folder: its checkpoints too
REPORTS_PER_STAGE = 25  # intermediate reports to Tune per stage (early stopping, progress)
POLL_ENV, POLL_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"  # see run_stage_on_workers


@dataclass
class StageJob:
    """Everything a rank needs to run one stage (plain values: it crosses process lines)."""

    config: dict[str, Any]  # MageConfig.to_dict()
    stage: str  # "stage1" | "stage2"
    folder: str  # the stage folder
    init_from: str | None = None  # stage 2: stage 1's export folder
    records_dir: str | None = None  # cached record tables (mage.records)
    trial_key: str = ""  # the Tune trial this runs for (its reports carry it)
    step_offset: int = 0  # global_step = step_offset + step (stage 2 after stage 1)
    report_every: int = 0  # steps between reports to Tune; 0: REPORTS_PER_STAGE per stage
    live_curves: tuple[str, str] | None = None  # (sweep_dir, trial_id): curves while running
    threads: int = 1  # torch CPU threads per rank
    extra: dict[str, Any] = field(default_factory=dict)


# every stage's metrics, NaN until reported (early stopping reads one of them, and only from a
# result that also holds that stage's step)
STAGE_METRICS_UNSET = {
    f"{stage}/{key}": math.nan
    for stage in ("stage1", "stage2")
    for key in ("loss", "ce_loss", "mse_loss")
}


def tune_result(trial_key: str, global_step: int, values: dict) -> dict[str, Any]:
    """An intermediate result as Tune reads it: ``global_step`` (both stages), ``train_loss``
    (the progress display), and the stage's own ``<stage>/step``, ``<stage>/loss``,
    ``<stage>/ce_loss``, ``<stage>/mse_loss`` (what early stopping ranks, within one stage).
    ``objective`` is NaN until the trial is scored (Tune wants the searcher's metric in
    every result; `harness.experiment.MageOptunaSearch` reads it as "not scored")."""
    stage = values.get("stage", "")
    result = {
        "trial_key": trial_key,
        "trial_final": 0,
        "objective": math.nan,
        "global_step": global_step,
        "train_loss": float(values.get("loss", math.nan)),
        "stage": stage,
        **STAGE_METRICS_UNSET,  # Tune wants a scheduler's metric in every result
    }
    if stage and "step" in values:
        result[f"{stage}/step"] = int(values["step"])
    for key in ("loss", "ce_loss", "mse_loss"):
        if key in values and stage:
            result[f"{stage}/{key}"] = float(values[key])
    return result


def _curve_rows(stage: str, step: int, metrics: dict) -> list[dict]:
    return [
        {"stage": stage, "step": step, "metric": k, "value": float(v)}
        for k, v in metrics.items()
        if isinstance(v, int | float) and k not in ("step", "total_steps")
    ]


def run_stage(
    job: StageJob,
    device=None,
    on_step: Callable[[str, int, dict], None] | None = None,
    on_report: Callable[[dict, str | None], None] | None = None,
) -> dict:
    """Run one stage on this rank; returns its summary. ``on_step(stage, step, metrics)`` runs
    on rank 0 after every step; ``on_report(result, checkpoint)`` on every rank at report and
    checkpoint steps (a Ray Train report is a barrier: all ranks call it together)."""
    import torch

    from mage.config import MageConfig
    from mage.io import atomic_write_json
    from mage.model import MageModel
    from mage.persist import load_trainable
    from mage.train import seed_build, train_stage
    from mage.train.checkpoint import CheckpointManager, export_trainable, gather_full_state
    from mage.train.loop import rank_and_world

    torch.set_num_threads(max(1, job.threads))
    cfg = MageConfig.from_dict(job.config)
    folder, stage = Path(job.folder), job.stage
    rank, _ = rank_and_world()
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    if job.init_from:
        load_trainable(model, Path(job.init_from) / "trainable.safetensors")
    curves = _curves_so_far(folder, cfg, stage) if rank == 0 else []
    live = None
    if job.live_curves and rank == 0:
        from harness.store import RunningCurves

        live = RunningCurves(*job.live_curves)

    def callback(step: int, metrics: dict) -> None:
        checkpoint = metrics.pop("checkpoint", None)
        if rank == 0:
            curves.extend(_curve_rows(stage, step, metrics))
            if live is not None:
                live.append(stage, step, metrics)
            if on_step is not None:
                on_step(stage, step, metrics)
        every = job.report_every or max(1, metrics["total_steps"] // REPORTS_PER_STAGE)
        if on_report is not None and (checkpoint or step % every == 0):
            values = {**metrics, "stage": stage, "step": step}
            result = tune_result(job.trial_key, job.step_offset + step, values)
            on_report(result, checkpoint)

    summary = train_stage(
        model, cfg, stage, folder, callback, device=device, records_dir=job.records_dir
    )
    export = folder / "model"
    if stage == "stage1":
        export_trainable(model, export / "trainable.safetensors")
        if rank == 0:
            cfg.save(export / "config.json")
    else:
        state = gather_full_state(model)
        if rank == 0:
            model.save_pretrained(export, state_dict=state)
    if rank == 0:
        _write_curves(folder / "curves.parquet", curves)
        atomic_write_json(folder / "done.json", {"stage": stage, "summary": summary})
        if not getattr(cfg, stage).keep_optimizer:  # after done.json: a crash here loses nothing
            CheckpointManager(folder / "checkpoints", cfg.seed, stage).prune(keep=0)
    if torch.distributed.is_initialized():
        # rank 0 alone writes the export and done.json: no rank goes on (say, to score the
        # export with then_eval) before they exist
        torch.distributed.barrier()
    return summary


def _write_curves(path: Path, rows: list[dict]) -> None:
    from mage.io import atomic_write

    frame = pd.DataFrame(rows, columns=["stage", "step", "metric", "value"])
    atomic_write(path, lambda p: frame.to_parquet(p, index=False))


def _curves_so_far(folder: Path, cfg, stage: str) -> list[dict]:
    """The curve a resumed stage had reached: the step metrics saved with its newest
    checkpoint (a checkpoint of an earlier version kept them in ``curves.parquet``)."""
    from mage.train.checkpoint import CheckpointManager

    latest = CheckpointManager(folder / "checkpoints", cfg.seed, stage).latest()
    if latest is None:
        return []
    saved = latest / "curves.parquet"
    if saved.is_file():
        return pd.read_parquet(saved).to_dict("records")
    history = CheckpointManager.saved_history(latest) or []
    return [row for h in history for row in _curve_rows(stage, int(h["step"]), h)]


# --------------------------------------------------------------------------------------
# On a Ray Train worker group
# --------------------------------------------------------------------------------------


def ray_stage_worker(config: dict) -> dict:
    """``train_loop_per_worker``: one rank of a stage (Ray Train set up the process group)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint, CheckpointUploadMode

    from harness.stage_cache import done_summary

    job = StageJob(**config)

    def report(result: dict, checkpoint: str | None) -> None:
        ray.train.report(
            result,
            checkpoint=Checkpoint(checkpoint) if checkpoint else None,
            checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
        )

    device = ray.train.torch.get_device()
    # Ray Train restarts the whole worker function when a worker fails; after a finished
    # stage (its evaluation failed), training again would repeat the stage for nothing
    summary = done_summary(job.folder)
    if summary is None:
        summary = run_stage(job, device=device, on_report=report)
    if job.extra.get("then_eval"):  # the same workers score the model they just trained
        import gc

        import torch

        from harness.eval_job import EvalJob, run_eval

        gc.collect()  # the sharded training model and its optimizer are gone: free them
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        run_eval(EvalJob(**job.extra["then_eval"]), device=device)
    return summary


@dataclass(frozen=True)
class WorkerGroup:
    """The worker group a stage runs on (from the spec's ``resources``)."""

    workers: int
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1  # Ray Train restarts of a failed worker group

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


def run_stage_on_workers(job: StageJob, group: WorkerGroup, tune_session: bool = True) -> None:
    """Run ``job`` on a Ray Train worker group; the run restores itself from the stage
    folder (same storage path and name) when a previous attempt died."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    callbacks = []
    if tune_session:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    resources = {"CPU": group.cpus_per_worker}
    if group.use_gpu:
        resources["GPU"] = group.gpus_per_worker
    job = StageJob(**{**asdict(job), "threads": max(1, int(group.cpus_per_worker))})
    # A worker's report waits until the controller polls it (a queue of one result), every
    # 2 s by default: ~2 s per report, 100 s per stage at 25 reports on a CPU group. Ray Train
    # forwards this variable from the driver to its controller; a user's own setting wins.
    os.environ.setdefault(POLL_ENV, POLL_INTERVAL_S)
    trainer = TorchTrainer(
        ray_stage_worker,
        train_loop_config=asdict(job),
        torch_config=TorchConfig(),  # nccl with GPUs, gloo on CPUs
        scaling_config=ray.train.ScalingConfig(
            num_workers=group.workers,
            use_gpu=group.use_gpu,
            resources_per_worker=resources,
            placement_strategy="PACK",
        ),
        run_config=ray.train.RunConfig(
            name=TRAIN_RUN,
            storage_path=str(Path(job.folder)),
            failure_config=ray.train.FailureConfig(max_failures=group.max_failures),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": forwarded_env()},
        ),
    )
    trainer.fit()


def forwarded_env() -> dict[str, str]:
    """Settings the workers need from the driver's environment (Ray does not forward it)."""
    keys = ("MAGE_DATA_DIR", "MAGE_ASSETS_DIR", "MAGE_WORLD_DIR", "MAGE_RECORDS_DIR", "HF_HOME")
    return {k: os.environ[k] for k in keys if k in os.environ}
