"""scripts/write-launchers, the one writer of the installed launchers (make install, debian/rules):
one per console script of pyproject.toml, the app launchers without site, each one runnable."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "write-launchers"


def write(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_one_launcher_per_console_script(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts, fast = project["project"]["scripts"], project["tool"]["flake-pilot"]["fast-launchers"]
    assert set(fast) == {"podman-pilot", "firecracker-pilot"} <= set(scripts)
    libdir = str(ROOT / "src")
    done = write(sys.executable, libdir, str(tmp_path / "bin"))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "bin")) == sorted(scripts)
    for name, target in scripts.items():
        launcher = tmp_path / "bin" / name
        module, function = target.split(":")
        assert launcher.stat().st_mode & 0o777 == 0o755
        assert launcher.read_text().splitlines() == [
            f"#!{sys.executable} {'-IS' if name in fast else '-I'}",
            "import sys",
            f'sys.path.insert(0, "{libdir}")',
            f"from {module} import {function}",
            f"sys.exit({function}())",
        ]
    # the launcher runs, importing the package from LIBDIR (-I: PYTHONPATH and the cwd are ignored)
    version = subprocess.run(
        [str(tmp_path / "bin" / "flake-ctl"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("flake-ctl "), version.stderr


def test_relative_paths_in_the_launcher_are_refused(tmp_path: Path) -> None:
    for python, libdir in (("python3", "/usr/lib/flake-pilot"), ("/usr/bin/python3", "lib/flake-pilot")):
        done = write(python, libdir, str(tmp_path))
        assert done.returncode == 2 and done.stderr.startswith("usage: write-launchers"), done.stderr
    assert os.listdir(tmp_path) == []
