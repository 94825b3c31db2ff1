"""flake-ctl podman|firecracker build-deb (a flake as a Debian package) and deb-hook (its scripts).

The work lives in ``flake_pilot.debpkg``; this module parses, checks and reports.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
from typing import Any

from ..errors import NotFoundError, UsageError
from .common import add_user_flag

ENGINES = {"podman": "podman-pilot", "firecracker": "firecracker-pilot"}


def _extend(p: argparse.ArgumentParser, flag: str, metavar: str, help_text: str) -> None:
    p.add_argument(flag, action="extend", nargs="+", default=[], metavar=metavar, help=help_text)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--app",
        action="append",
        required=True,
        metavar="HOST_PATH[:TARGET]",
        help="command on the host and program in the image (default TARGET: HOST_PATH); repeatable",
    )
    meta = p.add_argument_group("package metadata")
    meta.add_argument("--name", help="package name (default: from the image name)")
    meta.add_argument("--version", help="package version (default: image version label or tag, else 0)")
    meta.add_argument("--maintainer", help="'Name <email>' (default: $DEBFULLNAME <$DEBEMAIL>)")
    meta.add_argument("--description", help="one-line summary (default: image description label)")
    meta.add_argument("--architecture", help="Debian architecture (default: the image's; VM: this host's)")
    meta.add_argument("--homepage", metavar="URL", help="Homepage field")
    meta.add_argument(
        "--depends",
        action="extend",
        nargs="+",
        default=[],
        metavar="DEP",
        help="additional dependency, e.g. 'rsync (>= 3)' (repeatable)",
    )
    out = p.add_argument_group("output")
    where = out.add_mutually_exclusive_group()
    where.add_argument("--output", default=".", metavar="DIR", help="directory for the .deb (default: .)")
    where.add_argument(
        "--repo", metavar="DIR", help="write the .deb into DIR and (re)write DIR's apt index (Packages, Release)"
    )
    out.add_argument("--compression", choices=("xz", "gzip", "none"), default="xz", help="data compression")
    add_user_flag(p, inherited=True)


def add_parsers(subparsers: argparse._SubParsersAction, engine: str) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``build-deb`` and ``deb-hook`` to the *engine* command."""
    if engine == "podman":
        p = subparsers.add_parser(
            "build-deb",
            help="build a Debian package of a container flake",
            description="Build a .deb that installs an image and registers --app commands running in it "
            "(postinst loads the image into the system flake storage and registers; removal undoes both). "
            "Reproducible: SOURCE_DATE_EPOCH fixes every timestamp. No root needed.",
        )
        image = p.add_mutually_exclusive_group(required=True)
        image.add_argument("--container", metavar="IMAGE", help="image in the flake storage (saved into the package)")
        image.add_argument("--oci", metavar="FILE", help="image archive (podman save output; oci or docker)")
        image.add_argument("--pull", metavar="REFERENCE", help="registry reference pulled when the package installs")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--resume", action="store_true", help="register with --resume")
        mode.add_argument("--attach", action="store_true", help="register with --attach")
        _extend(p, "--opt", "OPT", "podman run option as for register, e.g. '\\--net host' (repeatable)")
        p.add_argument("--base", metavar="IMAGE", help="base container of a delta container (must exist on the host)")
        _extend(p, "--layer", "IMAGE", "layer image on top of --base (must exist on the host; repeatable)")
        p.add_argument("--check-host-dependencies", action="store_true", help="as for register")
    else:
        p = subparsers.add_parser(
            "build-deb",
            help="build a Debian package of a VM flake",
            description="Build a .deb that installs a VM image and registers --app commands running in it "
            "(postinst puts the image into the VM registry and registers; removal undoes both). "
            "Reproducible: SOURCE_DATE_EPOCH fixes every timestamp. No root needed.",
        )
        image = p.add_mutually_exclusive_group(required=True)
        image.add_argument("--vm", metavar="NAME", help="VM image in the registry (pulled before)")
        image.add_argument("--rootfs", metavar="FILE", help="root filesystem image (with --kernel)")
        p.add_argument("--kernel", metavar="FILE", help="kernel image (with --rootfs)")
        p.add_argument("--initrd", metavar="FILE", help="initrd (with --rootfs)")
        p.add_argument("--resume", action="store_true", help="register with --resume")
        p.add_argument("--force-vsock", action="store_true", help="register with --force-vsock")
        p.add_argument("--overlay-size", metavar="SIZE", help="register with --overlay-size, e.g. 20GiB")
        p.add_argument("--no-net", action="store_true", help="register with --no-net")
        p.add_argument("--run-as", metavar="USER", help="runtime.runas of the registrations (default: root)")
    p.add_argument(
        "register_options",
        nargs="*",
        metavar="-- REGISTER_OPTION",
        help=f"after '--': more options for 'flake-ctl {engine} register', given to every app's registration",
    )
    _extend(p, "--include-tar", "TAR", "tar archive shipped in the package and unpacked into the instance")
    _extend(p, "--include-path", "PATH", "host path on the installing host copied into the instance")
    _common_options(p)
    register = subparsers.choices["register"]  # the package's registrations are made (and checked) by it
    p.set_defaults(func=cmd_build_podman if engine == "podman" else cmd_build_firecracker, register_parser=register)

    p = subparsers.add_parser(
        "deb-hook",
        help="register or remove a package's flakes (run by its maintainer scripts)",
        description="What the scripts of a package made by build-deb run, as root: 'configure' loads the "
        "package's image and registers its apps (replacing an older version's); 'remove' ends their "
        "instances and removes registrations, symlinks and images of the package.",
    )
    p.add_argument("action", choices=("configure", "remove"))
    p.add_argument("package", help="Debian package name")
    p.set_defaults(func=cmd_hook, engine=engine, register_parser=register)


