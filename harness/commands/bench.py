"""`mage-harness bench train|records|eval|generate`: speed and memory figures (benchmarks,
never tests)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.commands.overrides import add_override_argument, parse_overrides, preset_config


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure training or evaluation speed")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)

    train = kinds.add_parser(
        "train",
        help="steps/s, tokens/s and peak memory of one training step at a preset's shapes",
        description="Random weights and random batches at the preset's shapes; compare "
        "projectors with --projector (e.g. ian vs mlp2x_gelu).",
    )
    train.add_argument("--preset", default="tiny-test", help="preset id (mage.presets.PRESETS)")
    train.add_argument(
        "--projector",
        action="append",
        help="projector(s) to compare: ian, vab, linear, mlp2x_gelu (repeatable)",
    )
    train.add_argument("--stage", choices=["stage1", "stage2"], default="stage1")
    train.add_argument("--steps", type=int, default=20)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seq-len", type=int)
    train.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    train.add_argument("--json", action="store_true", help="print JSON instead of a table")
    train.add_argument(
        "--loader-workers",
        type=int,
        action="append",
        help="instead: time the real training loop on the preset's data with this many "
        "DataLoader workers (repeatable: --loader-workers 0 --loader-workers 2); world presets "
        "need --set data_dir=WORLD --set assets_dir=ASSETS",
    )
    train.add_argument(
        "--memory-workers",
        type=int,
        action="append",
        help="instead: print the per-GPU memory estimate of both stages on this many GPUs "
        "(repeatable; mage.train.memory)",
    )
    add_override_argument(train)
    train.set_defaults(func=_bench_train)

    rec = kinds.add_parser(
        "records",
        help="resident memory of a stage over a generated LLaVA JSON of N records",
        description="Generates N records (64 distinct images), builds the record table, trains "
        "the tiny-test stage 1 over it and reports resident memory after the table is built, "
        "at step 10 and at the last step, and the peak.",
    )
    rec.add_argument("--records", type=int, action="append", required=True, help="repeatable")
    rec.add_argument("--steps", type=int, default=200)
    rec.add_argument("--threads", type=int, default=1)
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=_bench_records)

    ev = kinds.add_parser(
        "eval",
        help="samples/s at several batch sizes and worker counts, answers checked equal",
        description="Scores the same data once per --batch-size on one worker, then at the "
        "largest batch size on each other --workers count; every answer is compared with "
        "the first run (exit 1 if any differs). With --repeats N the whole plan runs N "
        "rounds and each run reports its best round (a busy machine only slows runs down).",
    )
    ev.add_argument("checkpoint", help="a MAGE checkpoint folder")
    ev.add_argument("--data", required=True, help="folder with mme/, mmbench/, seedbench/")
    ev.add_argument("--tasks", default="mme")
    ev.add_argument("--batch-size", type=int, action="append", help="repeatable (default: 1 and 8)")
    ev.add_argument("--workers", type=int, action="append", help="repeatable (default: 1)")
    ev.add_argument("--limit", type=int, default=64)
    ev.add_argument("--max-new-tokens-cap", type=int, default=None)
    ev.add_argument("--loader-workers", type=int, default=1)
    ev.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per worker (default, as `mage-harness eval`: torch's own for "
        "one worker, cores / workers for more)",
    )
    ev.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of the whole plan; each run reports its best round (default 1)",
    )
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=_bench_eval)

    gen = kinds.add_parser(
        "generate",
        help="evaluation-style generation samples/s at a preset's shapes, random weights",
        description="Answers --samples random questions (a random image, --prompt-tokens text "
        "tokens, exactly --new-tokens decode steps) at each --batch-size with random weights "
        "at the preset's shapes, in bf16 on CUDA (float32 on CPU): samples/s, the LLM's "
        "TFLOP/s and peak memory. The GPU check of a mage-7b evaluation: "
        "mage-harness bench generate --preset mage-7b --samples 512",
    )
    gen.add_argument("--preset", default="tiny-test", help="preset id (mage.presets.PRESETS)")
    gen.add_argument(
        "--batch-size", type=int, action="append", help="repeatable (default: 1, 8, 32)"
    )
    gen.add_argument("--samples", type=int, default=64, help="questions per batch size")
    gen.add_argument(
        "--prompt-tokens", type=int, default=64, help="text tokens after the image (MME: ~64)"
    )
    gen.add_argument("--new-tokens", type=int, default=2, help="decode steps (MME: Yes/No, EOS)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    gen.add_argument("--device", help="default: cuda if available, else cpu")
    gen.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    gen.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_override_argument(gen)
    gen.set_defaults(func=_bench_generate)


def _positive(**values) -> None:
    from mage.config import ConfigError

    for name, value in values.items():
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be a positive integer, got {value}")


def _bench_train(args) -> int:
    _positive(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, threads=args.threads
    )
    overrides = parse_overrides(args.overrides)
    for projector in args.projector or [None]:  # every config is checked before any work
        extra = dict(overrides, **({"ian.projector": projector} if projector else {}))
        preset_config(args.preset).with_overrides(extra)
    import torch

    from harness.bench import bench_train

    torch.set_num_threads(args.threads)
    if args.memory_workers:
        from harness.commands.train import _print_memory
        from mage.presets import get_preset

        cfg = get_preset(args.preset).with_overrides(overrides)
        _print_memory(cfg, args.memory_workers, args.seq_len)
        return 0
    if args.loader_workers:
        from harness.bench import bench_loading

        rows = bench_loading(
            args.preset, args.loader_workers, args.stage, args.steps, overrides=overrides
        )
        _print_rows(rows, args.json)
        return 0
    rows = []
    for projector in args.projector or [None]:
        extra = dict(overrides, **({"ian.projector": projector} if projector else {}))
        rows.append(
            bench_train(
                args.preset,
                args.stage,
                steps=args.steps,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                overrides=extra,
            )
        )
    _print_rows(rows, args.json)
    return 0


def _bench_records(args) -> int:
    """One process per size: each run's peak memory is its own."""
    import subprocess
    import sys

    rows = []
    for n in args.records:
        code = (
            "import json, torch; from harness.bench import bench_records; "
            f"torch.set_num_threads({args.threads}); "
            f"print(json.dumps(bench_records({n}, steps={args.steps})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    _print_rows(rows, args.json)
    return 0


def _bench_eval(args) -> int:
    from harness.commands.eval import check_data, check_loader_workers
    from harness.eval_tasks import parse_tasks
    from mage.checkpoint_check import check_checkpoint

    for size in args.batch_size or []:
        _positive(batch_size=size)
    for workers in args.workers or []:
        _positive(workers=workers)
    _positive(limit=args.limit, threads=args.threads, repeats=args.repeats)
    check_loader_workers(args.loader_workers)
    check_data(args.data, parse_tasks(args.tasks), args.limit)
    check_checkpoint(Path(args.checkpoint))
    import torch

    from harness.bench_eval import bench_eval

    if args.threads:  # else torch's own default here, and cores / workers each in `launch`
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with stdout_to_stderr():
        rows = bench_eval(
            args.checkpoint,
            args.data,
            args.tasks.split(","),
            batch_sizes=args.batch_size or [1, 8],
            workers=args.workers or [1],
            limit=args.limit,
            max_new_tokens_cap=args.max_new_tokens_cap,
            loader_workers=args.loader_workers,
            threads=args.threads,
            repeats=args.repeats,
        )
    _print_rows(rows, args.json)
    return 0 if all(row["answers_identical"] for row in rows) else 1


def _bench_generate(args) -> int:
    for size in args.batch_size or []:
        _positive(batch_size=size)
    _positive(
        samples=args.samples,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        threads=args.threads,
    )
    from mage.config import ConfigError

    sizes = args.batch_size or [1, 8, 32]
    if args.samples < max(sizes):
        raise ConfigError(
            f"--samples {args.samples} is below the largest --batch-size ({max(sizes)}): "
            "every batch size must run full batches"
        )
    overrides = parse_overrides(args.overrides)
    preset_config(args.preset).with_overrides(overrides)  # checked before any work
    import torch

    from harness.bench_generate import bench_device, bench_generate

    try:
        bench_device(args.device)
    except ValueError as err:
        raise ConfigError(f"--device: {err}") from None
    torch.set_num_threads(args.threads)
    rows = bench_generate(
        args.preset,
        batch_sizes=sizes,
        samples=args.samples,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        overrides=overrides,
        device=args.device,
        dtype=args.dtype,
    )
    _print_rows(rows, args.json)
    return 0


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While a bench runs, what libraries print goes to stderr (lmms-eval prints MMBench's
    summary; worker processes inherit the descriptor), so stdout holds only the result table
    or the ``--json`` document."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_rows(rows: list[dict], json_out: bool) -> None:
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, title="one column per run")
    table.add_column("figure")
    for i in range(len(rows)):
        table.add_column(f"run {i + 1}", justify="right")
    for key in rows[0]:
        cells = [row.get(key) for row in rows]
        table.add_row(key, *(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells))
    Console().print(table)
