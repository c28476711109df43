"""`mage-harness train`: train one MAGE variant (stage 1 then stage 2) and save a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.overrides import (
    add_override_argument,
    load_config_file,
    parse_overrides,
    preset_config,
)


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
    q.add_argument(
        "--memory",
        action="store_true",
        help="also print each stage's per-GPU memory estimate (weights, gradients, optimizer, "
        "activations with and without activation checkpointing)",
    )
    q.add_argument(
        "--workers",
        type=int,
        action="append",
        default=None,
        help="GPUs the stage is sharded over (repeatable: --workers 1 --workers 8); default 1",
    )
    q.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="tokens per sample for the activation estimate (default: max_length, a bound)",
    )
    add_override_argument(q)
    q.set_defaults(func=_params)


STAGES = ("stage1", "stage2")


def is_run_dir(path: Path) -> bool:
    """A folder `train` wrote: its config.yaml beside a stage or checkpoint folder."""
    return (path / "config.yaml").is_file() and any(
        (path / name).is_dir() for name in (*STAGES, "checkpoint")
    )


def _checked_config(args):
    """The run's config and stages, every argument and input checked before any work."""
    from harness.preflight import check_config_inputs
    from mage.config import ConfigError
    from mage.io import check_output_dir

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {args.threads}")
    stages = [s.strip() for s in args.stages.split(",")]
    if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
        raise ConfigError(f"--stages {args.stages!r}: expected stage1, stage2 or stage1,stage2")
    cfg = (
        load_config_file(args.config) if args.config else preset_config(args.preset or "tiny-test")
    )
    cfg = cfg.with_overrides(parse_overrides(args.overrides))
    if cfg.seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {cfg.seed}")
    from mage.train.parallel import check_training_dtype

    check_training_dtype(cfg)
    if check_output_dir(args.out, "a training run folder", is_run_dir):  # resumed: its state
        from mage.checkpoint_check import check_training_checkpoint

        _same_config(args.out, cfg)
        for stage in stages:
            check_training_checkpoint(args.out / stage)
    check_config_inputs(cfg, stages)
    return cfg, stages


def _dotted(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same_config(run: Path, cfg) -> None:
    """A run folder is resumed only with the config it was trained with: its finished stages
    and checkpoints belong to that config (and its config.yaml must keep describing them)."""
    from mage.config import ConfigError, MageConfig

    saved = _dotted(MageConfig.load(run / "config.yaml").to_dict())
    asked = _dotted(cfg.to_dict())
    changed = sorted(k for k in saved.keys() | asked.keys() if saved.get(k) != asked.get(k))
    if changed:
        shown = ", ".join(changed[:6]) + (
            f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        )
        raise ConfigError(
            f"{run} was trained with another config ({shown} differ): resume it with "
            f"--config {run / 'config.yaml'}, or train into a new --out"
        )


def _train(args) -> int:
    cfg, stages = _checked_config(args)
    import os

    import torch
    from rich.console import Console

    from harness.stage_cache import is_done
    from harness.train_worker import StageJob, run_stage

    console = Console(stderr=True)
    rank, device = _init_distributed()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        cfg.save(args.out / "config.yaml")
    threads = args.threads or torch.get_num_threads()
    for stage in stages:
        folder = args.out / stage
        if is_done(folder):
            console.print(f"{stage}: done already ({folder})")
            continue
        init = args.out / "stage1" / "model" if stage == "stage2" else None

        def show(stage_name, step, metrics):
            total = metrics.get("total_steps", 0)
            if step % max(1, total // 10) == 0 or step == total:
                console.print(f"{stage_name} {step}/{total} loss {metrics['loss']:.4f}")

        job = StageJob(
            config=cfg.to_dict(),
            stage=stage,
            folder=str(folder),
            init_from=str(init) if init and (init / "trainable.safetensors").is_file() else None,
            threads=threads,
        )
        run_stage(job, device=device, on_step=show if rank == 0 else None)
    final = args.out / "stage2" / "model"
    link = args.out / "checkpoint"
    if rank == 0 and final.is_dir() and not link.exists():
        os.symlink(os.path.relpath(final, args.out), link)
    if rank == 0 and final.is_dir():
        console.print(f"saved {link} (-> {final})")
    return 0


def _init_distributed():
    """Under torchrun (WORLD_SIZE > 1): join the process group, so stages shard (FSDP2)."""
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), device


def _params(args) -> int:
    from mage.hub import check_config_hub_ids
    from mage.model import MageModel

    overrides = {"llm.random_init": True, "vision.pretrained": "none"}
    cfg = preset_config(args.preset, "PRESET")
    cfg = cfg.with_overrides({**overrides, **parse_overrides(args.overrides)})
    check_config_hub_ids(cfg)  # an LLM without a registry architecture is read from the Hub
    model = MageModel.build(cfg, device="meta")
    counts = model.param_counts()
    print(f"{args.preset}: {model.num_image_tokens} image tokens")
    for part, n in {**counts, "total": sum(counts.values())}.items():
        print(f"  {part:7s} {n / 1e6:10.1f}M")
    if args.memory:
        _print_memory(cfg, args.workers or [1], args.tokens)
    return 0


def _print_memory(cfg, workers: list[int], tokens: int | None) -> None:
    from mage.train.memory import GIB, estimate

    print(
        f"\nper-GPU memory estimate, GiB ({cfg.llm.dtype} compute, fp32 master weights and "
        f"AdamW states, micro-batch of {tokens or cfg.max_length}-token samples; see "
        "mage/train/memory.py)"
    )
    head = "stage   N  micro  weights  grads  optim  gathered  logits  acts  acts(ckpt)  total  total(ckpt)"
    print(head)
    for n in workers:
        for stage, m in estimate(cfg, n, tokens).items():
            g = m.as_gib()
            print(
                f"{stage}  {n:2d}  {m.micro_batch:5d}  {g['weights']:7.1f}  {g['gradients']:5.1f}  "
                f"{g['optimizer']:5.1f}  {g['gathered']:8.1f}  {g['logits']:6.1f}  "
                f"{g['activations']:4.1f}  {g['activations_checkpointed']:10.1f}  "
                f"{m.total_with(False) / GIB:5.1f}  {m.total_with(True) / GIB:11.1f}"
            )
