"""Precomputed outputs of a frozen vision tower, so that training skips image decoding and
the tower.

With ``vision.feature_cache`` set (a folder; ``{assets}`` and ``{data}`` are filled in), a
stage whose tower is frozen reads each training image's tower output (``[tokens, dim]``) from
``<folder>/<tower fingerprint>.safetensors`` instead of decoding the image, preprocessing it
and running the tower. The numbers are the tower's own: the file is written by the tower in
eval mode, in its dtype, from `VisionTower.preprocess` (what training would compute, up to the
last bits of a matmul run on another batch).

- The file is built on first use, under a file lock (two trials that need it build it once),
  for every image of the stage's data plus those already in it; written atomically.
- The fingerprint hashes the tower's settings (`VisionTower.describe`, paths left out) and
  its weights. Other weights or settings get another file, so a cache is never stale.
- Images are keyed by their path relative to ``data_dir`` (absolute outside it): a data
  folder that moves keeps its cache. An image whose file changes under the same path is not
  noticed: rebuild by deleting the folder.

A row costs ``tokens * dim`` numbers per image: 16 KiB for the world ViT (10,000 images,
160 MiB), but 1.1 MiB for CLIP ViT-L/14-336 in bf16, so at LCS-558K's size the option is not
meant for the paper's setting; the sweep's data of the synthetic world is what it serves.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mage.images import open_image
from mage.io import atomic_path
from mage.records import DataError

FORMAT = 1
_PATH_KEYS = ("pretrained", "model_name")  # where the weights came from, not what they are


def tower_fingerprint(tower) -> str:
    """SHA-256 of the tower's settings and weights (not of where they were loaded from)."""
    settings = {k: v for k, v in tower.describe().items() if k not in _PATH_KEYS}
    digest = hashlib.sha256(json.dumps([FORMAT, settings, tower.image_aspect], sort_keys=True,
                                       default=str).encode())  # fmt: skip
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d (BatchNorm counts) too
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_key(path: str | Path, root: str | Path | None) -> str:
    """How the cache names an image: relative to ``root`` when inside it, else absolute."""
    path = os.path.abspath(path)
    if root is not None:
        root = os.path.abspath(root)
        if path.startswith(root + os.sep):  # both normalised: relpath's work, without its cost
            return path[len(root) + len(os.sep) :]
    return path


class FeatureCache:
    """The cached tower outputs of a set of images: ``cache.get(image_path)``."""

    def __init__(self, path: Path, keys: list[str], features: torch.Tensor, root: str | None):
        self.path, self.root, self.features = path, root, features
        self.rows = {key: i for i, key in enumerate(keys)}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, image_path: str | Path) -> torch.Tensor:
        key = image_key(image_path, self.root)
        if key not in self.rows:
            raise DataError(f"{self.path} holds no features of image {image_path}")
        return self.features[self.rows[key]]

    def empty(self) -> torch.Tensor:
        """No rows, the right shape: a micro-batch without images."""
        return self.features.new_zeros((0, *self.features.shape[1:]))

    @classmethod
    def ensure(
        cls,
        folder: str | Path,
        tower,
        images: Iterable[str | Path],
        root: str | Path | None = None,
        batch_size: int = 64,
    ) -> FeatureCache:
        """The cache of ``tower`` in ``folder`` holding every image of ``images``, built (or
        extended) first if needed."""
        from filelock import FileLock

        path = Path(folder) / f"{tower_fingerprint(tower)}.safetensors"
        root = str(root) if root is not None else None
        wanted = {image_key(p, root): str(p) for p in images}
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            keys, features = _read(path) if path.is_file() else ([], None)
            missing = sorted(set(wanted) - set(keys))
            if missing:
                keys, features = _extend(tower, keys, features, missing, wanted, batch_size)
                with atomic_path(path) as tmp:
                    save_file({"features": features}, str(tmp), metadata=_metadata(keys))
        return cls(path, keys, features, root)


def _metadata(keys: list[str]) -> dict[str, str]:
    return {"format": str(FORMAT), "images": json.dumps(keys)}


# The file last read in this process, by identity: a sweep's trial process reads the same
# file for each stage of each trial it runs (hundreds of MB), so it reads it once.
_last_read: dict[tuple, tuple[list[str], torch.Tensor]] = {}


def _read(path: Path) -> tuple[list[str], torch.Tensor]:
    st = path.stat()
    identity = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if identity in _last_read:
        return _last_read[identity]
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != str(FORMAT) or "images" not in meta:
            raise DataError(f"{path} is not a feature cache of this version; delete it to rebuild")
        found = json.loads(meta["images"]), fh.get_tensor("features")
    _last_read.clear()
    _last_read[identity] = found
    return found


def _open(path: str):
    try:
        return open_image(path)
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(
            f"vision.feature_cache: cannot read image {path}: {err} (fix or remove it, or set "
            "vision.feature_cache to null so that stage.on_bad_image applies)"
        ) from None


@torch.no_grad()
def _extend(tower, keys, features, missing, wanted, batch_size):
    """``keys`` and ``features`` with the rows of the ``missing`` keys appended."""
    was_training = tower.training
    tower.eval()
    chunks = [] if features is None else [features]
    device = next(tower.parameters()).device
    try:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            images = [_open(wanted[k]) for k in batch]
            pixels = tower.preprocess(images).to(device=device, dtype=tower.dtype)
            chunks.append(tower(pixels).cpu())
    finally:
        tower.train(was_training)
    return keys + missing, torch.cat(chunks).contiguous()
