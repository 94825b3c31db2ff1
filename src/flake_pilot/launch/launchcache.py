"""The launchers' registration cache: a warm launch imports no YAML (PyYAML, re, dataclasses).

Both launchers (podman-pilot, firecracker-pilot) keep what they need from a registration (their
own "plan", a dict of plain values) in ``$XDG_CACHE_HOME/flake-pilot/plans/`` (default
``~/.cache``), written with marshal. The YAML stays the only source of truth:

- the cache dirs (``flake-pilot/`` and ``plans/``) must be real directories owned by the caller,
  mode 0700 (created so); a cache file is opened with O_NOFOLLOW and must be the caller's, 0600;
- a plan records the stamp (inode, size, mtime, ctime, device; or "missing") of every input:
  the generic configs (system and user), ``<app>.yaml`` of both scopes, the ``.d`` dirs and each
  drop-in; a launch uses the plan only if every stamp is unchanged;
- the key (format, package version, launcher kind and plan shape, app, uid, ``FLAKES_CONFIG``,
  ``XDG_CONFIG_HOME``, ``HOME``) must match exactly;
- file times are coarse (a same-size rewrite within one clock tick keeps the stamp), so for an
  input modified (mtime or ctime) less than a second before the plan was stored, the plan also
  records a digest of its content (CRC-32 and length; a directory: its sorted listing) taken
  before the parse, and a launch compares it too (as git re-checks "racily clean" entries); the
  first launch that finds every input more than a second old stores the plan again, so later
  launches trust the stamps alone.

Any mismatch, unreadable or odd file, or any doubt means parsing again. Imports only the stdlib
modules a launcher has loaded anyway (posix via fastos, marshal); the slow path imports settings/flakeconf.
"""

import marshal
from time import time_ns

from . import debug, fastos

FORMAT = 3
RACY_NS = 1_000_000_000
MAX_SIZE = 1 << 20
Stamp = tuple[int, int, int, int, int] | None
Digest = tuple[int, int] | None
Entry = tuple[str, Stamp, Digest]


def stamp(path: str) -> Stamp:
    try:
        st = fastos.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev)


def digest(path: str) -> Digest:
    """(length, CRC-32) of a file's content or a directory's sorted listing; None if unreadable."""
    import zlib

    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SIZE)
    except IsADirectoryError:
        try:
            data = "\0".join(sorted(fastos.listdir(path))).encode(errors="surrogateescape")
        except OSError:
            return None
    except OSError:
        return None
    return (len(data), zlib.crc32(data))


def _racy(old: Stamp, stored: int) -> bool:
    return old is not None and stored - max(old[2], old[3]) < RACY_NS


def _home() -> str:
    home = fastos.environ.get("HOME")
    if home and home.startswith("/"):
        return home
    import pwd

    try:
        return pwd.getpwuid(fastos.getuid()).pw_dir
    except KeyError:
        return "/"


def cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/flake-pilot/plans`` (None when that is not an absolute path)."""
    base = fastos.environ.get("XDG_CACHE_HOME") or fastos.join(_home(), ".cache")
    return fastos.join(base, "flake-pilot", "plans") if base.startswith("/") else None


def _ours(path: str) -> bool:
    """A real directory (lstat: no symlink), owned by the caller, no group/other access."""
    try:
        st = fastos.lstat(path)
    except OSError:
        return False
    return fastos.S_ISDIR(st.st_mode) and st.st_uid == fastos.getuid() and not st.st_mode & 0o077


def _tighten(path: str) -> None:
    """An existing cache dir of ours made with a looser umask: take group/other access away."""
    try:
        st = fastos.lstat(path)
        if fastos.S_ISDIR(st.st_mode) and st.st_uid == fastos.getuid() and st.st_mode & 0o077:
            fastos.chmod(path, 0o700)
    except OSError:
        pass


def _private(directory: str, create: bool) -> bool:
    if create:
        for d in (fastos.dirname(directory), directory):
            try:
                fastos.mkdir(d, 0o700)
            except FileExistsError:
                _tighten(d)
            except OSError:
                import os

                try:
                    os.makedirs(d, 0o700, exist_ok=True)  # missing parents (~/.cache)
                except OSError:
                    return False
    return _ours(fastos.dirname(directory)) and _ours(directory)


def _key(kind: str, shape: int, app: str) -> tuple[object, ...]:
    from .. import __version__  # an upgrade may parse differently: never reuse an older plan

    env = fastos.environ
    return (
        FORMAT,
        __version__,
        kind,
        shape,
        app,
        fastos.getuid(),
        env.get("FLAKES_CONFIG", ""),
        env.get("XDG_CONFIG_HOME", ""),
        env.get("HOME", ""),
        env.get("XDG_RUNTIME_DIR", ""),  # the default state dir (statedir.default_base)
    )


def fingerprint(text: str) -> str:
    """16 hex digits of FNV-1a over *text* (not for security: hashlib costs ms at launch)."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _file(directory: str, key: tuple[object, ...]) -> str:
    app = str(key[4])
    shown = app if app.isprintable() and "/" not in app and len(app) < 128 else "_"  # the hash decides
    return fastos.join(directory, f"{key[2]}-{shown}-{fingerprint(repr(key))}.plan")


