"""How a MAGE model is laid out for training: precision, activation checkpointing, FSDP2.

`prepare_model` is the one place that decides it (torchtitan's ``apply_*`` steps):

1. **Precision.** ``llm.dtype`` is the compute dtype. Weights that train stay float32 (the
   optimizer updates fp32 master weights: a 2e-5 step on a bf16 weight of 0.02 would round
   away); frozen weights are cast to the compute dtype (they need no master copy), the frozen
   vision tower included.
2. **Activation checkpointing** (``stage.activation_checkpointing``): each LLM decoder layer is
   wrapped with torch's ``checkpoint_wrapper`` (non-reentrant) before sharding.
3. **Sharding** when a process group is up (a Ray Train worker group, torchrun): PyTorch FSDP2
   ``fully_shard`` on every decoder layer, then on the root, with
   ``MixedPrecisionPolicy(param_dtype=compute dtype, reduce_dtype=float32)`` (bf16 reductions
   hurt with accumulation); the frozen tower stays out of sharding (``ignored_params``), a
   trainable one is its own unit. Stage 1 keeps gathered weights between forward and backward
   (ZeRO-2-like), stage 2 frees them (ZeRO-3-like) unless ``stage.reshard_after_forward`` says.
   FSDP averages gradients over the N ranks; the loop scales each rank's loss by N, so the
   result is the gradient of the loss normalised by the global batch's token count.
   Without a process group (one process: ``mage-harness train``, an in-process trial) the model
   stays whole and computes under ``torch.autocast`` in the compute dtype.

LoRA adapters are applied before this (`MageModel.enable_lora`), so they are sharded with
their layers.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from mage.llm import DTYPES, base_llm


def compute_dtype(cfg) -> torch.dtype:
    return DTYPES[cfg.llm.dtype]


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers (the classes transformers lists in ``_no_split_modules``),
    or their activation-checkpoint wrappers."""
    names = set(getattr(base_llm(llm), "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            f"{type(base_llm(llm)).__name__} does not list its decoder layers "
            "(_no_split_modules); it cannot be sharded per layer"
        )
    layers = []
    for module in llm.modules():
        inner = getattr(module, "_checkpoint_wrapped_module", None)
        if type(inner or module).__name__ in names and (inner is not None or not _wrapped(module)):
            layers.append(module)
    return layers


def _wrapped(module: nn.Module) -> bool:
    """Whether ``module`` sits inside a checkpoint wrapper (then the wrapper is the layer)."""
    return getattr(module, "_mage_checkpointed", False)


def apply_activation_checkpointing(llm: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    layers = decoder_layers(llm)
    for layer in layers:
        layer._mage_checkpointed = True
    ids = {id(layer) for layer in layers}
    apply_activation_checkpointing(
        llm,
        checkpoint_wrapper_fn=partial(
            checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT
        ),
        check_fn=lambda module: id(module) in ids,
    )


def cast_for_training(model: nn.Module, dtype: torch.dtype) -> None:
    """Trainable weights to float32 (master weights), frozen ones to the compute dtype."""
    if model.vision.frozen:
        model.vision.to(dtype)  # buffers too (a ResNet's batch-norm statistics)
    for param in model.parameters():
        want = torch.float32 if param.requires_grad else dtype
        if param.dtype != want and param.is_floating_point():
            param.data = param.data.to(want)


def apply_fsdp(model, dtype: torch.dtype, reshard_after_forward: bool, device: torch.device):
    """Shard the LLM's decoder layers, a trainable tower, then the root (bottom-up)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(
        param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32
    )
    shard = partial(fully_shard, mesh=mesh, mp_policy=policy)
    for layer in decoder_layers(model.llm):
        shard(layer, reshard_after_forward=reshard_after_forward)
    ignored = set()
    if model.vision.frozen:
        ignored = set(model.vision.parameters())
        model.vision.to(device)
    else:
        shard(model.vision, reshard_after_forward=reshard_after_forward)
    # The root keeps the embeddings, LM head and the connector gathered until the backward:
    # they are used first and last in every step.
    shard(model, reshard_after_forward=False, ignored_params=ignored)
    return model


def check_training_dtype(cfg) -> None:
    """float16 compute needs loss scaling, which this loop does not do: refuse it."""
    if cfg.llm.dtype == "float16":
        from mage.config import ConfigError

        raise ConfigError(
            "llm.dtype=float16: training in float16 needs loss scaling (small gradients "
            "underflow), which is not implemented; train in bfloat16 (as the paper presets) "
            "or float32"
        )


def prepare_model(model, cfg, stage: str, device: torch.device):
    """Lay the model out for one stage (see the module docstring); returns the autocast
    context the forward runs in (a null context under FSDP, which casts by itself)."""
    check_training_dtype(cfg)
    stage_cfg = getattr(cfg, stage)
    dtype = compute_dtype(cfg)
    cast_for_training(model, dtype)
    if stage_cfg.activation_checkpointing:
        apply_activation_checkpointing(model.llm)
    if distributed():
        reshard = stage_cfg.reshard_after_forward
        apply_fsdp(model, dtype, stage == "stage2" if reshard is None else reshard, device)
        return nullcontext()
    model.to(device)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
