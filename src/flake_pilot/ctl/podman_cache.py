"""flake-ctl podman cache ... (list and prune composed delta images)."""

from __future__ import annotations

import argparse


def add_parser(podman_subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `podman cache` under the podman command tree. Each leaf sets `func(args) -> int`."""
