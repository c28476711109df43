"""How a sweep's trials flow through Ray Tune: the trial function and the driver's callback.

Inside a trial, `tune_trainable` is the function Tune runs: it looks the trial up in the results
store first (a trial finished in an earlier session reports its stored result and trains
nothing), continues from Tune's checkpoint if it has one, reports the training loss as it goes
(ASHA reads it; every ``planned_steps // REPORTS_PER_TRIAL`` steps) with a checkpoint at each
finished stage, and stores its record before its last report. On the driver, `StoreCallback`
stores the trials Tune stopped early (``stopped``, with their curves so far) or gave up on after
``max_failures`` (``failed``, with Tune's error), then merges the store.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from harness import store
from harness.plan import SweepPlan, Variant
from harness.retry import retry_variant
from harness.spec import SpecError, SweepSpec
from harness.train_worker import STAGE_METRICS_UNSET, WorkerGroup, tune_result
from harness.trial import NOT_CURVES, TrialContext, TrialFn, execute_trial, planned_steps

REPORTS_PER_TRIAL = 50  # intermediate Tune reports per trial (early stopping, live progress)


def identify(plan: SweepPlan, config: dict[str, Any]) -> tuple[Variant, int]:
    """The variant and seed of a Tune trial config (grid: by name; Optuna: sampled values;
    a failed trial run again: its stored record, `harness.retry`)."""
    if "retry" in config:
        return retry_variant(plan, config["retry"])
    if "variant" in config:
        by_name = {v.name: v for v in plan.variants}
        return by_name[config["variant"]], int(config["seed"])
    sampled = {k: config[k] for k in plan.spec.axes}
    variant = plan.variant(plan.axis_overrides(sampled), "searched")
    return variant, plan.seeds[int(config.get("__trial_index__", 0))]


def worker_group(spec: SweepSpec) -> WorkerGroup | None:
    """The Ray Train worker group each stage of a trial runs on; None: the trial's process."""
    res = spec.resources
    if res == "whole_node" or res.in_process:
        return None
    return WorkerGroup(res.workers, res.cpus_per_worker, res.gpus_per_worker, spec.max_failures)


def _final_result(key: str, status: str, steps: int, value: float | None) -> dict[str, Any]:
    """A trial's last result: its objective when it was scored (a failed trial has none,
    NaN, and the searcher is told it failed: `harness.experiment.MageOptunaSearch`)."""
    ok = value is not None and math.isfinite(value)
    return {
        "trial_key": key,
        "trial_status": status,
        "trial_final": 1,
        "global_step": steps,
        "train_loss": math.nan,
        **STAGE_METRICS_UNSET,
        "objective": float(value) if ok else math.nan,
    }


def _final(record: store.TrialRecord, spec: SweepSpec) -> dict[str, Any]:
    value = record.objectives.get(spec.primary.key)
    return _final_result(record.trial_id, record.status, record.steps, value)


def _refused(config: dict[str, Any]) -> dict[str, Any]:
    """The final result of a sampled point whose config is invalid: failed, no objective;
    there is no variant to store it under."""
    sampled = ",".join(f"{k}={v}" for k, v in config.items() if not k.startswith("__"))
    return _final_result(f"invalid:{sampled}", "failed", 0, None)


