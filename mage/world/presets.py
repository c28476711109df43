"""Presets that train MAGE on the synthetic shapes world on a CPU.

``world-demo`` is the embedded default's base (ablations/smoke.yaml); ``world-test`` is the
same model with a handful of steps, for CI. Data paths use ``{data}`` (the generated world's
folder) and encoders/LLM come from ``{assets}`` (its prepared assets); the sweep harness fills
both. The recipe follows docs/cpu-world.md, tuned by measurement (figures there):
stage 1 trains the IAN on captions with CE + MSE; stage 2 trains the IAN and the LLM on the
instruction mix (captions, short answers, yes/no, lettered MCQ, with extra draws of the
lettered MCQ and yes/no kinds) and the tool-calling samples, 2,000 steps, from a world LLM
that was drilled on picking lettered options and, last, on describing what its context says
(with that drill, stage 1 learns the image about three times faster). The vision tower is the world ViT: with the
world ResNet, lettered choice reached the VLM on some seeds only (MMBench 1.0-16.0, SEED
25.6-41.8 over 4 seeds); with the ViT every seed leaves chance (MMBench 9.4-20.8, SEED
31.2-42.8; figures in docs/cpu-world.md).

How it runs on one CPU thread per trial: the tower is frozen in both stages, so its outputs
come from a cache (``vision.feature_cache``, built once per assets folder), and batches load
in the loop (no worker processes). Each cut a stage's step time on 2 cores (docs/cpu-world.md,
"The smoke sweep: where the time goes").
"""

from __future__ import annotations

from mage.config import (
    DataSource,
    IANConfig,
    LLMConfig,
    LossConfig,
    MageConfig,
    StageConfig,
    VisionConfig,
)

STAGE1_DATA = [DataSource(path="{data}/stage1.json")]
# The instruction mix plus extra draws of its one-token-answer kinds (lettered MCQ, yes/no),
# which carry few bits per example, and the tool-calling samples.
STAGE2_DATA = [
    DataSource(path="{data}/stage2.json", weight=0.35),
    DataSource(path="{data}/stage2.json", weight=0.4, kinds=["mcq"]),
    DataSource(path="{data}/stage2.json", weight=0.15, kinds=["yes_no"]),
    DataSource(path="{data}/tools_train.json", weight=0.1),
]


def world_demo() -> MageConfig:
    return MageConfig(
        name="world-demo",
        max_length=192,
        # the tower is frozen in both stages: read its outputs from a cache, not the PNGs
        vision=VisionConfig(encoder="world-vit", feature_cache="{assets}/features"),
        # a learned position per IAN token (world-resnet's conv features carry none)
        ian=IANConfig(
            projector="ian",
            depth=1,
            vab_depth=2,
            stride=2,
            num_heads=4,
            ffn_mult=2.0,
            position_embedding=True,
        ),
        llm=LLMConfig(name="world-llm"),
        loss=LossConfig(mse_weight=1.0, mse_reduction="mean"),
        stage1=StageConfig(
            trainable=["ian"],
            data=STAGE1_DATA,
            steps=200,
            batch_size=16,
            lr=1e-3,
            warmup_ratio=0.05,
            loader_workers=0,  # (both stages) a cached-feature lookup: worker processes cost more
        ),
        stage2=StageConfig(
            trainable=["ian", "llm"],
            data=STAGE2_DATA,
            steps=2000,
            batch_size=16,
            lr=5e-4,
            warmup_ratio=0.05,
            # no group_by: with it, tool calls (3-4 times as long as a yes/no answer) came in
            # a few steps of their own, each weighing as much as a step of one-token answers,
            # and the right tool fell from 73-81% to 16-25% (docs/cpu-world.md)
            loader_workers=0,
        ),
    )


def world_test() -> MageConfig:
    """world-demo's model with a few steps: exercises the whole pipeline in seconds."""
    return world_demo().with_overrides(
        {
            "name": "world-test",
            "stage1.steps": 6,
            "stage1.batch_size": 8,
            "stage2.steps": 8,
            "stage2.batch_size": 8,
        }
    )


WORLD_PRESETS = {"world-demo": world_demo, "world-test": world_test}
