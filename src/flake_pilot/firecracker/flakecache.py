"""A cache of the parsed VM registration, so a launch need not import PyYAML (~20-30 ms here).

The YAML files stay the only source of truth. The cache (JSON, ``$XDG_CACHE_HOME/flake-pilot/``,
0700, files 0600, never through symlinks) records the identity (inode, size, mtime in ns) of every
file and directory the lookup read or found missing, and the environment that chose them; any
difference, or anything unreadable, and the registration is parsed again. Inputs changed in the
last second are not cached yet (file times are coarse; as git's "racy" index entries).
"""

from __future__ import annotations

import json
import os
import stat
import time

from .. import flakeconf, settings, statedir
from ..flakeconf import FirecrackerRuntime, Include, VmFlake

TYPE_CHECKING = False  # importing typing costs ~13 ms of launcher start; annotations only
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
_ENV = ("FLAKES_CONFIG", "XDG_CONFIG_HOME", "HOME")


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(settings.home_dir(), ".cache")
    return os.path.join(base, "flake-pilot")


def _identity(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_ino, st.st_size, st.st_mtime_ns]


def _inputs(cfg: settings.Settings, app: str, user_mode: bool) -> list[str]:
    """Every path the lookup depends on (see flakeconf.find and settings.load)."""
    paths = [settings.system_config_path()]
    scopes = [settings.load(False)] + ([cfg] if user_mode else [])
    if user_mode:
        paths.append(settings.user_config_path())
    for scope in scopes:
        flake_file = flakeconf.config_path(scope.flakes_dir, app)
        paths += [flake_file, flake_file[: -len(".yaml")] + ".d", *flakeconf.dropin_files(flake_file)]
    return paths


def _key(app: str) -> dict[str, Any]:
    return {"version": VERSION, "app": app, "uid": os.getuid(), "env": [os.environ.get(k) for k in _ENV],
            "fields": [sorted(t.__dataclass_fields__) for t in (VmFlake, FirecrackerRuntime, Include,
                                                                 settings.Settings)]}


def _file(app: str) -> str | None:
    directory = cache_dir()
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # not ours alone: do not trust it
    return statedir.check_name(directory, f"fc-{app}.json")


def load(app: str) -> tuple[VmFlake, settings.Settings] | None:
    """The cached registration and settings when every input is unchanged, else None."""
    path = _file(app)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
        if data["key"] != _key(app) or any(_identity(p[0]) != p for p in data["inputs"]):
            return None
        f = dict(data["flake"])
        fc = dict(f.pop("firecracker"))
        fc["boot_args"] = tuple(fc["boot_args"])
        inc = f.pop("include")
        flake = VmFlake(**f, include=Include(tuple(inc["tar"]), tuple(inc["path"])),
                        firecracker=FirecrackerRuntime(**fc))
        return flake, settings.Settings(**data["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(flake: VmFlake, cfg: settings.Settings, user_mode: bool) -> None:
    """Record a freshly parsed registration; failures only cost the next launch a parse."""
    import dataclasses

    directory = cache_dir()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = _file(flake.app)
        if path is None:
            return
        inputs = [_identity(p) for p in _inputs(cfg, flake.app, user_mode)]
        now = time.time_ns()
        if any(i[1] is not None and now - i[3] < 1_000_000_000 for i in inputs):
            return  # changed just now: a same-size rewrite within the clock tick could go unseen
        doc = {"key": _key(flake.app), "inputs": inputs,
               "flake": dataclasses.asdict(flake), "settings": dataclasses.asdict(cfg)}
        statedir.write_file(path, json.dumps(doc))
    except OSError:
        pass
