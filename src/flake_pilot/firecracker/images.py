"""The VM image registry: ``<registry>/images/<name>/{rootfs,kernel,initrd?,checksum?}``.

``<registry>`` is ``firecracker_registry_dir`` (system default ``/var/lib/firecracker``, user mode
``<flakes_dir>/firecracker``). A pull works in a staging dir ``<registry>/.pull-<name>-*`` (same
filesystem) and moves the finished image into place with rename(2): readers see the old image
or the new one, never a half-written one. Each staging dir holds an flock while in use, so the
leftovers of a killed pull are recognised and removed by the next pull.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import ConflictError, FlakeError, NotFoundError
from ..launch import names, statedir
from ..settings import Settings

COMPONENTS = ("rootfs", "kernel", "initrd", "checksum")
SCI_MARK = "sci.sha256"  # written by a pull that installed flake-pilot's sci: the sha256 of that sci
STAGING_PREFIX = ".pull-"
TRASH_PREFIX = ".trash-"


def registry_dir(cfg: Settings) -> str:
    return cfg.firecracker_registry_dir


def images_dir(cfg: Settings) -> str:
    return os.path.join(registry_dir(cfg), "images")


def image_dir(cfg: Settings, name: str) -> str:
    return os.path.join(images_dir(cfg), names.app_name(name, "VM image name"))


@dataclass(frozen=True)
class Image:
    name: str
    path: str
    rootfs: str
    kernel: str
    initrd: str | None
    rootfs_size: int
    sci: bool = False  # flake-pilot's sci was installed by the pull (SCI_MARK): calls run as sci sessions


def get(cfg: Settings, name: str) -> Image:
    """A registered image; NotFoundError unless rootfs and kernel exist."""
    path = image_dir(cfg, name)
    rootfs, kernel, initrd = (os.path.join(path, c) for c in ("rootfs", "kernel", "initrd"))
    for what, file in (("rootfs", rootfs), ("kernel", kernel)):
        if not os.path.isfile(file):
            raise NotFoundError(f"VM image {name!r}: no {what} image at {file} (pull it first)")
    has_initrd = os.path.isfile(initrd)
    has_sci = os.path.isfile(os.path.join(path, SCI_MARK))
    return Image(name, path, rootfs, kernel, initrd if has_initrd else None, os.path.getsize(rootfs), has_sci)


def list_images(cfg: Settings) -> list[Image]:
    try:
        entries = sorted(os.listdir(images_dir(cfg)))
    except FileNotFoundError:
        return []
    result = []
    for entry in entries:
        if entry.startswith("."):
            continue
        try:
            result.append(get(cfg, entry))
        except FlakeError:
            continue  # not a (complete) image
    return result


def _ensure_dirs(cfg: Settings) -> None:
    for path in (registry_dir(cfg), images_dir(cfg), os.path.join(registry_dir(cfg), "storage")):
        os.makedirs(path, mode=0o755, exist_ok=True)


@contextmanager
def _lock(cfg: Settings) -> Iterator[None]:
    with statedir.locked(os.path.join(registry_dir(cfg), ".registry.lock")):
        yield


def clean_stale(cfg: Settings) -> None:
    """Remove staging/trash dirs of pulls and removals that died (their flock is free)."""
    base = registry_dir(cfg)
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return
    for entry in entries:
        path = os.path.join(base, entry)
        if entry.startswith(TRASH_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.startswith(STAGING_PREFIX):
            try:
                fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    continue  # a pull in progress
                raise
            finally:
                os.close(fd)
            shutil.rmtree(path, ignore_errors=True)


class Staging:
    """A private staging dir; ``image`` is the dir that becomes ``images/<name>``."""

    def __init__(self, cfg: Settings, name: str) -> None:
        self.cfg, self.name = cfg, name
        self.root = ""
        self.fd = -1

    @property
    def image(self) -> str:
        return os.path.join(self.root, "image")

    @property
    def download(self) -> str:
        return os.path.join(self.root, "download")

    def __enter__(self) -> Staging:
        try:
            _ensure_dirs(self.cfg)
            clean_stale(self.cfg)
            self.root = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{self.name}-", dir=registry_dir(self.cfg))
        except OSError as exc:
            own = not self.cfg.user_mode and exc.errno == errno.EACCES
            hint = " (use --user for your own registry)" if own else ""
            raise FlakeError(
                f"{exc.filename or registry_dir(self.cfg)}: cannot use the registry: {exc.strerror}{hint}"
            ) from exc
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self.fd = os.open(os.path.join(self.root, ".lock"), flags, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.mkdir(self.image, 0o755)
        os.mkdir(self.download, 0o700)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self.fd)

    def commit(self, force: bool) -> str:
        """Move the staged image into the registry (replacing an old one only with *force*)."""
        target = image_dir(self.cfg, self.name)
        os.chmod(self.image, 0o755)
        for entry in os.listdir(self.image):
            os.chmod(os.path.join(self.image, entry), 0o644)
        with _lock(self.cfg):
            trash = None
            if os.path.lexists(target):
                if not force:
                    raise ConflictError(f"{target}: VM image {self.name!r} exists; use --force to replace it")
                trash = os.path.join(self.root, "old")
                os.rename(target, trash)
            try:
                os.rename(self.image, target)
            except OSError as exc:
                if trash is not None:
                    os.rename(trash, target)
                raise FlakeError(f"{target}: cannot move the new image into place: {exc.strerror}") from exc
        return target


def check_absent(cfg: Settings, name: str, force: bool) -> None:
    target = image_dir(cfg, name)
    if os.path.lexists(target) and not force:
        raise ConflictError(f"{target}: VM image {name!r} already exists; use --force to replace it")


def remove(cfg: Settings, name: str) -> str:
    """Take the image dir out of the registry (one rename), then delete it."""
    target = image_dir(cfg, name)
    with _lock(cfg):
        if not os.path.lexists(target):
            raise NotFoundError(f"{target}: no VM image {name!r}")
        trash = tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{name}-", dir=registry_dir(cfg))
        os.rename(target, os.path.join(trash, name))
    shutil.rmtree(trash, ignore_errors=True)
    return target
