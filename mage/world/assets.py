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
splits of the world they were prepared with, ``world_content_hash``). Preparing into a folder whose assets have another
fingerprint (another world, another size or config) is refused with an `AssetsError`, as is
loading them with `check_assets` against a different world, or with weights whose SHA-256 is
not the recorded one: stale encoders or features would silently misalign with the images.

Reproducible: a recipe fixes its torch thread count (`AssetConfig.threads`; float sums depend
on how work is split between threads) and preparation runs with deterministic algorithms from
seeded generators, so the same world and recipe give the same weights, bit for bit, on a
machine of the same kind (same CPU instruction set, torch build and library versions; other
CPUs may pick other kernels). ``assets.json`` records each component's weight hash.

Shipped: the repository carries the ``demo`` recipe's prepared world-vit and world-llm for
the demo world (`SHIPPED_DIR`; world-resnet, 5.7 MB of which 4 MB is a head the tower does not
use, is built on first use, about 40 s on 2 cores); a shipped component whose fingerprint is
the one this code would build (recipe, threads, world training inputs) is copied instead of
trained (the LLM takes about 10 min on 2 cores), its weights checked against the SHA-256 its
``fingerprint.json`` records. ``mage-harness prepare --from-recipe`` trains every component
and says whether the weights equal the shipped ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import torch

from mage.io import atomic_path, atomic_write_json
from mage.world import encoders, text, textlm
from mage.world.generate import FORMAT_VERSION as WORLD_FORMAT
from mage.world.generate import WorldPaths, load_world
from mage.world.progress import progress_bar
from mage.world.scene import Scene
from mage.world.vocab import world_tokenizer

ASSETS_FORMAT = 2  # 2: thread count in the fingerprints, weight hashes in assets.json
LLM_ID = "world-llm"
COMPONENTS = (*encoders.ENCODER_IDS, LLM_ID)
SHIPPED_DIR = Path(__file__).resolve().parent / "prepared"  # <recipe>-seed<seed>/
WEIGHT_FILES = ("open_clip_model.safetensors", "model.safetensors")


class AssetsError(ValueError):
    """Assets are missing or were prepared for something else; the message says what to do."""


@dataclass(frozen=True)
class AssetConfig:
    vit: encoders.ClipTrainConfig
    resnet: encoders.ClipTrainConfig
    llm: textlm.TextLMConfig
    threads: int = 2  # torch threads while preparing: part of the recipe (see the docstring)

    def component(self, name: str):
        return {"world-vit": self.vit, "world-resnet": self.resnet, LLM_ID: self.llm}[name]


# The demo encoders, pretrained contrastively (about 1 min each on 1 thread).
_DEMO_ENCODERS = dict(
    vit=encoders.ClipTrainConfig(steps=600),
    resnet=encoders.ClipTrainConfig(steps=300),
)
# A world LLM taught the world's questions from text (caption in the prompt) at lr 1e-3:
# text-only yes/no 0.757, but lettered multiple choice stays at chance (0.261) (format 2).
_PLAIN_LLM = textlm.TextLMConfig(steps=2000, num_layers=4, mcq_hint_rate=0.5)
# The world LLM every demo variant starts from: option-lookup drills alone first, then the
# mix with some drills and hinted questions kept, all at lr 3e-4 (docs/cpu-world.md,
# "Lettered choice"): text-only MCQ 0.482, yes/no 0.850 as prepared; about 16 min on 1 thread.
_LOOKUP_LLM = replace(
    _PLAIN_LLM,
    steps=5000,
    lr=3e-4,
    lookup_steps=1300,
    kind_weights=(
        ("caption", 0.1),
        ("short", 0.2),
        ("yes_no", 0.3),
        ("mcq", 0.25),
        ("option_lookup", 0.05),
        ("mcq_hinted", 0.1),
    ),
)

