"""Build a sweep's report folder: the one place where report files are written.

``build_report(sweep_dir)`` writes SWEEP_DIR/report/ (or ``out_dir``) atomically:
index.md, a self-contained index.html (tables inline, figures as base64 PNG), tables/ (each
table as .md, .tex and .csv) and figures/ (.png and .pdf). ``render_report`` computes every
file's bytes without touching the disk, so notebooks and tests can compare against a build.
The same store gives byte-identical tables (and, on the same machine and matplotlib,
identical figures).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from mage.io import atomic_path
from reports.effects import ALPHA, effect_lines
from reports.figures import all_figures, figure_bytes, figure_caption
from reports.importance import Importance, param_importances
from reports.load import SweepData, load_sweep
from reports.render import table_files, to_html, to_markdown
from reports.summary import Summary, summarize
from reports.tables import Table, all_tables

REPORT_DIRNAME = "report"
FIGURE_FORMATS = ("png", "pdf")
# manifest sections too long for the report page (they stay in manifest.json)
PROVENANCE_SKIP = {"spec", "plan", "trial_configs", "trial_hours", "eval_record"}


class ReportError(ValueError):
    """The report cannot be written where asked."""


def build_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    figures: bool = True,
    workers: int = 1,
) -> Path:
    """Write the report of SWEEP_DIR's results store; return the report folder. ``workers``:
    processes drawing the figures (`render_report`)."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / REPORT_DIRNAME
    if out.exists() and (not out.is_dir() or _foreign(out)):
        raise ReportError(
            f"{out}: exists and is not a report folder (no index.md); the whole folder is "
            "replaced on each build, so pass a new or former report folder with --out."
        )
    files = render_report(load_sweep(sweep_dir), figures=figures, workers=workers)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for rel, blob in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
    return out


def table_mismatches(summary: Summary, report_dir: str | Path) -> list[str]:
    """Table files of ``report_dir`` that differ from the ones regenerated from ``summary``
    (changed, missing or extra); empty when the stored tables are reproduced byte for byte."""
    tables_dir = Path(report_dir) / "tables"
    regenerated = {n: t.encode() for tb in all_tables(summary) for n, t in table_files(tb).items()}
    stored = {p.name for p in tables_dir.iterdir()} if tables_dir.is_dir() else set()
    out = [f"{name} (not in the stored report)" for name in sorted(set(regenerated) - stored)]
    out += [f"{name} (not regenerated)" for name in sorted(stored - set(regenerated))]
    out += [
        f"{name} (differs)"
        for name in sorted(set(regenerated) & stored)
        if (tables_dir / name).read_bytes() != regenerated[name]
    ]
    return out


def _foreign(path: Path) -> bool:
    return any(path.iterdir()) and not (path / "index.md").exists()


def render_report(data: SweepData, figures: bool = True, workers: int = 1) -> dict[str, bytes]:
    """Relative path -> bytes of every report file (pure: nothing is written). With
    ``workers`` > 1 the figures are drawn by that many forked processes (the same bytes; the
    caller must hold no threads that a fork could leave holding a lock)."""
    summary = summarize(data)
    importance = param_importances(summary)
    tables = all_tables(summary)
    files: dict[str, bytes] = {}
    for table in tables:
        for name, text in table_files(table).items():
            files[f"tables/{name}"] = text.encode()
    figure_names: list[str] = []
    png: dict[str, bytes] = {}
    if figures:
        drawn = all_figures(summary, importance)
        files.update(_figure_files(drawn, workers))
        for name in drawn:
            png[name] = files[f"figures/{name}.png"]
            figure_names.append(name)
    effects = effect_lines(summary)
    files["index.md"] = index_markdown(summary, importance, tables, figure_names, effects).encode()
    files["index.html"] = index_html(summary, importance, tables, png, effects).encode()
    return files


_DRAWN: dict = {}  # the figures a forked drawing process reads (set around the pool)


