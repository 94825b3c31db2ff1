"""A spinner / progress bar for long work, shown only when stderr is a terminal.

Silent when stderr is not a TTY, when ``PILOT_DEBUG`` is on (debug lines would interleave) or
with ``NO_PROGRESS=1``. Stdlib only; a daemon thread redraws one line and erases it at the end::

    with progress.spinner("pulling image"):
        ...
    with progress.bar("downloading rootfs", total=size) as p:
        p.advance(len(chunk))
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading
    from typing import TextIO

FRAMES = "|/-\\"


def active(stream: TextIO | None = None) -> bool:
    """True when a progress display would be shown on *stream* (default stderr)."""
    stream = stream or sys.stderr
    if os.environ.get("NO_PROGRESS", "") not in ("", "0"):
        return False
    if os.environ.get("PILOT_DEBUG", "") not in ("", "0"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """One status line: a spinner, or a bar once *total* is known."""

    def __init__(self, label: str, total: int | None, stream: TextIO, interval: float = 0.1) -> None:
        self.label, self.total, self.stream, self.interval = label, total, stream, interval
        self.done = 0
        self._frame = 0
        self._thread: threading.Thread | None = None  # threading is imported only when drawing

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def advance(self, amount: int = 1) -> None:
        self.done += amount  # one int store: atomic enough for a display

    def set_total(self, total: int | None) -> None:
        self.total = total

    def render(self) -> str:
        done, total = self.done, self.total
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * 20)
            return f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {frac * 100:3.0f}%"
        self._frame = (self._frame + 1) % len(FRAMES)
        return f"{self.label} {FRAMES[self._frame]}"

    def _draw(self) -> None:
        self.stream.write("\r\x1b[K" + self.render())
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def start(self) -> None:
        import threading

        self._stop = threading.Event()
        self._draw()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.stream.write("\r\x1b[K")
        self.stream.flush()


class _Silent(Progress):
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def bar(label: str, total: int | None = None, stream: TextIO | None = None) -> Progress:
    """A progress display for a ``with`` block; a silent stand-in when not on a terminal."""
    out = stream or sys.stderr
    return Progress(label, total, out) if active(out) else _Silent(label, total, out)


def spinner(label: str, stream: TextIO | None = None) -> Progress:
    """A spinner for work of unknown length (same as ``bar`` without a total)."""
    return bar(label, None, stream)
