"""Resume calls straight through the OCI runtime: ``runc --root ROOT exec --process SPEC CID``.

``podman exec`` starts podman (database, conmon, then the runtime) for every call: most of a
resume call's time. When an instance is created, oci_capture.py records in ``<instance>.oci``
(private, marshal) what entering it directly needs: the runtime and its state root as podman
uses them, the container's init PID with its start time, for rootless podman the process whose
user and mount namespaces to join (the container's conmon, which lives in podman's), and the
process spec ``podman exec`` itself hands to the runtime (env, user, umask, cwd, capabilities,
no_new_privs, labels). A call then needs no engine: it checks the record against the
instance (same container, same registration, same podman settings, init alive with the
recorded start time, the runtime's state present) and runs the runtime with that spec, its
arguments spliced in. Anything else is "not direct" and the caller takes podman's path.

The runtime proxies the app's stdio (pipes, or a terminal it sets up when all three streams
are one), forwards every signal it gets to the app, resizes on SIGWINCH and exits with the
app's status. Its own failures exit 255 and are logged to a memfd (``--log``): those map to
126/127 like podman's, or 125.

While a call runs, the record file is held with a shared flock (the runtime inherits the
descriptor): ``claim`` (exclusive, non-blocking) tells whether apps still run.
"""

import marshal

from .. import fastos, launchcache

FORMAT = 1
SUFFIX = ".oci"
MAX_RECORD = 1 << 20
DIRECT, PODMAN, STALE = "direct", "podman", "stale"
RUNTIME_FAILED = 255  # runc exec's status when it could not start the process
# what decides which podman (store, config) a call talks to: a change means podman's path
ENGINE_VARS = (
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_CONF_OVERRIDE",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
)
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {34: '\\"', 92: "\\\\"}


def record_path(stem: str) -> str:
    return stem + SUFFIX


def engine_key(podman: str, env: "dict[str, str]") -> str:
    """Fingerprint of the podman a call would use (binary, uid, config/store variables; HOME
    only for rootless podman, whose store it locates)."""
    uid = fastos.getuid()
    values = [env.get(name, "") for name in ENGINE_VARS]
    if uid != 0:
        values.append(env.get("HOME", ""))
    return launchcache.fingerprint(repr((podman, uid, values)))


def args_json(args: "list[str]") -> str | None:
    """The app's argv as a JSON array; None if an argument is not UTF-8 (podman would replace
    such bytes; its path keeps that behaviour)."""
    parts = []
    for arg in args:
        if not arg.isascii():
            try:
                arg.encode()
            except UnicodeEncodeError:
                return None
        parts.append('"' + arg.translate(_JSON_ESCAPES) + '"')
    return "[" + ",".join(parts) + "]"


def started(pid: int) -> int:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22); -1 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return -1


def open_record(stem: str, wanted: str, key: str) -> "tuple[int, dict[str, object] | None, str]":
    """(fd, record, verdict): DIRECT (the fd holds a shared lock: keep it open while the app
    runs), PODMAN (no direct entry for this container) or STALE (absent, damaged or out of
    date: record it again)."""
    try:
        # inherited on purpose; O_NONBLOCK: a FIFO put in its place never blocks the call
        fd = fastos.open(record_path(stem), fastos.O_RDONLY | fastos.O_NOFOLLOW | fastos.O_NONBLOCK)
    except OSError:
        return -1, None, STALE
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_SH)  # before the checks: a replacement waits for us, or we see it
        st = fastos.fstat(fd)
        if not fastos.S_ISREG(st.st_mode) or st.st_uid != fastos.getuid() or st.st_size > MAX_RECORD:
            raise ValueError("not a record")
        rec = marshal.loads(fastos.read(fd, st.st_size + 1))
        verdict = check(rec, wanted, key)
    except (OSError, ValueError, EOFError, TypeError, KeyError, IndexError):
        fastos.close(fd)
        return -1, None, STALE
    if verdict != DIRECT:
        fastos.close(fd)
        return -1, rec, verdict
    return fd, rec, verdict


def check(rec: "dict[str, object]", wanted: str, key: str) -> str:
    if rec["format"] != FORMAT or rec["spec"] != wanted or rec["engine"] != key:
        return STALE
    init: tuple[int, int] = rec["init"]  # type: ignore[assignment]
    if started(init[0]) != init[1]:  # stopped, restarted, or the PID now names another process
        return STALE
    if rec["process"] is None:
        return PODMAN
    holder = rec["holder"]
    if holder is not None and started(holder[0]) != holder[1]:  # type: ignore[index]
        return STALE
    try:
        fastos.stat(f"{rec['root']}/{rec['cid']}/state.json")
    except OSError:
        return STALE
    return DIRECT


def command(rec: "dict[str, object]", args: str, tty: bool) -> "tuple[list[str], int, int]":
    """(argv, spec memfd, log memfd): the runtime entering the instance with podman's process
    spec for this call. Both memfds are inherited by the runtime (which reads the spec and
    writes its log through /proc/self/fd) and closed by it before the app starts. With a
    terminal the runtime stays the app's parent (it relays the terminal); without one it
    detaches (``-d``) and ``run_detached`` takes over."""
    size = ""
    if tty:  # the terminal's size from the start (runc only resizes it after the app started)
        try:
            columns, lines = fastos.get_terminal_size(0)
            size = f'"consoleSize":{{"height":{lines},"width":{columns}}},'
        except OSError:
            pass
    spec = f'{{"args":{args},"terminal":{"true" if tty else "false"},{size}{rec["process"]}'.encode()
    spec_fd = _memfd(spec)
    log_fd = _memfd(b"")
    argv: list[str] = []
    holder = rec["holder"]
    if holder is not None:  # rootless: podman's user and mount namespaces (those of the conmon)
        argv += [str(rec["nsenter"]), "-U", "-m", "--preserve-credentials", "-t", str(holder[0])]  # type: ignore[index]
    argv += [str(rec["runtime"]), "--root", str(rec["root"]), *rec["global"]]  # type: ignore[misc]
    argv += ["--log", f"/proc/self/fd/{log_fd}", "--log-format", "json"]
    argv += ["exec", *([] if tty else ["-d"]), "--process", f"/proc/self/fd/{spec_fd}", str(rec["cid"])]
    return argv, spec_fd, log_fd


