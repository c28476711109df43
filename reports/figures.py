"""Paper figures from a Summary, in one style (seaborn "whitegrid", paper context, the
colour-blind-safe "colorblind" palette, "cividis" for heatmaps), axis labels with units.

Pure: functions return matplotlib Figures built without pyplot (no global figure state, no
backend switch, nothing to close; or None when the sweep lacks what a figure needs,
e.g. no ``ian.depth`` axis); ``figure_bytes`` renders PNG/PDF with fixed metadata (no
creation date, no software stamp) so a rebuild gives the same files. Bands and error bars
are the 95% intervals of reports.intervals (bootstrap over seeds, then items), not seaborn's
own; every training seed is drawn as a point; baselines and controls are dashed horizontal
lines labelled with their role ("blind (control)"), never one of the compared lines.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.headlines import category_order
from reports.importance import Importance
from reports.summary import Summary, category_spec, slice_variants
from reports.variants import MAIN, axis_label, field_label, format_value, native, sort_key

PALETTE = "colorblind"
HEATMAP_CMAP = "cividis"
PANEL_SIZE = (3.2, 2.6)  # inches per panel
LABEL_INCH_PER_CHAR = 0.065  # a tick label's length per character, in the paper context
DPI = 150
REFERENCE_COLORS = ("0.25", "0.5", "0.65", "0.35")  # greys for baselines and controls
REFERENCE_STYLES = ("--", ":", "-.", (0, (5, 1)))
RC = {"figure.dpi": 100, "font.family": "DejaVu Sans", "svg.hashsalt": "mage"}


@contextmanager
def figure_style():
    """The one style every report figure is drawn in."""
    with matplotlib.rc_context(RC), sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        yield


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """PNG or PDF bytes with fixed metadata (deterministic for the same figure)."""
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None}}
    if fmt not in metadata:
        raise ValueError(f"figure format {fmt!r}: use 'png' or 'pdf'")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata[fmt])
    return buf.getvalue()


def _values(rows, axis: str) -> list:
    return sorted({native(r[axis]) for _, r in rows.iterrows()}, key=sort_key)


def _panels(n_rows: int, n_cols: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_SIZE[0] * n_cols, PANEL_SIZE[1] * n_rows), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False)


def line_figure(
    summary: Summary, x: str, hue: str | None, facet: str | None = None
) -> Figure | None:
    """Score vs ``x`` (one line per ``hue`` value, one row of panels per ``facet`` value, one
    column per headline), other axes at the reference point, 95% t-interval bands."""
    axes_present = set(summary.variants.axes)
    hue = hue if hue in axes_present and hue != x else None
    facet = facet if facet in axes_present and facet not in (x, hue) else None
    if x not in axes_present or not summary.headlines:
        return None
    rows = slice_variants(summary, tuple(a for a in (x, hue, facet) if a))
    xs = _values(rows, x)
    if len(xs) < 2:
        return None
    numeric = all(isinstance(v, int | float) for v in xs)
    hues = _values(rows, hue) if hue else [None]
    facets = _values(rows, facet) if facet else [None]
    colors = sns.color_palette(PALETTE, max(len(hues), 1))
    with figure_style():
        fig, grid = _panels(len(facets), len(summary.headlines))
        for i, fv in enumerate(facets):
            for j, h in enumerate(summary.headlines):
                ax = grid[i, j]
                for k, hv in enumerate(hues):
                    sel = rows
                    if hue:
                        sel = sel[
                            sel[hue].map(lambda v, hv=hv: format_value(v) == format_value(hv))
                        ]
                    if facet:
                        sel = sel[
                            sel[facet].map(lambda v, fv=fv: format_value(v) == format_value(fv))
                        ]
                    pts = []
                    for _, r in sel.iterrows():
                        st = summary.stat(r["variant_id"], h.key)
                        if st is not None:
                            pos = r[x] if numeric else xs.index(r[x])
                            pts.append((float(pos), st["mean"], st["ci_low"], st["ci_high"]))
                    if not pts:
                        continue
                    pts.sort()
                    px, mean, low, high = (np.array(col, dtype=float) for col in zip(*pts))
                    label = format_value(hv) if hue else None
                    ax.plot(px, mean, marker="o", color=colors[k], label=label)
                    ok = ~(np.isnan(low) | np.isnan(high))
                    if ok.any():
                        ax.fill_between(
                            px[ok], low[ok], high[ok], color=colors[k], alpha=0.2, linewidth=0
                        )
                    for _, r in sel.iterrows():  # every training seed
                        pos = float(r[x] if numeric else xs.index(r[x]))
                        _seed_points(ax, summary, r["variant_id"], h.key, pos, colors[k])
                _reference_lines(ax, summary, h.key)
                if not numeric:
                    ax.set_xticks(range(len(xs)), [format_value(v) for v in xs])
                elif all(isinstance(v, int) for v in xs):
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel(axis_label(x))
                ax.set_ylabel(h.axis_label)
                title = h.label + (f" · {format_value(fv)}" if facet else "")
                ax.set_title(title)
        legend = grid[0, -1]
        if hue or legend.get_legend_handles_labels()[0]:
            legend.legend(
                title=field_label(hue) if hue else None, fontsize="x-small", title_fontsize="small"
            )
    return fig


def _seed_points(ax, summary: Summary, vid: str, headline: str, x: float, color) -> None:
    """The variant's per-seed scores as small open points beside its mean."""
    v = summary.values
    seeds = v[(v["variant_id"] == vid) & (v["headline"] == headline)]["value"]
    if len(seeds):
        ax.scatter(
            np.full(len(seeds), x),
            seeds,
            s=9,
            facecolors="none",
            edgecolors=color,
            linewidths=0.7,
            zorder=3,
        )


