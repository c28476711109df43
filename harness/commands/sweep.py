"""`mage-harness sweep SPEC`, `resume SWEEP_DIR`, `status SWEEP_DIR`: run, finish and inspect
a Ray Tune sweep. The work is in harness.sweep; this module parses arguments, checks what
can be checked before work (the spec, the trial count, the inputs, the --out folder, the
store) and prints."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep spec (Ray Tune + Optuna); --dry-run shows the plan and its cost",
        description="Validate SPEC (a YAML path or the name of a spec in ablations/), then "
        "train and score every variant x seed on Ray Tune, storing results as trials finish. "
        "Re-running into a folder that holds the same spec continues it.",
    )
    p.add_argument("spec", metavar="SPEC", help="sweep spec: a YAML file, or e.g. `smoke`")
    p.add_argument("--out", default=None, metavar="DIR", help="sweep folder (sweeps/<name>)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help=_RAY_HELP)
    _add_ray_timeout(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and cost, check every input (data files, images, benchmark "
        "folders, Hugging Face ids); run nothing",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help=f"run a sweep of more than {CONFIRM_ABOVE_TRIALS:,} trials (its dry run shows the cost)",
    )
    p.add_argument("--no-report", action="store_true", help="skip building the report")
    p.set_defaults(func=_sweep)

    p = sub.add_parser(
        "resume",
        help="finish an interrupted sweep (crash, kill -9); finished trials are not re-run",
        description="Restore the sweep's Tune experiments and run what is left; every trial "
        "already in the results store is reported from the store, not trained again.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help=_RAY_HELP)
    _add_ray_timeout(p)
    p.add_argument("--no-report", action="store_true", help="skip building the report")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run the failed trials again, from their stage caches and checkpoints "
        "(`status` says which failures look transient)",
    )
    p.set_defaults(func=_resume)

    p = sub.add_parser("status", help="trials done / failed (with causes), best so far")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.set_defaults(func=_status)


# a sweep of more trials than this needs --yes (its dry run shows the count and cost first)
CONFIRM_ABOVE_TRIALS = 1000
_RAY_HELP = (
    "an existing Ray cluster's address, HOST:PORT (default: $RAY_ADDRESS, else an embedded "
    "local Ray); its token from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
)


def _add_ray_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds to wait for --ray-address (default: $MAGE_RAY_CONNECT_TIMEOUT, else 30)",
    )


def _set_ray_timeout(args) -> None:
    """--ray-timeout reaches harness.ray_cluster through its environment variable."""
    from harness.ray_cluster import TIMEOUT_ENV, ClusterError, connect_timeout_s

    if args.ray_timeout is not None:
        if not args.ray_timeout > 0:
            raise ClusterError(f"--ray-timeout must be a positive number, got {args.ray_timeout}")
        os.environ[TIMEOUT_ENV] = str(args.ray_timeout)
    connect_timeout_s()  # a bad $MAGE_RAY_CONNECT_TIMEOUT fails here, before any work


EARLY_ENTRIES = {"spec.yaml", "records", "stages"}  # what a sweep writes before its manifest


def is_sweep_dir(path: Path) -> bool:
    """A folder `sweep` wrote: its spec.yaml beside the store's manifest.json, or with nothing
    but what a sweep writes before it (a sweep stopped while preparing its inputs). A
    spec.yaml among other files is the user's own spec, in the user's own folder."""
    if not (path / "spec.yaml").is_file():
        return False
    return (path / "manifest.json").is_file() or {p.name for p in path.iterdir()} <= EARLY_ENTRIES


def _print_summary(summary) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items())
    print(
        f"{summary.sweep_dir}: {sum(summary.counts.values())}/{summary.planned} trials ({counts})"
    )
    if summary.best:
        b = summary.best
        print(f"  best {b['objective']}: {b['value']:.4g} ({b['variant']}, seed {b['seed']})")
    print(f"  wall {summary.wall_s:.0f} s; details: mage-harness status {summary.sweep_dir}")


def _too_many(spec) -> str:
    """The count and cost of a sweep above the confirmation threshold."""
    n = spec.trial_count
    cost = (
        f"about {n * spec.estimate.trial_s / 3600:,.1f} trial-hours ({spec.estimate.trial_s:g} s "
        f"per trial: {spec.estimate.basis})"
        if spec.estimate
        else "no per-trial estimate in the spec"
    )
    return (
        f"sweep {spec.name}: {n:,} trials (variants x {len(spec.seed_list)} seed(s)), above "
        f"{CONFIRM_ABOVE_TRIALS:,}; cost: {cost}"
    )


def _sweep(args) -> int:
    from harness.plan import plan_sweep
    from harness.preflight import check_plan_inputs
    from harness.spec import SpecError, load_spec
    from harness.sweep import check_memory, check_search
    from mage.io import check_output_dir

    if Path(args.spec).is_dir():
        raise SpecError(f"{args.spec}: is a folder; give a sweep spec YAML file or a spec name")
    spec = load_spec(args.spec)
    if spec.trial_count > CONFIRM_ABOVE_TRIALS and not args.yes:
        print(_too_many(spec))
        if args.dry_run:  # the count and cost, without building every config
            print("  a run needs --yes; `--dry-run --yes` also lists and checks every variant")
            return 0
        raise SpecError(
            f"{spec.trial_count:,} trials need --yes (more than {CONFIRM_ABOVE_TRIALS:,}); "
            "check the count and cost above, or shrink the grid"
        )
    plan = plan_sweep(spec)
    check_memory(plan)  # a GPU spec that cannot fit its workers: refused here
    check_search(plan)  # an Optuna space or storage that cannot be built, too
    out = Path(args.out or Path("sweeps") / spec.name)
    check_output_dir(out, "a sweep folder", is_sweep_dir)  # never into someone's files
    if args.dry_run:
        from harness.sweep import check_sweep_folder

        print(plan_text(plan))
        check_sweep_folder(plan, out)
        check_plan_inputs(plan, images=True)
        print("  inputs: every data file, image, benchmark folder and Hugging Face id found")
        return 0
    _set_ray_timeout(args)
    check_plan_inputs(plan)
    from harness.sweep import run_sweep

    summary = run_sweep(spec, out, ray_address=args.ray_address, report=not args.no_report)
    _print_summary(summary)
    return 0


def _resume(args) -> int:
    from harness.plan import plan_sweep
    from harness.preflight import check_plan_inputs
    from harness.spec import parse_spec
    from harness.store import read_spec
    from harness.store_check import check_store
    from harness.sweep import resume_sweep

    check_store(args.sweep_dir, "resume")  # before Ray, the world or any trial
    spec = parse_spec(read_spec(args.sweep_dir), str(Path(args.sweep_dir) / "spec.yaml"))
    check_plan_inputs(plan_sweep(spec))
    _set_ray_timeout(args)
    summary = resume_sweep(
        args.sweep_dir,
        ray_address=args.ray_address,
        report=not args.no_report,
        retry_failed=args.retry_failed,
    )
    _print_summary(summary)
    return 0


def _status(args) -> int:
    print(status_text(args.sweep_dir))
    return 0


def _resources(plan) -> tuple[str, float, float]:
    res = plan.spec.resources
    if res == "whole_node":
        return "a whole node per trial", math.nan, math.nan
    if res.in_process:
        return f"{res.cpu:g} CPU + {res.gpu:g} GPU per trial", res.cpu, res.gpu
    size = res.group_size()
    desc = (
        f"a driver ({res.driver_cpus:g} CPU) + {res.workers} Ray Train workers x "
        f"({res.cpus_per_worker:g} CPU + {res.gpus_per_worker:g} GPU) per trial"
    )
    return desc, size["CPU"], size["GPU"]


def plan_text(plan) -> str:
    """The trial plan and its cost estimate, for ``mage-harness sweep --dry-run``."""
    spec = plan.spec
    seeds = ", ".join(map(str, plan.seeds))
    lines = [f"sweep {spec.name}: base preset {spec.base}, search {spec.search}"]
    if spec.search == "optuna":
        lines.append(
            f"  optuna TPE (seed {spec.search_seed}) samples {spec.num_samples} variants; each "
            f"is trained for every seed ({seeds}) and Optuna sees the mean over seeds"
        )
        for name, axis in spec.axes.items():
            lines.append(f"    {name}: {axis.model_dump(exclude_none=True, exclude_defaults=True)}")
    lines.append(f"  {len(plan.variants)} fixed variant(s) x {len(plan.seeds)} seed(s) [{seeds}]:")
    for v in plan.variants:
        lines.append(f"    {v.variant_id}  {v.kind:<8} {v.name}")
    desc, cpu, gpu = _resources(plan)
    conc = spec.max_concurrent_trials
    lines.append(
        f"  trials: {plan.num_trials}; resources: {desc}; at most "
        f"{conc or 'as many as fit'} at once; Tune retries a crashed trial {spec.max_failures}x"
    )
    if spec.early_stopping:
        es = spec.early_stopping
        lines.append(
            f"  early stopping: ASHA on {es.metric} ({es.mode}), grace {es.grace_period} steps, "
            f"reduction factor {es.reduction_factor:g}"
        )
    lines.append(f"  objective: {', '.join(f'{o.key} ({o.mode})' for o in spec.objective)}")
    if spec.estimate is None:
        lines.append("  cost: no per-trial estimate in the spec (add `estimate: {trial_s, basis}`)")
        return "\n".join(lines)
    hours = plan.num_trials * spec.estimate.trial_s / 3600
    waves = math.ceil(plan.num_trials / conc) if conc else None
    lines.append(f"  cost estimate: {spec.estimate.trial_s:g} s per trial ({spec.estimate.basis})")
    cost = f"    = {hours:.2f} trial-hours"
    if not math.isnan(cpu):
        cost += f", {hours * cpu:.2f} CPU-hours, {hours * gpu:.2f} GPU-hours"
    if waves:
        cost += f"; about {waves * spec.estimate.trial_s / 3600:.2f} h wall at {conc} at once"
    lines.append(cost)
    return "\n".join(lines)


def status_text(sweep_dir) -> str:
    """Counts by status, best so far and each failure's cause, from the store (checked
    first): the trial records, and the tables for trials that have none (a published store)."""
    from harness.retry import failure_kind, retried_trials
    from harness.store import STATUSES
    from harness.store_check import check_store

    state = check_store(sweep_dir, "status")
    manifest = state.manifest
    spec = manifest.get("spec", {})
    planned = manifest.get("plan", {}).get("num_trials")
    objective = (spec.get("objective") or [{}])[0]
    key = "/".join(str(objective.get(k, "all")) for k in ("benchmark", "metric", "category"))
    rows = {  # trial_id -> (variant, seed, status, error, objective value)
        r.trial_id: (r.variant_name, r.seed, r.status, r.error, r.objectives.get(key))
        for r in state.records
    }
    for row in _table_rows(state, key, objective):
        rows.setdefault(row[0], row[1:])
    counts = {s: sum(row[2] == s for row in rows.values()) for s in STATUSES}
    head = f"sweep {spec.get('name', '?')} in {sweep_dir}: {len(rows)}"
    head += f"/{planned} trials stored" if planned else " trials stored"
    lines = [head + " (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"]
    scored = [(row[4], row) for row in rows.values() if row[2] == "ok" and row[4] is not None]
    if scored:
        pick = min if objective.get("mode", "max") == "min" else max
        value, (variant, seed, *_) = pick(scored, key=lambda item: item[0])
        lines.append(f"  best {key}: {value:.4g} ({variant}, seed {seed})")
    failed = 0
    for trial_id, (variant, _, status, error, _) in sorted(rows.items()):
        if status == "failed":
            failed += 1
            cause = str(error).splitlines()[0] if error else "no cause stored"
            kind = failure_kind(error)
            lines.append(f"  failed {trial_id} ({variant}) [{kind}]: {cause}")
    if failed:
        lines.append(
            "  transient: out of memory, a lost worker or node, preemption (a retry may pass); "
            "persistent: a NaN loss, bad data, a config or code error (fix the cause first); "
            f"run them again with `mage-harness resume {sweep_dir} --retry-failed`"
        )
    retried = retried_trials(sweep_dir)
    if retried:
        lines.append(f"  run again after a failure: {len(retried)} (earlier attempts in retried/)")
    sessions = manifest.get("sessions", [])
    if sessions:
        wall = sum(s.get("wall_s") or 0 for s in sessions)
        lines.append(f"  driver sessions: {len(sessions)}, wall {wall:.0f} s")
    return "\n".join(lines)


def _table_rows(state, key: str, objective: dict):
    """(trial_id, variant, seed, status, error, value) of the trials in trials.parquet."""
    trials = state.tables.get("trials")
    if trials is None or trials.empty:
        return []
    values: dict[str, float] = {}
    results = state.tables.get("results")
    if results is not None and not results.empty:
        bench, metric, category = key.split("/")
        hit = results[
            (results["benchmark"] == bench)
            & (results["metric"] == metric)
            & (results["category"] == category)
        ]
        values = dict(zip(hit["trial_id"].astype(str), hit["value"].astype(float), strict=True))
    names = trials["variant_name"] if "variant_name" in trials else trials["variant_id"]
    return [
        (
            str(t),
            name,
            int(seed),
            status,
            error if isinstance(error, str) else None,
            values.get(str(t)),
        )
        for t, name, seed, status, error in zip(
            trials["trial_id"],
            names,
            trials["seed"],
            trials["status"],
            trials["error"],
            strict=True,
        )
    ]
