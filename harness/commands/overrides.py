"""Shared CLI helpers: `--set field.path=value` overrides parsed as YAML scalars, a preset or
config file read into a `MageConfig` with errors that name the flag or the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from mage.config import ConfigError


def parse_overrides(items: list[str] | None) -> dict:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects field.path=value, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return overrides


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        dest="overrides",
        help="override a config field by dotted path, e.g. --set ian.depth=2 (repeatable)",
    )


def preset_config(name: str, flag: str = "--preset"):
    """The `MageConfig` of a preset id; `ConfigError` naming ``flag`` if there is none."""
    from mage.presets import PRESETS, get_preset

    if name not in PRESETS:
        raise ConfigError(f"{flag} {name!r}: unknown preset; known presets: {sorted(PRESETS)}")
    return get_preset(name)


def load_config_file(path: Path):
    """`MageConfig.load`, with unreadable YAML or text reported as the file's fault."""
    from mage.config import MageConfig

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path}: is a folder; give a MageConfig YAML or JSON file")
    try:
        return MageConfig.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None
