"""Which benchmarks and lmms-eval tasks an evaluation means, and the data it reads.

Benchmark names and aliases (`parse_tasks`), the MMBench scoring method (``gpt`` answer
matching with an OpenAI/Azure key, else ``static``; `mmbench_choice`) and the lmms-eval task
arguments (`task_specs`). Data: ``data_dir=None`` loads the real datasets from the Hugging Face
Hub (needs ``HF_TOKEN``: the task YAMLs send a token even for public data; `hub_records`
records the resolved revisions). ``data_dir=DIR`` reads ``DIR/{mme,mmbench,seedbench}``
(``DatasetDict.save_to_disk`` folders in the official schemas and splits, checked by
`check_local_data`) through lmms-eval's ``load_from_disk`` override, which keeps the official
task and scoring; no network is needed (set ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1`` to be
sure). `write_local_task_yamls` does the same for the ``lmms-eval`` command
line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from harness.benchmarks import OFFICIAL, BenchmarkDataError, check_folder, content_hash

BENCHMARKS = ("mme", "mmbench", "seedbench")
ALIASES = {"seed": "seedbench", "seed-bench": "seedbench", "mmb": "mmbench"}
HUB_IDS = {bench: official.dataset_id for bench, official in OFFICIAL.items()}
SPLITS = {bench: official.split for bench, official in OFFICIAL.items()}


class EvalError(RuntimeError):
    """Evaluation could not run or did not produce scores; the message says why and what to do."""


def parse_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """Benchmark names from ``"mme,mmbench,seed"`` or a list; unknown names raise EvalError."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for raw in names:
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in BENCHMARKS:
            raise EvalError(
                f"unknown task {raw.strip()!r}; known: {', '.join(BENCHMARKS)} (alias: seed)"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise EvalError(f"no tasks given; choose from {', '.join(BENCHMARKS)}")
    return tuple(out)


# MMBench scoring method -> (lmms-eval task, answer extraction)
MMBENCH_SCORING = {
    "gpt": ("mmbench_en_dev", "openai"),
    "static": ("mmbench_en_dev_static", "static"),
}


def mmbench_scoring_from_env() -> str:
    """``gpt`` (GPT answer matching) when this process has an OpenAI/Azure key, else ``static``.

    A sweep decides this once in its driver (workers may not see the driver's environment)."""
    api_type = os.environ.get("API_TYPE", "openai")
    key = os.environ.get("AZURE_API_KEY" if api_type == "azure" else "OPENAI_API_KEY")
    return "gpt" if key else "static"


def mmbench_choice(scoring: str | None = None) -> tuple[str, str]:
    """(task name, answer extraction) of an MMBench scoring method (default: the environment's)."""
    scoring = scoring or mmbench_scoring_from_env()
    if scoring not in MMBENCH_SCORING:
        raise EvalError(
            f"unknown MMBench scoring {scoring!r}; choose one of {list(MMBENCH_SCORING)}"
        )
    if scoring == "gpt" and mmbench_scoring_from_env() != "gpt":
        raise EvalError(
            "MMBench scoring 'gpt' (GPT answer matching) needs OPENAI_API_KEY (or AZURE_API_KEY "
            "with API_TYPE=azure) in this process; set it, or score with 'static'"
        )
    return MMBENCH_SCORING[scoring]


def task_names(benchmarks: Iterable[str], mmbench_scoring: str | None = None) -> dict[str, str]:
    return {b: mmbench_choice(mmbench_scoring)[0] if b == "mmbench" else b for b in benchmarks}


def check_local_data(
    data_dir: str | Path, benchmarks: Iterable[str], limit: int | None, hash_content: bool = True
) -> dict:
    """Validate ``data_dir/<benchmark>`` folders (`harness.benchmarks.check_folder`: schema,
    and every row there unless ``limit``); return {benchmark: record} with content hashes."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise EvalError(f"data folder not found: {data_dir} (expected mme/, mmbench/, seedbench/)")
    benchmarks = list(benchmarks)
    records = {}
    for bench in sorted(benchmarks, key=lambda b: (data_dir / b).is_dir()):  # missing first
        try:
            records[bench] = check_folder(data_dir, bench, limit)
        except BenchmarkDataError as err:
            raise EvalError(str(err)) from None
        if hash_content:
            records[bench]["content_sha256"] = content_hash(data_dir / bench)
    return {bench: records[bench] for bench in benchmarks}


# MMBench task -> the lmms-eval aggregation (in lmms_eval.tasks.mmbench.en_utils) of its score
MMBENCH_AGGREGATION = {
    "mmbench_en_dev": "mmbench_aggregate_dev_results_eval",
    "mmbench_en_dev_static": "mmbench_aggregate_dev_results_static",
}


def task_specs(
    benchmarks: Iterable[str], data_dir: str | Path | None, mmbench_scoring: str | None = None
) -> list[str | dict]:
    """Task arguments for simple_evaluate: names, or load_from_disk overrides of them; MMBench
    with `mmbench_metrics`."""
    names = task_names(benchmarks, mmbench_scoring)
    specs: list[str | dict] = []
    for bench, task in names.items():
        spec: dict = {"task": task}
        if data_dir is not None:
            spec["dataset_path"] = str(Path(data_dir).resolve() / bench)
            spec["dataset_kwargs"] = {"load_from_disk": True}
        if bench == "mmbench":
            spec["metric_list"] = mmbench_metrics(task)
        specs.append(spec if len(spec) > 1 else task)
    return specs


def mmbench_metrics(task: str) -> list[dict]:
    """The MMBench task's metric list with two changes that leave its score as it is:

    - the score's aggregation is the task's own function, taken from the imported
      ``lmms_eval.tasks.mmbench.en_utils`` (a task YAML's ``!function`` executes a fresh copy
      of that module, whose evaluator nothing else can reach): so
      `harness.eval_tables.kept_mmbench_verdicts` sees each verdict as it is reached, and a
      GPT judge is asked once per question;
    - the ``submission`` metric, which writes every row to an .xlsx for the MMBench server
      (0.6 s an evaluation), writes nothing: a local dev split is not submitted.
    """
    from lmms_eval.tasks.mmbench import en_utils

    score = getattr(en_utils, MMBENCH_AGGREGATION[task])
    return [
        {"metric": "gpt_eval_score", "aggregation": score, "higher_is_better": True},
        {"metric": "submission", "aggregation": _no_submission_file, "higher_is_better": True},
    ]


def _no_submission_file(results: list, args=None) -> None:
    """MMBench's ``submission`` aggregation without its .xlsx file (it returns None too)."""
    return None


def hub_records(benchmarks: Iterable[str], results: dict, names: dict[str, str]) -> dict:
    """{benchmark: Hub dataset id, config, split, revision asked for and resolved}."""
    records = {}
    for bench in benchmarks:
        config = results.get("configs", {}).get(names[bench], {})
        dataset_id = config.get("dataset_path", HUB_IDS[bench])
        revision = (config.get("dataset_kwargs") or {}).get("revision")
        try:
            from huggingface_hub import HfApi

            resolved = HfApi().dataset_info(dataset_id, revision=revision).sha
        except Exception as err:  # network or auth: record why the revision is unknown
            resolved = f"unknown ({type(err).__name__})"
        records[bench] = {
            "dataset_id": dataset_id,
            "config": config.get("dataset_name"),
            "split": SPLITS[bench],
            "revision": revision or "main",
            "resolved_revision": resolved,
        }
    return records


def hub_hint(cause: str) -> str:
    """``cause`` and what a Hub read needs, or the local-data alternative."""
    ids = ", ".join(HUB_IDS.values())
    return (
        f"{cause}: data_dir=None reads {ids} from the Hugging Face Hub; set HF_TOKEN (the "
        "lmms-eval task YAMLs send a token even for public data) and check connectivity, "
        "or pass a data folder with save_to_disk copies (mme/, mmbench/, seedbench/)"
    )


# ---- the lmms-eval command line on local data --------------------------------------------
def write_local_task_yamls(
    data_dir: str | Path,
    include_dir: str | Path,
    benchmarks: Iterable[str] = ("mme", "mmbench", "seedbench"),
) -> dict[str, str]:
    """Task YAMLs for ``lmms-eval --include_path include_dir``: {benchmark: task name}.

    Each includes the built-in task file (official prompts and scoring) and only swaps the
    dataset for the local copy; names are ``mage_local_<task>`` (a YAML may not reuse a
    built-in name)."""
    import lmms_eval.tasks

    from harness.eval_batches import TASK_YAMLS
    from mage.io import atomic_write_text

    tasks_root = Path(lmms_eval.tasks.__file__).parent
    include_dir = Path(include_dir)
    out = {}
    for bench, task in task_names(benchmarks).items():
        name = f"mage_local_{task}"
        text = (
            f"include: {tasks_root / TASK_YAMLS[task]}\n"
            f"task: {name}\n"
            f"dataset_path: {Path(data_dir).resolve() / bench}\n"
            "dataset_kwargs:\n  load_from_disk: true\n"
        )
        atomic_write_text(include_dir / f"{name}.yaml", text)
        out[bench] = name
    return out
