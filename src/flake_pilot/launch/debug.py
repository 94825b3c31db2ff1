"""Debug switch shared by every program: ``PILOT_DEBUG=1`` or ``--debug``."""

import sys
import time

from . import fastos

_T0 = time.monotonic()
_enabled: bool | None = None


def enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = fastos.environ.get("PILOT_DEBUG", "") not in ("", "0")
    return _enabled


def enable() -> None:
    global _enabled
    _enabled = True
    import os  # flake-ctl --debug: os.environ is what its engine calls pass on

    os.environ["PILOT_DEBUG"] = "1"
    fastos.environ["PILOT_DEBUG"] = "1"  # the same mapping, unless fastos was imported first


def log(message: str) -> None:
    if enabled():
        sys.stderr.write(f"[{(time.monotonic() - _T0) * 1000:7.1f} ms] {message}\n")
        sys.stderr.flush()


# Per-phase timing: ``with debug.phase("load"): ...``; ``debug.timing_line()`` sums them up as
# ``timing: load=3.1ms create=12.0ms total=15.4ms`` (one line to paste into a bug report).
_phases: list[tuple[str, float]] = []


class phase:  # noqa: N801 - used like a function: ``with debug.phase("name"):``
    """Time a step of a launch; recorded only when debugging is on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = 0.0

    def __enter__(self) -> "phase":
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if enabled():
            _phases.append((self.name, (time.monotonic() - self.start) * 1000))


def timing_line() -> str:
    """``timing: a=1.0ms b=2.0ms total=<since process start>ms``; repeated names are summed."""
    totals: dict[str, float] = {}
    for name, ms in _phases:
        totals[name] = totals.get(name, 0.0) + ms
    parts = [f"{name}={ms:.1f}ms" for name, ms in totals.items()]
    parts.append(f"total={(time.monotonic() - _T0) * 1000:.1f}ms")
    return "timing: " + " ".join(parts)


def timing() -> None:
    """Print the timing line on stderr when debugging (call once, before exec or exit)."""
    if enabled():
        sys.stderr.write(timing_line() + "\n")
        sys.stderr.flush()
