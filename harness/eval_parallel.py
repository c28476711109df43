"""Data-parallel evaluation: the process group, what crosses it, and the launcher.

lmms-eval does the sharding itself: each rank builds requests for documents ``rank,
rank + N, ...`` (``Task.build_all_requests(rank, world_size)``), pads shorter shards with
copies so every rank runs as many requests, and gathers per-sample logs and metrics on rank
0, which alone aggregates. `harness.eval.evaluate` adds what lmms-eval leaves out:

- `process_group()`: this process's (rank, world size) from an initialised
  ``torch.distributed`` group, checked against the ``RANK`` / ``WORLD_SIZE`` variables that
  lmms-eval reads (set from the group where the launcher left them unset);
- `gather_to_all` / `broadcast`: each rank's timings to every rank (for the costs), and rank
  0's result (or its error) to the others, so that every rank returns the same thing;
- `eval_costs`: samples/s and device-hours per benchmark from the ranks' timings;
- `launch(workers, ...)`: ``mage-harness eval --workers N`` starts N processes with torch's
  own launcher (``torch.distributed.launcher.api.elastic_launch``, what ``torchrun
  --standalone`` runs), each joins a gloo (CPU) or NCCL (GPU) group and calls ``evaluate``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record


class ProcessGroupError(RuntimeError):
    """The launcher's variables and the process group disagree, or there is no group."""


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        size = int(os.environ.get("WORLD_SIZE", 1))
        if size > 1:
            raise ProcessGroupError(
                f"WORLD_SIZE={size} but torch.distributed is not initialised: call "
                "torch.distributed.init_process_group() on every rank first (gloo on CPU, "
                "nccl on GPU), or run `mage-harness eval --workers N`"
            )
        return 0, 1
    rank, size = dist.get_rank(), dist.get_world_size()
    for name, value in (("RANK", rank), ("WORLD_SIZE", size)):
        given = os.environ.get(name)
        if given is None:
            os.environ[name] = str(value)  # lmms-eval's evaluator reads these, not the group
        elif int(given) != value:
            raise ProcessGroupError(
                f"{name}={given} in the environment but the process group says {value}"
            )
    return rank, size


def gather_to_all(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (just [value] outside a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def eval_costs(
    timings: list[dict], names: dict[str, str], device: torch.device, wall_s: float
) -> dict[str, Any]:
    """Per benchmark: samples, wall time (the slowest rank), samples/s, device-hours (summed
    over ranks) and GPU-hours (the same on GPUs, 0 on CPUs); and the evaluation's totals."""
    on_gpu = device.type == "cuda"
    benchmarks = {}
    for bench, task in names.items():
        parts = [t.get("tasks", {}).get(task, {}) for t in timings]
        samples = sum(int(p.get("samples", 0)) for p in parts)
        wall = max((float(p.get("wall_s", 0.0)) for p in parts), default=0.0)
        device_s = sum(float(p.get("wall_s", 0.0)) for p in parts)
        benchmarks[bench] = {
            "samples": samples,
            "wall_s": round(wall, 3),
            "samples_per_s": samples / wall if wall > 0 else None,
            "model_s": round(max((float(p.get("generate_s", 0.0)) for p in parts), default=0), 3),
            "device_hours": device_s / 3600.0,
            "gpu_hours": device_s / 3600.0 if on_gpu else 0.0,
        }
    workers = len(timings)
    return {
        "workers": workers,
        "device": device.type,
        "wall_s": round(wall_s, 3),
        "gpu_hours": workers * wall_s / 3600.0 if on_gpu else 0.0,
        "benchmarks": benchmarks,
        "measured": "per benchmark: image loading and generation (lmms-eval's scoring not "
        "included); totals: the whole evaluation on every worker",
    }


COST_METRICS = ("samples_per_s", "gpu_hours", "device_hours", "wall_s")


def cost_rows(costs: dict[str, Any]) -> Any:
    """The costs as score rows of benchmark ``eval``: metric ``<benchmark>/<figure>``
    (`COST_METRICS`), category ``all``, n = samples; so they reach the results store beside
    the scores, as the training losses do (benchmark ``train``)."""
    import pandas as pd

    from mage.scores import SCORE_COLUMNS

    rows = [
        {
            "benchmark": "eval",
            "metric": f"{bench}/{metric}",
            "category": "all",
            "value": float(part[metric]) if part[metric] is not None else float("nan"),
            "n": int(part["samples"]),
        }
        for bench, part in costs["benchmarks"].items()
        for metric in COST_METRICS
    ]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


# ---- mage-harness eval --workers N -------------------------------------------------------
@record  # a failing rank's error reaches the launcher (ChildFailedError.failures)
def _worker(evaluate_kwargs: dict, threads: int) -> Any:
    """One rank: join the group, evaluate, leave. Rank 0 returns the scores' parts."""
    import torch.distributed as dist

    from harness.eval import evaluate

    torch.set_num_threads(threads)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    try:
        if torch.cuda.is_available():
            evaluate_kwargs = {**evaluate_kwargs, "device": f"cuda:{local}"}
        result = evaluate(**evaluate_kwargs)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        return {"scores": result.scores, "items": result.items, "record": result.record}
    return None


def launch(workers: int, evaluate_kwargs: dict, threads: int | None = None) -> dict:
    """Run ``harness.eval.evaluate(**evaluate_kwargs)`` on ``workers`` processes on this
    machine (torch's elastic launcher, as ``torchrun --standalone --nproc_per_node N``);
    returns rank 0's {"scores", "items", "record"}."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=workers,
        run_id=f"mage-eval-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    returned = elastic_launch(config, _worker)(evaluate_kwargs, threads)
    return returned[0]
