"""World generation: determinism, held-out disjointness, official schemas, training records,
and prompts identical to the ones lmms-eval builds."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
import yaml

from mage.world import text
from mage.world.generate import (
    WORLD_SIZES,
    WorldError,
    content_hash,
    generate_world,
    load_world,
    scene_rng,
)
from mage.world.samples import STAGE2_MIX
from mage.world.scene import Scene, sample_scene

# The official columns (in order), dtypes and split names of the datasets lmms-eval loads.
OFFICIAL = {
    "mme": ("test", {"question_id": "string", "image": "Image", "question": "string",
                     "answer": "string", "category": "string"}),
    "mmbench": ("dev", {"index": "int64", "question": "string", "hint": "string", "A": "string",
                        "B": "string", "C": "string", "D": "string", "answer": "string",
                        "category": "string", "image": "Image", "source": "string",
                        "L2-category": "string", "comment": "string", "split": "string"}),
    "seedbench": ("test", {"answer": "string", "choice_a": "string", "choice_b": "string",
                           "choice_c": "string", "choice_d": "string", "data_id": "string",
                           "data_type": "string", "question": "string", "question_id": "string",
                           "question_type_id": "int16", "image": "List[Image]",
                           "segment": "List[int64]"}),
}  # fmt: skip


def _dtype(feature) -> str:
    if isinstance(feature, datasets.Image):
        return "Image"
    if isinstance(feature, (datasets.List, datasets.Sequence)):
        return f"List[{_dtype(feature.feature)}]"
    return feature.dtype


def _split(world, name):
    dd = datasets.load_from_disk(str(world.bench[name]))
    assert list(dd) == [OFFICIAL[name][0]]
    return dd[OFFICIAL[name][0]]


def test_same_seed_same_content_other_seed_differs(test_world, tmp_path):
    info = test_world.info()
    assert info["content_hash"] == content_hash(test_world.root)  # world.json matches the files
    again = generate_world(tmp_path / "again", seed=0, size="test")
    assert again.info()["content_hash"] == info["content_hash"]
    other = generate_world(tmp_path / "other", seed=1, size="test")
    assert other.info()["content_hash"] != info["content_hash"]
    assert other.stage2.read_text() != test_world.stage2.read_text()


def test_images_come_from_their_own_streams(test_world):
    scenes = json.loads(test_world.scenes.read_text())
    for i in (0, 5, 95):
        expected = sample_scene(scene_rng(0, "train", i))
        assert Scene.from_dict(scenes[f"train-{i:06d}"]) == expected


def test_held_out_images_are_disjoint_from_training(test_world):
    scenes = json.loads(test_world.scenes.read_text())
    splits = Counter(s["split"] for s in scenes.values())
    size = WORLD_SIZES["test"]
    assert splits == {"train": size.n_train, "mme": size.n_bench, "mmbench": size.n_bench,
                      "seedbench": size.n_bench}  # fmt: skip
    train = {hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (test_world.images / "train").glob("*.png")}  # fmt: skip
    assert len(train) == size.n_train
    for name in ("mme", "mmbench", "seedbench"):
        split = _split(test_world, name).cast_column(
            "image", datasets.List(datasets.Image(decode=False))
            if name == "seedbench" else datasets.Image(decode=False)
        )  # fmt: skip
        images = [im for row in split["image"] for im in (row if isinstance(row, list) else [row])]
        assert not {hashlib.sha256(im["bytes"]).hexdigest() for im in images} & train


@pytest.mark.parametrize("name", ["mme", "mmbench", "seedbench"])
def test_benchmark_schema_is_official(test_world, name):
    split = _split(test_world, name)
    assert {k: _dtype(v) for k, v in split.features.items()} == OFFICIAL[name][1]
    assert list(split.features) == list(OFFICIAL[name][1])


def test_mme_pairs_and_categories(test_world):
    rows = _split(test_world, "mme").remove_columns("image").to_list()
    by_id: dict[str, list[str]] = {}
    for row in rows:
        by_id.setdefault(row["question_id"], []).append(row["answer"])
        assert row["question"].endswith(" Please answer yes or no.")
        assert row["question_id"].startswith(row["category"] + "/")
    assert all(sorted(answers) == ["No", "Yes"] for answers in by_id.values())
    assert {r["category"] for r in rows} == set(text.YES_NO_CATEGORIES)


def test_mmbench_circular_copies_rotate_options(test_world):
    rows = _split(test_world, "mmbench").remove_columns("image").to_list()
    main = {r["index"]: r for r in rows if r["index"] < 1_000_000}
    copies = [r for r in rows if r["index"] >= 1_000_000]
    assert len(copies) == 3 * len(main)
    for row in copies:
        base = main[row["index"] % 1_000_000]
        assert row["question"] == base["question"]
        assert row[row["answer"]] == base[base["answer"]]  # same correct option text
        assert [row[c] for c in "ABCD"] != [base[c] for c in "ABCD"]
    assert {r["category"] for r in main.values()} == set(text.MCQ_CATEGORIES)


def test_seed_rows(test_world):
    rows = _split(test_world, "seedbench").to_list()
    assert {r["data_type"] for r in rows} == {"image"}
    assert all(len(r["image"]) == 1 and r["answer"] in "ABCD" for r in rows)
    assert {r["question_type_id"] for r in rows} == set(text.SEED_QUESTION_TYPES.values())


def _yaml_kwargs(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if "!function" not in line]
    return yaml.safe_load("\n".join(lines))["lmms_eval_specific_kwargs"]["default"]


def test_prompts_are_the_ones_lmms_eval_builds(test_world):
    from lmms_eval.tasks.mmbench import en_utils
    from lmms_eval.tasks.mme import utils as mme_utils
    from lmms_eval.tasks.seedbench import utils as seed_utils

    mme_kwargs = _yaml_kwargs(Path(mme_utils.__file__).with_name("mme.yaml"))
    mmb_kwargs = _yaml_kwargs(
        Path(en_utils.__file__).with_name("_default_template_mmbench_en_yaml")
    )
    for doc in _split(test_world, "mme").remove_columns("image").to_list():
        assert text.mme_prompt(doc["question"]) == mme_utils.mme_doc_to_text(doc, mme_kwargs)
    for doc in _split(test_world, "mmbench").remove_columns("image").to_list():
        options = tuple(doc[c] for c in "ABCD")
        assert text.mmbench_prompt(doc["question"], options) == en_utils.mmbench_doc_to_text(
            doc, mmb_kwargs
        )
    for doc in _split(test_world, "seedbench").remove_columns("image").to_list():
        options = tuple(doc[f"choice_{c}"] for c in "abcd")
        assert text.seed_prompt(doc["question"], options) == seed_utils.seed_doc_to_text(doc)


def test_training_records(test_world):
    stage1 = json.loads(test_world.stage1.read_text())
    stage2 = json.loads(test_world.stage2.read_text())
    size = WORLD_SIZES["test"]
    assert len(stage1) == size.n_train
    assert len(stage2) == size.n_train * size.stage2_per_image
    for record in stage1 + stage2:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and gpt["value"]
        assert (test_world.root / record["image"]).is_file()
        assert record["image"].startswith("images/train/")
    kinds = Counter(r["kind"] for r in stage2)
    for kind, share in STAGE2_MIX.items():
        assert abs(kinds[kind] / len(stage2) - share) < 0.08, kinds
    for record in stage2:  # the benchmark post-prompts and answer forms
        prompt, reply = record["conversations"][0]["value"], record["conversations"][1]["value"]
        if record["kind"] == "yes_no":
            assert prompt.endswith(text.SHORT_POST_PROMPT) and reply in ("Yes", "No")
        if record["kind"] == "mcq":
            assert prompt.endswith(text.MCQ_POST_PROMPT) and reply in text.LETTERS


def test_bad_input_is_named(tmp_path):
    with pytest.raises(WorldError, match="unknown world size 'huge'"):
        generate_world(tmp_path / "w", seed=0, size="huge")
    with pytest.raises(WorldError, match="no world.json"):
        load_world(tmp_path)


def test_png_images_are_64px(test_world):
    from PIL import Image

    path = next((test_world.images / "train").glob("*.png"))
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_ensure_world_reuses_a_current_world_and_regenerates_an_old_format(tmp_path):
    from mage.world.generate import FORMAT_VERSION, ensure_world, generate_world

    world = generate_world(tmp_path / "w", seed=0, size="test")
    stamp = world.world_json.stat().st_mtime_ns
    assert ensure_world(tmp_path / "w", seed=0, size="test").root == world.root
    assert world.world_json.stat().st_mtime_ns == stamp  # reused, not rewritten
    info = json.loads(world.world_json.read_text())
    world.world_json.write_text(json.dumps({**info, "format_version": FORMAT_VERSION - 1}))
    again = ensure_world(tmp_path / "w", seed=0, size="test")
    assert again.info()["format_version"] == FORMAT_VERSION
    assert again.info()["content_hash"] == info["content_hash"]
