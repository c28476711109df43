"""Benchmark splits in the official schemas and test models for the lmms-eval scoring path.

`bench_data_dir` gives a folder with ``mme/``, ``mmbench/``, ``seedbench/`` written by
``DatasetDict.save_to_disk`` in the columns and splits of lmms-lab's MME, MMBench (en, dev)
and SEED-Bench (test): the synthetic world's held-out benchmark splits when the session
fixture ``test_world`` exists, else small hand-built ones. The test models implement
`MageModel.generate` / `loglikelihood`; the scoring path they go through is lmms-eval's.
The tests in this file check the data checks of `harness.eval_tasks`.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MME_CATEGORIES = ("existence", "count", "color", "position", "commonsense_reasoning")
MME_PROMPT = " Please answer yes or no."


def _image(rng: np.random.Generator, size: int = 16) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_bench_data(out: Path, seed: int = 0) -> Path:
    """Small MME / MMBench / SEED splits in the official schemas (see docs/architecture.md)."""
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage

    from mage.world.schemas import SEED_FEATURES

    rng = np.random.default_rng(seed)
    mme = []
    for category in MME_CATEGORIES:
        for k in range(3):
            image = _image(rng)
            for answer, word in (("Yes", "a"), ("No", "no")):
                mme.append(
                    dict(
                        question_id=f"{category}/{k:04d}.png",
                        image=image,
                        question=f"Is there {word} {category} thing {k}?{MME_PROMPT}",
                        answer=answer,
                        category=category,
                    )
                )
    mme_features = Features(
        question_id=Value("string"),
        image=HFImage(),
        question=Value("string"),
        answer=Value("string"),
        category=Value("string"),
    )
    DatasetDict(test=Dataset.from_list(mme, features=mme_features)).save_to_disk(out / "mme")

    options = ["red", "green", "blue", "yellow"]
    mmbench = []
    for i in range(6):
        image, answer = _image(rng), i % 4
        for copy in range(1 + i % 3):  # 1-3 circular copies, options shifted
            shifted = options[copy:] + options[:copy]
            mmbench.append(
                {
                    "index": i + copy * 1_000_000,
                    "question": f"Which colour is thing {i}?",
                    "hint": None if i % 2 else f"hint {i}",
                    **dict(zip("ABCD", shifted)),
                    "answer": "ABCD"[shifted.index(options[answer])],
                    "category": ("color_attribute", "object_localization", "spatial_relationship")[
                        i % 3
                    ],
                    "image": image,
                    "source": "test",
                    "L2-category": ("FP-S", "FP-C")[i % 2],
                    "comment": None,
                    "split": "dev",
                }
            )
    mmbench_features = Features(
        {
            "index": Value("int64"),
            "question": Value("string"),
            "hint": Value("string"),
            **{c: Value("string") for c in "ABCD"},
            "answer": Value("string"),
            "category": Value("string"),
            "image": HFImage(),
            "source": Value("string"),
            "L2-category": Value("string"),
            "comment": Value("string"),
            "split": Value("string"),
        }
    )
    DatasetDict(dev=Dataset.from_list(mmbench, features=mmbench_features)).save_to_disk(
        out / "mmbench"
    )

    seed_rows = []
    for i in range(10):
        video = i >= 8
        seed_rows.append(
            dict(
                answer="ABCD"[i % 4],
                **{f"choice_{c}": f"{c} thing {i}" for c in "abcd"},
                data_id=f"{i}.png",
                data_type="video" if video else "image",
                question=f"What is thing {i}?",
                question_id=f"q{i}",
                question_type_id=10 if video else 1 + i % 3,
                image=[_image(rng) for _ in range(2 if video else 1)],
                segment=None,
            )
        )
    DatasetDict(test=Dataset.from_list(seed_rows, features=SEED_FEATURES)).save_to_disk(
        out / "seedbench"
    )
    return out


@pytest.fixture(scope="session")
def bench_data_dir(request, tmp_path_factory) -> Path:
    """The world's benchmark splits if the `test_world` fixture exists, else hand-built ones."""
    try:
        world = request.getfixturevalue("test_world")
    except pytest.FixtureLookupError:
        world = None
    if world is not None:  # WorldPaths.bench = {benchmark: folder}
        bench = Path(world.bench["mme"]).parent
        if (bench / "mme" / "dataset_dict.json").is_file():
            return bench
    return build_bench_data(tmp_path_factory.mktemp("bench"))


