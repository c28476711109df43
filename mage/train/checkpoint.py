"""Resumable stage checkpoints with torch.distributed.checkpoint (DCP), and stage exports.

`CheckpointManager` keeps ``<root>/step-<8 digits>/`` folders. Every rank writes its shards of
the trainable weights and of the optimizer state through DCP (``get_state_dict`` with frozen
weights left out: a stage-1 checkpoint holds the connector, not the 7B LLM), plus its own RNG
state (CPU, CUDA, NumPy, Python); rank 0 adds ``train_state.pt`` (step, scheduler, world size,
global batch, the metrics of every step so far) and, last, the ``complete`` marker, so a folder without it (a crash mid-save) is
never resumed from. The data position is the step (`mage.train.pipeline` derives every batch
from it). DCP reshards on load, so a run saved on N workers resumes on M; a rank without an RNG
file of its own (M > N) reseeds from ``(seed, stage, step, rank)``. Loading is strict: the
checkpoint must hold exactly the weights that train now, or it is refused.

Stage exports (what later stages and evaluation load) are gathered full weights:
`export_trainable` writes a stage's trainable weights only (stage 1: the connector, a few MB
where the whole model would be 14 GB), `gather_full_state` hands rank 0 the whole model for
`MageModel.save_pretrained`.
"""

from __future__ import annotations

import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from mage.io import atomic_path, atomic_write_json
from mage.train.seeding import rng_state, seed_all, set_rng_state, stable_seed

COMPLETE = "complete"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# Frozen weights are not in the checkpoint, so torch's own strict check would refuse it;
# `_check_keys` compares what is saved with what trains instead.
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from; the message says which and why."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


@contextmanager
def _single_process_ok():
    """DCP warns that it assumes one process when no process group is up: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class CheckpointManager:
    """Sharded, resumable checkpoints of one stage under ``root``."""

    def __init__(self, root: str | Path, seed: int, stage: str, keep: int = 1):
        self.root, self.seed, self.stage, self.keep = Path(root), seed, stage, keep

    def folders(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _STEP_DIR.match(p.name)]
        return sorted(p for p in found if (p / COMPLETE).is_file())

    def latest(self) -> Path | None:
        folders = self.folders()
        return folders[-1] if folders else None

    def save(
        self,
        step: int,
        model,
        optimizer,
        scheduler,
        global_batch: int,
        history: list[dict] | None = None,
    ) -> Path:
        """Every rank calls this at the same step; returns the checkpoint folder. ``history``
        (every step's metrics so far: the training curve, and in its last entry how the run
        stood, which a run resumed at its last step reports) comes back from `saved_history`;
        it is saved before the ``complete`` marker, so a resumable checkpoint has its curve."""
        folder = self.root / f"step-{step:08d}"
        rank = _rank()
        if rank == 0 and folder.exists():  # a save of this step that crashed half-way
            shutil.rmtree(folder)
        _barrier()
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), folder / f"rng-rank{rank}.pt")
        model_state, optim_state = get_state_dict(model, optimizer, options=_OPTIONS)
        with _single_process_ok():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
        if rank == 0:
            state = {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "world_size": _world(),
                "global_batch": global_batch,
                "stage": self.stage,
                "history": [dict(h) for h in history or []],
            }
            torch.save(state, folder / "train_state.pt")
            atomic_write_json(folder / COMPLETE, {"step": step, "world_size": _world()})
            self.prune(self.keep)
        _barrier()
        return folder

    def load(self, folder: Path, model, optimizer, scheduler, global_batch: int) -> int:
        """Restore weights, optimizer, scheduler and RNG; returns the step to continue from."""
        folder = Path(folder)
        state = torch.load(folder / "train_state.pt", weights_only=False)
        if state["global_batch"] != global_batch:
            raise CheckpointError(
                f"{folder} was written with a global batch of {state['global_batch']} samples "
                f"per step; this run has {global_batch}: resuming would change the run. Use the "
                "stage's batch_size x grad_accum of the checkpoint, or start the stage afresh"
            )
        model_state, optim_state = get_state_dict(model, optimizer, options=_OPTIONS)
        self._check_keys(folder, model_state)
        try:
            with _single_process_ok():
                dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
        except Exception as err:
            raise CheckpointError(f"cannot resume from {folder}: {err}") from err
        set_state_dict(
            model,
            optimizer,
            model_state_dict=model_state,
            optim_state_dict=optim_state,
            options=_LOAD_OPTIONS,
        )
        scheduler.load_state_dict(state["scheduler"])
        rng_file = folder / f"rng-rank{_rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:  # more ranks than when it was saved: a fresh, reproducible stream
            seed_all(stable_seed(self.seed, self.stage, state["step"], _rank()))
        return int(state["step"])

    @staticmethod
    def saved_history(folder: Path) -> list[dict] | None:
        """Every step's metrics up to a checkpoint; None for a checkpoint written before the
        curve was kept (then only its last step's metrics, if any, as a one-entry list)."""
        state = torch.load(Path(folder) / "train_state.pt", weights_only=False)
        if "history" in state:
            return [dict(h) for h in state["history"]]
        return [dict(state["metrics"])] if state.get("metrics") else None

    @staticmethod
    def _check_keys(folder: Path, model_state: dict) -> None:
        stored = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
        saved = {k.removeprefix("model.") for k in stored if k.startswith("model.")}
        wanted = set(model_state)
        if saved != wanted:
            missing, extra = sorted(wanted - saved), sorted(saved - wanted)
            raise CheckpointError(
                f"{folder} does not hold the weights this stage trains: missing "
                f"{missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected "
                f"{extra[:3]}{' ...' if len(extra) > 3 else ''}"
            )

    def prune(self, keep: int) -> None:
        """Rank 0: delete all but the newest ``keep`` complete checkpoints, and incomplete
        ones older than the newest complete one."""
        folders = self.folders()
        doomed = folders[: max(0, len(folders) - keep)]
        if folders:
            newest = folders[-1].name
            doomed += [
                p
                for p in self.root.iterdir()
                if _STEP_DIR.match(p.name) and p.name < newest and p not in folders
            ]
        for folder in doomed:
            shutil.rmtree(folder, ignore_errors=True)


def export_trainable(model, path: str | Path) -> None:
    """Every rank calls this; rank 0 writes the stage's trainable weights (full tensors)."""
    from safetensors.torch import save_file

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    if _rank() == 0:
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
    _barrier()


def gather_full_state(model) -> dict[str, torch.Tensor]:
    """Every rank calls this; rank 0 gets the whole model's weights on the CPU (others: {})."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if _rank() == 0 else {}