ASSET_CONFIGS = {
    # seconds: enough to exercise every code path, not to learn much
    "test": AssetConfig(
        vit=encoders.ClipTrainConfig(steps=8, batch_size=32, warmup=2),
        resnet=encoders.ClipTrainConfig(steps=8, batch_size=32, warmup=2),
        llm=textlm.TextLMConfig(steps=12, num_layers=2, batch_size=16, warmup=2),
        threads=1,
    ),
    # the embedded default
    "demo": AssetConfig(**_DEMO_ENCODERS, llm=_LOOKUP_LLM),
    # the same encoders with the earlier world LLM that cannot pick lettered options
    "demo-plain": AssetConfig(**_DEMO_ENCODERS, llm=_PLAIN_LLM),
}


def _hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def component_fingerprint(name: str, cfg: AssetConfig, training_hash: str) -> str:
    """What determines a component's weights: its config, architecture, threads, and the
    world's training inputs (``world.json``'s ``training_hash``)."""
    extra = encoders.clip_kwargs(name) if name in encoders.ENCODER_IDS else None
    return _hash(
        {
            "format": ASSETS_FORMAT,
            "component": name,
            "config": asdict(cfg.component(name)),
            "architecture": extra,
            "threads": cfg.threads,
            "world_training_inputs": training_hash,
        }
    )


def weights_sha256(component_dir: Path) -> str:
    """SHA-256 of a component's weight file (what a reviewer compares across machines)."""
    path = next((component_dir / f for f in WEIGHT_FILES if (component_dir / f).is_file()), None)
    if path is None:
        raise AssetsError(f"{component_dir}: no weight file ({' or '.join(WEIGHT_FILES)})")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """Torch with a fixed thread count and deterministic algorithms, restored afterwards."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def assets_cache_name(size: str, seed: int) -> str:
    """The default cache folder's name for a world's assets, e.g. ``demo-seed0-1a2b3c4d5e``:
    the hash of the size's asset configs and of the world's format is part of the name, so a
    changed recipe or world generator (a new release) prepares fresh assets beside the old
    ones instead of refusing them."""
    if size not in ASSET_CONFIGS:
        raise AssetsError(f"unknown assets size {size!r}; choose one of {sorted(ASSET_CONFIGS)}")
    config = asdict(ASSET_CONFIGS[size])
    digest = _hash({"format": ASSETS_FORMAT, "config": config, "world_format": WORLD_FORMAT})
    return f"{size}-seed{seed}-{digest[:10]}"


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
    images (`mage.world.features`)."""
    if size not in ASSET_CONFIGS:
        raise AssetsError(f"unknown assets size {size!r}; choose one of {sorted(ASSET_CONFIGS)}")
    cfg = ASSET_CONFIGS[size]
    paths, info = resolve_world(world)
    world_hash, training_hash = info["content_hash"], info["training_hash"]
    out_dir = Path(out_dir)
    fingerprints = {name: component_fingerprint(name, cfg, training_hash) for name in COMPONENTS}
    key = _hash({"size": size, "components": fingerprints})
    manifest = _read_json(out_dir / "assets.json")
    if manifest is not None and manifest.get("key") != key:
        raise AssetsError(
            f"{out_dir} holds assets prepared for another world or config (training inputs "
            f"{str(manifest.get('world_training_hash'))[:12]}, size {manifest.get('size')!r}; "
            f"wanted {training_hash[:12]}, size {size!r}). Use another --out folder, or "
            "delete this one to rebuild."
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
                    build = _build_encoder if name in encoders.ENCODER_IDS else _build_llm
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
        from mage.world.features import cache_features

        for name in encoders.ENCODER_IDS:
            cache_features(paths, out_dir, name)
    return out_dir


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


# --------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------


def _build_encoder(name, paths: WorldPaths, info, cfg: AssetConfig, out: Path, bar) -> dict:
    records = json.loads(paths.stage1.read_text())
    images = encoders.load_images([paths.root / r["image"] for r in records])
    captions = [r["caption"] for r in records]
    train_cfg = cfg.component(name)
    task = bar.add_task(f"pretrain {name} (CLIP)", total=train_cfg.steps) if bar else None
    model, kwargs, log = encoders.train_clip(
        name,
        images,
        captions,
        train_cfg,
        seed=info["seed"],
        on_step=(lambda _s: bar.advance(task)) if bar else None,
    )
    held_out = _held_out_pairs(paths)
    if held_out:
        log["held_out_retrieval_top1"] = encoders.retrieval_accuracy(model, *held_out)
    encoders.save_clip(model, kwargs, out)
    return log


def _held_out_pairs(paths: WorldPaths, n: int = 256):
    """(images, captions) of up to n SEED-Bench held-out images, for a retrieval check."""
    dd = datasets.load_from_disk(str(paths.bench["seedbench"]))
    split = next(iter(dd.values()))
    scenes = json.loads(paths.scenes.read_text())
    rows = split.select(range(min(n, len(split))))
    arrays = [np.asarray(r["image"][0].convert("RGB")) for r in rows]
    caps = [text.caption(Scene.from_dict(scenes[r["question_id"]])) for r in rows]
    if not arrays:
        return None
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), caps


