"""Parent mode: run the engine as a child and forward signals to the app ourselves.

Needed where exec'ing podman would break the contract: ``podman exec`` does not forward
signals (SIGTERM makes it exit 0 while the app keeps running), and ``podman run -t`` /
``start --attach`` drop SIGINT and SIGHUP. The engine runs in its own session, so signals
the terminal sends to our process group reach only us; we deliver each one to the app's
process on the host (found via /proc, no engine call) and exit with the engine's status,
which is the app's. SIGWINCH goes to the engine, which resizes the container's terminal.
"""

import _signal as signal  # the C module: the signal wrapper would import enum (milliseconds)
import time

from .. import fastos, runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
FIND_DEADLINE_S = 5.0  # a signal that arrives while the app is still starting waits this long
KILL_GRACE_S = 3.0  # then the engine gets it; one that ignores it loses its process group after this
STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def by_session(var: str, token: str) -> "Callable[[], list[int]]":
    """Finder for ``podman exec`` sessions: the topmost processes whose environment holds
    ``var=token`` (the app; its children inherit the variable)."""
    needle = f"{var}={token}".encode()

    def find() -> list[int]:
        found: dict[int, int] = {}
        for entry in fastos.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    env = handle.read()
                if needle not in env or needle not in env.split(b"\0"):
                    continue
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found[int(entry)] = ppid
        return [pid for pid, ppid in found.items() if ppid not in found]

    return find


def by_conmon(pidfile: str, cidfile: str) -> "Callable[[], list[int]]":
    """Finder for run/start/attach: the container's init (catatonit, which passes the signal
    on to the app), i.e. the child of the container's conmon."""
    from . import instance

    def find() -> list[int]:
        from .. import statedir

        try:
            cid = instance.read_cid(cidfile)
            pid = int(statedir.read_file(pidfile) or 0)  # never blocks on a FIFO
        except (OSError, ValueError):
            return []
        init = instance.container_init(pid) if instance.runs(pid, cid) else None
        return [init] if init else []

    return find


def in_background() -> bool:
    """Our stdin is our controlling terminal and we are a background job (``app &``): a native
    program reading it would be stopped (SIGTTIN); the engine, in its own session, would steal
    the shell's keystrokes instead, so it gets /dev/null (and no terminal)."""
    try:
        return fastos.isatty(0) and fastos.tcgetpgrp(0) != fastos.getpgrp()
    except OSError:  # not our controlling terminal
        return False


def supervise(
    argv: "Sequence[str]",
    env: "Mapping[str, str]",
    find: "Callable[[], list[int]] | None",
    stdin_null: bool | None = None,
) -> int:
    """Run argv in a new session, forward signals to find()'s processes (None: to the engine
    itself, which forwards them to the app), return the exit code.

    Handlers are installed before the engine starts, so no signal is lost in between. When our
    stdout is a pipe whose reader went away (``app | head``), the app gets SIGPIPE like a native
    one would (podman itself would stop the container after 10 s and exit 126).
    """
    import select

    child: list[int] = []  # the engine's pid, once started
    pending: list[int] = []
    status: int | None = None
    killed: list[int] = []

    def reap(block: bool) -> bool:
        nonlocal status
        if status is not None:
            return True
        try:
            done, st = fastos.waitpid(child[0], 0 if block else fastos.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            status = st
        return done != 0

    def forward(signum: int, _frame: object) -> None:
        if not child:
            pending.append(signum)
            return
        if signum == signal.SIGWINCH:  # to the engine's whole group: rootless podman re-execs
            try:  # itself into the user namespace as a child process
                fastos.killpg(child[0], signum)
            except OSError:
                pass
            return
        deadline = time.monotonic() + FIND_DEADLINE_S
        while not reap(False):
            targets = find() if find is not None else [child[0]]
            if targets:
                for target in targets:
                    send = signum
                    if is_pid1_without_handler(target, signum):
                        send = signal.SIGKILL
                        killed.append(signum)
                    _kill(target, send)
                return
            if time.monotonic() > deadline:
                _kill(child[0], signum)  # the app never showed up: stop the engine instead
                if signum in STOP:  # and if it ignores that: its whole process group
                    end = time.monotonic() + KILL_GRACE_S
                    while not reap(False) and time.monotonic() < end:
                        time.sleep(0.05)
                    if not reap(False):
                        killed.append(signum)
                        try:
                            fastos.killpg(child[0], signal.SIGKILL)
                        except OSError:
                            pass
                return
            time.sleep(0.02)

    for signum in (*FORWARD, signal.SIGWINCH):
        signal.signal(signum, forward)
    try:
        quiet = in_background() if stdin_null is None else stdin_null
        child.append(runner.spawn(argv, env, new_session=True, stdin_null=quiet))
    except BaseException:
        _restore()
        raise
    for signum in pending:
        forward(signum, None)
    poller = select.poll()
    poller.register(fastos.pidfd_open(child[0]), select.POLLIN)
    stdout_pipe = _is_pipe(1)
    if stdout_pipe:
        poller.register(1, 0)  # only POLLERR: the reading end was closed
    while not reap(False):
        for fd, events in poller.poll():
            if fd == 1 and events & select.POLLERR:
                poller.unregister(1)
                forward(signal.SIGPIPE, None)
    _restore()
    code = exit_code(status)
    if killed and code == 128 + signal.SIGKILL:
        return 128 + killed[0]  # what the app would have reported had it not been PID 1
    if code == 126 and stdout_pipe and _broken(1):
        return 128 + signal.SIGPIPE  # podman's code for "could not write your stdout"
    return code


def _restore() -> None:
    for signum in (*FORWARD, signal.SIGWINCH):
        signal.signal(signum, signal.SIG_DFL)


def _kill(pid: int, signum: int) -> None:
    try:
        fastos.kill(pid, signum)
    except OSError:
        pass


def _is_pipe(fd: int) -> bool:
    try:
        return (fastos.fstat(fd).st_mode & 0o170000) == 0o010000  # S_IFIFO
    except OSError:
        return False


def _broken(fd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(fd, 0)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def is_pid1_without_handler(pid: int, signum: int) -> bool:
    """The kernel drops a signal sent to a PID namespace's init unless init handles it. For
    such an app the default action (terminate) is carried out with SIGKILL: same outcome, the
    launcher then reports 128+signum like for any other app."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            fields = dict(line.split(b":", 1) for line in handle.read().splitlines() if b":" in line)
        nspid = fields[b"NSpid"].split()
        # blocked counts as handled: catatonit (--init) blocks every signal and reads them from a
        # signalfd; the kernel queues a blocked signal even for a namespace's init
        caught = int(fields[b"SigCgt"], 16) | int(fields[b"SigIgn"], 16) | int(fields[b"SigBlk"], 16)
    except (OSError, KeyError, ValueError):
        return False
    return len(nspid) > 1 and nspid[-1] == b"1" and not caught & (1 << (signum - 1))


def exit_code(status: int | None) -> int:
    if status is None:
        return 125
    code = fastos.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
