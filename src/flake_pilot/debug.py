"""Debug switch shared by every program: ``PILOT_DEBUG=1`` or ``--debug``."""

from __future__ import annotations

import os
import sys
import time

_T0 = time.monotonic()
_enabled: bool | None = None


def enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get("PILOT_DEBUG", "") not in ("", "0")
    return _enabled


def enable() -> None:
    global _enabled
    _enabled = True
    os.environ["PILOT_DEBUG"] = "1"


def log(message: str) -> None:
    if enabled():
        sys.stderr.write(f"[{(time.monotonic() - _T0) * 1000:7.1f} ms] {message}\n")
        sys.stderr.flush()
