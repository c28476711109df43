"""What a sweep spent and what broke: the cost table (CPU/GPU-hours per variant and in total,
early-stopping savings) and the failed-trials table with each recorded cause. Pure functions
of a Summary, like reports.tables."""

from __future__ import annotations

import math

import pandas as pd

from reports.summary import Summary
from reports.table import MISSING, Table


def cost_table(summary: Summary) -> Table:
    """CPU/GPU-hours per variant and in total, and what early stopping saved (estimated)."""
    trials = summary.data.trials.copy()
    trials["early"] = trials["stopped_early"].fillna(False).astype(bool) | (
        trials["status"] == "stopped"
    )
    full = trials[(trials["status"] == "ok") & ~trials["early"]]
    full_steps = float(full["steps"].max()) if len(full) else math.nan
    per_step = lambda r, col: r[col] / r["steps"] if r["steps"] else math.nan  # noqa: E731
    for col in ("cpu_hours", "gpu_hours"):
        trials[f"{col}_saved"] = [
            max(full_steps - r["steps"], 0) * per_step(r, col) if r["early"] else 0.0
            for _, r in trials.iterrows()
        ]
    rows, disp = [], []
    evals = _eval_costs(summary.data.results)
    for vid, label in zip(summary.variants.order(), summary.variants.table["label"]):
        rows.append(_cost_row(trials[trials["variant_id"] == vid], vid, label, evals))
    rows.append(_cost_row(trials, "total", "Total", evals))
    data = pd.DataFrame(rows)
    for r in rows:
        disp.append(
            [
                r["label"],
                str(r["trials"]),
                f"{r['ok']}/{r['failed']}/{r['stopped_early']}",
                f"{r['wall_hours']:.3f}",
                f"{r['cpu_hours']:.3f}",
                f"{r['gpu_hours']:.3f}",
                f"{r['cpu_hours_saved']:.3f} / {r['gpu_hours_saved']:.3f}",
                *(_eval_cells(r) if evals is not None else []),
            ]
        )
    columns = ["Variant", "trials", "ok/failed/stopped", "wall h", "CPU-h", "GPU-h"]
    columns.append("saved CPU-h / GPU-h")
    if evals is not None:  # stores from before evaluation costs were recorded have none
        columns += ["eval device-h", "eval GPU-h", "eval samples/s (" + " / ".join(
            EVAL_LABELS[b] for b in EVAL_BENCHMARKS) + ")"]  # fmt: skip
    display = pd.DataFrame(disp, columns=columns)
    caption = (
        "Cost per variant and in total (hours summed over trials). Early-stopping savings are "
        "estimated as (steps of a full trial - steps run) x the stopped trial's own cost per step"
        + (f" (full trial = {full_steps:g} steps)." if not math.isnan(full_steps) else ".")
        + _sweep_savings(summary.data.manifest)
    )
    if evals is not None:
        caption += (
            " Evaluation (lmms-eval benchmarks; part of each trial's hours): device-hours and "
            "GPU-hours of image loading and generation summed over benchmarks, trials and "
            "workers, and samples per second per benchmark (mean over trials)."
        )
    bold = frozenset({(len(disp) - 1, j) for j in range(len(columns))})
    return Table("cost", "Cost", caption, display, data, 1, bold)


def _sweep_savings(manifest: dict) -> str:
    """The sweep's own early-stopping estimate (manifest.json "early_stopping"), if recorded."""
    es = manifest.get("early_stopping")
    if not isinstance(es, dict) or "est_cpu_hours_saved" not in es:
        return ""
    return (
        f" The sweep's own estimate (manifest, from planned steps): "
        f"{float(es.get('est_cpu_hours_saved') or 0):.3f} CPU-h, "
        f"{float(es.get('est_gpu_hours_saved') or 0):.3f} GPU-h, "
        f"{int(es.get('steps_saved') or 0)} steps saved over "
        f"{int(es.get('stopped_trials') or 0)} stopped trial(s)."
    )


EVAL_BENCHMARKS = ("mme", "mmbench", "seedbench")
EVAL_LABELS = {"mme": "MME", "mmbench": "MMBench", "seedbench": "SEED"}


