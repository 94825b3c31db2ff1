"""progress: drawn on a terminal (a real pty), silent otherwise; debug.phase timing line."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys

from flake_pilot import progress


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    with progress.bar("pulling", total=10, stream=out) as p:
        p.advance(5)
        assert p.render().endswith(" 50%")
    with progress.spinner("waiting", stream=out):
        pass
    assert out.getvalue() == ""


def test_drawn_and_erased_on_a_terminal(monkeypatch) -> None:
    monkeypatch.delenv("PILOT_DEBUG", raising=False)
    monkeypatch.delenv("NO_PROGRESS", raising=False)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert progress.active(tty)
            with progress.bar("downloading", total=4, stream=tty) as p:
                p.advance(4)
            monkeypatch.setenv("NO_PROGRESS", "1")
            assert not progress.active(tty)
        os.close(slave)
        chunks = []
        while True:  # everything written, until EIO: no writer is left
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks).decode()
    finally:
        os.close(master)
    assert data.startswith("\r\x1b[Kdownloading [")  # first frame drawn at start
    assert data.endswith("\r\x1b[K")  # line erased at the end


def test_timing_line() -> None:
    code = (
        "from flake_pilot.launch import debug\n"
        "with debug.phase('load'):\n    pass\n"
        "with debug.phase('create'):\n    pass\n"
        "with debug.phase('load'):\n    pass\n"
        "debug.timing()\n"
    )
    on = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PILOT_DEBUG": "1"},
        check=True,
    )
    assert re.fullmatch(r"timing: load=\d+\.\dms create=\d+\.\dms total=\d+\.\dms\n", on.stderr), on.stderr
    off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PILOT_DEBUG"},
        check=True,
    )
    assert off.stderr == ""


def test_launcher_prints_one_timing_line(prefix, bb_image: str) -> None:
    """PILOT_DEBUG=1 on a real launch: engine command lines and one per-phase timing line."""
    app = prefix.bin_dir / "timed-echo"
    prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app), "--target", "/bin/echo", check=True)
    proc = prefix.app("timed-echo", "hi", env={"PILOT_DEBUG": "1"})
    assert proc.returncode == 0 and proc.stdout == "hi\n", proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("timing: ")]
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(r"timing:( [a-z_]+=\d+\.\dms)+ total=\d+\.\dms", lines[0])
    assert "podman" in proc.stderr  # the engine command line is shown
