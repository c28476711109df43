"""Sweep specs: what to vary, how to search, how to score; validated before anything starts.

A spec is a YAML file (see ``ablations/``) loaded into `SweepSpec` (pydantic, unknown keys
refused). `plan_sweep` then resolves it against `mage.presets.PRESETS`: the base preset plus
``overrides``, every axis value and every baseline is turned into the `MageConfig` it implies,
so a misspelt field or a bad value fails here, naming the field (``axes['ian.depht']: unknown
config field ...``), before Ray is started or a model is built.

Axes are dotted config paths (``ian.depth``). An axis whose name is not a config path and whose
values are mappings is a *bundle*: each value sets several fields together (e.g. an encoder
with the SEB stride that divides its patch grid). ``values`` is a grid; ``choices`` or
``{low, high, log, step}`` are sampled by ``search: optuna`` (TPE) or ``search: random``.
`plan_sweep` returns the `SweepPlan`: the variants (grid points or pre-sampled random points,
plus baselines), the seeds, and the swept fields that become results columns.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mage.config import ConfigError, MageConfig, describe_error, get_dotted, set_dotted


class SpecError(ConfigError):
    """A sweep spec is invalid; the message names the field and says what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AxisSpec(_Strict):
    """One swept field: ``values`` (grid), ``choices`` or a ``low``..``high`` range (sampled)."""

    values: list[Any] | None = None
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> AxisSpec:
        kinds = [self.values is not None, self.choices is not None, self.low is not None]
        if sum(kinds) != 1 or (self.low is None) != (self.high is None):
            raise ValueError(
                "give exactly one of `values: [...]`, `choices: [...]` or `low`+`high`"
            )
        for name in ("values", "choices"):
            if getattr(self, name) is not None and not getattr(self, name):
                raise ValueError(f"`{name}` is empty")
        if self.low is not None:
            if self.high < self.low:
                raise ValueError(f"high ({self.high}) is below low ({self.low})")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0 (got {self.low})")
            if self.log and self.step:
                raise ValueError("`log` and `step` cannot be combined")
        return self

    @property
    def kind(self) -> Literal["values", "choices", "range"]:
        if self.values is not None:
            return "values"
        return "choices" if self.choices is not None else "range"

    @property
    def options(self) -> list[Any] | None:
        """The finite list of values (grid values or choices); None for a range."""
        return self.values if self.values is not None else self.choices


class WorldSpec(_Strict):
    """The synthetic shapes world the trials train and score on (generated once, cached)."""

    size: Literal["test", "demo"] = "demo"
    seed: int = Field(0, ge=0)
    dir: str | None = Field(None, description="default: $MAGE_WORLD_DIR or the user cache")
    assets: Literal["test", "demo", "demo-nolookup"] | None = Field(
        None,
        description="asset recipe (mage.world.assets.ASSET_CONFIGS); default: the world's size",
    )

    @property
    def asset_recipe(self) -> str:
        return self.assets or self.size


class ObjectiveSpec(_Strict):
    """One score: a row of the results table. The first objective is what Tune optimises."""

    benchmark: Literal["mme", "mmbench", "seedbench", "tools", "train"]
    metric: str
    category: str = "all"
    mode: Literal["max", "min"] = "max"

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.metric}/{self.category}"


