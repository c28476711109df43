"""The world's "pretrained" vision encoders: tiny open_clip CLIP models trained on its captions.

Two towers, as in the CPU-world design note: a ViT (64 px, patch 8, width 64, 2 layers) and a
ModifiedResNet (layers (1,1,1,1), width 16; its layer2 is an 8x8 grid). Each is a real
``open_clip.CLIP`` with a small text tower over the world tokenizer, trained contrastively
on (training image, caption) pairs with ``open_clip.ClipLoss``.

Saved as ``open_clip_config.json`` (the CLIP kwargs ``{"embed_dim", "vision_cfg",
"text_cfg"}``) and ``open_clip_model.safetensors`` (the whole CLIP state dict), which the
registry's ``world-vit`` / ``world-resnet`` entries load. Images are normalised with
open_clip's default (OpenAI) mean and std, which open_clip applies to any custom model.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from mage.clip_configs import WORLD_CLIP_CFGS
from mage.world.vocab import world_tokenizer

if TYPE_CHECKING:  # open_clip (with timm) takes seconds to import: only where a CLIP is built
    import open_clip

ENCODER_IDS = ("world-vit", "world-resnet")
CONTEXT_LENGTH = 40


@dataclass(frozen=True)
class ClipTrainConfig:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 20


def clip_kwargs(encoder_id: str) -> dict:
    """The CLIP kwargs for ``encoder_id`` (`mage.clip_configs`); the text tower always matches
    the world tokenizer."""
    base = WORLD_CLIP_CFGS[encoder_id]
    cfg = copy.deepcopy({k: base[k] for k in ("embed_dim", "vision_cfg")})
    tok = world_tokenizer()
    text_cfg = dict(base.get("text_cfg") or {})
    text_cfg.update(
        context_length=CONTEXT_LENGTH,
        vocab_size=len(tok),
        width=text_cfg.get("width", 64),
        heads=text_cfg.get("heads", 4),
        layers=text_cfg.get("layers", 2),
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        pool_type="eos",
    )
    cfg["text_cfg"] = text_cfg
    return cfg


def tokenize_captions(captions: list[str]) -> torch.Tensor:
    """Caption token ids + EOS, right-padded with <pad> to `CONTEXT_LENGTH`."""
    tok = world_tokenizer()
    out = torch.full((len(captions), CONTEXT_LENGTH), tok.pad_token_id, dtype=torch.long)
    for i, cap in enumerate(captions):
        ids = tok.encode(cap)[: CONTEXT_LENGTH - 1] + [tok.eos_token_id]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def load_images(paths: list[Path]) -> torch.Tensor:
    """uint8 [N, 3, H, W]."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    import open_clip

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255.0 - mean) / std


def train_clip(
    encoder_id: str,
    images_u8: torch.Tensor,
    captions: list[str],
    cfg: ClipTrainConfig,
    seed: int,
    on_step=None,
) -> tuple[open_clip.CLIP, dict, dict]:
    """Train a tiny CLIP; returns ``(model, clip_kwargs, log)``."""
    import open_clip

    kwargs = clip_kwargs(encoder_id)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**kwargs)
    texts = tokenize_captions(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, cfg.warmup))
            * 0.5
            * (1 + np.cos(np.pi * min(1.0, s / max(1, cfg.steps))))
        ),
    )
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    n = images_u8.shape[0]
    batch = min(cfg.batch_size, n)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        idx = torch.randperm(n, generator=gen)[:batch]
        img_f, txt_f, scale = model(normalise(images_u8[idx]), texts[idx])
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        if on_step:
            on_step(step)
    recalibrate_batchnorm(model, images_u8, batch, gen)
    model.eval()
    log = {
        "steps": cfg.steps,
        "batch_size": batch,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    return model, kwargs, log


@torch.no_grad()
def recalibrate_batchnorm(model, images_u8, batch: int, gen, batches: int = 8) -> None:
    """Re-estimate BatchNorm statistics of the final weights (ResNet towers), so the frozen
    encoder in eval mode sees the same normalisation it was trained with."""
    norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.visual.train()
    for _ in range(batches):
        idx = torch.randperm(images_u8.shape[0], generator=gen)[:batch]
        model.visual(normalise(images_u8[idx]))
    for m in norms:
        m.momentum = 0.1


@torch.no_grad()
def retrieval_accuracy(
    model: open_clip.CLIP, images_u8: torch.Tensor, captions: list[str]
) -> float:
    """Image -> caption top-1 accuracy among the given pairs (identical captions count)."""
    model.eval()
    img = model.encode_image(normalise(images_u8), normalize=True)
    txt = model.encode_text(tokenize_captions(captions), normalize=True)
    best = (img @ txt.T).argmax(dim=1).tolist()
    return float(np.mean([captions[j] == captions[i] for i, j in enumerate(best)]))


def save_clip(model: open_clip.CLIP, kwargs: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(kwargs, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))


def load_clip(directory: str | Path) -> open_clip.CLIP:
    """Rebuild a saved world CLIP (for checks; the registry loads it through mage.vision)."""
    import open_clip
    from safetensors.torch import load_file

    directory = Path(directory)
    kwargs = json.loads((directory / "open_clip_config.json").read_text())
    model = open_clip.CLIP(**kwargs)
    model.load_state_dict(load_file(str(directory / "open_clip_model.safetensors")))
    return model.eval()
