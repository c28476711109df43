"""How a sweep's phases become Ray Tune experiments.

`build_tuner` makes (or restores) the `tune.Tuner` of one phase: the trainable
(`harness.tune_trial.tune_trainable`) with the trial's resources (in-process trials hold their
CPUs/GPUs; a worker-group trial's driver holds `driver_cpus` and no GPU), the concurrency
(`max_concurrent_trials`: as many worker groups as the cluster holds), the search (a grid, or
Optuna TPE through `MageOptunaSearch`, wrapped in Tune's ``Repeater`` when there are several
seeds) and early stopping (ASHA on one stage's training metric, `early_stopping_scheduler`).
`check_memory` refuses, before Ray starts, a GPU spec whose stages do not fit its GPUs.

What Optuna is told (`MageOptunaSearch`): a scored trial's objective; a trial ASHA stopped is
*pruned*, with its last training metric as its intermediate value; a failed one (or a variant
whose every seed failed) *failed*. So the study holds a finite value for every completed
trial, and TPE learns nothing from made-up numbers. A searched variant that failed and was
then run again (`harness.retry`, outside the search) is added to the study as a completed
trial once every seed of it has a score (`tell_study_retried`), so a later search knows it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.plan import SweepPlan
from harness.spec import SpecError, SweepSpec
from harness.trial import TrialFn
from harness.tune_trial import tune_trainable
from mage.config import get_dotted


def _trial_dirname(trial) -> str:
    return trial.trial_id


def experiment_path(plan: SweepPlan, sweep_dir: Path, phase: str) -> str:
    base = plan.spec.storage_path or str(sweep_dir / "tune")
    return f"{base.rstrip('/')}/{shared_name(plan.spec, sweep_dir)}-{phase}"


def _resources(spec: SweepSpec):
    import ray
    from ray import tune

    if spec.resources != "whole_node":
        return spec.resources.trial_resources()
    return tune.PlacementGroupFactory([whole_node(ray.nodes())], strategy="STRICT_PACK")


def whole_node(nodes: list[dict]) -> dict[str, float]:
    """The resources of the smallest live node that has GPUs (of the smallest node when none
    has): a head node without GPUs must not make every trial a CPU trial."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    pool = [r for r in alive if r.get("GPU", 0) > 0] or alive
    return {"CPU": min(r.get("CPU", 0) for r in pool), "GPU": min(r.get("GPU", 0) for r in pool)}


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


def check_search(plan: SweepPlan) -> None:
    """Refuse, before any trial, an early stopping rule or an Optuna search whose space or
    storage cannot be built (they are built when a phase starts, after Ray started and the
    sweep folder was written; Optuna's after the baselines have trained)."""
    if plan.spec.early_stopping:
        early_stopping_scheduler(plan)
    if plan.spec.search != "optuna":
        return
    try:
        optuna_space(plan)
    except ValueError as err:
        raise SpecError(f"axes: Optuna cannot search them: {err}") from None
    if plan.spec.optuna_storage:
        import optuna

        try:
            optuna.storages.RDBStorage(plan.spec.optuna_storage)
        except Exception as err:  # SQLAlchemy and driver errors have no common base
            raise SpecError(
                f"optuna_storage {plan.spec.optuna_storage!r} cannot be opened: "
                f"{str(err).splitlines()[0]}"
            ) from None


