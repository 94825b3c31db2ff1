"""Helpers shared by flake-ctl subcommands: scope (system/user) and podman invocation."""

from __future__ import annotations

import argparse
import os
import pwd
import sys

from .. import settings
from ..errors import ConfigError, UsageError
from ..settings import Settings

FORMATS = ("table", "json", "csv")


def add_user_flag(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    """``--user``; *inherited*: also accepted after a sub-subcommand without overriding the parent's."""
    parser.add_argument(
        "--user",
        action="store_true",
        default=argparse.SUPPRESS if inherited else False,
        help="act on the calling user's flakes (~/.config/flakes) instead of the system's",
    )


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output format (default: table; csv has a header line)",
    )


def user_name(uid: int | None = None) -> str:
    uid = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def user_mode(args: argparse.Namespace) -> bool:
    """Effective user mode: ``--user`` given and the caller is not root (root's flakes are system flakes)."""
    if not getattr(args, "user", False):
        return False
    if os.getuid() == 0:
        sys.stderr.write("flake-ctl: note: --user is ignored for root (root's flakes are the system flakes)\n")
        return False
    return True


def load_settings(args: argparse.Namespace) -> Settings:
    return settings.load(user_mode(args))


def podman_engine(cfg: Settings) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment overrides for every podman call of this scope.

    CONTAINERS_STORAGE_CONF selects the flake storage (``generic.podman_storage_conf``) when one
    is configured; CONTAINERS_CONF and the rest of the caller's environment pass through. No sudo.
    """
    from ..launch.runner import which

    binary = which(cfg.podman_binary)
    env: dict[str, str] = {}
    if cfg.podman_storage_conf:
        if not os.path.isfile(cfg.podman_storage_conf):
            where = cfg.source or settings.system_config_path()
            raise ConfigError(
                f"{where}: key 'generic.podman_storage_conf': {cfg.podman_storage_conf} does not exist"
                + (" (run 'flake-ctl init --user')" if cfg.user_mode else "")
            )
        env["CONTAINERS_STORAGE_CONF"] = cfg.podman_storage_conf
    return [binary], env


def require_abs(value: str, option: str) -> str:
    from ..launch.names import absolute_path

    if not value:
        raise UsageError(f"{option}: empty value")
    return absolute_path(value, option)


def image_arg(value: str, option: str) -> str:
    if not value or value.startswith("-") or any(c.isspace() or c == "\0" for c in value):
        raise UsageError(f"{option}: {value!r} is not a valid image reference")
    return value


def strip_escape(value: str) -> str:
    """Values starting with '-' are given as '\\-...'; exactly one leading backslash is removed."""
    return value[1:] if value.startswith("\\") else value
