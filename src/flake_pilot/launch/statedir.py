"""Private per-user state directories (container-ID files, VM PIDs, sockets).

The state of a caller lives in ``<base>/<uid>`` (0700, owned by the caller). The base is
``/run/flakes`` for root (only root can create it), ``$XDG_RUNTIME_DIR/flakes`` for a user whose
runtime dir is their own, else ``$XDG_CACHE_HOME/flake-pilot/run`` (``~/.cache``); or the
configured ``podman_ids_dir`` / ``firecracker_ids_dir`` (the original's shared ``/tmp/flakes``).

``private_dir`` walks the path from ``/`` one component at a time with directory file
descriptors (O_NOFOLLOW|O_DIRECTORY: a symlink anywhere is refused) and checks each directory:
owned by root or the caller (another user could rename what it holds), and not writable by
others unless sticky (where the next component is again root's or the caller's). Once the walk
holds, no other user can change what the path names, so the state files are then used by path
(podman and conmon write theirs by path). Every state file is opened with O_NOFOLLOW (a symlink
is refused), O_NONBLOCK (a FIFO never blocks) and must be a regular file of bounded size.
"""

from . import fastos

TYPE_CHECKING = False  # typing is not imported at launch; mypy treats this name as True
if TYPE_CHECKING:
    from typing import NoReturn

_SAFE = fastos.O_NOFOLLOW | fastos.O_CLOEXEC  # never through a symlink, never into a child
_DIR = fastos.O_RDONLY | fastos.O_DIRECTORY | fastos.O_NOFOLLOW | fastos.O_CLOEXEC
MAX_STATE_SIZE = 4096  # a state file holds an ID, a PID or a fingerprint
MIN_FREE = 64 * 1024  # below this the state disk counts as full: refused before any engine call


def _refuse(message: str) -> "NoReturn":
    from ..errors import SecurityError  # only on failure: a launch does not import the errors

    raise SecurityError(message)


def default_base(uid: int | None = None) -> str:
    """The caller's state base when none is configured (see the module docstring)."""
    uid = fastos.getuid() if uid is None else uid
    if uid == 0:
        return "/run/flakes"
    env = fastos.environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        try:
            st = fastos.lstat(runtime)
        except OSError:
            st = None
        if st is not None and fastos.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077:
            return fastos.join(runtime, "flakes")
    cache = env.get("XDG_CACHE_HOME", "")
    if not cache.startswith("/"):
        home = env.get("HOME", "")
        if not home.startswith("/"):
            import pwd

            home = pwd.getpwuid(uid).pw_dir
        cache = fastos.join(home, ".cache")
    return fastos.join(cache, "flake-pilot", "run")


def _open_dir(fd: int, name: str, shown: str, create_mode: int) -> int:
    """openat(fd, name) as a directory, never through a symlink; created with *create_mode*
    (exactly, whatever the umask) when missing and *create_mode* is not 0."""
    try:
        return fastos.open(name, _DIR, dir_fd=fd)
    except FileNotFoundError:
        if not create_mode:
            raise
    except OSError as exc:
        import errno

        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse(f"{shown}: is a symbolic link or not a directory, refusing to use it as state dir")
        raise
    try:
        fastos.mkdir(name, 0o700, dir_fd=fd)
    except FileExistsError:
        return _open_dir(fd, name, shown, 0)  # created meanwhile: checked like any other
    new = fastos.open(name, _DIR, dir_fd=fd)
    fastos.fchmod(new, create_mode)
    return new


def _check_dir(fd: int, shown: str, uid: int) -> None:
    st = fastos.fstat(fd)
    if st.st_uid != 0 and st.st_uid != uid:
        _refuse(
            f"{shown}: owned by uid {st.st_uid}, neither root nor the caller (uid {uid}): another user "
            "could redirect the state dir, refusing it"
        )
    if st.st_mode & (fastos.S_IWGRP | fastos.S_IWOTH) and not st.st_mode & fastos.S_ISVTX:
        _refuse(f"{shown}: writable by others without the sticky bit; fix with: chmod 1777 {shown} (or chmod go-w)")


def _check_space(fd: int, shown: str, uid: int) -> None:
    """A full state disk fails the launch here, in one line, before any engine call: podman
    would fail half-way (its multi-line text, a conmon and ``runc init`` left behind)."""
    vfs = fastos.fstatvfs(fd)
    free = (vfs.f_bfree if uid == 0 else vfs.f_bavail) * vfs.f_frsize
    if free < MIN_FREE or (vfs.f_files and not vfs.f_favail):
        from ..errors import FlakeError

        raise FlakeError(f"{shown}: no space left on the state disk ({free // 1024} KiB free); free some space")


def private_dir(base: str | None = None) -> str:
    """``<base>/<uid>``, walked and checked from ``/`` by file descriptor (module docstring):
    missing components are created (by root: 0755, a configured base 1777 as it is shared; by a
    user: 0700), ``<uid>`` 0700 and owned by the caller. *base* None or "": the default."""
    return _walk(base, True)[0]


