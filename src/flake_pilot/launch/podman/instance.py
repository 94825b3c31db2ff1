"""Instance state in ``<podman_ids_dir>/<uid>/``: ``<app>[@NAME].cid`` (first line = container
ID, written by podman), ``.pid`` (conmon's PID, written by conmon) and ``.lock``.

An instance is alive when its conmon runs: ``/proc/<pid>/cmdline`` names the container ID.
This costs no engine call and survives PID reuse. One-shot instances without ``@NAME`` get
``<app>@+<hex>`` ('+' is not allowed in instance names, so a user never collides with it);
their files are garbage collected once conmon is gone.

The file stem is injective: an '@' in the app name is written as '%' (a character no app or
instance name has), so the first '@' of a stem always separates the app from the instance, and
the flake ``a@b`` never shares state with the call ``a @b`` (nor ``a@+1`` with a one-shot ``a``).
"""

import time

from .. import fastos, launchcache, statedir

ONESHOT_MARK = "@+"
GC_GRACE_S = 60.0  # a .cid without .pid this young may belong to a launch in progress
GC_MAX = 256  # files looked at per launch


class Paths:
    __slots__ = ("stem", "cid", "pid", "lock", "spec")

    def __init__(self, directory: str, name: str) -> None:
        self.stem = statedir.check_name(directory, name)
        self.cid, self.pid, self.lock = self.stem + ".cid", self.stem + ".pid", self.stem + ".lock"
        self.spec = self.stem + ".spec"  # what a kept instance was created from (spec())


def spec(image: str, opts: tuple[str, ...] | list[str]) -> str:
    """Fingerprint of what a resume instance runs: the image and the registration's options
    (unexpanded, so a changed environment variable does not replace the instance)."""
    return launchcache.fingerprint(repr((image, tuple(opts))))


def same_spec(paths: Paths, wanted: str) -> bool:
    try:
        return statedir.read_file(paths.spec) == wanted
    except OSError:
        return False


APP_AT = "%"  # stands for '@' in the app part of a stem


def name(app: str, instance: str | None, oneshot: bool) -> str:
    app = app.replace("@", APP_AT)
    if instance is not None:
        return f"{app}@{instance}"
    if oneshot:
        return f"{app}{ONESHOT_MARK}{fastos.urandom(6).hex()}"
    return app


def app_of(stem: str) -> str:
    """The app name a state file stem (``name()``) belongs to."""
    return stem.split("@", 1)[0].replace(APP_AT, "@")


def read_cid(path: str) -> str:
    content = statedir.read_file(path) or ""
    cid = content.split("\n", 1)[0].strip()
    return cid if len(cid) == 64 and all(c in "0123456789abcdef" for c in cid) else ""


def conmon_pid(paths: Paths) -> int:
    try:
        return int(statedir.read_file(paths.pid) or 0)
    except ValueError:
        return 0


def runs(pid: int, cid: str) -> bool:
    """True if *pid* is the conmon of container *cid*."""
    if pid <= 0 or not cid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read(65536)
    except OSError:
        return False
    return b"\0" + cid.encode() + b"\0" in cmdline


def alive(paths: Paths) -> str | None:
    """The container ID if the instance runs: its conmon is alive and still has the container's
    init as a child (conmon outlives a stopped container for a moment, to clean up)."""
    cid = read_cid(paths.cid)
    pid = conmon_pid(paths)
    if not cid and pid > 0:  # a damaged cid file: the running conmon still names the container
        cid = conmon_cid(pid)
        if cid:
            statedir.write_file(paths.cid, cid + "\n")
    return cid if cid and runs(pid, cid) and container_init(pid) else None


def conmon_cid(pid: int) -> str:
    """The container ID in the command line of conmon *pid* (``-c <id>``), "" if none."""
    try:
        if fastos.stat(f"/proc/{pid}").st_uid != fastos.getuid():
            return ""  # a reused PID: someone else's conmon
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read(65536).split(b"\0")
    except OSError:
        return ""
    if not args or not args[0].endswith(b"conmon") or b"-c" not in args:
        return ""
    found = args[args.index(b"-c") + 1 :][:1]
    cid = found[0].decode("ascii", "replace") if found else ""
    return cid if len(cid) == 64 and all(c in "0123456789abcdef" for c in cid) else ""


def tighten(paths: Paths) -> None:
    """podman writes the cid file and conmon the pid file 0644; make them 0600 (never following a
    symlink). They already sit in a 0700 directory: this keeps them private if it is ever copied."""
    for path in (paths.cid, paths.pid):
        try:
            fd = fastos.open(path, fastos.O_RDONLY | fastos.O_NOFOLLOW | fastos.O_CLOEXEC)
        except OSError:
            continue
        try:
            fastos.fchmod(fd, 0o600)
        finally:
            fastos.close(fd)


def clear(paths: Paths) -> None:
    statedir.remove_file(paths.cid)
    statedir.remove_file(paths.pid)
    statedir.remove_file(paths.spec)
    statedir.remove_file(paths.stem + ".oci")  # how calls enter it through the runtime (oci.py)


def _ns_depth(pid: int) -> int:
    """How many PID namespaces deep *pid* is, seen from ours (NSpid has one entry per level)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) - 1
    except OSError:
        pass
    return 0


def container_init(conmon: int) -> int | None:
    """The container's init among conmon's children: the one in a deeper PID namespace (conmon
    also forks its exit command, ``podman container cleanup``, in ours)."""
    depth = _ns_depth(conmon)
    for child in children(conmon):
        if _ns_depth(child) > depth:
            return child
    return None


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as handle:
            return [int(x) for x in handle.read().split()]
    except (OSError, ValueError):
        return []


def gc(directory: str) -> int:
    """Remove the files of finished one-shot instances; returns how many were removed."""
    try:
        entries = fastos.listdir(directory)
    except OSError:
        return 0
    removed = 0
    now = time.time()
    for entry in entries[:GC_MAX]:
        if ONESHOT_MARK not in entry or not entry.endswith(".cid"):
            continue
        paths = Paths(directory, entry[: -len(".cid")])
        try:
            st = fastos.lstat(paths.cid)
            cid = read_cid(paths.cid)
            pid = conmon_pid(paths)
        except OSError:
            continue
        except Exception as exc:  # a planted symlink: not ours to remove
            from ...errors import SecurityError

            if isinstance(exc, SecurityError):
                continue
            raise
        if pid and runs(pid, cid):
            continue
        if pid == 0 and now - st.st_mtime < GC_GRACE_S:
            continue
        clear(paths)
        removed += 1
    return removed
