"""What a researcher sees of a running or finished sweep.

`SweepProgress` follows Tune's trial events. On a terminal (outside CI) it draws a live line
with rich (done / running / failed, best objective so far, elapsed); elsewhere (a cluster
job's log, ``make demo > log``, CI) it prints one line per finished trial instead: its
variant and seed, status, wall time, its objective scores (read from the results store) and
an estimate of the time left. `summarize` reads a sweep folder's store into a `SweepSummary`
(counts by status, best trial, wall time) for the closing message.
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
    """Live progress from Tune's trial events: a rich line on a terminal, else one printed
    line per finished trial (scores from the store in ``sweep_dir`` when given)."""

    def __init__(
        self,
        name: str,
        total: int,
        mode: str = "max",
        enabled: bool = True,
        sweep_dir: str | Path | None = None,
    ):
        self.name, self.total, self.mode, self.enabled = name, total, mode, enabled
        self.sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
        self._live: Any = None
        self._started = time.time()
        self._best: float | None = None
        self._finished: set[str] = set()
        self._earlier: int | None = None  # trials a resumed experiment had finished before
        self._slots = 1  # the most trials seen running at once
        self._walls: list[float] = []  # this session's finished trials' own wall times

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
        elapsed = _clock(time.time() - self._started)
        return (
            f"[bold]{self.name}[/]: {done}/{self.total} done, {running} running, {failed} "
            f"failed | best objective {best} | elapsed {elapsed}"
        )

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._earlier is None:  # first loop step: no trial of this session has ended yet
            self._earlier = sum(t.status == "TERMINATED" for t in trials)
        self._slots = max(self._slots, sum(t.status == "RUNNING" for t in trials))
        if self._live is not None:
            self._live.update(self._line(trials))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get("objective")
        if result.get("trial_final") and isinstance(value, float) and not math.isnan(value):
            pick = max if self.mode == "max" else min
            self._best = value if self._best is None else pick(self._best, value)
        if result.get("trial_final"):
            self._finish(str(result.get("trial_key", "")), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A trial that ends without a final result (stopped early by ASHA) counts too."""
        result = trial.last_result or {}
        self._finish(str(result.get("trial_key") or trial.trial_id), result)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self._finish(
            str(result.get("trial_key") or trial.trial_id), {**result, "trial_status": "error"}
        )

    def _finish(self, key: str, result: dict) -> None:
        if key in self._finished:
            return
        self._finished.add(key)
        if self.enabled and self._live is None and not interactive():
            print(self.finished_line(key, result), flush=True)

    def finished_line(self, trial_key: str, result: dict) -> str:
        """One log line for a finished trial: who, how it ended, its scores, time left."""
        this_session = len(self._finished)
        done = (self._earlier or 0) + this_session
        elapsed = time.time() - self._started
        record = store.stored_trial(self.sweep_dir, trial_key) if self.sweep_dir else None
        who = trial_key
        status = str(result.get("trial_status", "ok"))
        tail = ""
        if record is not None:
            who = f"{record.variant_name} seed {record.seed}"
            status = f"{record.status} in {record.wall_s:.0f} s"
            self._walls.append(record.wall_s)
            if record.status == "failed" and record.error:
                tail = f" | {record.error.splitlines()[0][:160]}"
            elif record.objectives:
                tail = " | " + ", ".join(score_text(k, v) for k, v in record.objectives.items())
        left = self.total - done
        eta = f", about {_clock(self._time_left(elapsed, this_session, left))} left" if left else ""
        return (
            f"{self.name}: trial {done}/{self.total} {who}: {status}{tail} | "
            f"elapsed {_clock(elapsed)}{eta}"
        )

    def _time_left(self, elapsed: float, finished: int, left: int) -> float:
        """The trials left at this session's pace. With stored wall times: their mean times the
        trials left, shared by the slots that ran at once (trials that run side by side finish
        together, so elapsed / finished would count the first ones' time twice); else elapsed
        / finished (a resumed sweep's earlier trials took no time here)."""
        if self._walls:
            return sum(self._walls) / len(self._walls) * left / min(self._slots, left)
        return elapsed / finished * left

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._live.update(self._line(trials))
            self._live.stop()
            self._live = None


def _clock(seconds: float) -> str:
    """H:MM:SS, hours unbounded (a paper sweep runs for days: 30 h is 30:00:00)."""
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def score_text(key: str, value: float | None) -> str:
    """``mme/mme_perception_score/all`` and its value as the report names it: "MME-P 330.5"."""
    from reports.headlines import HEADLINES

    bench, metric, category = (key.split("/") + ["all", "all"])[:3]
    hit = next((h for h in HEADLINES if h.benchmark == bench and metric in h.metrics), None)
    label = hit.label if hit is not None and category == "all" else key
    if value is None:
        return f"{label} -"
    return f"{label} {value * (hit.scale if hit is not None else 1.0):.1f}"


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