def _reference_lines(ax, summary: Summary, headline: str) -> None:
    """Each baseline's and control's mean as a labelled dashed line (not a compared curve)."""
    table = summary.variants.table
    others = table[table["role"] != MAIN]
    for i, (_, row) in enumerate(others.iterrows()):
        st = summary.stat(row["variant_id"], headline)
        if st is None:
            continue
        ax.axhline(
            st["mean"],
            color=REFERENCE_COLORS[i % len(REFERENCE_COLORS)],
            linestyle=REFERENCE_STYLES[i % len(REFERENCE_STYLES)],
            linewidth=1.0,
            label=row["label"],
        )


def depth_figure(summary: Summary) -> Figure | None:
    """Score vs IAN depth, one line per MSE weight, panels per vision encoder."""
    return line_figure(summary, "ian.depth", "loss.mse_weight", "vision.encoder")


def mse_figure(summary: Summary) -> Figure | None:
    """Score vs MSE weight λ, one line per vision encoder (or IAN depth)."""
    hue = "vision.encoder" if "vision.encoder" in summary.variants.axes else "ian.depth"
    return line_figure(summary, "loss.mse_weight", hue)


def encoder_figure(summary: Summary) -> Figure | None:
    """Vision encoders side by side (other axes at the reference point), 95% t-interval bars."""
    axis = "vision.encoder"
    if axis not in summary.variants.axes or not summary.headlines:
        return None
    rows = slice_variants(summary, (axis,))
    encoders = _values(rows, axis)
    if len(encoders) < 2:
        return None
    colors = sns.color_palette(PALETTE, len(encoders))
    with figure_style():
        fig, grid = _panels(1, len(summary.headlines))
        for j, h in enumerate(summary.headlines):
            ax = grid[0, j]
            for k, enc in enumerate(encoders):
                vid = rows[rows[axis] == enc]["variant_id"].iloc[0]
                st = summary.stat(vid, h.key)
                if st is None:
                    continue
                err = [[st["mean"] - st["ci_low"]], [st["ci_high"] - st["mean"]]]
                err = None if math.isnan(st["ci_low"]) else err
                ax.bar(k, st["mean"], yerr=err, color=colors[k], capsize=4, alpha=0.8)
                _seed_points(ax, summary, vid, h.key, float(k), "0.1")
            _reference_lines(ax, summary, h.key)
            ax.set_xticks(range(len(encoders)), [format_value(e) for e in encoders], rotation=20)
            ax.set_xlabel(axis_label(axis))
            ax.set_ylabel(h.axis_label)
            ax.set_title(h.label)
        if grid[0, -1].get_legend_handles_labels()[0]:
            grid[0, -1].legend(fontsize="x-small")
    return fig


