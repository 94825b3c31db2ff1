"""Per-instance overlay disk: a sparse ext2 image attached as /dev/vdb (the write layer).

Layout as in the original, which sci mounts in the guest::

    rootfs/         mount point of the overlay root
    rootfs_upper/   overlayfs upperdir: include.tar / include.path land here
    rootfs_work/    overlayfs workdir

No root and no mounts: the includes are staged in a private directory and written into the new
filesystem by ``mkfs.ext2 -d``. The image is built under a temporary name and renamed into
place, so a failure never leaves a half-made overlay behind.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from ..errors import ConfigError, EngineError, SecurityError

if TYPE_CHECKING:
    from .. import flakeconf
    from ..launch.firecracker import plan

    Include = flakeconf.Include | plan.Include

LAYOUT = ("rootfs", "rootfs_upper", "rootfs_work")


def _mkfs() -> str:
    for path in ("/usr/sbin/mkfs.ext2", "/sbin/mkfs.ext2"):
        if os.access(path, os.X_OK):
            return path
    from ..launch.runner import which

    return which("mkfs.ext2")


def usable(path: str) -> bool:
    """True for an existing overlay that is a regular file (a symlink is refused)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise SecurityError(f"{path}: overlay is not a regular file owned by the caller, refusing to use it")
    return True


def _stage(root: str, include: Include, config_file: str) -> None:
    import shutil  # only when an overlay is built (not on a warm launch)

    for name in LAYOUT:
        os.mkdir(os.path.join(root, name), 0o755)
    upper = os.path.join(root, "rootfs_upper")
    for tar in include.tar:
        if not tar.startswith("/"):
            raise ConfigError(f"{config_file}: key 'include.tar': {tar!r} is not an absolute path")
        if not os.path.isfile(tar):
            raise ConfigError(f"{config_file}: key 'include.tar': {tar} does not exist")
        from ..launch.runner import run

        run(["tar", "-C", upper, "-xf", tar])
    for src in include.path:
        if not src.startswith("/") or ".." in src.split("/"):
            raise ConfigError(f"{config_file}: key 'include.path': {src!r}: not absolute or has '..'")
        src = src.rstrip("/") or "/"
        if not os.path.lexists(src):
            raise ConfigError(f"{config_file}: key 'include.path': {src} does not exist")
        dest = os.path.join(upper, src.lstrip("/"))
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest, follow_symlinks=False)


def create(path: str, size: int, include: Include, config_file: str) -> None:
    """Build a fresh overlay image of *size* bytes (sparse) at *path*, includes inside."""
    tmp = f"{path}.{os.getpid()}.tmp"
    staging = f"{path}.{os.getpid()}.d"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        os.mkdir(staging, 0o700)
        os.chmod(staging, 0o755)  # becomes the overlay's root directory; the parent stays private
        try:
            _stage(staging, include, config_file)
        except OSError as exc:
            raise EngineError(f"{path}: cannot stage the includes: {exc}") from exc
        from ..launch.runner import run

        run([_mkfs(), "-F", "-q", "-d", staging, tmp])
        os.replace(tmp, path)
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
