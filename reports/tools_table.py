"""The tool-calling table: each variant's tool metrics on requests phrased as in training
(``phrasing=seen``) and phrased in held-out ways (``phrasing=unseen``: templates, verbs and a
word order never trained on; mage.tools.data.PHRASINGS), side by side. The gap between the
two says how much of a tool score is template recall."""

from __future__ import annotations

import pandas as pd

from reports.intervals import bootstrap_interval
from reports.summary import Summary, ok_rows
from reports.table import MISSING, Table, bold_best, fmt_interval
from reports.variants import MAIN

PHRASINGS = (("phrasing=seen", "seen"), ("phrasing=unseen", "unseen"))
METRICS = (
    ("tool_name_accuracy", "right tool"),
    ("argument_exact_match", "exact arguments"),
    ("round_trip_fidelity", "round trip"),
)


def tools_phrasing_table(summary: Summary) -> Table | None:
    """Variants x (metric, phrasing), in %; None when the store has no phrasing rows."""
    res = ok_rows(summary.data)
    tools = res[
        (res["benchmark"] == "tools") & res["category"].astype(str).str.startswith("phrasing=")
    ]
    if tools.empty:
        return None
    columns = [(m, c, f"{label} ({seen})") for m, label in METRICS for c, seen in PHRASINGS]
    disp, data, means, eligible = [], [], [], []
    for vid, label in zip(summary.variants.order(), summary.variants.table["label"]):
        part = tools[tools["variant_id"] == vid]
        if part.empty:
            continue
        cells, row_means = [label], {}
        for metric, category, name in columns:
            rows = part[(part["metric"] == metric) & (part["category"].astype(str) == category)]
            rows = rows.assign(value=rows["value"].astype(float) * 100)[["trial_id", "value"]]
            mean = float(rows["value"].mean()) if len(rows) else float("nan")
            low, high, _ = bootstrap_interval(rows, {}, "tools", None, ("tools", vid, name))
            cells.append(
                fmt_interval(mean, low, high, len(rows), with_n=False) if len(rows) else MISSING
            )
            row_means[name] = mean
            data.append(
                {
                    "variant_id": vid,
                    "label": label,
                    "metric": metric,
                    "phrasing": category,
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "n": len(rows),
                }  # fmt: skip
            )
        disp.append(cells)
        means.append(row_means)
        eligible.append(summary.variants.role(vid) == MAIN)
    names = [name for _, _, name in columns]
    display = pd.DataFrame(disp, columns=["Variant", *names])
    bold = bold_best(display, pd.DataFrame(means, columns=names), 1, eligible)
    caption = (
        "Tool calling (%) on requests phrased as in training (seen) and in held-out phrasings "
        "(unseen: the 'can you ...' frame, the verbs paint / show / speak, the order 'X, do "
        "it'; never in the training data). Right tool: a call naming the target tool; exact "
        "arguments: right tool and every argument equal; round trip: the executed call does "
        "what was asked. Mean over seeds [95% bootstrap interval over seeds]; best main "
        "variant per column in bold."
    )
    return Table("tools_phrasing", "Tool calling: seen and unseen phrasings", caption, display,
                 pd.DataFrame(data), 1, frozenset(bold))  # fmt: skip
