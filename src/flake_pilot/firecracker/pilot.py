"""firecracker-pilot: run a registered app in a Firecracker microVM as if it were native.

``/usr/bin/<app>`` is a symlink to this launcher; the app name is ``basename(argv[0])``.
Caller arguments: ``@NAME`` (instance names, all joined: ``app@a@b``), ``%port:N`` (guest vsock
port of sci), ``%progress`` (spinner while the guest boots); other ``%x`` are ignored; ``@@x`` and
``%%x`` pass a literal ``@x`` / ``%x``; the rest goes to the program verbatim.

Modes (from the registration):
  one-shot, serial console   firecracker runs in the foreground, the console is the program's
                             output (fallback for images without our sci: no exit status, no
                             separate stderr)
  one-shot, force_vsock      the VM boots in the background, the session runs over vsock,
                             the VM is killed when the program ends
  resume                     the VM is kept (own session, survives the caller), every call is
                             a new session over vsock; concurrent first calls boot exactly one VM
"""

import _signal as signal  # the C module: ``signal`` imports enum (~7 ms of start-up)
import sys

# fastos, not os (~2 ms); no ``from __future__ import annotations`` (~0.5 ms): the annotations
# that name TYPE_CHECKING-only classes are quoted. flake_pilot.errors is imported where an error
# is raised or reported, not by a launch that goes well.
from .. import debug, fastos

TYPE_CHECKING = False  # importing typing costs ~13 ms of launcher start
if TYPE_CHECKING:
    from socket import socket

    from .instances import InstancePaths
    from .plan import Plan

DEFAULT_PORT = 52  # sci's session port in the guest
SUN_PATH_MAX = 107  # bytes in a Unix socket path


def boot_timeout() -> float:
    """Seconds the guest has to answer on vsock (``PILOT_BOOT_TIMEOUT``, default 60)."""
    text = fastos.environ.get("PILOT_BOOT_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        from ..errors import UsageError

        raise UsageError(f"PILOT_BOOT_TIMEOUT={text!r}: expected seconds from 0 to 3600")
    return value


class CallArgs:
    __slots__ = ("meta", "args", "port", "progress")

    def __init__(self, meta: str, args: list[str], port: int, progress: bool) -> None:
        self.meta, self.args, self.port, self.progress = meta, args, port, progress

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallArgs) and (self.meta, self.args, self.port, self.progress) == (
            other.meta,
            other.args,
            other.port,
            other.progress,
        )

    def __repr__(self) -> str:
        return f"CallArgs({self.meta!r}, {self.args!r}, {self.port!r}, {self.progress!r})"


class Interrupted(Exception):
    """SIGTERM/SIGHUP/SIGINT while the launcher works: unwind, clean up, exit 128+N."""

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


def parse_args(app: str, argv: list[str]) -> CallArgs:
    """Caller arguments (``flake_pilot.callargs``) with firecracker-pilot's option set."""
    from ..callargs import FIRECRACKER_OPTIONS, split
    from ..names import instance_name

    caller = split(argv, FIRECRACKER_OPTIONS, instance_name, strict=False)
    port = DEFAULT_PORT
    if "port" in caller.options:
        value = caller.options["port"]
        if not value.isdigit() or not 0 < int(value) < 2**32:
            from ..errors import UsageError

            raise UsageError(f"%port:{value}: expected a vsock port number")
        port = int(value)
    meta = "@".join([app, *caller.instances])
    if len(meta) > 255 - len("sci_cmd_.sock_4294967295"):
        from ..errors import UsageError

        raise UsageError(f"instance name {meta!r} is too long")
    return CallArgs(meta, caller.app_args, port, "progress" in caller.options)


def _raise_interrupted(signo: int, _frame: object) -> None:
    raise Interrupted(signo)


def _prctl() -> object:
    """A callable ``prctl(option, arg2, ...)`` (libc's), through ``_ctypes`` where it can: the C
    module loads in <1 ms, the ``ctypes`` package in ~3 ms."""
    try:
        import _ctypes

        libc = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]  # None: the process
        addr = _ctypes.dlsym(libc, "prctl")
        call = _ctypes.call_function

        def prctl(*args: int) -> int:
            result: int = call(addr, args)
            return result

        return prctl
    except (ImportError, AttributeError, OSError):  # pragma: no cover - another Python
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl


