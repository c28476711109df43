"""MAGE checkpoint folders: what `MageModel.save_pretrained` writes and `from_pretrained` reads.

A checkpoint folder (format 2) is self-contained, each part in its own library's format:

```
config.json             the MageConfig of the run
mage.json               format, template, LoRA flag, dtype, image tokens
vision/                 the tower as built (`mage.vision_tower.VisionTower.save`: architecture,
                        preprocessing and weights; no pretrained tag or Hub id needed to reload)
projector.safetensors   the connector (float32)
llm/                    the LLM in Hugging Face format (config, tokenizer, weights in llm.dtype)
llm_adapter/            the peft LoRA adapter, when stage 2 trained one
```

Loading builds the LLM through ``AutoModelForCausalLM.from_pretrained`` in the configured
dtype (transformers materialises it from the meta device: never a random fp32 7B first), and
casts the whole model to ``llm.dtype``, the dtype every evaluation of the variant runs in,
fresh or cached. ``save_pretrained(dir, state_dict=...)`` takes gathered full weights (rank 0
under FSDP) instead of reading the module's own.

A stage's *trainable* export (`save_trainable` / `load_trainable`, stage 1: only the connector)
is a safetensors file of the weights it trained, applied on top of a freshly built model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mage.io import atomic_path, atomic_write_json

FORMAT = 2
_LORA_BASE = re.compile(r"^base_model\.model\.")


class CheckpointFormatError(ValueError):
    """A folder is not a MAGE checkpoint this version can read; the message says why."""


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _base_llm_state(llm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A peft-wrapped LLM's state as the base model's keys (adapters left out)."""
    out = {}
    for key, value in llm_state.items():
        if "lora_" in key:
            continue
        out[_LORA_BASE.sub("", key).replace(".base_layer.", ".")] = value
    return out


def save_checkpoint(model, directory: str | Path, state_dict=None) -> None:
    from mage.llm import DTYPES

    state = state_dict if state_dict is not None else model.state_dict()
    dtype = DTYPES[model.config.llm.dtype]
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        model.config.save(tmp / "config.json")
        model.vision.save(tmp / "vision", state_dict=_part(state, "vision."))
        projector = {k: v.float().contiguous() for k, v in _part(state, "projector.").items()}
        save_file(projector, str(tmp / "projector.safetensors"))
        llm_state = {k: v.to(dtype) for k, v in _part(state, "llm.").items()}
        base = model.llm.get_base_model() if model.lora_active else model.llm
        base_state = _base_llm_state(llm_state) if model.lora_active else llm_state
        base.save_pretrained(tmp / "llm", state_dict=base_state, safe_serialization=True)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp / "llm")
        if model.lora_active:
            model.llm.save_pretrained(tmp / "llm_adapter", state_dict=llm_state)
        atomic_write_json(
            tmp / "mage.json",
            {
                "format": FORMAT,
                "template": model.template.name,
                "lora_active": model.lora_active,
                "dtype": model.config.llm.dtype,
                "num_image_tokens": model.num_image_tokens,
            },
        )


def read_meta(directory: Path) -> dict:
    meta_file = directory / "mage.json"
    if not (directory / "projector.safetensors").is_file() or not meta_file.is_file():
        raise CheckpointFormatError(
            f"{directory} is not a MAGE checkpoint (no mage.json / projector.safetensors)"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f"{meta_file}: damaged ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(
            f"{directory} was written in checkpoint format {meta.get('format', 1)}; this "
            f"version reads format {FORMAT}: train it again with this version"
        )
    return meta


def load_checkpoint(cls, directory: str | Path, device=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mage.config import MageConfig
    from mage.llm import DTYPES
    from mage.vision import load_vision_tower

    directory = Path(directory)
    meta = read_meta(directory)
    config = MageConfig.load(directory / "config.json")
    dtype = DTYPES[config.llm.dtype]
    vision = load_vision_tower(directory / "vision", frozen=config.vision.frozen)
    llm = AutoModelForCausalLM.from_pretrained(
        directory / "llm", dtype=dtype, attn_implementation=config.llm.attn_implementation
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory / "llm")
    except (OSError, ValueError):
        tokenizer = None
    spec = config.encoder_spec()
    model = cls._assemble(config, vision, llm, tokenizer, spec, template=meta["template"])
    if meta["lora_active"]:
        from peft import PeftModel

        model.llm = PeftModel.from_pretrained(model.llm, directory / "llm_adapter")
        model.lora_active = True
    model.projector.load_state_dict(load_file(str(directory / "projector.safetensors")))
    model.to(dtype).eval()
    return model.to(device) if device else model


def save_trainable(state: dict[str, torch.Tensor], path: str | Path) -> None:
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_trainable(model, path: str | Path) -> list[str]:
    """Apply a stage's trainable export onto ``model``; every saved weight must fit it."""
    saved = load_file(str(path))
    own = model.state_dict()
    wrong = [k for k, v in saved.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise CheckpointFormatError(
            f"{path} does not fit this model: {wrong[:3]} (a stage export of another config?)"
        )
    model.load_state_dict(saved, strict=False)
    return sorted(saved)
