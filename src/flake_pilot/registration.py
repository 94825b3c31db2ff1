"""Registering and removing flakes: config file, drop-in dir and app symlink, atomically.

Order: the config is written to a temp file and renamed into place, then the symlink is
created (as a temp link renamed over the app path), last. A failure rolls back to the
previous state. A per-flakes-dir lock serialises concurrent register/remove calls.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import yamlio
from .errors import ConflictError, FlakeError, NotFoundError
from .launch import names, statedir

LAUNCHERS = ("podman-pilot", "firecracker-pilot")


def launcher_path(name: str) -> str:
    """The installed launcher: next to the running program, else on PATH."""
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    candidate = os.path.join(here, name)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    raise NotFoundError(f"{name}: launcher not installed (not next to {sys.argv[0]} nor in PATH)")


def is_flake_link(path: str, launcher: str | None = None) -> bool:
    """True if *path* is a symlink to a flake launcher (optionally a specific one)."""
    try:
        target = os.readlink(path)
    except OSError:
        return False
    base = os.path.basename(target)
    return base == launcher if launcher else base in LAUNCHERS


def config_file(flakes_dir: str, app_path: str) -> str:
    return os.path.join(flakes_dir, names.app_name(os.path.basename(app_path)) + ".yaml")


def dropin_dir(flakes_dir: str, app_path: str) -> str:
    return config_file(flakes_dir, app_path)[: -len(".yaml")] + ".d"


@contextmanager
def lock(flakes_dir: str) -> Iterator[None]:
    os.makedirs(flakes_dir, mode=0o755, exist_ok=True)
    with statedir.locked(os.path.join(flakes_dir, ".flake-ctl.lock")):
        yield


def register(
    flakes_dir: str,
    app_path: str,
    launcher: str,
    config: dict[str, Any],
    force: bool,
    check: Callable[[], None] | None = None,
) -> str:
    """Write the registration and create the symlink; returns the config path. *check* runs once
    the registration could be written (the flakes dir is usable, nothing is in the way), before
    anything is written: what it raises stops the registration."""
    names.absolute_path(app_path, "--app")
    cfg = config_file(flakes_dir, app_path)
    dropins = dropin_dir(flakes_dir, app_path)
    launcher_file = launcher_path(launcher)
    with lock(flakes_dir):
        if os.path.lexists(app_path):
            if not force:
                what = "a flake" if is_flake_link(app_path) else "a file that is not a flake"
                raise ConflictError(f"{app_path}: already exists ({what}); use --force to replace it")
            if os.path.isdir(app_path) and not os.path.islink(app_path):
                raise ConflictError(f"{app_path}: is a directory, refusing to replace it")
        if os.path.exists(cfg) and not force:
            raise ConflictError(f"{cfg}: a flake with this name is already registered; use --force to replace it")
        if check is not None:
            check()
        old_config = None
        if os.path.exists(cfg):
            with open(cfg, encoding="utf-8") as handle:
                old_config = handle.read()
        made_dropins = not os.path.isdir(dropins)
        try:
            yamlio.write_atomic(cfg, yamlio.dump(config))
            os.makedirs(dropins, mode=0o755, exist_ok=True)
            os.makedirs(os.path.dirname(app_path), exist_ok=True)
            tmp_link = os.path.join(os.path.dirname(app_path), f".{os.path.basename(app_path)}.{os.getpid()}.tmp")
            if os.path.lexists(tmp_link):
                os.unlink(tmp_link)
            os.symlink(launcher_file, tmp_link)
            os.replace(tmp_link, app_path)
        except BaseException as exc:
            if old_config is not None:
                yamlio.write_atomic(cfg, old_config)
            else:
                statedir.remove_file(cfg)
            if made_dropins:
                shutil.rmtree(dropins, ignore_errors=True)
            if isinstance(exc, OSError):
                raise FlakeError(f"{app_path}: registration failed: {exc.strerror}") from exc
            raise
    return cfg


def remove(flakes_dir: str, app_path: str, launcher: str, force: bool) -> None:
    """Remove symlink, config and drop-ins. Never deletes a file that is not a symlink."""
    names.absolute_path(app_path, "--app")
    cfg = config_file(flakes_dir, app_path)
    dropins = dropin_dir(flakes_dir, app_path)
    with lock(flakes_dir):
        link_ok = is_flake_link(app_path, launcher)
        if not force:
            if not os.path.exists(cfg):
                raise NotFoundError(f"{app_path}: not registered (no {cfg}); use --force to clean up anyway")
            if not link_ok:
                state = "missing" if not os.path.lexists(app_path) else f"not a symlink to {launcher}"
                raise ConflictError(f"{app_path}: {state}; use --force to remove the registration anyway")
        if os.path.lexists(app_path):
            if os.path.islink(app_path):
                os.unlink(app_path)
            elif force:
                raise ConflictError(f"{app_path}: is not a symlink, refusing to delete it even with --force")
        statedir.remove_file(cfg)
        shutil.rmtree(dropins, ignore_errors=True)