def _start(argv: list[str], *, console: bool, log_fd: int, config_fd: int, keep: bool) -> int:
    """fork + exec firecracker (cheaper to import than subprocess); the child's PID.

    *console*: the VM's serial console is the caller's stdin/stdout, else /dev/null.
    *keep*: a resume VM in its own session (outlives the caller's terminal); otherwise the VM
    gets PR_SET_PDEATHSIG, so it dies with the launcher, even when that is SIGKILLed.
    """
    debug_console = debug.enabled()
    prctl = None if keep else _prctl()
    parent = fastos.getpid()
    err_r, err_w = fastos.pipe2(fastos.O_CLOEXEC)
    pid = fastos.fork()
    if pid == 0:  # child: only async-signal-safe work until exec
        code = 1
        try:
            fastos.close(err_r)
            if prctl is not None:
                prctl(1, signal.SIGKILL, 0, 0, 0)  # type: ignore[operator]  # PR_SET_PDEATHSIG
                if fastos.getppid() != parent:  # the launcher died before prctl took effect
                    fastos._exit(1)
            else:
                fastos.setsid()
            if not console:
                null = fastos.open(fastos.devnull, fastos.O_RDWR)
                fastos.dup2(null, 0)
                fastos.dup2(log_fd if debug_console else null, 1)  # PILOT_DEBUG: guest console in the log
            fastos.dup2(log_fd, 2)
            fastos.set_inheritable(config_fd, True)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; exec would keep that
            fastos.execv(argv[0], argv)
        except OSError as exc:
            fastos.write(err_w, (exc.strerror or "exec failed").encode())
            code = 127
        finally:
            fastos._exit(code)
    fastos.close(err_w)
    try:
        failure = fastos.read(err_r, 512)
    finally:
        fastos.close(err_r)
    if failure:
        from ..errors import EngineError

        fastos.waitpid(pid, 0)
        raise EngineError(f"{argv[0]}: cannot start: {failure.decode(errors='replace')}")
    return pid


def spawn(paths: "InstancePaths", doc: dict[str, object], *, serial: bool, keep: bool, binary: str) -> int:
    """Start firecracker with *doc* through a pipe; record its PID in the instance file."""
    from .. import statedir
    from .vmdef import dumps

    fc = find_binary(binary)
    data = dumps(doc).encode()
    debug.log(f"vm definition: {data.decode()}")
    r, w = fastos.pipe()
    try:
        fastos.write(w, data)  # ~1 KiB: fits the pipe buffer, firecracker reads it at start
    finally:
        fastos.close(w)
    statedir.remove_file(paths.sock)  # firecracker refuses an existing UDS path
    # O_APPEND: firecracker writes its own log to the same file
    flags = fastos.O_WRONLY | fastos.O_CREAT | fastos.O_TRUNC | fastos.O_APPEND | fastos.O_NOFOLLOW | fastos.O_CLOEXEC
    log_fd = fastos.open(paths.log, flags, 0o600)
    argv = [
        fc,
        "--no-api",
        "--id",
        paths.fc_id,
        "--config-file",
        f"/dev/fd/{r}",
        "--log-path",
        paths.log,
        "--level",
        "Warning",
    ]
    debug.log("+ " + " ".join(argv))
    try:
        pid = _start(argv, console=serial, log_fd=log_fd, config_fd=r, keep=keep)
    finally:
        fastos.close(r)
        fastos.close(log_fd)
    statedir.write_file(paths.vmid, str(pid))
    debug.log(f"started firecracker pid {pid} for {paths.meta}")
    return pid


def find_binary(binary: str) -> str:
    """*binary* if it is a path, else the first executable on PATH (``fastos.which``). Its name must
    be ``firecracker``: that is how a running instance is recognised (/proc/PID/comm), here and by
    ``flake-ctl firecracker show``."""
    if fastos.basename(binary) != "firecracker":
        from ..errors import EngineError

        raise EngineError(
            f"{binary}: the Firecracker binary must be named 'firecracker' (a symlink of that "
            "name will do), instances are recognised by it"
        )
    path = fastos.which(binary)
    if path is not None:
        return path
    from ..errors import EngineError

    where = "" if "/" in binary else f" in PATH ({fastos.environ.get('PATH', '')})"
    raise EngineError(f"{binary}: not found{where}; install Firecracker or set generic.firecracker_binary")


