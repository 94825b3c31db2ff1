"""Private per-user state directories (container-ID files, VM PIDs, sockets).

Layout as in the original: a shared base (``/tmp/flakes``, mode 1777) with one ``<uid>``
directory per caller (0700, owned by the caller). Symlinks are refused everywhere.
"""

from . import fastos

TYPE_CHECKING = False  # typing is not imported at launch; mypy treats this name as True
if TYPE_CHECKING:
    from typing import NoReturn

_SAFE = fastos.O_NOFOLLOW | fastos.O_CLOEXEC  # never through a symlink, never into a child


def _refuse(message: str) -> "NoReturn":
    from .errors import SecurityError  # only on failure: a launch does not import the errors

    raise SecurityError(message)


def _check_base(base: str) -> None:
    try:
        st = fastos.lstat(base)
    except FileNotFoundError:
        import os

        os.makedirs(fastos.dirname(base) or "/", exist_ok=True)
        try:
            os.mkdir(base, 0o700)
            os.chmod(base, 0o1777)
        except FileExistsError:
            pass
        st = os.lstat(base)
    if not fastos.S_ISDIR(st.st_mode):
        _refuse(f"{base}: state base is not a directory (symlink or file), refusing to use it")
    if st.st_mode & fastos.S_IWOTH and not st.st_mode & fastos.S_ISVTX:
        _refuse(f"{base}: world writable without the sticky bit; fix with: chmod 1777 {base}")
    if (
        st.st_uid not in (0, fastos.getuid())
        and st.st_mode & (fastos.S_IWOTH | fastos.S_IWGRP)
        and not (st.st_mode & fastos.S_ISVTX)
    ):
        _refuse(f"{base}: writable by others and not owned by root or the caller")


def private_dir(base: str) -> str:
    """``<base>/<uid>``: created 0700 if missing, verified to be a real dir owned by the caller."""
    _check_base(base)
    uid = fastos.getuid()
    path = fastos.join(base, str(uid))
    try:
        fastos.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = fastos.lstat(path)
    if not fastos.S_ISDIR(st.st_mode):
        _refuse(f"{path}: is a symlink or not a directory, refusing to use it")
    if st.st_uid != uid:
        _refuse(f"{path}: owned by uid {st.st_uid}, not by the caller (uid {uid})")
    if st.st_mode & 0o077:
        fastos.chmod(path, 0o700)
    return path


def check_name(directory: str, name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        _refuse(f"{name!r}: not a valid state file name")
    return fastos.join(directory, name)


def _open(path: str, flags: int) -> int:
    """open(2) that never follows a symlink and refuses one with SecurityError."""
    try:
        return fastos.open(path, flags | _SAFE, 0o600)
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            _refuse(f"{path}: is a symbolic link, refusing to use it")
        raise


def read_file(path: str) -> str | None:
    """Content of a state file, None if missing; a symlink is refused."""
    try:
        fd = _open(path, fastos.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return fastos.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        fastos.close(fd)


def write_file(path: str, content: str) -> None:
    """Write a 0600 state file atomically (temp + rename), never following symlinks."""
    tmp = f"{path}.{fastos.getpid()}.tmp"
    fd = fastos.open(tmp, fastos.O_WRONLY | fastos.O_CREAT | fastos.O_EXCL | _SAFE, 0o600)
    try:
        fastos.write(fd, content.encode())
    finally:
        fastos.close(fd)
    fastos.replace(tmp, path)


def remove_file(path: str) -> None:
    try:
        fastos.unlink(path)
    except FileNotFoundError:
        pass


class locked:  # noqa: N801 - used like a function; a class avoids importing contextlib at launch
    """An flock held for the duration of a ``with`` block (released on exit or process death).

    The holder may ``unlink()`` the lock file (an instance removed with its files): a waiter that
    then gets the lock of the unlinked file notices and locks the path anew, so the files never
    pile up and two holders never coexist.
    """

    def __init__(self, path: str, shared: bool = False) -> None:
        self.path, self.shared, self.fd = path, shared, -1

    def __enter__(self) -> int:
        import fcntl

        while True:
            fd = _open(self.path, fastos.O_RDWR | fastos.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
                held = fastos.fstat(fd)
                try:
                    now = fastos.lstat(self.path)
                    current = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
                except FileNotFoundError:
                    current = False
            except BaseException:
                fastos.close(fd)
                raise
            if current:
                self.fd = fd
                return fd
            fastos.close(fd)  # removed while we waited: lock the file that is there now

    def unlink(self) -> None:
        """Remove the lock file while holding it (call inside the ``with`` block)."""
        remove_file(self.path)

    def __exit__(self, *exc: object) -> None:
        fastos.close(self.fd)
