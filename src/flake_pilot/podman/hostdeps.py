"""Host dependencies of delta images: the ``/removed`` list and the ``/systemfiles`` generator.

Trust model (unlike the original, which ran ``/systemfiles`` as root on the host):
* the lists are DATA: each line names a host path; nothing an image ships runs on the host;
* ``/systemfiles`` runs inside a throw-away container of the image that ships it
  (``--network=none``, no capabilities, no host mounts); its stdout is read as such a list;
* a listed path must be absolute without '..'; only regular files, directories and symlinks
  (copied as links, never followed) that are world-readable are copied, so an image cannot pull
  private host files (``/etc/shadow``, keys) into its container;
* the copies go into a layer that podman applies inside the container root.
"""

from __future__ import annotations

import os
import stat

from .. import runner
from ..errors import EngineError, NotFoundError, SecurityError

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
        if os.path.lexists(path):
            return True
        return self.refuse(path, "not found on this host", NotFoundError)

    def __call__(self, path: str, st: os.stat_result) -> bool:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return True
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return self.refuse(path, "not a regular file, directory or symlink", SecurityError)
        if not mode & stat.S_IROTH:
            return self.refuse(path, "not world-readable, refusing to copy it into a container", SecurityError)
        return True