# -- shared ---------------------------------------------------------------------------------------


def _includes(args: argparse.Namespace, package: str, work: str) -> tuple[list[str], dict[str, str]]:
    """Copy --include-tar files into the work dir; their paths once installed, and the payload."""
    from ..debpkg import PACKAGES_DIR
    from .common import require_abs

    rels, payload = [], {}
    for index, value in enumerate(args.include_tar):
        path = require_abs(value, "--include-tar")
        if not os.path.isfile(path):
            raise NotFoundError(f"--include-tar: {path}: no such file")
        base = re.sub(r"[^A-Za-z0-9._+-]", "_", os.path.basename(path)).lstrip(".") or "include.tar"
        rel = f"include/{index}-{base}"
        copy = os.path.join(work, f"include-{index}")
        shutil.copyfile(path, copy)
        payload[rel] = copy
        rels.append(os.path.join(PACKAGES_DIR, package, rel))
    for value in args.include_path:
        require_abs(value, "--include-path")
    return rels, payload


def _meta(args: argparse.Namespace, name: str, version: str, arch: str, summary: str, details: list[str]) -> Any:
    from .. import __version__
    from ..debpkg import control

    maintainer = args.maintainer
    if maintainer is None:
        full = os.environ.get("DEBFULLNAME", "flake-ctl build-deb")
        maintainer = f"{full} <{os.environ.get('DEBEMAIL', 'root@localhost')}>"
    depends = [f"flake-pilot (>= {__version__})"]
    if args.engine_dep:
        depends.append(args.engine_dep)
    depends += [control.one_line(d, "--depends") for d in args.depends]
    return control.Meta(
        package=name,
        version=version,
        architecture=control.architecture(arch),
        maintainer=control.one_line(maintainer, "--maintainer"),
        summary=control.one_line(args.description or summary, "--description"),
        details=tuple(details),
        depends=tuple(depends),
        homepage=control.one_line(args.homepage, "--homepage") if args.homepage else None,
    )


def _check_early(args: argparse.Namespace) -> list[Any]:
    """What can be refused before any work: apps, names given, output dir."""
    from ..debpkg import build, control

    apps = [build.parse_app(v) for v in args.app]
    if len({a.path for a in apps}) != len(apps):
        raise UsageError("--app: the same host path is given twice")
    if args.name is not None:
        control.package_name(args.name)
    if args.version is not None:
        control.version(args.version)
    if args.architecture is not None:
        control.architecture(args.architecture)
    out = args.repo or args.output
    if not os.path.isdir(out):
        raise UsageError(f"{'--repo' if args.repo else '--output'}: {out}: no such directory")
    build.source_date_epoch()
    return apps


