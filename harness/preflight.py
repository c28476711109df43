"""Inputs checked before work: what a sweep (at dry-run time too) or a `train` needs must be
there, so that a mistyped path or id fails in seconds, naming the field, not hours in.

`check_plan_inputs(plan, images=False)`: ``data_dir``; for real data, every variant's stage
data files and image roots, the prepared assets a registry entry points at, and the
benchmark folders (``eval_data_dir``, one ``save_to_disk`` folder per task, and
``tools_eval.json`` for ``tools``); for the synthetic world, that ``world.dir`` is a world
or free; the Hugging Face ids the configs would download (`mage.hub`); with ``images``
(the dry run), every training record and image (`mage.data_check`). `check_config_inputs`
does the config part for one `MageConfig` (``mage-harness train``). Problems are gathered
and raised together as one `InputError`.
"""

from __future__ import annotations

from pathlib import Path

from mage.config import ConfigError, MageConfig

MAX_SHOWN = 6  # problems named in the message; the rest are counted


class InputError(ValueError):
    """Inputs a command needs are missing or unreadable; the message names each field."""


class _Problems:
    """Problems in order, each named once: a variant repeating the base config's problem
    (``variant NAME: <the same>``) is not listed again."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._seen: set[str] = set()

    def add(self, message: str) -> None:
        key = message.split(": ", 1)[1] if message.startswith("variant ") else message
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(message)

    def run(self, check, *args, prefix: str = "") -> None:
        """Call ``check``; a project error it raises becomes a problem."""
        from harness.cli import is_project_error

        try:
            check(*args)
        except Exception as err:
            if not is_project_error(err):
                raise
            self.add(prefix + str(err).splitlines()[0])

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:MAX_SHOWN])
        more = len(self.items) - MAX_SHOWN
        raise InputError(
            f"{what}: {len(self.items)} problem(s): {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )


def _stage_sources(cfg: MageConfig, stages: list[str], problems: _Problems, prefix: str):
    out = []
    for stage in stages:
        if getattr(cfg, stage).steps == 0:
            continue
        try:
            sources = cfg.data_sources(stage)
        except ConfigError as err:
            problems.add(prefix + str(err))
            continue
        out += [(f"{stage}.data[{i}]", source) for i, source in enumerate(sources)]
    return out


def _check_sources(sources, problems: _Problems, prefix: str) -> None:
    for field, source in sources:
        path = Path(source.path)
        if not path.is_file():
            state = "is a folder" if path.is_dir() else "not found"
            problems.add(f"{prefix}{field}.path: data file {state}: {path}")
        if source.image_root and not Path(source.image_root).is_dir():
            problems.add(f"{prefix}{field}.image_root: image folder not found: {source.image_root}")


def _check_assets(cfg: MageConfig, assets_dir: Path, problems: _Problems, prefix: str) -> None:
    from mage.world.source import needs_assets

    if needs_assets(cfg) and not (assets_dir / "assets.json").is_file():
        problems.add(
            f"{prefix}assets_dir: no prepared assets in {assets_dir} (assets.json missing; "
            f"{cfg.vision.encoder} / {cfg.llm.name} are read from there); run `mage-harness "
            "prepare --out DIR` and set assets_dir (or $MAGE_ASSETS_DIR)"
        )


def check_config_inputs(cfg: MageConfig, stages: list[str], images: bool = False) -> None:
    """One config's inputs (stage data, assets, Hugging Face ids); `InputError` if missing."""
    from mage.hub import check_config_hub_ids
    from mage.registry import default_assets_dir

    problems = _Problems()
    sources = _stage_sources(cfg, stages, problems, "")
    _check_sources(sources, problems, "")
    _check_assets(cfg, Path(cfg.assets_dir or default_assets_dir()), problems, "")
    problems.run(check_config_hub_ids, cfg)
    if images and not problems.items:
        _check_images(sources, problems)
    problems.raise_if_any("inputs")


def _check_images(sources, problems: _Problems) -> None:
    from mage.data_check import read_source, unreadable_images
    from mage.records import DataError

    for field, source in sources:
        try:
            records = read_source(source, field)
        except DataError as err:
            problems.add(str(err))
            continue
        for line in unreadable_images(records):
            problems.add(line)


