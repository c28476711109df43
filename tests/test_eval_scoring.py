"""Scoring through the real lmms-eval path (`harness.eval.evaluate` -> simple_evaluate).

Two evaluations on the benchmark splits: an oracle (answers from the answer column) must
get 200 per MME category, 100 on MMBench and 1.0 on SEED; always-"Yes" (with a random letter
for multiple choice) must get 50 per MME category. Both check that the derived per-category
rows add up to lmms-eval's headline numbers and that every output file is written.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from test_eval_benchdata import OracleModel, YesOrRandomLetterModel, bench_data_dir  # noqa: F401

from harness import eval_tables
from harness.eval import evaluate
from harness.eval_tasks import EvalError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def offline():
    """Local data only: nothing may reach the Hugging Face Hub."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def oracle_run(bench_data_dir, tmp_path_factory, offline):  # noqa: F811
    out = tmp_path_factory.mktemp("oracle")
    return evaluate(
        OracleModel(bench_data_dir), data_dir=bench_data_dir, out_dir=out, batch_size=4
    ), out


@pytest.fixture(scope="module")
def yes_run(bench_data_dir, tmp_path_factory, offline):  # noqa: F811
    out = tmp_path_factory.mktemp("yes")
    return evaluate(
        YesOrRandomLetterModel(), data_dir=bench_data_dir, out_dir=out, batch_size=3
    ), out


def _value(scores: pd.DataFrame, benchmark: str, metric: str, category: str = "all") -> float:
    row = scores.query("benchmark == @benchmark and metric == @metric and category == @category")
    assert len(row) == 1, (benchmark, metric, category)
    return float(row["value"].iloc[0])


def _assert_adds_up(scores: pd.DataFrame, items: pd.DataFrame) -> None:
    mme = scores[scores.benchmark == "mme"]
    category_scores = mme[mme.metric == "score"].set_index("category")["value"]
    from lmms_eval.tasks.mme.utils import eval_type_dict

    for metric, kind in (
        ("mme_perception_score", "Perception"),
        ("mme_cognition_score", "Cognition"),
    ):
        cats = [c for c in category_scores.index if c in eval_type_dict[kind]]
        if cats:
            assert category_scores[cats].sum() == pytest.approx(_value(scores, "mme", metric))
    acc = mme[mme.metric == "acc"].set_index("category")["value"]
    plus = mme[mme.metric == "acc_plus"].set_index("category")["value"]
    assert (acc + plus).to_dict() == pytest.approx(category_scores.to_dict())

    for bench, headline, metric, scale in (
        ("mmbench", "gpt_eval_score", "acc", 100.0),
        ("mmbench", "gpt_eval_score", "l2_acc", 100.0),
        ("seedbench", "seed_all", "acc", 1.0),
    ):
        part = scores[(scores.benchmark == bench) & (scores.metric == metric)]
        weighted = (part.value * part.n).sum() / part.n.sum()
        assert weighted == pytest.approx(_value(scores, bench, headline))
        correct = items[items.benchmark == bench].correct
        assert scale * correct.mean() == pytest.approx(_value(scores, bench, headline))


