"""What a researcher sees of a running or finished sweep.

`SweepProgress` draws a live line with rich from Tune's trial events (done / running / failed,
best objective so far, elapsed) and stays quiet when ``CI`` is true or stdout is not a
terminal; `summarize` reads a sweep folder's store into a `SweepSummary` (counts by status,
best trial, wall time) for the closing message.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from harness import store


@dataclass
class SweepSummary:
    sweep_dir: Path
    counts: dict[str, int]
    planned: int
    best: dict[str, Any] | None
    wall_s: float


def interactive() -> bool:
    """A live display only on a terminal and outside CI."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return not ci and sys.stdout.isatty()


class SweepProgress(Callback):
    """Live progress from Tune's trial events (rich); silent when not interactive."""

    def __init__(self, name: str, total: int, mode: str = "max", enabled: bool = True):
        self.name, self.total, self.mode, self.enabled = name, total, mode, enabled
        self._live: Any = None
        self._started = time.time()
        self._best: float | None = None

    def __getstate__(self) -> dict:  # Tune pickles its RunConfig; never the live display
        state = self.__dict__.copy()
        state["_live"] = None
        return state

    def setup(self, **info) -> None:
        self._started = time.time()
        if self.enabled and interactive():
            from rich.live import Live

            self._live = Live("", refresh_per_second=2, transient=False)
            self._live.start()

    def _line(self, trials) -> str:
        status = [t.status for t in trials]
        done, running = status.count("TERMINATED"), status.count("RUNNING")
        failed = sum(
            t.status == "ERROR" or (t.last_result or {}).get("trial_status") == "failed"
            for t in trials
        )
        best = "-" if self._best is None else f"{self._best:.4g}"
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - self._started))
        return (
            f"[bold]{self.name}[/]: {done}/{self.total} done, {running} running, {failed} "
            f"failed | best objective {best} | elapsed {elapsed}"
        )

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._live is not None:
            self._live.update(self._line(trials))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get("objective")
        if result.get("trial_final") and isinstance(value, float) and not math.isnan(value):
            pick = max if self.mode == "max" else min
            self._best = value if self._best is None else pick(self._best, value)

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._live.update(self._line(trials))
            self._live.stop()
            self._live = None


def summarize(sweep_dir: str | Path) -> SweepSummary:
    manifest = store.read_manifest(sweep_dir)
    records = store.load_records(sweep_dir)
    objective = manifest.get("spec", {}).get("objective", [{}])[0]
    key = "/".join(str(objective.get(k, "all")) for k in ("benchmark", "metric", "category"))
    best = store.best_record(records, key, objective.get("mode", "max"))
    return SweepSummary(
        sweep_dir=Path(sweep_dir),
        counts={s: sum(r.status == s for r in records) for s in store.STATUSES},
        planned=manifest.get("plan", {}).get("num_trials", len(records)),
        best=None
        if best is None
        else {
            "trial_id": best.trial_id,
            "variant": best.variant_name,
            "seed": best.seed,
            "objective": key,
            "value": best.objectives[key],
        },
        wall_s=manifest.get("wall_s", 0.0),
    )
