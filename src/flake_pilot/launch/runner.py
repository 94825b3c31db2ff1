"""The one subprocess wrapper: argv lists only, never a shell.

Every engine command line goes through here so ``PILOT_DEBUG=1`` shows it before it runs.
The launchers import this module on every call: heavy modules (subprocess, shutil, shlex)
are imported only inside the functions that need them.
"""

from . import debug, fastos

TYPE_CHECKING = False  # typing costs milliseconds at launch; mypy treats this name as True
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

DEVNULL = -3  # subprocess.DEVNULL, without importing subprocess
ENGINE_TIMEOUT_VAR = "PILOT_ENGINE_TIMEOUT"
_default_timeout: float | None = None


def bound_engine_calls(default: float = 600.0) -> float:
    """Launchers: from now on every ``run()`` without its own timeout (image checks, create, start,
    compose; never the app itself, which runs via spawn/exec) fails with EngineError after
    ``$PILOT_ENGINE_TIMEOUT`` seconds (default *default*) instead of hanging forever."""
    global _default_timeout
    value = fastos.environ.get(ENGINE_TIMEOUT_VAR, "")
    try:
        seconds = float(value) if value else default
    except ValueError:
        seconds = default
    _default_timeout = seconds if seconds > 0 else default
    return _default_timeout


def which(program: str) -> str:
    """Absolute path of *program* (PATH lookup), or EngineError naming it."""
    path = fastos.which(program)
    if path is not None:
        return path
    if "/" in program:
        _fail(f"{program}: not found or not executable")
    _fail(f"{program}: not found in PATH ({fastos.environ.get('PATH', '')})")


def _fail(message: str) -> "NoReturn":
    from ..errors import EngineError  # only on failure: a launch does not import the errors

    raise EngineError(message)


def _env(overrides: "Mapping[str, str] | None") -> dict[str, str] | None:
    if not overrides:
        return None
    env = dict(fastos.environ)
    env.update(overrides)
    return env


def run(
    argv: "Sequence[str]",
    *,
    env: "Mapping[str, str] | None" = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    stdin: int | None = DEVNULL,
    input_bytes: bytes | None = None,
) -> "subprocess.CompletedProcess[bytes]":
    """Run argv; with *check*, a non-zero exit raises EngineError with the first stderr line."""
    import subprocess

    from ..errors import EngineError

    argv = list(argv)
    if timeout is None:
        timeout = _default_timeout
    if debug.enabled():
        debug.log("+ " + _join(argv))
    try:  # its own process group: a timeout or Ctrl-C ends the engine and all it started
        child = subprocess.Popen(  # noqa: S603 - argv list, no shell: the one place the product starts a program
            argv,
            env=_env(env),
            stdin=subprocess.PIPE if input_bytes is not None else stdin,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]}: command not found") from exc
    previous = _stop_on(Stopped.SIGNALS)  # SIGTERM/SIGHUP end the engine too, not only us
    try:
        out, err = child.communicate(input_bytes, timeout=timeout)
    except BaseException as exc:
        _end_group(child, interrupted=isinstance(exc, KeyboardInterrupt))
        if isinstance(exc, subprocess.TimeoutExpired):
            raise EngineError(f"{_join(argv[:3])}...: no answer within {timeout:g} s") from None
        raise
    finally:
        _stop_on(Stopped.SIGNALS, previous)
    proc = subprocess.CompletedProcess(argv, child.returncode, out, err)
    if check and proc.returncode != 0:
        raise EngineError(f"{_join(argv[:3])} failed: {first_line(proc.stderr)}", proc.returncode)
    return proc


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while an engine call ran (its group was ended); exit 128+signum."""

    SIGNALS = (15, 1)  # SIGTERM, SIGHUP

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def _stop_on(signals: "tuple[int, ...]", previous: "list[object] | None" = None) -> "list[object]":
    """Install _raise_stopped for *signals* (or restore *previous*); returns what was installed
    before. Only the main thread may set handlers: elsewhere nothing changes."""
    import _signal

    handlers = [_raise_stopped] * len(signals) if previous is None else previous
    before: list[object] = []
    try:
        for signum, handler in zip(signals, handlers, strict=False):
            before.append(_signal.signal(signum, handler))
    except ValueError:
        pass
    return before


def _end_group(child: "subprocess.Popen[bytes]", interrupted: bool) -> None:
    """End the engine's process group: SIGINT first after a Ctrl-C (podman cleans up), SIGKILL
    when it does not end within seconds, at once after a timeout."""
    import _signal
    import subprocess

    if interrupted:
        try:
            fastos.killpg(child.pid, _signal.SIGINT)
            child.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        fastos.killpg(child.pid, _signal.SIGKILL)
    except OSError:
        pass
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            stream.close()  # not read to the end: a process outside the group may hold them
    child.wait()


def first_line(data: bytes | None) -> str:
    """The most telling line of an engine's stderr (podman prefixes errors with 'Error:')."""
    text = (data or b"").decode(errors="replace").strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("Error:"):
            others = [ln for ln in lines if ln is not line and "level=warning" not in ln]
            if line.startswith("Error: exit status") and others:  # the cause is in a log line
                cause = others[0]
                if 'msg="' in cause:
                    cause = cause.split('msg="', 1)[1].rsplit('"', 1)[0]
                return f"{line}: {cause}"
            return line
    return lines[-1] if lines else "(no error output)"