def test_oracle_scores_full_marks_and_writes_outputs(oracle_run, bench_data_dir):  # noqa: F811
    result, out = oracle_run
    scores, items = result.scores, result.items
    mme = scores[(scores.benchmark == "mme") & (scores.metric == "score")]
    assert len(mme) >= 2 and (mme.value == 200.0).all()
    assert _value(scores, "mmbench", "gpt_eval_score") == 100.0
    assert (
        scores[scores.metric.isin(["acc", "l2_acc"]) & (scores.benchmark == "mmbench")].value
        == 100.0
    ).all()
    assert _value(scores, "seedbench", "seed_all") == 1.0
    assert items.correct.all() and set(items.benchmark) == {"mme", "mmbench", "seedbench"}
    assert items.groupby("benchmark").item_id.apply(lambda s: s.is_unique).all()
    _assert_adds_up(scores, items)

    results = json.loads((out / "lmms_eval_results.json").read_text())
    assert results["results"]["mme"]["mme_perception_score,none"] == _value(
        scores, "mme", "mme_perception_score"
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), scores)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "items.parquet"), items)
    record = json.loads((out / "record.json").read_text())
    assert record["lmms_eval_version"] == "0.7.3"
    assert record["mmbench"]["circular"] is True and record["batch_size"] == 4
    assert record["tasks"]["mmbench"]["task"] == "mmbench_en_dev_static"
    assert record["mmbench_scoring"] == "static"
    assert record["datasets"]["mme"]["local_path"] == str((bench_data_dir / "mme").resolve())
    for task, n in results["n-samples"].items():
        lines = (out / "samples" / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == n["effective"] and json.loads(lines[0])["doc_id"] == 0


def test_always_yes_scores_50_per_mme_category(yes_run):
    result, _ = yes_run
    scores = result.scores
    mme = scores[scores.benchmark == "mme"]
    assert (mme[mme.metric == "score"].value == 50.0).all()
    assert (mme[mme.metric == "acc_plus"].value == 0.0).all()
    assert 0.0 < _value(scores, "seedbench", "seed_all") < 1.0  # random letters: partly right
    _assert_adds_up(scores, result.items)


def test_derived_rows_that_disagree_with_lmms_eval_raise(yes_run):
    _, out = yes_run
    results = json.loads((out / "lmms_eval_results.json").read_text())
    samples = [json.loads(x) for x in (out / "samples" / "mme.jsonl").read_text().splitlines()]
    eval_tables.mme_tables(samples, results, "mme")  # consistent as written
    results["results"]["mme"]["mme_perception_score,none"] += 1.0
    with pytest.raises(eval_tables.EvalConsistencyError, match="mme_perception_score"):
        eval_tables.mme_tables(samples, results, "mme")

    seed = [json.loads(x) for x in (out / "samples" / "seedbench.jsonl").read_text().splitlines()]
    logged = seed[0]["seed_all"]  # flip one answer: the log no longer matches seed_all
    logged["pred"] = "Z" if logged["pred"] == logged["answer"] else logged["answer"]
    with pytest.raises(eval_tables.EvalConsistencyError, match="seed"):
        eval_tables.seed_tables(seed, results, "seedbench")


def test_a_failing_model_raises_instead_of_scoring_zero(bench_data_dir, tmp_path, offline):  # noqa: F811
    class Broken(YesOrRandomLetterModel):
        def generate(self, images, questions, max_new_tokens, stop=None):
            raise RuntimeError("out of memory in generate")

    with pytest.raises(EvalError, match="out of memory in generate"):
        evaluate(Broken(), tasks="mme", data_dir=bench_data_dir, out_dir=tmp_path)
    assert not (tmp_path / "scores.parquet").exists()


def test_mmbench_verdicts_lmms_eval_reached_are_reused_not_decided_again(yes_run, monkeypatch):
    """With GPT matching, deciding each circular question again for the derived tables would
    call the API a second time (and might be answered otherwise); with static matching it
    would redo the same work: the verdicts lmms-eval's own evaluator reached while scoring
    are kept and reused, and equal what deciding again gives."""
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    _, out = yes_run
    lines = (out / "samples" / "mmbench_en_dev_static.jsonl").read_text().splitlines()
    logged = [json.loads(line)["gpt_eval_score"] for line in lines]
    evaluator = eval_tables._mmbench_evaluator(MMBench_Evaluator)
    with eval_tables.kept_mmbench_verdicts() as verdicts:
        evaluator.eval_result(logged, eval_method="static")  # as the task's aggregation does
    assert "eval_sub_data" not in vars(evaluator)  # the evaluator is left as it was
    decided = eval_tables.mmbench_hits(logged, "static")
    assert verdicts == dict(zip(decided["index"], decided["hit"])) and len(verdicts) > 1

    def no_second_decision(*args, **kwargs):
        raise AssertionError("decided again")

    monkeypatch.setattr(MMBench_Evaluator, "eval_sub_data", no_second_decision)
    for method in ("openai", "static"):
        reused = eval_tables.mmbench_hits(logged, method, verdicts)
        pd.testing.assert_frame_equal(reused, decided)


def test_the_mmbench_tables_get_the_verdicts_lmms_eval_reached(
    bench_data_dir,  # noqa: F811
    tmp_path,
    offline,
    monkeypatch,
):
    """A task YAML's ``!function`` runs its own copy of lmms-eval's MMBench module, whose
    evaluator nothing else reaches: the task scores with the imported module's functions
    (`harness.eval_tasks.mmbench_metrics`), so the tables are handed every verdict as
    lmms-eval reached it (a GPT judge is asked once). The .xlsx meant for the MMBench server
    is not written."""
    given = []
    decide = eval_tables.mmbench_hits

    def spy(logged, method, verdicts=None):
        given.append(dict(verdicts or {}))
        return decide(logged, method, verdicts)

    monkeypatch.setattr(eval_tables, "mmbench_hits", spy)
    evaluate(
        YesOrRandomLetterModel(),
        tasks="mmbench",
        data_dir=bench_data_dir,
        out_dir=tmp_path,
        batch_size=3,
    )
    items = pd.read_parquet(tmp_path / "items.parquet")
    hits = {int(i): int(c) for i, c in zip(items["item_id"], items["correct"])}
    assert len(given) == 1 and given[0] == hits and len(hits) > 1  # not {}: decided again
    assert not list(tmp_path.rglob("*.xlsx"))
