"""flake-ctl firecracker ... (pull, register, remove, show)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `firecracker` command tree. Each leaf sets `func(args) -> int`."""
    subparsers.add_parser("firecracker", help="manage Firecracker VM flakes")