def reap(pid: int) -> int:
    """Wait for our firecracker child: shell-style status (128+N when killed by signal N)."""
    _, status = fastos.waitpid(pid, 0)
    code = fastos.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def log_reason(paths: "InstancePaths") -> str:
    """The telling line of firecracker's log, for error messages."""
    try:
        with open(paths.log, "rb") as handle:
            lines = handle.read()[-8192:].decode(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in lines:
        if "rror" in line and "exiting with error" not in line:
            # "RunWithoutApiError error: Failed to build ...: ... failed: <the cause>"
            return line.split("] ", 1)[-1].rsplit("failed: ", 1)[-1].strip()[:300]
    return lines[-1].split("] ", 1)[-1][:300] if lines else "no log output"


def prepare(flake: "Plan", paths: "InstancePaths", uid: int, resume: bool) -> tuple[str | None, str | None]:
    """Overlay and TAP device for a new VM: (overlay path, tap name)."""
    from . import vmdef

    ov = None
    if flake.firecracker.overlay_size:
        from ..sizes import parse_size
        from . import overlay

        ov = paths.overlay(resume)
        if not (resume and overlay.usable(ov)):
            overlay.create(ov, parse_size(flake.firecracker.overlay_size), flake.include, flake.config_file)
    dev = None
    if vmdef.wants_network(flake):
        from .. import statedir
        from . import tap

        dev = tap.name(paths.meta)
        if tap.ensure(dev, uid):
            statedir.write_file(paths.tap_record, dev)
    return ov, dev


def build(
    flake: "Plan", paths: "InstancePaths", call: CallArgs, ov: str | None, dev: str | None, uid: int
) -> dict[str, object]:
    from . import vmdef

    try:
        size = fastos.get_terminal_size(0)
        winsize = (size.lines, size.columns)
    except OSError:
        winsize = (0, 0)
    inst = vmdef.Instance(call.meta, paths.sock, ov, dev, vmdef.guest_mac(uid, call.meta))
    cmdline = vmdef.boot_args(
        flake,
        call.args,
        overlay=ov is not None,
        debug=debug.enabled(),
        term=fastos.environ.get("TERM"),
        winsize=winsize,
    )
    return vmdef.config(flake, inst, cmdline)


def connect(paths: "InstancePaths", pid: int, port: int, progress: bool) -> "socket":
    """Wait for sci to answer on vsock *port* while the VM is alive; the connected socket."""
    import time

    from ..errors import EngineError
    from ..protocol import ProtocolError, connect_firecracker_vsock
    from .instances import is_vm

    limit = boot_timeout()
    deadline = time.monotonic() + limit
    spin = None
    if progress:
        from ..progress import spinner

        spin = spinner(f"starting {paths.meta}")
        spin.__enter__()
    try:
        while True:
            try:
                return connect_firecracker_vsock(paths.sock, port, timeout=0.5)
            except ProtocolError as exc:
                if not is_vm(pid, paths.fc_id):
                    reason = log_reason(paths)
                    raise EngineError(f"VM {paths.meta} ended before its guest answered: {reason}") from exc
                if time.monotonic() >= deadline:
                    raise EngineError(
                        f"VM {paths.meta}: no answer from sci on vsock port {port} within {limit:g} s "
                        f"(socket {paths.sock}; does the image run sci with run=vsock?)"
                    ) from exc
    finally:
        if spin is not None:
            spin.__exit__(None, None, None)


def session(flake: "Plan", call: CallArgs, sock: "socket") -> int:
    from ..protocol import Request, run_session, terminal_size

    tty = fastos.isatty(0)
    rows, cols = terminal_size(0) if tty else (0, 0)
    env = {"TERM": fastos.environ["TERM"]} if tty and fastos.environ.get("TERM") else {}
    req = Request([flake.target_app_path, *call.args], env=env, tty=tty, rows=rows, cols=cols)
    try:
        return run_session(sock, req, 0, 1, 2)
    finally:
        sock.close()


def run_oneshot(flake: "Plan", call: CallArgs, paths: "InstancePaths", uid: int, binary: str) -> int:
    from . import instances

    lock_fd = instances.try_lock(paths.lock)
    if lock_fd is None:
        from ..errors import ConflictError

        raise ConflictError(f"instance {call.meta} is in use by another call; start another one with @NAME")
    pid = None
    waited = False
    tty_mode = None
    if not flake.force_vsock and fastos.isatty(0):
        import termios  # firecracker makes the console terminal raw and leaves it so when killed

        tty_mode = termios.tcgetattr(0)
    try:
        running = instances.running_pid(paths)
        if running:
            from ..errors import ConflictError

            raise ConflictError(f"instance {call.meta} runs as VM pid {running}; use @NAME or stop it")
        instances.remove_files(paths, overlay=False)
        ov, dev = prepare(flake, paths, uid, resume=False)
        serial = not flake.force_vsock
        doc = build(flake, paths, call, ov, dev, uid)
        pid = spawn(paths, doc, serial=serial, keep=False, binary=binary)
        if serial:
            code = _wait_serial(pid)
            waited = True
            if code > 0 and code < 128:
                from ..errors import EngineError

                raise EngineError(f"firecracker exited with {code}: {log_reason(paths)}")
            return code
        return session(flake, call, connect(paths, pid, call.port, call.progress))
    finally:
        if pid is not None and not waited:
            instances.kill(pid, paths.fc_id, grace=0.2)
            reap(pid)
        instances.remove_files(paths, overlay=False)
        fastos.close(lock_fd)
        if tty_mode is not None:
            termios.tcsetattr(0, termios.TCSANOW, tty_mode)


def _wait_serial(pid: int) -> int:
    """Wait for the foreground VM; signals to the launcher are passed on to firecracker."""

    def forward(signo: int, _frame: object) -> None:
        fastos.kill(pid, signo)

    for signo in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, forward)
    return reap(pid)


