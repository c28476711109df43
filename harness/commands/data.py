"""`mage-harness data synth` and `mage-harness prepare`: the synthetic world and its assets.

``data synth OUT --seed N [--size test|demo]`` writes a world (images, stage1.json,
stage2.json, held-out MME/MMBench/SEED splits in their official schemas, world.json).
``prepare [--world DIR] [--out DIR] [--size test|demo] [--recipe R]`` pretrains the world's
tiny encoders (world-vit, world-resnet) and LLM (world-llm) with the asset recipe R (default:
the size) into the assets folder the registry reads as ``{assets}`` (default
``<R>-seed<N>-<recipe hash>`` below ``$MAGE_ASSETS_DIR``); without ``--world`` it uses (and if
needed generates) the default world (``$MAGE_WORLD_DIR``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SIZES = ("test", "demo")
RECIPES = ("test", "demo", "demo-plain")  # mage.world.assets.ASSET_CONFIGS (checked by a test)


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthetic data: `data synth OUT --seed N`")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    synth = data_sub.add_parser(
        "synth",
        help="generate the synthetic shapes world",
        description="Generate the synthetic shapes world: training images and LLaVA-format "
        "JSONs, and held-out MME / MMBench / SEED splits that lmms-eval scores with its own code.",
    )
    synth.add_argument("out", type=Path, help="world folder to write (replaced atomically)")
    synth.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    synth.add_argument(
        "--size", choices=SIZES, default="demo", help="test: seconds; demo: 10k images"
    )
    synth.add_argument("--quiet", action="store_true", help="no progress display")
    synth.set_defaults(func=_synth)
    from harness.commands.benchmarks import register as register_benchmarks

    register_benchmarks(data_sub)
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    prep = sub.add_parser(
        "prepare",
        help="pretrain the world's tiny encoders and LLM (cached)",
        description="Pretrain world-vit / world-resnet (open_clip CLIP, contrastive on captions) "
        "and world-llm (tiny Llama, text-only) for a world. Cached: a second run with the same "
        "world and size returns at once; a folder prepared for another world is refused. The "
        "default folder, <size>-seed<seed>-<recipe hash> below $MAGE_ASSETS_DIR or "
        "~/.cache/mage-harness/assets, is where a sweep looks.",
    )
    prep.add_argument(
        "--world", type=Path, default=None, help="world folder (default: $MAGE_WORLD_DIR)"
    )
    prep.add_argument("--out", type=Path, default=None, help="assets folder (default: see above)")
    prep.add_argument(
        "--size", choices=SIZES, default="demo", help="training budget (default demo)"
    )
    prep.add_argument(
        "--seed", type=int, default=0, help="seed of the default world if it is generated"
    )
    prep.add_argument(
        "--recipe",
        choices=RECIPES,
        default=None,
        help="asset recipe (default: --size); demo-plain: the earlier world LLM, not drilled on lettered choice (see docs/cpu-world.md)",
    )
    prep.add_argument(
        "--features", action="store_true", help="also cache encoder features of training images"
    )
    prep.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    prep.add_argument("--quiet", action="store_true", help="no progress display")
    prep.set_defaults(func=_prepare)


def _synth(args) -> int:
    from mage.world.generate import generate_world

    start = time.perf_counter()
    paths = generate_world(args.out, seed=args.seed, size=args.size, progress=not args.quiet)
    info = paths.info()
    print(json.dumps({"world": str(paths.root), **info}, indent=2))
    print(f"generated in {time.perf_counter() - start:.1f} s")
    return 0


def _prepare(args) -> int:
    import torch

    from mage.registry import default_assets_dir
    from mage.world.assets import assets_cache_name, prepare_assets
    from mage.world.generate import default_world_dir, ensure_world, load_world

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.world is None:
        root = default_world_dir() / f"{args.size}-seed{args.seed}"  # where sweeps look too
        world = ensure_world(root, args.seed, args.size, progress=not args.quiet)
    else:
        world = load_world(args.world)
    recipe = args.recipe or args.size
    out = args.out or Path(default_assets_dir()) / assets_cache_name(recipe, args.seed)
    prepare_assets(world, out, size=recipe, progress=not args.quiet, features=args.features)
    manifest = json.loads((out / "assets.json").read_text())
    summary = {
        "assets": str(out),
        "world": str(world.root),
        "size": manifest["size"],
        "logs": manifest["logs"],
    }
    print(json.dumps(summary, indent=2))
    print(f"done in {time.perf_counter() - start:.1f} s (set MAGE_ASSETS_DIR={out} to use them)")
    return 0
