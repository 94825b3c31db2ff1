"""Look into and modify an ext2/3/4 rootfs image without mounting it (e2fsprogs' debugfs).

``debugfs -w`` needs write access to the image file only, no root, no loop device. debugfs
exits 0 even when a command fails, so every change is checked by reading it back. A command is
only issued when its precondition holds (``mkdir`` on an existing name corrupts the image).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from ..errors import EngineError, UsageError
from ..launch import runner

SCI_PATH = "/usr/sbin/sci"
PYTHON_PATH = "/usr/bin/python3"
# Directories sci uses in the guest (mount points and the overlay root), with their modes.
SCI_DIRS = (
    ("/usr", 0o755),
    ("/usr/sbin", 0o755),
    ("/overlayroot", 0o755),
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/mnt", 0o755),
)
_TYPE = re.compile(r"Type:\s+(\w+)")
_SAFE = re.compile(r"[A-Za-z0-9._/@+-]+")
_EXT_MAGIC_OFFSET = 1024 + 0x38
TIMEOUT = 120.0


def debugfs() -> str:
    """debugfs from PATH, else /usr/sbin or /sbin (not in a normal user's PATH)."""
    for candidate in (shutil.which("debugfs"), "/usr/sbin/debugfs", "/sbin/debugfs"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EngineError("debugfs: not found (install e2fsprogs)")


def is_ext(image: str) -> bool:
    """True when *image* carries an ext2/3/4 superblock."""
    try:
        with open(image, "rb") as handle:
            handle.seek(_EXT_MAGIC_OFFSET)
            return handle.read(2) == b"\x53\xef"
    except OSError:
        return False


def file_type(image: str, path: str) -> str | None:
    """``regular``, ``directory``, ``symlink``, ... of *path* in the image; None when missing."""
    _check_path(path)
    proc = runner.run([debugfs(), "-R", f"stat {path}", image], timeout=TIMEOUT)
    match = _TYPE.search(proc.stdout.decode(errors="replace"))
    return match.group(1) if match else None


def read_file(image: str, path: str) -> bytes | None:
    """Content of a regular file in the image; None when it is missing or not a regular file."""
    if file_type(image, path) != "regular":
        return None
    return runner.run([debugfs(), "-R", f"cat {path}", image], timeout=TIMEOUT).stdout


@dataclass(frozen=True)
class Readiness:
    """What a VM flake needs in the guest."""

    filesystem: bool  # an ext2/3/4 image we could look into
    sci: bool
    python3: bool

    def summary(self) -> str:
        if not self.filesystem:
            return "rootfs is not an ext2/3/4 image: could not check for sci and python3"
        have = {"sci": self.sci, "python3": self.python3}
        return ", ".join(f"{k} {'present' if v else 'MISSING'}" for k, v in have.items())

    @property
    def ready(self) -> bool:
        return self.filesystem and self.sci and self.python3


def readiness(image: str) -> Readiness:
    if not is_ext(image):
        return Readiness(False, False, False)
    return Readiness(
        True,
        file_type(image, SCI_PATH) == "regular",
        file_type(image, PYTHON_PATH) in ("regular", "symlink"),
    )


def _check_path(path: str) -> None:
    if not path.startswith("/") or not _SAFE.fullmatch(path) or ".." in path.split("/"):
        raise UsageError(f"{path!r}: not a path debugfs can be given safely")


def install_sci(image: str, sci_file: str) -> None:
    """Install *sci_file* as /usr/sbin/sci (root:root 0755) plus the directories sci needs."""
    if not is_ext(image):
        raise UsageError(f"{image}: not an ext2/3/4 image; sci can only be installed into those")
    if not os.access(image, os.W_OK):
        raise EngineError(f"{image}: not writable, cannot install sci")
    commands: list[str] = []
    for path, mode in SCI_DIRS:
        kind = file_type(image, path)
        if kind is None:
            commands += [
                f"mkdir {path}",
                f"sif {path} mode 0{0o040000 | mode:o}",
                f"sif {path} uid 0",
                f"sif {path} gid 0",
            ]
        elif kind not in ("directory", "symlink"):
            raise EngineError(f"{image}: {path} exists in the image but is a {kind}, not a directory")
    kind = file_type(image, SCI_PATH)
    if kind == "directory":
        raise EngineError(f"{image}: {SCI_PATH} is a directory in the image, refusing to replace it")
    if kind is not None:
        commands.append(f"rm {SCI_PATH}")
    with open(sci_file, "rb") as handle:
        content = handle.read()
    # debugfs parses its command line itself: give it a private copy under a plain name
    base = tempfile.gettempdir()
    tmp_dir = tempfile.mkdtemp(prefix="flake-sci-", dir=base if _SAFE.fullmatch(base) else "/tmp")
    try:
        local = os.path.join(tmp_dir, "sci")
        with open(local, "wb") as out:
            out.write(content)
        _check_path(local)
        parent, name = SCI_PATH.rsplit("/", 1)
        commands += [
            f"cd {parent}",
            f"write {local} {name}",
            f"sif {SCI_PATH} mode 0100755",
            f"sif {SCI_PATH} uid 0",
            f"sif {SCI_PATH} gid 0",
        ]
        script = os.path.join(tmp_dir, "commands")
        with open(script, "w", encoding="ascii") as out:
            out.write("\n".join(commands) + "\n")
        runner.run([debugfs(), "-w", "-f", script, image], timeout=TIMEOUT)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    back = read_file(image, SCI_PATH)
    if back is None or hashlib.sha256(back).digest() != hashlib.sha256(content).digest():
        raise EngineError(f"{image}: installing {SCI_PATH} with debugfs failed (read-back differs)")
    for path, _mode in SCI_DIRS:
        if file_type(image, path) not in ("directory", "symlink"):
            raise EngineError(f"{image}: creating {path} with debugfs failed")
