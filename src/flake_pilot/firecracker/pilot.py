"""firecracker-pilot: run a registered app in a Firecracker microVM as if it were native.

``/usr/bin/<app>`` is a symlink to this launcher; the app name is ``basename(argv[0])``.
Caller arguments: ``@NAME`` (instance names, all joined: ``app@a@b``), ``%port:N`` (guest vsock
port of sci), ``%progress`` (spinner while the guest boots); other ``%x`` are ignored; the rest
goes to the program verbatim.

Modes (from the registration):
  one-shot, serial console   firecracker runs in the foreground, the console is the program's
                             output (fallback for images without our sci: no exit status, no
                             separate stderr)
  one-shot, force_vsock      the VM boots in the background, the session runs over vsock,
                             the VM is killed when the program ends
  resume                     the VM is kept (own session, survives the caller), every call is
                             a new session over vsock; concurrent first calls boot exactly one VM
"""

from __future__ import annotations

import _signal as signal  # the C module: ``signal`` imports enum (~7 ms of start-up)
import os
import sys

from .. import debug
from ..errors import LAUNCHER_EXIT, ConflictError, EngineError, FlakeError, UsageError

TYPE_CHECKING = False  # importing typing costs ~13 ms of launcher start
if TYPE_CHECKING:
    from socket import socket

    from .instances import InstancePaths
    from .plan import Plan

DEFAULT_PORT = 52  # sci's session port in the guest
SUN_PATH_MAX = 107  # bytes in a Unix socket path


def boot_timeout() -> float:
    """Seconds the guest has to answer on vsock (``PILOT_BOOT_TIMEOUT``, default 60)."""
    text = os.environ.get("PILOT_BOOT_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise UsageError(f"PILOT_BOOT_TIMEOUT={text!r}: expected seconds from 0 to 3600")
    return value


class CallArgs:
    __slots__ = ("meta", "args", "port", "progress")

    def __init__(self, meta: str, args: list[str], port: int, progress: bool) -> None:
        self.meta, self.args, self.port, self.progress = meta, args, port, progress

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallArgs) and (self.meta, self.args, self.port, self.progress) == (
            other.meta, other.args, other.port, other.progress)

    def __repr__(self) -> str:
        return f"CallArgs({self.meta!r}, {self.args!r}, {self.port!r}, {self.progress!r})"


class Interrupted(Exception):
    """SIGTERM/SIGHUP/SIGINT while the launcher works: unwind, clean up, exit 128+N."""

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


def parse_args(app: str, argv: list[str]) -> CallArgs:
    from ..names import instance_name

    names: list[str] = []
    args: list[str] = []
    port, progress = DEFAULT_PORT, False
    for arg in argv:
        if arg.startswith("@"):
            names.append(instance_name(arg[1:]))
        elif arg.startswith("%"):
            key, _, value = arg[1:].rpartition(":") if ":" in arg else (arg[1:], "", "")
            if key == "port":
                if not value.isdigit() or not 0 < int(value) < 2**32:
                    raise UsageError(f"%port:{value}: expected a vsock port number")
                port = int(value)
            elif key == "progress":
                progress = True
        else:
            args.append(arg)
    meta = "@".join([app, *names])
    if len(meta) > 255 - len("sci_cmd_.sock_4294967295"):
        raise UsageError(f"instance name {meta!r} is too long")
    return CallArgs(meta, args, port, progress)


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
    parent = os.getpid()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe work until exec
        code = 1
        try:
            os.close(err_r)
            if prctl is not None:
                prctl(1, signal.SIGKILL, 0, 0, 0)  # type: ignore[operator]  # PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the launcher died before prctl took effect
                    os._exit(1)
            else:
                os.setsid()
            if not console:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(log_fd if debug_console else null, 1)  # PILOT_DEBUG: guest console in the log
            os.dup2(log_fd, 2)
            os.set_inheritable(config_fd, True)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; exec would keep that
            os.execv(argv[0], argv)
        except OSError as exc:
            os.write(err_w, (exc.strerror or "exec failed").encode())
            code = 127
        finally:
            os._exit(code)
    os.close(err_w)
    try:
        failure = os.read(err_r, 512)
    finally:
        os.close(err_r)
    if failure:
        os.waitpid(pid, 0)
        raise EngineError(f"{argv[0]}: cannot start: {failure.decode(errors='replace')}")
    return pid


