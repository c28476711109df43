"""Shared CLI helpers: `--set field.path=value` overrides parsed as YAML scalars."""

from __future__ import annotations

import argparse

import yaml


def parse_overrides(items: list[str] | None) -> dict:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--set expects field.path=value, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        dest="overrides",
        help="override a config field by dotted path, e.g. --set ian.depth=2 (repeatable)",
    )
