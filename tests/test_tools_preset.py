"""The mage-7b-tools preset: stage 2 mixes LLaVA-665K with tool-calling samples, as
docs/mage-model.md says MAGE's stage 2 does; its tool file is what `mage-harness data tools`
writes from LCS-558K's captions. Checked on a small LLaVA-shaped data folder."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from harness.cli import main
from mage.config import MageConfig
from mage.presets import get_preset
from mage.tools.parser import parse_tool_calls
from mage.train import build_dataset

DOCS = Path(__file__).resolve().parent.parent / "docs" / "mage-model.md"


def _llava_folder(root: Path) -> Path:
    """LLaVA's layout: LCS-558K captions and 665K instructions, each with its images."""
    pretrain, instruct = root / "LLaVA-Pretrain", root / "LLaVA-Instruct"
    captions, instructions = [], []
    for i, colour in enumerate(["red", "green", "blue"]):
        (pretrain / "images" / "00000").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(pretrain / "images" / "00000" / f"{i}.jpg")
        human = {"from": "human", "value": "<image>\nRender a clear and concise summary."}
        gpt = {"from": "gpt", "value": f"a {colour} square"}
        captions.append({"id": f"c{i}", "image": f"00000/{i}.jpg", "conversations": [human, gpt]})
        (instruct / "images" / "coco").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(instruct / "images" / "coco" / f"{i}.jpg")
        turns = [
            {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": colour},
        ]
        instructions.append({"id": f"q{i}", "image": f"coco/{i}.jpg", "conversations": turns})
    (pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(captions))
    (instruct / "llava_v1_5_mix665k.json").write_text(json.dumps(instructions))
    return root


def test_mage_7b_tools_mixes_tool_calls_into_stage_2(tmp_path, capsys):
    data = _llava_folder(tmp_path / "data")
    tools = data / "MAGE-Tools" / "lcs558k_tool_calls.json"
    captions = data / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"
    assert main(["data", "tools", str(captions), str(tools), "--seed", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(tools), "samples": 3}
    assert main(["data", "tools", str(captions), str(tools)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err

    cfg = get_preset("mage-7b-tools").with_overrides({"data_dir": str(data)})
    assert MageConfig.from_dict(cfg.to_dict()) == cfg  # validates as a config
    base = get_preset("mage-7b")
    assert cfg.stage1 == base.stage1 and cfg.ian == base.ian and cfg.llm == base.llm
    assert [s.weight for s in cfg.stage2.data] == [0.9, 0.1]

    dataset = build_dataset(cfg, "stage2")  # every record and image checked at load
    assert len(dataset) == 6 and dataset.weights == [0.9, 0.1]
    instruct, tool_source = cfg.data_sources("stage2")
    assert Path(instruct.path) == data / "LLaVA-Instruct" / "llava_v1_5_mix665k.json"
    assert Path(tool_source.path) == tools
    for record in json.loads(tools.read_text()):
        calls = parse_tool_calls(record["conversations"][-1]["value"])
        assert len(calls) == 1 and calls[0].name in ("image_generation", "text_to_speech")
        if "image" in record:
            assert (Path(tool_source.image_root) / record["image"]).is_file()


def test_the_model_docs_name_the_tools_preset():
    assert "mage-7b-tools" in DOCS.read_text()
