"""Pure argv building for podman-pilot (no I/O except the volume-path check).

Caller arguments (``@NAME``, ``%option``, ``@@x``/``%%x``) are parsed by ``flake_pilot.launch.callargs``
with podman-pilot's option set.
"""

from .. import fastos
from ..callargs import PODMAN_OPTIONS as OPTIONS
from ..callargs import CallerArgs, split

TYPE_CHECKING = False  # typing is not imported at launch; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

MAX_EXPANSIONS = 64  # %VAR substitutions per runtime.podman entry
MAX_EXPANDED = 65536  # characters of one expanded entry
# chosen by the launcher from the caller's terminal, never taken from the registration
TTY_FLAGS = frozenset({"-t", "-i", "-it", "-ti", "--tty", "--interactive", "--tty=true", "--interactive=true"})
KEEPALIVE = ("/run/podman-init", "-P")  # catatonit (mounted by --init) in pause mode


def split_caller_args(args: "Sequence[str]", validate: "Callable[[str], str] | None" = None) -> CallerArgs:
    """Sort caller args with podman-pilot's option set (``callargs.split``): every ``@NAME`` is
    validated, the first one wins (as in the original); an unknown ``%x`` is an error (the original
    silently swallowed it). ValueError carries the message."""
    return split(args, OPTIONS, validate)


def _is_var_start(ch: str) -> bool:
    return "A" <= ch <= "Z" or ch == "_"


def _is_var_char(ch: str) -> bool:
    return "A" <= ch <= "Z" or ch == "_" or "0" <= ch <= "9"


def expand_vars(text: str, env: "Mapping[str, str]") -> str:
    """Replace ``%VAR`` (``[A-Z_][A-Z0-9_]*``) by the caller's environment value.

    One pass: values are inserted literally and never expanded again, so the work is bounded.
    KeyError names an unset variable, ValueError reports too many/too long expansions.
    """
    out: list[str] = []
    i, count, n = 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 1 < n and _is_var_start(text[i + 1]):
            j = i + 2
            while j < n and _is_var_char(text[j]):
                j += 1
            name = text[i + 1 : j]
            if name not in env:
                raise KeyError(name)
            count += 1
            if count > MAX_EXPANSIONS:
                raise ValueError(f"more than {MAX_EXPANSIONS} %VAR expansions")
            out.append(env[name])
            i = j
        else:
            out.append(ch)
            i += 1
    result = "".join(out)
    if len(result) > MAX_EXPANDED:
        raise ValueError(f"expands to more than {MAX_EXPANDED} characters")
    return result


def split_opts(opts: "Sequence[str]") -> list[str]:
    """Each ``runtime.podman`` entry is split at its FIRST space into at most two argv items
    (``"--volume /a:/b"`` -> ``["--volume", "/a:/b"]``), exactly like the original."""
    items: list[str] = []
    for entry in opts:
        head, sep, tail = entry.partition(" ")
        items.append(head)
        if sep:
            items.append(tail)
    return items


def _volume_host(spec: str) -> str | None:
    host = spec.split(":", 1)[0]
    return host if host.startswith("/") else None  # named volumes are podman's business


def missing_volumes(items: "Sequence[str]", exists: "Callable[[str], bool]" = fastos.exists) -> list[str]:
    """Host paths of volume options (the forms ``drop_missing_volumes`` knows) that do not exist."""
    found = []
    for i, item in enumerate(items):
        spec = None
        if item in ("-v", "--volume") and i + 1 < len(items):
            spec = items[i + 1]
        elif item.startswith(("--volume=", "-v=")):
            spec = item.partition("=")[2]
        host = _volume_host(spec) if spec is not None else None
        if host is not None and not exists(host):
            found.append(host)
    return found