def category_heatmap(summary: Summary, key: str) -> Figure | None:
    """Variants x categories of one per-category table (e.g. "categories_mme"), seed means."""
    stats = summary.category_stats
    part = stats[stats["table"] == key]
    if part.empty:
        return None
    spec = category_spec(key)
    cats = category_order(spec.benchmark, sorted(part["category"].unique()))
    order = [v for v in summary.variants.order() if v in set(part["variant_id"])]
    labels = summary.variants.table.set_index("variant_id")["label"]
    matrix = (
        part.pivot_table(index="variant_id", columns="category", values="mean", aggfunc="first")
        .reindex(index=order, columns=cats)
        .astype(float)
    )
    matrix.index = [labels[v] for v in order]
    # room for the labels: variant names read across, category names (MMBench's L2 names
    # run to 40 characters) rotated under the cells
    label_width = LABEL_INCH_PER_CHAR * max(map(len, matrix.index))
    label_height = LABEL_INCH_PER_CHAR * max(len(str(c)) for c in cats)
    with figure_style():
        fig = Figure(
            figsize=(
                1.8 + 0.55 * len(cats) + label_width,
                max(2.2, 0.8 + 0.32 * len(order)) + label_height,
            ),
            layout="constrained",
        )
        ax = fig.subplots()
        sns.heatmap(
            matrix,
            ax=ax,
            cmap=HEATMAP_CMAP,
            annot=True,
            fmt=".0f",
            annot_kws={"fontsize": 6},
            cbar_kws={"label": spec.unit},
        )
        ax.tick_params(axis="y", labelrotation=0)  # variant names read across
        ax.set_xlabel("category")
        ax.set_ylabel("variant")
        ax.set_title(f"{spec.title} (mean over seeds)")
    return fig


def importance_figure(importance: Importance) -> Figure | None:
    """Horizontal bars of fANOVA importance per axis (None when too few trials)."""
    if not importance.ok:
        return None
    names = list(importance.importances)
    with figure_style():
        fig = Figure(figsize=(4.5, 0.5 + 0.45 * len(names)), layout="constrained")
        ax = fig.subplots()
        ax.barh(
            range(len(names)),
            [importance.importances[n] for n in names],
            color=sns.color_palette(PALETTE, 1)[0],
        )
        ax.set_yticks(range(len(names)), [field_label(n) for n in names])
        ax.invert_yaxis()
        ax.set_xlabel("fANOVA importance (share of objective variance)")
        ax.set_xlim(0, 1)
    return fig


def all_figures(summary: Summary, importance: Importance) -> dict[str, Figure]:
    """Every figure the report has data for: name -> Figure."""
    figures = {
        "score_vs_depth": depth_figure(summary),
        "score_vs_mse_weight": mse_figure(summary),
        "encoder_comparison": encoder_figure(summary),
        "importance": importance_figure(importance),
    }
    for key in sorted(summary.category_stats["table"].unique()):
        figures[key] = category_heatmap(summary, key)
    return {name: fig for name, fig in figures.items() if fig is not None}


_MARKS = (
    " Open points: each training seed. Dashed grey lines: baselines and controls (their mean), "
    "marked with their role."
)
FIGURE_CAPTIONS = {
    "score_vs_depth": "Score vs IAN depth, one line per MSE weight λ (rows: vision encoders); "
    "other axes at the reference point; bands: 95% interval (bootstrap over seeds, then items)."
    + _MARKS,
    "score_vs_mse_weight": "Score vs MSE weight λ; other axes at the reference point; bands: 95% "
    "interval (bootstrap over seeds, then items)." + _MARKS,
    "encoder_comparison": "Vision encoders at the reference point; bars: mean over seeds, "
    "error bars: 95% interval (bootstrap over seeds, then items)." + _MARKS,
    "importance": "fANOVA importance of each swept axis for the objective (Optuna).",
}


def figure_caption(name: str) -> str:
    if name.startswith("categories_"):
        return f"{category_spec(name).title}: mean over seeds per variant and category."
    return FIGURE_CAPTIONS.get(name, name)
