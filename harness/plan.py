"""The plan of a sweep: every variant of a valid spec resolved to the MageConfig it implies.

`plan_sweep` resolves a `SweepSpec` against `mage.presets.PRESETS`: the base preset plus
``overrides``, every axis value and every baseline become configs, so a misspelt field or a
bad value fails here, naming the field, before Ray starts. It returns the `SweepPlan`: the
variants (grid points or pre-sampled random points, plus baselines), the seeds, and the swept
fields that become results columns. A variant's id is a hash of its config without seed, name
and folders, so the seeds of one variant share it on any machine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from harness.spec import EXHAUSTIVE, SpecError, SweepSpec
from mage.config import ConfigError, MageConfig, get_dotted, set_dotted


def variant_id(config: MageConfig) -> str:
    """A short hash of a config without its seed, name and folders: seeds of one variant (on
    any machine) share it."""
    skip = ("seed", "name", "data_dir", "assets_dir")
    data = {k: v for k, v in config.to_dict().items() if k not in skip}
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Variant:
    """A config without its seed; ``overrides`` apply on top of base + spec overrides."""

    name: str
    kind: Literal["grid", "sampled", "searched", "baseline"]
    overrides: dict[str, Any]
    config: MageConfig = field(repr=False)

    @property
    def variant_id(self) -> str:
        return variant_id(self.config)

    def trial_id(self, seed: int) -> str:
        return f"{self.variant_id}-s{seed}"


@dataclass
class SweepPlan:
    """What a sweep runs: fixed variants (grid points, random draws, baselines) x seeds; with
    ``search: optuna`` the searched variants appear as Optuna proposes them."""

    spec: SweepSpec
    base: MageConfig
    seeds: list[int]
    bundles: dict[str, dict[str, dict[str, Any]]]  # bundle axis -> label -> overrides
    variants: list[Variant] = field(default_factory=list)
    swept_fields: list[str] = field(default_factory=list)

    @property
    def num_trials(self) -> int:
        searched = self.spec.num_samples if self.spec.search == "optuna" else 0
        return (len(self.variants) + searched) * len(self.seeds)

    def axis_overrides(self, point: dict[str, Any]) -> dict[str, Any]:
        """Overrides for axis values; a bundle value (or its label) sets several fields."""
        out: dict[str, Any] = {}
        for name, value in point.items():
            if name in self.bundles:
                out.update(value if isinstance(value, dict) else self.bundles[name][value])
            else:
                out[name] = value
        return out

    def variant(self, overrides: dict[str, Any], kind: str = "searched", name: str = "") -> Variant:
        name = name or ",".join(f"{k}={v}" for k, v in overrides.items()) or self.spec.base
        return Variant(name, kind, overrides, _build(self.base, overrides, f"variant {name}"))

    def trial_config(self, variant: Variant, seed: int) -> MageConfig:
        return variant.config.model_copy(update={"seed": seed, "name": variant.name})

    def swept_values(self, config: MageConfig) -> dict[str, Any]:
        data = config.to_dict()
        return {path: get_dotted(data, path) for path in self.swept_fields}


def _build(config: MageConfig, overrides: dict[str, Any], where: str) -> MageConfig:
    try:
        return config.with_overrides(overrides)
    except ConfigError as err:
        raise SpecError(f"{where}: {err}") from None


def _field_kind(data: dict[str, Any], dotted: str) -> str | None:
    """'int', 'other' for a config field, None if the path is not one."""
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return "int" if isinstance(node, int) and not isinstance(node, bool) else "other"


def _check_axes(spec: SweepSpec, base: MageConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """Build the config of every axis value (bundles: of every bundle); return the bundles."""
    data, bundles = base.to_dict(), {}
    for name, axis in spec.axes.items():
        where, options = f"axes[{name!r}]", axis.options
        if _field_kind(data, name) is None:
            if not (options and all(isinstance(v, dict) and v for v in options)):
                try:
                    set_dotted(copy.deepcopy(data), name, None)  # raises: names the field
                except ConfigError as err:
                    raise SpecError(f"{where}: {err}") from None
            bundles[name] = {",".join(f"{k}={v}" for k, v in o.items()): o for o in options}
            for value in options:
                _build(base, value, f"{where} value {value}")
            continue
        if axis.kind != "values" and spec.search == "optuna" and options:
            bad = [v for v in options if not isinstance(v, str | int | float | bool | None)]
            if bad:
                raise SpecError(f"{where}: Optuna choices must be scalars, got {bad[0]!r}")
        for value in options or _range_checks(axis, _field_kind(data, name) == "int"):
            value = (
                int(value) if axis.kind == "range" and _field_kind(data, name) == "int" else value
            )
            _build(base, {name: value}, f"{where} value {value!r}")
    return bundles


def _range_checks(axis, integer: bool, most: int = 256) -> list:
    """The values of a range axis checked before any trial: every integer one when there are
    at most ``most`` (a sampled ``ian.stride: 3`` may not divide the patch grid although 1
    and 4 do), else its ends."""
    if integer:
        step = max(1, int(axis.step or 1))
        values = range(int(axis.low), int(axis.high) + 1, step)
        if len(values) <= most:
            return list(values)
    return [axis.low, axis.high]


def _random_points(spec: SweepSpec, base: MageConfig) -> list[dict[str, Any]]:
    """``num_samples`` distinct points drawn with ``search_seed`` (the same plan every run)."""
    rng, data, points = np.random.default_rng(spec.search_seed), base.to_dict(), []
    for _ in range(100 * spec.num_samples):
        point = {}
        for name, a in spec.axes.items():
            if a.options is not None:
                point[name] = a.options[int(rng.integers(len(a.options)))]
                continue
            x = (
                math.exp(rng.uniform(math.log(a.low), math.log(a.high)))
                if a.log
                else rng.uniform(a.low, a.high)
            )
            x = min(a.high, a.low + round((x - a.low) / a.step) * a.step) if a.step else x
            point[name] = int(round(x)) if _field_kind(data, name) == "int" else float(x)
        if point not in points:
            points.append(point)
        if len(points) == spec.num_samples:
            break
    if len(points) < spec.num_samples:  # else the sweep would run fewer variants, silently
        raise SpecError(
            f"num_samples: {spec.num_samples} distinct points asked, but {100 * spec.num_samples} "
            f"draws found only {len(points)} (the axes' values, steps and integer fields hold "
            f"about that many); lower num_samples to {len(points)}, or widen the axes or refine "
            "a step"
        )
    return points


def one_at_a_time_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The centre (every axis at its first value), then each other value of each axis with
    the rest at the centre: the rows of a paper's ablation table."""
    centre = {name: axis.values[0] for name, axis in spec.axes.items()}
    points = [centre]
    for name, axis in spec.axes.items():
        points += [{**centre, name: value} for value in axis.values[1:]]
    return points


