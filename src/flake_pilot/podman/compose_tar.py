"""Layer tars for composition: include tars (re-written, checked), host trees, and file signatures.

Every layer we write is a plain uncompressed tar whose sha256 is its OCI diff ID. Names are
relative, never contain '..', and hard links point inside the layer; podman applies the layer
in its own chroot, so symlinks inside the image cannot redirect a write onto the host either.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable
from typing import IO

from ..errors import NotFoundError, SecurityError
from .compose_store import walk


class _HashingFile:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.sha = handle, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.handle.tell()


def write_layer(path: str, fill: Callable[[tarfile.TarFile], None]) -> str:
    """Write a layer tar to *path* via *fill*; returns its diff ID ``sha256:<hex>``."""
    with open(path, "xb") as raw:
        hashing = _HashingFile(raw)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            fill(tar)
    return "sha256:" + hashing.sha.hexdigest()


def clean_name(name: str, where: str) -> str:
    """A member name made relative; '..' anywhere is refused (never write outside the root)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in name:
        raise SecurityError(f"{where}: member {name!r} points outside the container root, refusing it")
    return "/".join(parts)


def copy_tar(src_path: str, tar: tarfile.TarFile, where: str) -> None:
    """Copy an include tar (any compression) member by member, checking every name."""
    try:
        src = tarfile.open(src_path, mode="r|*")
    except FileNotFoundError as exc:
        raise NotFoundError(f"{where}: {src_path}: no such file") from exc
    except PermissionError as exc:
        raise SecurityError(f"{where}: {src_path}: cannot read: permission denied") from exc
    except (OSError, tarfile.TarError) as exc:
        raise NotFoundError(f"{where}: {src_path}: not a readable tar archive ({exc})") from exc
    with src:
        try:
            for member in src:
                name = clean_name(member.name, f"{where} {src_path}")
                if not name:
                    continue  # the root itself keeps the image's owner and mode
                member.name = name
                member.uname = member.gname = ""
                if member.islnk():
                    member.linkname = clean_name(member.linkname, f"{where} {src_path}")
                if member.isreg():
                    tar.addfile(member, src.extractfile(member))
                elif member.isdir() or member.issym() or member.islnk() or member.isdev() or member.isfifo():
                    tar.addfile(member)
        except tarfile.TarError as exc:
            raise NotFoundError(f"{where}: {src_path}: damaged tar archive ({exc})") from exc


def add_tree(tar: tarfile.TarFile, path: str, check: Callable[[str, os.stat_result], bool]) -> None:
    """Add a host file or directory tree at the same path, never following symlinks.

    *check(path, st)* decides per entry (True: add); it raises to abort.
    """
    skipped: list[str] = []
    for entry, st in walk(path):
        if any(entry.startswith(d + "/") for d in skipped):
            continue
        if not check(entry, st):
            skipped.append(entry)
            continue
        info = tarfile.TarInfo(entry.lstrip("/"))
        info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(entry)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise SecurityError(f"{entry}: cannot read: {exc.strerror}") from exc
            with os.fdopen(fd, "rb") as handle:
                info.size = os.fstat(fd).st_size
                tar.addfile(info, handle)
