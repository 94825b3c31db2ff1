"""The image a podman flake package ships: an OCI archive written the same way every time.

``podman save --format oci-dir --uncompressed`` gives content-addressed blobs; they are put into
a tar with sorted names, one fixed mtime, owner 0 and fixed modes, and an ``index.json`` without
the image name, so the package's image gets only the name the package gives it at install time.
An ``--oci`` archive goes through a throw-away storage (vfs) first, so any archive podman can
load (docker-archive or oci-archive) ends up in the same form.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from typing import Any

from ..errors import EngineError, FlakeError, NotFoundError, UsageError
from ..launch.runner import first_line, run

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SavedImage:
    archive: str
    image_id: str  # 64 hex: the config digest, podman's image ID
    architecture: str | None
    created: str | None
    labels: dict[str, str] = field(default_factory=dict)


def _digest_file(directory: str, digest: object, what: str) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:") or set(digest[7:]) - _HEX:
        raise FlakeError(f"{directory}: {what}: unexpected digest {digest!r}")
    if len(digest) != 71:
        raise FlakeError(f"{directory}: {what}: unexpected digest {digest!r}")
    return os.path.join(directory, "blobs", "sha256", digest[7:])


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise FlakeError(f"{path}: unreadable image metadata: {exc}") from exc


def archive_oci_dir(directory: str, dest: str, mtime: int) -> SavedImage:
    """Write the OCI layout *directory* (one image) as a reproducible tar at *dest*."""
    index = _read_json(os.path.join(directory, "index.json"))
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
        raise FlakeError(f"{directory}/index.json: expected exactly one image manifest")
    manifests[0].pop("annotations", None)
    manifest = _read_json(_digest_file(directory, manifests[0].get("digest"), "manifest"))
    config_ref = manifest.get("config") if isinstance(manifest, dict) else None
    digest = config_ref.get("digest") if isinstance(config_ref, dict) else None
    config = _read_json(_digest_file(directory, digest, "config"))
    inner = config.get("config") if isinstance(config, dict) else None
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    index_bytes = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    blobs = sorted(os.listdir(os.path.join(directory, "blobs", "sha256")))

    def info(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        item = tarfile.TarInfo(name)
        item.type, item.size, item.mtime = kind, size, mtime
        item.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        item.uid = item.gid = 0
        item.uname = item.gname = ""
        return item

    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        layout = b'{"imageLayoutVersion":"1.0.0"}'
        tar.addfile(info("blobs/", tarfile.DIRTYPE))
        tar.addfile(info("blobs/sha256/", tarfile.DIRTYPE))
        for blob in blobs:
            path = os.path.join(directory, "blobs", "sha256", blob)
            with open(path, "rb") as handle:
                tar.addfile(info(f"blobs/sha256/{blob}", tarfile.REGTYPE, os.fstat(handle.fileno()).st_size), handle)
        tar.addfile(info("index.json", tarfile.REGTYPE, len(index_bytes)), io.BytesIO(index_bytes))
        tar.addfile(info("oci-layout", tarfile.REGTYPE, len(layout)), io.BytesIO(layout))
    return SavedImage(
        archive=dest,
        image_id=str(digest)[7:],
        architecture=config.get("architecture") if isinstance(config.get("architecture"), str) else None,
        created=config.get("created") if isinstance(config.get("created"), str) else None,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def save(podman: list[str], env: dict[str, str], image: str, workdir: str, mtime: int, option: str) -> SavedImage:
    """Save *image* from the storage podman+env use into ``<workdir>/image.tar``."""
    exists = run([*podman, "image", "exists", image], env=env, check=False)
    if exists.returncode == 1:
        raise NotFoundError(f"{option}: image {image} is not in the flake storage (pull or load it first)")
    if exists.returncode != 0:
        raise EngineError(f"podman image exists {image} failed: {first_line(exists.stderr)}", exists.returncode)
    layout = os.path.join(workdir, "oci")
    run([*podman, "save", "-q", "--format", "oci-dir", "--uncompressed", "-o", layout, image], env=env, timeout=1800)
    try:
        return archive_oci_dir(layout, os.path.join(workdir, "image.tar"), mtime)
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def from_archive(podman_binary: str, archive: str, workdir: str, mtime: int) -> tuple[SavedImage, str | None]:
    """Load *archive* into a throw-away storage and save it like an image of the flake storage.

    Returns the saved image and the name the archive gave it (None for an unnamed image).
    """
    if not os.path.isfile(archive):
        raise NotFoundError(f"--oci: {archive}: no such file")
    root = os.path.join(workdir, "storage")
    os.makedirs(root, mode=0o700)
    conf = os.path.join(root, "storage.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    podman, env = [podman_binary], {"CONTAINERS_STORAGE_CONF": conf}
    try:
        loaded = run([*podman, "load", "-q", "-i", os.path.abspath(archive)], env=env, check=False, timeout=1800)
        if loaded.returncode != 0:
            raise UsageError(f"--oci: {archive}: not an image archive podman can load ({first_line(loaded.stderr)})")
        names: list[str] = []
        for line in loaded.stdout.decode(errors="replace").splitlines():
            if ":" in line and line.startswith("Loaded image"):
                names.extend(n.strip() for n in line.split(":", 1)[1].split(",") if n.strip())
        if len(names) != 1:
            raise UsageError(f"--oci: {archive}: holds {len(names)} images, a package takes exactly one")
        saved = save(podman, env, names[0], workdir, mtime, "--oci")
        return saved, None if names[0].startswith("sha256:") else names[0]
    finally:
        run([*podman, "rmi", "-a", "-f"], env=env, check=False)
        shutil.rmtree(root, ignore_errors=True)
