"""Vision towers: images -> a square grid of patch features for the connector.

`build_vision_tower(spec)` turns a `mage.registry.EncoderSpec` into a `VisionTower`
(`mage.vision_tower`: the interface, freezing, preprocessing) and `load_vision_tower(dir)`
rebuilds one that `VisionTower.save` wrote. Backends are small classes in ``BACKENDS``: open_clip
models (here: a registry name with a pretrained tag, a local CLIP config JSON + safetensors, or a
``builtin:`` tiny config) and transformers' CLIP/SigLIP vision models (`mage.vision_hf`).
``device="meta"`` builds the architecture without memory or weights (parameter counts of the
paper preset).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from mage.clip_configs import (  # noqa: F401  (WORLD_*: re-exported, the tests read them here)
    BUILTIN_CLIP_CFGS,
    WORLD_RESNET_CLIP_CFG,
    WORLD_VIT_CLIP_CFG,
)
from mage.registry import ENCODERS, EncoderSpec
from mage.vision_hf import HFVisionTower
from mage.vision_tower import (
    RANDOM_INIT,
    VisionTower,
    VisionTowerError,
    relative_state,
    wants_weights,
)

_TRANSFORM_KEYS = ("size", "mean", "std", "resize_mode", "interpolation", "fill_color")


class OpenClipTower(VisionTower):
    """open_clip visual towers: ViT (transformer blocks), timm trunks (SigLIP), ModifiedResNet."""

    def __init__(
        self,
        spec: EncoderSpec,
        visual: nn.Module,
        preprocess_cfg: dict[str, Any],
        model_cfg: dict[str, Any] | None = None,
    ):
        has_cls = False
        if isinstance(visual, open_clip.timm_model.TimmModel):
            kind, trunk = "timm", visual.trunk
            grid, dim = trunk.patch_embed.grid_size, trunk.embed_dim
            blocks, has_cls = len(trunk.blocks), trunk.num_prefix_tokens > 0
        elif isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            kind, blocks, stage = "resnet", 4, spec.feature_layer
            if stage not in (1, 2, 3, 4):
                raise VisionTowerError(f"vision.feature_layer={stage} for a ResNet: use 1..4")
            dim = getattr(visual, f"layer{stage}")[-1].bn3.num_features
            grid = (visual.image_size // 4 // 2 ** (stage - 1),) * 2  # stem /4, stages 2-4 /2
        elif isinstance(visual, open_clip.transformer.VisionTransformer):
            kind, grid, dim = "vit", visual.grid_size, visual.transformer.width
            blocks, has_cls = visual.transformer.layers, True
        else:
            raise VisionTowerError(f"{spec.id!r}: unsupported tower {type(visual).__name__}")
        if grid[0] != grid[1]:
            raise VisionTowerError(f"{spec.id!r}: patch grid {grid} is not square")
        super().__init__(spec, int(preprocess_cfg["size"]), int(grid[0]), int(dim))
        self.has_cls = has_cls
        self.kind = kind
        self.visual = visual
        self.layer_index = spec.feature_layer if kind == "resnet" else self._block_index(blocks)
        pp = {k: v for k, v in preprocess_cfg.items() if k in _TRANSFORM_KEYS}
        self.preprocess_cfg = dict(pp)
        self.model_cfg = model_cfg  # the open_clip CLIP kwargs it was built from
        self._transform = open_clip.image_transform(pp.pop("size"), False, **pp)

    def save(self, directory: str | Path, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = {**copy.deepcopy(self.model_cfg), "preprocess_cfg": self.preprocess_cfg}
        (directory / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
        state = relative_state(state_dict, "visual.") or self.visual.state_dict()
        weights = {k: v.detach().float().contiguous() for k, v in state.items()}
        save_file(weights, str(directory / "vision.safetensors"))
        (directory / "tower.json").write_text(json.dumps(self.describe(), indent=2))

    @classmethod
    def build(cls, spec: EncoderSpec, device: str | torch.device | None = None) -> OpenClipTower:
        meta = str(device) == "meta"
        cfg, checkpoint, pp = _open_clip_source(spec, meta)
        with torch.device("meta" if meta else "cpu"):
            if cfg is None:  # an open_clip registry name: its factory loads tags and files
                model, cfg = _create_registry_model(spec, meta)
                pp = {**pp, **model.visual.preprocess_cfg}
            else:
                kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
                custom = cfg.get("custom_text", False)
                model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**kwargs)
        if checkpoint:
            try:
                open_clip.load_checkpoint(model, checkpoint, strict=True)
            except Exception as err:
                raise VisionTowerError(
                    f"vision encoder {spec.id!r}: could not load weights {checkpoint} into the "
                    f"model of {spec.model_config}: {err}"
                ) from err
        size = model.visual.image_size
        pp["size"] = size[0] if isinstance(size, (tuple, list)) else size
        tower = cls(spec, model.visual, pp, cfg)
        return tower.to(device) if device is not None and not meta else tower

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "resnet":
            out = self.visual.forward_intermediates(
                pixel_values, indices=[self.layer_index], intermediates_only=True
            )
            return out["image_intermediates"][0].flatten(2).transpose(1, 2)
        keep_cls = self.has_cls and not self.spec.drop_cls
        out = self.visual.forward_intermediates(
            pixel_values, indices=[self.layer_index], stop_early=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=keep_cls,
        )  # fmt: skip
        tokens = out["image_intermediates"][0]
        if keep_cls:
            tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)
        return tokens


def _open_clip_source(
    spec: EncoderSpec, meta: bool
) -> tuple[dict | None, str | None, dict[str, Any]]:
    """(CLIP kwargs or None for a registry name, checkpoint path, preprocess cfg overrides)."""
    pp: dict[str, Any] = {}
    source = spec.model_config
    if source is None:
        return None, None, pp
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_CLIP_CFGS:
            raise VisionTowerError(
                f"unknown builtin open_clip config {source!r}; have {sorted(BUILTIN_CLIP_CFGS)}"
            )
        cfg = copy.deepcopy(BUILTIN_CLIP_CFGS[name])
    else:
        path = Path(source)
        if not path.is_file():
            raise VisionTowerError(
                f"vision encoder {spec.id!r}: model config {path} not found; prepare the assets "
                "(`mage-harness prepare`, or set assets_dir / $MAGE_ASSETS_DIR to where they are)"
            )
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise VisionTowerError(
                f"{path}: invalid JSON ({err}); prepare the assets again"
            ) from err
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
        if missing:
            raise VisionTowerError(f"{path}: missing open_clip CLIP kwargs {sorted(missing)}")
        pp = cfg.pop("preprocess_cfg", {})
    if spec.image_size is not None:
        cfg["vision_cfg"]["image_size"] = spec.image_size
    checkpoint = spec.pretrained if wants_weights(spec) and not meta else None
    if checkpoint and not Path(checkpoint).is_file():
        raise VisionTowerError(
            f"vision encoder {spec.id!r}: pretrained weights {checkpoint} not found. Prepare "
            f"the assets (`mage-harness prepare`), point vision.pretrained at the file, or set "
            f"`vision.pretrained: {RANDOM_INIT}` to train from random init on purpose"
        )
    return cfg, checkpoint, pp


def _create_registry_model(spec: EncoderSpec, meta: bool) -> tuple[nn.Module, dict[str, Any]]:
    """An open_clip registry model, and the CLIP kwargs it was built with. The tag's
    architecture settings (QuickGELU for OpenAI's CLIP, SigLIP's mean/std and resize mode)
    apply even when its weights are not loaded (``arch_tag``)."""
    name = spec.model_name
    tag = spec.pretrained if wants_weights(spec) else None
    # a tag open_clip knows for this model sets the architecture; a local weights file (the
    # offline way to give OpenAI's or SigLIP's weights) keeps the registry's tag settings
    known = tag in open_clip.list_pretrained_tags_by_model(name) if tag else False
    arch_tag = tag if known else spec.arch_tag
    tag_cfg = open_clip.get_pretrained_cfg(name, arch_tag) if arch_tag else {}
    base = open_clip.get_model_config(name)
    native = base["vision_cfg"].get("image_size") if base else None
    size = spec.image_size if spec.image_size not in (None, native) else None
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    kwargs = dict(force_quick_gelu=quick_gelu, force_image_size=size)
    pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    cfg = copy.deepcopy(base or {})
    cfg["quick_gelu"] = quick_gelu or cfg.get("quick_gelu", False)
    if size is not None:
        cfg.setdefault("vision_cfg", {})["image_size"] = size
    quiet = logging.getLogger().level
    if tag is None:  # random init on purpose: open_clip's "no pretrained weights" is noise
        logging.getLogger().setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(
            name, pretrained=None if meta else tag, device="meta" if meta else "cpu",
            force_preprocess_cfg=pp, **kwargs,
        )  # fmt: skip
        return model, cfg
    except Exception as err:
        raise VisionTowerError(
            f"vision encoder {spec.id!r}: open_clip could not build {name!r} with pretrained="
            f"{tag!r} ({err}). Without network, put the checkpoint file in vision.pretrained, or "
            f"set `vision.pretrained: {RANDOM_INIT}` for random init"
        ) from err
    finally:
        logging.getLogger().setLevel(quiet)


BACKENDS: dict[str, type[VisionTower]] = {"open_clip": OpenClipTower, "hf": HFVisionTower}


def load_vision_tower(directory: str | Path, frozen: bool = True) -> VisionTower:
    """Rebuild a tower that `VisionTower.save` wrote: the same architecture (activation
    function included), preprocessing and weights, from the folder alone."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        info = json.loads((directory / "tower.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise VisionTowerError(f"{directory}: not a saved vision tower ({err})") from None
    common = {k: info[k] for k in ("feature_layer", "drop_cls", "description") if k in info}
    if info["backend"] == "hf":
        local = str(directory / "hf")
        spec = EncoderSpec(info["id"], "hf", local, local, image_size=info["image_size"], **common)
        return build_vision_tower(spec, frozen=frozen)
    config = str(directory / "open_clip_config.json")
    spec = EncoderSpec(
        info["id"], "open_clip", info["id"], None, model_config=config,
        image_size=info["image_size"], **common,
    )  # fmt: skip
    tower = build_vision_tower(spec, frozen=frozen)
    try:
        tower.visual.load_state_dict(load_file(str(directory / "vision.safetensors")), strict=True)
    except Exception as err:
        raise VisionTowerError(f"{directory}: the saved tower weights do not load: {err}") from err
    return tower


def build_vision_tower(
    spec: EncoderSpec, device: str | torch.device | None = None, frozen: bool = True
) -> VisionTower:
    """Build the tower a resolved `EncoderSpec` describes, and check the grid it claims."""
    if spec.backend not in BACKENDS:
        raise VisionTowerError(
            f"{spec.id!r}: unknown backend {spec.backend!r}; use {sorted(BACKENDS)}"
        )
    tower = BACKENDS[spec.backend].build(spec, device)
    registered = ENCODERS.get(spec.id)
    same_size = registered is None or spec.image_size == registered.image_size
    for field in ("grid_size", "feature_dim"):
        claimed, actual = getattr(spec, field), getattr(tower, field)
        if same_size and claimed is not None and claimed != actual:
            raise VisionTowerError(
                f"encoder {spec.id!r} claims {field}={claimed} but the built model has {actual}; "
                "fix the entry in mage/registry.py ENCODERS"
            )
    return tower.set_frozen(frozen)
