"""Is a checkpoint whole? Checked before it is read, so that a truncated weights file or a
half-written JSON is reported as that file's fault in one line, not as a library error from
deep inside a loader.

`check_checkpoint(dir)`: a MAGE checkpoint folder (format 2, `mage.persist`): ``config.json``
(a valid `MageConfig`), ``mage.json`` (its format), ``projector.safetensors``,
``vision/tower.json``, ``llm/config.json``, and every other JSON and safetensors file in it
(``vision/``, ``llm/``, ``llm_adapter/``) parsed; of a safetensors file the header is read (it
must cover the whole file), not the weights.

`check_training_checkpoint(stage_folder)`: what ``train`` resumes from in a stage folder: the
newest complete ``checkpoints/step-N/`` (`mage.train.checkpoint`: ``train_state.pt`` and the RNG
files whole torch archives, the DCP metadata readable, its shard files present) and a stage
export ``model/trainable.safetensors``.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

REQUIRED = (
    "config.json",
    "mage.json",
    "projector.safetensors",
    "vision/tower.json",
    "llm/config.json",
)


class CheckpointError(ValueError):
    """A checkpoint is missing a file or holds a damaged one; the message names the file."""


def _json(path: Path, what: str) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: damaged ({what}; not readable JSON: {err})") from None
    return data


def _safetensors(path: Path, hint: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except Exception as err:  # safetensors' own error type for a truncated or foreign file
        raise CheckpointError(
            f"{path}: damaged ({str(err).splitlines()[0]}); the file is truncated or not "
            f"safetensors: {hint}"
        ) from None


def check_checkpoint(directory: str | Path) -> None:
    """Raise `CheckpointError` naming the first missing or damaged file of a checkpoint."""
    from mage.config import ConfigError, MageConfig
    from mage.persist import CheckpointFormatError, read_meta

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a MAGE checkpoint (folder not found)")
    if not (directory / "mage.json").is_file():
        raise CheckpointError(
            f"{directory} is not a MAGE checkpoint (no mage.json); pass the folder written by "
            "MageModel.save_pretrained (e.g. RUN/checkpoint)"
        )
    for rel in REQUIRED:
        if not (directory / rel).is_file():
            raise CheckpointError(
                f"{directory / rel}: missing; {directory} is not a whole checkpoint"
            )
    for path in sorted(directory.rglob("*.json")):
        _json(path, "part of the checkpoint")
    try:
        meta = read_meta(directory)  # the format this version reads
    except CheckpointFormatError as err:
        raise CheckpointError(str(err)) from None
    adapter = directory / "llm_adapter" / "adapter_config.json"
    if meta.get("lora_active") and not adapter.is_file():
        raise CheckpointError(
            f"{adapter}: missing; mage.json says the LLM carries a LoRA adapter, so "
            f"{directory} is not a whole checkpoint"
        )
    try:
        MageConfig.from_dict(_json(directory / "config.json", "the model's MageConfig"))
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {str(err).splitlines()[0]}") from None
    for path in sorted(directory.rglob("*.safetensors")):
        _safetensors(path, "save the checkpoint again")


def check_training_checkpoint(stage_folder: str | Path) -> None:
    """What a resumed stage reads: its newest complete DCP checkpoint and its export."""
    from torch.distributed.checkpoint import FileSystemReader

    stage_folder = Path(stage_folder)
    export = stage_folder / "model" / "trainable.safetensors"
    fix = f"delete {stage_folder} to train that stage from its start"
    if export.exists():
        _safetensors(export, fix)
    root = stage_folder / "checkpoints"
    steps = sorted(
        p for p in (root.iterdir() if root.is_dir() else []) if re.fullmatch(r"step-\d{8}", p.name)
    )
    complete = [p for p in steps if (p / "complete").is_file()]
    if not complete:
        return  # nothing to resume from: the stage starts afresh
    folder = complete[-1]
    _json(folder / "complete", "the checkpoint's completion marker")
    for path in [folder / "train_state.pt", *sorted(folder.glob("rng-rank*.pt"))]:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise CheckpointError(f"{path}: damaged or missing (not a whole torch archive); {fix}")
    try:
        FileSystemReader(str(folder)).read_metadata()
    except Exception as err:  # torch raises several types for a damaged metadata file
        raise CheckpointError(
            f"{folder / '.metadata'}: damaged or missing ({type(err).__name__}); {fix}"
        ) from None
    if not any(folder.glob("*.distcp")):
        raise CheckpointError(f"{folder}: no weight shards (*.distcp); {fix}")


def load_checkpoint_model(directory: str | Path, device: str | None = None):
    """`MageModel.from_pretrained` after `check_checkpoint`; weights that do not fit the
    model are reported as the checkpoint's fault."""
    from mage.model import MageModel

    check_checkpoint(directory)
    try:
        return MageModel.from_pretrained(directory, device=device)
    except RuntimeError as err:  # torch: shapes or names of the weights do not fit
        raise CheckpointError(
            f"{directory}: its weights do not fit the model its config.json describes "
            f"({str(err).splitlines()[0][:200]})"
        ) from None
