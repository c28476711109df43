"""Training-speed benchmarks.

`bench_train`: steps/s, tokens/s and peak memory of one preset and projector. Weights are
random (``llm.random_init``, vision ``pretrained: none``) and batches are random token ids (the
image tokens plus 64 text tokens, or ``--seq-len``) plus random pixels, so the figure measures
the architecture at its real shapes, not data loading. On CUDA the model runs in bf16 autocast.

`bench_loading`: the real training loop (`mage.train.train_stage`) on a preset's real data,
once per DataLoader setting (``loader_workers`` 0 = decode and collate inline), seconds per
step after a warm-up: what loading off the training loop buys.
"""

from __future__ import annotations

import resource
import time

import torch

from mage.config import MageConfig
from mage.data import IGNORE_INDEX, IMAGE_TOKEN_ID
from mage.model import MageModel
from mage.presets import get_preset


def bench_config(preset: str, overrides: dict | None = None) -> MageConfig:
    cfg = get_preset(preset).with_overrides(
        {"llm.random_init": True, "vision.pretrained": "none", **(overrides or {})}
    )
    return cfg


def random_batch(model: MageModel, batch_size: int, seq_len: int, with_caption: bool) -> dict:
    n_img = model.num_image_tokens
    if seq_len <= n_img + 2:
        raise ValueError(f"seq_len {seq_len} leaves no room for text after {n_img} image tokens")
    vocab = model.llm.get_input_embeddings().num_embeddings
    ids = torch.randint(3, vocab, (batch_size, seq_len))
    ids[:, 1 : 1 + n_img] = IMAGE_TOKEN_ID
    labels = ids.clone()
    labels[:, : 1 + n_img] = IGNORE_INDEX
    size = model.vision.image_size
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(batch_size, 3, size, size),
    }
    if with_caption:
        batch["caption_ids"] = torch.randint(3, vocab, (batch_size, 24))
        batch["caption_mask"] = torch.ones_like(batch["caption_ids"])
    return batch


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_train(
    preset: str,
    stage: str = "stage1",
    steps: int = 10,
    warmup: int = 2,
    batch_size: int | None = None,
    seq_len: int | None = None,
    text_len: int = 64,
    overrides: dict | None = None,
    device: str | None = None,
) -> dict:
    """Time ``steps`` optimizer steps after ``warmup``; returns a dict of figures."""
    cfg = bench_config(preset, overrides)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = MageModel.build(cfg, device=device)
    stage_cfg = getattr(cfg, stage)
    if stage == "stage2" and cfg.llm.lora.enabled:
        model.enable_lora()
    model.set_trainable(stage_cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr)
    bs = batch_size or stage_cfg.batch_size
    length = seq_len or model.num_image_tokens + text_len  # image tokens + text, as in training
    batch = {k: v.to(device) for k, v in random_batch(model, bs, length, stage == "stage1").items()}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(**batch)
        out.loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    counts = model.param_counts()
    return {
        "preset": preset,
        "projector": cfg.ian.projector,
        "ian.depth": cfg.ian.depth,
        "stage": stage,
        "device": str(device),
        "batch_size": bs,
        "seq_len": length,
        "image_tokens": model.num_image_tokens,
        "trainable_params": sum(p.numel() for p in params),
        **{f"params_{k}": v for k, v in counts.items()},
        "steps_per_s": steps / elapsed,
        "tokens_per_s": steps * bs * length / elapsed,
        "peak_memory_mb": _peak_memory_mb(device),
    }


def bench_loading(
    preset: str,
    loader_workers: list[int],
    stage: str = "stage2",
    steps: int = 30,
    warmup: int = 5,
    overrides: dict | None = None,
) -> list[dict]:
    """Seconds per step of ``stage`` with each DataLoader worker count (real data needed:
    ``data_dir`` / ``assets_dir`` in ``overrides`` for the world presets)."""
    import tempfile

    from mage.train import seed_build, train_stage

    rows = []
    for workers in loader_workers:
        cfg = get_preset(preset).with_overrides(
            {
                **(overrides or {}),
                f"{stage}.loader_workers": workers,
                f"{stage}.epochs": None,
                f"{stage}.steps": warmup + steps,
                f"{stage}.checkpoint_every": 0,
            }
        )
        seed_build(cfg.seed)
        model = MageModel.build(cfg)
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as out:
            train_stage(
                model,
                cfg,
                stage,
                out,
                callback=lambda s, m, t=stamps: t.append(time.perf_counter()),
            )
        per_step = (stamps[-1] - stamps[warmup - 1]) / steps
        rows.append(
            {
                "preset": preset,
                "stage": stage,
                "loader_workers": workers,
                "batch_size": getattr(cfg, stage).global_batch_size,
                "threads": torch.get_num_threads(),
                "s_per_step": per_step,
                "steps_per_s": 1 / per_step,
            }
        )
    return rows


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_records(records: int, steps: int = 200, workdir: str | None = None) -> dict:
    """Resident memory of a stage over a generated LLaVA-format JSON of ``records`` records
    (tiny-test model, 64 distinct images, an epoch stream): after the table is built, and
    along the stage. Flat along the stage = no per-record or per-image state accumulates."""
    import json
    import tempfile
    from pathlib import Path

    from PIL import Image

    from mage.records import record_table
    from mage.train import seed_build, train_stage

    root = Path(workdir or tempfile.mkdtemp(prefix="bench-records-"))
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(64):
        Image.new("RGB", (32, 32), (i * 4, 255 - i * 4, 128)).save(root / "images" / f"{i}.png")
    items = [
        {
            "id": f"r{i}",
            "image": f"images/{i % 64}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat color is the square?"},
                {"from": "gpt", "value": ["red", "green", "blue", "yellow"][i % 4]},
            ],
        }
        for i in range(records)
    ]
    data = root / "data.json"
    data.write_text(json.dumps(items))
    del items
    source = {"path": str(data), "image_root": str(root)}
    cfg = get_preset("tiny-test").with_overrides(
        {
            "stage1.data": [source],
            "stage1.epochs": 1,
            "stage1.steps": steps,
            "stage1.batch_size": 8,
            "stage1.loader_workers": 0,
        }
    )
    before = _rss_mb()
    started = time.perf_counter()
    record_table(cfg.data_sources("stage1")[0], True, root / "tables")
    build_s = time.perf_counter() - started
    after_build = _rss_mb()
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    rss: list[float] = []
    train_stage(
        model, cfg, "stage1", root / "stage",
        callback=lambda s, m: rss.append(_rss_mb()), records_dir=root / "tables",
    )  # fmt: skip
    return {
        "records": records,
        "json_mb": data.stat().st_size / 2**20,
        "table_build_s": build_s,
        "rss_before_mb": before,
        "rss_after_table_mb": after_build,
        "rss_step10_mb": rss[min(9, len(rss) - 1)],
        "rss_last_step_mb": rss[-1],
        "steps": len(rss),
        "peak_rss_mb": _peak_memory_mb(torch.device("cpu")),
    }
