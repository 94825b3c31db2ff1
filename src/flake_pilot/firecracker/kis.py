"""KIWI "kis" tarballs: rootfs, kernel, optional initrd and a ``.sha256`` of the rootfs.

Members are classified like the original by the text after the last dot: ``.sha256`` ->
``checksum``, ``.append`` dropped, ``.initrd`` -> ``initrd``, ``.kernel`` -> ``kernel``, anything
else -> ``rootfs`` (KIWI names it ``<name>.<arch>-<version>``). Unlike the original: extension-less
names are fine, KIWI metadata (``.md5``, ``.packages``, ``.verified``, ``.changes``) is ignored,
two candidates for one role are refused as ambiguous, and only plain top-level files are
accepted (no links, devices, sub directories, absolute names or ``..``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
from dataclasses import dataclass

from ..errors import DownloadError
from .download import SparseWriter

ROLES = {"sha256": "checksum", "initrd": "initrd", "kernel": "kernel"}
DROPPED = frozenset({"append", "md5", "packages", "verified", "changes"})
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Members:
    """Which archive member became which file (names as in the archive)."""

    rootfs: str
    kernel: str
    checksum: str
    initrd: str | None
    dropped: tuple[str, ...]


def role(name: str) -> str | None:
    """The role of a top-level member name; None when it is dropped."""
    base = name.rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[1] if "." in base.lstrip(".") else ""
    if ext in ROLES:
        return ROLES[ext]
    if ext in DROPPED:
        return None
    return "rootfs"


def _member_name(member: tarfile.TarInfo, archive: str) -> str:
    name = member.name
    if name.startswith("/") or "\0" in name:
        raise DownloadError(f"{archive}: member {name!r} has an absolute or invalid name")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../"):
        raise DownloadError(f"{archive}: member {name!r} points outside the archive")
    return norm


def extract(path: str, dest_dir: str, archive: str | None = None) -> Members:
    """Stream the archive at *path* (any compression tarfile knows) into ``dest_dir/{rootfs,...}``.

    *archive* names it in messages (the URL it came from); default: *path*.
    """
    archive = archive or path
    found: dict[str, str] = {}
    dropped: list[str] = []
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                name = _member_name(member, archive)
                if member.isdir():
                    if name == ".":
                        continue
                    raise DownloadError(f"{archive}: unexpected directory {name!r} (a kis archive is flat)")
                if not member.isreg():
                    raise DownloadError(f"{archive}: member {name!r} is not a regular file (links refused)")
                if "/" in name:
                    raise DownloadError(f"{archive}: unexpected member {name!r} in a sub directory")
                target = role(name)
                if target is None:
                    dropped.append(name)
                    continue
                if target in found:
                    raise DownloadError(
                        f"{archive}: ambiguous kis archive: {found[target]!r} and {name!r} both look like the {target}"
                    )
                found[target] = name
                source = tar.extractfile(member)
                if source is None:
                    raise DownloadError(f"{archive}: cannot read member {name!r}")
                with source, open(os.path.join(dest_dir, target), "xb") as out:
                    writer = SparseWriter(out)
                    while data := source.read(CHUNK):
                        writer.write(data)
                    writer.finish()
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        if "could not be opened successfully" in reason:
            reason = "unknown format (expected tar, tar.gz, tar.bz2 or tar.xz)"
        raise DownloadError(f"{archive}: not a readable tar archive: {reason}") from None
    missing = [r for r in ("rootfs", "kernel", "checksum") if r not in found]
    if missing:
        raise DownloadError(f"{archive}: not a KIWI kis image: no {', '.join(missing)} member")
    return Members(found["rootfs"], found["kernel"], found["checksum"], found.get("initrd"), tuple(dropped))


def verify_checksum(rootfs: str, checksum_file: str, where: str) -> str:
    """Verify ``<sha256> [<blocks> <blocksize>]`` against the rootfs (first blocks*blocksize bytes)."""
    with open(checksum_file, encoding="ascii", errors="replace") as handle:
        words = handle.read(4096).split()
    if not words or len(words[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in words[0]):
        raise DownloadError(f"{where}: checksum member is not a sha256 checksum")
    expected = words[0].lower()
    limit: int | None = None
    if len(words) >= 3 and words[1].isdigit() and words[2].isdigit():
        limit = int(words[1]) * int(words[2])
    digest = hashlib.sha256()
    remaining = limit
    with open(rootfs, "rb") as handle:
        while remaining is None or remaining > 0:
            data = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not data:
                break
            digest.update(data)
            if remaining is not None:
                remaining -= len(data)
    if remaining:
        raise DownloadError(f"{where}: rootfs is shorter than the {limit} bytes its checksum covers")
    if digest.hexdigest() != expected:
        got = digest.hexdigest()
        raise DownloadError(f"{where}: rootfs checksum mismatch (expected {expected}, got {got})")
    return expected
