"""flake-ctl podman pull|load|register|remove|show."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
from typing import Any

from .. import flakeconf, registration
from ..errors import ConflictError, EngineError, FlakeError, NotFoundError, SecurityError, UsageError
from ..launch import names, statedir
from ..launch.podman.instance import app_of
from ..launch.runner import first_line, run
from ..settings import Settings
from .common import (
    add_format_flag,
    add_user_flag,
    image_arg,
    load_settings,
    podman_engine,
    require_abs,
    strip_escape,
    user_name,
)
from .output import Column, emit

LAUNCHER = "podman-pilot"


def _last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the `podman` command tree. Each leaf sets `func(args) -> int`."""
    podman = sub.add_parser(
        "podman",
        help="manage container flakes (podman)",
        description="Manage container flakes. --user may be given before or after the subcommand.",
    )
    add_user_flag(podman)
    psub = podman.add_subparsers(title="subcommands", metavar="COMMAND")

    p = psub.add_parser(
        "pull",
        help="pull a container image from a registry",
        description="Pull an image into the flake storage (podman pull, no retry).",
    )
    p.add_argument("--uri", required=True, help="image reference, e.g. registry.example.com/tools/aws-cli:latest")
    _add_tls_verify(p, "false: pull from a registry without TLS (plain http, e.g. a local registry on 127.0.0.1:5000)")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_pull)

    p = psub.add_parser(
        "load",
        help="load a container image from an archive",
        description="Load an OCI/docker archive into the flake storage. If OCI does not exist, "
        "the last (highest) match of OCI* is used.",
    )
    p.add_argument("--oci", required=True, metavar="OCI", help="archive file (podman save output)")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_load)

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
    p.add_argument(
        "--pull",
        action="store_true",
        help="pull images that are not in the flake storage now (else a short name must be pulled first; "
        "a fully qualified one is pulled at the first launch)",
    )
    _add_tls_verify(
        p,
        "false: this flake's pulls (--pull, and at launch) may use a registry without TLS "
        "(stored as container.runtime.tls_verify)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing registration or file at --app")
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_register)

    p = psub.add_parser(
        "remove",
        help="remove a flake or a container and its flakes",
        description="Remove one registration (--app) or an image and every flake using it (--container; "
        "an image is matched by its ID, whatever name a flake uses for it). Removing a flake also removes "
        "its instances (containers, state and lock files); a running instance is refused unless --force.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--app", help="absolute path of the registered command")
    target.add_argument("--container", help="image name: removes its registrations and the image")
    p.add_argument(
        "--force",
        action="store_true",
        help="stop running instances; --app: remove even if the symlink or config is missing/modified "
        "(never deletes a non-symlink); --container: remove the image's containers too",
    )
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_remove)

    p = psub.add_parser(
        "show",
        help="show container flake instances",
        description="List instances (container-ID files) with their status.",
    )
    add_format_flag(p)
    add_user_flag(p, inherited=True)
    p.set_defaults(func=cmd_show)

    from . import podman_cache

    podman_cache.add_parser(psub)

    from . import build_deb

    build_deb.add_parsers(psub, "podman")


def _add_tls_verify(parser: argparse.ArgumentParser, what: str) -> None:
    """podman's own spelling: ``--tls-verify=false`` (``--tls-verify`` alone: true)."""
    parser.add_argument(
        "--tls-verify",
        choices=("true", "false"),
        nargs="?",
        const="true",
        default="true",
        metavar="true|false",
        help=f"verify the registry's TLS certificate (default: true); {what}",
    )


# -- pull / load ---------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    from ..podman import pull

    uri = image_arg(args.uri, "--uri")
    cfg = load_settings(args)
    podman, env = podman_engine(cfg)
    iid = pull.pull(podman, env, uri, tls_verify=args.tls_verify == "true", remedy="add --tls-verify=false")
    print(f"pulled {uri} ({iid[:12]})")
    return 0


def resolve_archive(path: str) -> str:
    """The archive itself, else the last match of ``<path>*`` in sorted order (the original's rule)."""
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise UsageError(f"--oci: {path} is not a file")
        return path
    matches = sorted(m for m in glob.glob(glob.escape(path) + "*") if os.path.isfile(m))
    if not matches:
        raise NotFoundError(f"--oci: {path} does not exist and nothing matches {path}*")
    return matches[-1]