def _build_llm(name, paths: WorldPaths, info, cfg: AssetConfig, out: Path, bar) -> dict:
    tokenizer = world_tokenizer()
    records = json.loads(paths.stage2.read_text())
    on_step = None
    if bar:  # one task per phase: a log gets a line when the drills end, another at the end
        lookup = cfg.llm.lookup_steps
        phases = [("option-lookup drills", lookup)] if lookup else []
        phases.append(("question mix", cfg.llm.steps - lookup))
        tasks = [bar.add_task(f"pretrain world-llm (text): {p}", total=n) for p, n in phases]

        def on_step(step: int) -> None:
            bar.advance(tasks[0] if step < lookup else tasks[-1])

    model, log = textlm.train_text_llm(
        records, tokenizer, cfg.llm, seed=info["seed"], on_step=on_step
    )
    log["text_eval"] = textlm.evaluate_text_llm(model, tokenizer, text_eval_items(paths))
    if bar:
        scores = ", ".join(
            f"{k} {v:.3f}" for k, v in log["text_eval"].items() if not k.endswith("_n")
        )
        bar.line(f"world-llm text-only check (caption in the prompt): {scores}")
    textlm.save_text_llm(model, tokenizer, out)
    return log


def text_eval_items(paths: WorldPaths) -> dict[str, list[dict]]:
    """Held-out benchmark questions with each image's caption, for the text-only check."""
    scenes = json.loads(paths.scenes.read_text())

    def caption_of(image_id: str) -> str:
        return text.caption(Scene.from_dict(scenes[image_id]))

    def rows(bench: str, columns: list[str]):
        dd = datasets.load_from_disk(str(paths.bench[bench]))
        return next(iter(dd.values())).select_columns(columns)

    yes_no = [
        {
            "caption": caption_of(r["question_id"].split("/")[-1].removesuffix(".png")),
            "question": r["question"],
            "answer": r["answer"],
            "pair": r["question_id"],
        }
        for r in rows("mme", ["question_id", "question", "answer"])
    ]
    mcq = [
        {
            "caption": caption_of(r["question_id"]),
            "answer": r["answer"],
            "prompt": text.seed_prompt(r["question"], tuple(r[f"choice_{c}"] for c in "abcd")),
        }
        for r in rows(
            "seedbench",
            ["question_id", "question", "answer", "choice_a", "choice_b", "choice_c", "choice_d"],
        )
    ]
    mm = rows("mmbench", ["index", "question", "answer", "A", "B", "C", "D"])
    for r in mm:
        if r["index"] < 1_000_000:
            iid = f"mmbench-{r['index']:06d}"
            mcq.append(
                {
                    "caption": caption_of(iid),
                    "answer": r["answer"],
                    "prompt": text.mmbench_prompt(r["question"], tuple(r[c] for c in "ABCD")),
                }
            )
    return {"yes_no": yes_no, "mcq": mcq}