def drop_missing_volumes(items: "Sequence[str]", exists: "Callable[[str], bool]" = fastos.exists) -> list[str]:
    """``%ignore_missing_volume_path``: drop volume options whose host path does not exist.

    Handles ``--volume=/p:/c``, ``-v=/p:/c`` and the two-item forms ``--volume /p:/c``,
    ``-v /p:/c`` (the original only checked the ``=`` forms).
    """
    out: list[str] = []
    i = 0
    while i < len(items):
        item = items[i]
        if item in ("-v", "--volume") and i + 1 < len(items):
            host = _volume_host(items[i + 1])
            if host is None or exists(host):
                out.extend((item, items[i + 1]))
            i += 2
            continue
        for prefix in ("--volume=", "-v="):
            if item.startswith(prefix):
                host = _volume_host(item[len(prefix) :])
                if host is not None and not exists(host):
                    break
        else:
            out.append(item)
        i += 1
    return out


def user_opts(items: "Sequence[str]") -> list[str]:
    """Registration options minus the TTY flags the launcher decides itself."""
    return [item for item in items if item not in TTY_FLAGS]


def engine(podman: str, debug: bool) -> list[str]:
    """The podman prefix; warnings (e.g. rootless "/ is not a shared mount") would pollute the
    app's stderr, so only errors are shown unless debugging."""
    return [podman] if debug else [podman, "--log-level=error"]


def tty_flags(tty: bool) -> list[str]:
    return ["-i", "-t"] if tty else ["-i"]


def init_flag(tty: bool) -> list[str]:
    return ["--init"] if tty else []


def run_argv(
    prefix: "Sequence[str]",
    image: str,
    target: str,
    opts: "Sequence[str]",
    app_args: "Sequence[str]",
    tty: bool,
    cidfile: str,
    pidfile: str,
) -> list[str]:
    """One-shot: ``podman run --rm`` (removed at exit).

    Without a terminal the app is PID 1 (no --init), so runc's exact 126/127 reach scripts and
    proc.py makes signals from the caller end the app. With a terminal, --init (catatonit)
    makes Ctrl-C, typed into the container's terminal, work for apps without a SIGINT handler;
    a missing target then exits 1 (catatonit's code) with its message on the terminal.
    """
    return _app_container_argv([*prefix, "run", "--rm"], image, target, opts, app_args, tty, cidfile, pidfile)


def create_argv(
    prefix: "Sequence[str]",
    image: str,
    target: str,
    opts: "Sequence[str]",
    app_args: "Sequence[str]",
    tty: bool,
    cidfile: str,
    pidfile: str,
) -> list[str]:
    """Attach mode: a kept container running the app, started with ``start --attach``."""
    return _app_container_argv([*prefix, "create"], image, target, opts, app_args, tty, cidfile, pidfile)


def _app_container_argv(
    command: list[str],
    image: str,
    target: str,
    opts: "Sequence[str]",
    app_args: "Sequence[str]",
    tty: bool,
    cidfile: str,
    pidfile: str,
) -> list[str]:
    """What one-shot's ``run --rm`` and attach's ``create`` share: the app as the container's
    command, its state files, the caller's terminal choice."""
    argv = [*command, *tty_flags(tty), *init_flag(tty), "--pull=missing", "--cidfile", cidfile]
    argv += ["--conmon-pidfile", pidfile]
    if target != "/":
        argv += ["--entrypoint", target]
    return [*argv, *opts, image, *app_args]


def resume_create_argv(
    prefix: "Sequence[str]", image: str, opts: "Sequence[str]", cidfile: str, pidfile: str
) -> list[str]:
    """Resume: a long-lived instance idling in catatonit's pause mode (no ``sleep`` needed)."""
    return [
        *prefix,
        "run",
        "-d",
        "--init",
        "--pull=missing",
        "--cidfile",
        cidfile,
        "--conmon-pidfile",
        pidfile,
        "--entrypoint",
        KEEPALIVE[0],
        *opts,
        image,
        *KEEPALIVE[1:],
    ]


def exec_argv(
    prefix: "Sequence[str]",
    cid: str,
    target: str,
    app_args: "Sequence[str]",
    tty: bool,
    session: str,
) -> list[str]:
    """Resume: run the app in the instance; *session* tags it so signals can be forwarded."""
    return [*prefix, "exec", *tty_flags(tty), "-e", f"{SESSION_VAR}={session}", cid, target, *app_args]


SESSION_VAR = "FLAKE_PILOT_SESSION"