def cmd_load(args: argparse.Namespace) -> int:
    archive = resolve_archive(args.oci)
    cfg = load_settings(args)
    podman, env = podman_engine(cfg)
    proc = run([*podman, "load", "-q", "-i", os.path.abspath(archive)], env=env)
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.strip():
            print(line.strip())
    return 0


# -- register ------------------------------------------------------------------------------------


def container_config(
    *,
    container: str,
    app: str,
    target: str,
    base: str | None,
    layers: list[str],
    check_host_dependencies: bool,
    include_tar: list[str],
    include_path: list[str],
    runas: str,
    resume: bool,
    attach: bool,
    opts: list[str],
    tls_verify: bool = True,
) -> dict[str, Any]:
    """The registration in the original's template shape, so either implementation can read it
    (``runtime.tls_verify`` is written only when false: the original ignores it)."""
    runtime: dict[str, Any] = {"runas": runas, "resume": resume, "attach": attach, "podman": opts or None}
    if not tls_verify:
        runtime["tls_verify"] = False
    return {
        "include": {"tar": include_tar or None, "path": include_path or None},
        "container": {
            "name": container,
            "target_app_path": target,
            "host_app_path": app,
            "base_container": base,
            "check_host_dependencies": check_host_dependencies,
            "layers": layers or None,
            "runtime": runtime,
        },
    }


def cmd_register(args: argparse.Namespace) -> int:
    container = image_arg(args.container, "--container")
    cfg = load_settings(args)
    if args.info:
        return _info(cfg, container)
    app = require_abs(args.app, "--app")
    names.app_name(os.path.basename(app), "--app name")
    target = require_abs(args.target, "--target") if args.target is not None else app
    if args.layer and not args.base:
        raise UsageError("--layer: layers need a base container (--base)")
    base = image_arg(args.base, "--base") if args.base is not None else None
    layers = [image_arg(x, "--layer") for x in args.layer]
    tars = [require_abs(x, "--include-tar") for x in args.include_tar]
    paths = [require_abs(x, "--include-path") for x in args.include_path]
    opts = [strip_escape(x) for x in args.opt]
    for opt in opts:
        if not opt or "\0" in opt:
            raise UsageError(f"--opt: {opt!r} is not a valid podman option")
    config = container_config(
        container=container,
        app=app,
        target=target,
        base=base,
        layers=layers,
        check_host_dependencies=args.check_host_dependencies,
        include_tar=tars,
        include_path=paths,
        runas=user_name() if cfg.user_mode else "root",
        resume=args.resume,
        attach=args.attach,
        opts=opts,
        tls_verify=args.tls_verify == "true",
    )
    for option, files in (("--include-tar", tars), ("--include-path", paths)):
        for path in files:
            _check_readable(path, option)
    images = [("--container", container), *([("--base", base)] if base else []), *(("--layer", x) for x in layers)]

    def check_images() -> None:
        _check_images(cfg, images, pull_now=args.pull, tls_verify=args.tls_verify == "true")

    cfg_file = registration.register(cfg.flakes_dir, app, LAUNCHER, config, args.force, check=check_images)
    print(f"registered {app} -> {container}:{target} ({cfg_file})")
    return 0


def _check_readable(path: str, option: str) -> None:
    """An include is copied at every launch: it must exist and be readable by the caller now."""
    if not os.path.lexists(path):
        raise NotFoundError(f"{option}: {path} does not exist")
    if not os.path.exists(path):
        raise NotFoundError(f"{option}: {path} is a dangling symbolic link")
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        raise UsageError(f"{option}: {path} is not readable")


def _check_images(cfg: Settings, images: list[tuple[str, str]], *, pull_now: bool, tls_verify: bool) -> None:
    """Each image is in the flake storage, or pulled now (--pull), or named fully (registry/name:
    the first launch pulls it); a short name podman would have to guess is refused."""
    from ..podman import pull
    from ..podman.compose_store import qualify

    podman, env = podman_engine(cfg)
    for option, ref in images:
        if pull.exists(podman, env, ref):
            continue
        if pull_now and not ref.startswith("localhost/"):
            pull.pull(podman, env, ref, tls_verify=tls_verify, remedy="add --tls-verify=false")
            print(f"pulled {ref}")
            continue
        full = qualify(ref.partition("@")[0])
        if full is not None and not ref.startswith("localhost/"):
            continue  # pulled at the first launch
        why = "a localhost/ image cannot be pulled" if full else "not a fully qualified name (registry/name)"
        raise NotFoundError(
            f"{option}: image {ref} is not in the flake storage and {why}: pull or load it first "
            "(flake-ctl podman pull --uri REGISTRY/NAME), name it fully, or add --pull"
        )


