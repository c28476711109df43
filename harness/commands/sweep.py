"""`mage-harness sweep SPEC`, `resume SWEEP_DIR`, `status SWEEP_DIR`: run, finish and inspect
a Ray Tune sweep. The work is in harness.sweep; this module parses arguments and prints."""

from __future__ import annotations

import argparse
import math
import sys


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
    p.add_argument("--dry-run", action="store_true", help="print the plan and cost; run nothing")
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


_RAY_HELP = "an existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)"


def _print_summary(summary) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items())
    print(
        f"{summary.sweep_dir}: {sum(summary.counts.values())}/{summary.planned} trials ({counts})"
    )
    if summary.best:
        b = summary.best
        print(f"  best {b['objective']}: {b['value']:.4g} ({b['variant']}, seed {b['seed']})")
    print(f"  wall {summary.wall_s:.0f} s; details: mage-harness status {summary.sweep_dir}")


def _sweep(args) -> int:
    from harness.plan import plan_sweep
    from harness.spec import SpecError, load_spec

    try:
        from harness.sweep import check_memory

        spec = load_spec(args.spec)
        plan = plan_sweep(spec)
        check_memory(plan)
    except SpecError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan_text(plan))
        return 0
    from harness.sweep import run_sweep

    try:
        summary = run_sweep(spec, args.out, ray_address=args.ray_address, report=not args.no_report)
    except SpecError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


def _resume(args) -> int:
    from harness.spec import SpecError
    from harness.sweep import resume_sweep

    try:
        summary = resume_sweep(
            args.sweep_dir,
            ray_address=args.ray_address,
            report=not args.no_report,
            retry_failed=args.retry_failed,
        )
    except SpecError as err:
        print(f"resume: {err}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


def _status(args) -> int:
    from pathlib import Path

    if not (Path(args.sweep_dir) / "manifest.json").is_file():
        print(f"status: {args.sweep_dir} is not a sweep folder (no manifest.json)", file=sys.stderr)
        return 2
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
    """Counts by status, best so far and each failure's cause, from the store."""
    from harness.retry import failure_kind, retried_trials
    from harness.store import STATUSES, best_record, load_records, read_manifest

    manifest = read_manifest(sweep_dir)
    spec = manifest.get("spec", {})
    planned = manifest.get("plan", {}).get("num_trials")
    records = load_records(sweep_dir)
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    head = f"sweep {spec.get('name', '?')} in {sweep_dir}: {len(records)}"
    head += f"/{planned} trials stored" if planned else " trials stored"
    lines = [head + " (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"]
    objective = (spec.get("objective") or [{}])[0]
    key = "/".join(str(objective.get(k, "all")) for k in ("benchmark", "metric", "category"))
    best = best_record(records, key, objective.get("mode", "max"))
    if best is not None:
        lines.append(
            f"  best {key}: {best.objectives[key]:.4g} ({best.variant_name}, seed {best.seed})"
        )
    failed = [r for r in records if r.status == "failed"]
    for r in failed:
        kind = failure_kind(r.error)
        lines.append(
            f"  failed {r.trial_id} ({r.variant_name}) [{kind}]: {r.error.splitlines()[0]}"
        )
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
