"""Is a sweep folder's results store whole? Checked before ``status``, ``resume`` and
``report`` do any work, and repaired by ``mage-harness store rebuild``.

`inspect_store` reads everything once and lists what is wrong, each with how to repair it;
`check_store` raises `harness.store.DamagedStoreError` (one line) for the problems that
matter to a purpose:

- every purpose: the tables that exist are readable parquet, every ``trials/*/record.json``
  is readable;
- ``status`` and ``resume``: ``manifest.json`` is present and readable (``report`` does
  without it, as `reports.load` does);
- ``resume``: ``spec.yaml`` is readable, each record's own tables are readable, and every
  trial in ``trials.parquet`` has its record (else resuming would rewrite the tables from
  fewer trials than they hold);
- ``report``: every record is merged into the tables (else the report would leave trials
  out).

A store without ``trials/`` (a published copy of the tables, like the committed smoke store)
is whole for ``status`` and ``report``; ``resume`` refuses it.

`rebuild_store` rewrites the tables from the records (`harness.store.consolidate`), and a
missing or damaged manifest from ``spec.yaml`` (the damaged file is kept beside it);
``drop_missing`` moves unreadable trial folders to ``damaged/`` and lets the tables lose the
trials that have no record, so that ``resume`` re-runs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from harness import store
from harness.store import DamagedStoreError

Purpose = Literal["status", "resume", "report", "rebuild"]
TRIAL_TABLES = ("results", "items", "curves")


@dataclass
class StoreState:
    """What `inspect_store` found in a sweep folder."""

    sweep_dir: Path
    has_manifest: bool = False
    has_spec: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # the readable ones
    records: list[store.TrialRecord] = field(default_factory=list)  # the readable ones
    problems: dict[str, str] = field(default_factory=dict)  # kind -> message
    damaged: list[str] = field(default_factory=list)  # trial folders that cannot be read
    table_only: list[str] = field(default_factory=list)  # in trials.parquet, no record
    unmerged: list[str] = field(default_factory=list)  # a record, not in trials.parquet

    @property
    def is_sweep(self) -> bool:
        return self.has_manifest or self.has_spec or bool(self.tables) or bool(self.records)


def _rebuild_hint(sweep_dir: Path, flags: str = "") -> str:
    return f"`mage-harness store rebuild {sweep_dir}{flags}`"


def inspect_store(sweep_dir: str | Path, trial_files: bool = False) -> StoreState:
    """Read the store's files and list what is wrong (nothing is written).
    ``trial_files`` also reads every record's own tables (what `consolidate` merges)."""
    sweep_dir = Path(sweep_dir)
    state = StoreState(sweep_dir)
    if not sweep_dir.is_dir():
        return state
    state.has_spec = (sweep_dir / "spec.yaml").is_file()
    state.has_manifest = (sweep_dir / "manifest.json").is_file()
    problems = state.problems
    try:
        state.manifest = store.read_manifest(sweep_dir)
    except DamagedStoreError as err:
        problems["manifest"] = str(err)
    if state.has_spec:
        try:
            store.read_spec(sweep_dir)
        except DamagedStoreError as err:
            problems["spec"] = str(err)
    damaged = state.damaged
    for path in store.record_paths(sweep_dir):
        try:
            state.records.append(store.read_record(path))
        except DamagedStoreError:
            damaged.append(path.parent.name)
    for name in store.TABLES:
        path = sweep_dir / f"{name}.parquet"
        if not path.exists():
            continue
        try:
            state.tables[name] = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            reason = str(err).splitlines()[0][:160]
            fix = (
                f"rebuild the tables from trials/ with {_rebuild_hint(sweep_dir)}"
                if state.records or damaged
                else "restore it from a copy (there are no trials/ records to rebuild it from)"
            )
            problems[f"table:{name}"] = f"{path.name} cannot be read as parquet ({reason}): {fix}"
    if damaged:
        problems["records"] = (
            f"{len(damaged)} trial record(s) cannot be read (trials/{damaged[0]}/record.json"
            f"{' and others' if len(damaged) > 1 else ''}): restore them, or "
            f"{_rebuild_hint(sweep_dir, ' --drop-missing')} moves them to {store.DAMAGED_DIRNAME}/ "
            "and `mage-harness resume` runs those trials again"
        )
    if trial_files:
        broken = [r.trial_id for r in state.records if not _trial_files_readable(sweep_dir, r)]
        if broken:
            problems["trial_files"] = (
                f"the tables of {len(broken)} stored trial(s) cannot be read (trials/"
                f"{broken[0]}/): restore them, or {_rebuild_hint(sweep_dir, ' --drop-missing')} "
                f"moves them to {store.DAMAGED_DIRNAME}/ and `mage-harness resume` runs those "
                "trials again"
            )
            state.records = [r for r in state.records if r.trial_id not in broken]
            damaged += broken
    if (state.tables or state.records or damaged) and not state.has_manifest:
        problems["manifest"] = (
            f"manifest.json is missing: {_rebuild_hint(sweep_dir)} writes it again from spec.yaml"
        )
    if "trials" in state.tables:
        in_table = set(state.tables["trials"]["trial_id"].astype(str))
        # failed trials moved aside to run again (`harness.retry`) until they are stored anew
        retrying = {p.name for p in (sweep_dir / store.RETRIED).glob("*")}
        recorded = {r.trial_id for r in state.records} | set(damaged) | retrying
        state.table_only = sorted(in_table - recorded)
        state.unmerged = sorted(recorded - in_table)
    elif state.records and not any(k.startswith("table:") for k in problems):
        state.unmerged = sorted(r.trial_id for r in state.records)
    return state