def info_file_name(container: str) -> str:
    """``<basename>.yaml`` of the image name, without tag or digest."""
    base = container.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return base.split(":", 1)[0] + ".yaml"


def _info(cfg: Settings, container: str) -> int:
    podman, env = podman_engine(cfg)
    exists = run([*podman, "image", "exists", container], env=env, check=False)
    if exists.returncode == 1:
        raise NotFoundError(f"--container: image {container} is not in the flake storage (pull or load it first)")
    if exists.returncode != 0:
        raise EngineError(f"podman image exists {container} failed: {first_line(exists.stderr)}", exists.returncode)
    name = info_file_name(container)
    cid = _last_line(run([*podman, "create", "--pull=never", container, "true"], env=env).stdout)
    tmp = tempfile.mkdtemp(prefix="flake-ctl-info-")
    try:
        copied = run([*podman, "cp", f"{cid}:/{name}", os.path.join(tmp, name)], env=env, check=False)
        if copied.returncode != 0:
            raise NotFoundError(f"{container}: no info file /{name} in the image")
        with open(os.path.join(tmp, name), encoding="utf-8", errors="replace") as handle:
            sys.stdout.write(handle.read())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        run([*podman, "rm", "-f", cid], env=env, check=False)
    return 0


# -- remove --------------------------------------------------------------------------------------


def cmd_remove(args: argparse.Namespace) -> int:
    cfg = load_settings(args)
    if args.app is not None:
        app = require_abs(args.app, "--app")
        name = names.app_name(os.path.basename(app), "--app name")
        instances = _instances_of(cfg, {name})
        _refuse_running(instances, args.force)
        registration.remove(cfg.flakes_dir, app, LAUNCHER, args.force)
        _discard(cfg, instances)
        print(f"removed {app}")
        _free_composed(cfg, app=name)
        return 0
    return _purge(cfg, image_arg(args.container, "--container"), args.force)


STATE_SUFFIXES = ("cid", "pid", "spec", "oci", "lock")  # an instance's files (launch/podman/instance.py)


class _Instance:
    """An instance's files in the caller's state dir: ``<app>[@NAME].{cid,pid,spec,oci,lock}``."""

    def __init__(self, directory: str, stem: str) -> None:
        from ..launch.podman import instance

        self.name = stem
        self.paths = instance.Paths(directory, stem)
        self.cid = instance.read_cid(self.paths.cid)
        self.running = instance.alive(self.paths) is not None


def _instances_of(cfg: Settings, apps: set[str]) -> list[_Instance]:
    """The caller's instances of *apps* (a flake's instances live in the state dir of its caller:
    root's for system flakes, the user's for user flakes)."""
    directory = os.path.join(cfg.podman_ids_dir, str(os.getuid()))
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    stems = set()
    for entry in entries:
        stem, dot, suffix = entry.rpartition(".")
        if dot and suffix in STATE_SUFFIXES and stem.split("@", 1)[0] in apps:
            stems.add(stem)
    return [_Instance(directory, stem) for stem in sorted(stems)]


def _refuse_running(instances: list[_Instance], force: bool) -> None:
    running = [i.name for i in instances if i.running]
    if running and not force:
        raise ConflictError(f"instance(s) running: {', '.join(running)}; stop them first or use --force")


def _discard(cfg: Settings, instances: list[_Instance]) -> None:
    """Stop and remove each instance's container, then its state and lock files (under its lock,
    so a launch in progress finishes first and a later one starts afresh)."""
    from ..launch.podman import instance

    engine: tuple[list[str], dict[str, str]] | None = None
    for item in instances:
        lock = statedir.locked(item.paths.lock)
        with lock:
            cid = instance.read_cid(item.paths.cid) or item.cid
            if cid:
                engine = engine or podman_engine(cfg)
                done = run([*engine[0], "rm", "-f", "-t", "0", cid], env=engine[1], check=False)
                if done.returncode not in (0, 1):  # 1: no such container (already gone)
                    raise EngineError(f"podman rm {cid[:12]} failed: {first_line(done.stderr)}", done.returncode)
            instance.clear(item.paths)
            lock.unlink()
        print(f"removed instance {item.name}" + (f" (container {cid[:12]})" if cid else ""))


