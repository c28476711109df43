"""`mage-harness data synth` and `mage-harness prepare`: the synthetic world and its assets.

``data synth OUT --seed N [--size test|demo] [--force]`` writes a world (images, stage1.json,
stage2.json, held-out MME/MMBench/SEED splits in their official schemas, world.json) into a
new or empty folder; ``--force`` replaces an existing world, never a folder of other files.
``data check FILE [--image-root DIR]`` checks a LLaVA-format training file: every record
(conversations alternate, starting with the human turn; image files exist) and every image
opened once, in parallel; unreadable ones are listed by record.
``prepare [--world DIR] [--out DIR] [--size test|demo] [--recipe R] [--from-recipe]``
pretrains the world's tiny encoders (world-vit, world-resnet) and LLM (world-llm) with the
asset recipe R (default: the size) into the assets folder the registry reads as ``{assets}``
(default: ``$MAGE_ASSETS_DIR`` as is, the folder a sweep and the config read too, else
``<R>-seed<N>-<recipe hash>`` below ``~/.cache/mage-harness/assets``, where a sweep looks), or
copies the prepared assets shipped with the package when they match; ``--from-recipe`` trains
them anyway (into ``<folder>-rebuilt`` by default) and says whether the weights match the
shipped ones. Without ``--world`` it uses (and if needed generates) the default world
(``<size>-seed<N>`` below ``$MAGE_WORLD_DIR`` or ``~/.cache/mage-harness/world``).
``data tools CAPTIONS OUT [--seed N]`` turns a captioned LLaVA JSON (LCS-558K) into
tool-calling samples (`mage.tools.data.convert_captions_to_tool_samples`): the stage-2 tool
data of the ``mage-7b-tools`` preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SIZES = ("test", "demo")
# mage.world.asset_recipes.ASSET_CONFIGS (a test checks)
RECIPES = ("test", "demo", "demo-4layer", "demo-lookup", "demo-plain")


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthetic data: `data synth OUT --seed N`")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    synth = data_sub.add_parser(
        "synth",
        help="generate the synthetic shapes world",
        description="Generate the synthetic shapes world: training images and LLaVA-format "
        "JSONs, and held-out MME / MMBench / SEED splits that lmms-eval scores with its own code.",
    )
    synth.add_argument("out", type=Path, help="world folder to write (a new or empty folder)")
    synth.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    synth.add_argument(
        "--size", choices=SIZES, default="demo", help="test: seconds; demo: 10k images"
    )
    synth.add_argument("--quiet", action="store_true", help="no progress display")
    synth.add_argument(
        "--force", action="store_true", help="replace OUT if it holds a world (only then)"
    )
    synth.set_defaults(func=_synth)
    tools = data_sub.add_parser(
        "tools",
        help="tool-calling samples from a captioned LLaVA JSON",
        description="Write tool-calling samples (image_generation with the caption as prompt, "
        "text_to_speech describing the picture) from a captioned LLaVA JSON such as LCS-558K's "
        "blip_laion_cc_sbu_558k.json; mage-7b-tools reads them from "
        "{data}/MAGE-Tools/lcs558k_tool_calls.json.",
    )
    tools.add_argument("captions", type=Path, help="captioned LLaVA-format JSON to read")
    tools.add_argument("out", type=Path, help="tool-calling JSON to write (must not exist)")
    tools.add_argument("--seed", type=int, default=0, help="seed of the prompt wording")
    tools.set_defaults(func=_tools)
    check = data_sub.add_parser(
        "check",
        help="check a LLaVA-format training file: records, and every image opened once",
        description="Check every record of a LLaVA-format JSON (conversations alternate, "
        "starting with the human turn; image files exist) and open every image once, in "
        "parallel; unreadable images are listed by record (exit 1). Run before training.",
    )
    check.add_argument("file", type=Path, help="a LLaVA-format conversation JSON")
    check.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="folder image paths are relative to (default: the file's folder)",
    )
    check.add_argument("--workers", type=int, default=None, help="parallel image readers")
    check.set_defaults(func=_check)
    from harness.commands.benchmarks import register as register_benchmarks

    register_benchmarks(data_sub)
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    prep = sub.add_parser(
        "prepare",
        help="pretrain the world's tiny encoders and LLM (cached)",
        description="Pretrain world-vit / world-resnet (open_clip CLIP, contrastive on captions) "
        "and world-llm (tiny Llama, text-only) for a world. Cached: a second run with the same "
        "world and size returns at once; a folder prepared for another world is refused. The "
        "default folder is where a sweep looks: $MAGE_ASSETS_DIR as is when set, else "
        "<recipe>-seed<seed>-<recipe hash> below ~/.cache/mage-harness/assets.",
    )
    prep.add_argument(
        "--world",
        type=Path,
        default=None,
        help="world folder (default: <size>-seed<seed> below $MAGE_WORLD_DIR)",
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
        help=(
            "asset recipe (default: --size); demo-4layer: the demo's earlier 4-layer world "
            "LLM; demo-lookup: that LLM before its "
            "describe-from-context phase; demo-plain: the earlier world LLM, not drilled on "
            "lettered choice (see docs/cpu-world.md)"
        ),
    )
    prep.add_argument(
        "--features", action="store_true", help="also cache encoder features of training images"
    )
    prep.add_argument(
        "--from-recipe",
        action="store_true",
        help="train from the recipe even where prepared assets are shipped (default folder: "
        "the cache folder with '-rebuilt' appended), then say whether the weights match them",
    )
    prep.add_argument("--quiet", action="store_true", help="no progress display")
    prep.set_defaults(func=_prepare)


def _synth(args) -> int:
    from mage.io import PathError, check_output_dir
    from mage.world.generate import generate_world, is_world_dir

    if check_output_dir(args.out, "a world folder", is_world_dir, replaces=True) and not args.force:
        raise PathError(
            f"{args.out}: holds a world already; pass --force to replace it (only a folder "
            "with world.json, written by `data synth`, is ever replaced)"
        )
    start = time.perf_counter()
    paths = generate_world(args.out, seed=args.seed, size=args.size, progress=not args.quiet)
    info = paths.info()
    print(json.dumps({"world": str(paths.root), **info}, indent=2))
    print(f"generated in {time.perf_counter() - start:.1f} s")
    return 0


def _tools(args) -> int:
    from mage.tools.data import convert_captions_to_tool_samples

    if args.out.exists():
        print(f"error: {args.out} exists; remove it or choose another path", file=sys.stderr)
        return 2
    try:
        path = convert_captions_to_tool_samples(args.captions, args.out, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(path), "samples": len(json.loads(path.read_text()))}))
    return 0


def _check(args) -> int:
    import sys

    from mage.config import DataSource
    from mage.data_check import read_source, unreadable_images
    from mage.records import DataError

    if args.workers is not None and args.workers < 1:
        raise DataError(f"--workers must be a positive integer, got {args.workers}")
    root = str(args.image_root) if args.image_root is not None else None
    start = time.perf_counter()
    records = read_source(DataSource(path=str(args.file), image_root=root))
    bad = unreadable_images(records, args.workers)
    images = len({r.image_path for r in records if r.image_path is not None})
    took = time.perf_counter() - start
    print(f"{args.file}: {len(records)} records, {images} images opened in {took:.1f} s")
    for line in bad:
        print(f"  {line}")
    if bad:
        print(
            f"mage-harness data check: {args.file}: {len(bad)} record(s) with an unreadable "
            "image (listed above); fix or drop them before training",
            file=sys.stderr,
        )
        return 1
    return 0


def is_assets_dir(path: Path) -> bool:
    """A folder `prepare` wrote: assets.json, or a component it finished (fingerprint.json)."""
    from mage.world.asset_recipes import COMPONENTS

    return (path / "assets.json").is_file() or any(
        (path / name / "fingerprint.json").is_file() for name in COMPONENTS
    )


def _load_world(path: Path):
    """`load_world`, with a damaged world.json reported as the folder's fault."""
    from mage.world.generate import WorldError, load_world

    try:
        return load_world(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WorldError(
            f"{path / 'world.json'}: damaged ({err}); regenerate the world with "
            "`mage-harness data synth DIR --force`"
        ) from None


def _prepare(args) -> int:
    from mage.io import check_output_dir
    from mage.world.assets import prepare_assets
    from mage.world.generate import default_world_dir, ensure_world
    from mage.world.source import assets_dir_for

    start = time.perf_counter()
    world = None if args.world is None else _load_world(args.world)
    seed = args.seed if world is None else world.info()["seed"]
    recipe = args.recipe or args.size
    out = args.out
    if out is None:  # the folder a sweep of this world and recipe reads
        out = assets_dir_for(recipe, seed)
        out = out.with_name(f"{out.name}-rebuilt") if args.from_recipe else out
    check_output_dir(out, "an assets folder", is_assets_dir)  # before any work; no user files
    if world is None:
        root = default_world_dir() / f"{args.size}-seed{args.seed}"  # where sweeps look too
        world = ensure_world(root, args.seed, args.size, progress=not args.quiet)
    prepare_assets(
        world,
        out,
        size=recipe,
        progress=not args.quiet,
        features=args.features,
        shipped=not args.from_recipe,
    )
    manifest = json.loads((out / "assets.json").read_text())
    summary = {
        "assets": str(out),
        "world": str(world.root),
        "size": manifest["size"],
        "source": manifest.get("source"),
        "weights_sha256": manifest.get("weights_sha256"),
        "logs": manifest["logs"],
    }
    print(json.dumps(summary, indent=2))
    if args.from_recipe:
        print(_compare_with_shipped(manifest))
    print(
        f"done in {time.perf_counter() - start:.1f} s (a sweep of this world finds them; "
        f"elsewhere set assets_dir or MAGE_ASSETS_DIR={out})"
    )
    return 0


def _compare_with_shipped(manifest: dict) -> str:
    """Whether freshly prepared weights are the shipped ones, component by component."""
    from mage.world.assets import SHIPPED_DIR

    folder = SHIPPED_DIR / f"{manifest['size']}-seed{manifest['world_seed']}"
    lines = []
    for name, digest in manifest["weights_sha256"].items():
        path = folder / name / "fingerprint.json"
        stamp = json.loads(path.read_text()) if path.is_file() else None
        if stamp is None:
            lines.append(f"  {name}: not shipped")
        elif stamp.get("fingerprint") != manifest["components"][name]:
            lines.append(f"  {name}: shipped for another recipe or world (not comparable)")
        else:
            same = stamp.get("weights_sha256") == digest
            lines.append(
                f"  {name}: {'identical to' if same else 'DIFFERENT from'} the shipped weights"
            )
    return f"weights against the shipped assets in {folder}:\n" + "\n".join(lines)
