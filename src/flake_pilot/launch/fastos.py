"""``os`` for the launchers' warm path, without importing ``os``.

``import os`` costs about 2 ms of every launch (it runs os, _collections_abc, posixpath, stat,
genericpath): a tenth of what a warm launch costs in all. The modules a warm launch runs use
the ``posix`` functions and constants, which ``os`` only re-exports, through this module, plus
the few helpers below (same results as their ``os``/``os.path`` namesakes for the cases used
here). tests/test_ctl_install.py checks that a warm launch imports no ``os``.
"""

import posix
import sys
from posix import (  # noqa: F401 - re-exported: what os re-exports from posix (add as needed)
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_NOFOLLOW,
    O_NONBLOCK,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    POSIX_SPAWN_DUP2,
    POSIX_SPAWN_OPEN,
    WNOHANG,
    X_OK,
    _exit,
    access,
    chmod,
    close,
    dup2,
    execv,
    execve,
    fchmod,
    fork,
    fstat,
    fstatvfs,
    get_terminal_size,
    getpgrp,
    getpid,
    getppid,
    getuid,
    isatty,
    kill,
    killpg,
    listdir,
    lstat,
    memfd_create,
    mkdir,
    open,
    pidfd_open,
    pipe,
    pipe2,
    posix_spawn,
    pread,
    read,
    replace,
    rmdir,
    set_blocking,
    set_inheritable,
    setsid,
    stat,
    tcgetpgrp,
    unlink,
    urandom,
    waitpid,
    waitstatus_to_exitcode,
    write,
)

# stat constants (the same on every Linux architecture; the _stat module costs 0.1 ms to load)
S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000
S_ISVTX, S_IWGRP, S_IWOTH = 0o1000, 0o020, 0o002

devnull = "/dev/null"
defpath = "/bin:/usr/bin"
pathsep = ":"

_ENCODING = sys.getfilesystemencoding()
_ERRORS = sys.getfilesystemencodeerrors()

TYPE_CHECKING = False  # typing is not imported at launch; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

environ: "MutableMapping[str, str]"
if "os" in sys.modules:  # loaded anyway (flake-ctl, tests): the same mapping, changes included
    environ = sys.modules["os"].environ
else:  # a launcher: a snapshot decoded as os.environ decodes it (children get it passed explicitly)
    environ = {key.decode(_ENCODING, _ERRORS): value.decode(_ENCODING, _ERRORS) for key, value in posix.environ.items()}


def fsencode(name: str) -> bytes:
    return name.encode(_ENCODING, _ERRORS)


def join(first: str, *rest: str) -> str:
    """os.path.join: an absolute part starts over."""
    path = first
    for part in rest:
        if part.startswith("/"):
            path = part
        elif not path or path.endswith("/"):
            path += part
        else:
            path += "/" + part
    return path


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def dirname(path: str) -> str:
    head = path[: path.rfind("/") + 1]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


def S_ISDIR(mode: int) -> bool:  # noqa: N802 - the stat module's names
    return mode & S_IFMT == S_IFDIR


def S_ISREG(mode: int) -> bool:  # noqa: N802
    return mode & S_IFMT == S_IFREG


def S_ISLNK(mode: int) -> bool:  # noqa: N802
    return mode & S_IFMT == S_IFLNK


def _mode(path: str, follow: bool = True) -> int:
    try:
        return posix.stat(path).st_mode if follow else posix.lstat(path).st_mode
    except (OSError, ValueError):
        return 0


def exists(path: str) -> bool:
    return _mode(path) != 0


def isdir(path: str) -> bool:
    return S_ISDIR(_mode(path))


def isfile(path: str) -> bool:
    return S_ISREG(_mode(path))


def islink(path: str) -> bool:
    return S_ISLNK(_mode(path, follow=False))


def which(program: str) -> str | None:
    """The executable *program* names (a path, or the first match on PATH), like shutil.which
    without its imports; None when there is none."""
    if "/" in program:
        candidates = [program]
    else:
        candidates = [join(d or ".", program) for d in environ.get("PATH", defpath).split(pathsep)]
    for path in candidates:
        if access(path, X_OK) and not isdir(path):
            return path
    return None


_prctl: "list[Callable[..., int]]" = []


def prctl_function() -> "Callable[..., int]":
    """libc's prctl(2) as a callable ``prctl(option, arg2, arg3, arg4, arg5)``, through the
    ``_ctypes`` C module where it can (it loads in <1 ms; the ``ctypes`` package takes ~3 ms,
    with ``os``). Resolve it before a fork: the child then only calls it."""
    if not _prctl:
        try:
            import _ctypes

            libc = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]  # None: the process
            addr = _ctypes.dlsym(libc, "prctl")
            call = _ctypes.call_function

            def direct(*args: int) -> int:
                result: int = call(addr, args)
                return result

            _prctl.append(direct)
        except (ImportError, AttributeError, OSError):  # pragma: no cover - another Python
            import ctypes

            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
    return _prctl[0]


def std_streams() -> None:
    """Reopen a closed stdin, stdout or stderr on /dev/null (Python leaves sys.stdout etc. None
    for them): the launcher then never writes into a file it opened later on that descriptor, and
    the engine and app see what a native program started with the stream closed would see."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        null = posix.open(devnull, O_RDWR)  # non-inheritable (PEP 446), like any fd Python opens
        if null != fd:
            dup2(null, fd)  # inheritable
            close(null)
        else:
            set_inheritable(fd, True)  # the engine must get it, not start with the stream closed
        import builtins  # fastos.open is posix.open

        setattr(sys, name, builtins.open(fd, "r" if fd == 0 else "w", closefd=False))