def check_private_dir(base: str | None = None) -> str:
    """The same walk and checks as ``private_dir`` (for ``flake-ctl doctor``) but creating and
    mending nothing: raises what ``private_dir`` would raise; returns "" when the state dir is
    usable as it is, else the first missing path, which ``private_dir`` would create."""
    return _walk(base, False)[1]


def _walk(base: str | None, create: bool) -> tuple[str, str]:
    """(``<base>/<uid>``, the first missing component or ""); creates and mends only if *create*."""
    uid = fastos.getuid()
    base = base or default_base(uid)
    shared = uid == 0 and base != "/run/flakes"  # root creates a configured base for all users
    parts = base.split("/")
    if not base.startswith("/") or ".." in parts:
        _refuse(f"{base}: the state base must be an absolute path without '..'")
    parts = [part for part in parts if part and part != "."]
    fd = fastos.open("/", _DIR)
    shown = ""
    try:
        _check_dir(fd, "/", uid)
        for index, part in enumerate(parts + [str(uid)]):
            shown += "/" + part
            last = index == len(parts) - 1
            mode = 0o700 if index == len(parts) else (0o1777 if shared and last else 0o755) if uid == 0 else 0o700
            try:
                child = _open_dir(fd, part, shown, mode if create else 0)
            except FileNotFoundError:
                if create:
                    raise
                _check_creatable(fd, shown)
                return base.rstrip("/") + "/" + str(uid), shown
            fastos.close(fd)
            fd = child
            if index < len(parts):
                _check_dir(fd, shown, uid)
        st = fastos.fstat(fd)
        if st.st_uid != uid:
            _refuse(f"{shown}: owned by uid {st.st_uid}, not by the caller (uid {uid}), refusing to use it")
        if st.st_mode & 0o077 and create:
            fastos.fchmod(fd, 0o700)
        _check_space(fd, shown, uid)
    except OSError as exc:
        _refuse(f"{shown or '/'}: cannot use it as state dir: {exc.strerror}")
    finally:
        fastos.close(fd)
    return shown, ""


def _check_creatable(fd: int, shown: str) -> None:
    """Could the caller create *shown* in the directory *fd*? (only when checking, never at launch)"""
    import os

    if not os.access(".", os.W_OK | os.X_OK, dir_fd=fd):
        _refuse(f"{shown}: missing, and its parent is not writable by uid {fastos.getuid()}")


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


def open_file(path: str, flags: int) -> int:
    """A state file's fd (``_open``: never through a symlink, a symlink refused)."""
    return _open(path, flags)


def read_file(path: str) -> str | None:
    """Content of a state file, None if missing, "" if damaged (a FIFO, directory, device or a
    file over MAX_STATE_SIZE: never blocks, never crashes; the caller treats it as garbage and
    ``remove_file`` clears it); a symlink is refused (SecurityError)."""
    try:
        fd = _open(path, fastos.O_RDONLY | fastos.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = fastos.fstat(fd)
        if not fastos.S_ISREG(st.st_mode) or st.st_size > MAX_STATE_SIZE:
            from . import debug

            debug.log(f"{path}: not a regular state file or too big: treated as damaged")
            return ""
        return fastos.read(fd, MAX_STATE_SIZE).decode("utf-8", "replace").strip()
    finally:
        fastos.close(fd)


def write_file(path: str, content: str | bytes) -> None:
    """Write a 0600 state file atomically (temp + rename), never following symlinks; what was
    there before (a damaged file, an empty directory) is replaced."""
    tmp = f"{path}.{fastos.getpid()}.tmp"
    fd = fastos.open(tmp, fastos.O_WRONLY | fastos.O_CREAT | fastos.O_EXCL | _SAFE, 0o600)
    try:
        try:
            data = content.encode() if isinstance(content, str) else content
            if fastos.write(fd, data) != len(data):
                raise OSError(28, "No space left on device", path)  # a short write: the disk is full
        finally:
            fastos.close(fd)
        try:
            fastos.replace(tmp, path)
        except IsADirectoryError:
            remove_file(path)
            fastos.replace(tmp, path)
    except BaseException:
        remove_file(tmp)  # nothing half-written is left (a full disk, a directory in the way)
        raise


def remove_file(path: str) -> None:
    """Remove a state file (never what a symlink points to); an empty directory in its place
    too, a non-empty one is refused."""
    try:
        fastos.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        try:
            fastos.rmdir(path)
        except OSError:
            _refuse(f"{path}: a directory where a state file belongs; remove it")


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
            try:
                fd = _open(self.path, fastos.O_RDWR | fastos.O_CREAT | fastos.O_NONBLOCK)
            except IsADirectoryError:
                _refuse(f"{self.path}: a directory where a lock file belongs; remove it")
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