def tune_trainable(config: dict[str, Any], *, sweep_dir: str, plan: SweepPlan, trial_fn: TrialFn):
    import ray
    from ray import tune

    try:
        variant, seed = identify(plan, config)
    except SpecError as err:  # a sampled point the checks before the sweep could not rule out
        print(f"{plan.spec.name}: sampled variant not run: {err}", flush=True)
        tune.report(_refused(config))
        return
    trial_id = variant.trial_id(seed)
    stored = store.stored_trial(sweep_dir, trial_id)
    if stored is not None:  # finished in an earlier session: report it, do not re-run it
        tune.report(_final(stored, plan.spec))
        return
    trial_config = plan.trial_config(variant, seed)
    stage1_steps = trial_config.stage1.steps or 0
    every = max(1, planned_steps(trial_config) // REPORTS_PER_TRIAL)
    last = {"result": tune_result(trial_id, 0, {})}
    live = store.RunningCurves(sweep_dir, trial_id)
    live.remove()  # points of an attempt that was interrupted

    def metrics() -> dict[str, Any]:
        return last["result"]

    def on_report(stage: str, step: int, values: dict) -> None:
        """In-process trials: every step's metrics (a worker group reports by itself)."""
        global_step = int(
            values.get("global_step", step + (stage1_steps if stage == "stage2" else 0))
        )
        last["result"] = tune_result(
            trial_id, global_step, {**values, "stage": stage, "step": step}
        )
        live.append(stage, step, {k: v for k, v in values.items() if k not in NOT_CURVES})
        if global_step % every == 0:
            tune.report(metrics())

    def on_progress(progress: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "progress.json").write_text(yaml.safe_dump(progress))
            tune.report(metrics(), checkpoint=tune.Checkpoint.from_directory(tmp))

    progress = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            progress = yaml.safe_load(Path(folder, "progress.json").read_text())
    assigned = ray.get_runtime_context().get_assigned_resources()
    ctx = TrialContext(
        sweep_dir=Path(sweep_dir),
        spec=plan.spec,
        trial_id=trial_id,
        variant_id=variant.variant_id,
        variant_name=variant.name,
        seed=seed,
        config=trial_config,
        swept=plan.swept_values(trial_config),
        cpus=assigned.get("CPU", 1.0),
        gpus=assigned.get("GPU", 0.0),
        group=worker_group(plan.spec),
        progress=progress,
        on_report=on_report,
        on_progress=on_progress,
    )
    record = execute_trial(ctx, trial_fn)
    live.remove()
    tune.report(_final(record, plan.spec))


def _stage_metric(key: str) -> bool:
    stage, _, name = key.partition("/")
    return stage in ("stage1", "stage2") and name in ("loss", "ce_loss", "mse_loss")


class StoreCallback(Callback):
    """Driver side: store trials Tune stopped early or whose process died; merge the store."""

    def __init__(self, sweep_dir: Path, plan: SweepPlan):
        self.sweep_dir, self.plan = Path(sweep_dir), plan

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.handle(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.handle(trial, error=True)

    def handle(self, trial, error: bool) -> None:
        try:
            variant, seed = identify(self.plan, trial.config)
        except SpecError:  # an invalid sampled point (`_refused`): nothing to store
            return
        trial_id = variant.trial_id(seed)
        if store.stored_trial(self.sweep_dir, trial_id) is None:
            self._store_unfinished(trial, variant, seed, error)
        self.consolidate()

    def _store_unfinished(self, trial, variant: Variant, seed: int, error: bool) -> None:
        trial_id = variant.trial_id(seed)
        last = trial.last_result or {}
        config = self.plan.trial_config(variant, seed)
        res = self.plan.spec.resources
        size = {"CPU": 0.0, "GPU": 0.0} if res == "whole_node" else res.group_size()
        cpu, gpu = size["CPU"], size["GPU"]
        wall = float(last.get("time_total_s") or 0.0)
        cause = None
        if error:
            path = trial.error_file
            text = Path(path).read_text() if path and Path(path).exists() else ""
            text = text if len(text) < 1500 else f"{text[:500]} ... {text[-900:]}"
            cause = f"trial process failed (Tune gave up after max_failures): {text}"
        live = store.RunningCurves(self.sweep_dir, trial_id)
        record = store.TrialRecord(
            trial_id=trial_id,
            variant_id=variant.variant_id,
            variant_name=variant.name,
            seed=seed,
            status="failed" if error else "stopped",
            error=cause,
            swept=self.plan.swept_values(config),
            config=config.to_dict(),
            wall_s=wall,
            cpu_hours=wall * cpu / 3600,
            gpu_hours=wall * gpu / 3600,
            steps=int(last.get("global_step") or 0),
            planned_steps=planned_steps(config),
            stopped_early=not error,
            # a stopped trial keeps the training metrics it was last compared on
            objectives={
                f"train/{k}/all": float(v)
                for k, v in last.items()
                if _stage_metric(k) and math.isfinite(v)
            },
        )
        store.write_trial(self.sweep_dir, record, curves=live.read())
        live.remove()

    def consolidate(self) -> None:
        store.consolidate(self.sweep_dir, self.plan.spec.name, self.plan.swept_fields)
