"""The process contract of podman-pilot against real podman: one-shot and resume flakes, as root
(system flakes) and as the rootless test user (user flakes). Each point has its own test."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podman_scopes import Scope, prepare_user, remove_user_scope, root_scope, run_in_pty, user_scope

MODES = ["oneshot", "resume"]


@pytest.fixture(scope="session")
def user_store(system_storage: Path, bb_image: str) -> tuple[int, int, Path]:
    return prepare_user(system_storage)


@pytest.fixture(params=["root", "user"])
def scope(request: pytest.FixtureRequest, tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    if request.param == "root":
        s = root_scope(tmp_path, system_storage)
        yield s
        s.cleanup()
    else:
        s = user_scope(*request.getfixturevalue("user_store"))
        yield s
        remove_user_scope(s)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def register(scope: Scope, mode: str, name: str = "app", target: str = "/bin/sh", **kw) -> str:
    scope.register(name, target, resume=mode == "resume", **kw)
    return name


def test_exit_status_is_the_apps(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    assert scope.run(app, "-c", "exit 0").returncode == 0
    assert scope.run(app, "-c", "exit 3").returncode == 3


def test_exit_126_target_not_executable(scope: Scope, mode: str) -> None:
    app = register(scope, mode, target="/etc/passwd")
    done = scope.run(app)
    assert done.returncode == 126, done.stderr


def test_exit_127_target_missing(scope: Scope, mode: str) -> None:
    app = register(scope, mode, target="/no/such/program")
    done = scope.run(app)
    assert done.returncode == 127, done.stderr


def test_exit_128_plus_signal(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    if mode == "resume":  # a one-shot app is PID 1 of its container: the kernel drops its self-kill
        assert scope.run(app, "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
        assert scope.run(app, "-c", "kill -KILL $$").returncode == 128 + signal.SIGKILL
    proc = start_waiting(scope, app, "echo ready; sleep 60 & wait; echo not-interrupted")
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (128 + signal.SIGUSR1, b""), err


def test_stdout_and_stderr_stay_separate(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    done = scope.run(app, "-c", "echo to-out; echo to-err >&2; echo more-out")
    assert (done.returncode, done.stdout, done.stderr) == (0, "to-out\nmore-out\n", "to-err\n")


def test_stdin_from_a_pipe(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    data = "".join(f"line {i}\n" for i in range(2000))
    done = scope.run(app, "-c", "wc -l; echo end", input=data)
    assert done.stdout.split() == ["2000", "end"], done.stderr


def test_stdin_from_a_file(scope: Scope, mode: str, tmp_path: Path) -> None:
    app = register(scope, mode)
    src = tmp_path / "input.txt"
    src.write_bytes(b"alpha\nbeta\n\x00binary\xff\n")
    with open(src, "rb") as handle:
        done = scope.run(app, "-c", "cat", stdin=handle, text=False)
    assert done.stdout == src.read_bytes(), done.stderr


def test_no_tty_without_a_terminal(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    done = scope.run(app, "-c", "if [ -t 0 ] || [ -t 1 ]; then echo tty; else echo no-tty; fi")
    assert done.stdout == "no-tty\n", done.stderr


def test_tty_with_a_terminal(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    code, out = run_in_pty(scope, app, "-c", "[ -t 0 ] && [ -t 1 ] && echo has-tty; exit 4")
    assert code == 4
    assert "has-tty" in out


def start_waiting(scope: Scope, app: str, script: str) -> subprocess.Popen:
    """Start the app; return once it printed 'ready' (poll with a deadline, no sleeps)."""
    proc = scope.popen(app, "-c", script, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + 90
    while b"ready\n" not in line and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
    assert b"ready\n" in line, (line, proc.poll())
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_reaches_the_app(scope: Scope, mode: str, sig: signal.Signals) -> None:
    app = register(scope, mode)
    script = f"trap 'echo got-{sig.name}; exit 7' {sig.name[3:]}; echo ready; sleep 60 & wait; echo not-interrupted"
    proc = start_waiting(scope, app, script)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (7, f"got-{sig.name}\n".encode()), err


def test_untrapped_signal_ends_app_with_128_plus_n(scope: Scope, mode: str) -> None:
    app = register(scope, mode)
    proc = start_waiting(scope, app, "echo ready; sleep 60 & wait; echo not-interrupted")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert b"not-interrupted" not in out


def test_closed_stdout_ends_app_with_sigpipe(scope: Scope, mode: str) -> None:
    """`app | head -1`: when the reader goes away the app ends like a native one (128+SIGPIPE)."""
    app = register(scope, mode)
    proc = scope.popen(app, "-c", "yes", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.read(4) == b"y\ny\n"
    proc.stdout.close()
    err = proc.stderr.read() if proc.stderr else b""
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE, err


def test_ctrl_c_typed_into_the_terminal_reaches_the_app(scope: Scope, mode: str) -> None:
    """In a terminal, ^C travels in-band through the container's terminal to the app."""
    app = register(scope, mode)
    master, slave = os.openpty()
    proc = scope.popen(
        app,
        "-c",
        "trap 'echo got-INT; exit 9' INT; echo ready; sleep 60 & wait",
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 90
    sent = False
    while time.monotonic() < deadline and proc.poll() is None:
        if not sent and b"ready" in out:
            os.write(master, b"\x03")
            sent = True
        if select.select([master], [], [], 0.2)[0]:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
    os.close(master)
    assert proc.wait(timeout=30) == 9, out
    assert b"got-INT" in out


def test_stderr_redirected_from_a_terminal_stays_separate(scope: Scope, mode: str) -> None:
    """`app 2>log` in a terminal: no -t (it would merge stderr into the terminal)."""
    app = register(scope, mode)
    master, slave = os.openpty()
    proc = scope.popen(
        app,
        "-c",
        "echo to-out; echo to-err >&2",
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(slave)
    err = proc.stderr.read() if proc.stderr else b""
    out = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    assert (err, out.replace(b"\r\n", b"\n")) == (b"to-err\n", b"to-out\n")


def test_terminal_resize_reaches_the_app(scope: Scope, mode: str) -> None:
    """SIGWINCH to the launcher: podman re-reads the terminal size and resizes the container's."""
    import fcntl
    import struct
    import termios

    app = register(scope, mode)
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    script = (
        "stty size; echo ready; i=0; while [ $i -lt 300 ]; do "  # polls 30 s at most
        '[ "$(stty size)" = "30 100" ] && { echo resized; exit 0; }; i=$((i+1)); sleep 0.1; done; exit 1'
    )
    proc = scope.popen(app, "-c", script, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    out = b""
    deadline = time.monotonic() + 90
    try:
        while b"ready" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                out += os.read(master, 4096)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        proc.send_signal(signal.SIGWINCH)  # no controlling terminal here: the test plays the kernel
        while b"resized" not in out and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                out += os.read(master, 4096)
        assert proc.wait(timeout=60) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(slave)
        os.close(master)
    assert out.startswith(b"24 80") and b"resized" in out, out