def load(kind: str, shape: int, app: str) -> dict[str, object] | None:
    """The stored plan of *kind* for *app* when every input is unchanged, else None."""
    directory = cache_dir()
    if directory is None or not _private(directory, create=False):
        return None
    key = _key(kind, shape, app)
    path = _file(directory, key)
    try:
        fd = fastos.open(path, fastos.O_RDONLY | fastos.O_NOFOLLOW | fastos.O_NONBLOCK | fastos.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = fastos.fstat(fd)
        if (
            not fastos.S_ISREG(st.st_mode)
            or st.st_uid != fastos.getuid()
            or st.st_mode & 0o077
            or st.st_size > MAX_SIZE
        ):
            return None
        data = marshal.loads(fastos.read(fd, st.st_size))
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        stored = data["stored"]
        checked = time_ns()  # before the checks: what they prove holds from here on
        racy = False
        for stamped, old, dig in data["stamps"]:
            if stamp(stamped) != old:
                debug.log(f"registration cache: {stamped} changed")
                return None
            if _racy(old, stored):
                if dig is None or digest(stamped) != dig:
                    debug.log(f"registration cache: {stamped} was new when the plan was stored and differs")
                    return None  # a same-size rewrite within the clock tick keeps the stamp
                racy = True
        plan = data["plan"]
        if not isinstance(plan, dict):
            return None
        if racy and not any(_racy(old, checked) for _, old, _ in data["stamps"]):
            # the contents matched and every input is now old enough that a change would show in
            # its stamp: store the plan as of *checked*, so later launches skip the content reads
            data["stored"] = checked
            _write(path, data)
        return plan
    except (ValueError, EOFError, TypeError, KeyError, OSError):
        return None
    finally:
        fastos.close(fd)


def inputs(app: str) -> list[str]:
    """Every path a registration lookup of *app* depends on (slow path: imports settings); found
    or missing, either way its stamp is part of the plan."""
    from .. import flakeconf, settings
    from ..errors import ConfigError

    deps = [settings.system_config_path(), settings.user_config_path()]
    flakes_dirs = [settings.load(False).flakes_dir]
    try:
        flakes_dirs.append(settings.load(True).flakes_dir)
    except ConfigError:
        pass  # a broken user config does not matter for a system flake; its stamp is kept
    for flakes_dir in flakes_dirs:
        config = flakeconf.config_path(flakes_dir, app)
        deps += [config, config[: -len(".yaml")] + ".d", *flakeconf.dropin_files(config)]
    return deps


def stamps(deps: list[str]) -> list[Entry]:
    """Stamps and digests of *deps*: take them before parsing, hand them to ``store`` after."""
    return [(d, stamp(d), digest(d)) for d in deps]


def store(kind: str, shape: int, app: str, plan: dict[str, object], before: list[Entry]) -> None:
    """Record a plan parsed from inputs stamped *before* the parse (temp file + rename); not when
    an input changed meanwhile. Failures only cost a later launch a parse."""
    for path, old, _ in before:
        if stamp(path) != old:
            debug.log(f"registration cache: {path} changed while it was parsed, not cached")
            return
    directory = cache_dir()
    if directory is None or not _private(directory, create=True):
        return
    key = _key(kind, shape, app)
    _write(_file(directory, key), {"key": key, "stored": time_ns(), "stamps": before, "plan": plan})


def _write(path: str, record: dict[str, object]) -> None:
    """Replace the cache file *path* with *record* (temp file + rename); failures are only logged."""
    tmp = f"{path}.{fastos.getpid()}.tmp"
    try:
        data = marshal.dumps(record)
        flags = fastos.O_WRONLY | fastos.O_CREAT | fastos.O_EXCL | fastos.O_NOFOLLOW | fastos.O_CLOEXEC
        fd = fastos.open(tmp, flags, 0o600)
        try:
            fastos.write(fd, data)
        finally:
            fastos.close(fd)
        fastos.replace(tmp, path)
    except (OSError, ValueError) as exc:
        debug.log(f"registration cache not written: {exc}")
        try:
            fastos.unlink(tmp)
        except OSError:
            pass
