"""Seeds that are the same in every process, and the RNG state a resumed run restores.

`stable_seed` derives a seed from values (unlike ``hash`` of a string it does not change
between processes). `seed_build` seeds the global RNGs before a model is built, so a trial's
config retrained from the command line starts from the sweep's weights. `rng_state` /
`set_rng_state` capture and restore Python's, NumPy's, torch's CPU and (when present) CUDA
generators: identical continued losses on a GPU need the CUDA state too.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def stable_seed(*parts) -> int:
    """A seed from values, the same in every process (unlike ``hash`` of a string)."""
    return zlib.crc32(repr(parts).encode())


def seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # also seeds every CUDA device


def seed_build(seed: int) -> None:
    """Seed the global RNGs before building a model (its random-init parts draw from them).

    The sweep's trials and ``mage-harness train`` both call this, so a trial's config
    retrained from the command line starts from the same weights; trials share worker
    processes, so nothing may depend on what ran before."""
    seed_all(stable_seed(seed, "build"))


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if _cuda_in_use():
        # this rank's own device: a restarted rank may land on another device index
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured; a CUDA state is required when CUDA is in use."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise KeyError(f"RNG state lacks {sorted(missing)}")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if _cuda_in_use():
        if "cuda" not in state:
            raise KeyError("RNG state lacks the CUDA generators (saved on a machine without CUDA)")
        saved = state["cuda"]
        if isinstance(saved, list | tuple):  # checkpoints before: every visible device's
            saved = saved[min(torch.cuda.current_device(), len(saved) - 1)]
        torch.cuda.set_rng_state(saved)  # onto the device this rank uses now
