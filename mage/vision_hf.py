"""transformers' CLIP/SigLIP vision models as a `VisionTower` (backend ``hf``).

Weights come from a Hub id or a local directory; ``device="meta"``, random init and the
``builtin:tiny-hf-clip`` test tower build the architecture from `LOCAL_HF_VISION_CFGS` offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import open_clip
import torch
import transformers
from PIL import Image
from torch import nn

from mage.registry import EncoderSpec
from mage.vision_tower import (
    RANDOM_INIT,
    VisionTower,
    VisionTowerError,
    relative_state,
    wants_weights,
)

# transformers vision configs built locally: the tiny test tower, and the published dims of the
# registered HF towers (so device="meta" counts parameters offline). Weights always come from the
# Hub id or a local directory.
LOCAL_HF_VISION_CFGS: dict[str, tuple[str, dict[str, Any]]] = {
    "builtin:tiny-hf-clip": ("clip_vision_model", dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4,
    )),
    "openai/clip-vit-large-patch14-336": ("clip_vision_model", dict(
        image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
        num_hidden_layers=24, num_attention_heads=16, projection_dim=768,
        hidden_act="quick_gelu",
    )),
    "google/siglip-so400m-patch14-384": ("siglip_vision_model", dict(
        image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304,
        num_hidden_layers=27, num_attention_heads=16,
    )),
}  # fmt: skip


class HFVisionTower(VisionTower):
    """transformers CLIPVisionModel / SiglipVisionModel: patch tokens of ``hidden_states``."""

    MODELS: ClassVar[dict[str, type]] = {  # config.model_type -> class
        "clip": transformers.CLIPVisionModel,
        "clip_vision_model": transformers.CLIPVisionModel,
        "siglip": transformers.SiglipVisionModel,
        "siglip_vision_model": transformers.SiglipVisionModel,
    }

    def __init__(self, spec: EncoderSpec, model: nn.Module, processor: Any):
        config = model.config
        image_size = spec.image_size or config.image_size
        super().__init__(spec, image_size, image_size // config.patch_size, config.hidden_size)
        self.has_cls = config.model_type.startswith("clip")
        self.model = model
        self.processor = processor
        self.layer_index = self._block_index(config.num_hidden_layers)
        self._interpolate = image_size != config.image_size
        mean, std = processor.image_mean, processor.image_std
        self._transform = open_clip.image_transform(image_size, False, mean=mean, std=std)

    @classmethod
    def build(cls, spec: EncoderSpec, device: str | torch.device | None = None) -> HFVisionTower:
        meta = str(device) == "meta"
        name = spec.model_name
        random_asked = spec.pretrained is not None and not wants_weights(spec)
        # the published architecture, offline: for counting (meta) and for random init
        local = name in LOCAL_HF_VISION_CFGS and (
            meta or random_asked or name.startswith("builtin:")
        )
        if local:  # the architecture from its published dims: no download
            model_type, kwargs = LOCAL_HF_VISION_CFGS[name]
            config = transformers.AutoConfig.for_model(model_type, **kwargs)
        else:
            try:
                config = transformers.AutoConfig.from_pretrained(name)
            except Exception as err:
                raise VisionTowerError(
                    f"vision encoder {spec.id!r}: no config for Hugging Face model {name!r} "
                    f"({err}); give a local directory or a reachable Hub id"
                ) from err
        if config.model_type not in cls.MODELS:
            raise VisionTowerError(
                f"{name!r} is a {config.model_type!r} model; supported: {sorted(cls.MODELS)}"
            )
        model_cls = cls.MODELS[config.model_type]
        config = getattr(config, "vision_config", config)
        random_init = (
            meta
            or not wants_weights(spec)
            and (spec.pretrained is not None or name.startswith("builtin:"))
        )
        with torch.device("meta" if meta else "cpu"):
            if random_init:
                model = model_cls(config)
            else:
                model = _hf_weights(spec, model_cls, spec.pretrained or name)
        processor = _hf_processor(name, config, local or meta)
        tower = cls(spec, model.eval(), processor)
        return tower.to(device) if device is not None and not meta else tower

    def save(self, directory: str | Path, state_dict: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = relative_state(state_dict, "model.") or None
        self.model.save_pretrained(directory / "hf", state_dict=state, safe_serialization=True)
        self.processor.save_pretrained(directory / "hf")
        (directory / "tower.json").write_text(json.dumps(self.describe(), indent=2))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        index = self.layer_index + 1 if self.layer_index >= 0 else self.layer_index
        out = self.model(
            pixel_values=pixel_values, output_hidden_states=True,
            interpolate_pos_encoding=self._interpolate,
        )  # fmt: skip
        hidden = out.hidden_states[index]  # [0] is the embeddings, so block i is i + 1
        return hidden[:, 1:] if self.has_cls and self.spec.drop_cls else hidden

    def _preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        if self._interpolate:  # a size the processor was not made for: resize + its mean/std
            return super()._preprocess(images)
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


def _hf_weights(spec: EncoderSpec, model_cls: type, source: str) -> nn.Module:
    try:
        return model_cls.from_pretrained(source)
    except Exception as err:
        raise VisionTowerError(
            f"vision encoder {spec.id!r}: could not load weights from {source!r} ({err}). Use a "
            f"local directory, or set `vision.pretrained: {RANDOM_INIT}` for random init"
        ) from err


def _hf_processor(name: str, config: Any, local: bool) -> Any:
    """The model's own image processor; built from its dims where the architecture is local."""
    if not local:
        try:
            return transformers.AutoImageProcessor.from_pretrained(name)
        except Exception as err:
            raise VisionTowerError(f"no image processor for {name!r}: {err}") from err
    size = config.image_size
    if config.model_type.startswith("siglip"):
        return transformers.SiglipImageProcessor(size={"height": size, "width": size})
    crop = {"height": size, "width": size}
    return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size=crop)
