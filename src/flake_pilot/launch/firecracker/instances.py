"""VM instances and their state files in the caller's private dir ``<firecracker_ids_dir>/<uid>/``.

Per instance ``<meta>`` (``app`` or ``app@name``):

    <meta>.vmid        the firecracker PID (flake-ctl firecracker show reads it)
    <meta>.lock        flock: held while an instance is created, and for a one-shot VM's whole life;
                       removed (while held) with the instance
    sci_cmd_<meta>.sock   Firecracker's vsock UDS (+ ``_<port>`` listeners)
    <meta>.fc.log      the VMM's log and stderr
    <meta>.failed.log  the log of the last start that failed (kept and named in the error)
    <meta>.ext2        resume overlay (persistent write layer), <meta>.run.ext2 one-shot overlay
    <meta>.tap         the TAP device this launcher created (removed with the instance)
    <meta>.spec        a resume VM's registration fingerprint (``vm_spec``); every call into the
                       VM holds it flock-shared while its session runs (``join``)

An instance is running iff its PID's /proc/<pid>/comm is ``firecracker``, the process is the
caller's and its command line carries this instance's ``--id`` (so a reused PID is never taken
for our VM). Anything else is stale and is reaped (files, one-shot overlay, our TAP device).

A running resume VM whose registration changed (its ``.spec`` differs from the launch's) is
replaced by the next call that finds no other call in it (an exclusive flock on ``.spec`` is
free); while calls run in it, it is kept and used.
"""

import fcntl
import time
import zlib

from .. import debug, fastos, statedir  # fastos: os without its import cost at launch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .plan import Plan


def short_hash(text: str) -> str:
    """16 hex digits identifying *text* (not for security; zlib is already loaded, hashlib costs ms)."""
    data = text.encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


class InstancePaths:
    """The paths of instance *meta* in the private *state_dir* (a plain class: no dataclasses at launch)."""

    __slots__ = ("state_dir", "meta")

    def __init__(self, state_dir: str, meta: str) -> None:
        self.state_dir = state_dir
        self.meta = meta

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstancePaths) and (self.state_dir, self.meta) == (other.state_dir, other.meta)

    def __hash__(self) -> int:
        return hash((self.state_dir, self.meta))

    def __repr__(self) -> str:
        return f"InstancePaths(state_dir={self.state_dir!r}, meta={self.meta!r})"

    def _p(self, name: str) -> str:
        return statedir.check_name(self.state_dir, name)

    @property
    def vmid(self) -> str:
        return self._p(self.meta + ".vmid")

    @property
    def lock(self) -> str:
        return self._p(self.meta + ".lock")

    @property
    def sock(self) -> str:
        return self._p(f"sci_cmd_{self.meta}.sock")

    @property
    def log(self) -> str:
        return self._p(self.meta + ".fc.log")

    @property
    def failed_log(self) -> str:
        """The log of the last start that failed, kept for the user (not instance state)."""
        return self._p(self.meta + ".failed.log")

    @property
    def spec(self) -> str:
        return self._p(self.meta + ".spec")

    @property
    def tap_record(self) -> str:
        return self._p(self.meta + ".tap")

    def overlay(self, resume: bool) -> str:
        return self._p(self.meta + (".ext2" if resume else ".run.ext2"))

    @property
    def fc_id(self) -> str:
        """Firecracker's ``--id`` (alphanumeric and '-'): unique per state dir and instance."""
        return f"flake-{short_hash(self.state_dir + chr(0) + self.meta)}"


def read_pid(paths: InstancePaths) -> int | None:
    text = statedir.read_file(paths.vmid)
    if text is None:
        return None
    try:
        pid = int(text)
    except ValueError:
        return 0  # garbage or a placeholder: not running
    return pid if pid > 0 else 0


def is_vmm(comm: bytes) -> bool:
    """A process name (/proc/PID/comm) of a VM monitor firecracker-pilot starts."""
    return comm == b"firecracker" or comm.startswith(b"qemu-system")


