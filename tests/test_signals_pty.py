"""Issue 7 part 3: signals and terminals on a REAL pseudo-terminal, every podman mode.

The launcher runs as the session leader of a fresh pty (its controlling terminal), like a
command typed into a shell: ^C typed on the master becomes SIGINT from the line discipline,
a window-size change on the master becomes SIGWINCH, closing the master (or killing the tmux
server that owns the pane) hangs up the session (SIGHUP). The app reports what it got on the
terminal, or, once the terminal is gone, in a marker file on a bind-mounted host directory.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need_program
from podman_scopes import Scope, root_scope
from reliability import record

MODES = ["oneshot", "resume", "attach"]


@pytest.fixture
def scope(tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = root_scope(tmp_path, system_storage)
    yield s
    s.cleanup()


def _controlling_tty() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Term:
    def __init__(self, scope: Scope, app: str, *args: str) -> None:
        self.master, slave = os.openpty()
        set_size(slave, 24, 80)
        self.proc = subprocess.Popen(
            scope.argv(app, *args),
            env=scope.env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=_controlling_tty,  # noqa: PLW1509 - root scope, single-threaded child setup
        )
        os.close(slave)
        self.buf = b""
        self.open = True

    def _read(self, wait: float) -> bool:
        if select.select([self.master], [], [], wait)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the slave side is closed
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def expect(self, token: bytes, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while token not in self.buf:
            if time.monotonic() > deadline or not self._read(0.2):
                raise AssertionError(f"no {token!r} on the terminal; got {self.buf[-400:]!r}")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 90) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.2):
            if self.proc.poll() is not None and not select.select([self.master], [], [], 0.2)[0]:
                break
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        self.close()
        return code, self.buf.decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        if self.open:
            os.close(self.master)
            self.open = False


def register(scope: Scope, mode: str, sync: Path | None = None) -> tuple[str, str]:
    label = f"flake-rel={uuid.uuid4().hex}"
    opts = [f"--label {label}"] + ([f"--volume {sync}:/sync"] if sync else [])
    scope.register("app", resume=mode == "resume", attach=mode == "attach", opts=opts)
    return "app", label


def labelled(scope: Scope, label: str, *, running: bool = False) -> list[str]:
    argv = ["ps", "-q", "--filter", f"label={label}"]
    if not running:
        argv.insert(1, "-a")
    return scope.podman(*argv, check=True).stdout.split()


def wait_for(cond, what: str, timeout: float = 60.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


WAIT = "echo rea''dy; sleep 60 & wait; echo not-interrupted"  # rea''dy: the token is not the echo of argv


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_reaches_the_app(scope: Scope, mode: str) -> None:
    with record("3", f"^C on the pty reaches the app ({mode}), trapped", count=1) as rec:
        app, _ = register(scope, mode)
        term = Term(scope, app, "-c", f"trap 'echo got-INT; exit 7' INT; {WAIT}")
        term.expect(b"ready")
        term.send(b"\x03")
        code, out = term.finish()
        assert code == 7 and "got-INT" in out and "not-interrupted" not in out, (code, out)
        rec.detail = "app's INT trap ran, exit 7 passed through"


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_untrapped_is_130(scope: Scope, mode: str) -> None:
    with record("3", f"^C on the pty, untrapped: exit 128+2 ({mode})", count=1) as rec:
        app, _ = register(scope, mode)
        term = Term(scope, app, "-c", WAIT)
        term.expect(b"ready")
        term.send(b"\x03")
        code, out = term.finish()
        assert code == 130 and "not-interrupted" not in out, (code, out)
        rec.detail = "exit 130"


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_untrapped_is_143(scope: Scope, mode: str) -> None:
    with record("3", f"SIGTERM to the launcher on a pty, untrapped: exit 128+15 ({mode})", count=1) as rec:
        app, _ = register(scope, mode)
        term = Term(scope, app, "-c", WAIT)
        term.expect(b"ready")
        term.proc.send_signal(signal.SIGTERM)
        code, out = term.finish()
        assert code == 143 and "not-interrupted" not in out, (code, out)
        rec.detail = "exit 143"


@pytest.mark.parametrize("mode", MODES)
def test_sigwinch_resizes_the_apps_terminal(scope: Scope, mode: str) -> None:
    with record("3", f"SIGWINCH: window resize reaches the app ({mode})", count=1) as rec:
        app, _ = register(scope, mode)
        # podman sizes the container's terminal just after the start (an early WINCH may come
        # first): the app keeps waiting until it sees ours
        script = (
            "trap 'set -- $(stty size); echo size=$1x$2; [ $1 = 33 ] && exit 5' WINCH; echo rea''dy; "
            "while :; do sleep 60 & wait $!; done"
        )
        term = Term(scope, app, "-c", script)
        term.expect(b"ready")
        set_size(term.master, 33, 111)  # the kernel sends SIGWINCH to the launcher
        code, out = term.finish()
        assert code == 5 and "size=33x111" in out, (code, out)
        rec.detail = "the app's WINCH trap saw the new size 33x111"


@pytest.mark.parametrize("mode", MODES)
def test_closed_terminal_hangs_up_the_app_and_leaves_no_orphan(scope: Scope, tmp_path: Path, mode: str) -> None:
    with record("3", f"terminal closed (pty master closed): SIGHUP, no orphan ({mode})", count=1) as rec:
        sync = tmp_path / "sync"
        sync.mkdir()
        app, label = register(scope, mode, sync)
        term = Term(scope, app, "-c", f"trap 'touch /sync/hup; exit 9' HUP; {WAIT}")
        term.expect(b"ready")
        term.close()  # hang-up
        code = term.proc.wait(timeout=60)
        assert (sync / "hup").exists(), "the app never got SIGHUP"
        assert code == 9, code
        detail = f"app got SIGHUP, launcher exit {code}"
        if mode == "oneshot":
            wait_for(lambda: labelled(scope, label) == [], "the one-shot container to be removed")
            detail += ", container removed"
        elif mode == "attach":
            wait_for(lambda: labelled(scope, label, running=True) == [], "the attach container to stop")
            detail += ", container stopped (kept by design)"
        else:  # the instance lives on by design; the app's process must be gone
            cid = labelled(scope, label, running=True)
            assert len(cid) == 1

            def app_gone() -> bool:
                ps = scope.podman("exec", cid[0], "ps", "-o", "args", check=True).stdout
                return "sleep 60" not in ps

            wait_for(app_gone, "the app's processes to end in the resume instance")
            detail += ", app's processes gone, instance kept (resume by design)"
        rec.detail = detail


@pytest.mark.parametrize("mode", ["oneshot", "resume"])
def test_tmux_session_killed_leaves_no_orphan(scope: Scope, tmp_path: Path, mode: str) -> None:
    tmux = need_program("tmux", "tmux")
    with record("3", f"terminal closed (tmux kill-server): no orphan ({mode})", count=1) as rec:
        sync = tmp_path / "sync"
        sync.mkdir()
        app, label = register(scope, mode, sync)
        sock = tmp_path / "tmux.sock"
        script = "trap 'touch /sync/hup; exit 9' HUP; touch /sync/started; sleep 60 & wait"
        env_args = [
            a
            for k, v in scope.env.items()
            if k in ("PATH", "FLAKES_CONFIG", "XDG_CACHE_HOME", "CONTAINERS_CONF", "HOME")
            for a in ("-e", f"{k}={v}")
        ]
        subprocess.run(
            [
                tmux,
                "-S",
                str(sock),
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
                *env_args,
                " ".join(["exec", *scope.argv(app), "-c", f'"{script}"']),
            ],
            check=True,
            env={**scope.env},
            timeout=30,
        )
        try:
            wait_for((sync / "started").exists, "the app to start in tmux", timeout=90)
            subprocess.run([tmux, "-S", str(sock), "kill-server"], check=True, timeout=30)
            wait_for((sync / "hup").exists, "the app to get SIGHUP")
            if mode == "oneshot":
                wait_for(lambda: labelled(scope, label) == [], "the one-shot container to be removed")
                rec.detail = "app got SIGHUP, container removed"
            else:
                cid = labelled(scope, label, running=True)
                assert len(cid) == 1
                wait_for(
                    lambda: "sleep 60" not in scope.podman("exec", cid[0], "ps", "-o", "args").stdout,
                    "the app's processes to end",
                )
                rec.detail = "app got SIGHUP, its processes gone, instance kept (resume by design)"
        finally:
            subprocess.run([tmux, "-S", str(sock), "kill-server"], check=False, capture_output=True)
