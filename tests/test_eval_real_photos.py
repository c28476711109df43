"""Real photos of every mode (greyscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated, large), in
the official MME, MMBench and SEED schemas, scored through lmms-eval's own tasks by the
evaluation path a trial uses (`harness.eval.evaluate` on a real MageModel)."""

from __future__ import annotations

import json

import pytest
import torch
from real_photos import write_photo_benchmarks

from harness.eval import evaluate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photo_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos")
    return out, write_photo_benchmarks(out)


def test_real_photos_are_scored_by_lmms_eval_without_error(photo_bench, tmp_path, monkeypatch):
    from mage.model import MageModel
    from mage.presets import tiny_test

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, rows = photo_bench
    torch.manual_seed(0)
    model = MageModel.build(tiny_test())
    result = evaluate(model, data_dir=data, out_dir=tmp_path, batch_size=4, loader_workers=1)

    headlines = result.scores[result.scores.category == "all"]
    assert set(headlines.benchmark) == {"mme", "mmbench", "seedbench", "eval"}  # eval: costs
    assert len(result.items[result.items.benchmark == "mme"]) == rows["mme"]
    assert len(result.items[result.items.benchmark == "seedbench"]) == rows["seedbench"]
    for task, n in (("mme", 16), ("mmbench_en_dev_static", 16), ("seedbench", 8)):
        lines = (tmp_path / "samples" / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == n and all(json.loads(x)["filtered_resps"] for x in lines)
    assert result.record["model"]["image_background"] == [255, 255, 255]
    assert result.record["model"]["image_aspect"] == "pad"
    assert result.record["datasets"]["mme"]["expected_from"].endswith("benchmarks.json")
