"""Host dependencies of delta images: the ``/removed`` list and the ``/systemfiles`` generator.

Trust model (unlike the original, which ran ``/systemfiles`` as root on the host):
* the lists are DATA: each line names a host path; nothing an image ships runs on the host;
* ``/systemfiles`` runs inside a throw-away container of the image that ships it
  (``--network=none``, no capabilities, no host mounts); its stdout is read as such a list;
* a listed path must be absolute without '..'; only regular files, directories and symlinks
  (copied as links, never followed) that are world-readable are copied, so an image cannot pull
  private host files (``/etc/shadow``, keys) into its container;
* and only when anyone could reach them (``path_refusal``): every directory on the way is
  world-searchable (a 0644 file in a 0700 directory is private), owned by root or the caller and
  not writable by others unless sticky, and a symlink on the way is followed only when root or
  the caller owns it (``/lib -> usr/lib``), never one another user planted;
* the copies go into a layer that podman applies inside the container root.
"""

from __future__ import annotations

import os
import stat

from ..errors import EngineError, NotFoundError, SecurityError
from ..launch import runner

MAX_PATHS = 4096


def parse_list(text: str, where: str) -> list[str]:
    """Host paths of a ``removed`` list (one per line; blank lines and '#' comments skipped)."""
    paths: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = "/" + line.lstrip("/")
        if ".." in path.split("/") or "\0" in path:
            raise SecurityError(f"{where} line {number}: {line!r} contains '..', refusing it")
        path = os.path.normpath(path)
        if path != "/" and path not in paths:
            paths.append(path)
        if len(paths) > MAX_PATHS:
            raise SecurityError(f"{where}: more than {MAX_PATHS} host paths, refusing the list")
    return paths


def run_generator(podman: list[str], env: dict[str, str], image_id: str, where: str) -> str:
    """Run the image's ``/systemfiles`` inside a container of that image; return its stdout."""
    argv = [
        *podman,
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--entrypoint",
        "/bin/sh",
        image_id,
        "/systemfiles",
    ]
    try:
        proc = runner.run(argv, env=env, timeout=120)
    except EngineError as exc:
        raise EngineError(f"{where}: the /systemfiles generator failed inside the container: {exc}") from exc
    return proc.stdout.decode(errors="replace")


MAX_LINKS = 40  # symlinks followed on the way to one path (the kernel's limit)


def path_refusal(path: str) -> str | None:
    """Why host *path* must not be copied (see the module docstring), None when it may be.
    Resolves the directories on the way one component at a time with lstat."""
    uid = os.getuid()
    todo = [part for part in path.split("/") if part][:-1]  # the last component: HostFileCheck
    done = "/"
    links = 0
    while True:
        st = os.lstat(done)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if st.st_uid not in (0, uid):
                return f"the symlink {done} on the way belongs to uid {st.st_uid}, not following it"
            if links > MAX_LINKS:
                return f"more than {MAX_LINKS} symlinks on the way"
            target = os.readlink(done)
            parent = os.path.dirname(done)
            todo = [part for part in target.split("/") if part] + todo
            done = "/" if target.startswith("/") else parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            return f"{done} on the way is not a directory"
        if not st.st_mode & stat.S_IXOTH:
            return f"the directory {done} on the way is private (mode {stat.S_IMODE(st.st_mode):o})"
        if st.st_uid not in (0, uid):
            return f"the directory {done} on the way belongs to uid {st.st_uid}, who could swap what it holds"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return f"the directory {done} on the way is writable by others"
        if not todo:
            return None
        part = todo.pop(0)
        if part == "..":
            done = os.path.dirname(done) or "/"
        elif part != ".":
            done = os.path.join(done, part)


class HostFileCheck:
    """Policy for each host file copied for an image; collects skipped paths."""

    def __init__(self, where: str, ignore_errors: bool) -> None:
        self.where, self.ignore_errors = where, ignore_errors
        self.skipped: list[str] = []

    def refuse(self, path: str, why: str, cls: type[Exception]) -> bool:
        if self.ignore_errors:
            self.skipped.append(path)
            return False
        raise cls(f"{self.where}: host file {path}: {why} (%ignore_sync_error skips it)")

    def exists(self, path: str) -> bool:
        """The listed *path* exists and may be reached (``path_refusal``)."""
        if not os.path.lexists(path):
            return self.refuse(path, "not found on this host", NotFoundError)
        try:
            why = path_refusal(path)
        except OSError as exc:
            why = f"cannot check the way to it: {exc.strerror}"
        return self.refuse(path, why, SecurityError) if why else True

    def __call__(self, path: str, st: os.stat_result) -> bool:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return True
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return self.refuse(path, "not a regular file, directory or symlink", SecurityError)
        if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
            return self.refuse(path, "not world-readable, refusing to copy it into a container", SecurityError)
        return True
