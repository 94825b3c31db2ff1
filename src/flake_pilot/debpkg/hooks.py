"""What a flake package's maintainer scripts run: ``flake-ctl ENGINE deb-hook configure|remove PKG``.

Ownership is by name: the podman images of package P are ``localhost/flake-deb/P:<id>``, its VM
images ``P@<digest>``, and a registration belongs to P when it uses one of them. So ``remove``
finds everything P left even after its files are gone (postrm purge), and never touches a flake
or image someone registered by hand. The image name changes with the image, so an upgrade
changes the registration and a running resume instance of the old image is replaced by the
launcher at its next call once it is idle.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

from .. import flakeconf, registration, settings, yamlio
from ..errors import ConfigError, ConflictError, FlakeError, NotFoundError
from ..launch import statedir
from ..launch.runner import first_line, run
from ..settings import Settings
from . import MANIFEST, PACKAGES_DIR
from .control import image_repo, package_name, vm_prefix

LAUNCHERS = {"podman": "podman-pilot", "firecracker": "firecracker-pilot"}


def manifest_path(package: str) -> str:
    return os.path.join(PACKAGES_DIR, package, MANIFEST)


def load_manifest(package: str, engine: str) -> dict[str, Any] | None:
    path = manifest_path(package)
    if not os.path.isfile(path):
        return None
    data = yamlio.load_file(path)
    if not isinstance(data, dict) or data.get("engine") != engine or not isinstance(data.get("apps"), list):
        raise ConfigError(f"{path}: not a {engine} flake package manifest")
    return data


def _owned(flake: flakeconf.PodmanFlake | flakeconf.VmFlake, engine: str, package: str) -> bool:
    if engine == "podman":
        return isinstance(flake, flakeconf.PodmanFlake) and flake.image.startswith(image_repo(package) + ":")
    return isinstance(flake, flakeconf.VmFlake) and flake.vm_name.startswith(vm_prefix(package))


def _registration(cfg: Settings, app: str) -> flakeconf.PodmanFlake | flakeconf.VmFlake | None:
    path = registration.config_file(cfg.flakes_dir, app)
    if not os.path.isfile(path):
        return None
    return flakeconf.parse(os.path.basename(path)[: -len(".yaml")], path)


def _owned_apps(cfg: Settings, engine: str, package: str) -> list[str]:
    from ..ctl.listing import registrations

    found = []
    for name, path in registrations(cfg.flakes_dir):
        try:
            flake = flakeconf.parse(name, path)
        except FlakeError as exc:
            sys.stderr.write(f"flake-ctl: skipping broken registration: {exc}\n")
            continue
        if _owned(flake, engine, package) and flake.host_app_path:
            found.append(flake.host_app_path)
    return found


# -- instances -------------------------------------------------------------------------------------


PODMAN_STATE = (".cid", ".pid", ".lock", ".spec", ".oci")  # instance.Paths, oci.SUFFIX
VM_STATE = (".run.ext2", ".ext2", ".fc.log", ".vmid", ".lock", ".tap", ".spec")


def _instance_files(ids_dir: str, app: str, suffixes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(state dir, file name, instance) of every state file of root's instances of *app* or *app*@NAME.

    Only root's: another user's state dir may hold a user flake of the same name.
    """
    directory = os.path.join(ids_dir, "0")
    if os.path.islink(directory):
        return []
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    found: list[tuple[str, str, str]] = []
    for entry in entries:
        suffix = next((s for s in suffixes if entry.endswith(s)), None)
        meta = entry[: -len(suffix)] if suffix else ""
        if meta == app or meta.startswith(app + "@"):
            found.append((directory, entry, meta))
    return found


def _clear_podman_instances(cfg: Settings, podman: list[str], env: dict[str, str], app: str) -> None:
    from ..launch.podman import instance

    files = _instance_files(cfg.podman_ids_dir, app, PODMAN_STATE)
    for directory, meta in sorted({(d, m) for d, _e, m in files}):
        paths = instance.Paths(directory, meta)
        cid = instance.read_cid(paths.cid)
        if cid:
            run([*podman, "rm", "-f", "-t", "0", cid], env=env, check=False)
        instance.clear(paths)
    for directory, entry, _meta in files:
        statedir.remove_file(os.path.join(directory, entry))


def _clear_vm_instances(cfg: Settings, app: str) -> None:
    from ..launch.firecracker import instances

    files = _instance_files(cfg.firecracker_ids_dir, app, VM_STATE)
    for directory, meta in sorted({(d, m) for d, _e, m in files}):
        paths = instances.InstancePaths(directory, meta)
        pid = instances.running_pid(paths)
        if pid:
            instances.kill(pid, paths.fc_id)
        instances.remove_files(paths, overlay=True)
    for directory, entry, _meta in files:
        statedir.remove_file(os.path.join(directory, entry))