def run_resume(flake: "Plan", call: CallArgs, paths: "InstancePaths", uid: int, binary: str) -> int:
    from . import instances

    lock_fd = instances.lock(paths.lock)
    started = False
    try:
        pid = instances.running_pid(paths)
        if pid is None:
            instances.remove_files(paths, overlay=False)
            ov, dev = prepare(flake, paths, uid, resume=True)
            doc = build(flake, paths, call, ov, dev, uid)
            pid, started = spawn(paths, doc, serial=False, keep=True, binary=binary), True
        else:
            debug.log(f"reusing VM pid {pid} for {call.meta}")
    finally:
        fastos.close(lock_fd)  # not held across sessions: concurrent calls share the VM
    try:
        sock = connect(paths, pid, call.port, call.progress)
    except BaseException:
        if started:  # the VM we booted never answered: do not leave a broken VM behind
            with_lock = instances.try_lock(paths.lock)
            if with_lock is not None:
                debug.log(f"removing VM pid {pid}: it never answered")
                instances.kill(pid, paths.fc_id, grace=0.2)
                try:
                    reap(pid)  # our child: gone for good once reaped (kill returns once it stops being a VM)
                except ChildProcessError:
                    pass
                instances.remove_files(paths, overlay=False)
                fastos.close(with_lock)
                debug.log(f"VM pid {pid} removed")
            else:
                debug.log(f"VM pid {pid} never answered; another call holds {paths.lock}: left to it")
        raise
    return session(flake, call, sock)


def launch(app: str, argv: list[str]) -> int:
    from .. import statedir
    from . import instances, plan

    call = parse_args(app, argv)
    with debug.phase("plan"):
        flake = plan.load(app)  # warm: the registration cache, no YAML
    state_dir = statedir.private_dir(flake.ids_dir)
    uid = fastos.getuid()
    paths = instances.InstancePaths(state_dir, call.meta)
    if len(fastos.fsencode(paths.sock)) + len(f"_{call.port}") > SUN_PATH_MAX:
        from ..errors import UsageError

        raise UsageError(
            f"{paths.sock}_{call.port}: longer than a Unix socket path may be; "
            "use a shorter @NAME or firecracker_ids_dir"
        )
    reaped = instances.gc(state_dir)
    if reaped:
        debug.log(f"reaped stale instances: {', '.join(reaped)}")
    if flake.resume:
        return run_resume(flake, call, paths, uid, flake.binary)
    return run_oneshot(flake, call, paths, uid, flake.binary)


def main(argv: list[str] | None = None) -> None:
    argv_given = argv is not None
    argv = list(sys.argv if argv is None else argv)
    app = fastos.basename(argv[0]) if argv else "firecracker-pilot"
    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _raise_interrupted)
    try:
        if app in ("firecracker-pilot", "") or app.endswith(".py"):
            from ..errors import UsageError

            raise UsageError(
                "firecracker-pilot is started through an app symlink registered with `flake-ctl firecracker register`"
            )
        from ..names import app_name

        code = launch(app_name(app), argv[1:])
    except Interrupted as exc:
        code = 128 + exc.signo
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        from ..errors import LAUNCHER_EXIT, FlakeError

        if isinstance(exc, FlakeError):
            message = str(exc)
        elif isinstance(exc, OSError):  # a state or image file the launcher could not use
            message = f"{exc.filename}: " if exc.filename else ""
            message += str(exc.strerror or exc)
        else:
            raise  # a bug: the traceback
        if debug.enabled():
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"{app}: {message}\n")
        code = LAUNCHER_EXIT
    if argv_given:
        sys.exit(code)
    # the console script's entry: the VM is reaped and the instance cleaned up, nothing is left
    # but the interpreter's teardown (ms), so skip it, as podman-pilot does
    sys.stdout.flush()
    sys.stderr.flush()
    fastos._exit(code)
