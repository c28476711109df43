"""The Table every report table is: display strings (Markdown/LaTeX/HTML), numeric data
(CSV), bold cells; and the cell formats shared by all tables ("mean ± half-width (n)")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

MISSING = "—"


@dataclass(frozen=True)
class Table:
    name: str  # file stem
    title: str
    caption: str
    display: pd.DataFrame  # strings, shown in md/tex/html
    data: pd.DataFrame  # numbers, written as CSV
    label_columns: int = 1  # leading text columns (left-aligned)
    bold: frozenset[tuple[int, int]] = field(default_factory=frozenset)  # (row, col) in display


def fmt_ci(mean: float, half: float, n: int, decimals: int = 1, with_n: bool = True) -> str:
    """ "mean ± half-width (n)": a symmetric interval (Student-t)."""
    if n == 0 or math.isnan(mean):
        return MISSING
    text = f"{mean:.{decimals}f}"
    if not math.isnan(half):
        text += f" ± {half:.{decimals}f}"
    return f"{text} ({n})" if with_n else text


def fmt_interval(
    mean: float, low: float, high: float, n: int, decimals: int = 1, with_n: bool = True
) -> str:
    """ "mean [low, high] (n)": an interval that need not be symmetric (bootstrap)."""
    if n == 0 or math.isnan(mean):
        return MISSING
    text = f"{mean:.{decimals}f}"
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{decimals}f}, {high:.{decimals}f}]"
    return f"{text} ({n})" if with_n else text


def fmt_diff(diff: float, low: float, high: float, decimals: int = 1) -> str:
    """ "+12.5 [+3.0, +22.0]": a difference with its interval."""
    if math.isnan(diff):
        return MISSING
    text = f"{diff:+.{decimals}f}"
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:+.{decimals}f}, {high:+.{decimals}f}]"
    return text


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return MISSING
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def bold_best(
    display: pd.DataFrame, means: pd.DataFrame, offset: int, eligible: list[bool] | None = None
) -> set[tuple[int, int]]:
    """(row, col) of the highest mean in each column of ``means`` (ties all bold), among the
    ``eligible`` rows only (main variants: a baseline or a control is never the best)."""
    bold = set()
    keep = pd.Series(eligible if eligible is not None else [True] * len(means), dtype=bool)
    for j, col in enumerate(means.columns):
        col_values = means[col].astype(float).where(keep.to_numpy())
        if col_values.notna().sum() < 2:
            continue
        best = col_values.max()
        for i, v in enumerate(col_values):
            if not math.isnan(v) and math.isclose(v, best, rel_tol=0, abs_tol=1e-9):
                bold.add((i, offset + j))
    return bold
