"""Running training on several real processes in tests: a gloo process group on the CPU.

`spawn_ranks(fn, world, *args)` starts ``world`` processes with torch's own launcher
(``torch.multiprocessing.spawn``), joins them into a gloo group through a file, and runs
``fn(rank, world, *args)`` in each: the same code path as a Ray Train worker group, without
Ray's start-up cost.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, fn, args) -> None:
    torch.set_num_threads(1)
    # a collective one rank never joins fails after 3 minutes instead of hanging the suite
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(minutes=3),
    )
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn_ranks(fn, world: int, *args) -> None:
    init = Path(tempfile.mkdtemp(prefix="pg-")) / "init"
    try:
        mp.spawn(_entry, args=(world, str(init), fn, args), nprocs=world, join=True)
    finally:
        shutil.rmtree(init.parent, ignore_errors=True)


def train_and_record(rank, world, cfg_dict, out_dir, losses_file, stop_after=None, resume=False):
    """Train stage 2 from the seeded build; rank 0 writes the losses it saw."""
    from mage.config import MageConfig
    from mage.model import MageModel
    from mage.train import seed_build, train_stage

    cfg = MageConfig.from_dict(cfg_dict)
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    losses: list[float] = []
    train_stage(
        model,
        cfg,
        "stage2",
        out_dir,
        callback=lambda step, m: losses.append(m["loss"]),
        stop_after=stop_after,
    )
    if rank == 0:
        Path(losses_file).write_text(json.dumps(losses))


def two_worker_runs(rank, world, cfg_dict, root):
    """Everything the distributed tests need from one 2-process group:

    - ``straight.json``: the losses of an uninterrupted run;
    - ``stopped.json`` / ``continued.json``: a run stopped after 3 steps (its checkpoint is
      copied to ``for-one-worker/`` before it continues), then resumed on the same 2 workers.
    """
    root = Path(root)
    train_and_record(rank, world, cfg_dict, root / "straight", root / "straight.json")
    train_and_record(rank, world, cfg_dict, root / "run", root / "stopped.json", stop_after=3)
    dist.barrier()
    if rank == 0:
        shutil.copytree(root / "run", root / "for-one-worker")
    dist.barrier()
    train_and_record(rank, world, cfg_dict, root / "run", root / "continued.json")


def stage_then_look(rank, world, job_dict, seen_file):
    """`harness.train_worker.run_stage` on every rank, then what each rank finds on return
    (a worker group that evaluates next loads the export at once)."""
    from harness.train_worker import StageJob, run_stage

    job = StageJob(**job_dict)
    run_stage(job)
    folder = Path(job.folder)
    seen = {
        "export": (folder / "model" / "mage.json").is_file(),
        "done": (folder / "done.json").is_file(),
    }
    Path(f"{seen_file}.{rank}").write_text(json.dumps(seen))


def eval_with_rank0_failing(rank, world, checkpoint, data, out, seen_file):
    """`harness.eval.evaluate` on every rank, rank 0's writing failing as on a full disk:
    what each rank ends with (every rank must end, not wait for rank 0 forever)."""
    import os

    import harness.eval as ev

    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    if rank == 0:

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        ev.write_outputs = full_disk
    try:
        ev.evaluate(checkpoint, tasks="mme", data_dir=data, out_dir=out, batch_size=4, limit=8)
        ended = "returned"
    except ev.EvalError as err:
        ended = str(err)
    Path(f"{seen_file}.{rank}").write_text(ended)