def _check_benchmarks(spec, eval_dir: str | None, problems: _Problems) -> None:
    from harness.eval_tasks import HUB_IDS
    from mage.hub import check_hub_id

    benches = [t for t in spec.tasks if t in HUB_IDS]
    field = "eval_data_dir" if spec.eval_data_dir else "data_dir"
    if eval_dir is None:
        for bench in benches:  # evaluate() then loads the official datasets from the Hub
            field = f"eval_data_dir is unset, so {bench} comes from the Hub:"
            problems.run(check_hub_id, HUB_IDS[bench], field, "dataset")
        return
    root = Path(eval_dir)
    if not root.is_dir():
        problems.add(f"{field}: benchmark folder not found: {root}")
        return
    for bench in benches:
        if not (root / bench / "dataset_dict.json").is_file():
            problems.add(
                f"{field}: {root / bench}: no saved benchmark there (dataset_dict.json missing); "
                "save it with datasets' save_to_disk"
            )
    if "tools" in spec.tasks and not (root / "tools_eval.json").is_file():
        problems.add(f"{field}: {root / 'tools_eval.json'} not found (needed by task 'tools')")


def check_objective_categories(spec, eval_dir: str | Path | None, problems=None) -> None:
    """A per-category objective names a category of the benchmark folder: a misspelt one
    would fail every trial after it trained. Each one that does not is added to
    ``problems`` (a `_Problems`), or, without it, raised as one `InputError` naming the
    objective and the categories there; nothing to check without a saved folder (Hub data,
    no world yet)."""
    from harness.benchmarks import categories

    found = problems if problems is not None else _Problems()
    for i, objective in enumerate(spec.objective if eval_dir is not None else []):
        if objective.category == "all":
            continue
        known = categories(eval_dir, objective.benchmark, objective.metric)
        if known is not None and objective.category not in known:
            found.add(
                f"objective[{i}] ({objective.key}): category {objective.category!r} is not in "
                f"{Path(eval_dir) / objective.benchmark}; its categories: {sorted(known)}"
            )
    if problems is None:
        found.raise_if_any(f"sweep {spec.name}: objective")


def check_plan_inputs(plan, images: bool = False) -> None:
    """Every input the sweep's trials need; `InputError` naming each missing one."""
    from mage.hub import check_config_hub_ids
    from mage.registry import default_assets_dir
    from mage.world.generate import is_world_dir

    spec, problems = plan.spec, _Problems()
    if spec.data_dir and not Path(spec.data_dir).is_dir():
        problems.add(f"data_dir: folder not found: {spec.data_dir}")
    if spec.assets_dir and spec.world is None and not Path(spec.assets_dir).is_dir():
        problems.add(f"assets_dir: folder not found: {spec.assets_dir}")
    configs = [("", plan.base)] + [(f"variant {v.name}: ", v.config) for v in plan.variants]
    seen: set[str] = set()
    if spec.world is not None:
        world = Path(spec.world.dir) if spec.world.dir else None
        if world is not None and world.exists() and not is_world_dir(world):
            if not world.is_dir() or any(world.iterdir()):
                problems.add(
                    f"world.dir: {world} exists and is not a world folder (no world.json); "
                    "give a new folder or a world written by `mage-harness data synth`"
                )
        if spec.eval_data_dir:
            _check_benchmarks(spec, spec.eval_data_dir, problems)
    else:
        sources = []
        for prefix, cfg in configs:
            found = _stage_sources(cfg, ["stage1", "stage2"], problems, prefix)
            fresh = [(f, s) for f, s in found if (f, s.path, s.image_root) not in seen]
            seen.update((f, s.path, s.image_root) for f, s in found)
            _check_sources(fresh, problems, prefix)
            sources += fresh
            _check_assets(cfg, Path(cfg.assets_dir or default_assets_dir()), problems, prefix)
        eval_dir = spec.eval_data_dir or plan.base.data_dir
        _check_benchmarks(spec, eval_dir, problems)
        problems.run(check_objective_categories, spec, eval_dir, problems)
        if images and not problems.items:
            _check_images(sources, problems)
    ids: set[tuple[str, str]] = set()
    for prefix, cfg in configs:
        problems.run(lambda c=cfg: _hub_once(c, ids, check_config_hub_ids), prefix=prefix)
    problems.raise_if_any(f"sweep {spec.name}: inputs")


def _hub_once(cfg: MageConfig, seen: set, check) -> None:
    from mage.hub import config_hub_ids

    key = tuple(sorted(config_hub_ids(cfg).items()))
    if key and key not in seen:
        seen.add(key)
        check(cfg)