def spawn(paths: InstancePaths, doc: dict[str, object], *, serial: bool, keep: bool, binary: str) -> int:
    """Start firecracker with *doc* through a pipe; record its PID in the instance file."""
    from .. import statedir
    from .vmdef import dumps

    fc = find_binary(binary)
    data = dumps(doc).encode()
    debug.log(f"vm definition: {data.decode()}")
    r, w = os.pipe()
    try:
        os.write(w, data)  # ~1 KiB: fits the pipe buffer, firecracker reads it at start
    finally:
        os.close(w)
    statedir.remove_file(paths.sock)  # firecracker refuses an existing UDS path
    # O_APPEND: firecracker writes its own log to the same file
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    log_fd = os.open(paths.log, flags, 0o600)
    argv = [fc, "--no-api", "--id", paths.fc_id, "--config-file", f"/dev/fd/{r}",
            "--log-path", paths.log, "--level", "Warning"]
    debug.log("+ " + " ".join(argv))
    try:
        pid = _start(argv, console=serial, log_fd=log_fd, config_fd=r, keep=keep)
    finally:
        os.close(r)
        os.close(log_fd)
    statedir.write_file(paths.vmid, str(pid))
    debug.log(f"started firecracker pid {pid} for {paths.meta}")
    return pid


def find_binary(binary: str) -> str:
    """*binary* if it is a path, else the first executable on PATH (runner.which without importing
    subprocess/shutil, a few ms of start-up). Its name must be ``firecracker``: that is how a
    running instance is recognised (/proc/PID/comm), here and by ``flake-ctl firecracker show``."""
    if os.path.basename(binary) != "firecracker":
        raise EngineError(f"{binary}: the Firecracker binary must be named 'firecracker' (a symlink of that "
                          "name will do), instances are recognised by it")
    candidates = [binary] if "/" in binary else [
        os.path.join(d or ".", binary) for d in os.environ.get("PATH", os.defpath).split(os.pathsep)]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    where = "" if "/" in binary else f" in PATH ({os.environ.get('PATH', '')})"
    raise EngineError(f"{binary}: not found{where}; install Firecracker or set generic.firecracker_binary")


