"""flake-ctl init --user: the user's generic config and podman storage config (as the original)."""

from __future__ import annotations

import argparse
import os
import sys

from .. import settings, yamlio
from ..errors import UsageError
from ..launch.statedir import default_base
from .common import add_user_flag


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = subparsers.add_parser(
        "init",
        help="create the user configuration",
        description="Write ~/.config/flakes.yml and ~/.config/flakes/podman/storage.conf "
        "(user mode only; existing files are kept unless --force).",
    )
    add_user_flag(p)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_init)


def storage_conf_text(graphroot: str) -> str:
    return (
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{graphroot}"\n'
        f'runroot = "{graphroot}/runroot"\n'
        f'rootless_storage_path = "{graphroot}"\n'
    )


def _write(path: str, text: str, force: bool) -> bool:
    if os.path.lexists(path) and not force:
        sys.stderr.write(f"flake-ctl: keeping existing {path} (use --force to overwrite)\n")
        return False
    if os.path.islink(path):
        os.unlink(path)  # replace the link itself, never write through it
    yamlio.write_atomic(path, text)
    print(f"wrote {path}")
    return True


def cmd_init(args: argparse.Namespace) -> int:
    if not args.user:
        raise UsageError("init: only the user setup can be created: call 'flake-ctl init --user' as a normal user")
    if os.getuid() == 0:
        raise UsageError(
            "init --user: root has no user mode (root's flakes are the system flakes); call it as a normal user"
        )
    system = settings.load(user_mode=False)
    own = default_base()  # the default is each caller's own: only a configured shared base is copied
    shared_ids = {
        key: value
        for key, value in (
            ("podman_ids_dir", system.podman_ids_dir),
            ("firecracker_ids_dir", system.firecracker_ids_dir),
        )
        if value != own
    }
    flakes_root = settings.user_flakes_root()
    podman_dir = os.path.join(flakes_root, "podman")
    for d in (flakes_root, podman_dir, os.path.join(flakes_root, "firecracker")):
        os.makedirs(d, mode=0o755, exist_ok=True)
    storage_conf = os.path.join(podman_dir, "storage.conf")
    config = {
        "generic": {
            "flakes_dir": flakes_root,
            **shared_ids,
            "podman_storage_conf": storage_conf,
        }
    }
    config_path = settings.user_config_path()
    _write(config_path, yamlio.dump(config), args.force)
    _write(storage_conf, storage_conf_text(os.path.join(podman_dir, "storage")), args.force)
    print(f"To see flake images with podman: export CONTAINERS_STORAGE_CONF={storage_conf}")
    return 0
