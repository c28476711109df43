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
from harness.plan import SweepPlan, plan_sweep
from harness.progress import SweepProgress, SweepSummary, summarize
from harness.ray_cluster import start_ray
from harness.spec import SpecError, SweepSpec, load_spec, parse_spec
from harness.store_check import check_store
from harness.trial import TrialFn, planned_steps
from harness.tune_trial import StoreCallback, tune_trainable
from mage.config import get_dotted
from mage.io import atomic_write_text

PHASES = {"grid": ["main"], "random": ["main"], "optuna": ["baselines", "search"]}


# --------------------------------------------------------------------------------------
# Tune experiments
# --------------------------------------------------------------------------------------


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _phases(plan: SweepPlan) -> list[str]:
    return [p for p in PHASES[plan.spec.search] if p == "search" or plan.variants]


def _phase_trials(plan: SweepPlan, phase: str) -> int:
    n = plan.spec.num_samples if phase == "search" else len(plan.variants)
    return n * len(plan.seeds)


def experiment_path(plan: SweepPlan, sweep_dir: Path, phase: str) -> str:
    base = plan.spec.storage_path or str(sweep_dir / "tune")
    return f"{base.rstrip('/')}/{plan.spec.name}-{phase}"


def _resources(spec: SweepSpec):
    import ray
    from ray import tune

    if spec.resources != "whole_node":
        return spec.resources.trial_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpu = min(n.get("CPU", 0) for n in nodes)
    gpu = min(n.get("GPU", 0) for n in nodes)
    return tune.PlacementGroupFactory([{"CPU": cpu, "GPU": gpu}], strategy="STRICT_PACK")


