"""The official column schemas and split names of the benchmark datasets lmms-eval loads.

The world's held-out benchmark splits are written with exactly these features, so lmms-eval's
own ``doc_to_text`` / ``process_results`` / aggregation run on them unchanged through a
``load_from_disk`` override of the built-in task (see harness/eval_tasks.py).

- MME: ``lmms-lab-encoder/MME`` split ``test``.
- MMBench: ``lmms-lab-encoder/MMBench`` config ``en`` split ``dev`` (circular copies of a
  question have ``index + k * 1_000_000``).
- SEED-Bench: ``lmms-lab-encoder/SEED-Bench`` split ``test`` (``image`` is a list of images;
  ``segment`` is only set for video rows).
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

MME_FEATURES = Features(
    {
        "question_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": Value("string"),
        "category": Value("string"),
    }
)

MMBENCH_FEATURES = Features(
    {
        "index": Value("int64"),
        "question": Value("string"),
        "hint": Value("string"),
        "A": Value("string"),
        "B": Value("string"),
        "C": Value("string"),
        "D": Value("string"),
        "answer": Value("string"),
        "category": Value("string"),
        "image": Image(),
        "source": Value("string"),
        "L2-category": Value("string"),
        "comment": Value("string"),
        "split": Value("string"),
    }
)

SEED_FEATURES = Features(
    {
        "answer": Value("string"),
        "choice_a": Value("string"),
        "choice_b": Value("string"),
        "choice_c": Value("string"),
        "choice_d": Value("string"),
        "data_id": Value("string"),
        "data_type": Value("string"),
        "question": Value("string"),
        "question_id": Value("string"),
        "question_type_id": Value("int16"),
        "image": List(Image()),
        "segment": List(Value("int64")),
    }
)

# benchmark name (results column `benchmark`) -> (features, split name, lmms-eval task)
BENCHMARKS = {
    "mme": (MME_FEATURES, "test", "mme"),
    "mmbench": (MMBENCH_FEATURES, "dev", "mmbench_en_dev_static"),
    "seedbench": (SEED_FEATURES, "test", "seedbench"),
}

MMBENCH_CIRCULAR_OFFSET = 1_000_000
