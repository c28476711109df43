"""Vision towers: images -> a square grid of patch features for the connector.

`build_vision_tower(spec)` turns a `mage.registry.EncoderSpec` into a `VisionTower`, an
``nn.Module`` whose ``forward(pixel_values[B,3,H,W])`` returns ``[B, grid_size**2,
feature_dim]``: the patch tokens of hidden layer ``spec.feature_layer`` (a python index over
transformer blocks, -2 = penultimate as in LLaVA; for a ModifiedResNet the stage 1..4), the
CLS token dropped when ``spec.drop_cls`` (SigLIP and ResNets have none). Towers are frozen by
default: no gradients, eval mode kept, forward under ``torch.no_grad()``.

Backends are small classes in ``BACKENDS``: open_clip models (a registry name with a pretrained
tag, a local CLIP config JSON + safetensors, or a ``builtin:`` tiny config) and transformers'
CLIP/SigLIP vision models. ``device="meta"`` builds the architecture without memory or weights
(parameter counts of the paper preset). Weights that were asked for but cannot be loaded raise
`VisionTowerError`; random init must be asked for with ``vision.pretrained: none``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import open_clip
import torch
import transformers
from PIL import Image
from torch import nn

from mage.images import mean_color, prepare_image
from mage.registry import ENCODERS, EncoderSpec

_TRANSFORM_KEYS = ("size", "mean", "std", "resize_mode", "interpolation", "fill_color")
RANDOM_INIT = "none"  # `vision.pretrained: none` = random init, even where the registry has weights

# Text towers only matter to whoever pretrains these CLIPs; the vision tower keeps `.visual`.
_TINY_TEXT_CFG = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
WORLD_TEXT_CFG = {"context_length": 32, "vocab_size": 1024, "width": 64, "heads": 4, "layers": 2}
TINY_VIT_CLIP_CFG = dict(embed_dim=32, text_cfg=_TINY_TEXT_CFG, vision_cfg=dict(
    image_size=32, patch_size=8, width=32, layers=2, head_width=16))  # fmt: skip
TINY_RESNET_CLIP_CFG = dict(embed_dim=32, text_cfg=_TINY_TEXT_CFG, vision_cfg=dict(
    image_size=64, layers=[1, 1, 1, 1], width=8))  # fmt: skip
# The synthetic world's encoders (kwargs of open_clip.CLIP); mage.world.assets pretrains them and
# may replace text_cfg (e.g. vocab_size of the world tokenizer): the JSON it writes is what loads.
WORLD_VIT_CLIP_CFG = dict(embed_dim=64, text_cfg=WORLD_TEXT_CFG, vision_cfg=dict(
    image_size=64, patch_size=8, width=64, layers=2, head_width=16))  # fmt: skip
WORLD_RESNET_CLIP_CFG = dict(embed_dim=64, text_cfg=WORLD_TEXT_CFG, vision_cfg=dict(
    image_size=64, layers=[1, 1, 1, 1], width=16))  # fmt: skip
BUILTIN_CLIP_CFGS = {"tiny-vit": TINY_VIT_CLIP_CFG, "tiny-resnet": TINY_RESNET_CLIP_CFG}

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


class VisionTowerError(RuntimeError):
    """A vision tower could not be built as asked; the message says what to change."""


class VisionTower(nn.Module):
    """Common behaviour: freezing, input checks, the patch-grid attributes, preprocessing."""

    has_cls: bool = False
    image_aspect: str = "pad"  # LLaVA-1.5's image_aspect_ratio: pad (mage.images.ASPECTS)

    def __init__(self, spec: EncoderSpec, image_size: int, grid_size: int, feature_dim: int):
        super().__init__()
        self.spec = spec
        self.image_size = image_size
        self.grid_size = grid_size
        self.feature_dim = feature_dim
        self.frozen = True

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        """What a saved tower records beside its weights (``tower.json``)."""
        keys = ("id", "backend", "model_name", "pretrained", "arch_tag", "feature_layer",
                "drop_cls", "image_size", "grid_size", "feature_dim")  # fmt: skip
        return {"format": TOWER_FORMAT, **{k: getattr(self.spec, k) for k in keys},
                "built": {"image_size": self.image_size, "grid_size": self.grid_size,
                          "feature_dim": self.feature_dim}}  # fmt: skip

    def save(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """Write the tower as built (architecture, preprocessing, weights) to ``directory``,
        so `load_vision_tower` rebuilds it without its source (no tag, no Hub, no assets)."""
        raise NotImplementedError

    @property
    def num_patches(self) -> int:
        """Tokens per image: grid_size**2, plus one when a CLS token is kept."""
        return self.grid_size**2 + int(self.has_cls and not self.spec.drop_cls)

    def set_frozen(self, frozen: bool) -> VisionTower:
        self.frozen = frozen
        self.requires_grad_(not frozen)
        return self.train(self.training) if not frozen else self.eval()

    def train(self, mode: bool = True) -> VisionTower:
        return super().train(mode and not self.frozen)  # a frozen tower keeps eval mode (BN stats)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"vision tower {self.spec.id!r} expects pixel_values [B, 3, {size}, {size}], "
                f"got {list(pixel_values.shape)}; use tower.preprocess(images)"
            )
        if self.frozen:
            with torch.no_grad():
                return self.features(pixel_values)
        return self.features(pixel_values)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images of any mode -> [B, 3, image_size, image_size]: `mage.images.to_rgb`,
        padded to a square in the tower's mean colour (``image_aspect``), resized, normalised."""
        images = list(images)
        bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
        if not images or bad:
            raise ValueError(f"preprocess needs a non-empty list of PIL images (bad items: {bad})")
        fill = mean_color(next(t.mean for t in self._transform.transforms if hasattr(t, "mean")))
        return self._preprocess([prepare_image(im, self.image_aspect, fill) for im in images])

    def _preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self._transform(im) for im in images])

    def _block_index(self, num_blocks: int) -> int:
        layer = self.spec.feature_layer
        if not -num_blocks <= layer < num_blocks:
            raise VisionTowerError(
                f"vision.feature_layer={layer} is out of range for {self.spec.id!r} "
                f"({num_blocks} blocks): use {-num_blocks}..{num_blocks - 1} (-2 = penultimate)"
            )
        return layer


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
        state = _relative(state_dict, "visual.") or self.visual.state_dict()
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


def _wants_weights(spec: EncoderSpec) -> bool:
    return spec.pretrained is not None and spec.pretrained.lower() != RANDOM_INIT


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
    checkpoint = spec.pretrained if _wants_weights(spec) and not meta else None
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
    tag = spec.pretrained if _wants_weights(spec) else None
    arch_tag = tag or spec.arch_tag
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
        random_asked = spec.pretrained is not None and not _wants_weights(spec)
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
            or not _wants_weights(spec)
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
        state = _relative(state_dict, "model.") or None
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


def _relative(state: dict | None, prefix: str) -> dict:
    """The entries of a tower-level state dict under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)}


BACKENDS: dict[str, type[VisionTower]] = {"open_clip": OpenClipTower, "hf": HFVisionTower}
TOWER_FORMAT = 1


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
