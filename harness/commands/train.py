"""`mage-harness train`: train one MAGE variant (stage 1 then stage 2) and save a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.overrides import add_override_argument, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one variant (stage 1 -> stage 2) and save a checkpoint",
        description="Train a MAGE variant from a preset or a config YAML. The resolved config "
        "is dumped beside the checkpoint; an interrupted run resumes from its last checkpoint.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="preset id (see `mage.presets.PRESETS`)")
    src.add_argument("--config", type=Path, help="a MageConfig YAML/JSON file")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--stages", default="stage1,stage2", help="which stages to run, in order")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_override_argument(p)
    p.set_defaults(func=_train)

    q = sub.add_parser(
        "params",
        help="parameter count by part (tower / IAN / LLM) at real shapes, on the meta device",
        description="Builds the preset with random weights on PyTorch's meta device: no memory "
        "is allocated and nothing is downloaded.",
    )
    q.add_argument("preset", help="preset id, e.g. mage-7b")
    add_override_argument(q)
    q.set_defaults(func=_params)


def _train(args) -> int:
    import torch
    from rich.console import Console

    from mage.config import MageConfig
    from mage.model import MageModel
    from mage.presets import get_preset
    from mage.train import seed_build, train_stage

    console = Console(stderr=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = MageConfig.load(args.config) if args.config else get_preset(args.preset or "tiny-test")
    cfg = cfg.with_overrides(parse_overrides(args.overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    cfg.save(args.out / "config.yaml")
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    for stage in args.stages.split(","):
        total = getattr(cfg, stage).steps

        def show(step, metrics, stage=stage, total=total):
            if step % max(1, total // 10) == 0 or step == total:
                console.print(f"{stage} {step}/{total} loss {metrics['loss']:.4f}")

        train_stage(model, cfg, stage, args.out / stage, callback=show)
    model.save_pretrained(args.out / "checkpoint")
    console.print(f"saved {args.out / 'checkpoint'}")
    return 0


def _params(args) -> int:
    from mage.model import MageModel
    from mage.presets import get_preset

    overrides = {"llm.random_init": True, "vision.pretrained": "none"}
    cfg = get_preset(args.preset).with_overrides({**overrides, **parse_overrides(args.overrides)})
    model = MageModel.build(cfg, device="meta")
    counts = model.param_counts()
    print(f"{args.preset}: {model.num_image_tokens} image tokens")
    for part, n in {**counts, "total": sum(counts.values())}.items():
        print(f"  {part:7s} {n / 1e6:10.1f}M")
    return 0