def _free_composed(cfg: Settings, *, app: str | None = None, image: str | None = None) -> None:
    """Drop cached delta compositions of a removed flake or image (best effort, reported), and a
    removed flake's composition record and lock file in the caller's state dir."""
    from ..podman import compose

    try:
        podman, env = podman_engine(cfg)
        for tag in compose.free_entries(app=app, image=image, podman_argv=podman, env=env):
            print(f"removed composed image {tag}")
        if app is not None:
            compose.forget(app, os.path.join(cfg.podman_ids_dir, str(os.getuid())))
    except FlakeError as exc:
        sys.stderr.write(f"flake-ctl: composed images not freed: {exc}\n")


def _local_images(podman: list[str], env: dict[str, str]) -> tuple[Any, dict[str, list[str]]]:
    """The flake storage's images: an index resolving names as podman does (``StoreIndex``) and
    the names of each image ID; one podman call."""
    import json

    from ..podman.compose_store import StoreIndex

    proc = run([*podman, "images", "--no-trunc", "--format", "json"], env=env)
    try:
        listed = json.loads(proc.stdout or b"[]")
    except ValueError as exc:
        raise EngineError(f"podman images: unreadable output: {exc}") from exc
    by_name: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    tags: dict[str, list[str]] = {}
    for item in listed if isinstance(listed, list) else []:
        iid = item.get("Id") if isinstance(item, dict) else None
        if not isinstance(iid, str):
            continue
        iid = iid.removeprefix("sha256:")
        for name in item.get("Names") or ():
            by_name[name] = iid
            if name not in tags.setdefault(iid, []):
                tags[iid].append(name)
        if isinstance(item.get("Digest"), str):
            by_digest[item["Digest"]] = iid
    return StoreIndex(by_name, by_digest, frozenset(tags)), tags


def _purge(cfg: Settings, container: str, force: bool) -> int:
    """Remove the image and every flake using it, matched by image ID (any spelling of its name),
    with their instances; a running instance is refused unless *force*."""
    from .listing import registrations

    podman, env = podman_engine(cfg)
    index, tags = _local_images(podman, env)
    iid = index.resolve(container)
    apps: dict[str, str] = {}  # app name -> host app path
    failed = 0
    for name, path in registrations(cfg.flakes_dir):
        try:
            flake = flakeconf.parse(name, path)
        except FlakeError as exc:
            sys.stderr.write(f"flake-ctl: skipping broken registration: {exc}\n")
            failed = 1
            continue
        if not isinstance(flake, flakeconf.PodmanFlake):
            continue
        if flake.image == container or (iid is not None and index.resolve(flake.image) == iid):
            if not flake.host_app_path:
                sys.stderr.write(f"flake-ctl: {path}: key 'container.host_app_path' is missing, not removed\n")
                failed = 1
                continue
            apps[name] = flake.host_app_path
    if iid is None and not apps:
        raise NotFoundError(f"--container: no image {container} and no flake registered for it")
    instances = _instances_of(cfg, set(apps))
    _refuse_running(instances, force)
    _discard(cfg, instances)
    _free_composed(cfg, image=container)
    if iid is not None:
        names_of = tags.get(iid) or [iid]
        proc = run([*podman, "image", "rm", *(["--force"] if force else []), *names_of], env=env, check=False)
        if proc.returncode != 0:
            raise ConflictError(
                f"podman image rm {container} failed: {first_line(proc.stderr)}"
                + ("" if force else " (use --force to remove its containers too)")
            )
        print(f"removed image {container} ({iid[:12]}: {', '.join(names_of)})")
    for name, app in apps.items():
        if os.path.lexists(app) and not registration.is_flake_link(app, LAUNCHER):
            sys.stderr.write(f"flake-ctl: {app}: not a symlink to {LAUNCHER}, registration kept\n")
            failed = 1
            continue
        registration.remove(cfg.flakes_dir, app, LAUNCHER, force=True)
        print(f"removed {app}")
        _free_composed(cfg, app=name)
    return failed