# -- images ----------------------------------------------------------------------------------------


def _podman_names(podman: list[str], env: dict[str, str], repo: str) -> list[str]:
    listed = run([*podman, "images", "--format", "{{.Repository}}:{{.Tag}}"], env=env)
    return sorted({n for n in listed.stdout.decode(errors="replace").split() if n.startswith(repo + ":")})


def _exists(podman: list[str], env: dict[str, str], image: str) -> bool:
    return run([*podman, "image", "exists", image], env=env, check=False).returncode == 0


def _free_composed(podman: list[str], env: dict[str, str], *, app: str | None = None, image: str | None = None) -> None:
    """The images delta compositions made for the package's apps or from its images."""
    from ..podman import compose

    for tag in compose.free_entries(app=app, image=image, podman_argv=podman, env=env):
        print(f"removed composed image {tag}")


def _podman_image(cfg: Settings, package: str, source: dict[str, Any]) -> str:
    """Load (or pull) the package's image into the flake storage; returns the name it gets there."""
    from ..ctl.common import podman_engine

    podman, env = podman_engine(cfg)
    repo = image_repo(package)
    if source.get("source") == "archive":
        ident = str(source.get("id", ""))
        if len(ident) != 64 or set(ident) - set("0123456789abcdef"):
            raise ConfigError(f"{manifest_path(package)}: key 'image.id': {ident!r} is not an image ID")
        name = f"{repo}:{ident[:12]}"
        if not _exists(podman, env, name):
            archive = os.path.join(PACKAGES_DIR, package, str(source.get("archive", "")))
            run([*podman, "load", "-q", "-i", archive], env=env, timeout=3600)
            run([*podman, "tag", ident, name], env=env)
        return name
    reference = str(source.get("reference", ""))
    existed = _exists(podman, env, reference)
    pulled = run([*podman, "pull", "-q", reference], env=env, timeout=3600)
    ident = (pulled.stdout.decode(errors="replace").split() or [""])[-1]
    if len(ident) != 64 or set(ident) - set("0123456789abcdef"):
        raise FlakeError(f"podman pull {reference}: unexpected output {ident!r} (expected the image ID)")
    name = f"{repo}:{ident[:12]}"
    run([*podman, "tag", ident, name], env=env)
    if not existed:  # the reference was only the way in; the package's name is the one to keep
        run([*podman, "untag", ident, reference], env=env, check=False)
    return name


def _prune_podman(cfg: Settings, package: str, keep: str | None) -> None:
    """Remove the package's other images; with *keep*, one still in use stays until next time."""
    from ..ctl.common import podman_engine

    podman, env = podman_engine(cfg)
    for name in _podman_names(podman, env, image_repo(package)):
        if name == keep:
            continue
        if keep:  # `podman image rm` would only untag an image a container uses: it would stay, nameless
            users = run([*podman, "ps", "-a", "-q", "--filter", f"ancestor={name}"], env=env, check=False)
            if users.returncode != 0 or users.stdout.strip():
                sys.stderr.write(f"flake-ctl: image {name} kept: in use by an instance (it goes at the next upgrade)\n")
                continue
        _free_composed(podman, env, image=name)
        done = run([*podman, "image", "rm", *([] if keep else ["--force"]), name], env=env, check=False)
        if done.returncode == 0:
            print(f"removed image {name}")
        else:
            sys.stderr.write(f"flake-ctl: image {name} kept: {first_line(done.stderr)}\n")


def _copy_verified(src: str, dest: str, sha256: str) -> None:
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dest, "wb") as writer:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            writer.write(chunk)
    if digest.hexdigest() != sha256:
        raise FlakeError(f"{src}: sha256 mismatch (package says {sha256}, file has {digest.hexdigest()})")


def _vm_image(cfg: Settings, package: str, source: dict[str, Any]) -> Any:
    from ..firecracker import images

    name = vm_prefix(package) + str(source.get("digest", ""))
    try:
        return images.get(cfg, name)
    except NotFoundError:
        pass
    parts = source.get("files") or {}
    with images.Staging(cfg, name) as stage:
        for part, item in sorted(parts.items()):
            src = os.path.join(PACKAGES_DIR, package, str(item["file"]))
            _copy_verified(src, os.path.join(stage.image, part), str(item["sha256"]))
        stage.commit(force=True)
    return images.get(cfg, name)


