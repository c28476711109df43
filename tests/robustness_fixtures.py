"""Builders shared by the bad-input corpus and the data-safety tests: a tiny MAGE checkpoint, a
results store with per-trial records (what a real sweep writes, scores made up by a formula),
a folder digest to prove nothing was changed, and ways to damage files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import yaml

STORE_SPEC = {
    "name": "robust",
    "base": "tiny-test",
    "axes": {"ian.depth": {"values": [0, 1]}},
    "seeds": [0, 1],
    "objective": {"benchmark": "mme", "metric": "mme_perception_score"},
    "tasks": ["mme"],
}


def save_tiny_checkpoint(path: Path) -> Path:
    """A random-init tiny-test MAGE saved with `save_pretrained` (seconds)."""
    import torch

    from mage.model import MageModel
    from mage.presets import tiny_test

    torch.manual_seed(0)
    MageModel.build(tiny_test()).save_pretrained(path)
    return path


def make_recorded_store(root: Path, spec_data: dict | None = None) -> Path:
    """A sweep folder as `run_sweep` leaves it: spec.yaml, manifest.json, one record per trial
    under trials/, and the four tables merged from them. Trial scores: 100 * depth + seed."""
    from harness import store
    from harness.plan import plan_sweep
    from harness.spec import parse_spec

    spec = parse_spec(spec_data or STORE_SPEC)
    plan = plan_sweep(spec)
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    key = spec.primary.key
    for variant in plan.variants:
        for seed in plan.seeds:
            config = plan.trial_config(variant, seed)
            value = 100.0 * config.ian.depth + seed
            record = store.TrialRecord(
                trial_id=variant.trial_id(seed),
                variant_id=variant.variant_id,
                variant_name=variant.name,
                seed=seed,
                status="ok",
                swept=plan.swept_values(config),
                config=config.to_dict(),
                steps=8,
                planned_steps=8,
                objectives={key: value},
            )
            row = {"benchmark": "mme", "metric": "mme_perception_score", "category": "all"}
            scores = pd.DataFrame([{**row, "value": value, "n": 8}])
            store.write_trial(root, record, scores=scores)
    store.consolidate(root, spec.name, plan.swept_fields)
    variants = [{"name": v.name, "variant_id": v.variant_id, "kind": v.kind} for v in plan.variants]
    store.update_manifest(
        root,
        spec=spec.to_dict(),
        plan={
            "num_trials": plan.num_trials,
            "seeds": plan.seeds,
            "swept_fields": plan.swept_fields,
            "variants": variants,
        },
        sessions=[{"kind": "sweep", "wall_s": 1.0}],
    )
    return root


def digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``root`` (folders by their files)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut ``path`` to a fraction of its bytes, as a crash mid-write or a full disk would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