def exec_replace(argv: "Sequence[str]", env: "Mapping[str, str] | None" = None) -> "NoReturn":
    """Replace this process with argv: exit status, streams, signals and TTY stay native."""
    import _signal

    argv = list(argv)
    if debug.enabled():
        debug.log("exec " + _join(argv))
    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):  # Python ignores them; exec would keep that
        _signal.signal(signum, _signal.SIG_DFL)
    try:
        if env is None:
            fastos.execv(argv[0], argv)
        fastos.execve(argv[0], argv, dict(env))
    except OSError as exc:
        _fail(f"{argv[0]}: cannot execute: {exc.strerror}")


def _join(argv: "Sequence[str]") -> str:
    import shlex

    return shlex.join(argv)


def spawn(
    argv: "Sequence[str]",
    env: "Mapping[str, str] | None" = None,
    new_session: bool = False,
    stdin_null: bool = False,
    quiet: bool = False,
    stdio: "Mapping[int, int] | None" = None,
) -> int:
    """Start argv as a child sharing our stdio (posix_spawn, no shell); returns its pid.

    *new_session*: the child gets its own session, so signals the terminal sends to our
    process group (Ctrl-C, hang-up) reach only us and we decide where they go.
    *stdin_null*: the child reads /dev/null instead of our stdin; *quiet*: it writes to /dev/null;
    *stdio*: ``{child fd: our fd}`` to hand it instead of ours.
    """
    import _signal  # the C module: ``signal`` would import enum at launch

    argv = list(argv)
    if debug.enabled():
        debug.log("spawn " + _join(argv))
    env = dict(env) if env is not None else fastos.environ
    # Python ignores SIGPIPE/SIGXFSZ; ignored signals survive exec (down to the container's
    # app), so restore the defaults like subprocess's restore_signals does.
    default = (_signal.SIGPIPE, _signal.SIGXFSZ)
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = []
    if stdin_null:
        actions.append((fastos.POSIX_SPAWN_OPEN, 0, fastos.devnull, fastos.O_RDONLY, 0))
    if quiet:
        actions += [(fastos.POSIX_SPAWN_OPEN, fd, fastos.devnull, fastos.O_WRONLY, 0) for fd in (1, 2)]
    actions += [(fastos.POSIX_SPAWN_DUP2, ours, theirs) for theirs, ours in (stdio or {}).items()]
    try:
        return fastos.posix_spawn(argv[0], argv, env, setsid=new_session, setsigdef=default, file_actions=actions)
    except OSError as exc:
        _fail(f"{argv[0]}: cannot execute: {exc.strerror}")
