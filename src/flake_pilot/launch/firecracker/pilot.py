"""firecracker-pilot: run a registered app in a microVM as if it were native.

``/usr/bin/<app>`` is a symlink to this launcher; the app name is ``basename(argv[0])``.
Caller arguments: ``@NAME`` (instance names, all joined: ``app@a@b``), ``%port:N`` (guest vsock
port of sci, Firecracker), ``%progress`` (spinner while the guest boots); other ``%x`` are
ignored; ``@@x`` and ``%%x`` pass a literal ``@x`` / ``%x``; the rest goes to the program verbatim.

The VM monitor is ``vm.runtime.vmm``: Firecracker (sessions over vsock) or QEMU (``qemu.py``:
sessions over virtio-serial ports, KVM when usable, else TCG).

Modes (from the registration, ``vmdef.session_mode``):
  one-shot, session          the default for images with our sci (``console: false``) or with
                             force_vsock: the VM boots in the background, the program runs in a
                             sci session, the VM is killed when the program ends
  one-shot, serial console   compatibility (``console: true``, the original's files, images
                             without our sci): the VMM runs in the foreground, the console is
                             the program's terminal (no exit status, no separate stderr)
  resume                     the VM is kept (own session, survives the caller), every call is
                             a new session; concurrent first calls boot exactly one VM
"""

import _signal as signal  # the C module: ``signal`` imports enum (~7 ms of start-up)
import sys

# fastos, not os (~2 ms); no ``from __future__ import annotations`` (~0.5 ms): the annotations
# that name TYPE_CHECKING-only classes are quoted. flake_pilot.errors is imported where an error
# is raised or reported, not by a launch that goes well.
from .. import debug, fastos
from ..main import run

TYPE_CHECKING = False  # importing typing costs ~13 ms of launcher start
if TYPE_CHECKING:
    from socket import socket
    from typing import NoReturn

    from .instances import InstancePaths
    from .plan import Plan

DEFAULT_PORT = 52  # sci's session port in the guest
KVM_DEV = "/dev/kvm"
SUN_PATH_MAX = 107  # bytes in a Unix socket path


