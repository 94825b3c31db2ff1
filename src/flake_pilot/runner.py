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
    from .errors import EngineError  # only on failure: a launch does not import the errors

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

    from .errors import EngineError

    argv = list(argv)
    if timeout is None:
        timeout = _default_timeout
    if debug.enabled():
        debug.log("+ " + _join(argv))
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, no shell: the one place the product starts a program
            argv,
            env=_env(env),
            stdin=None if input_bytes is not None else stdin,
            input=input_bytes,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{_join(argv[:3])}...: no answer within {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise EngineError(f"{_join(argv[:3])} failed: {first_line(proc.stderr)}", proc.returncode)
    return proc


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