def _figure_files(drawn: dict, workers: int) -> dict[str, bytes]:
    """``figures/<name>.<fmt>`` -> bytes. One job per figure, its formats in order: drawing
    one format lays the figure out for the next, so a figure's formats stay together."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    names = list(drawn)
    if workers > 1 and len(names) > 1 and "fork" in multiprocessing.get_all_start_methods():
        _DRAWN.update(drawn)  # forked processes inherit the figures; nothing is pickled
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                blobs = list(pool.map(_draw, names))
        finally:
            _DRAWN.clear()
    else:
        blobs = [_formats(drawn[name]) for name in names]
    return {
        f"figures/{name}.{fmt}": blob
        for name, formats in zip(names, blobs)
        for fmt, blob in zip(FIGURE_FORMATS, formats)
    }


def _formats(fig) -> list[bytes]:
    return [figure_bytes(fig, fmt) for fmt in FIGURE_FORMATS]


def _draw(name: str) -> list[bytes]:
    return _formats(_DRAWN[name])


def _meaning_lines(summary: Summary) -> list[str]:
    lines = [h.meaning for h in summary.headlines]
    lines.append(
        "Every cell is the mean over training seeds of completed trials, a 95% interval in "
        "square brackets and the number of seeds n in round brackets. The interval is a "
        "hierarchical percentile bootstrap: seeds drawn with replacement, then each drawn "
        "seed's benchmark items, the score recomputed as lmms-eval aggregates it; every "
        "replicate is a score the benchmark could give, so the interval stays inside the "
        "metric's range (where items cannot give a score, e.g. tool calling, seeds only)."
    )
    lines.append(
        "Differences between variants: Welch's t-test on the per-seed scores (the seed is the "
        "unit: a re-run draws new seeds, and a variant moves from seed to seed by more than "
        "its items suggest), with its 95% interval. Secondary: McNemar's exact test on "
        "per-item correctness aligned by item_id, seeds paired by seed number and pooled, "
        "which treats every item of every seed as independent and so overstates certainty."
    )
    lines.append(
        "Roles: main variants (the grid) are compared; baselines (published alternatives) and "
        "controls (blind, positive controls: known to be worse for a known reason) are marked "
        "in every table and figure and never bold as the best variant."
    )
    lines.append(
        f"Objective (importance, reference point): {summary.objective.label}, mode {summary.objective.mode}."
    )
    return lines


def _provenance(data: SweepData) -> list[str]:
    out = []
    for key in sorted(data.manifest):
        value = data.manifest[key]
        if key in PROVENANCE_SKIP:
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True, default=str)
            value = value if len(value) <= 300 else value[:299] + "…"
        out.append(f"{key}: {value}")
    return out


EFFECTS_INTRO = (
    f"What separated at p < {ALPHA} (Welch's t-test over training seeds; the 'effects' table "
    "has every difference with its 95% interval and McNemar's item-level p beside it):"
)


def index_markdown(
    summary: Summary,
    importance: Importance,
    tables: list[Table],
    figure_names: list[str],
    effects: list[str] = (),
) -> str:
    data = summary.data
    out = [f"# Sweep report: {data.name}", ""]
    if data.manifest.get("synthetic"):
        out += [f"> **{data.manifest['synthetic']}**", ""]
    if effects:
        out += ["## Effects", "", EFFECTS_INTRO, ""] + [f"- {line}" for line in effects] + [""]
    out += ["## What the numbers mean", ""]
    out += [f"- {line}" for line in _meaning_lines(summary)] + [""]
    if summary.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in summary.notes] + [""]
    out += ["## Tables", ""]
    for table in tables:
        out.append(to_markdown(table))
        out.append(
            f"Files: [md](tables/{table.name}.md), [tex](tables/{table.name}.tex), "
            f"[csv](tables/{table.name}.csv)"
        )
        out.append("")
    out += ["## Which knob mattered", "", importance.message, ""]
    if figure_names:
        out += ["## Figures", ""]
        for name in figure_names:
            out += [
                f"![{name}](figures/{name}.png)",
                "",
                f"{figure_caption(name)} ([PDF](figures/{name}.pdf))",
                "",
            ]
    provenance = _provenance(data)
    if provenance:
        out += ["## Provenance (manifest.json)", ""] + [f"- {p}" for p in provenance] + [""]
    return "\n".join(out)


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
    "th,td{padding:0.25em 0.6em;border-bottom:1px solid #ddd}th{border-bottom:2px solid #444}"
    "td.num{text-align:right;white-space:nowrap}.caption{color:#555;font-size:0.9em}"
    "img{max-width:100%}.synthetic{background:#fff3cd;padding:0.5em}"
)


def index_html(
    summary: Summary,
    importance: Importance,
    tables: list[Table],
    png: dict[str, bytes],
    effects: list[str] = (),
) -> str:
    data = summary.data
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {esc(data.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sweep report: {esc(data.name)}</h1>",
    ]
    if data.manifest.get("synthetic"):
        out.append(
            f'<p class="synthetic"><strong>{esc(str(data.manifest["synthetic"]))}</strong></p>'
        )
    if effects:
        out += ["<h2>Effects</h2>", f"<p>{esc(EFFECTS_INTRO)}</p><ul>"]
        out += [f"<li>{esc(line)}</li>" for line in effects] + ["</ul>"]
    out.append("<h2>What the numbers mean</h2><ul>")
    out += [f"<li>{esc(line)}</li>" for line in _meaning_lines(summary)] + ["</ul>"]
    if summary.notes:
        out += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in summary.notes] + ["</ul>"]
    out.append("<h2>Tables</h2>")
    out += [to_html(t) for t in tables]
    out += ["<h2>Which knob mattered</h2>", f"<p>{esc(importance.message)}</p>"]
    if png:
        out.append("<h2>Figures</h2>")
        for name, blob in png.items():
            b64 = base64.b64encode(blob).decode("ascii")
            out.append(
                f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{esc(figure_caption(name))}</figcaption></figure>"
            )
    provenance = _provenance(data)
    if provenance:
        out += ["<h2>Provenance (manifest.json)</h2><ul>"]
        out += [f"<li>{esc(p)}</li>" for p in provenance] + ["</ul>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
