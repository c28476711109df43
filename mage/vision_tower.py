"""The vision tower interface: what every backend shares.

A `VisionTower` is an ``nn.Module`` whose ``forward(pixel_values[B,3,H,W])`` returns ``[B,
grid_size**2, feature_dim]``: the patch tokens of hidden layer ``spec.feature_layer`` (a python
index over transformer blocks, -2 = penultimate as in LLaVA; for a ModifiedResNet the stage
1..4), the CLS token dropped when ``spec.drop_cls`` (SigLIP and ResNets have none). Towers are
frozen by default: no gradients, eval mode kept, forward under ``torch.no_grad()``. Weights that
were asked for but cannot be loaded raise `VisionTowerError`; random init must be asked for with
``vision.pretrained: none``. The backends are `mage.vision.OpenClipTower` and
`mage.vision_hf.HFVisionTower`; `mage.vision` builds and loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mage.images import mean_color, prepare_image
from mage.registry import EncoderSpec

RANDOM_INIT = "none"  # `vision.pretrained: none` = random init, even where the registry has weights
TOWER_FORMAT = 1


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


def wants_weights(spec: EncoderSpec) -> bool:
    """Whether the spec asks for pretrained weights (not absent, not ``none``)."""
    return spec.pretrained is not None and spec.pretrained.lower() != RANDOM_INIT


def relative_state(state: dict | None, prefix: str) -> dict:
    """The entries of a tower-level state dict under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)}