def plan_sweep(spec: SweepSpec, presets: dict[str, Any] | None = None) -> SweepPlan:
    """Resolve a spec into variants; every config is built, so bad values fail here."""
    if presets is None:
        from mage.presets import PRESETS as presets
    if spec.base not in presets:
        raise SpecError(f"base: unknown preset {spec.base!r}; known presets: {sorted(presets)}")
    base = presets[spec.base]()
    paths = {k: getattr(spec, k) for k in ("data_dir", "assets_dir") if getattr(spec, k)}
    base = _build(base.model_copy(update=paths), spec.overrides, "overrides")
    plan = SweepPlan(spec, base, spec.seed_list, _check_axes(spec, base))
    points: list[dict[str, Any]] = []
    if spec.search == "grid":  # no axes: the base config itself is the one grid point
        points = [{}]
        for name, axis in spec.axes.items():
            points = [{**p, name: v} for p in points for v in axis.values]
    elif spec.search == "one_at_a_time":
        points = one_at_a_time_points(spec)
    elif spec.search == "random":
        points = _random_points(spec, base)
    kind = "grid" if spec.search in EXHAUSTIVE else "sampled"
    plan.variants = [plan.variant(plan.axis_overrides(p), kind) for p in points]
    for b in spec.baselines:
        overrides = {**b.overrides, **({"blind": True} if b.blind else {})}
        plan.variants.append(plan.variant(overrides, "baseline", b.name))
    kinds: dict[str, str] = {}
    for v in plan.variants:  # trials find their variant by name: two of one name lose one
        if v.name in kinds and v.kind != "baseline":
            raise SpecError(f"two variants are named {v.name!r}: an axis repeats a value")
        if v.name in kinds:
            raise SpecError(
                f"two variants are named {v.name!r} (a {kinds[v.name]} and a {v.kind}); "
                "rename the baseline"
            )
        kinds[v.name] = v.kind
    seen: dict[str, str] = {}
    for v in plan.variants:
        if v.variant_id in seen:
            raise SpecError(
                f"variants {seen[v.variant_id]!r} and {v.name!r} are the same config; drop one"
            )
        seen[v.variant_id] = v.name
    fields = []
    for name in spec.axes:  # a bundle's fields, else the axis itself
        fields += (
            [k for o in plan.bundles[name].values() for k in o] if name in plan.bundles else [name]
        )
    fields += [k for v in plan.variants if v.kind == "baseline" for k in v.overrides]
    plan.swept_fields = list(dict.fromkeys(fields))
    names = [v.name for v in plan.variants]
    if spec.report.baseline is not None and spec.report.baseline not in names:
        raise SpecError(
            f"report.baseline: {spec.report.baseline!r} is not a variant of this sweep; "
            f"choose one of {names}"
        )
    return plan
