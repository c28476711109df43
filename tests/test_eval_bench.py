"""`harness.bench_eval`: batch 1 vs batch N on the same data through lmms-eval, answers compared."""

from __future__ import annotations

import torch
from test_eval_benchdata import YesOrRandomLetterModel, bench_data_dir  # noqa: F401

from harness.bench_eval import bench_eval, compare_answers

torch.set_num_threads(1)


class BatchSensitiveModel(YesOrRandomLetterModel):
    """Answers "No" to yes/no questions in batches of more than one: a batching bug."""

    def generate(self, images, questions, max_new_tokens):
        answers = super().generate(images, questions, max_new_tokens)
        return ["No" if a == "Yes" and len(questions) > 1 else a for a in answers]


def test_bench_eval_finds_answers_that_change_with_batch_size(bench_data_dir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = bench_eval(
        BatchSensitiveModel(), bench_data_dir, tasks=("mme",), batch_size=4, limit=8
    )
    assert report["samples"] == 8 and report["tasks"] == "mme"
    assert report["batch_1_samples_per_s"] > 0 and report["batch_n_samples_per_s"] > 0
    assert report["answers_identical"] is False and report["n_different"] == 8
    assert report["examples"][0]["batch_1"] == "Yes" and report["examples"][0]["batch_n"] == "No"


def test_compare_answers():
    same = compare_answers({("mme", 0): "Yes"}, {("mme", 0): "Yes"})
    assert same["answers_identical"] and same["n_compared"] == 1 and same["examples"] == []
    result = compare_answers({("mme", 0): "Yes", ("mme", 1): "No"}, {("mme", 0): "Yes"})
    assert not result["answers_identical"] and result["n_different"] == 1
    assert result["examples"] == [{"task": "mme", "doc_id": 1, "batch_1": "No", "batch_n": None}]
