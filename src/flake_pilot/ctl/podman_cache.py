"""flake-ctl podman cache ... (list and prune composed delta images)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from .common import add_format_flag, add_user_flag


def add_parser(podman_subparsers: argparse._SubParsersAction) -> None:
    """Add `podman cache` under the podman command tree. Each leaf sets `func(args) -> int`."""
    cache = podman_subparsers.add_parser(
        "cache",
        help="list or prune composed delta images",
        description="Delta flakes (base, layers, includes, host files) run a composed image that is "
        "built once and cached as localhost/flake-composed/<app>:<key>.",
    )
    sub = cache.add_subparsers(title="cache commands", metavar="COMMAND")
    p = sub.add_parser("list", help="list composed images", description="List composed images.")
    add_format_flag(p)
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser(
        "prune",
        help="remove stale composed images",
        description="Remove composed images of apps that are no longer registered and older "
        "compositions; with --all every composed image. Images used by a container are kept. "
        "A removed entry is composed again at the next launch.",
    )
    p.add_argument("--app", help="only the entries of this app (name, not path)")
    p.add_argument("--all", action="store_true", help="remove current entries too")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_prune)
    cache.set_defaults(func=lambda args: cmd_list(argparse.Namespace(**{"format": "table", **vars(args)})))


def _engine(args: argparse.Namespace) -> tuple[list[str], dict[str, str], str, str]:
    from ..launch import statedir
    from .common import load_settings, podman_engine

    cfg = load_settings(args)
    argv, env = podman_engine(cfg)
    return argv, env, cfg.flakes_dir, os.path.join(statedir.private_dir(cfg.podman_ids_dir), "compose")


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float) or not stamp:
        return ""
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    from ..podman.compose import list_entries
    from .output import Column, emit

    argv, env, _, _ = _engine(args)
    records = []
    for e in sorted(list_entries(argv, env), key=lambda e: (str(e["app"]), -int(str(e["created"] or 0)))):
        records.append({**e, "created": _when(e["created"]), "size": e["size"]})
    columns = [
        Column("app", "APP"),
        Column("tag", "IMAGE"),
        Column("inputs", "INPUTS"),
        Column("size", "SIZE"),
        Column("created", "CREATED"),
        Column("containers", "IN USE"),
    ]
    emit(records, columns, args.format, "Composed delta images", "(none)")
    return 0


def _current_tags(compose_dir: str) -> set[str]:
    """Tags recorded by this user's launches (the entries the next launch will use)."""
    from ..podman.compose import SUFFIX, _read_sidecar

    tags: set[str] = set()
    try:
        names = os.listdir(compose_dir)
    except OSError:
        return tags
    for name in names:
        if name.endswith(SUFFIX):
            side = _read_sidecar(os.path.join(compose_dir, name))
            if side and isinstance(side.get("tag"), str):
                tags.add(str(side["tag"]))
    return tags


def cmd_prune(args: argparse.Namespace) -> int:
    from ..flakeconf import config_path
    from ..launch import runner
    from ..podman.compose import list_entries

    argv, env, flakes_dir, compose_dir = _engine(args)
    entries = [e for e in list_entries(argv, env) if args.app is None or e["app"] == args.app]
    keep: set[str] = set()
    if not args.all:
        keep = _current_tags(compose_dir)
        newest: dict[str, dict[str, object]] = {}
        for e in entries:
            app = str(e["app"])
            if os.path.isfile(config_path(flakes_dir, app)):
                if app not in newest or int(str(e["created"] or 0)) > int(str(newest[app]["created"] or 0)):
                    newest[app] = e
        keep |= {str(e["tag"]) for e in newest.values()}
    removed = kept = 0
    for e in entries:
        if e["tag"] in keep:
            continue
        proc = runner.run([*argv, "rmi", str(e["id"])], env=env, check=False)
        if proc.returncode == 0:
            removed += 1
            print(f"removed {e['tag'] or e['id']} ({e['app']})")
        else:
            kept += 1
            sys.stderr.write(f"flake-ctl: kept {e['tag'] or e['id']}: {runner.first_line(proc.stderr)}\n")
    print(f"{removed} composed image(s) removed, {kept} in use")
    return 0
