"""The ``manifest.json`` and ``spec.yaml`` of a sweep folder: reading, merging sections in, and
what they record about the trials (configs, hours, totals, early-stopping savings, dataset
records), the reproducibility inputs (prepared assets, thread counts) and the driver's
provenance (code revision, package versions, hardware).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.store_records import STATUSES, DamagedStoreError, TrialRecord
from mage.io import atomic_write_json


def reproducibility_sections(manifest: dict[str, Any], datasets: dict[str, Any]) -> dict:
    """What a re-run must match to give the same numbers: the prepared assets (their recipe
    key and weight hashes, from the assets folder's assets.json) and the thread counts."""
    out: dict[str, Any] = {}
    assets_dir = (datasets.get("training") or {}).get("assets_dir")
    info = read_manifest_file(Path(assets_dir) / "assets.json") if assets_dir else None
    if info:
        keep = ("key", "size", "world_content_hash", "weights_sha256", "threads", "torch", "source")
        out["assets"] = {k: info.get(k) for k in keep}
    resources = (manifest.get("spec") or {}).get("resources")
    if isinstance(resources, dict):  # trials pin torch to their CPUs (harness.trial)
        out["determinism"] = {
            "trial_threads": max(1, int(resources.get("cpu", 1))),
            "assets_threads": info.get("threads") if info else None,
        }
    return out


def read_manifest_file(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` ({} if absent); `DamagedStoreError` naming it if unreadable."""
    path = Path(sweep_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedStoreError(
            f"{path}: not readable JSON ({err}); `mage-harness store rebuild "
            f"{Path(sweep_dir)}` rewrites it from spec.yaml and trials/"
        ) from None
    if not isinstance(data, dict):
        raise DamagedStoreError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_spec(sweep_dir: str | Path) -> Any:
    """The parsed ``spec.yaml`` of a sweep folder; `DamagedStoreError` if unreadable."""
    path = Path(sweep_dir) / "spec.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise DamagedStoreError(
            f"{path}: not readable YAML ({type(err).__name__}); it is the sweep's spec: "
            "restore it from the spec file the sweep was started with"
        ) from None


def update_manifest(sweep_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Merge top-level sections into manifest.json (atomically); returns the new manifest."""
    manifest = read_manifest(sweep_dir)
    manifest.update(sections)
    atomic_write_json(Path(sweep_dir) / "manifest.json", manifest)
    return manifest


def _finite(value: float) -> float:
    return value if isinstance(value, int | float) and math.isfinite(value) else 0.0


def manifest_trial_sections(records: list[TrialRecord]) -> dict[str, Any]:
    """Per-trial configs, hours, totals, dataset records and early-stopping savings."""
    ok = [r for r in records if r.status == "ok" and r.steps]
    stopped = [r for r in records if r.status == "stopped"]
    saved_cpu = saved_gpu = saved_steps = 0.0
    for r in stopped:
        # what the remaining steps would have cost at this trial's own rate
        frac = (r.planned_steps - r.steps) / r.steps if r.steps else 0.0
        saved_steps += max(0, r.planned_steps - r.steps)
        saved_cpu += _finite(r.cpu_hours) * max(frac, 0.0)
        saved_gpu += _finite(r.gpu_hours) * max(frac, 0.0)
    datasets: dict[str, Any] = {}
    for r in ok:
        for key, value in (r.eval_record.get("datasets") or {}).items():
            datasets.setdefault(key, value)
    return {
        "trial_configs": {r.trial_id: r.config for r in records},
        "trial_hours": {
            r.trial_id: {"wall_s": r.wall_s, "cpu_hours": r.cpu_hours, "gpu_hours": r.gpu_hours}
            for r in records
        },
        "totals": {
            "trials": len(records),
            **{s: sum(r.status == s for r in records) for s in STATUSES},
            "cpu_hours": sum(_finite(r.cpu_hours) for r in records),
            "gpu_hours": sum(_finite(r.gpu_hours) for r in records),
            "trial_wall_s": sum(_finite(r.wall_s) for r in records),
        },
        "early_stopping": {
            "stopped_trials": len(stopped),
            "steps_saved": int(saved_steps),
            "est_cpu_hours_saved": saved_cpu,
            "est_gpu_hours_saved": saved_gpu,
            "basis": "each stopped trial's own hours per step times the steps it did not run",
        },
        "eval_record": ok[0].eval_record if ok else {},
        "datasets": datasets,
    }


def _cpu_model() -> str | None:
    """The CPU's model name (float results may differ between instruction sets)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def provenance() -> dict[str, Any]:
    """Code revision, package versions and hardware of the machine running the driver."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    repo = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = None
    packages = {}
    for name in (
        "mage-harness",
        "torch",
        "transformers",
        "open_clip_torch",
        "lmms_eval",
        "ray",
        "optuna",
        "pandas",
        "pyarrow",
        "datasets",
        "pydantic",
        "numpy",
    ):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    torch = sys.modules.get("torch")  # only if loaded: the driver does not need torch
    if torch is not None and torch.cuda.is_available():
        hardware["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"code_revision": revision, "packages": packages, "hardware": hardware}
