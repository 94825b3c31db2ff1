"""Private per-user state directories (container-ID files, VM PIDs, sockets).

Layout as in the original: a shared base (``/tmp/flakes``, mode 1777) with one ``<uid>``
directory per caller (0700, owned by the caller). Symlinks are refused everywhere.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import SecurityError


def _check_base(base: str) -> None:
    try:
        st = os.lstat(base)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(base) or "/", exist_ok=True)
        try:
            os.mkdir(base, 0o700)
            os.chmod(base, 0o1777)
        except FileExistsError:
            pass
        st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode):
        raise SecurityError(f"{base}: state base is not a directory (symlink or file), refusing to use it")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise SecurityError(f"{base}: world writable without the sticky bit; fix with: chmod 1777 {base}")
    if st.st_uid not in (0, os.getuid()) and st.st_mode & (stat.S_IWOTH | stat.S_IWGRP) and not (
        st.st_mode & stat.S_ISVTX
    ):
        raise SecurityError(f"{base}: writable by others and not owned by root or the caller")


def private_dir(base: str) -> str:
    """``<base>/<uid>``: created 0700 if missing, verified to be a real dir owned by the caller."""
    _check_base(base)
    uid = os.getuid()
    path = os.path.join(base, str(uid))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SecurityError(f"{path}: is a symlink or not a directory, refusing to use it")
    if st.st_uid != uid:
        raise SecurityError(f"{path}: owned by uid {st.st_uid}, not by the caller (uid {uid})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def check_name(directory: str, name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise SecurityError(f"{name!r}: not a valid state file name")
    return os.path.join(directory, name)


def read_file(path: str) -> str | None:
    """Content of a state file, None if missing; a symlink is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecurityError(f"{path}: is a symbolic link, refusing to use it") from exc
        raise
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
        return handle.read(4096).strip()


def write_file(path: str, content: str) -> None:
    """Write a 0600 state file atomically (temp + rename), never following symlinks."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class locked:  # noqa: N801 - used like a function; a class avoids importing contextlib at launch
    """An flock held for the duration of a ``with`` block (released on exit or process death)."""

    def __init__(self, path: str, shared: bool = False) -> None:
        self.path, self.shared, self.fd = path, shared, -1

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SecurityError(f"{self.path}: is a symbolic link, refusing to use it") from exc
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
