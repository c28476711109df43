"""Is a Hugging Face id usable on this machine? Asked before any work starts, so that a
mistyped or uncached id fails at once, naming the config field, instead of after a long
network timeout inside transformers.

An id resolves when the Hugging Face cache holds a snapshot of it
(`huggingface_hub.snapshot_download` with ``local_files_only``). Otherwise the Hub must be
reachable (``HF_HUB_OFFLINE`` unset and its host answering within a few seconds) and know the
repository (`huggingface_hub.HfApi.repo_exists`). `config_hub_ids` lists the ids a
`MageConfig` would download: the LLM (unless it is built from the registry's architecture)
and a Hugging Face vision tower.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
REACH_TIMEOUT_S = 3.0


class HubError(ValueError):
    """A Hugging Face id that cannot be had here; the message names the field and the id."""


def is_hub_id(value: str | None) -> bool:
    """``org/name`` that is not an existing local path."""
    return bool(value) and HUB_ID.fullmatch(value) is not None and not Path(value).exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=4)
def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """The Hub's host accepts a connection (False at once when HF_HUB_OFFLINE is set)."""
    if _offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def is_cached(repo_id: str, repo_type: str = "model") -> bool:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        return False
    return True


def check_hub_id(repo_id: str, field: str, repo_type: str = "model") -> None:
    """Raise `HubError` naming ``field`` unless ``repo_id`` is cached or on a reachable Hub."""
    if is_cached(repo_id, repo_type):
        return
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if _offline() else "no connection to the Hub"
        raise HubError(
            f"{field} {repo_id!r}: not found locally and the Hub is unreachable ({why}); "
            "check the id, or fill the Hugging Face cache where the Hub is reachable"
        )
    from huggingface_hub import HfApi

    try:
        exists = HfApi().repo_exists(repo_id, repo_type=repo_type)
    except Exception:  # the Hub answered the probe but not the API: treat as unreachable
        raise HubError(
            f"{field} {repo_id!r}: not found locally and the Hub did not answer"
        ) from None
    if not exists:
        raise HubError(f"{field} {repo_id!r}: no such repository on the Hugging Face Hub")


def config_hub_ids(cfg) -> dict[str, str]:
    """field -> Hub id for what building ``cfg`` (a `MageConfig`) would download. Registry
    entries count by their own value (``{assets}/world-llm`` is local, ``lmsys/...`` is not)."""
    from mage.registry import ENCODERS, LLMS

    ids: dict[str, str] = {}
    llm = LLMS.get(cfg.llm.name)
    raw = llm.name_or_path if llm else cfg.llm.name
    from_arch = cfg.llm.random_init and (llm is not None and llm.arch is not None)
    if not from_arch and not raw.startswith("builtin:") and is_hub_id(raw):
        ids["llm.name"] = raw
    enc = ENCODERS.get(cfg.vision.encoder)
    if enc is not None and enc.backend == "hf":
        raw = enc.model_name
    elif cfg.vision.encoder.startswith("hf:"):
        raw = cfg.vision.encoder.removeprefix("hf:")
    else:
        raw = None  # open_clip towers fetch their weights through open_clip
    if raw is not None:
        if is_hub_id(raw):
            ids["vision.encoder"] = raw
        if is_hub_id(cfg.vision.pretrained):
            ids["vision.pretrained"] = cfg.vision.pretrained
    return ids


def check_config_hub_ids(cfg) -> None:
    for field, repo_id in config_hub_ids(cfg).items():
        check_hub_id(repo_id, field)
