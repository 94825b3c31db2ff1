"""flake-ctl list: the registrations of one scope."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import ConfigError, FlakeError
from .common import add_format_flag, add_user_flag, load_settings
from .output import Column, emit

COLUMNS = (
    Column("name", "NAME"),
    Column("engine", "ENGINE"),
    Column("target", "TARGET APP PATH"),
    Column("host_app_path", "HOST APP PATH"),
    Column("config", "CONFIG"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = subparsers.add_parser(
        "list",
        help="list registered flakes",
        description="List the registered flakes of one scope (system, or --user).",
    )
    add_user_flag(p)
    add_format_flag(p)
    p.set_defaults(func=cmd_list)


def registrations(flakes_dir: str) -> list[tuple[str, str]]:
    """(app name, config path) of every ``<flakes_dir>/<app>.yaml``, sorted; dots in names are kept."""
    try:
        entries = os.listdir(flakes_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{flakes_dir}: cannot list registrations: {exc.strerror}") from exc
    found = []
    for entry in sorted(entries):
        path = os.path.join(flakes_dir, entry)
        if entry.endswith(".yaml") and not entry.startswith(".") and os.path.isfile(path):
            found.append((entry[: -len(".yaml")], path))
    return found


def collect(flakes_dir: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Records for every registration plus one error line per broken one (still listed, engine unknown)."""
    from .. import flakeconf

    records: list[dict[str, Any]] = []
    errors: list[str] = []
    for name, path in registrations(flakes_dir):
        try:
            flake = flakeconf.parse(name, path)
        except FlakeError as exc:
            errors.append(str(exc))
            records.append({"name": name, "engine": None, "target": None, "host_app_path": None, "config": path})
            continue
        records.append(
            {
                "name": name,
                "engine": flake.engine,
                "target": flake.target_app_path,
                "host_app_path": flake.host_app_path,
                "config": path,
            }
        )
    return records, errors


def cmd_list(args: argparse.Namespace) -> int:
    cfg = load_settings(args)
    records, errors = collect(cfg.flakes_dir)
    emit(
        records,
        COLUMNS,
        args.format,
        f"Flake applications registered in {cfg.flakes_dir}",
        "No application(s) registered",
    )
    for line in errors:
        sys.stderr.write(f"flake-ctl: broken registration: {line}\n")
    return ConfigError.exit_code if errors else 0