def _memfd(data: bytes) -> int:
    fd = fastos.memfd_create("flake-pilot", 0)  # no MFD_CLOEXEC: the runtime opens it by path
    view = memoryview(data)
    while view:
        view = view[fastos.write(fd, view) :]
    return fd


def run_detached(argv: "list[str]", env: "dict[str, str]", stdin_null: bool) -> int:
    """Run ``runc exec -d`` and be the app's parent: the launcher is a child subreaper, so the
    app, the runtime's child, becomes ours when the runtime exits after starting it. The app
    reads our stdin; its stdout and stderr are pipes we relay until it exits (what it wrote is
    drained then), so a background process it leaves behind does not hold the caller's streams
    open (as with podman's conmon). Signals go to the app; returns the app's exit status
    (128+N when a signal ended it), or the runtime's when it failed (RUNTIME_FAILED)."""
    import _signal as signal
    import select

    from .. import runner
    from .proc import FORWARD, exit_code

    _subreaper()
    app = [0]
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if app[0] > 0:
            _kill(app[0], signum)
        else:
            pending.append(signum)

    out_r, out_w = fastos.pipe2(fastos.O_CLOEXEC)
    err_r, err_w = fastos.pipe2(fastos.O_CLOEXEC)
    for signum in FORWARD:
        signal.signal(signum, forward)
    try:
        try:
            runtime = runner.spawn(argv, env, new_session=True, stdin_null=stdin_null, stdio={1: out_w, 2: err_w})
        finally:
            fastos.close(out_w)
            fastos.close(err_w)
        relay = {out_r: 1, err_r: 2}
        poller = select.poll()
        for fd in relay:
            fastos.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        watched = fastos.pidfd_open(runtime)
        poller.register(watched, select.POLLIN)
        status: int | None = None
        while status is None:
            for fd, _events in poller.poll():
                if fd in relay:
                    if not _relay(fd, relay[fd], 1 << 16):
                        poller.unregister(fd)
                        del relay[fd]
                        fastos.close(fd)
                    continue
                if fd != watched:
                    continue
                poller.unregister(fd)
                fastos.close(fd)
                if app[0] == 0:  # the runtime ended: it failed, or the app is now our child
                    code = exit_code(fastos.waitpid(runtime, 0)[1])
                    children = _children()
                    if code != 0 or len(children) != 1:
                        status = code if code != 0 else 125
                        break
                    app[0] = children[0]
                    watched = fastos.pidfd_open(app[0])
                    poller.register(watched, select.POLLIN)
                    for signum in pending:
                        _kill(app[0], signum)
                else:
                    status = exit_code(fastos.waitpid(app[0], 0)[1])
                break
        for fd, target in relay.items():  # what the app wrote before it ended (not a writer's stream)
            _relay(fd, target, MAX_RECORD)
            fastos.close(fd)
        return status
    finally:
        for signum in FORWARD:
            signal.signal(signum, signal.SIG_DFL)


def _relay(source: int, target: int, limit: int) -> bool:
    """Copy what *source* holds (up to *limit*) to *target*; False at its end, or when *target*
    is gone (closing our end then gives the app SIGPIPE at its next write, like a native one)."""
    moved = 0
    while moved < limit:
        try:
            data = fastos.read(source, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        moved += len(data)
        view = memoryview(data)
        try:
            while view:
                view = view[fastos.write(target, view) :]
        except OSError:  # EPIPE (the reader went away), EBADF (a closed stream)
            return False
    return True


def _children() -> "list[int]":
    pid = fastos.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as handle:
            return [int(x) for x in handle.read().split()]
    except (OSError, ValueError):
        return []


def _kill(pid: int, signum: int) -> None:
    try:
        fastos.kill(pid, signum)
    except OSError:
        pass


def _subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants (the detached app) become our children."""
    if fastos.prctl_function()(36, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_CHILD_SUBREAPER) failed")


def outcome(code: int, log_fd: int, alive: bool) -> int:
    """The call's exit status: the app's, or for a runtime failure (255 with an error logged)
    podman's mapping: 126 not executable, 127 not found, 125 anything else (the runtime has
    printed its one line)."""
    if code != RUNTIME_FAILED:
        return code
    log = fastos.pread(log_fd, MAX_RECORD, 0)
    errors = [line.lower() for line in log.split(b"\n") if b'"level":"error"' in line]
    if not errors:
        return code  # the app's own 255
    if not alive:
        return 125  # the instance went away under the call
    if any(b"permission denied" in e or b"operation not permitted" in e for e in errors):
        return 126
    if any(b"executable file not found" in e or b"no such file or directory" in e for e in errors):
        return 127
    return 125


def claim(stem: str) -> int | None:
    """Before replacing an instance: an exclusive lock on its record (hold the fd until done;
    -1: no record), or None while a direct call still holds it (apps still run)."""
    try:
        fd = fastos.open(record_path(stem), fastos.O_RDONLY | fastos.O_NOFOLLOW | fastos.O_NONBLOCK | fastos.O_CLOEXEC)
    except OSError:
        return -1
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fastos.close(fd)
        return None
    return fd
