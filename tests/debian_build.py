"""Building this tree as a Debian package (dpkg-buildpackage in a copy) and asking dpkg about it:
shared by the packaging tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # no pyenv/venv: the build must use Debian's python3
PKG = "flake-pilot"
IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", ".pybuild"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    for key in ("CONTAINERS_CONF",):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", clean_env())
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=IGNORE, symlinks=True)
    for leftover in ("debian/flake-pilot", "debian/generated", "debian/.debhelper"):
        shutil.rmtree(dest / leftover, ignore_errors=True)
    return dest


def build_deb(tree: Path, version: str | None = None) -> Path:
    """dpkg-buildpackage -us -uc -b in *tree*; with *version*, a changelog entry bumps it first."""
    if version:
        changelog = tree / "debian" / "changelog"
        entry = (
            f"{PKG} ({version}) unstable; urgency=medium\n\n  * Test upgrade build.\n\n"
            " -- flake-pilot developers <dev@flake-pilot.invalid>  Mon, 30 Nov 2026 00:00:00 +0000\n\n"
        )
        changelog.write_text(entry + changelog.read_text())
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, timeout=600)
    ver = run(["dpkg-parsechangelog", "-S", "Version"], cwd=tree).stdout.strip()
    deb = tree.parent / f"{PKG}_{ver}_all.deb"
    assert deb.is_file(), f"dpkg-buildpackage did not produce {deb}"
    return deb


def installed_version() -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", PKG], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.startswith("install ok installed"):
        return None
    return proc.stdout.split()[-1]
