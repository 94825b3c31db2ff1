"""Cold path: compose base + layers + app image + includes + host files into ONE derived image.

Nothing is unpacked on the host. ``podman save`` writes the input images (a docker-archive:
one tar per OCI layer, whiteouts included); we write a new archive whose layer list is the
base's layers, then each layer image's and the app image's own layers (those not already in
the stack), then one layer per include tar, one for include.path, one for the host files, and
``podman load`` it under ``localhost/flake-composed/<app>:<key>``. podman applies every layer
as it does for a pull: whiteouts (files deleted by an upper image stay deleted), in its own
chroot (no write escapes the root), rootless the same as root (no mount, no ``unshare``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, NotFoundError
from ..flakeconf import PodmanFlake
from ..launch import debug, runner
from . import compose_store, compose_tar, hostdeps
from .compose_store import StoreIndex

FORMAT = 1
PREFIX = "localhost/flake-composed/"
LABEL_APP = "io.flake-pilot.composed.app"
LABEL_INPUTS = "io.flake-pilot.composed.inputs"
LABEL_KEY = "io.flake-pilot.composed.key"
TLS_REMEDY = "register the flake with --tls-verify=false"


@dataclass(frozen=True)
class Engine:
    argv: tuple[str, ...]
    env: dict[str, str]

    def run(self, *args: str, timeout: float | None = None) -> bytes:
        return runner.run([*self.argv, *args], env=self.env, timeout=timeout).stdout

    def image_id(self, ref: str) -> str | None:
        proc = runner.run([*self.argv, "image", "inspect", "--format", "{{.Id}}", ref], env=self.env, check=False)
        out = proc.stdout.decode().strip()
        return out if proc.returncode == 0 and out else None

    def images_json(self) -> str:
        out = self.run("info", "--format", "{{.Store.GraphRoot}}\n{{.Store.GraphDriverName}}").decode()
        root, _, driver = out.strip().partition("\n")
        return os.path.join(root, f"{driver}-images", "images.json")


@dataclass(frozen=True)
class Result:
    tag: str
    image_id: str
    inputs: tuple[tuple[str, str], ...]  # (reference, image id) in composition order
    hostdeps: tuple[str, ...]
    created: bool


def repo_name(app: str) -> str:
    """The app name as a valid lowercase repository path component."""
    return re.sub(r"[^a-z0-9]+", "-", app.lower()).strip("-") or "app"


def input_refs(flake: PodmanFlake) -> list[tuple[str, str]]:
    """(role, reference) of every input image, bottom first."""
    refs = [("base_container", flake.base_container)] if flake.base_container else []
    refs += [(f"layer {ref}", ref) for ref in flake.layers]
    refs.append(("container", flake.image))
    seen: set[str] = set()
    unique = []
    for role, ref in refs:
        if ref and ref not in seen:
            seen.add(ref)
            unique.append((role, ref))
    return unique


def resolve(engine: Engine, flake: PodmanFlake, index: StoreIndex | None = None) -> list[tuple[str, str, str]]:
    """(role, reference, image id) of every input; missing images are pulled first."""
    result = []
    for role, ref in input_refs(flake):
        iid = (index.resolve(ref) if index is not None else None) or engine.image_id(ref)
        if iid is None:
            if ref.startswith("localhost/"):
                raise NotFoundError(
                    f"{flake.config_file}: {role}: image {ref} is not in the image store "
                    "(a localhost/ image cannot be pulled)"
                )
            debug.log(f"compose: pulling {ref}")
            from .pull import PullError, pull

            try:
                pull(list(engine.argv), engine.env, ref, tls_verify=flake.tls_verify, remedy=TLS_REMEDY)
            except PullError as exc:
                raise NotFoundError(
                    f"{flake.config_file}: {role}: image {ref} is missing and cannot be pulled: {exc.reason}"
                ) from exc
            iid = engine.image_id(ref)
            if iid is None:
                raise NotFoundError(f"{flake.config_file}: {role}: image {ref} not found after pull")
        result.append((role, ref, iid))
    return result


class _Archive:
    """The docker-archive written by ``podman save``: layer files, configs, per-layer file lookups."""

    def __init__(self, path: str) -> None:
        self.tar = tarfile.open(path, mode="r:")
        entries = json.load(self.tar.extractfile("manifest.json") or _fail(path))
        self.layers: dict[str, list[str]] = {}  # image id -> layer files
        self.configs: dict[str, dict[str, Any]] = {}
        self.diff_ids: dict[str, str] = {}  # layer file -> diff id
        for entry in entries:
            iid = entry["Config"].removesuffix(".json")
            config = json.load(self.tar.extractfile(entry["Config"]) or _fail(path))
            self.configs[iid] = config
            self.layers[iid] = list(entry["Layers"])
            for name, diff in zip(entry["Layers"], config["rootfs"]["diff_ids"], strict=True):
                self.diff_ids[name] = diff
        self._scanned: dict[str, dict[str, bytes | None]] = {}

    def close(self) -> None:
        self.tar.close()

    def _scan(self, layer: str) -> dict[str, bytes | None]:
        """What this layer does to /removed and /systemfiles: new content, None = deleted."""
        if layer not in self._scanned:
            found: dict[str, bytes | None] = {}
            inner = tarfile.open(fileobj=self.tar.extractfile(layer), mode="r:")
            for member in inner:
                name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                if name == ".wh..wh..opq":
                    found = {"removed": None, "systemfiles": None}
                elif name in (".wh.removed", ".wh.systemfiles"):
                    found[name[4:]] = None
                elif name in ("removed", "systemfiles") and member.isreg() and member.size < 1 << 20:
                    found[name] = (inner.extractfile(member) or _fail(layer)).read()
            self._scanned[layer] = found
        return self._scanned[layer]

    def effective(self, layers: list[str], name: str) -> bytes | None:
        """Content of /<name> in the view made of *layers*, None when absent."""
        value: bytes | None = None
        for layer in layers:
            scan = self._scan(layer)
            if name in scan:
                value = scan[name]
        return value


def _fail(what: str) -> Any:
    raise EngineError(f"{what}: unexpected content in the archive written by podman save")


def compose(
    flake: PodmanFlake, engine: Engine, workdir: str, ignore_sync_error: bool = False, images_json: str = ""
) -> Result:
    """Compose *flake*; *images_json* (podman's image list) saves engine calls where it resolves."""
    index = compose_store.load(images_json) if images_json else None
    inputs = resolve(engine, flake, index)
    extras = _include_layers(flake, workdir)
    ids = list(dict.fromkeys(iid for _, _, iid in inputs))
    saved = os.path.join(workdir, "inputs.tar")
    debug.log(f"compose: saving {len(ids)} input image(s)")
    engine.run("save", "-m", "--format", "docker-archive", "-o", saved, *ids)
    archive = _Archive(saved)
    try:
        stack: list[str] = []
        for iid in ids:
            stack += [layer for layer in archive.layers[iid] if layer not in stack]
        deps: list[str] = []
        if flake.base_container or flake.check_host_dependencies:
            deps, host_layer = _host_layer(flake, engine, archive, inputs, stack, workdir, ignore_sync_error)
            extras += host_layer
        app_id = inputs[-1][2]
        key_src = json.dumps([FORMAT, flake.app, ids, [diff for _, diff in extras]])
        key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
        tag = f"{PREFIX}{repo_name(flake.app)}:{key}"
        existing = (index.resolve(tag) if index is not None else None) or engine.image_id(tag)
        created = existing is None
        if existing is None:
            out = os.path.join(workdir, "composed.tar")
            _write_composed(archive, stack, extras, archive.configs[app_id], inputs, tag, key, flake.app, out)
            debug.log(f"compose: loading {tag}")
            engine.run("load", "-q", "-i", out)
            existing = engine.image_id(tag)
            if existing is None:
                raise EngineError(f"podman load did not create {tag}")
        return Result(tag, existing, tuple((ref, iid) for _, ref, iid in inputs), tuple(deps), created)
    finally:
        archive.close()


def _include_layers(flake: PodmanFlake, workdir: str) -> list[tuple[str, str]]:
    """(file, diff id) of the include layers: each include tar, then all include paths."""
    layers = []
    where = f"{flake.config_file}: include.tar"
    for number, src in enumerate(flake.include.tar):
        path = os.path.join(workdir, f"include-{number}.tar")

        def fill(tar: tarfile.TarFile, src: str = src) -> None:
            compose_tar.copy_tar(src, tar, where)

        layers.append((path, compose_tar.write_layer(path, fill)))
    if flake.include.path:
        path = os.path.join(workdir, "include-path.tar")
        layers.append((path, compose_tar.write_layer(path, lambda tar: _add_paths(flake, tar))))
    return layers


def _add_paths(flake: PodmanFlake, tar: tarfile.TarFile) -> None:
    where = f"{flake.config_file}: include.path"
    for src in flake.include.path:
        if not src.startswith("/") or ".." in src.split("/"):
            raise NotFoundError(f"{where}: {src!r} must be an absolute path without '..'")
        if not os.path.lexists(src):
            raise NotFoundError(f"{where}: {src}: no such file or directory")
        try:
            compose_tar.add_tree(tar, os.path.normpath(src), lambda _p, _s: True)
        except PermissionError as exc:
            raise NotFoundError(f"{where}: {exc.filename or src}: cannot read: permission denied") from exc


def _host_layer(
    flake: PodmanFlake,
    engine: Engine,
    archive: _Archive,
    inputs: list[tuple[str, str, str]],
    stack: list[str],
    workdir: str,
    ignore: bool,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Host paths the images ask for (``/removed`` of every input, ``/systemfiles`` output)."""
    paths: list[str] = []
    for _role, ref, iid in inputs:
        text = archive.effective(archive.layers[iid], "removed")
        if text:
            paths += [
                p for p in hostdeps.parse_list(text.decode(errors="replace"), f"{ref}:/removed") if p not in paths
            ]
    if archive.effective(stack, "systemfiles") is not None:
        provider = next(
            (r, i) for _, r, i in reversed(inputs) if archive.effective(archive.layers[i], "systemfiles") is not None
        )
        where = f"{provider[0]}:/systemfiles"
        try:
            output = hostdeps.run_generator(list(engine.argv), engine.env, provider[1], where)
            paths += [p for p in hostdeps.parse_list(output, f"{where} output") if p not in paths]
        except EngineError:
            if not ignore:
                raise
    if not paths:
        return [], []
    check = hostdeps.HostFileCheck(f"{flake.config_file}: host dependencies", ignore)
    layer = os.path.join(workdir, "host-files.tar")

    def fill(tar: tarfile.TarFile) -> None:
        for path in paths:
            if check.exists(path):
                try:
                    compose_tar.add_tree(tar, path, check)
                except OSError as exc:
                    check.refuse(path, f"cannot read: {exc.strerror}", NotFoundError)

    diff = compose_tar.write_layer(layer, fill)
    return [p for p in paths if p not in check.skipped], [(layer, diff)]


def _write_composed(
    archive: _Archive,
    stack: list[str],
    extras: list[tuple[str, str]],
    app_config: dict[str, Any],
    inputs: list[tuple[str, str, str]],
    tag: str,
    key: str,
    app: str,
    out: str,
) -> None:
    config = json.loads(json.dumps(app_config))
    diff_ids = [archive.diff_ids[layer] for layer in stack] + [diff for _, diff in extras]
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    created = config.get("created", "1970-01-01T00:00:00Z")
    config["history"] = [
        {"created": created, "created_by": f"flake-pilot compose: layer {n}"} for n in range(len(diff_ids))
    ]
    labels = dict((config.setdefault("config", {}) or {}).get("Labels") or {})
    labels.update({LABEL_APP: app, LABEL_INPUTS: " ".join(ref for _, ref, _ in inputs), LABEL_KEY: key})
    config["config"]["Labels"] = labels
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = list(stack)
    with tarfile.open(out, mode="x") as dst:
        for layer in stack:
            member = archive.tar.getmember(layer)
            dst.addfile(member, archive.tar.extractfile(member))
        for path, diff in extras:
            name = diff.removeprefix("sha256:") + ".tar"
            if name not in layer_names:
                dst.add(path, arcname=name, recursive=False)
            layer_names.append(name)
        _add_bytes(dst, config_name, config_bytes)
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]
        _add_bytes(dst, "manifest.json", json.dumps(manifest).encode())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o444
    tar.addfile(info, io.BytesIO(data))
