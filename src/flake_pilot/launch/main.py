"""The one launcher main of podman-pilot and firecracker-pilot.

The app is the name the launcher was called by (``basename(argv[0])``, the symlink). The app's
own status passes through; a failure of the launcher itself, expected or a bug, is one line on
stderr and exit 125 (``errors.launcher_failure``); a signal that ends the launcher's own work
(``KeyboardInterrupt``, carrying ``signum`` when it was SIGTERM/SIGHUP) is one line and 128+N. As
the process entry point the status is final and nothing is buffered: the interpreter's teardown
(ms) is skipped.
"""

import sys

from . import fastos

TYPE_CHECKING = False  # typing costs ms at launch
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn


def run(launcher: str, launch: "Callable[[str, list[str]], int]", argv: "list[str] | None" = None) -> "NoReturn":
    """Run ``launch(app, args)`` for the app named by *argv* (default ``sys.argv``) and end the
    process with its status. *launcher*: the launcher's own name, refused as an app name (it is
    called through an app symlink). With *argv* given (in-process callers) the end is
    ``SystemExit``, with the teardown."""
    fastos.std_streams()  # a closed stdout (`app >&-`): one line and the app's status, no traceback
    args = list(sys.argv if argv is None else argv)
    app = fastos.basename(args[0]) if args else ""
    try:
        if app in (launcher, "") or app.startswith(".") or app.endswith(".py"):
            from ..errors import UsageError

            engine = launcher.removesuffix("-pilot")
            raise UsageError(
                f"call {launcher} through an app symlink (flake-ctl {engine} register --app /usr/bin/NAME ...)"
            )
        code = launch(app, args[1:])
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP while the launcher worked (runner.Stopped)
        sys.stderr.write(f"{app if app.isprintable() else ascii(app)}: interrupted\n")
        code = 128 + getattr(exc, "signum", 2)
    except Exception as exc:
        from ..errors import launcher_failure  # only on failure: not imported at launch

        code = launcher_failure(app or launcher, exc)
    if argv is not None:
        raise SystemExit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    fastos._exit(code)
