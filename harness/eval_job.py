"""A trial's evaluation as a job: the stage-2 checkpoint scored on the benchmarks and tools.

`run_eval` loads the checkpoint in the variant's dtype (`MageModel.from_pretrained`) and runs
`harness.eval.evaluate` (lmms-eval's own tasks and scoring) and, when asked, the tool-calling
score, writing ``scores.parquet``, ``items.parquet`` and ``record.json`` into ``out``. It runs
in the trial's process, or on the trial's Ray Train worker group (`run_eval_on_workers`: the
GPUs are the workers', not the driver's), data-parallel: every rank holds a replica of the
model and scores a shard of the requests, rank 0 gathers and writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

EVAL_RUN = "ray"  # Ray Train's run folder inside an evaluation folder


@dataclass
class EvalJob:
    checkpoint: str  # a stage-2 checkpoint folder
    out: str  # the evaluation folder
    tasks: list[str]
    data_dir: str | None  # benchmark folders (mme/, mmbench/, seedbench/)
    tools_json: str | None  # tool-calling eval records
    batch_size: int = 8
    limit: int | None = None
    max_new_tokens: int | None = None
    mmbench_scoring: str | None = None  # decided once by the sweep's driver
    threads: int = 1
    loader_workers: int = 1  # processes decoding images ahead of generation (0: inline)
    tower_memo: str | None = None  # the tower's outputs kept between evaluations (eval_memo)


def loader_workers_for(cpus: float) -> int:
    """Image-decoding processes for an evaluation that holds ``cpus``: one when a CPU is spare
    for it; none on one CPU, where it would only compete with generation (two sweep trials on
    2 cores: 8.2 s an evaluation with one, 7.6 s without)."""
    return 1 if cpus >= 2 else 0


def run_eval(job: EvalJob, device=None) -> None:
    """Every rank of a process group calls this (or one process alone): the benchmarks run
    data-parallel (`harness.eval.evaluate` shards lmms-eval's requests by rank and gathers
    on rank 0); the tool-calling score runs on rank 0; rank 0 writes ``out``."""
    import torch
    import torch.distributed as dist

    from harness.eval import evaluate
    from mage.io import atomic_write, atomic_write_json
    from mage.model import MageModel
    from mage.train.loop import rank_and_world

    torch.set_num_threads(max(1, job.threads))
    rank, world = rank_and_world()
    out = Path(job.out)
    model = MageModel.from_pretrained(job.checkpoint, device=device)
    bench = [t for t in job.tasks if t != "tools"]
    scores, items, record = [], [], {}
    if bench:
        result = evaluate(
            model,
            tasks=bench,
            data_dir=job.data_dir,
            out_dir=out / "lmms_eval",
            batch_size=job.batch_size,
            limit=job.limit,
            max_new_tokens_cap=job.max_new_tokens,
            mmbench_scoring=job.mmbench_scoring,
            loader_workers=job.loader_workers,
            tower_memo=job.tower_memo,
        )
        scores, items, record = [result.scores], [result.items], result.record
    if rank == 0:
        if "tools" in job.tasks:
            from mage.tools.metrics import evaluate_tools

            tool_json = Path(job.tools_json or "")
            if not tool_json.is_file():
                raise FileNotFoundError(
                    f"tasks include 'tools' but the tool eval file {tool_json} does not exist"
                )
            tool_scores, tool_items = evaluate_tools(model, tool_json, batch_size=job.batch_size)
            scores.append(tool_scores), items.append(tool_items)
        for name, parts in (("scores", scores), ("items", items)):
            frame = pd.concat(parts, ignore_index=True)
            atomic_write(out / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
        atomic_write_json(out / "record.json", record)
    if world > 1:
        dist.barrier()  # the others wait for rank 0's files


def ray_eval_worker(config: dict) -> None:
    """``train_loop_per_worker`` of an evaluation run."""
    import ray.train.torch

    run_eval(EvalJob(**config), device=ray.train.torch.get_device())


def run_eval_on_workers(job: EvalJob, group) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from harness.train_worker import forwarded_env

    resources = {"CPU": group.cpus_per_worker}
    if group.use_gpu:
        resources["GPU"] = group.gpus_per_worker
    job = EvalJob(
        **{
            **asdict(job),
            "threads": max(1, int(group.cpus_per_worker)),
            "loader_workers": loader_workers_for(group.cpus_per_worker),
        }
    )
    TorchTrainer(
        ray_eval_worker,
        train_loop_config=asdict(job),
        torch_config=TorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=group.workers,
            use_gpu=group.use_gpu,
            resources_per_worker=resources,
            placement_strategy="PACK",
        ),
        run_config=ray.train.RunConfig(
            name=EVAL_RUN,
            storage_path=job.out,
            failure_config=ray.train.FailureConfig(max_failures=group.max_failures),
            worker_runtime_env={"env_vars": forwarded_env()},
        ),
    ).fit()
