"""Running failed trials again (``resume --retry-failed``, ``retry_failed: true``) and telling
transient failures from persistent ones.

A stored record is final, so to run a failed trial again its folder ``trials/<trial_id>/`` is
moved to ``retried/<trial_id>/attempt-<n>/`` (kept as history) and the trial joins a Tune
experiment of its own, ``<name>-retry<session>``, whose trials are identified by
``{"retry": target}`` (`retry_variant`): the stored record's variant, seed and resolved config,
so grid points and Optuna's samples alike run again with the config they had. The trial then
continues from whatever its earlier attempt left on disk: finished stages and evaluations from
the stage cache, an unfinished stage from its last checkpoint. A trial moved aside whose retry
did not finish (the driver died) is run by the next resume, with or without the flag.

`failure_kind` reads a stored error: ``transient`` (out of memory, a lost worker or node,
preemption: the same trial may well pass) or ``persistent`` (a non-finite loss, bad data, a
config or code error: it will fail again until the cause is fixed).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from harness import store
from harness.plan import SweepPlan, Variant
from mage.config import MageConfig

RETRIED = store.RETRIED
# exception names and messages, matched case-insensitively
TRANSIENT = re.compile(
    r"outofmemory|out of memory|memoryerror|\boom\b|oom.?kill|actordied|workercrash|nodedied|"
    r"node (died|failed|lost)|raysystemerror|objectlost|ownerdied|preempt|sigkill|\bkilled\b|"
    r"nccl|trial process failed",
    re.IGNORECASE,
)
PERSISTENT = re.compile(
    r"nonfinite|non-finite|\bnan\b|dataerror|filenotfound|configerror|specerror|evalerror|"
    r"keyerror|valueerror|typeerror|attributeerror|importerror|modulenotfound|assertionerror",
    re.IGNORECASE,
)


def failure_kind(error: str | None) -> str:
    """``transient`` or ``persistent``: the exception's own name first, then the traceback;
    an unknown cause counts as persistent (most likely a bug)."""
    text = error or ""
    head = text.split(":", 1)[0] if not text.startswith("trial process failed") else ""
    for pattern, kind in ((TRANSIENT, "transient"), (PERSISTENT, "persistent")):
        if pattern.search(head):
            return kind
    if PERSISTENT.search(text):
        return "persistent"
    return "transient" if TRANSIENT.search(text) else "persistent"


def retried_dir(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / RETRIED / trial_id


def _target(record: store.TrialRecord) -> dict[str, Any]:
    keys = ("trial_id", "variant_id", "variant_name", "seed", "config")
    return {k: getattr(record, k) for k in keys}


def retry_variant(plan: SweepPlan, target: dict[str, Any]) -> tuple[Variant, int]:
    """The variant and seed of a retry target (the plan's own variant where it has it)."""
    seed = int(target["seed"])
    for variant in plan.variants:
        if variant.variant_id == target["variant_id"]:
            return variant, seed
    config = MageConfig.model_validate(target["config"])
    return Variant(target["variant_name"], "searched", {}, config), seed


def _latest_attempt(sweep_dir: Path, trial_id: str) -> store.TrialRecord | None:
    attempts = sorted(
        retried_dir(sweep_dir, trial_id).glob("attempt-*/record.json"),
        key=lambda p: int(p.parent.name.split("-")[1]),
    )
    return store.TrialRecord.from_dict(json.loads(attempts[-1].read_text())) if attempts else None


def prepare_retries(sweep_dir: str | Path, plan: SweepPlan, failed: bool) -> list[dict]:
    """The trials to run again: with ``failed``, every stored failed trial (moved aside
    first); always, those moved aside earlier whose retry was not stored, and planned trials
    that have no record after the main phases. A trial whose
    stored config no longer resolves to its variant (the config schema changed) stays as it
    is, with a message."""
    sweep_dir = Path(sweep_dir)
    targets: dict[str, dict] = {}
    # trials with a record: their folder names (trial ids), listed once, nothing parsed
    stored = {path.parent.name for path in store.record_paths(sweep_dir)}
    root = sweep_dir / RETRIED
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        record = _latest_attempt(sweep_dir, folder.name)
        if record is not None and folder.name not in stored:
            targets[record.trial_id] = _target(record)
    for record in store.load_records(sweep_dir) if failed else []:
        if record.status != "failed" or record.trial_id in targets:
            continue
        variant, _ = retry_variant(plan, _target(record))
        if variant.variant_id != record.variant_id:
            print(
                f"retry: {record.trial_id} not retried: its stored config resolves to another "
                "variant now (the config schema changed since it ran)"
            )
            continue
        attempt = len(list(retried_dir(sweep_dir, record.trial_id).glob("attempt-*"))) + 1
        dest = retried_dir(sweep_dir, record.trial_id) / f"attempt-{attempt}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(store.trial_dir(sweep_dir, record.trial_id), dest)
        targets[record.trial_id] = _target(record)
    # A planned trial with no record once the main phases are over was dropped (`store
    # rebuild --drop-missing` moved its unreadable folder aside): its Tune experiment counts
    # it finished, so it runs here. Searched (Optuna) trials are not in the plan: not rerun.
    for variant in plan.variants:
        for seed in plan.seeds:
            trial_id = variant.trial_id(seed)
            if trial_id not in targets and trial_id not in stored:
                targets[trial_id] = {
                    "trial_id": trial_id,
                    "variant_id": variant.variant_id,
                    "variant_name": variant.name,
                    "seed": seed,
                    "config": plan.trial_config(variant, seed).to_dict(),
                }
    return [targets[k] for k in sorted(targets)]


def retried_trials(sweep_dir: str | Path) -> list[str]:
    """Ids of the trials that were run again at least once."""
    root = Path(sweep_dir) / RETRIED
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
