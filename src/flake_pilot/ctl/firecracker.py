"""flake-ctl firecracker ... (pull, register, remove, show, images).

``--user`` is accepted before or after the subcommand. The work lives in
``flake_pilot.firecracker.{images,download,kis,guestfs}``; this module parses and reports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
from types import FrameType
from typing import Any

from ..errors import ConflictError, DownloadError, FlakeError, NotFoundError, UsageError
from .common import add_format_flag, add_user_flag

LAUNCHER = "firecracker-pilot"
BOOT_ARGS = (
    "init=/usr/sbin/sci",
    "console=ttyS0",
    "root=/dev/vda",
    "acpi=off",
    "rd.neednet=1",
    "ip=dhcp",
    "quiet",
)
COMPONENTS = ("kis", "rootfs", "kernel", "initrd")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the `firecracker` command tree. Each leaf sets `func(args) -> int`."""
    fc = subparsers.add_parser(
        "firecracker",
        help="manage Firecracker VM flakes",
        description="Manage VM images and VM flakes. --user may be given before or after the subcommand.",
    )
    add_user_flag(fc)
    sub = fc.add_subparsers(title="subcommands", metavar="COMMAND")

    p = sub.add_parser(
        "pull",
        help="fetch a VM image into the registry",
        description="Fetch a KIWI kis tarball (--kis-image) or rootfs + kernel [+ initrd] into "
        "<registry>/images/NAME. Sources: https:// URLs, file:// URLs or paths; plain http only "
        "with FLAKE_ALLOW_INSECURE_TRANSPORT set. Only a complete, verified image enters the "
        "registry.",
    )
    p.add_argument("--name", required=True, help="image name (registry dir name)")
    p.add_argument("--kis-image", metavar="URL", help="KIWI kis tarball (rootfs, kernel, [initrd], .sha256)")
    p.add_argument("--rootfs", metavar="URL", help="root filesystem image (needs --kernel)")
    p.add_argument("--kernel", metavar="URL", help="kernel image (needs --rootfs)")
    p.add_argument("--initrd", metavar="URL", help="initrd (with --rootfs and --kernel)")
    p.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="[PART=]HEX",
        help="pin a sha256: kis=, rootfs=, kernel=, initrd= (bare HEX: the only source); "
        "without a pin <url>.sha256 is used when it exists",
    )
    p.add_argument(
        "--install-sci",
        action="store_true",
        help="install flake-pilot's sci (and the dirs it needs) into an ext2/3/4 rootfs, no mount",
    )
    p.add_argument("--sci", metavar="FILE", help="install this file as /usr/sbin/sci (implies --install-sci)")
    p.add_argument("--force", action="store_true", help="replace an existing image (once the new one is verified)")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "register",
        help="register a VM flake",
        description="Register --app as a flake running --target inside VM image --vm.",
    )
    p.add_argument("--vm", required=True, help="VM image name (pulled before)")
    p.add_argument("--app", required=True, help="absolute path of the command on the host")
    p.add_argument("--target", help="program path inside the VM (default: --app)")
    p.add_argument("--run-as", metavar="USER", help="user recorded in runtime.runas (default: the caller)")
    p.add_argument(
        "--vmm",
        choices=("firecracker", "qemu"),
        default="firecracker",
        help="the VM monitor: firecracker (default; needs KVM) or qemu (KVM when usable, else TCG emulation)",
    )
    p.add_argument("--resume", action="store_true", help="keep the VM running; every call is a session in it")
    p.add_argument("--force-vsock", action="store_true", help="one-shot calls as sci sessions (the original's flag)")
    p.add_argument(
        "--console",
        action="store_true",
        help="compatibility mode: one-shot calls run on the serial console (no exit status, merged output); "
        "the default for images pulled without --install-sci",
    )
    p.add_argument(
        "--network",
        choices=("user", "tap"),
        default="user",
        help="qemu: user-mode networking (default, rootless) or a TAP device as under Firecracker",
    )
    p.add_argument("--overlay-size", metavar="SIZE", help="writable overlay, e.g. 20GiB, 20GB or 20g")
    p.add_argument("--no-net", action="store_true", help="no ip= boot argument")
    p.add_argument(
        "--include-tar",
        action="extend",
        nargs="+",
        default=[],
        metavar="TAR",
        help="tar archive unpacked into the overlay (needs --overlay-size; repeatable)",
    )
    p.add_argument(
        "--include-path",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="host file or directory copied into the overlay (needs --overlay-size; repeatable)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing registration or flake symlink")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("remove", help="remove a VM flake, or an image and its flakes")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--app", help="absolute path of the registered command")
    what.add_argument("--vm", help="image name: removes its registrations and the image")
    p.add_argument(
        "--force",
        action="store_true",
        help="--app: remove even if symlink or config are missing (never a non-symlink); "
        "--vm: even if an instance is running",
    )
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser(
        "show",
        help="show VM flake instances",
        description="List instances (<ids>/<uid>/<app>[@NAME].vmid) with their status: "
        "running only if the PID is a live firecracker process of that user started for this "
        "instance (its --id); '0' = created, "
        "never started.",
    )
    add_format_flag(p)
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("images", help="list the VM images in the registry")
    add_format_flag(p)
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_images)

    from . import build_deb

    build_deb.add_parsers(sub, "firecracker")


