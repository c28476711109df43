"""`harness.bench_eval`: batch 1 vs batch N on the same data through lmms-eval, answers compared."""

from __future__ import annotations

import pytest
import torch
from test_eval_benchdata import YesOrRandomLetterModel, bench_data_dir  # noqa: F401

from harness.bench_eval import bench_eval, compare_answers, plan_runs

torch.set_num_threads(1)


class BatchSensitiveModel(YesOrRandomLetterModel):
    """Answers "No" to yes/no questions in batches of more than one: a batching bug."""

    def generate(self, images, questions, max_new_tokens, stop=None):
        answers = super().generate(images, questions, max_new_tokens)
        return ["No" if a == "Yes" and len(questions) > 1 else a for a in answers]


def test_bench_eval_finds_answers_that_change_with_batch_size(bench_data_dir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = bench_eval(
        BatchSensitiveModel(), bench_data_dir, tasks=("mme",), batch_sizes=(1, 4), limit=8
    )
    assert [(r["batch_size"], r["workers"]) for r in rows] == [(1, 1), (4, 1)]
    one, four = rows
    assert one["samples"] == four["samples"] == 8 and one["tasks"] == "mme"
    assert one["samples_per_s"] > 0 and four["samples_per_s"] > 0 and one["speedup"] == 1.0
    assert one["answers_identical"] is True
    assert four["answers_identical"] is False and four["n_different"] == 8
    assert four["examples"][0]["reference"] == "Yes" and four["examples"][0]["this_run"] == "No"


def test_runs_and_answer_comparison():
    assert plan_runs([1, 8, 32], [1, 2]) == [(1, 1), (8, 1), (32, 1), (32, 2)]
    same = compare_answers({("mme", 0): "Yes"}, {("mme", 0): "Yes"})
    assert same["answers_identical"] and same["n_compared"] == 1 and same["examples"] == []
    result = compare_answers({("mme", 0): "Yes", ("mme", 1): "No"}, {("mme", 0): "Yes"})
    assert not result["answers_identical"] and result["n_different"] == 1
    assert result["examples"] == [{"task": "mme", "doc_id": 1, "reference": "No", "this_run": None}]
    with pytest.raises(ValueError, match="checkpoint folder"):
        bench_eval(object(), "data", workers=(1, 2))