def _trial_files_readable(sweep_dir: Path, record: store.TrialRecord) -> bool:
    import pyarrow.parquet as pq

    folder = store.trial_dir(sweep_dir, record.trial_id)
    try:
        for name in TRIAL_TABLES:
            pq.read_metadata(folder / f"{name}.parquet")
    except Exception:  # missing or truncated
        return False
    return True


def _purpose_problems(state: StoreState, purpose: Purpose) -> list[str]:
    problems = dict(state.problems)
    if purpose == "report" and not state.has_manifest:
        problems.pop("manifest", None)  # reports.load does without it
    if purpose in ("resume", "rebuild") and state.table_only:
        what = (
            f"resuming would rewrite the tables from fewer trials than they hold: restore "
            f"trials/, or {_rebuild_hint(state.sweep_dir, ' --drop-missing')} to keep only the "
            "recorded trials (resume then runs the others again)"
            if purpose == "resume"
            else "pass --drop-missing to rebuild without them"
        )
        problems["table_only"] = (
            f"trials.parquet holds {len(state.table_only)} trial(s) that trials/ has no record "
            f"of (e.g. {state.table_only[0]}); {what}"
        )
    if purpose == "report" and state.unmerged:
        problems["unmerged"] = (
            f"{len(state.unmerged)} stored trial(s) are not in the tables yet (e.g. "
            f"{state.unmerged[0]}): {_rebuild_hint(state.sweep_dir)} merges them"
        )
    return list(problems.values())


def check_store(sweep_dir: str | Path, purpose: Purpose) -> StoreState:
    """`inspect_store`, raising `DamagedStoreError` (one line) on what matters to ``purpose``."""
    sweep_dir = Path(sweep_dir)
    state = inspect_store(sweep_dir, trial_files=purpose in ("resume", "rebuild"))
    if not state.is_sweep:
        raise DamagedStoreError(
            f"{sweep_dir}: not a sweep folder (no spec.yaml, manifest.json or results tables); "
            "pass the folder `mage-harness sweep` wrote (its --out)"
        )
    if purpose == "resume" and not state.has_spec:
        raise DamagedStoreError(
            f"{sweep_dir}: not a sweep folder (no spec.yaml); start it with sweep"
        )
    problems = _purpose_problems(state, purpose)
    if problems:
        raise DamagedStoreError(f"{sweep_dir}: damaged results store: " + "; ".join(problems))
    return state


