"""Per-category scores and per-item correctness, derived from lmms-eval's per-sample log.

lmms-eval reports headline numbers only (MME perception / cognition totals, MMBench
overall, SEED image / video / all); per-category scores are logged at most. This module
turns the per-sample log (``log_samples=True``) into tidy tables, calling lmms-eval's own
scoring functions on the logged values, and checks that the derived rows add up to
lmms-eval's headline numbers (raising `EvalConsistencyError` if they do not):

- MME: per category ``acc`` (x100), ``acc_plus`` (both questions of an image right, x100)
  and ``score`` (= acc + acc_plus, lmms-eval's category score); the category scores sum to
  ``mme_perception_score`` / ``mme_cognition_score``.
- MMBench: circular evaluation (a question counts only if every option-shifted copy is
  right, decided by lmms-eval's ``MMBench_Evaluator.eval_sub_data``); ``acc`` per category
  and ``l2_acc`` per L2-category (x100); their item-weighted means equal ``gpt_eval_score``.
- SEED: ``acc`` per ``question_type_id`` (fraction, as lmms-eval reports); item-weighted
  means equal ``seed_all`` (and ``seed_image`` / ``seed_video``).

`derive_tables` does all three; `benchmark_notes` says, for the record, what they mean.
Columns: scores ``[benchmark, metric, category, value, n]`` (category ``"all"`` for
headline rows; ``n`` = items behind the value); items ``[benchmark, item_id, category,
correct]`` (MME items are single questions, MMBench items circular questions).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from mage.scores import ITEM_COLUMNS, SCORE_COLUMNS

TOLERANCE = 1e-6

MME_HEADLINES = ("mme_perception_score", "mme_cognition_score")
MMBENCH_HEADLINE = "gpt_eval_score"
SEED_HEADLINES = ("seed_image", "seed_video", "seed_all")
CIRCULAR_OFFSET = 1_000_000  # MMBench rows with index >= this are option-shifted copies


class EvalConsistencyError(RuntimeError):
    """Derived per-category numbers do not add up to lmms-eval's headline numbers."""


def headline(results: dict, task: str, metric: str) -> float | None:
    """lmms-eval's value of ``metric`` for ``task`` (filter ``none``), or None if absent."""
    value = results.get("results", {}).get(task, {}).get(f"{metric},none")
    return None if value is None or value == "N/A" else float(value)


