"""The recipes of the world's "pretrained" assets, and what identifies what they build.

A recipe (`AssetConfig`, by name in `ASSET_CONFIGS`) gives each component's training config
(world-vit, world-resnet, world-llm) and the torch thread count. A component's fingerprint
(`component_fingerprint`) hashes its config, architecture, threads, the world's training inputs
and the assets format; `assets_cache_name` names the default cache folder of a recipe.

Reproducible: a recipe fixes its torch thread count (`AssetConfig.threads`; float sums depend
on how work is split between threads) and preparation runs with deterministic algorithms from
seeded generators (`reproducible`), so the same world and recipe give the same weights, bit for
bit, on a machine of the same kind (same CPU instruction set, torch build and library versions;
other CPUs may pick other kernels). ``assets.json`` records each component's weight hash
(`weights_sha256`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mage.world import encoders, textlm
from mage.world.generate import FORMAT_VERSION as WORLD_FORMAT

ASSETS_FORMAT = 2  # 2: thread count in the fingerprints, weight hashes in assets.json
LLM_ID = "world-llm"
COMPONENTS = (*encoders.ENCODER_IDS, LLM_ID)
WEIGHT_FILES = ("open_clip_model.safetensors", "model.safetensors")


class AssetsError(ValueError):
    """Assets are missing or were prepared for something else; the message says what to do."""


@dataclass(frozen=True)
class AssetConfig:
    vit: encoders.ClipTrainConfig
    resnet: encoders.ClipTrainConfig
    llm: textlm.TextLMConfig
    threads: int = 2  # torch threads while preparing: part of the recipe (see the docstring)

    def component(self, name: str):
        return {"world-vit": self.vit, "world-resnet": self.resnet, LLM_ID: self.llm}[name]


# The demo encoders, pretrained contrastively (about 1 min each on 1 thread).
_DEMO_ENCODERS = dict(
    vit=encoders.ClipTrainConfig(steps=600),
    resnet=encoders.ClipTrainConfig(steps=300),
)
# A world LLM taught the world's questions from text (caption in the prompt) at lr 1e-3:
# text-only yes/no 0.757, but lettered multiple choice stays at chance (0.261) (format 2).
_PLAIN_LLM = textlm.TextLMConfig(steps=2000, num_layers=4, mcq_hint_rate=0.5)
# The world LLM before its last phase (recipe demo-lookup): option-lookup drills alone
# first, then the mix with some drills and hinted questions kept, all at lr 3e-4
# (docs/cpu-world.md, "Lettered choice"): text-only MCQ 0.482, yes/no 0.850 as prepared.
_LOOKUP_LLM = replace(
    _PLAIN_LLM,
    steps=5000,
    lr=3e-4,
    lookup_steps=1300,
    kind_weights=(
        ("caption", 0.1),
        ("short", 0.2),
        ("yes_no", 0.3),
        ("mcq", 0.25),
        ("option_lookup", 0.05),
        ("mcq_hinted", 0.1),
    ),
)

# The 4-layer world LLM (recipe demo-4layer; the demo's until the 2-layer one below): the
# lookup LLM, then a last phase of 800 steps with its own schedule that adds
# describe-from-context drills (the caption's objects in a random order in the prompt, the
# caption as the reply) to the mix, so that the LLM reads what its context says
# (docs/cpu-world.md, "Describe from context").
_DESCRIBE_LLM = replace(
    _LOOKUP_LLM,
    final_steps=800,
    final_lr=3e-4,
    final_kind_weights=(
        *((kind, round(weight * 0.85, 4)) for kind, weight in _LOOKUP_LLM.kind_weights),
        ("describe", 0.15),
    ),
)

# The world LLM of the embedded default: the describe recipe at 2 layers and a 256-wide MLP
# (a VLM step costs less than half of the 4-layer one's), trained on twice the mix steps so
# that it reads its context as well (text-only yes/no 0.930, MCQ 0.528, against 0.896 and
# 0.536 at 4 layers; docs/cpu-world.md, "A 2-layer world LLM").
_DEMO_LLM = replace(_DESCRIBE_LLM, num_layers=2, intermediate_size=256, steps=10000)

ASSET_CONFIGS = {
    # seconds: enough to exercise every code path, not to learn much
    "test": AssetConfig(
        vit=encoders.ClipTrainConfig(steps=8, batch_size=32, warmup=2),
        resnet=encoders.ClipTrainConfig(steps=8, batch_size=32, warmup=2),
        llm=textlm.TextLMConfig(steps=12, num_layers=2, batch_size=16, warmup=2),
        threads=1,
    ),
    # the embedded default
    "demo": AssetConfig(**_DEMO_ENCODERS, llm=_DEMO_LLM),
    # the same encoders with the 4-layer describe LLM (the demo's until the 2-layer one)
    "demo-4layer": AssetConfig(**_DEMO_ENCODERS, llm=_DESCRIBE_LLM),
    # the same encoders with the world LLM before the describe phase (reads less: the
    # smoke budget's VLM does not separate from blind with it)
    "demo-lookup": AssetConfig(**_DEMO_ENCODERS, llm=_LOOKUP_LLM),
    # the same encoders with the earlier world LLM that cannot pick lettered options
    "demo-plain": AssetConfig(**_DEMO_ENCODERS, llm=_PLAIN_LLM),
}


def json_sha256(data) -> str:
    """SHA-256 of JSON-able data (keys sorted)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def component_fingerprint(name: str, cfg: AssetConfig, training_hash: str) -> str:
    """What determines a component's weights: its config, architecture, threads, and the
    world's training inputs (``world.json``'s ``training_hash``)."""
    extra = encoders.clip_kwargs(name) if name in encoders.ENCODER_IDS else None
    return json_sha256(
        {
            "format": ASSETS_FORMAT,
            "component": name,
            "config": asdict(cfg.component(name)),
            "architecture": extra,
            "threads": cfg.threads,
            "world_training_inputs": training_hash,
        }
    )


def weights_sha256(component_dir: Path) -> str:
    """SHA-256 of a component's weight file (what a reviewer compares across machines)."""
    path = next((component_dir / f for f in WEIGHT_FILES if (component_dir / f).is_file()), None)
    if path is None:
        raise AssetsError(f"{component_dir}: no weight file ({' or '.join(WEIGHT_FILES)})")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """Torch with a fixed thread count and deterministic algorithms, restored afterwards."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def assets_cache_name(size: str, seed: int) -> str:
    """The default cache folder's name for a world's assets, e.g. ``demo-seed0-1a2b3c4d5e``:
    the hash of the size's asset configs and of the world's format is part of the name, so a
    changed recipe or world generator (a new release) prepares fresh assets beside the old
    ones instead of refusing them."""
    if size not in ASSET_CONFIGS:
        raise AssetsError(f"unknown assets size {size!r}; choose one of {sorted(ASSET_CONFIGS)}")
    config = asdict(ASSET_CONFIGS[size])
    digest = json_sha256({"format": ASSETS_FORMAT, "config": config, "world_format": WORLD_FORMAT})
    return f"{size}-seed{seed}-{digest[:10]}"