def _optuna_search_class():
    from ray.tune.search.optuna import OptunaSearch

    class MageOptunaSearch(OptunaSearch):
        """Ray's OptunaSearch, telling Optuna what each trial is (see the module docstring)."""

        def __init__(self, *args, early_stopping_metric: str | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._es_metric = early_stopping_metric

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            """Optuna's intermediate values: the early-stopping metric at its stage's step
            (Ray's OptunaSearch would record the objective, NaN until the trial is scored)."""
            metric, stage = self._es_metric, (self._es_metric or "").split("/")[0]
            value = result.get(metric) if metric else None
            if value is None or not math.isfinite(value) or f"{stage}/step" not in result:
                return
            # OptunaSearch keeps its Optuna trials in private fields and has no public hook
            # for intermediate values; a Ray upgrade that renames them shows up in the tests
            if trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._ot_trials[trial_id].report(float(value), int(result[f"{stage}/step"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error=False):
            result = result or {}
            if result.get("trial_final") == 0:  # stopped mid-run by ASHA: pruned, its last
                return super().on_trial_complete(trial_id, None, error=False)  # value reported
            value = result.get(self.metric)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                return super().on_trial_complete(trial_id, None, error=True)  # failed
            return super().on_trial_complete(trial_id, result, error=error)

    return MageOptunaSearch


def _search_alg(plan: SweepPlan, sweep_dir: Path):
    import optuna
    from ray.tune.search import Repeater

    spec = plan.spec
    url = _study_url(spec, sweep_dir)
    searcher = _optuna_search_class()(
        space=optuna_space(plan),
        metric="objective",
        mode=spec.primary.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.search_seed),
        study_name=shared_name(spec, sweep_dir),
        storage=optuna.storages.RDBStorage(url),
        early_stopping_metric=spec.early_stopping.metric if spec.early_stopping else None,
    )
    if len(plan.seeds) == 1:  # no repeats to average: the trial's own result reaches Optuna
        return searcher
    return Repeater(searcher, repeat=len(plan.seeds), set_index=True)


def _study_url(spec: SweepSpec, sweep_dir: Path) -> str:
    return spec.optuna_storage or f"sqlite:///{sweep_dir / 'optuna.db'}"


def shared_name(spec: SweepSpec, sweep_dir: Path, manifest: dict | None = None) -> str:
    """The sweep's name where other sweeps may be: Tune's experiments under a user's
    ``storage_path`` and the Optuna study in a user's ``optuna_storage``. In the sweep's own
    folder (the defaults) it is the spec's name; in a shared place, the name the manifest
    recorded when the sweep first started (the spec's name and a random suffix), so that two
    sweeps of one spec, say a re-run into a new folder, never restore or add to each other's
    experiments and study. A sweep started before names were recorded keeps the spec's name."""
    if not (spec.storage_path or spec.optuna_storage):
        return spec.name
    if manifest is None:
        from harness import store

        manifest = store.read_manifest(sweep_dir)
    if manifest.get("shared_name"):
        return manifest["shared_name"]
    if manifest.get("sessions"):
        return spec.name
    import uuid

    return f"{spec.name}-{uuid.uuid4().hex[:8]}"


def _study_params(plan: SweepPlan, config: dict[str, Any]) -> dict[str, Any] | None:
    """A stored config as the study's parameters (a bundle axis as its label)."""
    params: dict[str, Any] = {}
    for name in plan.spec.axes:
        if name in plan.bundles:
            labels = [
                label
                for label, fields in plan.bundles[name].items()
                if all(get_dotted(config, k) == v for k, v in fields.items())
            ]
            if not labels:
                return None
            params[name] = labels[0]
        else:
            params[name] = get_dotted(config, name)
    return params


def tell_study_retried(plan: SweepPlan, sweep_dir: Path, trial_ids: list[str]) -> int:
    """Add to the Optuna study each searched variant among ``trial_ids`` whose every seed is
    now scored and which the study holds no completed trial for (with one seed, or when all
    seeds had failed, Optuna saw it fail); its value is the mean over seeds, as the search's
    own ``Repeater`` reports. Returns how many were added."""
    import optuna

    from harness import store

    spec, fixed = plan.spec, {v.variant_id for v in plan.variants}
    records = [r for r in store.load_records(sweep_dir) if r.variant_id not in fixed]
    ids = set(trial_ids)
    retried = {r.variant_id for r in records if r.trial_id in ids}
    if not retried:
        return 0
    study = optuna.load_study(
        study_name=shared_name(spec, sweep_dir),
        storage=optuna.storages.RDBStorage(_study_url(spec, sweep_dir)),
    )
    complete = optuna.trial.TrialState.COMPLETE
    known = [t.params for t in study.get_trials(deepcopy=False, states=(complete,))]
    space, added = optuna_space(plan), 0
    for variant_id in sorted(retried):
        seeds = [r for r in records if r.variant_id == variant_id]
        values = [r.objectives.get(spec.primary.key) for r in seeds]
        ok = all(r.status == "ok" for r in seeds) and len(seeds) == len(plan.seeds)
        if not ok or any(v is None or not math.isfinite(v) for v in values):
            continue
        params = _study_params(plan, seeds[0].config)
        if params is None or params in known:
            continue
        trial = optuna.trial.create_trial(
            params=params,
            distributions={k: space[k] for k in params},
            value=sum(values) / len(values),
            user_attrs={"variant_id": variant_id, "retried": True},
        )
        study.add_trial(trial)
        known.append(params)
        added += 1
    return added


def early_stopping_scheduler(plan: SweepPlan):
    """ASHA on one stage's training metric, at that stage's steps (so trials are compared on
    the same stage, whatever their MSE weight). A trial that reaches ``max_t`` is not stopped:
    it goes on to be scored."""
    from ray.tune.schedulers import ASHAScheduler

    es = plan.spec.early_stopping
    stage = es.metric.split("/")[0]
    max_t = es.max_t or getattr(plan.base, stage).steps
    if getattr(plan.base, stage).epochs is not None and es.max_t is None:
        raise SpecError(
            f"early_stopping.max_t: {stage} runs by epochs, so its steps are only known from the "
            "data; give early_stopping.max_t (steps of that stage)"
        )
    if not max_t:
        raise SpecError(
            f"early_stopping.metric {es.metric!r}: {stage} has no steps here ({stage}.steps: "
            f"{getattr(plan.base, stage).steps}); watch the other stage, or drop early_stopping"
        )
    if es.grace_period > max_t:
        raise SpecError(
            f"early_stopping.grace_period ({es.grace_period}) is above max_t ({max_t}, the "
            f"{stage} steps a trial runs): no trial could be stopped; lower grace_period"
        )
    return ASHAScheduler(
        time_attr=f"{stage}/step",
        metric=es.metric,
        mode=es.mode,
        max_t=max_t,
        grace_period=es.grace_period,
        reduction_factor=es.reduction_factor,
        stop_last_trials=False,
    )


def build_tuner(
    plan: SweepPlan,
    sweep_dir: Path,
    phase: str,
    trial_fn: TrialFn,
    callbacks: list,
    retry: list[dict] | None = None,
):
    from ray import tune

    spec = plan.spec
    trainable = tune.with_parameters(
        tune_trainable, sweep_dir=str(sweep_dir), plan=plan, trial_fn=trial_fn
    )
    trainable = tune.with_resources(trainable, _resources(spec))
    path = experiment_path(plan, sweep_dir, phase)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        # Tune restores the RunConfig it pickled; give it this session's callbacks. Private:
        # Tuner.restore takes no run_config, and no public API replaces its callbacks (a
        # Ray Client driver, `ray://`, has no _local_tuner: refused below).
        local = getattr(tuner, "_local_tuner", None)
        if local is None:
            raise SpecError(
                "resuming a sweep through Ray Client (ray://) is not supported: run the "
                "driver on the cluster (ray job submit, or ssh to the head) and resume there"
            )
        local.get_run_config().callbacks = callbacks
        return tuner
    scheduler = early_stopping_scheduler(plan) if spec.early_stopping else None
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
