"""One error hierarchy. Each class carries its documented exit code.

flake-ctl exits with ``exit_code``; the launchers exit with ``LAUNCHER_EXIT`` (125, like
``podman run``) for any failure of their own, so an app's own 1..124 stay unambiguous.
"""

from __future__ import annotations

LAUNCHER_EXIT = 125


class FlakeError(Exception):
    """Base class: a failure that is reported as one line on stderr."""

    exit_code = 1


class UsageError(FlakeError):
    exit_code = 2


class ConfigError(FlakeError):
    """Malformed or invalid configuration; the message names file and key."""

    exit_code = 3


class NotFoundError(FlakeError):
    """A registration, image or file that was asked for does not exist."""

    exit_code = 4


class ConflictError(FlakeError):
    """Something is in the way (existing file, registration, running instance)."""

    exit_code = 5


class EngineError(FlakeError):
    """The engine (podman, firecracker, ...) is missing or failed."""

    exit_code = 6

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class DownloadError(FlakeError):
    """A download failed or did not verify."""

    exit_code = 7


class SecurityError(FlakeError):
    """Unsafe state refused: symlinks, foreign owners, insecure permissions."""

    exit_code = 8


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "other failure",
    2: "usage error (bad command line)",
    3: "configuration error (file and key named in the message)",
    4: "not found (registration, image, file)",
    5: "conflict (something exists; see --force)",
    6: "engine missing or engine command failed",
    7: "download or checksum failure",
    8: "refused for safety (symlink, owner, permissions)",
    130: "interrupted (Ctrl-C)",
}


def launcher_failure(who: str, exc: BaseException) -> int:
    """The launchers' one error boundary (podman-pilot, firecracker-pilot): a failure of the
    launcher itself, expected or a bug, is one line on stderr naming the app and exit status
    LAUNCHER_EXIT, so the app's own statuses stay unambiguous. ``PILOT_DEBUG=1`` adds the
    traceback."""
    import sys
    import traceback

    from .launch import debug

    if isinstance(exc, FlakeError):
        message = str(exc)
    elif isinstance(exc, OSError):  # a state or image file the launcher could not use
        message = (f"{exc.filename}: " if exc.filename else "") + str(exc.strerror or exc)
    else:  # a bug
        message = f"internal error: {type(exc).__name__}: {exc}"
        if not debug.enabled():
            message += " (PILOT_DEBUG=1 shows more)"
    if debug.enabled():
        traceback.print_exception(exc)
    who = who if who.isprintable() else ascii(who)  # a symlink name with a newline: still one line
    sys.stderr.write(f"{who}: {' '.join(message.splitlines())}\n")
    return LAUNCHER_EXIT
