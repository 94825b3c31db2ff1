"""The version has one source, ``flake_pilot.__version__``: the Python package takes it from there
(pyproject.toml, dynamic), and debian/changelog and CHANGELOG.md name the same release."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import flake_pilot

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flake_pilot.__version__"}


def test_debian_changelog_names_the_package_version() -> None:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"flake-pilot \((?:\d+:)?([^)\s-]+)(?:-[^)\s]+)?\) \S+; urgency=\w+", first)
    assert match, first
    assert match.group(1) == flake_pilot.__version__


def test_changelog_starts_with_the_package_version() -> None:
    releases = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert releases, "CHANGELOG.md names no release"
    assert releases[0] == flake_pilot.__version__