def check_memory(plan: SweepPlan) -> None:
    """Refuse, before Ray starts, a GPU sweep whose variants' stages are estimated not to fit
    one GPU's memory on the stated workers (`mage.train.memory`; the estimate is the message)."""
    res = plan.spec.resources
    if res == "whole_node" or res.gpus_per_trial_worker[1] <= 0:
        return
    from mage.train.memory import check_fits

    workers = res.gpus_per_trial_worker[0]
    seen = set()
    for variant in plan.variants or [None]:
        config = variant.config if variant else plan.base
        shape = config.model_dump(include={"vision", "ian", "llm", "stage1", "stage2"})
        key = json.dumps([shape, config.max_length], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_fits(config, workers, res.gpu_memory_gb)
        except ValueError as err:
            name = variant.name if variant else plan.spec.base
            raise SpecError(f"resources: variant {name}: {err}") from None


def max_concurrent_trials(spec: SweepSpec) -> int | None:
    """The spec's cap, or for worker-group trials as many as the cluster has room for: a
    trial's driver holds no GPU, so Tune alone would start trials whose workers then wait."""
    import ray

    if spec.max_concurrent_trials or spec.resources == "whole_node" or spec.resources.in_process:
        return spec.max_concurrent_trials
    need, have = spec.resources.group_size(), ray.cluster_resources()
    fits = [int(have.get(k, 0) // need[k]) for k in ("GPU", "CPU") if need[k] > 0]
    if min(fits) < 1:
        raise SpecError(
            f"resources: one trial needs {need['CPU']:g} CPUs and {need['GPU']:g} GPUs at once "
            f"(driver + {spec.resources.workers} workers); the cluster has "
            f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs"
        )
    return min(fits)


def optuna_space(plan: SweepPlan) -> dict[str, Any]:
    """The spec's axes as Optuna distributions (bundles become categorical labels)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    data, space = plan.base.to_dict(), {}
    for name, axis in plan.spec.axes.items():
        if name in plan.bundles:
            space[name] = CategoricalDistribution(list(plan.bundles[name]))
        elif axis.options is not None:
            space[name] = CategoricalDistribution(axis.options)
        elif isinstance(get_dotted(data, name), int) and not isinstance(
            get_dotted(data, name), bool
        ):
            step = int(axis.step or 1)
            space[name] = IntDistribution(int(axis.low), int(axis.high), log=axis.log, step=step)
        else:
            space[name] = FloatDistribution(axis.low, axis.high, log=axis.log, step=axis.step)
    return space


def _search_alg(plan: SweepPlan, sweep_dir: Path):
    import optuna
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    spec = plan.spec
    url = spec.optuna_storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    searcher = OptunaSearch(
        space=optuna_space(plan),
        metric="objective",
        mode=spec.primary.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.search_seed),
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(url),
    )
    return Repeater(searcher, repeat=len(plan.seeds), set_index=True)


def _tuner(
    plan: SweepPlan,
    sweep_dir: Path,
    phase: str,
    trial_fn: TrialFn,
    callbacks: list,
    retry: list[dict] | None = None,
):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec = plan.spec
    trainable = tune.with_parameters(
        tune_trainable, sweep_dir=str(sweep_dir), plan=plan, trial_fn=trial_fn
    )
    trainable = tune.with_resources(trainable, _resources(spec))
    path = experiment_path(plan, sweep_dir, phase)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        # Tune restores the RunConfig it pickled; give it this session's callbacks.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    scheduler = None
    if spec.early_stopping:
        es = spec.early_stopping
        scheduler = ASHAScheduler(
            time_attr="global_step",
            metric=es.metric,
            mode=es.mode,
            max_t=es.max_t or planned_steps(plan.base),
            grace_period=es.grace_period,
            reduction_factor=es.reduction_factor,
        )
    if phase == "search":
        param_space, search_alg = None, _search_alg(plan, sweep_dir)
        num_samples = spec.num_samples * len(plan.seeds)
    elif retry is not None:  # failed trials run again (harness.retry)
        param_space, search_alg, num_samples = {"retry": tune.grid_search(retry)}, None, 1
    else:
        names = [v.name for v in plan.variants]
        param_space = {"variant": tune.grid_search(names), "seed": tune.grid_search(plan.seeds)}
        search_alg, num_samples = None, 1
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials(spec),
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a fresh process per trial re-imports torch (~5 s each)
        ),
        run_config=tune.RunConfig(
            name=path.rsplit("/", 1)[1],
            storage_path=path.rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0,
        ),
    )


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
    from mage.world.source import needs_assets

    configs = [plan.base] + [v.config for v in plan.variants]
    if plan.spec.world is not None:  # one config that needs the assets goes first
        configs.sort(key=lambda c: not needs_assets(c))
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    what = "the synthetic world, its assets and" if plan.spec.world else "the"
    print(f"preparing {what} training data (once; cached) ...", file=sys.stderr)
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
                prepare_data(plan.spec, config, records_dir(sweep_dir))
        print(f"training data ready ({time.time() - started:.0f} s)", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)


def _mmbench_scoring(plan: SweepPlan, manifest: dict) -> SweepPlan:
    """Decide the MMBench scoring method once, for every trial and every later session: the
    spec's, else the one the sweep started with, else the driver's environment (a GPT judge
    if it has an API key). The trials get it through the plan's spec."""
    from harness.eval import EvalError, mmbench_choice, mmbench_scoring_from_env

    spec = plan.spec
    if "mmbench" not in spec.tasks:
        return plan
    scoring = spec.mmbench_scoring or manifest.get("mmbench_scoring") or mmbench_scoring_from_env()
    try:
        mmbench_choice(scoring)  # a GPT judge needs its key here (and in the workers)
    except EvalError as err:
        raise SpecError(
            f"mmbench_scoring: this sweep scores MMBench with {scoring!r}: {err}"
        ) from None
    plan.spec = spec.model_copy(update={"mmbench_scoring": scoring})
    return plan


def _drive(
    plan, sweep_dir, ray_address, progress, trial_fn, report, kind, retry_failed=False
) -> SweepSummary:
    import ray

    from harness.retry import prepare_retries
    from harness.trial import run_trial

    plan = _mmbench_scoring(plan, store.read_manifest(sweep_dir))
    started_ray = start_ray(ray_address)  # first: an unreachable cluster fails before any write
    try:
        _write_spec(sweep_dir, plan.spec)
        _prepare_shared_inputs(plan, sweep_dir)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    started = time.time()
    manifest = store.read_manifest(sweep_dir)
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
                ),
            ]
            _tuner(plan, sweep_dir, phase, trial_fn or run_trial, callbacks).fit()
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
            _tuner(plan, sweep_dir, phase, trial_fn or run_trial, callbacks, retry).fit()
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