# ---- test models (the MageModel generate/loglikelihood interface) ----------------------------
def image_key(image) -> str | None:
    if image is None:
        return None
    image = image.convert("RGB")
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


class OracleModel:
    """Answers from the datasets' answer column: (image, question text) -> answer."""

    def __init__(self, data_dir: Path) -> None:
        import datasets

        self.entries: dict[str | None, list[tuple[list[str], str]]] = {}
        mme = datasets.load_from_disk(str(data_dir / "mme"))["test"]
        for row in mme:
            self._add(
                row["image"], [row["question"].replace(MME_PROMPT, "").strip()], row["answer"]
            )
        for row in datasets.load_from_disk(str(data_dir / "mmbench"))["dev"]:
            parts = [row["question"]] + [f"{c}. {row[c]}" for c in "ABCD" if row[c]]
            self._add(row["image"], parts, row["answer"])
        for row in datasets.load_from_disk(str(data_dir / "seedbench"))["test"]:
            parts = [row["question"]] + [f"{c.upper()}. {row[f'choice_{c}']}" for c in "abcd"]
            self._add(row["image"][0], parts, row["answer"])
        self.calls: list[int] = []

    def _add(self, image, parts: list[str], answer: str) -> None:
        self.entries.setdefault(image_key(image), []).append((parts, answer))

    def answer(self, image, question: str) -> str:
        found = {
            a
            for parts, a in self.entries.get(image_key(image), [])
            if all(p in question for p in parts)
        }
        if len(found) != 1:
            raise AssertionError(f"oracle: {len(found)} answers for {question!r}")
        return found.pop()

    def generate(self, images, questions, max_new_tokens, stop=None):
        self.calls.append(len(questions))
        return [self.answer(i, q) for i, q in zip(images, questions)]

    def loglikelihood(self, images, contexts, continuations):
        return [0.0 for _ in contexts]


class YesOrRandomLetterModel:
    """Always "Yes" to yes/no questions; a deterministic random letter to multiple choice."""

    def generate(self, images, questions, max_new_tokens, stop=None):
        out = []
        for question in questions:
            if "option's letter" in question:
                seed = int(hashlib.sha1(question.encode()).hexdigest()[:8], 16)
                out.append(random.Random(seed).choice("ABCD"))
            else:
                out.append("Yes")
        return out

    def loglikelihood(self, images, contexts, continuations):
        return [float(len(c)) for c in continuations]


# ---- tests of the data checks -----------------------------------------------------------------
def test_check_local_data_records_and_rejects(bench_data_dir, tmp_path):
    from harness.eval_tasks import EvalError, check_local_data

    records = check_local_data(bench_data_dir, ["mme", "mmbench", "seedbench"], limit=None)
    assert set(records) == {"mme", "mmbench", "seedbench"}
    assert records["mmbench"]["split"] == "dev" and len(records["mme"]["content_sha256"]) == 64
    assert records == check_local_data(bench_data_dir, ["mme", "mmbench", "seedbench"], None)

    with pytest.raises(EvalError, match="mme"):
        check_local_data(tmp_path, ["mme"], limit=None)  # no mme/ folder here
    with pytest.raises(EvalError, match="pairs"):
        check_local_data(bench_data_dir, ["mme"], limit=3)  # would split an image's two questions


def test_parse_tasks_and_mmbench_choice(monkeypatch):
    from harness.eval_tasks import EvalError, mmbench_choice, parse_tasks

    assert parse_tasks("mme,mmbench,seed") == ("mme", "mmbench", "seedbench")
    with pytest.raises(EvalError, match="unknown task 'gqa'"):
        parse_tasks(["mme", "gqa"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("API_TYPE", raising=False)
    assert mmbench_choice() == ("mmbench_en_dev_static", "static")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert mmbench_choice() == ("mmbench_en_dev", "openai")
    # a method chosen once (by a sweep's driver) is kept, whatever this process's environment
    assert mmbench_choice("static") == ("mmbench_en_dev_static", "static")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(EvalError, match="'gpt'.*needs OPENAI_API_KEY"):
        mmbench_choice("gpt")  # never a silent fall-back to static matching


def test_real_datasets_without_a_token_fail_naming_hf_token(monkeypatch, tmp_path):
    import huggingface_hub

    from harness.eval import evaluate
    from harness.eval_tasks import EvalError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(EvalError, match="HF_TOKEN"):
        evaluate(YesOrRandomLetterModel(), tasks="mme", data_dir=None, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