def _check(benchmark: str, what: str, derived: float, reported: float) -> None:
    if not math.isclose(derived, reported, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
        raise EvalConsistencyError(
            f"{benchmark}: {what} derived from the per-sample log is {derived!r}, but "
            f"lmms-eval reports {reported!r}; the per-sample log and the aggregation disagree "
            "(was the evaluation run with a different lmms-eval version or a filtered log?)"
        )


def _row(benchmark: str, metric: str, category: Any, value: float, n: int) -> dict:
    return dict(benchmark=benchmark, metric=metric, category=str(category), value=value, n=n)


# ---- MME ---------------------------------------------------------------------------------
def mme_tables(samples: list[dict], results: dict, task: str) -> tuple[list[dict], list[dict]]:
    from lmms_eval.tasks.mme.utils import eval_type_dict, mme_aggregate_results

    by_category: dict[str, list[dict]] = defaultdict(list)
    items: list[dict] = []
    seen: dict[str, int] = defaultdict(int)
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        logged = next((sample[k] for k in MME_HEADLINES if k in sample), None)
        if logged is None:
            raise EvalConsistencyError(f"mme: sample {sample['doc_id']} has no logged score")
        by_category[logged["category"]].append(logged)
        qid = str(logged["question_id"])
        items.append(
            dict(
                benchmark="mme",
                item_id=f"{qid}#{seen[qid]}",
                category=logged["category"],
                correct=logged["score"] == 1.0,
            )
        )
        seen[qid] += 1

    rows: list[dict] = []
    totals = {metric: [0.0, 0] for metric in MME_HEADLINES}
    for category, logged in sorted(by_category.items()):
        score = mme_aggregate_results(logged)  # lmms-eval's category score (acc + acc+)
        per_image: dict[str, list[float]] = defaultdict(list)
        for entry in logged:
            per_image[str(entry["question_id"])].append(entry["score"])
        acc = 100.0 * sum(e["score"] for e in logged) / len(logged)
        acc_plus = 100.0 * sum(sum(s) == len(s) for s in per_image.values()) / len(per_image)
        _check("mme", f"{category} acc + acc_plus", acc + acc_plus, score)
        rows += [
            _row("mme", "acc", category, acc, len(logged)),
            _row("mme", "acc_plus", category, acc_plus, len(logged)),
            _row("mme", "score", category, score, len(logged)),
        ]
        kind = (
            "mme_perception_score"
            if category in eval_type_dict["Perception"]
            else "mme_cognition_score"
        )
        totals[kind][0] += score
        totals[kind][1] += len(logged)

    headlines = []
    for metric, (derived, n) in totals.items():
        reported = headline(results, task, metric)
        if reported is None:
            if n:
                raise EvalConsistencyError(f"mme: lmms-eval reports no {metric} for {n} items")
            continue
        _check("mme", f"sum of category scores ({metric})", derived, reported)
        headlines.append(_row("mme", metric, "all", reported, n))
    return headlines + rows, items


# ---- MMBench ----------------------------------------------------------------------------
@contextmanager
def kept_mmbench_verdicts() -> Iterator[dict[int, int]]:
    """While lmms-eval scores MMBench, keep each circular question's verdict (main index ->
    hit) as its own evaluator decides it. With GPT matching, deciding again for the derived
    tables would call the API a second time and could get other answers (then the tables
    would disagree with the reported score and the whole evaluation would be refused).
    The task must aggregate with the imported ``en_utils`` module's functions, whose
    evaluator this patches (`harness.eval_tasks.mmbench_metrics` sees to that)."""
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    evaluator = _mmbench_evaluator(MMBench_Evaluator)
    verdicts: dict[int, int] = {}
    decide = evaluator.eval_sub_data

    def keep(sub_data, *args, **kwargs):
        hit = decide(sub_data, *args, **kwargs)
        verdicts[int(sub_data["index"].min()) % CIRCULAR_OFFSET] = int(hit)
        return hit

    evaluator.eval_sub_data = keep  # on this instance only: the class stays as it is
    try:
        yield verdicts
    finally:
        del evaluator.eval_sub_data


def mmbench_hits(
    logged: list[dict], eval_method: str, verdicts: dict[int, int] | None = None
) -> pd.DataFrame:
    """One row per circular question: index, category, l2-category, hit (0/1).

    Prepares the logged ``gpt_eval_score`` entries as ``MMBench_Evaluator.eval_result`` does
    and lets lmms-eval's ``eval_sub_data`` decide each question over all its copies, unless
    lmms-eval already reached the verdict while scoring (``verdicts``,
    `kept_mmbench_verdicts`): that one is reused, so a GPT judge is not asked twice and a
    static verdict is not decided twice (0.6 s of pandas per evaluation of 2,000 rows). The
    tables are still checked against the score lmms-eval reports (`mmbench_tables`).
    """
    reuse = verdicts or {}
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    evaluator = _mmbench_evaluator(MMBench_Evaluator)
    random.seed(2680)  # as eval_result does, for its random fallback answers
    data = pd.DataFrame(logged).sort_values(by="index")
    data["prediction"] = [str(x) for x in data["prediction"]]
    data = data.rename(columns={k: k.lower() for k in data.columns if k not in "ABCD"})
    answer_map = dict(zip(data["index"], data["answer"]))
    copies = dict(tuple(data.groupby(data["index"] % CIRCULAR_OFFSET)))
    out = []
    for _, main in data[data["index"] < CIRCULAR_OFFSET].iterrows():
        hit = reuse.get(int(main["index"]))
        if hit is None:
            hit = evaluator.eval_sub_data(
                copies[main["index"]], answer_map, static_only=eval_method == "static"
            )
        out.append(
            dict(
                index=int(main["index"]),
                category=main["category"],
                l2_category=main.get("l2-category"),
                hit=int(hit),
            )
        )
    return pd.DataFrame(out, columns=["index", "category", "l2_category", "hit"])


def _mmbench_evaluator(cls: type) -> Any:
    """The evaluator the task's aggregation uses (its module builds it from env/config)."""
    from lmms_eval.tasks.mmbench import en_utils

    return getattr(en_utils, "mmbench_evaluator", None) or cls()


def mmbench_tables(
    samples: list[dict],
    results: dict,
    task: str,
    eval_method: str,
    verdicts: dict[int, int] | None = None,
) -> tuple[list[dict], list[dict]]:
    logged = [s[MMBENCH_HEADLINE] for s in samples if MMBENCH_HEADLINE in s]
    hits = mmbench_hits(logged, eval_method, verdicts)
    reported = headline(results, task, MMBENCH_HEADLINE)
    if reported is None:
        raise EvalConsistencyError(f"mmbench: lmms-eval reports no {MMBENCH_HEADLINE}")
    n = len(hits)
    overall = 100.0 * hits["hit"].mean() if n else 0.0
    _check("mmbench", "overall circular accuracy", overall, reported)
    rows = [_row("mmbench", MMBENCH_HEADLINE, "all", reported, n)]
    for metric, column in (("acc", "category"), ("l2_acc", "l2_category")):
        groups = hits.dropna(subset=[column]).groupby(column)["hit"]
        part = [_row("mmbench", metric, c, 100.0 * g.mean(), len(g)) for c, g in groups]
        if part and sum(r["n"] for r in part) == n:
            weighted = sum(r["value"] * r["n"] for r in part) / n
            _check("mmbench", f"item-weighted mean of {metric}", weighted, reported)
        rows += part
    items = [
        dict(benchmark="mmbench", item_id=str(r.index), category=r.category, correct=bool(r.hit))
        for r in hits.itertuples()
    ]
    return rows, items


def check_mmbench_details(rows: list[dict], details: dict) -> None:
    """Compare per-category rows with the category accuracies lmms-eval wrote to a file."""
    for metric, key in (("acc", "category_acc"), ("l2_acc", "l2_category_acc")):
        for category, value in (details.get(key) or {}).items():
            match = [r for r in rows if r["metric"] == metric and r["category"] == str(category)]
            if not match:
                raise EvalConsistencyError(
                    f"mmbench: lmms-eval has {key} {category!r}; we have none"
                )
            _check("mmbench", f"{metric} of {category!r}", match[0]["value"], 100.0 * value)


# ---- SEED-Bench -------------------------------------------------------------------------
def seed_tables(samples: list[dict], results: dict, task: str) -> tuple[list[dict], list[dict]]:
    from lmms_eval.tasks.seedbench.utils import seed_aggregation_result

    items: list[dict] = []
    kinds: dict[str, list[bool]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        logged = sample["seed_all"]
        correct = seed_aggregation_result([logged]) == 1.0  # lmms-eval's comparison
        category = str(sample["doc"].get("question_type_id"))
        items.append(
            dict(
                benchmark="seedbench",
                item_id=str(logged["question_id"]),
                category=category,
                correct=correct,
            )
        )
        kinds["seed_all"].append(correct)
        kinds[f"seed_{sample['doc'].get('data_type')}"].append(correct)

    rows: list[dict] = []
    for metric in SEED_HEADLINES:
        reported = headline(results, task, metric)
        flags = kinds.get(metric, [])
        if reported is None:
            if flags:
                raise EvalConsistencyError(f"seedbench: lmms-eval reports no {metric}")
            continue
        _check("seedbench", metric, sum(flags) / len(flags), reported)
        rows.append(_row("seedbench", metric, "all", reported, len(flags)))
    frame = pd.DataFrame(items, columns=ITEM_COLUMNS)
    for category, group in frame.groupby("category"):
        rows.append(_row("seedbench", "acc", category, group["correct"].mean(), len(group)))
    if len(frame):
        seed_all = headline(results, task, "seed_all")
        per_type = [r for r in rows if r["metric"] == "acc"]
        weighted = sum(r["value"] * r["n"] for r in per_type) / len(frame)
        _check("seedbench", "item-weighted mean of per-type acc", weighted, seed_all)
    return rows, items


def to_frames(rows: list[dict], items: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    scores = pd.DataFrame(rows, columns=SCORE_COLUMNS).astype({"value": float, "n": int})
    return scores, pd.DataFrame(items, columns=ITEM_COLUMNS).astype({"correct": bool})


# ---- all benchmarks ---------------------------------------------------------------------
def derive_tables(
    results: dict,
    samples: dict,
    names: dict[str, str],
    mmbench_method: str,
    details_dir: Path,
    mmbench_verdicts: dict[int, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores and items of every evaluated benchmark ({benchmark: lmms-eval task name}).

    ``details_dir`` is where lmms-eval's MMBench aggregation wrote its category accuracies;
    when that file is there, the derived MMBench rows are checked against it too."""
    rows: list[dict] = []
    items: list[dict] = []
    for bench, task in names.items():
        if bench == "mme":
            part = mme_tables(samples[task], results, task)
        elif bench == "mmbench":
            part = mmbench_tables(samples[task], results, task, mmbench_method, mmbench_verdicts)
            details = Path(details_dir) / f"{task}_results.json"
            if details.is_file():
                check_mmbench_details(part[0], json.loads(details.read_text()))
        else:
            part = seed_tables(samples[task], results, task)
        rows += part[0]
        items += part[1]
    return to_frames(rows, items)


def benchmark_notes(
    results: dict, samples: dict, names: dict[str, str], mmbench_method: str
) -> dict[str, Any]:
    """For the record: what the numbers of each benchmark mean."""
    from lmms_eval.tasks.mme.utils import eval_type_dict

    notes: dict[str, Any] = {}
    if "mme" in names:
        logged = [s[k] for s in samples[names["mme"]] for k in MME_HEADLINES if k in s]
        notes["mme"] = {
            "perception_categories": eval_type_dict["Perception"],
            "cognition_categories": eval_type_dict["Cognition"],
            "categories_evaluated": sorted({entry["category"] for entry in logged}),
            "reported": "perception and cognition separately (not summed)",
        }
    if "mmbench" in names:
        judge = os.environ.get("MODEL_VERSION", "gpt-4o-2024-11-20")
        notes["mmbench"] = {
            "task": names["mmbench"],
            "version": "MMBench en dev",
            "circular": True,
            "answer_extraction": "static" if mmbench_method == "static" else f"openai ({judge})",
        }
    if "seedbench" in names:
        task = names["seedbench"]
        notes["seedbench"] = {
            "task": task,
            "subset": sorted({s["doc"].get("data_type") for s in samples[task]}),
            "headline_metrics": [
                m for m in SEED_HEADLINES if headline(results, task, m) is not None
            ],
        }
    return notes
