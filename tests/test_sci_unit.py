"""sci without a VM: settings parsing, serial mode as a plain process, the zipapp."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from flake_pilot import protocol
from flake_pilot.sci import bundle, cmdline, reaper, session, transport


def test_kernel_cmdline_quotes_flags_and_end_marker() -> None:
    text = "console=ttyS0 run=\"/usr/bin/prog \\-x 'a b'\" sci_resume overlay_root=/dev/vdb -- init-arg=1\n"
    params = cmdline.parse_kernel_cmdline(text)
    assert params == {
        "console": "ttyS0",
        "run": "/usr/bin/prog \\-x 'a b'",
        "sci_resume": "",
        "overlay_root": "/dev/vdb",
    }


def test_kernel_cmdline_keeps_inner_quotes_like_the_kernel() -> None:
    # shlex.join("it's") is 'it'"'"'s': the kernel keeps the inner double quotes
    params = cmdline.parse_kernel_cmdline('run="/bin/echo \'it\'"\'"\'s\' b" "k=v w" e=')
    assert params == {"run": "/bin/echo 'it'\"'\"'s' b", "k": "v w", "e": ""}
    assert cmdline.split_words(params["run"]) == ["/bin/echo", "it's", "b"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("/bin/echo a  b", ["/bin/echo", "a", "b"]),
        ("/usr/bin/prog \\-x 'a b' \"c \\\"d\\\"\" e\\ f ''", ["/usr/bin/prog", "-x", "a b", 'c "d"', "e f", ""]),
        ("'it'\"'\"'s'", ["it's"]),
    ],
)
def test_split_words_like_a_shell(text: str, words: list[str]) -> None:
    assert cmdline.split_words(text) == words


@pytest.mark.parametrize("text", ["'open", '"open', "trailing\\"])
def test_split_words_refuses_unbalanced_input(text: str) -> None:
    with pytest.raises(ValueError):
        cmdline.split_words(text)


def test_settings_modes_and_defaults() -> None:
    def settings(text: str) -> cmdline.Settings:
        return cmdline.Settings(cmdline.parse_kernel_cmdline(text))

    s = settings("run=vsock sci_lines=40 sci_columns=132 sci_term=xterm")
    assert (s.session_mode, s.transport, s.vsock_port, s.resume) == (True, "vsock", 52, False)
    assert (s.rows, s.cols, s.base_env()["TERM"]) == (40, 132, "xterm")
    s = settings("sci_transport=virtio-serial sci_resume reboot=k PILOT_DEBUG=1")
    assert (s.session_mode, s.transport, s.port_prefix, s.resume, s.reset, s.debug) == (
        True,
        "virtio-serial",
        "sci",
        True,
        True,
        True,
    )
    s = settings("sci_transport=vsock:1234 sci_lines=x")
    assert (s.vsock_port, s.rows, s.cols) == (1234, 24, 80)
    s = settings("run=\"/bin/echo 'a b'\"")
    assert (s.session_mode, s.command()) == (False, ["/bin/echo", "a b"])
    with pytest.raises(ValueError, match="sci_transport=carrier-pigeon"):
        cmdline.Settings({"sci_transport": "carrier-pigeon"})
    with pytest.raises(ValueError, match="no run="):
        cmdline.Settings({}).command()


def _sci(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flake_pilot.sci", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        timeout=30,
    )


def test_serial_mode_as_a_plain_process_runs_the_command() -> None:
    proc = _sci({"run": "/bin/sh -c 'printf \"<%s>\" \"$@\"' sh 'a b' \\-c", "PILOT_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "<a b><-c>"
    assert "/bin/sh: exit status 0" in proc.stderr


def test_failures_are_reported_with_the_reason() -> None:
    proc = _sci({"run": "/bin/echo 'unterminated"})
    assert proc.returncode == 1
    assert "sci: error: unterminated single quote" in proc.stderr
    proc = _sci({"run": "/nonexistent/prog"})
    assert proc.returncode == 1
    assert proc.stderr.strip() == "sci: error: /nonexistent/prog: No such file or directory"
    assert _sci({}, "--bogus").returncode == 2


def test_zipapp_is_self_contained_and_reproducible(tmp_path: Path) -> None:
    dest = bundle.build_zipapp(tmp_path / "sci")
    assert dest.read_bytes().startswith(b"#!/usr/bin/python3")
    assert os.access(dest, os.X_OK)
    assert bundle.build_bytes() == dest.read_bytes()
    names = zipfile.ZipFile(dest).namelist()
    assert {"__main__.py", "flake_pilot/protocol.py", "flake_pilot/sci/session.pyc"} <= set(names)
    # runs with only the standard library: isolated, without our package on any path
    proc = subprocess.run(
        [sys.executable, "-I", str(dest), "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert (proc.returncode, proc.stdout) == (0, "sci 1\n")


def _listener(tmp_path: Path, resume: bool) -> tuple[str, threading.Thread]:
    path = str(tmp_path / "l.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    waiter = reaper.ThreadWaiter()

    def serve(rfd: int, wfd: int, resync: bool) -> str:
        return session.serve(rfd, wfd, waiter, {"PATH": "/usr/bin:/bin"}, handshake_timeout=5, resync=resync)

    t = threading.Thread(target=transport.serve_listener, args=(srv, serve, resume), daemon=True)
    t.start()
    return path, t


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_listener_ignores_probes_and_ends_after_one_session(tmp_path: Path) -> None:
    path, thread = _listener(tmp_path, resume=False)
    _connect(path).close()  # readiness probe, as Firecracker-era hosts do
    out_r, out_w = os.pipe()
    with _connect(path) as s:
        assert (
            protocol.run_session(s, protocol.Request(["/bin/echo", "one"]), None, out_w, 2, forward_signals=False) == 0
        )
    os.close(out_w)
    assert os.read(out_r, 100) == b"one\n"
    thread.join(10)
    assert not thread.is_alive()


def test_listener_in_resume_mode_serves_sessions_concurrently(tmp_path: Path) -> None:
    path, thread = _listener(tmp_path, resume=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    results: list[int] = []
    a_out_r, a_out_w = os.pipe()

    def session_a() -> None:
        with _connect(path) as s:
            req = protocol.Request(["/bin/cat", str(fifo)])
            results.append(protocol.run_session(s, req, None, a_out_w, 2, forward_signals=False))

    a = threading.Thread(target=session_a)
    a.start()
    with _connect(path) as s:  # B feeds A's fifo: only possible while A is being served
        req = protocol.Request(["/bin/sh", "-c", f"echo from-b > {fifo}"])
        assert protocol.run_session(s, req, None, 1, 2, forward_signals=False) == 0
    a.join(10)
    os.close(a_out_w)
    assert results == [0] and os.read(a_out_r, 100) == b"from-b\n"
    assert thread.is_alive()  # resume: still listening
