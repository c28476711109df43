"""Typed configuration for a MAGE model and its two training stages.

A `MageConfig` reads like a row of the paper's ablation table: which vision encoder, which
connector (IAN or a baseline) at which depth, which LLM, which MSE weight, how each stage
trains. Every section is a pydantic model with ``extra="forbid"``, so a misspelt or invalid
field fails at load time with its dotted path (``ian.stride``) and the allowed values.

Registry-backed fields (``vision.encoder``, ``llm.name``) are checked against the
registries in `mage.registry`; free-form Hugging Face ids and local paths are accepted
where the registry says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mage import registry
from mage.io import atomic_write_text

PROJECTORS = ("ian", "vab", "linear", "mlp2x_gelu")


class ConfigError(ValueError):
    """A config or spec value is invalid; the message names the field and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VisionConfig(_Section):
    """The vision tower: a registry id plus optional overrides of the registry's defaults."""

    encoder: str = Field("world-resnet", description="id in mage.registry.ENCODERS")
    pretrained: str | None = Field(
        None,
        description="override the registry's weights: open_clip tag, HF id or local path; "
        "'none' = random init even where the registry has weights",
    )
    feature_layer: int | None = Field(
        None, description="hidden layer whose patch tokens are used (-2 = penultimate)"
    )
    drop_cls: bool | None = None
    image_size: int | None = Field(None, gt=0)
    frozen: bool = True
    feature_cache: str | None = Field(
        None,
        description="folder of precomputed tower outputs of the training images ({assets}, "
        "{data} filled in): training reads them instead of decoding images and running the "
        "tower; needs a frozen tower (mage.feature_cache). A sweep's evaluations keep the "
        "tower's outputs on the benchmark images under <folder>/eval (harness.eval_memo)",
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        registry.check_encoder_id(value)
        return value


class IANConfig(_Section):
    """The connector. ``projector='ian'`` is MAGE's Intelligent Alignment Network."""

    projector: Literal["ian", "vab", "linear", "mlp2x_gelu"] = "ian"
    depth: int = Field(1, ge=0, le=32, description="IAN depth: number of SEB blocks")
    vab_depth: int = Field(2, ge=1, le=8, description="layers of the VAB MLP")
    norm: Literal["layernorm", "rmsnorm", "none"] = "layernorm"
    stride: int = Field(2, ge=1, description="SEB conv stride; tokens = (grid/stride)^2")
    num_heads: int = Field(4, ge=1)
    ffn_mult: float = Field(4.0, gt=0)
    gate: Literal["tanh", "zero_init"] = "tanh"
    dropout: float = Field(0.0, ge=0, lt=1)
    position_embedding: bool = Field(
        False,
        description="add a learned embedding per output token (its place in the image grid); "
        "for encoders whose features carry no position",
    )


class LoraConfig(_Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class LLMConfig(_Section):
    """The causal LM: a registry id, a Hugging Face id or a local directory."""

    name: str = "world-llm"

    @field_validator("name")
    @classmethod
    def _known_llm(cls, value: str) -> str:
        registry.check_llm_name(value)
        return value

    gguf_file: str | None = None
    random_init: bool = Field(
        False, description="build from the architecture only (meta-device counts, GPU benches)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="compute dtype in training (weights the optimizer updates stay float32) and "
        "the dtype a checkpoint is evaluated in; float16 evaluates only (training refuses it: "
        "no loss scaling)",
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="attention kernel (flash_attention_2 needs the flash-attn package)"
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)


class LossConfig(_Section):
    """L = CE + mse_weight * MSE(pool(IAN output), caption representation)."""

    mse_weight: float = Field(1.0, ge=0, description="lambda; 0 gives pure cross-entropy")
    mse_target: Literal["input_embeddings", "last_hidden"] = "input_embeddings"
    mse_pooling: Literal["mean"] = "mean"
    mse_reduction: Literal["sum", "mean"] = Field(
        "sum", description="sum over the hidden dimension (the reported formula) or mean"
    )
    mse_in_stage2: bool = False


class DataSource(_Section):
    """A LLaVA-format conversation JSON and the folder its image paths are relative to."""

    path: str
    image_root: str | None = None
    weight: float = Field(1.0, gt=0, description="sampling weight in a mix")
    kinds: list[str] | None = Field(
        None,
        min_length=1,
        description="keep only records whose 'kind' is listed (e.g. [mcq]); None keeps all",
    )


class StageConfig(_Section):
    """One training stage. Stage 1 trains the IAN; stage 2 the IAN and the LLM."""

    trainable: list[Literal["ian", "llm", "vision"]] = Field(
        default_factory=lambda: ["ian"], min_length=1, description="what trains: ian, llm, vision"
    )
    data: list[DataSource] = Field(default_factory=list)
    epochs: float | None = Field(
        None,
        gt=0,
        description="stage length in passes over the data: each record once per epoch, in a "
        "permutation drawn from (seed, stage, epoch); a source's weight repeats it per epoch",
    )
    steps: int | None = Field(
        100,
        ge=0,
        description="optimizer steps: without epochs, batches drawn with replacement by source "
        "weight (default 100); with epochs, a cap on the epoch length (quick runs), only when "
        "given beside them",
    )
    batch_size: int = Field(
        8, ge=1, description="samples per forward pass on one worker (the micro-batch)"
    )
    grad_accum: int = Field(
        1,
        ge=1,
        description="global batch = batch_size * grad_accum samples per optimizer step, whatever "
        "the number of workers: N workers take 1/N of it each, in micro-batches of batch_size",
    )
    group_by: Literal["none", "length", "modality_length"] = Field(
        "none",
        description="epoch order: LLaVA-style megabatches of one global batch sorted by length "
        "(and of one modality: image or text-only); none = plain permutation. Weighted draws "
        "(steps without epochs): either value sorts the draws of 16 steps by length, then "
        "shuffles the batches cut from them; a step's loss is a mean over its target tokens, so "
        "this also gives long samples (e.g. tool calls) fewer steps of their own, each weighing "
        "as much as a step of short ones",
    )
    loader_workers: int = Field(
        2, ge=0, description="DataLoader worker processes per rank (0 = load in the loop)"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each LLM decoder layer's activations in the backward pass"
    )
    reshard_after_forward: bool | None = Field(
        None,
        description="FSDP: free gathered weights after forward (ZeRO-3); None = stage 1 no "
        "(ZeRO-2-like, only the IAN trains), stage 2 yes",
    )
    keep_optimizer: bool = Field(
        False,
        description="save a checkpoint (weights, optimizer, scheduler) at the stage's last step "
        "and keep it once the stage is done",
    )
    lr: float = Field(1e-3, gt=0)
    llm_lr: float | None = Field(
        None, gt=0, description="learning rate of the LLM's trainable weights; None = lr"
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    on_bad_image: Literal["error", "skip"] = "error"
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="steps between checkpoints a crashed stage resumes from; 0 = none (a crash "
        "restarts the stage; keep_optimizer still saves the last step)",
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_without_steps_run_whole(cls, data: Any) -> Any:
        """``epochs`` given without ``steps``: no cap (the default 100 steps would cut them)."""
        if isinstance(data, dict) and data.get("epochs") is not None and "steps" not in data:
            return {**data, "steps": None}
        return data

    @model_validator(mode="after")
    def _has_length(self) -> StageConfig:
        if self.epochs is None and self.steps is None:
            raise ValueError("give the stage a length: `epochs` (passes over the data) or `steps`")
        return self

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step, the same for any number of workers."""
        return self.batch_size * self.grad_accum


class MageConfig(_Section):
    """A whole MAGE variant: model, loss and both training stages."""

    name: str = "mage"
    seed: int = 0
    blind: bool = Field(False, description="control: zero the image tokens before the LLM")
    max_length: int = Field(256, ge=8, description="token budget per training sample")
    assets_dir: str | None = Field(
        None, description="prepared assets ({assets} in the registries); default $MAGE_ASSETS_DIR"
    )
    data_dir: str | None = Field(
        None, description="fills {data} in stage data paths; default $MAGE_DATA_DIR"
    )
    vision: VisionConfig = Field(default_factory=VisionConfig)
    ian: IANConfig = Field(default_factory=IANConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    stage1: StageConfig = Field(default_factory=StageConfig)
    stage2: StageConfig = Field(
        default_factory=lambda: StageConfig(trainable=["ian", "llm"], lr=2e-5)
    )

    @model_validator(mode="after")
    def _stride_divides_grid(self) -> MageConfig:
        grid = registry.encoder_grid(self.vision)
        if grid is not None and self.ian.projector == "ian" and grid % self.ian.stride:
            divisors = [d for d in range(1, grid + 1) if grid % d == 0]
            raise ValueError(
                f"ian.stride={self.ian.stride} does not divide the {grid}x{grid} patch grid of "
                f"vision.encoder={self.vision.encoder!r}; allowed strides: {divisors}"
            )
        return self

    @model_validator(mode="after")
    def _feature_cache_needs_a_frozen_tower(self) -> MageConfig:
        if self.vision.feature_cache is None:
            return self
        training = [s for s in ("stage1", "stage2") if "vision" in getattr(self, s).trainable]
        if not self.vision.frozen or training:
            where = (
                f"{training[0]}.trainable holds 'vision'" if training else "vision.frozen is false"
            )
            raise ValueError(
                f"vision.feature_cache needs a frozen tower, but {where}: cached features "
                "would not follow the tower's training; set vision.feature_cache to null"
            )
        return self

    def data_root(self) -> str | None:
        """What ``{data}`` stands for: ``data_dir``, else ``$MAGE_DATA_DIR`` (None: neither)."""
        return self.data_dir or os.environ.get("MAGE_DATA_DIR")

    def feature_cache_dir(self) -> str | None:
        """``vision.feature_cache`` with ``{assets}`` and ``{data}`` filled in."""
        folder = registry.fill_placeholders(self.vision.feature_cache, self.assets_dir)
        if folder and "{data}" in folder:
            root = self.data_root()
            if root is None:
                raise ConfigError(
                    "vision.feature_cache uses {data} but neither data_dir nor $MAGE_DATA_DIR is set"
                )
            folder = folder.replace("{data}", root)
        return folder

    def encoder_spec(self) -> registry.EncoderSpec:
        """The vision registry entry with this config's overrides and paths filled in."""
        return registry.resolve_encoder(self.vision, self.assets_dir)

    def llm_spec(self) -> registry.LLMSpec:
        return registry.resolve_llm(self.llm, self.assets_dir)

    def data_sources(self, stage: str) -> list[DataSource]:
        """The stage's data sources with ``{data}`` filled in (configs stay machine-free)."""
        root = self.data_root()
        sources = []
        for source in getattr(self, stage).data:
            fields = source.model_dump()
            for key in ("path", "image_root"):
                if fields[key] and "{data}" in fields[key]:
                    if root is None:
                        raise ConfigError(
                            f"{stage}.data uses {{data}} but neither data_dir nor $MAGE_DATA_DIR is set"
                        )
                    fields[key] = fields[key].replace("{data}", root)
            sources.append(DataSource(**fields))
        return sources

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            self.to_yaml() if path.suffix in (".yaml", ".yml") else self.model_dump_json(indent=2)
        )
        atomic_write_text(path, text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MageConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err)) from None

    @classmethod
    def load(cls, path: str | Path) -> MageConfig:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> MageConfig:
        """A copy with dotted-path overrides applied, e.g. ``{"ian.depth": 2}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            set_dotted(data, dotted, value)
        for stage in ("stage1", "stage2"):  # new epochs without steps: whole epochs, no cap
            if overrides.get(f"{stage}.epochs") is not None and f"{stage}.steps" not in overrides:
                data[stage]["steps"] = None
        return MageConfig.from_dict(data)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``; unknown paths raise ConfigError."""
    keys = dotted.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"unknown config field {'.'.join(keys[: i + 1])!r} in {dotted!r}")
        node = node[key]
    if not isinstance(node, dict) or keys[-1] not in node:
        known = sorted(node) if isinstance(node, dict) else []
        raise ConfigError(f"unknown config field {dotted!r}; fields here: {known}")
    node[keys[-1]] = value


def get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node[key]
    return node


def describe_error(e: dict, fields_hint: str = "mage/config.py") -> str:
    """One pydantic error as a sentence, saying where the allowed fields/values are."""
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"unknown field (check the spelling; the fields are in {fields_hint})"
    if e["type"] == "literal_error":
        return f"{msg} (got {e.get('input')!r})"
    return msg


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<config>"
        lines.append(f"{loc}: {describe_error(e)}")
    return "invalid config:\n  " + "\n  ".join(lines)
