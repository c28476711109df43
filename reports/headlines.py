"""What each reported number is: the headline columns (MME-P, MME-C, MMBench, SEED, tools),
the results-store rows they come from, their scale and unit, and the per-item subsets that
paired tests use.

The numbers themselves are lmms-eval's (the harness stores them; reports never recompute a
metric). This module only says which stored row is which column, and how it is displayed:
SEED and tool-calling fractions (0-1 in lmms-eval) are shown in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

# lmms_eval.tasks.mme.utils.eval_type_dict (lmms-eval 0.7.3), copied so that reports do not
# import lmms-eval (several seconds); tests/test_report_tables.py checks the copy.
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)

# SEED-Bench question types 1-9 ask about an image, 10-12 about a video (lmms-eval's seedbench
# scores a video from one frame). The paper and LLaVA-1.5 report SEED on the image questions.
SEED_IMAGE_TYPES = tuple(str(t) for t in range(1, 10))

# benchmarks whose stored values are fractions (0-1) and are displayed in percent
PERCENT_BENCHMARKS = {"seedbench": 100.0, "tools": 100.0}

BENCHMARK_LABELS = {
    "mme": "MME",
    "mmbench": "MMBench",
    "seedbench": "SEED",
    "tools": "Tool calling",
}

_DERIVED = (
    "Derived per category by the harness (harness/eval_tables.py) from lmms-eval's per-sample "
    "log; the categories add up to lmms-eval's headline number."
)


@dataclass(frozen=True)
class CategoryTable:
    """One per-category table: the stored per-category rows of one benchmark and metric."""

    key: str  # file stem: categories_mme
    benchmark: str
    metrics: tuple[str, ...]  # first stored metric found is used
    title: str
    unit: str  # also the heatmap colour-bar label
    source: str


# harness/eval_tables.py stores MME acc / acc_plus / score, MMBench acc (category) and l2_acc
# (L2-category), SEED acc (question_type_id); mage/tools/metrics.py stores tools per tool.
CATEGORY_TABLES: tuple[CategoryTable, ...] = (
    CategoryTable(
        "categories_mme",
        "mme",
        ("score",),
        "MME per category",
        "MME category score (acc + acc+, 0-200)",
        _DERIVED,
    ),
    CategoryTable(
        "categories_mmbench",
        "mmbench",
        ("acc", "gpt_eval_score"),
        "MMBench per category",
        "MMBench accuracy (%)",
        _DERIVED + " Circular: a question counts only if all its copies are right.",
    ),
    CategoryTable(
        "categories_mmbench_l2",
        "mmbench",
        ("l2_acc",),
        "MMBench per L2-category",
        "MMBench accuracy (%)",
        _DERIVED + " Circular: a question counts only if all its copies are right.",
    ),
    CategoryTable(
        "categories_seedbench",
        "seedbench",
        ("acc", "seed_all", "seed_image"),
        "SEED per question type",
        "SEED accuracy (%)",
        _DERIVED + " Categories are SEED question_type_id values.",
    ),
    CategoryTable(
        "categories_tools",
        "tools",
        ("tool_name_accuracy",),
        "Tool calling per tool",
        "tool-name accuracy (%)",
        "Scored by mage.tools.metrics per target tool (not an lmms-eval task).",
    ),
)


@dataclass(frozen=True)
class Headline:
    """One headline column: the stored row it reads and how it is shown."""

    key: str  # column key in CSV files: mme_p, mme_c, mmbench, seed, seed_all, tools
    label: str  # column header: "MME-P"
    benchmark: str
    metrics: tuple[str, ...]  # first stored metric found is used
    axis_label: str  # figure axis label, with unit
    meaning: str  # one sentence for the report's "what the numbers mean"
    item_categories: tuple[str, ...] | None = None  # paired test subset (None = all items)
    scale: float = 1.0

    @property
    def pairs_items(self) -> bool:
        """Whether the stored per-item correctness measures this column (McNemar test).

        Not for tools (items hold round-trip fidelity, the column tool-name accuracy). SEED
        pairs its image question types only, SEED-all every item."""
        return self.key != "tools"


HEADLINES: tuple[Headline, ...] = (
    Headline(
        "mme_p",
        "MME-P",
        "mme",
        ("mme_perception_score",),
        "MME perception score (0-2000)",
        "MME perception: lmms-eval's mme_perception_score, the sum of acc + acc+ over the "
        "perception categories present (at most 10: 0-2000; always answering Yes scores 50 "
        "per category).",
        MME_PERCEPTION,
    ),
    Headline(
        "mme_c",
        "MME-C",
        "mme",
        ("mme_cognition_score",),
        "MME cognition score (0-800)",
        "MME cognition: lmms-eval's mme_cognition_score over the 4 cognition categories "
        "(0-800), reported separately from perception, never summed with it.",
        MME_COGNITION,
    ),
    Headline(
        "mmbench",
        "MMBench",
        "mmbench",
        ("gpt_eval_score",),
        "MMBench accuracy (%)",
        "MMBench: lmms-eval's gpt_eval_score (%), circular evaluation (a question counts only "
        "if all its option-shifted copies are right); the run record says static or GPT matching.",
    ),
    Headline(
        "seed",
        "SEED",
        "seedbench",
        ("seed_image",),
        "SEED-image accuracy (%)",
        "SEED: lmms-eval's seed_image (SEED-Bench's image questions, as the paper and LLaVA-1.5 "
        "report SEED) in %.",
        SEED_IMAGE_TYPES,
        scale=PERCENT_BENCHMARKS["seedbench"],
    ),
    Headline(
        "seed_all",
        "SEED-all",
        "seedbench",
        ("seed_all",),
        "SEED-all accuracy (%)",
        "SEED-all: lmms-eval's seed_all (image and video questions, a video scored from one "
        "frame) in %; shown where it differs from SEED.",
        scale=PERCENT_BENCHMARKS["seedbench"],
    ),
    Headline(
        "tools",
        "Tools",
        "tools",
        ("tool_name_accuracy",),
        "tool-name accuracy (%)",
        "Tools: share of tool-calling prompts answered with a parsable call to the right tool (%).",
        scale=PERCENT_BENCHMARKS["tools"],
    ),
)

HEADLINES_BY_KEY = {h.key: h for h in HEADLINES}


def category_order(benchmark: str, categories: list[str]) -> list[str]:
    """Categories in reading order: MME in lmms-eval's order, others sorted."""
    if benchmark == "mme":
        known = [c for c in MME_PERCEPTION + MME_COGNITION if c in categories]
        return known + sorted(c for c in categories if c not in known)
    return sorted(categories, key=_natural_key)


def _natural_key(text: str) -> tuple:
    """Sort "2" before "10" (SEED question types are numbers stored as text)."""
    return (0, int(text), "") if str(text).isdigit() else (1, 0, str(text))