def _plan_from_spec(sweep_dir: Path) -> tuple[dict[str, Any], Any]:
    from harness.plan import plan_sweep
    from harness.spec import parse_spec

    data = store.read_spec(sweep_dir)
    spec = parse_spec(data, str(sweep_dir / "spec.yaml"))
    return data, plan_sweep(spec)


def _move_aside(path: Path, target_dir: Path) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    target, n = target_dir / path.name, 1
    while target.exists():
        target, n = target_dir / f"{path.name}.{n}", n + 1
    os.replace(path, target)
    return target


def _recorded_scoring(sweep_dir: Path, done: dict[str, Any]) -> dict[str, str]:
    """The MMBench scoring method the trials were scored with, from their records: a resumed
    sweep reads it from the manifest and must keep scoring the way its first trials were."""
    methods = {r.eval_record.get("mmbench_scoring") for r in store.load_records(sweep_dir)} - {None}
    if len(methods) > 1:
        done["mmbench_scoring"] = f"trials disagree ({', '.join(sorted(methods))}): not recorded"
        return {}
    return {"mmbench_scoring": methods.pop()} if methods else {}


def rebuild_store(sweep_dir: str | Path, drop_missing: bool = False) -> dict[str, Any]:
    """Rewrite the tables (and a missing or damaged manifest) from ``trials/``; returns what
    was done. Nothing is deleted: unreadable trials and a damaged manifest are moved aside."""
    sweep_dir = Path(sweep_dir)
    state = inspect_store(sweep_dir, trial_files=True)
    if not state.is_sweep:
        check_store(sweep_dir, "rebuild")  # raises: not a sweep folder
    blocking = {k: v for k, v in state.problems.items() if k == "spec"}
    if not drop_missing:
        blocking.update(
            {k: state.problems[k] for k in ("records", "trial_files") if k in state.problems}
        )
    if state.table_only and not drop_missing:
        blocking["table_only"] = _purpose_problems(state, "rebuild")[-1]
    if blocking:
        raise DamagedStoreError(
            f"{sweep_dir}: cannot rebuild the results store: " + "; ".join(blocking.values())
        )
    done: dict[str, Any] = {"moved": []}
    if drop_missing:
        for trial_id in state.damaged:
            moved = _move_aside(
                store.trial_dir(sweep_dir, trial_id), sweep_dir / store.DAMAGED_DIRNAME
            )
            done["moved"].append(str(moved.relative_to(sweep_dir)))
    manifest_ok = state.has_manifest and "manifest" not in state.problems
    name = (state.manifest.get("spec") or {}).get("name")
    fields = (state.manifest.get("plan") or {}).get("swept_fields")
    if not manifest_ok or name is None or fields is None:
        if not state.has_spec:
            raise DamagedStoreError(
                f"{sweep_dir}: cannot rebuild the manifest: spec.yaml is missing too"
            )
        spec_data, plan = _plan_from_spec(sweep_dir)
        name, fields = plan.spec.name, plan.swept_fields
        if (sweep_dir / "manifest.json").exists() and not manifest_ok:
            moved = _move_aside(sweep_dir / "manifest.json", sweep_dir / store.DAMAGED_DIRNAME)
            done["moved"].append(str(moved.relative_to(sweep_dir)))
        if not manifest_ok:
            store.update_manifest(
                sweep_dir,
                spec=spec_data,
                plan={
                    "num_trials": plan.num_trials,
                    "seeds": plan.seeds,
                    "swept_fields": plan.swept_fields,
                    "variants": [
                        {"name": v.name, "variant_id": v.variant_id, "kind": v.kind}
                        for v in plan.variants
                    ],
                },
                rebuilt_from_trials=True,
                **_recorded_scoring(sweep_dir, done),
            )
            done["manifest"] = "rewritten from spec.yaml"
    tables = store.consolidate(sweep_dir, name, list(fields), allow_fewer=drop_missing)
    done["trials"] = len(tables["trials"])
    done["dropped"] = sorted(state.table_only) if drop_missing else []
    return done
