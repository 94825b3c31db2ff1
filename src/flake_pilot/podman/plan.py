"""What podman-pilot needs from a registration, cached so a launch imports no YAML.

Parsing YAML costs ~40 ms of imports (PyYAML, re, dataclasses), more than the launcher's whole
budget. The first launch parses the registration (flakeconf, settings) and stores the result
with marshal in ``$XDG_CACHE_HOME/flake-pilot/plans/`` (default ``~/.cache``, 0700, owned by
the caller, symlinks refused). A later launch uses it only if every file it was built from
(generic configs, ``<app>.yaml`` of both scopes, the ``.d`` dirs and each drop-in) has the same
inode, size and mtime/ctime; any mismatch, or any doubt, means parsing again.
"""

from __future__ import annotations

import marshal
import os
import stat

from .. import debug

FORMAT = 1
Stamp = tuple[int, int, int, int, int] | None


class Plan:
    """The launch-relevant part of a flake registration (read-only after construction)."""

    __slots__ = ("app", "config_file", "image", "target", "resume", "attach", "opts", "user_mode",
                 "user_scope", "ids_dir", "storage_conf", "podman", "compose")

    def __init__(self, d: dict[str, object]) -> None:
        for key in self.__slots__:
            object.__setattr__(self, key, d[key])

    app: str
    config_file: str
    image: str
    target: str
    resume: bool
    attach: bool
    opts: tuple[str, ...]
    user_mode: bool  # runas != root: the caller's own (rootless) podman
    user_scope: bool  # found in the caller's user registrations
    ids_dir: str
    storage_conf: str | None
    podman: str
    compose: bool  # delta/includes: compose.ensure_image decides the image

    def as_dict(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.__slots__}


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev)


def _key(app: str) -> tuple[object, ...]:
    from .. import __version__  # an upgrade may parse differently: never reuse an older plan

    env = os.environ
    return (FORMAT, __version__, app, os.getuid(), env.get("FLAKES_CONFIG", ""),
            env.get("XDG_CONFIG_HOME", ""), env.get("HOME", ""))


def _cache_dir() -> str | None:
    home = os.environ.get("HOME") or "/nonexistent"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "flake-pilot", "plans") if base.startswith("/") else None


def _cache_file(directory: str, key: tuple[object, ...]) -> str:
    h = 0xCBF29CE484222325  # FNV-1a over the key: no hashlib import
    for byte in repr(key).encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return os.path.join(directory, f"{key[2]}-{h:016x}.plan")


def _private(directory: str, create: bool) -> bool:
    """The cache dir exists (or was created) as a real dir of ours, not writable by others."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        if not create:
            return False
        try:
            os.makedirs(os.path.dirname(directory), 0o700, exist_ok=True)  # flake-pilot/ private too
            os.makedirs(directory, 0o700, exist_ok=True)
            st = os.lstat(directory)
        except OSError:
            return False
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def cached(app: str) -> Plan | None:
    directory = _cache_dir()
    if directory is None or not _private(directory, create=False):
        return None
    key = _key(app)
    path = _cache_file(directory, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or st.st_size > 1 << 20:
            return None
        data = marshal.loads(os.read(fd, st.st_size))
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        for stamped, stamp in data["stamps"]:
            if _stamp(stamped) != stamp:
                debug.log(f"plan cache: {stamped} changed")
                return None
        return Plan(data["plan"])
    except (ValueError, EOFError, TypeError, KeyError, OSError):
        return None
    finally:
        os.close(fd)


def build(app: str) -> tuple[Plan, list[str]]:
    """Parse the registration (the slow path); returns the plan and the files it depends on."""
    from .. import flakeconf, names, settings
    from ..errors import ConfigError
    from .compose import needs_compose

    names.app_name(app)
    flake, user_scope = flakeconf.find(app)
    if not isinstance(flake, flakeconf.PodmanFlake):
        raise ConfigError(f"{flake.config_file}: {app!r} is a {flake.engine} flake, not a container flake")
    system = settings.load(False)
    cfg = settings.load(True) if (user_scope or flake.user_mode) else system
    deps = [settings.system_config_path(), settings.user_config_path()]
    flakes_dirs = [system.flakes_dir]
    try:
        flakes_dirs.append(settings.load(True).flakes_dir)
    except ConfigError:
        pass  # a broken user config does not matter for a system flake; its stamp is kept
    for flakes_dir in flakes_dirs:
        config = flakeconf.config_path(flakes_dir, app)
        deps += [config, config[: -len(".yaml")] + ".d", *flakeconf.dropin_files(config)]
    plan = Plan({
        "app": app, "config_file": flake.config_file, "image": flake.image,
        "target": flake.target_app_path, "resume": flake.resume, "attach": flake.attach,
        "opts": tuple(flake.podman_opts or ()), "user_mode": flake.user_mode, "user_scope": user_scope,
        "ids_dir": cfg.podman_ids_dir, "storage_conf": cfg.podman_storage_conf,
        "podman": cfg.podman_binary, "compose": needs_compose(flake),
    })
    return plan, deps


def store(app: str, plan: Plan, deps: list[str]) -> None:
    """Write the cache (temp file + rename); failures only cost the next launch a parse."""
    directory = _cache_dir()
    if directory is None or not _private(directory, create=True):
        return
    key = _key(app)
    path = _cache_file(directory, key)
    data = {"key": key, "stamps": [(d, _stamp(d)) for d in deps], "plan": plan.as_dict()}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, marshal.dumps(data))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        debug.log(f"plan cache not written: {exc}")
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load(app: str) -> Plan:
    plan = cached(app)
    if plan is not None:
        return plan
    plan, deps = build(app)
    store(app, plan, deps)
    return plan