def is_vm(pid: int, fc_id: str, uid: "int | None" = None) -> bool:
    """The one rule for "this instance's VM runs": *pid* is a live VMM process (firecracker,
    qemu-system-*) of *uid* (default: the caller) whose command line carries *fc_id* as
    Firecracker's ``--id`` or QEMU's ``-name`` (a reused PID, another user's process or another
    instance's VM is not it). firecracker-pilot and flake-ctl both use it."""
    if pid <= 0:
        return False
    proc = f"/proc/{pid}"
    try:
        with open(f"{proc}/comm", "rb") as handle:
            if not is_vmm(handle.read().strip()):
                return False
        if fastos.stat(proc).st_uid != (fastos.getuid() if uid is None else uid):
            return False
        with open(f"{proc}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    flag = b"--id" if b"--id" in argv else b"-name"
    given = argv.index(flag) + 1 if flag in argv else 0
    return 0 < given < len(argv) and argv[given] == fc_id.encode()


def running_pid(paths: InstancePaths) -> int | None:
    """The PID of this instance's live VM, or None."""
    pid = read_pid(paths)
    if pid and is_vm(pid, paths.fc_id):
        return pid
    return None


def vm_spec(flake: "Plan") -> str:
    """The fingerprint of what a VM is started from: the registration and its scope's settings,
    all but the program a call runs in it."""
    plan = flake.as_dict()
    del plan["target_app_path"]
    return short_hash(repr(plan))


def join(paths: InstancePaths, wanted: str) -> tuple[int, bool]:
    """Enter the running resume VM of *paths* (the instance lock held): (fd, replace).

    *fd*: its ``.spec``, flock-shared for this call's session (close it when the session ends);
    -1 when the VM has none (started by an older flake-pilot: used as it is). *replace*: the
    spec differs from *wanted* and no other call runs in the VM: *fd* then holds it exclusively,
    and the caller stops the VM. An exclusive flock is only taken under the instance lock, so
    the shared one never waits."""
    try:
        fd = statedir.open_file(paths.spec, fastos.O_RDONLY | fastos.O_NONBLOCK)
    except FileNotFoundError:
        return -1, False
    try:
        st = fastos.fstat(fd)
        spec = ""  # damaged: counts as changed
        if fastos.S_ISREG(st.st_mode) and st.st_size <= statedir.MAX_STATE_SIZE:
            spec = fastos.read(fd, statedir.MAX_STATE_SIZE).decode("utf-8", "replace").strip()
        if spec != wanted:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd, True
            except BlockingIOError:
                debug.log(f"registration changed, but VM {paths.meta} still runs calls: kept for now")
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        fastos.close(fd)
        raise
    return fd, False


def remove_files(paths: InstancePaths, *, overlay: bool) -> None:
    """Remove an instance's runtime files (and its one-shot overlay, TAP device if ours)."""
    dev = statedir.read_file(paths.tap_record)
    if dev:
        from ...firecracker import tap

        tap.remove(dev)
    prefix = fastos.basename(paths.sock) + "_"
    listeners = [fastos.join(paths.state_dir, n) for n in _names(paths.state_dir) if n.startswith(prefix)]
    for path in (paths.vmid, paths.spec, paths.sock, paths.tap_record, paths.log, *listeners):
        statedir.remove_file(path)
    statedir.remove_file(paths.overlay(resume=False))
    if overlay:
        statedir.remove_file(paths.overlay(resume=True))


def _still_linked(fd: int, path: str) -> bool:
    """True when the locked *fd* is still the file at *path* (``drop_lock`` unlinks lock files
    while holding them: a lock taken on the unlinked file guards nothing)."""
    try:
        st = fastos.lstat(path)
    except FileNotFoundError:
        return False
    mine = fastos.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def try_lock(path: str) -> int | None:
    """A non-blocking exclusive flock on *path*: the fd, or None when someone holds it."""
    while True:
        fd = fastos.open(path, fastos.O_RDWR | fastos.O_CREAT | fastos.O_NOFOLLOW | fastos.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fastos.close(fd)
            if isinstance(exc, BlockingIOError):  # EWOULDBLOCK: held by someone else
                return None
            raise
        if _still_linked(fd, path):
            return fd
        fastos.close(fd)  # removed by its holder meanwhile: lock the new file


def lock(path: str) -> int:
    """A blocking exclusive flock on *path* (released when the fd is closed or we die)."""
    while True:
        fd = fastos.open(path, fastos.O_RDWR | fastos.O_CREAT | fastos.O_NOFOLLOW | fastos.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _still_linked(fd, path):
            return fd
        fastos.close(fd)


def drop_lock(path: str, fd: int) -> None:
    """Remove the lock file *path* whose lock *fd* holds, then release it: waiters see the
    file gone (``_still_linked``) and lock a new one."""
    statedir.remove_file(path)
    fastos.close(fd)


def gc(state_dir: str) -> list[str]:
    """Reap every stale instance in *state_dir* whose lock is free; returns the reaped names."""
    reaped = []
    for name in _names(state_dir):
        if not name.endswith(".vmid"):
            continue
        vmid = fastos.join(state_dir, name)
        meta = name[: -len(".vmid")]
        paths = InstancePaths(state_dir, meta)
        if fastos.islink(vmid):
            statedir.remove_file(vmid)
            continue
        fd = try_lock(paths.lock)
        if fd is None:
            continue  # being created or a one-shot VM in use
        if running_pid(paths) is None:
            try:
                remove_files(paths, overlay=False)
                reaped.append(meta)
            finally:
                drop_lock(paths.lock, fd)
        else:
            fastos.close(fd)
    return reaped


def _names(directory: str) -> list[str]:
    try:
        return fastos.listdir(directory)
    except FileNotFoundError:
        return []


def kill(pid: int, fc_id: str, grace: float = 1.0) -> None:
    """Stop a VM: SIGTERM, then SIGKILL after *grace* seconds (polled, no fixed sleep)."""
    import _signal  # the C module: ``signal`` imports enum (ms at launch)

    if not is_vm(pid, fc_id):
        return
    for sig, wait in ((_signal.SIGTERM, grace), (_signal.SIGKILL, 5.0)):
        try:
            fastos.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_vm(pid, fc_id) or _zombie(pid):
                return
            time.sleep(0.005)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True
