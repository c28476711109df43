"""Run a sweep with Ray Tune (grid, random, or Optuna TPE), resume it, record its provenance.

`run_sweep(spec, out_dir)` validates and plans the spec (nothing starts on a bad spec), starts
or connects to Ray, writes ``spec.yaml`` and ``manifest.json``, and runs one Tune experiment
per phase:

- ``grid`` / ``random``: one grid over (variant, seed); random variants are drawn up front
  with ``search_seed``, so the plan is known, shown by ``--dry-run`` and stable on resume.
- ``optuna``: the baselines as a grid, then ``OptunaSearch`` (TPE seeded with ``search_seed``,
  study ``<name>`` in an Optuna RDB storage: ``SWEEP_DIR/optuna.db`` or any SQLAlchemy URL)
  wrapped in Tune's ``Repeater``: each sampled variant is trained once per seed and Optuna is
  told the mean objective over the seeds (failed seeds left out), so seed noise is averaged,
  not optimised. ``num_samples`` counts variants, not trials.

Trials run through `harness.trial.execute_trial`; ``early_stopping`` adds an ASHA scheduler on
the training metric the trial reports; ``max_failures`` is how often Tune restarts a trial
whose process died. A trial resumed by Tune continues from its last checkpoint (stage caches).

Resume: ``resume_sweep(dir)`` restores each phase with ``Tuner.restore(..., resume_errored=
True)`` (or starts it again if the driver died before Tune saved its state). A trial first
looks itself up in the results store and, if it is there, reports the stored result without
training, so no finished trial runs twice and nothing stored is lost. ``retry_failed`` (``resume
--retry-failed`` or the spec's field) then runs the failed trials again in an experiment of
their own (`harness.retry`). The MMBench scoring method is decided here, once per sweep
(`_mmbench_scoring`), and reaches the trials in the plan's spec.

Ray (`harness.ray_cluster`): by default an embedded single-node Ray bound to 127.0.0.1 with
a per-session token; ``ray status`` from another shell therefore does not see it: use
``mage-harness status SWEEP_DIR``. An existing cluster: ``--ray-address ADDR`` or
``RAY_ADDRESS``, with the cluster's token in ``RAY_AUTH_TOKEN`` / ``~/.ray/auth_token``,
reached within a deadline; SWEEP_DIR must then be on a filesystem every node sees, and
``storage_path`` in the spec may be a cloud URI for Tune's own state. The driver connects
before it writes anything into SWEEP_DIR.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from harness import store
from harness.experiment import (  # noqa: F401  (check_memory, check_search: the CLI's)
    build_tuner,
    check_memory,
    check_search,
    shared_name,
    tell_study_retried,
)
from harness.plan import SweepPlan, plan_sweep
from harness.preflight import check_objective_categories
from harness.progress import SweepProgress, SweepSummary, summarize
from harness.ray_cluster import start_ray
from harness.spec import SpecError, SweepSpec, load_spec, parse_spec
from harness.store_check import check_store
from harness.trial import TrialFn
from harness.tune_trial import StoreCallback
from mage.io import atomic_write_text

PHASES = {
    "grid": ["main"],
    "one_at_a_time": ["main"],
    "random": ["main"],
    "optuna": ["baselines", "search"],
}


# --------------------------------------------------------------------------------------
# Phases (each a Tune experiment: harness.experiment)
# --------------------------------------------------------------------------------------


def _phases(plan: SweepPlan) -> list[str]:
    return [p for p in PHASES[plan.spec.search] if p == "search" or plan.variants]


def _phase_trials(plan: SweepPlan, phase: str) -> int:
    n = plan.spec.num_samples if phase == "search" else len(plan.variants)
    return n * len(plan.seeds)


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _check_spec(sweep_dir: Path, spec: SweepSpec) -> None:
    """Refuse a folder that holds another sweep (reads only)."""
    path = sweep_dir / "spec.yaml"
    # compared after parsing: a field added to the schema since (with its default) is no change
    if (
        path.exists()
        and parse_spec(store.read_spec(sweep_dir), str(path)).to_dict() != spec.to_dict()
    ):
        raise SpecError(
            f"{sweep_dir} holds another sweep (its spec.yaml differs from this spec); "
            "choose another --out folder, or `mage-harness resume` it"
        )


def _write_spec(sweep_dir: Path, spec: SweepSpec) -> None:
    """Keep the spec beside the results; refuse a folder that holds another sweep."""
    _check_spec(sweep_dir, spec)
    if not (sweep_dir / "spec.yaml").exists():
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))


def _check_plan(sweep_dir: Path, plan: SweepPlan) -> None:
    """Refuse to continue a sweep whose variants now resolve to other configs (a preset or a
    default changed since it started): old and new trials would mix two recipes."""
    stored = store.read_manifest(sweep_dir).get("plan") or {}
    before = {v["name"]: v["variant_id"] for v in stored.get("variants", [])}
    now = {v.name: v.variant_id for v in plan.variants}
    changed = sorted(name for name in before.keys() & now.keys() if before[name] != now[name])
    if changed:
        shown = ", ".join(changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise SpecError(
            f"{sweep_dir}: the spec now resolves to other configs than when this sweep started "
            f"({shown}: a preset or a default changed since); its stored trials would mix two "
            f"recipes. Choose another --out folder, or delete {sweep_dir} to start over"
        )


def _plan_manifest(plan: SweepPlan) -> dict[str, Any]:
    return {
        "num_trials": plan.num_trials,
        "seeds": plan.seeds,
        "swept_fields": plan.swept_fields,
        "phases": _phases(plan),
        "variants": [
            {"name": v.name, "variant_id": v.variant_id, "kind": v.kind, "overrides": v.overrides}
            for v in plan.variants
        ],
    }


def check_sweep_folder(plan: SweepPlan, sweep_dir: str | Path) -> None:
    """For ``--dry-run``: what a run refuses before it trains anything, given its folder: a
    folder that holds another sweep or a plan it cannot continue, and an MMBench scoring
    method this environment cannot run."""
    sweep_dir = Path(sweep_dir).resolve()
    _check_spec(sweep_dir, plan.spec)
    _check_plan(sweep_dir, plan)
    _decided_scoring(plan.spec, store.read_manifest(sweep_dir))


def run_sweep(
    spec: SweepSpec | str | Path,
    out_dir: str | Path | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    trial_fn: TrialFn | None = None,
    presets: dict[str, Any] | None = None,
    report: bool = True,
) -> SweepSummary:
    """Validate, plan and run a sweep into ``out_dir`` (default ``sweeps/<name>``).

    A folder that already holds this spec is continued (nothing finished runs again).
    ``trial_fn`` replaces the real trial (`harness.trial.run_trial`), e.g. in tests."""
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    plan = plan_sweep(spec, presets)  # a bad spec fails here, before Ray starts
    check_memory(plan)
    check_search(plan)
    sweep_dir = Path(out_dir or Path("sweeps") / spec.name).resolve()
    _check_spec(sweep_dir, spec)  # spec.yaml is written once connected (in _drive)
    _check_plan(sweep_dir, plan)
    return _drive(plan, sweep_dir, ray_address, progress, trial_fn, report, "sweep")


def resume_sweep(
    sweep_dir: str | Path,
    ray_address: str | None = None,
    progress: bool = True,
    trial_fn: TrialFn | None = None,
    presets: dict[str, Any] | None = None,
    report: bool = True,
    retry_failed: bool = False,
) -> SweepSummary:
    """Finish a sweep after a crash or kill: restore Tune's state; skip what is stored.

    ``retry_failed`` (or the spec's ``retry_failed``): then run the failed trials again from
    their stage caches and checkpoints (`harness.retry`)."""
    sweep_dir = Path(sweep_dir).resolve()
    if not (sweep_dir / "spec.yaml").is_file():
        raise SpecError(f"{sweep_dir}: not a sweep folder (no spec.yaml); start it with sweep")
    check_store(sweep_dir, "resume")  # a damaged store is refused before any work
    spec = parse_spec(yaml.safe_load((sweep_dir / "spec.yaml").read_text()), str(sweep_dir))
    plan = plan_sweep(spec, presets)
    _check_plan(sweep_dir, plan)
    kind = "resume --retry-failed" if retry_failed else "resume"
    return _drive(plan, sweep_dir, ray_address, progress, trial_fn, report, kind, retry_failed)


def _prepare_shared_inputs(plan: SweepPlan, sweep_dir: Path) -> None:
    """Prepare what trials share, once, in the driver, with every local core: the synthetic
    world and its assets, and every training source's parsed record table (so no trial parses
    a large JSON, and none builds on one thread what the others wait for under its lock)."""
    import torch

    from harness.trial import prepare_data, records_dir
    from mage.config import ConfigError
    from mage.records import DataError
    from mage.world.source import needs_assets

    configs = [plan.base] + [v.config for v in plan.variants]
    if plan.spec.world is not None:  # one config that needs the assets goes first
        configs.sort(key=lambda c: not needs_assets(c))
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    what = "the synthetic world, its assets and" if plan.spec.world else "the"
    print(f"preparing {what} training data (once; cached) ...", file=sys.stderr)
    eval_dir = None
    try:
        seen = set()
        for config in configs:
            data = [config.data_dir, config.assets_dir, needs_assets(config)]
            data += [
                [d.model_dump() for d in getattr(config, s).data] for s in ("stage1", "stage2")
            ]
            key = json.dumps(data, default=str)
            if key not in seen:
                seen.add(key)
                try:
                    data = prepare_data(plan.spec, config, records_dir(sweep_dir))
                    eval_dir = eval_dir or data.eval_dir
                except (DataError, ConfigError, FileNotFoundError) as err:
                    # that variant's trials fail with this cause; the sweep goes on
                    print(f"  {config.name}: {err}", file=sys.stderr)
        print(f"training data ready ({time.time() - started:.0f} s)", file=sys.stderr)
        check_objective_categories(plan.spec, eval_dir)  # the world's benchmarks exist now
    finally:
        torch.set_num_threads(threads)


def _decided_scoring(spec: SweepSpec, manifest: dict) -> str | None:
    """The MMBench scoring method, decided once for every trial and every later session:
    the spec's, else the one the sweep started with, else the driver's environment (a GPT
    judge if it has an API key); SpecError when this environment cannot score with it."""
    from harness.eval_tasks import EvalError, mmbench_choice, mmbench_scoring_from_env

    if "mmbench" not in spec.tasks:
        return None
    scoring = spec.mmbench_scoring or manifest.get("mmbench_scoring") or mmbench_scoring_from_env()
    try:
        mmbench_choice(scoring)  # a GPT judge needs its key here (and in the workers)
    except EvalError as err:
        raise SpecError(
            f"mmbench_scoring: this sweep scores MMBench with {scoring!r}: {err}"
        ) from None
    return scoring


def _mmbench_scoring(plan: SweepPlan, manifest: dict) -> SweepPlan:
    """The plan with the decided MMBench scoring method (`_decided_scoring`) in its spec,
    which is how the trials get it."""
    scoring = _decided_scoring(plan.spec, manifest)
    if scoring is not None:
        plan.spec = plan.spec.model_copy(update={"mmbench_scoring": scoring})
    return plan


def _drive(
    plan, sweep_dir, ray_address, progress, trial_fn, report, kind, retry_failed=False
) -> SweepSummary:
    import ray

    from harness.retry import prepare_retries
    from harness.trial import run_trial

    spec = plan.spec  # as the user wrote it: what spec.yaml keeps
    plan = _mmbench_scoring(plan, store.read_manifest(sweep_dir))
    started_ray = start_ray(ray_address)  # first: an unreachable cluster fails before any write
    try:
        _write_spec(sweep_dir, spec)
        _prepare_shared_inputs(plan, sweep_dir)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    started = time.time()
    manifest = store.read_manifest(sweep_dir)
    name = shared_name(plan.spec, sweep_dir, manifest)  # before this session is recorded
    sessions = manifest.get("sessions", [])
    sessions.append({"kind": kind, "started_at": _now(), "wall_s": 0.0})
    mode = (
        "embedded"
        if started_ray and not (ray_address or os.environ.get("RAY_ADDRESS"))
        else ("existing cluster" if started_ray else "caller's Ray")
    )
    resources = ray.cluster_resources()
    sessions[-1]["ray"] = {"mode": mode, **{k: resources.get(k, 0) for k in ("CPU", "GPU")}}
    store.update_manifest(
        sweep_dir,
        spec=plan.spec.to_dict(),
        plan=_plan_manifest(plan),
        sessions=sessions,
        mmbench_scoring=plan.spec.mmbench_scoring,
        shared_name=name,
        **store.provenance(),
    )
    handler = StoreCallback(sweep_dir, plan)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new output prints at verbose=0
    try:
        for phase in _phases(plan):
            callbacks = [
                handler,
                SweepProgress(
                    f"{plan.spec.name}:{phase}",
                    _phase_trials(plan, phase),
                    plan.spec.primary.mode,
                    progress,
                    sweep_dir,
                ),
            ]
            build_tuner(plan, sweep_dir, phase, trial_fn or run_trial, callbacks).fit()
        # trials moved aside for a retry that did not finish, and with retry_failed the
        # failed ones: run again in an experiment of their own
        retry = prepare_retries(sweep_dir, plan, retry_failed or plan.spec.retry_failed)
        if retry:
            phase = f"retry{len(sessions)}"
            callbacks = [
                handler,
                SweepProgress(
                    f"{plan.spec.name}:{phase}", len(retry), plan.spec.primary.mode, progress
                ),
            ]
            build_tuner(plan, sweep_dir, phase, trial_fn or run_trial, callbacks, retry).fit()
            if "search" in _phases(plan):  # the retried searched variants reach Optuna
                tell_study_retried(plan, sweep_dir, [t["trial_id"] for t in retry])
    finally:
        sessions[-1].update(wall_s=time.time() - started, ended_at=_now())
        handler.consolidate()
        store.update_manifest(
            sweep_dir, sessions=sessions, wall_s=sum(s["wall_s"] for s in sessions)
        )
        if started_ray:
            ray.shutdown()
    if report:
        _build_report(sweep_dir)
    return summarize(sweep_dir)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _build_report(sweep_dir: Path) -> None:
    try:
        from reports.build import build_report
    except ModuleNotFoundError as err:
        if err.name in ("reports.build", "reports"):
            return
        raise
    try:
        build_report(sweep_dir)
    except Exception as err:  # the results are stored; a report can be rebuilt later
        print(
            f"report not built ({type(err).__name__}: {err}); the results are stored in "
            f"{sweep_dir}; rebuild with `mage-harness report {sweep_dir}`",
            file=sys.stderr,
        )