# -- show ----------------------------------------------------------------------------------------

SHOW_COLUMNS = (
    Column("name", "NAME"),
    Column("user", "USER"),
    Column("id", "ID", shorten=lambda s: s[:12]),
    Column("status", "STATUS"),
    Column("image", "IMAGE"),
    Column("config", "CONFIG"),
)


def _instance_files(cfg: Settings) -> tuple[list[tuple[int, str]], list[str]]:
    """(uid, path) of every ``<ids>/<uid>/*.cid`` this scope may see, and problems found."""
    base = cfg.podman_ids_dir
    problems: list[str] = []
    try:
        uids = sorted(int(d) for d in os.listdir(base) if d.isdigit())
    except FileNotFoundError:
        return [], problems
    except OSError as exc:
        return [], [f"{base}: cannot list: {exc.strerror}"]
    if cfg.user_mode:
        uids = [u for u in uids if u == os.getuid()]
    found: list[tuple[int, str]] = []
    for uid in uids:
        directory = os.path.join(base, str(uid))
        if os.path.islink(directory) or not os.path.isdir(directory):
            problems.append(f"{directory}: not a directory (symlink?), skipped")
            continue
        try:
            entries = sorted(os.listdir(directory))
        except OSError as exc:
            problems.append(f"{directory}: cannot list: {exc.strerror}")
            continue
        found.extend((uid, os.path.join(directory, e)) for e in entries if e.endswith(".cid"))
    return found, problems


def _states(cfg: Settings) -> dict[str, str]:
    """Container ID -> podman state, with ONE podman call (JSON: stable across podman versions)."""
    import json

    podman, env = podman_engine(cfg)
    proc = run([*podman, "ps", "-a", "--no-trunc", "--format", "json"], env=env)
    try:
        listed = json.loads(proc.stdout or b"[]")
    except ValueError as exc:
        raise EngineError(f"podman ps: unreadable output: {exc}") from exc
    states: dict[str, str] = {}
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, dict) and isinstance(item.get("Id"), str):
            states[item["Id"]] = str(item.get("State", "")).lower()
    return states


def _status(cid: str, states: dict[str, str]) -> str:
    for full, state in states.items():
        if full.startswith(cid):
            return "running" if state in ("running", "paused") else "stopped"
    return "stopped"  # stale file: the container is gone


def cmd_show(args: argparse.Namespace) -> int:
    cfg = load_settings(args)
    files, problems = _instance_files(cfg)
    records: list[dict[str, Any]] = []
    for uid, path in files:
        name = os.path.basename(path)[: -len(".cid")]
        try:
            content = statedir.read_file(path) or ""
        except (SecurityError, OSError) as exc:
            problems.append(str(exc) if isinstance(exc, SecurityError) else f"{path}: {exc.strerror}")
            continue
        cid = content.splitlines()[0].strip() if content else ""
        app = app_of(name)  # the stem writes an '@' of the app name as '%'
        config = flakeconf.config_path(cfg.flakes_dir, app)
        image = None
        flake = None
        if os.path.isfile(config):
            try:
                flake = flakeconf.parse(app, config)
                image = flake.image if isinstance(flake, flakeconf.PodmanFlake) else None
            except FlakeError as exc:
                problems.append(str(exc))
        records.append(
            {
                "name": name,
                "user": user_name(uid),
                "id": cid or None,
                "status": "unknown",
                "image": image,
                "config": config if flake else None,
                "_known": image is not None and bool(cid),
            }
        )
    code = 0
    if any(r["_known"] for r in records):
        try:
            states = _states(cfg)
        except FlakeError as exc:
            problems.append(f"status unknown: {exc}")
            code = exc.exit_code
        else:
            for r in records:
                if r["_known"]:
                    r["status"] = _status(r["id"], states)
    emit(
        records,
        SHOW_COLUMNS,
        args.format,
        f"Flake podman instances in {cfg.podman_ids_dir}",
        "No instance(s) found",
    )
    for line in problems:
        sys.stderr.write(f"flake-ctl: {line}\n")
    return code or (1 if problems else 0)