def _register_options(args: argparse.Namespace, engine: str, options: list[str], image: str, app: Any) -> list[str]:
    """*options* plus those after '--', checked by parsing a trial ``register`` command line."""
    from ..debpkg.hooks import parse_register, register_argv

    options = [*options, *args.register_options]
    argv = register_argv(engine, image, {"app": app.path, "target": app.target}, options)
    try:
        trial = parse_register(args.register_parser, argv)
    except SystemExit as exc:
        raise UsageError(f"register options {' '.join(options)!r}: {exc.code}") from None
    given = (trial.app, trial.target, getattr(trial, "container", None) or getattr(trial, "vm", None))
    if given != (app.path, app.target, image) or getattr(trial, "info", False) or getattr(trial, "user", False):
        raise UsageError("after '--': only register options; the image, --app, --target and the scope are build-deb's")
    return options


def _finish(args: argparse.Namespace, deb: str, mtime: int) -> int:
    from ..debpkg import repo

    print(f"built {deb}")
    if args.repo:
        listed = repo.write(args.repo, mtime)
        print(f"repository {os.path.abspath(args.repo)}: {len(listed)} package(s) in Packages")
    return 0


def _app_lines(apps: list[Any]) -> list[str]:
    return [f"  {a.path} -> {a.target}" for a in apps]


# -- podman ---------------------------------------------------------------------------------------


def cmd_build_podman(args: argparse.Namespace) -> int:
    from ..debpkg import build, control
    from ..debpkg import image as debimage
    from ..launch.runner import which
    from .common import load_settings, podman_engine

    apps = _check_early(args)
    if any(o in ("", "\\") or "\0" in o for o in args.opt):
        raise UsageError("--opt: empty or NUL-containing podman option")
    if args.layer and not args.base:
        raise UsageError("--layer: layers need a base container (--base)")
    base = control.image_reference(args.base, "--base") if args.base else None
    layers = [control.image_reference(x, "--layer") for x in args.layer]
    given = args.container or args.pull
    reference = control.image_reference(given, "--container" if args.container else "--pull") if given else args.oci
    mtime = build.source_date_epoch()
    out = args.repo or args.output
    with build.staging(out) as work:
        saved, named = None, reference
        if args.container:
            cfg = load_settings(args)
            podman, env = podman_engine(cfg)
            saved = debimage.save(podman, env, args.container, work, mtime, "--container")
        elif args.oci:
            cfg = load_settings(args)
            saved, loaded = debimage.from_archive(which(cfg.podman_binary), args.oci, work, mtime)
            named = loaded or re.sub(r"(\.(tar|oci|docker|gz|xz|zst))+$", "", os.path.basename(args.oci))
        name = control.package_name(args.name or control.default_name(named), "--name (default from the image)")
        control.image_repo(name)
        build.check_apps(apps, name)
        labels = saved.labels if saved else {}
        tag = named.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2] or None
        version = args.version or control.default_version(tag, labels.get("org.opencontainers.image.version"))
        arch = args.architecture or (control.DEBIAN_ARCH.get(saved.architecture or "", "all") if saved else "all")
        summary = labels.get("org.opencontainers.image.description") or labels.get("org.opencontainers.image.title")
        summary = summary or f"{', '.join(os.path.basename(a.path) for a in apps)} from the container image {named}"
        summary = summary.splitlines()[0][:200]
        details = [
            "This package registers container flakes (flake-pilot, podman):",
            *_app_lines(apps),
            f"Image: {named}" + ("" if saved else " (pulled when the package is installed)"),
        ]
        include_tar, payload = _includes(args, name, work)
        options = ["--resume"] * args.resume + ["--attach"] * args.attach
        options += [item for opt in args.opt for item in ("--opt", opt)]
        options += ["--base", base] if base else []
        options += [item for layer in layers for item in ("--layer", layer)]
        options += ["--check-host-dependencies"] * args.check_host_dependencies
        options += [item for tar in include_tar for item in ("--include-tar", tar)]
        options += [item for path in args.include_path for item in ("--include-path", path)]
        register = _register_options(args, "podman", options, reference, apps[0])
        source: dict[str, Any]
        if saved:
            source = {"source": "archive", "archive": "image.tar", "id": saved.image_id}
            payload["image.tar"] = saved.archive
        else:
            source = {"source": "pull", "reference": reference}
        manifest = {
            "format": 1,
            "engine": "podman",
            "package": name,
            "image": source,
            "apps": [{"app": a.path, "target": a.target} for a in apps],
            "register": register,
        }
        args.engine_dep = "podman"
        meta = _meta(args, name, version, arch, summary, details)
        deb = build.build(
            work=work,
            meta=meta,
            engine="podman",
            launcher=ENGINES["podman"],
            manifest=manifest,
            payload=payload,
            apps=apps,
            output_dir=out,
            mtime=mtime,
            compression=args.compression,
        )
    return _finish(args, deb, mtime)


