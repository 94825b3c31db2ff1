"""The package tree and ``dpkg-deb``: no root needed, the same bytes for the same inputs.

Everything is staged in a private directory inside the output directory and only the finished
``.deb`` is renamed into place, so a failure leaves nothing behind. Every file gets the mtime
``SOURCE_DATE_EPOCH`` (or the time of the build), fixed modes and, through ``--root-owner-group``,
owner root; ``dpkg-deb`` sorts the members and uses ``SOURCE_DATE_EPOCH`` for the ar header.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import yamlio
from ..errors import ConflictError, EngineError, FlakeError, UsageError
from ..launch import names
from ..launch.runner import first_line, run
from . import LAUNCHER_DIR, MANIFEST, PACKAGES_DIR
from .control import Meta, control_text, maintainer_scripts

COMPRESSION = ("xz", "gzip", "none")


@dataclass(frozen=True)
class App:
    path: str  # the command on the host
    target: str  # the program in the container or VM


def parse_app(value: str) -> App:
    """``HOST_PATH[:TARGET]`` (the original's ``HOST_PATH;TARGET`` is accepted too)."""
    sep = ";" if ";" in value else ":"
    host, _, target = value.partition(sep)
    host = names.absolute_path(host, "--app") if host else ""
    if not host:
        raise UsageError(f"--app: {value!r}: give an absolute host path, e.g. /usr/bin/tool[:/bin/tool]")
    names.app_name(os.path.basename(host), "--app name")
    if target:
        names.absolute_path(target, f"--app {host}: target")
    return App(host, target or host)


def check_apps(apps: list[App], package: str) -> None:
    """No app twice, no two apps with one registration name, none a file of another package."""
    seen: dict[str, str] = {}
    for app in apps:
        base = os.path.basename(app.path)
        if base in seen:
            raise UsageError(f"--app: {app.path} and {seen[base]} would share the registration {base}.yaml")
        seen[base] = app.path
        if app.path.rstrip("/") == "" or os.path.normpath(app.path).startswith(PACKAGES_DIR):
            raise UsageError(f"--app: {app.path} is inside {PACKAGES_DIR}")
        owner = dpkg_owner(app.path)
        if owner is not None and owner != package:
            raise ConflictError(f"--app: {app.path} belongs to package {owner} (dpkg -S)")


def dpkg_owner(path: str) -> str | None:
    """The package that owns *path* on this host, by ``dpkg -S`` (None: no package, or no dpkg)."""
    if shutil.which("dpkg") is None:
        return None
    proc = run(["dpkg", "-S", path], check=False)
    for line in proc.stdout.decode(errors="replace").splitlines():
        owners, sep, where = line.rpartition(": ")
        if sep and where == path and not owners.startswith("diversion by"):
            return owners.split(",")[0].split(":")[0].strip()
    return None


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return int(time.time())
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH: {value!r} is not a number of seconds")
    return int(value)


@contextmanager
def staging(output_dir: str) -> Iterator[str]:
    """A private work dir next to the output; removed whatever happens."""
    if not os.path.isdir(output_dir):
        raise UsageError(f"{output_dir}: output directory does not exist")
    try:
        work = tempfile.mkdtemp(prefix=".build-deb-", dir=os.path.abspath(output_dir))
    except OSError as exc:
        raise FlakeError(f"{output_dir}: cannot write the package there: {exc.strerror}") from exc
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deb_file_name(meta: Meta) -> str:
    return f"{meta.package}_{meta.version.split(':', 1)[-1]}_{meta.architecture}.deb"


def _normalise(root: str, mtime: int) -> int:
    """Fixed modes and mtimes under *root*; returns the installed size in KiB (dpkg's count)."""
    kib = 0
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                kib += 1
            elif os.path.isdir(path):
                os.chmod(path, 0o755)
                kib += 1
            else:
                script = os.path.basename(directory) == "DEBIAN" and name != "control"
                os.chmod(path, 0o755 if script else 0o644)
                if os.path.basename(directory) != "DEBIAN":
                    kib += (os.path.getsize(path) + 1023) // 1024
            os.utime(path, (mtime, mtime), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (mtime, mtime))
    return kib


def build(
    *,
    work: str,
    meta: Meta,
    engine: str,
    launcher: str,
    manifest: dict[str, Any],
    payload: dict[str, str],
    apps: list[App],
    output_dir: str,
    mtime: int,
    compression: str,
) -> str:
    """Assemble the tree in *work*, run dpkg-deb, move the .deb into *output_dir*; returns its path.

    *payload* maps paths relative to the package's data dir to files in *work* (moved there).
    """
    root = os.path.join(work, "root")
    data = os.path.join(root, PACKAGES_DIR.lstrip("/"), meta.package)
    os.makedirs(data)
    os.makedirs(os.path.join(root, "DEBIAN"))
    for rel, src in sorted(payload.items()):
        dest = os.path.join(data, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(src, dest)
    with open(os.path.join(data, MANIFEST), "w", encoding="utf-8") as handle:
        handle.write(yamlio.dump(manifest))
    for app in apps:  # shipped, so dpkg knows who owns the command; postinst writes the registration
        link = os.path.join(root, app.path.lstrip("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.join(LAUNCHER_DIR, launcher), link)
    for name, text in maintainer_scripts(engine, meta.package).items():
        with open(os.path.join(root, "DEBIAN", name), "w", encoding="utf-8") as handle:
            handle.write(text)
    kib = _normalise(root, mtime)
    with open(os.path.join(root, "DEBIAN", "control"), "w", encoding="utf-8") as handle:
        handle.write(control_text(meta, kib))
    os.chmod(os.path.join(root, "DEBIAN", "control"), 0o644)
    os.utime(os.path.join(root, "DEBIAN", "control"), (mtime, mtime))
    os.utime(os.path.join(root, "DEBIAN"), (mtime, mtime))
    built = os.path.join(work, "out.deb")
    env = {"SOURCE_DATE_EPOCH": str(mtime)}
    proc = run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", root, built],
        env=env,
        check=False,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise EngineError(f"dpkg-deb --build failed: {first_line(proc.stderr)}", proc.returncode)
    os.chmod(built, 0o644)
    dest = os.path.join(output_dir, deb_file_name(meta))
    os.replace(built, dest)
    return dest