def reap(pid: int) -> int:
    """Wait for our firecracker child: shell-style status (128+N when killed by signal N)."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def log_reason(paths: InstancePaths) -> str:
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


def prepare(flake: Plan, paths: InstancePaths, uid: int, resume: bool) -> tuple[str | None, str | None]:
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


def build(flake: Plan, paths: InstancePaths, call: CallArgs, ov: str | None, dev: str | None,
          uid: int) -> dict[str, object]:
    from . import vmdef

    try:
        size = os.get_terminal_size(0)
        winsize = (size.lines, size.columns)
    except OSError:
        winsize = (0, 0)
    inst = vmdef.Instance(call.meta, paths.sock, ov, dev, vmdef.guest_mac(uid, call.meta))
    cmdline = vmdef.boot_args(flake, call.args, overlay=ov is not None, debug=debug.enabled(),
                              term=os.environ.get("TERM"), winsize=winsize)
    return vmdef.config(flake, inst, cmdline)


def connect(paths: InstancePaths, pid: int, port: int, progress: bool) -> socket:
    """Wait for sci to answer on vsock *port* while the VM is alive; the connected socket."""
    import time

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


def session(flake: Plan, call: CallArgs, sock: socket) -> int:
    from ..protocol import Request, run_session, terminal_size

    tty = os.isatty(0)
    rows, cols = terminal_size(0) if tty else (0, 0)
    env = {"TERM": os.environ["TERM"]} if tty and os.environ.get("TERM") else {}
    req = Request([flake.target_app_path, *call.args], env=env, tty=tty, rows=rows, cols=cols)
    try:
        return run_session(sock, req, 0, 1, 2)
    finally:
        sock.close()


def run_oneshot(flake: Plan, call: CallArgs, paths: InstancePaths, uid: int, binary: str) -> int:
    from . import instances

    lock_fd = instances.try_lock(paths.lock)
    if lock_fd is None:
        raise ConflictError(f"instance {call.meta} is in use by another call; start another one with @NAME")
    pid = None
    waited = False
    tty_mode = None
    if not flake.force_vsock and os.isatty(0):
        import termios  # firecracker makes the console terminal raw and leaves it so when killed

        tty_mode = termios.tcgetattr(0)
    try:
        running = instances.running_pid(paths)
        if running:
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
                raise EngineError(f"firecracker exited with {code}: {log_reason(paths)}")
            return code
        return session(flake, call, connect(paths, pid, call.port, call.progress))
    finally:
        if pid is not None and not waited:
            instances.kill(pid, paths.fc_id, grace=0.2)
            reap(pid)
        instances.remove_files(paths, overlay=False)
        os.close(lock_fd)
        if tty_mode is not None:
            termios.tcsetattr(0, termios.TCSANOW, tty_mode)


def _wait_serial(pid: int) -> int:
    """Wait for the foreground VM; signals to the launcher are passed on to firecracker."""
    def forward(signo: int, _frame: object) -> None:
        os.kill(pid, signo)

    for signo in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, forward)
    return reap(pid)


def run_resume(flake: Plan, call: CallArgs, paths: InstancePaths, uid: int, binary: str) -> int:
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
        os.close(lock_fd)  # not held across sessions: concurrent calls share the VM
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
                os.close(with_lock)
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
    uid = os.getuid()
    paths = instances.InstancePaths(state_dir, call.meta)
    if len(os.fsencode(paths.sock)) + len(f"_{call.port}") > SUN_PATH_MAX:
        raise UsageError(f"{paths.sock}_{call.port}: longer than a Unix socket path may be; "
                         "use a shorter @NAME or firecracker_ids_dir")
    reaped = instances.gc(state_dir)
    if reaped:
        debug.log(f"reaped stale instances: {', '.join(reaped)}")
    if flake.resume:
        return run_resume(flake, call, paths, uid, flake.binary)
    return run_oneshot(flake, call, paths, uid, flake.binary)


def main(argv: list[str] | None = None) -> None:
    argv_given = argv is not None
    argv = list(sys.argv if argv is None else argv)
    app = os.path.basename(argv[0]) if argv else "firecracker-pilot"
    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _raise_interrupted)
    try:
        if app in ("firecracker-pilot", "") or app.endswith(".py"):
            raise UsageError("firecracker-pilot is started through an app symlink registered with "
                             "`flake-ctl firecracker register`")
        from ..names import app_name

        code = launch(app_name(app), argv[1:])
    except FlakeError as exc:
        if debug.enabled():
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"{app}: {exc}\n")
        code = LAUNCHER_EXIT
    except OSError as exc:  # a state or image file the launcher could not use
        if debug.enabled():
            import traceback

            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"{app}: {where}{exc.strerror or exc}\n")
        code = LAUNCHER_EXIT
    except Interrupted as exc:
        code = 128 + exc.signo
    except KeyboardInterrupt:
        code = 130
    if argv_given:
        sys.exit(code)
    # the console script's entry: the VM is reaped and the instance cleaned up, nothing is left
    # but the interpreter's teardown (ms), so skip it, as podman-pilot does
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
