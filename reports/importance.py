"""Which knob mattered: Optuna's hyperparameter importance over the sweep's completed trials.

A fresh in-memory Optuna study is filled with one FrozenTrial per completed (trial, seed):
params = the trial's axis values, distributions inferred from the spec's axes
({values}/{choices} -> categorical, {low, high[, log, step]} -> int/float range), value = the
spec's objective. ``optuna.importance.get_param_importances`` then runs fANOVA with a fixed
seed. Named baselines (LLaVA projector, blind control) are left out: they change fields that
are not axes. Below MIN_TRIALS completed trials, or with fewer than two axes that vary, the
result is a plain sentence saying so instead of numbers that would be noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from reports.summary import Summary, objective_values
from reports.variants import field_label, native, same_value

MIN_TRIALS = 8  # fANOVA fits a random forest; fewer completed trials give noise


@dataclass(frozen=True)
class Importance:
    importances: dict[str, float] = field(default_factory=dict)  # axis -> share (sums to 1)
    n_trials: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.importances)


def distribution_for(axis: str, spec: dict[str, Any], observed: list[Any]) -> BaseDistribution:
    """The Optuna distribution an axis spec implies (observed values when the spec has none).

    {values}/{choices} -> categorical; {low, high[, log, step]} -> an int range when the bounds
    and every observed value are whole numbers (e.g. ian.depth), else a float range."""
    values = spec.get("values") if spec.get("values") is not None else spec.get("choices")
    low, high = spec.get("low"), spec.get("high")
    if values is None and low is not None and high is not None:
        log, step = bool(spec.get("log", False)), spec.get("step")
        seen = [native(v) for v in observed]
        whole = all(float(x).is_integer() for x in (low, high, *([step] if step else [])))
        if whole and seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
            return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        return FloatDistribution(float(low), float(high), log=log, step=step)
    choices = values if values is not None else sorted(set(map(native, observed)), key=str)
    if not choices:
        raise ValueError(f"axes[{axis!r}]: no values to build a distribution from")
    return CategoricalDistribution(tuple(native(c) for c in choices))


def _param_value(dist: BaseDistribution, value: Any) -> Any | None:
    value = native(value)
    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices if same_value(c, value)), None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(dist, IntDistribution):
        value = int(value)
    return value if dist.low <= value <= dist.high else None


def param_importances(summary: Summary, seed: int = 0) -> Importance:
    """fANOVA importances of the axes for the spec's objective, or a sentence why not."""
    data = summary.data
    objective = summary.objective
    grid = summary.variants.grid()
    obj = objective_values(data, objective)
    obj = obj[obj["variant_id"].isin(set(grid["variant_id"]))]
    if obj.empty:
        return Importance(message=f"No completed grid trial has the objective ({objective.label}).")
    fields = grid.set_index("variant_id")
    axes = [a for a in summary.variants.axes if a in fields.columns]
    varying = [a for a in axes if fields[a].map(str).nunique() > 1]
    n = len(obj)
    if n < MIN_TRIALS or len(varying) < 2:
        why = (
            f"only {n} completed trial(s) carry the objective (at least {MIN_TRIALS} are needed)"
            if n < MIN_TRIALS
            else f"only {len(varying)} axis varies (importance compares at least 2)"
        )
        return Importance(n_trials=n, message=f"Too few to rank knobs: {why}.")
    dists = {a: distribution_for(a, data.axes.get(a, {}), fields[a].tolist()) for a in varying}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "minimize" if objective.mode == "min" else "maximize"
    study = optuna.create_study(direction=direction)
    skipped = 0
    for _, row in obj.sort_values(["variant_id", "seed", "trial_id"]).iterrows():
        params = {a: _param_value(d, fields.at[row["variant_id"], a]) for a, d in dists.items()}
        if any(p is None for p in params.values()) or math.isnan(row["value"]):
            skipped += 1
            continue
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(row["value"]))
        )
    used = n - skipped
    if used < MIN_TRIALS:
        return Importance(
            n_trials=used,
            message=f"Too few to rank knobs: {used} trial(s) fit the axes (at least {MIN_TRIALS}).",
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    raw = optuna.importance.get_param_importances(study, evaluator=evaluator)
    ordered = {k: float(v) for k, v in sorted(raw.items(), key=lambda kv: (-kv[1], kv[0]))}
    text = ", ".join(f"{field_label(k)} {v:.2f}" for k, v in ordered.items())
    message = (
        f"fANOVA importance of each axis for {objective.label} over {used} completed trials "
        f"(Optuna, seed {seed}): {text}."
    )
    return Importance(ordered, used, message)