# -- pull ---------------------------------------------------------------------------------------


def _pins(values: list[str], sources: dict[str, Any]) -> dict[str, str]:
    from ..firecracker.download import check_hex

    pins: dict[str, str] = {}
    for value in values:
        part, sep, digest = value.rpartition("=")
        if not sep:
            if len(sources) != 1:
                raise UsageError("--sha256: name the part (rootfs=HEX, kernel=HEX, ...) for components")
            part = next(iter(sources))
        if part not in sources:
            raise UsageError(f"--sha256: {part!r} is not a source of this pull ({', '.join(sources)})")
        pins[part] = check_hex(digest, f"--sha256 {part}")
    return pins


def _sci_file(args: argparse.Namespace, workdir: str) -> str:
    if args.sci:
        if not os.path.isfile(args.sci):
            raise NotFoundError(f"--sci: {args.sci}: no such file")
        return os.path.abspath(args.sci)
    try:
        bundle = importlib.import_module("flake_pilot.sci.bundle")
    except ImportError:
        raise NotFoundError("sci bundle (flake_pilot.sci.bundle) not installed; use --sci FILE") from None
    dest = os.path.join(workdir, "sci")
    bundle.build_zipapp(dest)
    return dest


def _mark_sci(image_dir: str, sci: str) -> None:
    """Record that this image carries flake-pilot's sci: register makes its flakes sci sessions."""
    import hashlib

    from ..firecracker.images import SCI_MARK

    with open(sci, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    with open(os.path.join(image_dir, SCI_MARK), "w", encoding="ascii") as out:
        out.write(digest + "\n")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the staging dir like Ctrl-C does


def cmd_pull(args: argparse.Namespace) -> int:
    from ..firecracker import download, guestfs, images, kis
    from ..launch import names
    from .common import load_settings

    cfg = load_settings(args)
    name = names.app_name(args.name, "--name")
    if args.kis_image and (args.rootfs or args.kernel or args.initrd):
        raise UsageError("--kis-image excludes --rootfs, --kernel and --initrd")
    if not args.kis_image and not (args.rootfs and args.kernel):
        raise UsageError("give --kis-image URL, or --rootfs URL and --kernel URL [--initrd URL]")
    given = {"kis": args.kis_image, "rootfs": args.rootfs, "kernel": args.kernel, "initrd": args.initrd}
    sources = {
        part: download.parse_source(url, f"--{part.replace('kis', 'kis-image')}") for part, url in given.items() if url
    }
    pins = _pins(args.sha256, sources)
    images.check_absent(cfg, name, args.force)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with images.Staging(cfg, name) as stage:
            unverified = []
            for part, source in sources.items():
                dest = os.path.join(stage.download if part == "kis" else stage.image, part)
                digest = download.fetch(source, dest, os.path.basename(source.location) or part)
                expected = pins.get(part)
                origin = "--sha256"
                if expected is None:
                    text = download.fetch_small(download.sibling(source, ".sha256"))
                    origin = download.sibling(source, ".sha256").location
                    if text is not None:
                        expected = download.parse_sha256(text.decode(errors="replace"), origin)
                if expected is None:
                    unverified.append(part)
                elif digest != expected:
                    raise DownloadError(
                        f"{source.location}: sha256 mismatch (expected {expected} from {origin}, got {digest})"
                    )
            if "kis" in sources:
                archive = os.path.join(stage.download, "kis")
                members = kis.extract(archive, stage.image, sources["kis"].location)
                os.unlink(archive)
                where = f"{sources['kis'].location} ({members.checksum})"
                image_files = (os.path.join(stage.image, "rootfs"), os.path.join(stage.image, "checksum"))
                kis.verify_checksum(*image_files, where)
                unverified = [p for p in unverified if p != "kis"]  # the rootfs is verified by the archive
            rootfs = os.path.join(stage.image, "rootfs")
            if args.install_sci or args.sci:
                sci = _sci_file(args, stage.download)
                guestfs.install_sci(rootfs, sci)
                _mark_sci(stage.image, sci)
            ready = guestfs.readiness(rootfs)
            target = stage.commit(args.force)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for part in unverified:
        sys.stderr.write(
            f"flake-ctl: note: {part} not verified (no --sha256 {part}=HEX and no "
            f"{download.sibling(sources[part], '.sha256').location})\n"
        )
    print(f"VM image {name!r} stored in {target}")
    print(f"guest: {ready.summary()}")
    if ready.filesystem and not ready.sci:
        print(f"hint: a VM flake needs /usr/sbin/sci: pull again with --install-sci (--name {name} --force)")
    return 0


# -- register / remove --------------------------------------------------------------------------


def _abs_existing(value: str, option: str) -> str:
    from ..launch.names import absolute_path

    path = absolute_path(os.path.abspath(value), option)
    if not os.path.exists(path):
        raise NotFoundError(f"{option}: {path}: no such file or directory")
    return path


def vm_config(args: argparse.Namespace, image: Any, runas: str) -> dict[str, Any]:
    """The registration in the original's YAML shape (§2.4 of the reference)."""
    boot_args = [a for a in BOOT_ARGS if not (args.no_net and a.startswith("ip="))]
    if args.resume:
        boot_args.append("sci_resume=1")
    if args.force_vsock:
        boot_args.append("sci_force_vsock=1")
    tars = [_abs_existing(t, "--include-tar") for t in args.include_tar]
    paths = [_abs_existing(p, "--include-path") for p in args.include_path]
    return {
        "include": {"tar": tars or None, "path": paths or None},
        "vm": {
            "name": image.name,
            "target_app_path": args.target or args.app,
            "host_app_path": args.app,
            "base_vm": None,
            "layers": None,
            "runtime": {
                "runas": runas,
                "resume": bool(args.resume),
                "force_vsock": bool(args.force_vsock),
                "vmm": args.vmm,
                # sci sessions for every call where the pull installed our sci, unless asked not to
                "console": bool(args.console or not image.sci),
                **({"network": args.network} if args.vmm == "qemu" else {}),
                "firecracker": {
                    "boot_args": boot_args,
                    "overlay_size": args.overlay_size,
                    "rootfs_image_path": image.rootfs,
                    "kernel_image_path": image.kernel,
                    "initrd_path": image.initrd,
                    "mem_size_mib": 4096,
                    "vcpu_count": 2,
                    "cache_type": None,
                },
            },
        },
    }


def cmd_register(args: argparse.Namespace) -> int:
    from .. import registration
    from ..firecracker import images
    from ..launch import names
    from ..sizes import parse_size
    from .common import load_settings, require_abs, user_name

    cfg = load_settings(args)
    names.app_name(args.vm, "--vm")
    args.app = require_abs(args.app, "--app")
    names.app_name(os.path.basename(args.app), "--app name")
    if args.target is not None:
        args.target = require_abs(args.target, "--target")
    if args.overlay_size is not None:
        try:
            parse_size(args.overlay_size)
        except ValueError as exc:
            raise UsageError(f"--overlay-size: {exc} (use e.g. 20GiB, 20GB or 20g)") from None
    elif args.include_tar or args.include_path:
        raise UsageError("--include-tar and --include-path need --overlay-size (they go into the overlay)")
    if args.network != "user" and args.vmm != "qemu":
        raise UsageError("--network: only with --vmm qemu (Firecracker always uses a TAP device)")
    runas = args.run_as or user_name()
    if not _USER.fullmatch(runas):
        raise UsageError(f"--run-as: {runas!r} is not a user name")
    image = images.get(cfg, args.vm)
    config = vm_config(args, image, runas)
    path = registration.register(cfg.flakes_dir, args.app, LAUNCHER, config, args.force)
    print(f"registered {args.app} -> VM {args.vm} ({path})")
    return 0


def _vm_registrations(flakes_dir: str, vm: str) -> list[tuple[str, str]]:
    """(app path, config) of every VM flake using image *vm*; broken configs are reported and skipped."""
    from .. import flakeconf
    from .listing import registrations

    found = []
    for name, path in registrations(flakes_dir):
        try:
            flake = flakeconf.parse(name, path)
        except FlakeError as exc:
            sys.stderr.write(f"flake-ctl: skipping broken registration: {exc}\n")
            continue
        if isinstance(flake, flakeconf.VmFlake) and flake.vm_name == vm:
            if not flake.host_app_path:
                sys.stderr.write(f"flake-ctl: skipping {path}: no vm.host_app_path\n")
                continue
            found.append((flake.host_app_path, path))
    return found


def cmd_remove(args: argparse.Namespace) -> int:
    from .. import registration
    from ..firecracker import images
    from ..launch import names
    from .common import load_settings, require_abs

    cfg = load_settings(args)
    if args.app:
        app = require_abs(args.app, "--app")
        registration.remove(cfg.flakes_dir, app, LAUNCHER, args.force)
        print(f"removed {app}")
        return 0
    vm = names.app_name(args.vm, "--vm")
    running = [
        r["name"]
        for r in _instances(cfg.firecracker_ids_dir, cfg.flakes_dir)
        if r["image"] == vm and r["status"] == "running"
    ]
    if running and not args.force:
        raise ConflictError(
            f"VM image {vm!r} is in use by running instance(s) {', '.join(running)}; stop them first or use --force"
        )
    apps = _vm_registrations(cfg.flakes_dir, vm)
    has_image = os.path.lexists(images.image_dir(cfg, vm))
    if not apps and not has_image:
        raise NotFoundError(f"{images.image_dir(cfg, vm)}: no VM image {vm!r} and no flakes using it")
    for app, _config in apps:
        registration.remove(cfg.flakes_dir, app, LAUNCHER, force=not os.path.lexists(app))
        print(f"removed {app}")
    if has_image:
        print(f"removed VM image {images.remove(cfg, vm)}")
    return 0


# -- show / images ------------------------------------------------------------------------------


def _instances(ids_dir: str, flakes_dir: str) -> list[dict[str, Any]]:
    import pwd

    from .. import flakeconf
    from ..launch import statedir
    from ..launch.firecracker.instances import InstancePaths, is_vm
    from .common import user_name

    records: list[dict[str, Any]] = []
    try:
        uids = sorted(e for e in os.listdir(ids_dir) if e.isdigit())
    except OSError:
        return records
    for uid in uids:
        directory = os.path.join(ids_dir, uid)
        try:
            files = sorted(f for f in os.listdir(directory) if f.endswith(".vmid"))
        except OSError:
            continue  # another user's private dir
        for file in files:
            meta = file[: -len(".vmid")]
            try:
                vmid = (statedir.read_file(os.path.join(directory, file)) or "").split()
            except (FlakeError, OSError) as exc:
                sys.stderr.write(f"flake-ctl: skipping {os.path.join(directory, file)}: {exc}\n")
                continue
            app = meta.split("@", 1)[0]
            config = os.path.join(flakes_dir, app + ".yaml")
            if not os.path.isfile(config):
                try:
                    home = pwd.getpwuid(int(uid)).pw_dir
                    config = os.path.join(home, ".config", "flakes", app + ".yaml")
                except KeyError:
                    pass
            image = None
            shown: str | None = config if os.path.isfile(config) else None
            if shown:
                try:
                    flake = flakeconf.parse(app, shown)
                    image = flake.vm_name if isinstance(flake, flakeconf.VmFlake) else None
                except FlakeError:
                    pass
            ident = vmid[0] if vmid else ""
            fc_id = InstancePaths(directory, meta).fc_id
            status = "unknown"  # '0' = created, never started: stopped
            if ident.isdigit():
                status = "running" if is_vm(int(ident), fc_id, int(uid)) else "stopped"
            records.append(
                {
                    "name": meta,
                    "user": user_name(int(uid)),
                    "id": ident,
                    "status": status,
                    "image": image,
                    "config": shown,
                }
            )
    return records


def cmd_show(args: argparse.Namespace) -> int:
    from .common import load_settings
    from .output import Column, emit

    cfg = load_settings(args)
    columns = [
        Column("name", "NAME"),
        Column("user", "USER"),
        Column("id", "ID"),
        Column("status", "STATUS"),
        Column("image", "IMAGE"),
        Column("config", "CONFIG"),
    ]
    emit(
        _instances(cfg.firecracker_ids_dir, cfg.flakes_dir),
        columns,
        args.format,
        f"Flake firecracker instances in {cfg.firecracker_ids_dir}",
        "No instance(s) found",
    )
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from ..firecracker import guestfs, images
    from .common import load_settings
    from .output import Column, emit

    cfg = load_settings(args)
    records = []
    for image in images.list_images(cfg):
        ready = guestfs.readiness(image.rootfs)
        records.append(
            {
                "name": image.name,
                "rootfs_size": image.rootfs_size,
                "initrd": "yes" if image.initrd else "no",
                "guest": "ready" if ready.ready else ready.summary(),
                "path": image.path,
            }
        )
    columns = [
        Column("name", "NAME"),
        Column("rootfs_size", "ROOTFS BYTES"),
        Column("initrd", "INITRD"),
        Column("guest", "GUEST"),
        Column("path", "PATH"),
    ]
    emit(records, columns, args.format, f"Firecracker VM images in {images.images_dir(cfg)}", "No image(s) found")
    return 0
