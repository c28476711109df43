"""MageModel: vision tower -> connector (IAN or a baseline) -> any Hugging Face causal LM.

The projected image tokens are written into the LLM's input embeddings at the positions of
the ``<image>`` placeholder ids (see `mage.data`). The loss is MAGE's

    L = CE(next token | replies) + mse_weight * (1/N) sum_i || pool(IAN(V_i)) - d_LLM(caption_i) ||^2

where ``d_LLM`` is the detached mean of the caption's LLM input embeddings (or last hidden
states, ``loss.mse_target``), summed over the hidden dimension (``loss.mse_reduction="sum"``,
the reported formula) or averaged (``"mean"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mage import generation
from mage.config import MageConfig
from mage.data import IGNORE_INDEX, IMAGE_TOKEN_ID
from mage.ian import build_projector
from mage.llm import load_llm
from mage.registry import EncoderSpec
from mage.template import get_template
from mage.vision import build_vision_tower


@dataclass
class MageOutput:
    """Per-batch means (``loss``, ``ce_loss``, ``mse_loss``) and the sums and counts behind
    them, which the training loop adds up over a whole global batch before dividing."""

    loss: torch.Tensor | None
    ce_loss: torch.Tensor | None
    mse_loss: torch.Tensor | None
    logits: torch.Tensor  # [batch, length, vocab]; with labels [target tokens, vocab]
    ce_sum: torch.Tensor | None = None  # summed token cross-entropy
    ce_tokens: torch.Tensor | None = None  # target tokens it sums over
    mse_sum: torch.Tensor | None = None  # summed per-sample MSE
    mse_count: torch.Tensor | None = None  # captioned samples it sums over


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
        return self.project_features(self.vision(pixel_values.to(self.vision.dtype)))

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """The tower's outputs [B, patches, dim] (live or cached) -> image tokens."""
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
        image_features=None,
    ) -> MageOutput:
        """``image_features``: the frozen tower's outputs (`mage.feature_cache`) in place of
        ``pixel_values``."""
        cached = image_features is not None  # a micro-batch without images: 0 rows
        image_tokens = None
        if cached and image_features.shape[0]:
            image_tokens = self.project_features(image_features)
        elif pixel_values is not None:
            image_tokens = self.encode_images(pixel_values)
        # before the LLM, where a rank with images runs the tower: under FSDP a trainable
        # tower gathers its weights in the same order on every rank
        idle = self._idle_image_path(cached) if image_tokens is None and self.training else None
        embeds = self.embed(input_ids, image_tokens)
        if labels is None:
            logits = self._run_llm(embeds, attention_mask).logits
            out = MageOutput(None, None, None, logits)
        else:
            # The LM head and softmax only where a next token is a target (the answers, not
            # the prompt and image): the same loss, [targets, vocab] logits instead of
            # [batch, length, vocab] (a 32k vocabulary at 2k tokens is GBs).
            predicts = F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1))
            logits = self._run_llm(embeds, attention_mask, logits_to_keep=predicts).logits
            out = MageOutput(None, None, None, logits)
            targets = labels[:, 1:][predicts[:, :-1]]
            out.ce_sum = F.cross_entropy(
                logits.flatten(0, -2).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            if idle is not None:
                out.ce_sum = out.ce_sum + 0.0 * idle
            out.ce_tokens = (targets != IGNORE_INDEX).sum()
            out.ce_loss = out.ce_sum / out.ce_tokens.clamp(min=1)
        weight = self.config.loss.mse_weight if mse_weight is None else mse_weight
        terms = None
        if image_tokens is not None and caption_ids is not None:
            terms = self.mse_terms(image_tokens, caption_ids, caption_mask)
            if terms is not None:
                out.mse_sum, out.mse_count = terms
                out.mse_loss = out.mse_sum / out.mse_count
        if terms is None and weight > 0 and self._sharded_llm_target():
            self._idle_caption_forward()
        out.loss = out.ce_loss
        if out.ce_loss is not None and out.mse_loss is not None and weight > 0:
            out.loss = out.ce_loss + weight * out.mse_loss
        return out

    def _idle_image_path(self, cached: bool = False) -> torch.Tensor:
        """The tower and connector on one blank image, summed, for a micro-batch without
        images: every FSDP unit then runs its forward and backward on every rank (a rank that
        skipped them would wait on collectives the others never start), and the loss keeps a
        gradient path when every image of a batch was skipped. Added times 0 to the loss
        (LLaVA does the same for text-only batches). With cached features (``cached``) no rank
        runs the tower, so only the connector runs, on one row of zero features."""
        if cached:
            zeros = torch.zeros(1, self.vision.num_patches, self.vision.feature_dim)
            return self.project_features(zeros.to(self.device)).float().sum()
        size = self.vision.image_size
        blank = torch.zeros(1, 3, size, size, device=self.device)
        return self.encode_images(blank).float().sum()

    def _sharded_llm_target(self) -> bool:
        """Training under FSDP with the MSE target read from the LLM's hidden states."""
        from torch.distributed.fsdp import FSDPModule

        return (
            self.training
            and self.config.loss.mse_target == "last_hidden"
            and isinstance(self, FSDPModule)
        )

    def _idle_caption_forward(self) -> None:
        """The caption forward of `mse_terms` on one pad token, unused, for a micro-batch
        without captions: under FSDP each sharded decoder layer gathers its weights in every
        forward, so a rank that skipped this forward while another ran it would leave that
        one waiting on collectives forever (stage 2 with ``loss.mse_in_stage2`` mixes
        captioned and uncaptioned records)."""
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((1, 1), pad, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self._run_llm(self.llm.get_input_embeddings()(ids), torch.ones_like(ids))

    def mse_terms(self, image_tokens, caption_ids, caption_mask):
        """``(sum over captioned samples of the MSE between mean-pooled image tokens and the
        detached caption representation, number of those samples)``; None without captions."""
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
        return per_sample.sum(), valid.sum()

    def mse_loss(self, image_tokens, caption_ids, caption_mask) -> torch.Tensor | None:
        """The batch mean of `mse_terms`."""
        terms = self.mse_terms(image_tokens, caption_ids, caption_mask)
        return None if terms is None else terms[0] / terms[1]

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
        enough: Callable[[str], bool] | list[Callable[[str], bool] | None] | None = None,
        prompts: list[list[int]] | None = None,
    ) -> list[str]:
        """Greedy answers, batched with left padding and a KV cache; a row stops at EOS, its
        budget, a stop string or once ``enough(answer)`` holds, and leaves the batch. Same
        answers as batch size 1. ``images``: PIL (any mode), None,
        `mage.generation.preprocess_image` tensors or `mage.generation.TowerOutput`s;
        ``prompts``: their `prompt_ids`, if known."""
        return generation.generate(self, images, questions, max_new_tokens, stop, enough, prompts)

    def loglikelihood(
        self, images: list, contexts: list[str], continuations: list[str]
    ) -> list[float]:
        """Summed negative log-likelihood of each continuation (a loss: lower is likelier)."""
        return generation.loglikelihood(self, images, contexts, continuations)

    # ---- persistence (format in mage/persist.py) ---------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict=None) -> None:
        """Write a self-contained checkpoint folder; ``state_dict``: gathered full weights
        (FSDP's rank 0) instead of the module's own."""
        from mage.persist import save_checkpoint

        save_checkpoint(self, directory, state_dict)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> MageModel:
        """Load a checkpoint folder in the variant's ``llm.dtype``, ready for evaluation."""
        from mage.persist import load_checkpoint

        return load_checkpoint(cls, directory, device)
