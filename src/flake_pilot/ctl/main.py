"""flake-ctl: assembles the commands' parsers and holds the one error boundary.

Each command module (``ctl/<command>.py``) owns its parser (``add_parser(subparsers)``) and its
handlers; every leaf sets ``func(args) -> int``. ``build_parser()`` also feeds the man pages
(``ctl/manpages.py``) and the shell completion (``ctl/completion.py``), which import this module;
this module imports neither.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import EXIT_CODES, FlakeError
from ..launch import debug

Func = Callable[[argparse.Namespace], int]


def _missing(parser: argparse.ArgumentParser) -> Func:
    def call(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: a subcommand is required (see: {parser.prog} --help)\n")
        return 2

    return call


def _require_subcommand(parser: argparse.ArgumentParser) -> None:
    """Every command group (a parser with subcommands) called without one prints its usage (exit 2)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if parser.get_default("func") is None:
                parser.set_defaults(func=_missing(parser))
            for child in action.choices.values():
                _require_subcommand(child)


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    return f"exit codes:\n{codes}\n\nPILOT_DEBUG=1 (or --debug) shows engine command lines and tracebacks."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flake-ctl",
        description="Register and manage flakes: applications that run in a container (podman) or a "
        "Firecracker microVM but are called like native commands.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"flake-ctl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show engine command lines and tracebacks")
    sub = parser.add_subparsers(title="subcommands", metavar="COMMAND")

    from . import doctor, firecracker, init, listing, podman

    for command in (init, listing, podman, firecracker, doctor):
        command.add_parser(sub)
    _require_subcommand(parser)

    p = sub.add_parser("help", help="show help for a command", description="flake-ctl help [COMMAND ...]")
    p.add_argument("topic", nargs="*", help="command path, e.g. podman register")
    p.set_defaults(func=lambda args: _help(parser, args.topic))
    return parser


def _help(parser: argparse.ArgumentParser, topic: Sequence[str]) -> int:
    if not topic:
        parser.print_help()
        return 0
    parser.parse_args([*topic, "--help"])  # prints the help and exits
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else list(argv))[:1] == ["__complete"]:  # hidden helper for completion
        from .candidates import complete_main

        return complete_main((sys.argv[1:] if argv is None else list(argv))[1:])
    try:
        args = build_parser().parse_args(argv)
        if args.debug:
            debug.enable()
        return int(args.func(args))
    except FlakeError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("flake-ctl: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # unexpected: still one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        hint = ""
        if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
            hint = " (system flakes need root; use --user for your own flakes)"
        return _fail(f"{where}{exc.strerror or exc}{hint}", 1)


def _fail(message: str, code: int) -> int:
    if debug.enabled():
        import traceback

        traceback.print_exc()
    sys.stderr.write(f"flake-ctl: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
