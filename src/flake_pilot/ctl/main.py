"""flake-ctl: the parser tree and the one error boundary.

Subcommand modules are imported only when their command runs. Every leaf sets
``func(args) -> int``. ``build_parser()`` is also used to generate man pages and completions.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__, debug
from ..errors import EXIT_CODES, FlakeError
from .common import add_format_flag, add_user_flag

Func = Callable[[argparse.Namespace], int]


def _lazy(module: str, name: str) -> Func:
    def call(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"flake_pilot.ctl.{module}"), name)(args) or 0)

    call.__name__ = name
    return call


def _missing(parser: argparse.ArgumentParser) -> Func:
    def call(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: a subcommand is required (see: {parser.prog} --help)\n")
        return 2

    return call


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    return f"exit codes:\n{codes}\n\nPILOT_DEBUG=1 (or --debug) shows engine command lines and tracebacks."


def _add_podman(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    podman = sub.add_parser(
        "podman",
        help="manage container flakes (podman)",
        description="Manage container flakes. --user may be given before or after the subcommand.",
    )
    add_user_flag(podman)
    podman.set_defaults(func=_missing(podman))
    psub = podman.add_subparsers(title="subcommands", metavar="COMMAND")

    p = psub.add_parser(
        "pull",
        help="pull a container image from a registry",
        description="Pull an image into the flake storage (podman pull, no retry).",
    )
    p.add_argument("--uri", required=True, help="image reference, e.g. registry.example.com/tools/aws-cli:latest")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=_lazy("podman", "cmd_pull"))

    p = psub.add_parser(
        "load",
        help="load a container image from an archive",
        description="Load an OCI/docker archive into the flake storage. If OCI does not exist, "
        "the last (highest) match of OCI* is used.",
    )
    p.add_argument("--oci", required=True, metavar="OCI", help="archive file (podman save output)")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=_lazy("podman", "cmd_load"))

    p = psub.add_parser(
        "register",
        help="register a container flake",
        description="Register --app as a flake running --target inside --container. Values starting with "
        "'-' must be escaped with a backslash: --opt '\\--net host' (one leading '\\' is stripped).",
    )
    p.add_argument("--container", required=True, help="image name (as in the flake storage)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--app", help="absolute path of the command on the host, e.g. /usr/bin/aws")
    what.add_argument(
        "--info", action="store_true", help="print the image's <name>.yaml info file instead of registering"
    )
    p.add_argument("--target", help="program path inside the container (default: --app; '/' = image entrypoint)")
    p.add_argument("--base", help="base container for a delta container")
    p.add_argument(
        "--check-host-dependencies", action="store_true", help="provision host dependencies into the instance"
    )
    p.add_argument(
        "--layer",
        action="extend",
        nargs="+",
        default=[],
        metavar="LAYER",
        help="additional image layered on top of --base (repeatable)",
    )
    p.add_argument(
        "--include-tar",
        action="extend",
        nargs="+",
        default=[],
        metavar="TAR",
        help="tar archive unpacked into the instance (repeatable)",
    )
    p.add_argument(
        "--include-path",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="host file or directory copied into the instance (repeatable)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep one instance running; each call runs podman exec")
    mode.add_argument("--attach", action="store_true", help="keep the instance; each call attaches/starts it")
    p.add_argument(
        "--opt",
        action="extend",
        nargs="+",
        default=[],
        metavar="OPT",
        help="podman run option, e.g. '\\--net host' (repeatable; %%VAR expanded at launch)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing registration or file at --app")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=_lazy("podman", "cmd_register"))

    p = psub.add_parser(
        "remove",
        help="remove a flake or a container and its flakes",
        description="Remove one registration (--app) or an image and every flake using it (--container).",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--app", help="absolute path of the registered command")
    target.add_argument("--container", help="image name: removes its registrations and the image")
    p.add_argument(
        "--force",
        action="store_true",
        help="remove even if the symlink or config is missing/modified (never deletes a non-symlink)",
    )
    add_user_flag(p, inherited=True)
    p.set_defaults(func=_lazy("podman", "cmd_remove"))

    p = psub.add_parser(
        "show",
        help="show container flake instances",
        description="List instances (container-ID files) with their status.",
    )
    add_format_flag(p)
    add_user_flag(p, inherited=True)
    p.set_defaults(func=_lazy("podman", "cmd_show"))

    from . import podman_cache

    podman_cache.add_parser(psub)


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
    parser.set_defaults(func=_missing(parser))
    sub = parser.add_subparsers(title="subcommands", metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create the user configuration",
        description="Write ~/.config/flakes.yml and ~/.config/flakes/podman/storage.conf "
        "(user mode only; existing files are kept unless --force).",
    )
    add_user_flag(p)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_lazy("init", "cmd_init"))

    p = sub.add_parser(
        "list",
        help="list registered flakes",
        description="List the registered flakes of one scope (system, or --user).",
    )
    add_user_flag(p)
    add_format_flag(p)
    p.set_defaults(func=_lazy("listing", "cmd_list"))

    _add_podman(sub)

    from . import firecracker

    firecracker.add_parser(sub)
    fc = sub.choices.get("firecracker")
    if fc is not None and fc.get_default("func") is None:
        fc.set_defaults(func=_missing(fc))

    from . import doctor

    doctor.add_parser(sub)

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
        from ..completion import complete_main

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
