"""Prepare (once) and check the world's "pretrained" assets: encoders and LLM.

``prepare_assets(world, out_dir, size)`` fills ``out_dir`` (the registry's ``{assets}``)::

    assets.json                      key, world hash, per-component fingerprints and weight
                                     hashes, threads, evaluations
    world-vit/    open_clip_config.json, open_clip_model.safetensors, fingerprint.json, log.json
    world-resnet/ (the same)
    world-llm/    config.json, model.safetensors, tokenizer files, fingerprint.json, log.json

Each component is built into a temporary folder and swapped in atomically, then never
rebuilt: its fingerprint is a hash of (its training config, the recipe's thread count, the
world's training inputs, the assets format): the training images, stage1.json and
stage2.json (`generate.TRAINING_INPUTS`), so a world whose benchmark splits or tool data
changed keeps its assets (the evaluations in their logs were measured on the benchmark
splits of the world they were prepared with, ``world_content_hash``). Preparing into a folder
whose assets have another fingerprint (another world, another size or config) is refused with
an `AssetsError`, as is loading them with `check_assets` against a different world, or with
weights whose SHA-256 is not the recorded one: stale encoders or features would silently
misalign with the images. The recipes, fingerprints and reproducibility rules are in
`mage.world.asset_recipes`; how each component is trained is in `mage.world.asset_training`.

Shipped: the repository carries the ``demo`` recipe's three prepared components for the demo
world (`SHIPPED_DIR`, about 8 MB; world-resnet's 5.7 MB include a 3 MB attention-pool head
the tower does not use, kept because it is what the recipe writes). A shipped component whose
fingerprint is the one this code would build (recipe, threads, world training inputs) is
copied instead of trained (on 2 cores the LLM takes about 8.5 min, world-vit 42 s,
world-resnet 32 s), its weights checked against the SHA-256 its
``fingerprint.json`` records. ``mage-harness prepare --from-recipe`` trains every component
and says whether the weights equal the shipped ones.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from mage.io import atomic_path, atomic_write_json
from mage.world import encoders
from mage.world.asset_recipes import (
    ASSET_CONFIGS,
    ASSETS_FORMAT,
    COMPONENTS,
    AssetsError,
    component_fingerprint,
    json_sha256,
    reproducible,
    weights_sha256,
)
from mage.world.asset_training import build_encoder, build_llm
from mage.world.generate import WorldPaths, load_world
from mage.world.progress import progress_bar

SHIPPED_DIR = Path(__file__).resolve().parent / "prepared"  # <recipe>-seed<seed>/


def resolve_world(world: WorldPaths | str | Path) -> tuple[WorldPaths, dict]:
    paths = world if isinstance(world, WorldPaths) else load_world(world)
    return paths, paths.info()


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def prepare_assets(
    world: WorldPaths | str | Path,
    out_dir: str | Path,
    size: str = "demo",
    progress: bool = True,
    features: bool = False,
    shipped: bool = True,
) -> Path:
    """Build the world's encoders and LLM into ``out_dir`` (cached); returns ``out_dir``.

    With ``shipped`` (the default), assets shipped with the package for this recipe and world
    are copied instead of trained. ``progress``: a bar on a terminal, else one line per
    finished phase. ``features=True`` also caches both encoders' features of the training
    images (`cache_features`)."""
    if size not in ASSET_CONFIGS:
        raise AssetsError(f"unknown assets size {size!r}; choose one of {sorted(ASSET_CONFIGS)}")
    cfg = ASSET_CONFIGS[size]
    paths, info = resolve_world(world)
    world_hash, training_hash = info["content_hash"], info["training_hash"]
    out_dir = Path(out_dir)
    fingerprints = {name: component_fingerprint(name, cfg, training_hash) for name in COMPONENTS}
    key = json_sha256({"size": size, "components": fingerprints})
    manifest = _read_json(out_dir / "assets.json")
    if manifest is not None and manifest.get("key") != key:
        held_hash, held_size = manifest.get("world_training_hash"), manifest.get("size")
        changed = [
            n for n in COMPONENTS if (manifest.get("components") or {}).get(n) != fingerprints[n]
        ]
        what = (
            f"recipe {size!r} as it was before its {', '.join(changed)} changed"
            if (held_hash, held_size) == (training_hash, size)
            else f"training inputs {str(held_hash)[:12]}, recipe {held_size!r}"
        )
        raise AssetsError(
            f"{out_dir} holds assets prepared for another world or recipe ({what}; wanted "
            f"training inputs {training_hash[:12]}, recipe {size!r}). Use another --out "
            "folder, or delete this one to rebuild."
        )
    if manifest is not None:
        check_assets(out_dir, paths)
        return _with_features(paths, out_dir, features)
    for name in COMPONENTS:
        found = _read_json(out_dir / name / "fingerprint.json")
        if found is not None and found.get("fingerprint") != fingerprints[name]:
            raise AssetsError(
                f"{out_dir / name} was prepared for another world or config (fingerprint "
                f"mismatch); use another --out folder, or delete {out_dir / name} to rebuild."
            )
    folder = SHIPPED_DIR / f"{size}-seed{info['seed']}"
    copies = {n: shipped_component(folder, n, fingerprints[n]) if shipped else None
              for n in COMPONENTS}  # fmt: skip
    logs: dict[str, dict] = {}
    weights: dict[str, str] = {}
    sources: dict[str, str] = {}
    with progress_bar(progress) as bar, reproducible(cfg.threads):
        todo = [n for n in COMPONENTS if not (out_dir / n / "fingerprint.json").is_file()]
        if bar and todo:
            copied = [n for n in todo if copies[n] is not None]
            built = [n for n in todo if copies[n] is None]
            if copied:
                bar.line(f"assets {size}: copying {', '.join(copied)} shipped in {folder}")
            if built:
                reason = shipped_mismatch(folder, built, training_hash) if shipped else None
                bar.line(
                    f"assets {size}: preparing {', '.join(built)} on {cfg.threads} thread(s) "
                    f"into {out_dir} (once; cached)" + (f"; {reason}" if reason else "")
                )
        for name in COMPONENTS:
            target = out_dir / name
            if name not in todo:
                logs[name] = _read_json(target / "log.json") or {}
                found = _read_json(target / "fingerprint.json") or {}
                weights[name] = found.get("weights_sha256") or weights_sha256(target)
                sources[name] = found.get("source", "prepared")
                continue
            start = time.perf_counter()
            with atomic_path(target) as tmp:
                if copies[name] is not None:
                    shutil.copytree(copies[name], tmp)
                    log = _read_json(tmp / "log.json") or {}
                    stamp = _read_json(tmp / "fingerprint.json")
                    if weights_sha256(tmp) != stamp.get("weights_sha256"):
                        raise AssetsError(
                            f"{copies[name]}: its weights are not the ones its fingerprint.json "
                            "records (a damaged checkout?); restore it with git, or run "
                            "`mage-harness prepare --from-recipe`"
                        )
                    atomic_write_json(tmp / "fingerprint.json", {**stamp, "source": "shipped"})
                else:
                    build = build_encoder if name in encoders.ENCODER_IDS else build_llm
                    log = build(name, paths, info, cfg, tmp, bar)
                    log["wall_seconds"] = round(time.perf_counter() - start, 2)
                    atomic_write_json(tmp / "log.json", log)
                    atomic_write_json(
                        tmp / "fingerprint.json",
                        {
                            "fingerprint": fingerprints[name],
                            "world_training_hash": training_hash,
                            "weights_sha256": weights_sha256(tmp),
                            "threads": cfg.threads,
                            "torch": torch.__version__,
                        },
                    )
                weights[name] = weights_sha256(tmp)
            logs[name] = log
            sources[name] = "shipped" if copies[name] is not None else "prepared"
            if bar and copies[name] is None:
                bar.line(f"assets {size}: {name} ready ({log['wall_seconds']:.0f} s)")
    atomic_write_json(
        out_dir / "assets.json",
        {
            "format_version": ASSETS_FORMAT,
            "key": key,
            "size": size,
            "world_content_hash": world_hash,
            "world_training_hash": training_hash,
            "world_seed": info["seed"],
            "world_size": info["size"],
            "components": fingerprints,
            "weights_sha256": weights,
            "threads": cfg.threads,
            "torch": torch.__version__,
            "source": sources,
            "logs": logs,
        },
    )
    return _with_features(paths, out_dir, features)


def shipped_component(folder: Path, name: str, fingerprint: str) -> Path | None:
    """The shipped copy of component ``name`` if it is the one this recipe and world give."""
    found = _read_json(folder / name / "fingerprint.json")
    return folder / name if found is not None and found.get("fingerprint") == fingerprint else None


def shipped_mismatch(folder: Path, names: list[str], training_hash: str) -> str | None:
    """Why shipped components are not copied (None when none of ``names`` is shipped): said
    before a long preparation, so that a user knows why it is not a copy."""
    stamps = [_read_json(folder / n / "fingerprint.json") for n in names]
    stamps = [s for s in stamps if s is not None]
    if not stamps:
        return None
    if stamps[0].get("world_training_hash") != training_hash:
        return (
            f"the shipped ones were trained on world inputs "
            f"{str(stamps[0].get('world_training_hash'))[:12]}, this world's are "
            f"{training_hash[:12]} (another generator, or other Pillow / numpy versions "
            "writing other bytes)"
        )
    return "the shipped ones were prepared with another recipe than this code's"


def _with_features(paths: WorldPaths, out_dir: Path, features: bool) -> Path:
    if features:
        cache_features(paths, out_dir)
    return out_dir


def cache_features(world: WorldPaths | str | Path, assets_dir: str | Path) -> list[Path]:
    """Both encoders' outputs on the world's training images, in ``assets_dir/features``
    (`mage.feature_cache`: what a preset with ``vision.feature_cache: {assets}/features``
    reads, so its first trial need not build them). Returns the files."""
    from mage.config import VisionConfig
    from mage.feature_cache import FeatureCache
    from mage.registry import resolve_encoder
    from mage.vision import build_vision_tower

    paths, _ = resolve_world(world)
    check_assets(assets_dir, paths)
    records = [r for part in (paths.stage1, paths.stage2) for r in json.loads(part.read_text())]
    images = sorted({str(paths.root / r["image"]) for r in records if r.get("image")})
    out = []
    for name in encoders.ENCODER_IDS:
        tower = build_vision_tower(resolve_encoder(VisionConfig(encoder=name), str(assets_dir)))
        cache = FeatureCache.ensure(Path(assets_dir) / "features", tower, images, paths.root)
        out.append(cache.path)
    return out


def check_assets(assets_dir: str | Path, world: WorldPaths | str | Path | None = None) -> dict:
    """Verify prepared assets (every component's fingerprint file, and the world if given);
    returns assets.json. Raises `AssetsError` naming what is wrong."""
    assets_dir = Path(assets_dir)
    manifest = _read_json(assets_dir / "assets.json")
    if manifest is None:
        raise AssetsError(
            f"no prepared assets in {assets_dir} (assets.json missing); run "
            "`mage-harness prepare --world WORLD --out DIR`"
        )
    for name, fingerprint in manifest["components"].items():
        found = _read_json(assets_dir / name / "fingerprint.json")
        if found is None or found.get("fingerprint") != fingerprint:
            raise AssetsError(
                f"{assets_dir / name}: fingerprint does not match {assets_dir / 'assets.json'} "
                "(missing, or copied from other assets); delete the folder and run "
                "`mage-harness prepare` again"
            )
        recorded = (manifest.get("weights_sha256") or {}).get(name) or found.get("weights_sha256")
        if recorded is not None and weights_sha256(assets_dir / name) != recorded:
            raise AssetsError(
                f"{assets_dir / name}: its weights are not the ones recorded in "
                f"{assets_dir / 'assets.json'} (changed or damaged); delete the folder and run "
                "`mage-harness prepare` again"
            )
    if world is not None:
        _, info = resolve_world(world)
        if info["training_hash"] != manifest.get("world_training_hash"):
            raise AssetsError(
                f"assets in {assets_dir} were prepared for world "
                f"{str(manifest.get('world_content_hash'))[:12]}, not for "
                f"{info['content_hash'][:12]} (other training inputs: another seed or size); "
                "prepare assets for this world into another folder"
            )
    return manifest
