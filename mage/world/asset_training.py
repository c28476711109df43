"""How each of the world's asset components is trained: the CLIP encoders contrastively on the
world's training images and captions (with a held-out retrieval check), the world LLM on the
world's questions as text (with a text-only check on held-out benchmark questions,
`text_eval_items`). `mage.world.assets.prepare_assets` calls `build_encoder` / `build_llm`.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import torch

from mage.world import encoders, text, textlm
from mage.world.asset_recipes import AssetConfig
from mage.world.generate import WorldPaths
from mage.world.scene import Scene
from mage.world.vocab import world_tokenizer


def build_encoder(name, paths: WorldPaths, info, cfg: AssetConfig, out: Path, bar) -> dict:
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


def build_llm(name, paths: WorldPaths, info, cfg: AssetConfig, out: Path, bar) -> dict:
    tokenizer = world_tokenizer()
    records = json.loads(paths.stage2.read_text())
    on_step = None
    if bar:  # one task per phase: a log gets a line when the drills end, another at the end
        lookup = cfg.llm.lookup_steps
        phases = [("option-lookup drills", lookup)] if lookup else []
        phases.append(("question mix", cfg.llm.steps - lookup))
        if cfg.llm.final_steps:
            phases.append(("mix with describe-from-context", cfg.llm.final_steps))
        tasks = [bar.add_task(f"pretrain world-llm (text): {p}", total=n) for p, n in phases]
        ends = np.cumsum([n for _, n in phases])

        def on_step(step: int) -> None:
            bar.advance(tasks[int(np.searchsorted(ends, step, side="right"))])

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