def boot_timeout() -> float:
    """Seconds the guest has to answer on vsock (``PILOT_BOOT_TIMEOUT``, default 60)."""
    text = fastos.environ.get("PILOT_BOOT_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        from ...errors import UsageError

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
    """Caller arguments (``flake_pilot.launch.callargs``) with firecracker-pilot's option set."""
    from ..callargs import FIRECRACKER_OPTIONS, split
    from ..names import instance_name

    caller = split(argv, FIRECRACKER_OPTIONS, instance_name, strict=False)
    port = DEFAULT_PORT
    if "port" in caller.options:
        value = caller.options["port"]
        if not value.isdigit() or not 0 < int(value) < 2**32:
            from ...errors import UsageError

            raise UsageError(f"%port:{value}: expected a vsock port number")
        port = int(value)
    meta = "@".join([app, *caller.instances])
    if len(meta) > 255 - len("sci_cmd_.sock_4294967295"):
        from ...errors import UsageError

        raise UsageError(f"instance name {meta!r} is too long")
    return CallArgs(meta, caller.app_args, port, "progress" in caller.options)


def _raise_interrupted(signo: int, _frame: object) -> None:
    raise Interrupted(signo)


def _start(argv: list[str], *, console: bool, log_fd: int, config_fd: int, keep: bool) -> int:
    """fork + exec the VMM (cheaper to import than subprocess); the child's PID.

    *config_fd*: an fd the VMM inherits (Firecracker's config pipe), -1 for none.

    *console*: the VM's serial console is the caller's stdin/stdout, else /dev/null.
    *keep*: a resume VM in its own session (outlives the caller's terminal); otherwise the VM
    gets PR_SET_PDEATHSIG, so it dies with the launcher, even when that is SIGKILLed.
    """
    debug_console = debug.enabled()
    prctl = None if keep else fastos.prctl_function()
    parent = fastos.getpid()
    err_r, err_w = fastos.pipe2(fastos.O_CLOEXEC)
    pid = fastos.fork()
    if pid == 0:  # child: only async-signal-safe work until exec
        code = 1
        try:
            fastos.close(err_r)
            if prctl is not None:
                prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
                if fastos.getppid() != parent:  # the launcher died before prctl took effect
                    fastos._exit(1)
            else:
                fastos.setsid()
            if not console:
                null = fastos.open(fastos.devnull, fastos.O_RDWR)
                fastos.dup2(null, 0)
                fastos.dup2(log_fd if debug_console else null, 1)  # PILOT_DEBUG: guest console in the log
            fastos.dup2(log_fd, 2)
            if config_fd >= 0:
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
        from ...errors import EngineError

        fastos.waitpid(pid, 0)
        raise EngineError(f"{argv[0]}: cannot start: {failure.decode(errors='replace')}")
    return pid


def check_kvm() -> None:
    """Firecracker needs read/write access to /dev/kvm: say so in one line before it fails."""
    if fastos.access(KVM_DEV, 6):  # R_OK | W_OK
        return
    from ...errors import EngineError

    if not fastos.exists(KVM_DEV):
        raise EngineError(
            f"{KVM_DEV} is missing: Firecracker needs KVM (enable virtualisation, modprobe kvm_intel or "
            "kvm_amd), or register the flake with --vmm qemu (runs without KVM)"
        )
    raise EngineError(
        f"{KVM_DEV}: no read/write access for uid {fastos.getuid()}: Firecracker needs it; add the user to "
        "the group owning it (usermod -aG kvm USER, then log in again) or register the flake with --vmm qemu"
    )


def _open_log(paths: "InstancePaths") -> int:
    # O_APPEND: the VMM writes its own log to the same file
    flags = fastos.O_WRONLY | fastos.O_CREAT | fastos.O_TRUNC | fastos.O_APPEND | fastos.O_NOFOLLOW | fastos.O_CLOEXEC
    return fastos.open(paths.log, flags, 0o600)


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
    log_fd = _open_log(paths)
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
        from ...errors import EngineError

        raise EngineError(
            f"{binary}: the Firecracker binary must be named 'firecracker' (a symlink of that "
            "name will do), instances are recognised by it"
        )
    path = fastos.which(binary)
    if path is not None:
        return path
    from ...errors import EngineError

    where = "" if "/" in binary else f" in PATH ({fastos.environ.get('PATH', '')})"
    raise EngineError(f"{binary}: not found{where}; install Firecracker or set generic.firecracker_binary")


def reap(pid: int) -> int:
    """Wait for our firecracker child: shell-style status (128+N when killed by signal N)."""
    _, status = fastos.waitpid(pid, 0)
    code = fastos.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def log_reason(paths: "InstancePaths") -> str:
    """The telling line of the VMM's log, whole, for error messages."""
    try:
        with open(paths.log, "rb") as handle:
            lines = [line for line in handle.read()[-16384:].decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in lines:
        if "rror" in line and "exiting with error" not in line:
            # "RunWithoutApiError error: Failed to build ...: ... failed: <the cause>"
            return line.split("] ", 1)[-1].rsplit("failed: ", 1)[-1].strip()
    return lines[-1].split("] ", 1)[-1].strip() if lines else "no log output"


def start_failed(paths: "InstancePaths", message: str) -> Exception:
    """The error for a VM that failed to start: its log is kept (``<meta>.failed.log``, replacing
    the one of an earlier failure) and named, since the instance's own files are removed."""
    from ...errors import EngineError
    from .. import statedir

    kept = paths.failed_log
    try:
        fastos.replace(paths.log, kept)
    except OSError:
        statedir.remove_file(kept)  # no log to keep: do not name an older one
        return EngineError(message)
    return EngineError(f"{message} (log: {kept})")


def prepare(flake: "Plan", paths: "InstancePaths", uid: int, resume: bool) -> tuple[str | None, str | None, bool]:
    """Overlay and TAP device for a new VM: (overlay path, tap name, overlay made by this call)."""
    from . import vmdef

    ov = None
    created = False
    if flake.firecracker.overlay_size:
        from ...firecracker import overlay
        from ...sizes import parse_size

        ov = paths.overlay(resume)
        if not (resume and overlay.usable(ov)):
            overlay.create(ov, parse_size(flake.firecracker.overlay_size), flake.include, flake.config_file)
            created = True
    dev = None
    if vmdef.wants_network(flake) and (flake.vmm != "qemu" or flake.network == "tap"):
        from ...firecracker import tap
        from .. import statedir

        try:
            dev = tap.name(paths.meta)
            if tap.ensure(dev, uid):
                statedir.write_file(paths.tap_record, dev)
        except BaseException:
            if created and ov is not None:
                statedir.remove_file(ov)
            raise
    return ov, dev, created


def _winsize() -> tuple[int, int]:
    try:
        size = fastos.get_terminal_size(0)
    except OSError:
        return 0, 0
    return size.lines, size.columns


def build(
    flake: "Plan", paths: "InstancePaths", call: CallArgs, ov: str | None, dev: str | None, uid: int
) -> dict[str, object]:
    from . import vmdef

    inst = vmdef.Instance(call.meta, paths.sock, ov, dev, vmdef.guest_mac(uid, call.meta))
    cmdline = vmdef.boot_args(
        flake,
        call.args,
        overlay=ov is not None,
        debug=debug.enabled(),
        term=fastos.environ.get("TERM"),
        winsize=_winsize(),
    )
    return vmdef.config(flake, inst, cmdline)


def start_vm(
    flake: "Plan", paths: "InstancePaths", call: CallArgs, ov: str | None, dev: str | None, uid: int, keep: bool
) -> int:
    """Start the registered VMM for this instance: its PID. The serial console is the program's
    terminal only in the compatibility mode (no sci session)."""
    from . import vmdef

    console = not vmdef.session_mode(flake)
    if flake.vmm == "qemu":
        return spawn_qemu(flake, paths, call, ov, dev, uid, console=console, keep=keep)
    doc = build(flake, paths, call, ov, dev, uid)
    return spawn(paths, doc, serial=console, keep=keep, binary=flake.binary)


def find_qemu(binary: str) -> str:
    path = fastos.which(binary)
    if path is not None:
        return path
    from ...errors import EngineError

    where = "" if "/" in binary else f" in PATH ({fastos.environ.get('PATH', '')})"
    raise EngineError(
        f"{binary}: not found{where}; install QEMU (apt-get install qemu-system-x86) or set generic.qemu_binary"
    )


def spawn_qemu(
    flake: "Plan",
    paths: "InstancePaths",
    call: CallArgs,
    ov: str | None,
    dev: str | None,
    uid: int,
    *,
    console: bool,
    keep: bool,
) -> int:
    """Start QEMU for this instance (KVM when usable, else TCG); record its PID."""
    from .. import statedir
    from . import qemu, vmdef

    binary = find_qemu(flake.qemu_binary)
    accel, why = qemu.kvm_accel()
    if debug.enabled() or call.progress:
        how = "hardware KVM" if accel == "kvm" else f"TCG, software emulation (slow start-up): {why}"
        sys.stderr.write(f"{call.meta}: starting the VM under QEMU with {how}\n")
    cmdline = vmdef.boot_args(
        flake,
        call.args,
        overlay=ov is not None,
        debug=debug.enabled(),
        term=fastos.environ.get("TERM"),
        winsize=_winsize(),
        extra=qemu.TCG_ARGS if accel == "tcg" else (),
    )
    inst = vmdef.Instance(call.meta, paths.sock, ov, dev, vmdef.guest_mac(uid, call.meta))
    argv = qemu.argv(
        flake,
        inst,
        cmdline,
        name=paths.fc_id,
        binary=binary,
        accel=accel,
        console=console or debug.enabled(),  # debug: the guest console goes to the log
        user_net=dev is None and flake.network == "user" and vmdef.wants_network(flake),
        session_ports=0 if console else qemu.ports(flake),
        sock=paths.sock,
    )
    debug.log("+ " + " ".join(argv))
    log_fd = _open_log(paths)
    try:
        pid = _start(argv, console=console, log_fd=log_fd, config_fd=-1, keep=keep)
    finally:
        fastos.close(log_fd)
    statedir.write_file(paths.vmid, str(pid))
    debug.log(f"started qemu pid {pid} for {paths.meta}")
    return pid


def _no_answer(exc: Exception) -> Exception:
    """Mark *exc* as "the guest never answered" (run_resume removes a VM it booted then)."""
    exc.no_answer = True  # type: ignore[attr-defined]
    return exc


def connect(paths: "InstancePaths", pid: int, port: int, progress: bool) -> "socket":
    """Wait for sci to answer on vsock *port* while the VM is alive; the connected socket."""
    import time

    from ...protocol import ProtocolError, connect_firecracker_vsock
    from .instances import is_vm

    limit = boot_timeout()
    deadline = time.monotonic() + limit
    spin = None
    if progress:
        from ...progress import spinner

        spin = spinner(f"starting {paths.meta}")
        spin.__enter__()
    try:
        while True:
            try:
                return connect_firecracker_vsock(paths.sock, port, timeout=0.5)
            except ProtocolError as exc:
                if not is_vm(pid, paths.fc_id):
                    reason = log_reason(paths)
                    raise _no_answer(
                        start_failed(paths, f"VM {paths.meta} ended before its guest answered: {reason}")
                    ) from exc
                if time.monotonic() >= deadline:
                    raise _no_answer(
                        start_failed(
                            paths,
                            f"VM {paths.meta}: no answer from sci on vsock port {port} within {limit:g} s "
                            f"(socket {paths.sock}; does the image run sci with run=vsock?)",
                        )
                    ) from exc
    finally:
        if spin is not None:
            spin.__exit__(None, None, None)


def session(
    flake: "Plan",
    call: CallArgs,
    sock: "socket",
    *,
    handshake: float = 60.0,
    paths: "InstancePaths | None" = None,
    pid: int = 0,
    answered: list[bool] | None = None,
) -> int:
    """Run the call as a sci session on the connected *sock*. With *paths*/*pid* (QEMU: the
    handshake includes the boot) a session that fails before the guest answered is reported as a
    failed start; *answered* (one flag) is set once the guest answered."""
    from ... import protocol
    from ...protocol import ProtocolError, Request, run_session, terminal_size

    tty = fastos.isatty(0)
    rows, cols = terminal_size(0) if tty else (0, 0)
    env = {"TERM": fastos.environ["TERM"]} if tty and fastos.environ.get("TERM") else {}
    req = Request([flake.target_app_path, *call.args], env=env, tty=tty, rows=rows, cols=cols)
    flag = answered if answered is not None else [False]
    spin = None
    if call.progress and paths is not None:
        from ...progress import spinner

        spin = spinner(f"starting {paths.meta}")
        spin.__enter__()

    def started(_guest_pid: int) -> None:
        nonlocal spin
        flag[0] = True
        if spin is not None:
            spin.__exit__(None, None, None)
            spin = None

    try:
        return run_session(sock, req, 0, 1, 2, handshake_timeout=handshake, on_started=started)
    except protocol.Interrupted as exc:  # Ctrl-C, SIGTERM... while the VM boots: give up the call
        raise Interrupted(exc.signo) from exc
    except ProtocolError as exc:
        if flag[0] or paths is None:
            raise
        from .instances import is_vm

        if not is_vm(pid, paths.fc_id):
            reason = log_reason(paths)
            raise _no_answer(start_failed(paths, f"VM {paths.meta} ended before its guest answered: {reason}")) from exc
        if str(exc).startswith("no answer"):
            raise _no_answer(
                start_failed(
                    paths,
                    f"VM {paths.meta}: no answer from sci on its virtio-serial port within {handshake:g} s "
                    "(does the image run flake-pilot's sci?)",
                )
            ) from exc
        flag[0] = True  # the guest answered: it refused the request
        raise
    finally:
        if spin is not None:
            spin.__exit__(None, None, None)
        sock.close()


def call_session(flake: "Plan", call: CallArgs, paths: "InstancePaths", pid: int, answered: list[bool]) -> int:
    """This call as a sci session in the running VM *pid*: the program's exit status."""
    if flake.vmm != "qemu":
        vsock = connect(paths, pid, call.port, call.progress)
        answered[0] = True
        return session(flake, call, vsock)
    import time

    from . import qemu

    limit = boot_timeout()
    index, port_lock = qemu.claim_port(paths, qemu.ports(flake))
    try:
        sock = qemu.connect(paths, index, pid, time.monotonic() + limit)
        if sock is None:
            reason = log_reason(paths)
            raise _no_answer(start_failed(paths, f"VM {paths.meta} ended before its guest answered: {reason}"))
        debug.log(f"session on port sci{index}")
        return session(flake, call, sock, handshake=limit, paths=paths, pid=pid, answered=answered)
    finally:
        fastos.close(port_lock)


def run_oneshot(flake: "Plan", call: CallArgs, paths: "InstancePaths", uid: int) -> int:
    from . import instances, vmdef

    lock_fd = instances.try_lock(paths.lock)
    if lock_fd is None:
        from ...errors import ConflictError

        raise ConflictError(f"instance {call.meta} is in use by another call; start another one with @NAME")
    pid = None
    waited = False
    tty_mode = None
    console = not vmdef.session_mode(flake)
    if console and fastos.isatty(0):
        import termios  # the VMM makes the console terminal raw and leaves it so when killed

        tty_mode = termios.tcgetattr(0)
    try:
        running = instances.running_pid(paths)
        if running:
            from ...errors import ConflictError

            raise ConflictError(f"instance {call.meta} runs as VM pid {running}; use @NAME or stop it")
        instances.remove_files(paths, overlay=False)
        ov, dev, _ = prepare(flake, paths, uid, resume=False)
        pid = start_vm(flake, paths, call, ov, dev, uid, keep=False)
        if console:
            code = _wait_serial(pid)
            waited = True
            if code > 0 and code < 128:
                raise start_failed(paths, f"{flake.vmm} exited with {code}: {log_reason(paths)}")
            return code
        return call_session(flake, call, paths, pid, [False])
    finally:
        if pid is not None and not waited:
            instances.kill(pid, paths.fc_id, grace=0.2)
            reap(pid)
        instances.remove_files(paths, overlay=False)
        instances.drop_lock(paths.lock, lock_fd)
        if tty_mode is not None:
            termios.tcsetattr(0, termios.TCSANOW, tty_mode)


def _wait_serial(pid: int) -> int:
    """Wait for the foreground VM; signals to the launcher are passed on to the VMM."""

    def forward(signo: int, _frame: object) -> None:
        fastos.kill(pid, signo)

    for signo in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, forward)
    return reap(pid)


def _discard(paths: "InstancePaths", overlay_made: bool, lock_fd: int) -> None:
    """Remove what a failed first start of a resume instance made: runtime files, the overlay
    if this call created it, and the instance lock (*lock_fd* must hold it)."""
    from .. import statedir
    from . import instances

    instances.remove_files(paths, overlay=False)
    if overlay_made:
        statedir.remove_file(paths.overlay(resume=True))
    instances.drop_lock(paths.lock, lock_fd)


def run_resume(flake: "Plan", call: CallArgs, paths: "InstancePaths", uid: int) -> int:
    """A session in the instance's kept VM, booted first when none runs. A running VM whose
    registration changed is stopped and booted anew, with a new overlay (as podman-pilot replaces
    a resume container), when no call runs in it; else this call uses it as it is."""
    from .. import statedir
    from . import instances

    wanted = instances.vm_spec(flake)
    lock_fd = instances.lock(paths.lock)
    spec_fd = -1  # the VM's .spec, held shared while this call's session runs
    started = False
    created = False
    try:
        pid = instances.running_pid(paths)
        if pid is not None:
            spec_fd, replace = instances.join(paths, wanted)
            if replace:
                debug.log(f"registration changed: stopping idle VM pid {pid} of {call.meta}")
                instances.kill(pid, paths.fc_id)
                instances.remove_files(paths, overlay=True)
                fastos.close(spec_fd)
                spec_fd, pid = -1, None
            else:
                debug.log(f"reusing VM pid {pid} for {call.meta}")
        if pid is None:
            instances.remove_files(paths, overlay=False)
            try:
                ov, dev, created = prepare(flake, paths, uid, resume=True)
                pid, started = start_vm(flake, paths, call, ov, dev, uid, keep=True), True
                statedir.write_file(paths.spec, wanted)
                spec_fd, _ = instances.join(paths, wanted)
            except BaseException:
                if started and pid is not None:  # its spec could not be recorded: do not keep it
                    instances.kill(pid, paths.fc_id, grace=0.2)
                _discard(paths, created, lock_fd)
                lock_fd = -1
                raise
    finally:
        if lock_fd >= 0:
            fastos.close(lock_fd)  # not held across sessions: concurrent calls share the VM
    answered = [False]
    try:
        return call_session(flake, call, paths, pid, answered)
    except BaseException:
        if started and not answered[0]:  # the VM we booted never answered: do not leave it behind
            with_lock = instances.try_lock(paths.lock)
            if with_lock is not None:
                debug.log(f"removing VM pid {pid}: it never answered")
                instances.kill(pid, paths.fc_id, grace=0.2)
                try:
                    reap(pid)  # our child: gone for good once reaped (kill returns once it stops being a VM)
                except ChildProcessError:
                    pass
                _discard(paths, created, with_lock)
                debug.log(f"VM pid {pid} removed")
            else:
                debug.log(f"VM pid {pid} never answered; another call holds {paths.lock}: left to it")
        raise
    finally:
        if spec_fd >= 0:
            fastos.close(spec_fd)


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
        from ...errors import UsageError

        raise UsageError(
            f"{paths.sock}_{call.port}: longer than a Unix socket path may be; "
            "use a shorter @NAME or firecracker_ids_dir"
        )
    if flake.vmm != "qemu":
        check_kvm()  # before anything is made for the instance
    reaped = instances.gc(state_dir)
    if reaped:
        debug.log(f"reaped stale instances: {', '.join(reaped)}")
    if flake.resume:
        return run_resume(flake, call, paths, uid)
    return run_oneshot(flake, call, paths, uid)


def main(argv: "list[str] | None" = None) -> "NoReturn":
    """The console script's entry (``flake_pilot.firecracker_pilot``): the launchers' one main;
    *argv* given (in-process): ends with SystemExit."""
    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _raise_interrupted)
    run("firecracker-pilot", _launch_app, argv)


def _launch_app(app: str, args: list[str]) -> int:
    from ..names import app_name

    try:
        return launch(app_name(app), args)
    except Interrupted as exc:  # the VM, the app, ended by the signal: its status, as a killed program's
        return 128 + exc.signo
