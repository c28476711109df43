"""Per-GPU memory of a training stage on N workers, estimated on the meta device.

The model is built on PyTorch's meta device (no memory, no download), its parameters counted
by part and by what the stage trains, then laid out as `mage.train.parallel` lays them out:

- weights: trainable ones as fp32 master copies, frozen LLM weights in the compute dtype, both
  sharded over N (FSDP2); the frozen vision tower in the compute dtype on every GPU;
- gradients (fp32) and AdamW's two moments (fp32) of the trainable weights, sharded over N;
- gathered weights: with ``reshard_after_forward`` (stage 2) two decoder layers at a time in
  the compute dtype (the one computing and the one prefetched); without it (stage 1) every
  layer stays gathered from its forward to its backward;
- activations of one micro-batch at ``max_length`` tokens per sample (an upper bound: real
  samples are shorter; ``tokens_per_sample`` narrows it): per decoder layer about
  ``(10*h + 4*i)`` values per token when the LLM trains (hidden size h, MLP width i; attention
  by an SDPA/flash kernel, no seq^2 term), about ``(6*h + 3*i)`` when it is frozen (a frozen
  linear layer's input is not kept), or with activation checkpointing one hidden state per
  layer plus one layer recomputed; plus the logits (compute dtype) and their fp32 copy for the
  cross-entropy, counted at every token (an upper bound: training computes them only where the
  next token is a target, `MageModel.forward`).

An estimate, not a measurement: allocator fragmentation, CUDA context (~1 GiB), communication
buffers and the image-token expansion are not in it. ``mage-harness bench train`` measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class StageMemory:
    stage: str
    workers: int
    micro_batch: int
    tokens: int
    weights: float  # bytes per GPU
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    activations_checkpointed: float
    logits: float
    activation_checkpointing: bool

    @property
    def total(self) -> float:
        acts = self.activations_checkpointed if self.activation_checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + self.gathered + acts + self.logits

    def total_with(self, checkpointing: bool) -> float:
        acts = self.activations_checkpointed if checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + self.gathered + acts + self.logits

    def as_gib(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = value / GIB
        out["total"] = self.total / GIB
        return out


def _llm_shape(llm) -> tuple[int, int, int, int]:
    cfg = llm.config
    hidden = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    return hidden, inter, cfg.num_hidden_layers, cfg.vocab_size


def estimate_stage(
    model, cfg, stage: str, workers: int, tokens_per_sample: int | None = None
) -> StageMemory:
    """Per-GPU bytes of ``stage`` for ``model`` (built on the meta device) on ``workers``."""
    stage_cfg = getattr(cfg, stage)
    if stage == "stage2" and cfg.llm.lora.enabled:
        model.enable_lora()
    model.set_trainable(stage_cfg.trainable)
    b = _BYTES[cfg.llm.dtype]
    n = max(1, workers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_sharded = sum(p.numel() for p in model.llm.parameters() if not p.requires_grad)
    frozen_sharded += sum(p.numel() for p in model.projector.parameters() if not p.requires_grad)
    vision = sum(p.numel() for p in model.vision.parameters())
    vision_trains = any(p.requires_grad for p in model.vision.parameters())
    weights = 4 * trainable / n + b * frozen_sharded / n + (0 if vision_trains else b * vision)
    hidden, inter, layers, vocab = _llm_shape(model.llm)
    llm_params = sum(p.numel() for p in model.llm.parameters())
    per_layer = (llm_params - 2 * vocab * hidden) / max(1, layers)
    reshard = (
        stage == "stage2"
        if stage_cfg.reshard_after_forward is None
        else stage_cfg.reshard_after_forward
    )
    gathered = b * (2 * per_layer if reshard else llm_params)
    global_batch = stage_cfg.global_batch_size
    micro = max(1, min(stage_cfg.batch_size, global_batch // n))
    tokens = micro * min(tokens_per_sample or cfg.max_length, cfg.max_length)
    llm_trains = any(p.requires_grad for p in model.llm.parameters())
    per_token = 10 * hidden + 4 * inter if llm_trains else 6 * hidden + 3 * inter
    layer_acts = tokens * per_token * b
    activations = layers * layer_acts
    checkpointed = layers * tokens * hidden * b + layer_acts
    logits = tokens * vocab * (b + 4)
    return StageMemory(
        stage=stage,
        workers=n,
        micro_batch=micro,
        tokens=tokens,
        weights=float(weights),
        gradients=4.0 * trainable / n,
        optimizer=8.0 * trainable / n,
        gathered=float(gathered),
        activations=float(activations),
        activations_checkpointed=float(checkpointed),
        logits=float(logits),
        activation_checkpointing=stage_cfg.activation_checkpointing,
    )


def estimate(cfg, workers: int, tokens_per_sample: int | None = None) -> dict[str, StageMemory]:
    """Both stages of ``cfg`` on ``workers`` GPUs (random weights on the meta device)."""
    from mage.model import MageModel

    counting = cfg.with_overrides({"llm.random_init": True, "vision.pretrained": "none"})
    out = {}
    for stage in ("stage1", "stage2"):
        model = MageModel.build(counting, device="meta")  # fresh: LoRA wraps it in stage 2
        out[stage] = estimate_stage(model, counting, stage, workers, tokens_per_sample)
    return out


def check_fits(cfg, workers: int, gpu_memory_gb: float) -> None:
    """Raise ValueError, with the estimate, when a stage cannot fit one GPU's memory."""
    for stage, mem in estimate(cfg, workers).items():
        if mem.total / GIB > gpu_memory_gb:
            parts = ", ".join(
                f"{k} {v:.1f}"
                for k, v in mem.as_gib().items()
                if k in ("weights", "gradients", "optimizer", "gathered", "logits")
            )
            acts = mem.activations_checkpointed if mem.activation_checkpointing else mem.activations
            raise ValueError(
                f"{stage} of {cfg.name} needs about {mem.total / GIB:.1f} GiB per GPU on "
                f"{workers} worker(s) ({parts}, activations {acts / GIB:.1f} GiB at micro-batch "
                f"{mem.micro_batch} x {cfg.max_length} tokens"
                f"{', checkpointed' if mem.activation_checkpointing else ''}), more than "
                f"{gpu_memory_gb:g} GiB: add workers, lower {stage}.batch_size or turn on "
                f"{stage}.activation_checkpointing (`mage-harness params PRESET --memory`); "
                "the estimate takes every sample at max_length"
            )