# -- firecracker ----------------------------------------------------------------------------------


def _copy_hashed(src: str, dest: str) -> str:
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dest, "wb") as writer:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def cmd_build_firecracker(args: argparse.Namespace) -> int:
    from ..debpkg import build, control
    from ..launch import names
    from ..launch.runner import run
    from ..sizes import parse_size
    from .common import load_settings

    apps = _check_early(args)
    if args.overlay_size is not None:
        try:
            parse_size(args.overlay_size)
        except ValueError as exc:
            raise UsageError(f"--overlay-size: {exc} (use e.g. 20GiB, 20GB or 20g)") from None
    elif args.include_tar or args.include_path:
        raise UsageError("--include-tar and --include-path need --overlay-size (they go into the overlay)")
    if args.run_as is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", args.run_as):
        raise UsageError(f"--run-as: {args.run_as!r} is not a user name")
    if args.vm:
        from ..firecracker import images

        image = images.get(load_settings(args), names.app_name(args.vm, "--vm"))
        files = {"rootfs": image.rootfs, "kernel": image.kernel, "initrd": image.initrd}
    else:
        if not args.kernel:
            raise UsageError("--rootfs needs --kernel")
        files = {"rootfs": args.rootfs, "kernel": args.kernel, "initrd": args.initrd}
    if args.vm and (args.kernel or args.initrd):
        raise UsageError("--vm excludes --kernel and --initrd")
    for part, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise NotFoundError(f"--{part}: {path}: no such file")
    mtime = build.source_date_epoch()
    out = args.repo or args.output
    with build.staging(out) as work:
        default = args.vm or os.path.basename(apps[0].path)
        name = control.package_name(args.name or control.default_name(default), "--name (default from the image)")
        build.check_apps(apps, name)
        payload, parts = {}, {}
        for part, path in files.items():
            if path is None:
                continue
            copy = os.path.join(work, part)
            parts[part] = {"file": f"vm/{part}", "sha256": _copy_hashed(path, copy)}
            payload[f"vm/{part}"] = copy
        combined = "".join(f"{part}:{item['sha256']}\n" for part, item in sorted(parts.items()))
        digest = hashlib.sha256(combined.encode()).hexdigest()[:12]
        include_tar, more = _includes(args, name, work)
        payload.update(more)
        options = ["--resume"] * args.resume + ["--force-vsock"] * args.force_vsock + ["--no-net"] * args.no_net
        options += ["--overlay-size", args.overlay_size] if args.overlay_size else []
        options += ["--run-as", args.run_as or "root"]
        options += [item for tar in include_tar for item in ("--include-tar", tar)]
        options += [item for path in args.include_path for item in ("--include-path", path)]
        register = _register_options(args, "firecracker", options, name, apps[0])
        arch = args.architecture
        if arch is None:
            arch = run(["dpkg", "--print-architecture"]).stdout.decode().strip()
        summary = f"{', '.join(os.path.basename(a.path) for a in apps)} in a Firecracker VM"
        details = [
            "This package registers VM flakes (flake-pilot, firecracker):",
            *_app_lines(apps),
            f"VM image: {args.vm or os.path.basename(files['rootfs'] or '')}",
        ]
        manifest = {
            "format": 1,
            "engine": "firecracker",
            "package": name,
            "image": {"digest": digest, "files": parts},
            "apps": [{"app": a.path, "target": a.target} for a in apps],
            "register": register,
        }
        args.engine_dep = None  # no Debian package ships firecracker
        meta = _meta(args, name, args.version or "0", arch, summary, details)
        deb = build.build(
            work=work,
            meta=meta,
            engine="firecracker",
            launcher=ENGINES["firecracker"],
            manifest=manifest,
            payload=payload,
            apps=apps,
            output_dir=out,
            mtime=mtime,
            compression=args.compression,
        )
    return _finish(args, deb, mtime)


# -- hook -----------------------------------------------------------------------------------------


def cmd_hook(args: argparse.Namespace) -> int:
    from ..debpkg import hooks

    if args.action == "configure":
        return hooks.configure(args.engine, args.package, args.register_parser)
    return hooks.remove(args.engine, args.package)