def _prune_vm(cfg: Settings, package: str, keep: str | None) -> None:
    """A running VM keeps its open rootfs; the directory can go at once."""
    from ..firecracker import images

    try:
        entries = sorted(os.listdir(images.images_dir(cfg)))
    except OSError:
        return
    for entry in entries:
        if entry.startswith(vm_prefix(package)) and entry != keep:
            print(f"removed VM image {images.remove(cfg, entry)}")


# -- the two actions -------------------------------------------------------------------------------


def register_argv(engine: str, image: str, app: dict[str, str], options: list[str]) -> list[str]:
    """The arguments of ``flake-ctl ENGINE register`` for one app of the package."""
    flag = "--container" if engine == "podman" else "--vm"
    return [flag, image, "--app", app["app"], "--target", app["target"], *options, "--force"]


def parse_register(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """*argv* parsed by flake-ctl's ``register`` parser; SystemExit (its message captured) if refused."""
    import contextlib
    import io

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit as exc:
        lines = errors.getvalue().strip().splitlines()
        exc.code = lines[-1].split(": error: ", 1)[-1] if lines else " ".join(argv)
        raise


def _register(parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    try:
        args = parse_register(parser, argv)
    except SystemExit as exc:
        raise ConfigError(f"{where}: this flake-ctl refuses the registration: {exc.code}") from None
    args.func(args)


def configure(engine: str, package: str, register_parser: argparse.ArgumentParser) -> int:
    package_name(package, "PACKAGE")
    manifest = load_manifest(package, engine)
    if manifest is None:
        raise NotFoundError(f"{manifest_path(package)}: no such file (is {package} installed?)")
    cfg = settings.load(False)
    launcher = LAUNCHERS[engine]
    apps = [{"app": str(a["app"]), "target": str(a["target"])} for a in manifest["apps"]]
    for app in apps:  # refuse before changing anything
        flake = _registration(cfg, app["app"])
        if flake is not None and not _owned(flake, engine, package):
            raise ConflictError(f"{app['app']}: {flake.config_file} is a flake registered outside package {package}")
        path = app["app"]
        if os.path.lexists(path) and not registration.is_flake_link(path, launcher):
            raise ConflictError(f"{path}: exists and is not a symlink to {launcher}")
    source = manifest.get("image") or {}
    image: Any = _podman_image(cfg, package, source) if engine == "podman" else _vm_image(cfg, package, source)
    name = str(image) if engine == "podman" else str(image.name)
    wanted = {a["app"] for a in apps}
    options = [str(o) for o in manifest.get("register") or []]
    try:
        for stale in _owned_apps(cfg, engine, package):
            if stale not in wanted:  # an app the previous version had
                _remove_app(cfg, engine, stale)
        for app in apps:  # as `flake-ctl ENGINE register ... --force` would
            _register(register_parser, register_argv(engine, name, app, options), manifest_path(package))
    except BaseException:
        if not _owned_apps(cfg, engine, package):  # a first install that failed: its image goes too
            (_prune_podman if engine == "podman" else _prune_vm)(cfg, package, None)
        raise
    if engine == "podman":
        _prune_podman(cfg, package, keep=name)
    else:
        _prune_vm(cfg, package, keep=name)
    return 0


def _remove_app(cfg: Settings, engine: str, app: str) -> None:
    if engine == "podman":
        from ..ctl.common import podman_engine

        podman, env = podman_engine(cfg)
        _clear_podman_instances(cfg, podman, env, os.path.basename(app))
    else:
        _clear_vm_instances(cfg, os.path.basename(app))
    registration.remove(cfg.flakes_dir, app, LAUNCHERS[engine], force=True)
    print(f"removed {app}")
    if engine == "podman":
        from ..ctl.common import podman_engine

        _free_composed(*podman_engine(cfg), app=os.path.basename(app))  # composed for its includes, layers


def remove(engine: str, package: str) -> int:
    """Unregister the package's apps, end their instances, remove its images. Also without manifest."""
    package_name(package, "PACKAGE")
    manifest = load_manifest(package, engine)
    cfg = settings.load(False)
    apps = set(_owned_apps(cfg, engine, package))
    for item in (manifest or {}).get("apps") or []:
        path = str(item["app"])
        flake = _registration(cfg, path) if os.path.isfile(registration.config_file(cfg.flakes_dir, path)) else None
        if flake is None and registration.is_flake_link(path, LAUNCHERS[engine]):
            apps.add(path)  # a symlink whose registration is gone
    for app in sorted(apps):
        _remove_app(cfg, engine, app)
    if engine == "podman":
        _prune_podman(cfg, package, keep=None)
    else:
        _prune_vm(cfg, package, keep=None)
    return 0
