"""Sweep specs: what to vary, how to search, how to score; validated before anything starts.

A spec is a YAML file (see ``ablations/``) loaded into `SweepSpec` (pydantic, unknown keys
refused, errors name the field). `harness.plan.plan_sweep` then builds the config of every
variant it implies, before Ray is started or a model is built.

Axes are dotted config paths (``ian.depth``). An axis whose name is not a config path and whose
values are mappings is a *bundle*: each value sets several fields together (e.g. an encoder
with the SEB stride that divides its patch grid). ``values`` is a grid; ``choices`` or
``{low, high, log, step}`` are sampled by ``search: optuna`` (TPE) or ``search: random``.
``search: one_at_a_time`` reads ``values`` as a paper's ablation table does: the first value
of every axis is the centre, and each other value is tried with every other axis at its
centre (1 + the other values' count variants, not their product).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mage.config import ConfigError, describe_error

EXHAUSTIVE = ("grid", "one_at_a_time")  # designs that run every variant they list
MAX_SEEDS = 10_000  # seeds per variant a spec may ask for as a number


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
    assets: Literal["test", "demo", "demo-4layer", "demo-lookup", "demo-plain"] | None = Field(
        None,
        description="asset recipe (mage.world.asset_recipes.ASSET_CONFIGS); default: the world's size",
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

    @model_validator(mode="after")
    def _known_metric(self) -> ObjectiveSpec:
        """A misspelt metric would fail every trial after it trained: refuse it here."""
        known = objective_metrics()[self.benchmark]
        if self.metric not in known:
            raise ValueError(
                f"metric {self.metric!r} is not a {self.benchmark} metric; known: {list(known)}"
            )
        # a headline is stored for the whole benchmark only, a per-category metric never is
        whole = self.metric in objective_headlines() or self.benchmark == "train"
        if whole and self.category != "all":
            raise ValueError(
                f"category {self.category!r}: {self.benchmark} {self.metric} is a score of the "
                "whole benchmark (category 'all'); for one category use a per-category metric "
                f"({', '.join(m for m in known if m not in objective_headlines())})"
            )
        if self.benchmark != "tools" and not whole and self.category == "all":
            raise ValueError(
                f"{self.benchmark} {self.metric} is stored per category: give `category` (for "
                f"example count), or use a whole-benchmark metric "
                f"({', '.join(m for m in known if m in objective_headlines())})"
            )
        return self


def objective_headlines() -> tuple[str, ...]:
    """The metrics stored for a whole benchmark only (category ``all``)."""
    from harness.eval_tables import MMBENCH_HEADLINE, MME_HEADLINES, SEED_HEADLINES

    return (*MME_HEADLINES, MMBENCH_HEADLINE, *SEED_HEADLINES)


def objective_metrics() -> dict[str, tuple[str, ...]]:
    """The metrics each benchmark's rows of the results table hold (category ``all`` for the
    headlines, per category for the others)."""
    from harness.eval_tables import MMBENCH_HEADLINE, MME_HEADLINES, SEED_HEADLINES
    from mage.tools.metrics import METRICS as TOOL_METRICS

    losses = ("loss", "ce_loss", "mse_loss")
    return {
        "mme": (*MME_HEADLINES, "acc", "acc_plus", "score"),
        "mmbench": (MMBENCH_HEADLINE, "acc", "l2_acc"),
        "seedbench": (*SEED_HEADLINES, "acc"),
        "tools": TOOL_METRICS,
        "train": tuple(f"{s}/{m}_final" for s in ("stage1", "stage2") for m in losses),
    }


class EarlyStoppingSpec(_Strict):
    """ASHA on a training metric of one stage, as trials report it while they train.

    The default, stage 2's cross-entropy, compares variants on the same footing whatever
    their MSE weight (the MSE term would rank high-lambda variants low for that term alone).
    ``grace_period`` and ``max_t`` count that stage's optimizer steps; a trial that reaches
    ``max_t`` is scored, not stopped."""

    metric: Literal[
        "stage2/ce_loss", "stage2/loss", "stage1/ce_loss", "stage1/loss", "stage1/mse_loss"
    ] = "stage2/ce_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: that stage's steps")


class ResourcesSpec(_Strict):
    """What one trial runs on.

    ``{cpu, gpu}``: one worker, the trial's own process (a laptop, the CPU smoke sweep).
    ``{workers: N, gpus_per_worker, cpus_per_worker}``: every stage (and the evaluation) runs
    on a Ray Train worker group of N processes (FSDP2 across them; nccl on GPUs, gloo on
    CPUs), while the trial itself, the driver, holds ``driver_cpus`` and no GPU. Unless
    ``max_concurrent_trials`` says otherwise, as many trials run at once as the cluster's GPUs
    (CPUs, without GPUs) have room for worker groups."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    workers: int | None = Field(None, ge=1, description="Ray Train workers per stage")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    driver_cpus: float = Field(1.0, gt=0, description="CPUs the trial's driver process holds")
    gpu_memory_gb: float = Field(
        80.0,
        gt=0,
        description="memory of one GPU: a trial whose stages are estimated not to fit "
        "(mage.train.memory) is refused before Ray starts",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ResourcesSpec:
        defaults = {"cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "driver_cpus": 1.0}
        # gpu_memory_gb applies to both kinds
        group = sorted(k for k, v in defaults.items() if getattr(self, k) != v)
        if self.workers is None and group:
            raise ValueError(f"{group} need `workers: N` (a worker group per stage)")
        if self.workers is not None and (self.cpu, self.gpu) != (1.0, 0.0):
            raise ValueError(
                "give `cpu`/`gpu` (one in-process worker) or `workers` with `cpus_per_worker`/"
                "`gpus_per_worker` (a worker group), not both"
            )
        return self

    @property
    def in_process(self) -> bool:
        return self.workers is None

    def trial_resources(self) -> dict[str, float]:
        """What the Tune trial itself reserves (a driver holds no GPU: the workers do)."""
        if self.in_process:
            return {"cpu": self.cpu, "gpu": self.gpu}
        return {"cpu": self.driver_cpus, "gpu": 0.0}

    @property
    def gpus_per_trial_worker(self) -> tuple[int, float]:
        """(workers a stage is sharded over, GPUs each holds)."""
        return (1, self.gpu) if self.in_process else (self.workers, self.gpus_per_worker)

    def group_size(self) -> dict[str, float]:
        """CPUs and GPUs one trial occupies at once."""
        if self.in_process:
            return {"CPU": self.cpu, "GPU": self.gpu}
        n = self.workers
        return {"CPU": self.driver_cpus + n * self.cpus_per_worker, "GPU": n * self.gpus_per_worker}


class BaselineSpec(_Strict):
    """A fixed extra variant, e.g. LLaVA's projector or a blind control (image tokens zeroed).

    ``role``: ``baseline`` (a published alternative the main variants are compared with) or
    ``control`` (known to be worse for a known reason: blind, a positive control); reports mark
    both and never call one the best variant. Default: control when blind, else baseline."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    overrides: dict[str, Any] = Field(default_factory=dict)
    blind: bool = False
    role: Literal["baseline", "control"] | None = None


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
    search: Literal["grid", "one_at_a_time", "optuna", "random"] = "grid"
    search_seed: int = Field(0, ge=0)
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
    retry_failed: bool = Field(
        False,
        description="after each session's trials, run the failed ones once more from their "
        "stage caches and checkpoints (as `resume --retry-failed` does)",
    )
    baselines: list[BaselineSpec] = Field(default_factory=list)
    tasks: list[Literal["mme", "mmbench", "seedbench", "tools"]] = Field(
        default_factory=lambda: ["mme", "mmbench", "seedbench"], min_length=1
    )
    eval_batch_size: int = Field(8, ge=1)
    eval_limit: int | None = Field(None, ge=1, description="items per benchmark (quick runs)")
    eval_max_new_tokens: int | None = Field(
        None, ge=1, description="cap on generated tokens per answer (MMBench asks for 1024)"
    )
    mmbench_scoring: Literal["gpt", "static"] | None = Field(
        None,
        description="MMBench answer matching: gpt (mmbench_en_dev, a GPT judge; needs "
        "OPENAI_API_KEY) or static (mmbench_en_dev_static); default: gpt if the driver has a "
        "key when the sweep starts, else static. Decided once, kept by every resume",
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
        if isinstance(value, int) and value > MAX_SEEDS:  # a typo, not a plan: never listed
            raise ValueError(f"a number of seeds must be <= {MAX_SEEDS:,}, got {value:,}")
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("an explicit seed list must be non-empty without repeats")
        if isinstance(value, list) and any(seed < 0 for seed in value):
            raise ValueError(f"seeds must be >= 0, got {[s for s in value if s < 0]}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        self._absolute_paths()
        if self.world is not None and self.data_dir is not None:
            raise ValueError("give `world:` (synthetic data) or `data_dir:` (real data), not both")
        if self.search in EXHAUSTIVE:
            if self.num_samples is not None:
                raise ValueError(
                    f"num_samples is for search: optuna or random; search: {self.search} "
                    "runs every variant it implies"
                )
            for name, axis in self.axes.items():
                if axis.kind != "values":
                    raise ValueError(
                        f"axes[{name!r}]: search: {self.search} needs `values: [...]`; ranges "
                        "and `choices` are sampled by search: optuna or random"
                    )
        elif self.num_samples is None:
            raise ValueError(f"search: {self.search} needs num_samples (variants to sample)")
        elif not self.axes:
            raise ValueError(f"search: {self.search} needs at least one axis")
        if self.search not in EXHAUSTIVE and self.early_stopping and len(self.seed_list) > 1:
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

    def _absolute_paths(self) -> None:
        """Folders as absolute paths, read against the folder the sweep is started from: Ray
        Tune runs each trial in its own trial folder, where a relative path means nothing."""
        owners = [(self, name) for name in ("data_dir", "eval_data_dir", "assets_dir")]
        owners += [(self.world, "dir")] if self.world is not None else []
        owners += [(self, "storage_path")]  # a local folder; a URI (s3://, gs://) as is
        for owner, name in owners:
            value = getattr(owner, name)
            if value and "://" not in value and not Path(value).expanduser().is_absolute():
                object.__setattr__(owner, name, str(Path(value).expanduser().resolve()))

    @property
    def trial_count(self) -> int:
        """Trials this spec implies (variants x seeds), counted without building a config."""
        variants = self.num_samples or 0
        if self.search == "grid":
            variants = math.prod(len(axis.values) for axis in self.axes.values())
        elif self.search == "one_at_a_time":
            variants = 1 + sum(len(axis.values) - 1 for axis in self.axes.values())
        return (variants + len(self.baselines)) * len(self.seed_list)

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
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse_spec(data, str(path))
