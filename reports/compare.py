"""Does a sweep reproduce a reference store (e.g. the committed smoke store)?

`compare_stores(run_dir, reference_dir)` lines up the headline cells (benchmark, metric,
category "all") of the trials both stores hold (a trial id is its config's hash and seed, so
the same spec and code give the same ids), counts exact matches, names the largest
differences, and lists what differs in how the numbers were produced: the world's content
hash, the prepared assets' weights, thread counts, package versions, CPU and code revision.
Pure: it reads the two stores and returns text lines; `mage-harness compare` prints them and
`make demo` ends with it (it never fails the demo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports.headlines import HEADLINES
from reports.load import SweepData, load_sweep

BENCHMARKS = ("mme", "mmbench", "seedbench", "tools")
SHOWN = 3  # largest differences named


@dataclass
class Comparison:
    reference: Path
    cells: int  # headline cells both stores hold
    differing: pd.DataFrame  # trial_id, label, benchmark, metric, here, there, diff
    only_here: int  # ok trials of the run that the reference lacks
    only_there: int
    provenance: list[str] = field(default_factory=list)  # what differs in how they were made

    @property
    def identical(self) -> bool:
        """Every headline cell equal, and the same trials on both sides (a run whose trial
        failed does not reproduce the reference, however equal the others are)."""
        return (
            self.cells > 0 and self.differing.empty and not self.only_here and not self.only_there
        )

    def lines(self) -> list[str]:
        head = f"compared with {self.reference}: "
        if self.cells == 0:
            return [head + "no trial in common (another spec or code version?); nothing to compare"]
        n = len(self.differing)
        out = []
        if n == 0 and not (self.only_here or self.only_there):
            out.append(head + f"all {self.cells} headline cells identical (exact match)")
        elif n == 0:
            out.append(
                head + f"the {self.cells} headline cells both hold are identical, but the "
                "stores hold different trials"
            )
        else:
            out.append(head + f"{n} of {self.cells} headline cells differ")
            for _, r in self.differing.head(SHOWN).iterrows():
                out.append(
                    f"  {r['label']} seed {r['seed']}, {r['metric']}: {r['here']:.4g} here, "
                    f"{r['there']:.4g} in the reference ({r['diff']:+.4g})"
                )
        if self.only_here or self.only_there:
            out.append(
                f"  trials only in this run: {self.only_here}; only in the reference: "
                f"{self.only_there}"
            )
        if self.provenance:
            out.append("  produced differently: " + "; ".join(self.provenance))
        elif n:
            out.append(
                "  same world, assets, threads, packages and CPU as recorded: a difference "
                "here is nondeterminism the manifest does not explain"
            )
        return out


def _cells(data: SweepData) -> pd.DataFrame:
    ok = set(data.trials.loc[data.trials["status"] == "ok", "trial_id"])
    res = data.results
    res = res[
        res["trial_id"].isin(ok)
        & res["benchmark"].isin(BENCHMARKS)
        & (res["category"].astype(str) == "all")
    ]
    return res[["trial_id", "variant_id", "seed", "benchmark", "metric", "value"]]


def _get(manifest: dict, *path: str):
    node = manifest
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


PROVENANCE = (
    ("world content hash", ("datasets", "training", "world", "content_hash")),
    ("assets' weights (SHA-256)", ("assets", "weights_sha256")),
    ("assets' preparation threads", ("assets", "threads")),
    ("threads per trial", ("determinism", "trial_threads")),
    ("torch", ("packages", "torch")),
    ("transformers", ("packages", "transformers")),
    ("lmms_eval", ("packages", "lmms_eval")),
    ("CPU", ("hardware", "cpu_model")),
    ("CPU count", ("hardware", "cpu_count")),
    ("code revision", ("code_revision",)),
)


def provenance_differences(here: dict, there: dict) -> list[str]:
    """What differs between two manifests in how their numbers were produced."""
    out = []
    for label, path in PROVENANCE:
        a, b = _get(here, *path), _get(there, *path)
        if a is None and b is None:
            continue
        if a is None or b is None:
            out.append(f"{label} recorded in {'the reference' if a is None else 'this run'} only")
        elif a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                out.append(f"{label}: {', '.join(keys)} differ")
            else:
                out.append(f"{label}: {_short(a)} here, {_short(b)} in the reference")
    return out


def _short(value) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # hashes


def compare_stores(run_dir: str | Path, reference_dir: str | Path) -> Comparison:
    here, there = load_sweep(run_dir), load_sweep(reference_dir)
    a, b = _cells(here), _cells(there)
    both = a.merge(b, on=["trial_id", "benchmark", "metric"], suffixes=("_here", "_there"))
    both = both.rename(columns={"value_here": "here", "value_there": "there"})
    both["diff"] = both["here"] - both["there"]
    same = [
        (x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(both["here"], both["there"])
    ]
    labels = {(h.benchmark, m): h for h in HEADLINES for m in h.metrics}
    # a boolean Series, not a list: an empty list would select no columns (no common trials)
    differing = both[pd.Series([not s for s in same], index=both.index, dtype=bool)].copy()
    # rank by the difference in displayed units (SEED and tools in percent)
    scale = [labels.get((bn, m)).scale if (bn, m) in labels else 1.0
             for bn, m in zip(differing["benchmark"], differing["metric"])]  # fmt: skip
    differing["size"] = (differing["diff"].abs() * scale) if len(differing) else []
    names = (
        here.trials.set_index("trial_id")["variant_name"] if "variant_name" in here.trials else {}
    )
    differing["label"] = [str(names.get(t, t)) for t in differing["trial_id"]]
    differing = differing.rename(columns={"seed_here": "seed"})
    differing = differing.sort_values("size", ascending=False, kind="stable")
    trials_a, trials_b = set(a["trial_id"]), set(b["trial_id"])
    return Comparison(
        Path(reference_dir),
        len(both),
        differing[["trial_id", "label", "seed", "benchmark", "metric", "here", "there", "diff"]],
        len(trials_a - trials_b),
        len(trials_b - trials_a),
        provenance_differences(here.manifest, there.manifest),
    )