def _eval_costs(results: pd.DataFrame) -> pd.DataFrame | None:
    """Per trial: evaluation cost figures (benchmark ``eval`` rows, metric
    ``<benchmark>/<figure>``, as harness.eval stores them), one column per metric."""
    rows = results[results["benchmark"] == "eval"]
    if rows.empty:
        return None
    wide = rows.pivot_table(index="trial_id", columns="metric", values="value", aggfunc="first")
    return wide


def _eval_cells(r: dict) -> list[str]:
    rates = [r.get(f"{b}/samples_per_s", math.nan) for b in EVAL_BENCHMARKS]
    rate_text = " / ".join(MISSING if math.isnan(v) else f"{v:.1f}" for v in rates)
    return [f"{r['eval_device_hours']:.3f}", f"{r['eval_gpu_hours']:.3f}", rate_text]


def _cost_row(t: pd.DataFrame, vid: str, label: str, evals: pd.DataFrame | None = None) -> dict:
    row = _base_cost_row(t, vid, label)
    if evals is not None:
        part = evals[evals.index.isin(set(t["trial_id"]))]
        for figure in ("device_hours", "gpu_hours"):
            cols = [c for c in part.columns if c.endswith(f"/{figure}")]
            row[f"eval_{figure}"] = float(part[cols].fillna(0).to_numpy().sum()) if cols else 0.0
        for bench in EVAL_BENCHMARKS:
            col = f"{bench}/samples_per_s"
            values = part[col].dropna() if col in part.columns else pd.Series(dtype=float)
            row[col] = float(values.mean()) if len(values) else math.nan
    return row


def _base_cost_row(t: pd.DataFrame, vid: str, label: str) -> dict:
    return {
        "variant_id": vid,
        "label": label,
        "trials": int(len(t)),
        "ok": int((t["status"] == "ok").sum()),
        "failed": int((t["status"] == "failed").sum()),
        "stopped_early": int(t["early"].sum()),
        "steps": float(t["steps"].fillna(0).sum()),
        "wall_hours": float(t["wall_s"].fillna(0).sum()) / 3600.0,
        "cpu_hours": float(t["cpu_hours"].fillna(0).sum()),
        "gpu_hours": float(t["gpu_hours"].fillna(0).sum()),
        "cpu_hours_saved": float(t["cpu_hours_saved"].sum()),
        "gpu_hours_saved": float(t["gpu_hours_saved"].sum()),
    }


def failures_table(summary: Summary, max_chars: int = 160) -> Table:
    """Failed trials with their recorded cause (first line of the error)."""
    trials = summary.data.trials
    failed = trials[trials["status"] == "failed"].copy()
    order = {vid: i for i, vid in enumerate(summary.variants.order())}
    failed["_v"] = failed["variant_id"].map(order)
    failed = failed.sort_values(["_v", "seed", "trial_id"]).drop(columns=["_v"])
    labels = summary.variants.table.set_index("variant_id")["label"]
    disp, data = [], []
    for _, r in failed.iterrows():
        cause = _first_line(r["error"], max_chars)
        disp.append(
            [r["trial_id"], labels.get(r["variant_id"], r["variant_id"]), cause, str(r["seed"])]
        )
        data.append(
            {
                "trial_id": r["trial_id"],
                "variant_id": r["variant_id"],
                "seed": r["seed"],
                "error": cause,
            }
        )
    display = pd.DataFrame(disp, columns=["Trial", "Variant", "cause", "seed"])
    caption = (
        f"Failed trials ({len(disp)} of {len(trials)}), with the first line of the recorded "
        "error. Failed trials are excluded from every score."
    )
    return Table(
        "failures",
        "Failed trials",
        caption,
        display,
        pd.DataFrame(data, columns=["trial_id", "variant_id", "seed", "error"]),
        3,
    )


def _first_line(error, max_chars: int) -> str:
    if error is None or (isinstance(error, float) and math.isnan(error)) or not str(error).strip():
        return "(no error recorded)"
    line = next(line.strip() for line in str(error).splitlines() if line.strip())
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"
