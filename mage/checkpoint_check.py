"""Is a folder a whole MAGE checkpoint? Checked before `MageModel.from_pretrained` reads it,
so that a truncated ``model.safetensors`` or a half-written ``config.json`` is reported as
that file's fault in one line, not as a library error from deep inside the loader.

A checkpoint folder (`MageModel.save_pretrained`) holds ``config.json`` (a `MageConfig`),
``encoder_spec.json`` (plus ``open_clip_config.json`` for custom towers), ``mage.json``
(template, LoRA flag), ``llm/config.json`` and ``model.safetensors``. Each is parsed; the
safetensors header is read (it must cover the whole file), not the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint folder is missing a file or holds a damaged one; the message names it."""


def _json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; {path.parent} is not a whole MAGE checkpoint ({what})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: damaged ({what}; not readable JSON: {err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged ({what}; expected a JSON object)")
    return data


def check_checkpoint(directory: str | Path) -> None:
    """Raise `CheckpointError` naming the first missing or damaged file of a checkpoint."""
    from safetensors import safe_open

    from mage.config import ConfigError, MageConfig
    from mage.registry import EncoderSpec

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a MAGE checkpoint (folder not found)")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(
            f"{directory} is not a MAGE checkpoint (no model.safetensors); pass the folder "
            "written by MageModel.save_pretrained (e.g. RUN/checkpoint)"
        )
    config = _json(directory / "config.json", "the model's MageConfig")
    try:
        MageConfig.from_dict(config)
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {str(err).splitlines()[0]}") from None
    spec = _json(directory / "encoder_spec.json", "the vision tower's spec")
    try:
        EncoderSpec(**spec)
    except TypeError as err:
        raise CheckpointError(f"{directory / 'encoder_spec.json'}: damaged ({err})") from None
    if spec.get("model_config") == "open_clip_config.json":
        _json(directory / "open_clip_config.json", "the custom open_clip tower's config")
    meta = _json(directory / "mage.json", "template and LoRA flag")
    missing = [k for k in ("template", "lora_active") if k not in meta]
    if missing:
        raise CheckpointError(f"{directory / 'mage.json'}: damaged (no {', '.join(missing)})")
    _json(directory / "llm" / "config.json", "the LLM's architecture")
    try:
        with safe_open(str(weights), "pt") as fh:
            if not list(fh.keys()):
                raise CheckpointError(f"{weights}: damaged (holds no tensors)")
    except CheckpointError:
        raise
    except Exception as err:  # safetensors' own error type for a truncated or foreign file
        raise CheckpointError(
            f"{weights}: damaged ({str(err).splitlines()[0]}); the file is truncated or not "
            "safetensors: save the checkpoint again"
        ) from None


def check_training_checkpoint(directory: str | Path) -> None:
    """A stage's resumable checkpoint (`mage.train.save_checkpoint`): ``trainable.safetensors``
    whole, ``state.pt`` a whole torch archive, ``step.json`` readable. No-op if absent."""
    import zipfile

    from safetensors import safe_open

    directory = Path(directory)
    if not directory.exists():
        return
    step = _json(directory / "step.json", "the resumable step")
    if not isinstance(step.get("step"), int):
        raise CheckpointError(f"{directory / 'step.json'}: damaged (no integer 'step')")
    try:
        with safe_open(str(directory / "trainable.safetensors"), "pt"):
            pass
    except Exception as err:  # safetensors' own error type, or a missing file
        raise CheckpointError(
            f"{directory / 'trainable.safetensors'}: damaged or missing ({str(err).splitlines()[0]});"
            f" delete {directory} to train that stage from its start"
        ) from None
    if not zipfile.is_zipfile(directory / "state.pt"):  # torch.save writes a zip archive
        raise CheckpointError(
            f"{directory / 'state.pt'}: damaged or missing (not a whole torch archive); delete "
            f"{directory} to train that stage from its start"
        )


def load_checkpoint_model(directory: str | Path, device: str | None = None):
    """`MageModel.from_pretrained` after `check_checkpoint`; weights that do not fit the
    model are reported as the checkpoint's fault."""
    from mage.model import MageModel

    check_checkpoint(directory)
    try:
        return MageModel.from_pretrained(directory, device=device)
    except RuntimeError as err:  # torch: shapes or names of the weights do not fit
        raise CheckpointError(
            f"{Path(directory) / 'model.safetensors'}: does not fit the model its config.json "
            f"describes ({str(err).splitlines()[0][:200]})"
        ) from None
