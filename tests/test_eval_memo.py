"""`harness.eval_memo`: an evaluation keeps the frozen tower's outputs of each batch, and the
next evaluation reads them instead of decoding the images and running the tower, with
exactly the answers it would have given without them."""

from __future__ import annotations

import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image

import harness.eval_batches as eval_batches
from harness.eval_batches import Row
from harness.eval_memo import TowerMemo
from harness.lmms_model import MageLMM
from harness.trial import tower_memo_dir
from mage.generation import TowerOutput, image_tokens, tower_outputs

torch.set_num_threads(1)

CONTEXTS = [f"Is it {word}?" for word in ("red", "big", "odd", "far", "low", "new", "hot")]


@pytest.fixture(scope="module")
def model():
    from mage.model import MageModel
    from mage.presets import get_preset

    torch.manual_seed(0)
    return MageModel.build(get_preset("tiny-test")).eval()


def _docs() -> list[dict]:
    # docs 2k and 2k+1 hold equal pixels (MME's two questions of one image); doc 6 has none
    return [
        {"image": Image.new("RGB", (24, 16), (70 * (i // 2), 90, 200 - 60 * (i // 2)))}
        for i in range(6)
    ] + [{"image": None}]


def _requests() -> list[Instance]:
    visual = lambda doc: [doc["image"]] if doc["image"] is not None else []  # noqa: E731
    return [
        Instance(
            "generate_until",
            (CONTEXTS[i], {"max_new_tokens": 3, "until": []}, visual, i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in range(7)
    ]


def _answers(model, memo: TowerMemo | None, batch_size: int = 3) -> list[str]:
    lmm = MageLMM.wrap(model, batch_size=batch_size, loader_workers=0)
    lmm.task_dict = {"t": {"test": _docs()}}
    lmm.tower_memo = memo
    return lmm.generate_until(_requests())


def test_tower_outputs_give_the_tokens_of_the_images_bit_for_bit(model):
    images = _docs()
    batch = [images[0]["image"], images[0]["image"], None, images[2]["image"]]
    live = image_tokens(model, batch)
    passed = tower_outputs(model, batch)
    assert passed[0] is passed[1] and passed[2] is None and isinstance(passed[3], TowerOutput)
    with torch.no_grad():
        assert torch.equal(image_tokens(model, passed), live)
    with pytest.raises(ValueError, match="mixes tower outputs with images"):
        image_tokens(model, [passed[0], images[4]["image"]])


def test_a_kept_batch_is_answered_without_decoding_or_the_tower(model, tmp_path, monkeypatch):
    plain = _answers(model, None)
    memo = TowerMemo(tmp_path, model, {"t": "content-0"}, (255, 255, 255))
    assert _answers(model, memo) == plain  # the first evaluation computes and keeps
    kept = sorted(memo.folder.glob("*.safetensors"))
    assert len(kept) == 3  # 7 requests at batch 3, the last a text-only row alone

    decoded, towered = [], []
    real_doc_image, real_tower = eval_batches.doc_image, model.vision.forward
    monkeypatch.setattr(
        eval_batches, "doc_image", lambda *a: decoded.append(1) or real_doc_image(*a)
    )
    monkeypatch.setattr(model.vision, "forward", lambda x: towered.append(1) or real_tower(x))
    assert _answers(model, memo) == plain
    assert decoded == [] and towered == []

    damaged = next(path for path in kept if any(memo.load(path.stem)))  # one with images
    rows = len(memo.load(damaged.stem))
    damaged.write_bytes(b"not a safetensors file")  # computed again, and kept anew
    assert _answers(model, memo) == plain
    assert len(decoded) == rows and len(towered) == 1
    assert memo.load(damaged.stem) is not None


def test_the_batch_key_names_what_decides_the_tower_input(model, tmp_path):
    memo = TowerMemo(tmp_path, model, {"t": "content-0"}, (255, 255, 255))
    rows = [Row(i, CONTEXTS[i], 3, [], None, i, "t", "test") for i in range(3)]
    key = memo.key(rows)
    assert key == memo.key(list(rows)) and len(key) == 64
    assert memo.key(rows[::-1]) != key  # another order: another stack for the tower
    assert memo.key(rows[:2]) != key
    other = TowerMemo(tmp_path, model, {"t": "content-1"}, (255, 255, 255))
    assert other.key(rows) != key  # the benchmark's data changed
    assert memo.key([Row(0, "q", 3, [], None, 0, "unknown-task", "test")]) is None
    assert memo.load("0" * 64) is None


def test_the_namespace_follows_the_tower_its_threads_and_the_background(model, tmp_path):
    first = TowerMemo(tmp_path, model, {}, (255, 255, 255)).folder
    assert TowerMemo(tmp_path, model, {}, (255, 255, 255)).folder == first
    assert TowerMemo(tmp_path, model, {}, (0, 0, 0)).folder != first
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert TowerMemo(tmp_path, model, {}, (255, 255, 255)).folder != first
    finally:
        torch.set_num_threads(threads)
    weight = next(model.vision.parameters())
    with torch.no_grad():
        weight.add_(1.0)
        try:
            assert TowerMemo(tmp_path, model, {}, (255, 255, 255)).folder != first
        finally:
            weight.sub_(1.0)


def test_a_trial_keeps_tower_outputs_only_beside_cached_training_features(tmp_path):
    from mage.world.presets import world_demo

    cfg = world_demo().with_overrides({"assets_dir": str(tmp_path)})
    assert tower_memo_dir(cfg) == str(tmp_path / "features" / "eval")
    assert tower_memo_dir(cfg.with_overrides({"vision.feature_cache": None})) is None