class EarlyStoppingSpec(_Strict):
    """ASHA on the training loss the trial reports as it trains (``train_loss``).

    ``grace_period`` and ``max_t`` count optimiser steps over both stages together."""

    metric: Literal["train_loss"] = "train_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: stage1.steps + stage2.steps")


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class BaselineSpec(_Strict):
    """A fixed extra variant, e.g. LLaVA's projector or a blind control (image tokens zeroed)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    overrides: dict[str, Any] = Field(default_factory=dict)
    blind: bool = False


class ReportSpec(_Strict):
    baseline: str | None = Field(None, description="variant name the ablation tables compare to")


class EstimateSpec(_Strict):
    """The per-trial cost the dry run multiplies out, and where that figure comes from."""

    trial_s: float = Field(gt=0, description="wall seconds per trial on the stated resources")
    basis: str = Field(min_length=1, description="where the figure comes from")


class SweepSpec(_Strict):
    """A whole sweep: base config, axes, search, seeds, objective, resources, baselines."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: str = Field(description="a preset id in mage.presets.PRESETS")
    overrides: dict[str, Any] = Field(default_factory=dict)
    world: WorldSpec | None = None
    data_dir: str | None = Field(
        None, description="real data: fills {data}; default $MAGE_DATA_DIR"
    )
    eval_data_dir: str | None = Field(None, description="benchmark data for evaluate()")
    assets_dir: str | None = Field(None, description="prepared assets; default $MAGE_ASSETS_DIR")
    axes: dict[str, AxisSpec] = Field(default_factory=dict)
    search: Literal["grid", "optuna", "random"] = "grid"
    search_seed: int = 0
    optuna_storage: str | None = Field(
        None, description="SQLAlchemy URL of the Optuna study; default sqlite in the sweep folder"
    )
    num_samples: int | None = Field(None, ge=1, description="variants to sample (optuna/random)")
    seeds: int | list[int] = 1
    objective: list[ObjectiveSpec] = Field(min_length=1)
    early_stopping: EarlyStoppingSpec | None = None
    resources: ResourcesSpec | Literal["whole_node"] = Field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0, description="Tune retries of a crashed trial process")
    baselines: list[BaselineSpec] = Field(default_factory=list)
    tasks: list[Literal["mme", "mmbench", "seedbench", "tools"]] = Field(
        default_factory=lambda: ["mme", "mmbench", "seedbench"], min_length=1
    )
    eval_batch_size: int = Field(8, ge=1)
    eval_limit: int | None = Field(None, ge=1, description="items per benchmark (quick runs)")
    eval_max_new_tokens: int | None = Field(
        None, ge=1, description="cap on generated tokens per answer (MMBench asks for 1024)"
    )
    storage_path: str | None = Field(
        None, description="Tune's storage (local folder or cloud URI); default SWEEP_DIR/tune"
    )
    report: ReportSpec = Field(default_factory=ReportSpec)
    estimate: EstimateSpec | None = None

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int) and value < 1:
            raise ValueError("a number of seeds must be >= 1")
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("an explicit seed list must be non-empty without repeats")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.world is not None and self.data_dir is not None:
            raise ValueError("give `world:` (synthetic data) or `data_dir:` (real data), not both")
        if self.search == "grid":
            if self.num_samples is not None:
                raise ValueError(
                    "num_samples is for search: optuna or random; a grid is exhaustive"
                )
            for name, axis in self.axes.items():
                if axis.kind != "values":
                    raise ValueError(
                        f"axes[{name!r}]: a grid needs `values: [...]`; ranges and `choices` "
                        "are sampled by search: optuna or random"
                    )
        elif self.num_samples is None:
            raise ValueError(f"search: {self.search} needs num_samples (variants to sample)")
        elif not self.axes:
            raise ValueError(f"search: {self.search} needs at least one axis")
        if self.search != "grid" and self.early_stopping and len(self.seed_list) > 1:
            raise ValueError(
                "early_stopping with search: optuna/random and several seeds is refused: seeds "
                "are repeats of one sampled variant (Tune's Repeater), which early stopping "
                "would cut unevenly; use one seed, or search: grid"
            )
        for i, objective in enumerate(self.objective):
            if objective.benchmark not in (*self.tasks, "train"):
                raise ValueError(
                    f"objective[{i}].benchmark {objective.benchmark!r} is not among tasks "
                    f"{self.tasks} (or 'train')"
                )
        names = [b.name for b in self.baselines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"baselines: duplicate name(s) {dupes}")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def primary(self) -> ObjectiveSpec:
        return self.objective[0]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def format_spec_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif "." in str(part) or loc in ("axes", "overrides") or loc.endswith("overrides"):
                loc += f"[{str(part)!r}]"
            else:
                loc += f".{part}" if loc else str(part)
        lines.append(f"{loc or '<spec>'}: {describe_error(e, 'harness/spec.py')}")
    return f"invalid sweep spec {source}:\n  " + "\n  ".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a spec mapping (schema only; `plan_sweep` checks the configs it implies)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_spec_error(err, source)) from None


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A spec path, or a shipped spec's name (``smoke`` -> ``ablations/smoke.yaml``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if re.fullmatch(r"[A-Za-z0-9_.-]+", str(name_or_path)):
        stem = str(name_or_path).removesuffix(".yaml")
        for folder in (Path("ablations"), Path(__file__).resolve().parent.parent / "ablations"):
            if (folder / f"{stem}.yaml").exists():
                return folder / f"{stem}.yaml"
    raise SpecError(
        f"sweep spec not found: {name_or_path} (give a YAML path, or the name of a spec in "
        "ablations/, e.g. `smoke`)"
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read and schema-validate a spec file; errors name the file and the field."""
    path = resolve_spec_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({err})") from None
    return parse_spec(data, str(path))


# --------------------------------------------------------------------------------------
# The plan: every variant resolved to the MageConfig it implies
# --------------------------------------------------------------------------------------


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
        name = name or ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
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
        for value in options or [axis.low, axis.high]:
            value = (
                int(value) if axis.kind == "range" and _field_kind(data, name) == "int" else value
            )
            _build(base, {name: value}, f"{where} value {value!r}")
    return bundles


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
    if spec.search == "grid" and spec.axes:
        points = [{}]
        for name, axis in spec.axes.items():
            points = [{**p, name: v} for p in points for v in axis.values]
    elif spec.search == "random":
        points = _random_points(spec, base)
    kind = "grid" if spec.search == "grid" else "sampled"
    plan.variants = [plan.variant(plan.axis_overrides(p), kind) for p in points]
    for b in spec.baselines:
        overrides = {**b.overrides, **({"blind": True} if b.blind else {})}
        plan.variants.append(plan.variant(overrides, "baseline", b.name))
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
