"""`harness.bench_eval`: batch 1 vs batch N on the same data through lmms-eval, answers compared."""

from __future__ import annotations

import pytest
import torch
from test_eval_benchdata import YesOrRandomLetterModel, bench_data_dir  # noqa: F401

from harness.bench_eval import bench_eval, compare_answers, plan_runs
from harness.commands.bench import stdout_to_stderr

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


def test_repeats_report_each_runs_best_round_and_any_round_that_differs(
    bench_data_dir,  # noqa: F811
    monkeypatch,
):
    """Rounds run the whole plan in turn; a run's row is its fastest round, and a batching bug
    that shows in one round only still marks the run as differing."""
    import harness.bench_eval as be

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: list[int] = []

    class FlakyInRoundTwo(YesOrRandomLetterModel):
        def generate(self, images, questions, max_new_tokens, stop=None):
            answers = super().generate(images, questions, max_new_tokens)
            return ["No" if a == "Yes" and flaky[0] else a for a in answers]

    flaky = [False]
    real = be._row

    def timed_row(record, batch_size, workers, wall):
        calls.append(batch_size)
        row = real(record, batch_size, workers, wall)
        row["samples_per_s"] = 100.0 * len(calls)  # later rounds "faster"
        flaky[0] = len(calls) == 2  # the 3rd run (batch 1, round 2) answers differently
        return row

    monkeypatch.setattr(be, "_row", timed_row)
    rows = bench_eval(
        FlakyInRoundTwo(), bench_data_dir, tasks=("mme",), batch_sizes=(1, 4), limit=4, repeats=2
    )
    assert calls == [1, 4, 1, 4]  # round by round, every configuration in each
    one, four = rows
    assert one["samples_per_s_rounds"] == [100.0, 300.0] and one["samples_per_s"] == 300.0
    assert four["samples_per_s_rounds"] == [200.0, 400.0] and four["speedup"] == 400 / 300
    assert one["answers_identical"] is False and one["n_different"] == 4  # round 2's answers
    assert four["answers_identical"] is True
    with pytest.raises(ValueError, match="repeats"):
        bench_eval(object(), "data", repeats=0)


def test_library_prints_stay_off_the_json_on_stdout(capfd):
    """lmms-eval prints MMBench's summary to stdout, and evaluation workers inherit it: while a
    bench runs both go to stderr, so ``bench eval --json`` prints a document that parses."""
    import json
    import subprocess
    import sys

    with stdout_to_stderr():
        print("Category Acc. (dev):")
        subprocess.run([sys.executable, "-c", "print('from a worker')"], check=True)
    print(json.dumps([{"batch_size": 1}]))
    out, err = capfd.readouterr()
    assert json.loads(out) == [{"batch_size": 1}]
    assert "Category Acc." in err and "from a worker" in err
