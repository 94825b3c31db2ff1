"""The launchers as users get them from ``make install``: scripts/install.sh into a temp prefix
(``PREFIX/bin/<launcher>``, ``#!/usr/bin/python3 -IS``, the package byte-compiled in
``PREFIX/lib/flake-pilot``, PyYAML from the system). Shared by the bench scripts."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def install(root: Path) -> Path:
    """Install into ``root/usr`` (config in ``root/etc``); returns the bin dir."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts/install.sh"), "", str(root / "usr"), str(root / "etc")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"scripts/install.sh failed: {done.stderr[-500:]}")
    return root / "usr" / "bin"


def interpreter(launcher: Path) -> list[str]:
    """The interpreter and flags of a launcher's shebang line (for the `python -c pass` floor)."""
    with open(launcher, "rb") as handle:
        first = handle.readline().decode()
    return first[2:].split() if first.startswith("#!") else []
