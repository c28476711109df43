"""MageModel: vision tower -> connector (IAN or a baseline) -> any Hugging Face causal LM.

The projected image tokens are written into the LLM's input embeddings at the positions of
the ``<image>`` placeholder ids (see `mage.data`). The loss is MAGE's

    L = CE(next token | replies) + mse_weight * (1/N) sum_i || pool(IAN(V_i)) - d_LLM(caption_i) ||^2

where ``d_LLM`` is the detached mean of the caption's LLM input embeddings (or last hidden
states, ``loss.mse_target``), summed over the hidden dimension (``loss.mse_reduction="sum"``,
the reported formula) or averaged (``"mean"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from mage import generation
from mage.config import MageConfig
from mage.data import IGNORE_INDEX, IMAGE_TOKEN_ID
from mage.ian import build_projector
from mage.io import atomic_path, atomic_write_json
from mage.llm import load_llm, load_llm_architecture, save_llm_architecture
from mage.registry import EncoderSpec
from mage.template import get_template
from mage.vision import build_vision_tower


@dataclass
class MageOutput:
    loss: torch.Tensor | None
    ce_loss: torch.Tensor | None
    mse_loss: torch.Tensor | None
    logits: torch.Tensor


class MageModel(nn.Module):
    def __init__(
        self,
        config: MageConfig,
        vision: nn.Module,
        projector: nn.Module,
        llm: nn.Module,
        tokenizer,
        encoder_spec: EncoderSpec,
        template_name: str,
    ):
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoder_spec = encoder_spec
        self.template = get_template(template_name)
        self.lora_active = False

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def build(cls, config: MageConfig, device: str | torch.device | None = None) -> MageModel:
        """Build every part from the config (pretrained weights where the registry has them)."""
        spec = config.encoder_spec()
        vision = build_vision_tower(spec, device=device, frozen=config.vision.frozen)
        llm, tokenizer = load_llm(config, device=device)
        return cls._assemble(config, vision, llm, tokenizer, spec, device)

    @classmethod
    def _assemble(cls, config, vision, llm, tokenizer, spec, device=None, template=None):
        hidden = llm.get_input_embeddings().embedding_dim
        with torch.device(device or "cpu"):
            projector = build_projector(
                config.ian,
                vision.feature_dim,
                hidden,
                vision.grid_size,
                num_patches=vision.num_patches,
            )
        projector.to(dtype=next(llm.parameters()).dtype)
        template = template or config.llm_spec().template
        return cls(config, vision, projector, llm, tokenizer, spec, template)

    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_tokens

    def param_counts(self) -> dict[str, int]:
        """Parameters by part (works on the meta device)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"vision": count(self.vision), "ian": count(self.projector), "llm": count(self.llm)}

    def set_trainable(self, parts: list[str]) -> None:
        """Freeze everything, then unfreeze the named parts (ian, llm, vision)."""
        self.requires_grad_(False)
        if "ian" in parts:
            self.projector.requires_grad_(True)
        if "llm" in parts:
            if self.lora_active:  # only the adapters train
                for name, p in self.llm.named_parameters():
                    p.requires_grad_("lora_" in name)
            else:
                self.llm.requires_grad_(True)
        if "vision" in parts:
            self.vision.set_frozen(False)

    def enable_lora(self) -> None:
        """Wrap the LLM with peft LoRA adapters (stage 2 with ``llm.lora.enabled``)."""
        if self.lora_active:
            return
        from peft import LoraConfig, get_peft_model

        lora = self.config.llm.lora
        self.llm = get_peft_model(
            self.llm,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
        self.lora_active = True

    # ---- forward -------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> image tokens [B, num_image_tokens, hidden]."""
        features = self.vision(pixel_values)
        tokens = self.projector(features.to(next(self.projector.parameters()).dtype))
        # Blind control: zero tokens, kept in the graph so a stage that trains only the IAN runs.
        return tokens * 0.0 if self.config.blind else tokens

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        embeds = table(input_ids.clamp(min=0))
        slots = input_ids == IMAGE_TOKEN_ID
        n_slots = int(slots.sum())
        if n_slots == 0:
            return embeds
        if image_tokens is None or image_tokens.shape[0] * image_tokens.shape[1] != n_slots:
            have = 0 if image_tokens is None else image_tokens.shape[0] * image_tokens.shape[1]
            raise ValueError(f"{n_slots} image placeholder positions but {have} image tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), image_tokens.to(embeds.dtype))

    def _run_llm(self, embeds, attention_mask, **kwargs):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.llm(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )

    def forward(
        self,
        input_ids,
        attention_mask,
        labels=None,
        pixel_values=None,
        caption_ids=None,
        caption_mask=None,
        mse_weight: float | None = None,
    ) -> MageOutput:
        image_tokens = self.encode_images(pixel_values) if pixel_values is not None else None
        logits = self._run_llm(self.embed(input_ids, image_tokens), attention_mask).logits
        ce = mse = None
        if labels is not None:
            ce = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
            )
        weight = self.config.loss.mse_weight if mse_weight is None else mse_weight
        if image_tokens is not None and caption_ids is not None:
            mse = self.mse_loss(image_tokens, caption_ids, caption_mask)
        loss = ce
        if ce is not None and mse is not None and weight > 0:
            loss = ce + weight * mse
        return MageOutput(loss, ce, mse, logits)

    def mse_loss(self, image_tokens, caption_ids, caption_mask) -> torch.Tensor | None:
        """MSE between mean-pooled image tokens and the detached caption representation."""
        valid = caption_mask.sum(1) > 0
        if not valid.any():
            return None
        ids, mask = caption_ids[valid], caption_mask[valid]
        with torch.no_grad():
            if self.config.loss.mse_target == "input_embeddings":
                reps = self.llm.get_input_embeddings()(ids)
            else:
                out = self._run_llm(
                    self.llm.get_input_embeddings()(ids), mask, output_hidden_states=True
                )
                reps = out.hidden_states[-1]
            m = mask.unsqueeze(-1).to(reps.dtype)
            target = (reps * m).sum(1) / m.sum(1)
        pooled = image_tokens[valid].mean(1)
        sq = (pooled.float() - target.float()) ** 2
        per_sample = sq.sum(-1) if self.config.loss.mse_reduction == "sum" else sq.mean(-1)
        return per_sample.mean()

    # ---- inference (mage.generation) ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def generate(
        self,
        images: list,
        questions: list[str],
        max_new_tokens: int | list[int] = 32,
        stop: list[str] | list[list[str] | None] | None = None,
    ) -> list[str]:
        """Greedy answers, batched with left padding and a KV cache; a row stops at EOS, its
        budget or a stop string and leaves the batch. Same answers as batch size 1.
        ``images``: PIL (any mode), None, or `mage.generation.preprocess_image` tensors."""
        return generation.generate(self, images, questions, max_new_tokens, stop)

    def loglikelihood(
        self, images: list, contexts: list[str], continuations: list[str]
    ) -> list[float]:
        """Summed negative log-likelihood of each continuation (a loss: lower is likelier)."""
        return generation.loglikelihood(self, images, contexts, continuations)

    # ---- persistence ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + encoder spec + LLM architecture/tokenizer + model.safetensors."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            self.config.save(tmp / "config.json")
            spec = dict(self.encoder_spec.__dict__, pretrained=None)
            if spec["model_config"] and Path(spec["model_config"]).is_file():
                (tmp / "open_clip_config.json").write_text(Path(spec["model_config"]).read_text())
                spec["model_config"] = "open_clip_config.json"
            atomic_write_json(tmp / "encoder_spec.json", spec)
            base = self.llm.get_base_model() if self.lora_active else self.llm
            save_llm_architecture(base, self.tokenizer, tmp / "llm")
            atomic_write_json(
                tmp / "mage.json", {"lora_active": self.lora_active, "template": self.template.name}
            )
            save_model(self, str(tmp / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> MageModel:
        directory = Path(directory)
        if not (directory / "model.safetensors").is_file():
            raise FileNotFoundError(f"{directory} is not a MAGE checkpoint (no model.safetensors)")
        config = MageConfig.load(directory / "config.json")
        spec = json.loads((directory / "encoder_spec.json").read_text())
        if spec["model_config"] == "open_clip_config.json":
            spec["model_config"] = str(directory / "open_clip_config.json")
        spec = EncoderSpec(**spec)
        meta = json.loads((directory / "mage.json").read_text())
        vision = build_vision_tower(spec, frozen=config.vision.frozen)
        llm, tokenizer = load_llm_architecture(directory / "llm")
        model = cls._assemble(config, vision, llm, tokenizer, spec, template=meta["template"])
        if meta["lora_active"]:
            model.enable_lora()
        load_model(model, str(directory / "model.safetensors"))
        model.eval()
        return model.to(device) if device else model
