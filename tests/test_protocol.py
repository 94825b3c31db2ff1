"""The session protocol: framing units, and the host client against the real sci session code
over socket pairs running real local programs."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from flake_pilot import protocol as p
from flake_pilot.sci import reaper, session

ENV = {"PATH": "/usr/bin:/bin"}


# ---- framing ---------------------------------------------------------------------------------


def test_frames_decode_incrementally_byte_by_byte() -> None:
    stream = p.hello() + p.frame(p.STDIN, b"abc") + p.frame(p.STDIN_EOF)
    stream += p.data_frames(p.STDOUT, b"x" * 150000)
    dec = p.FrameDecoder()
    frames = [f for i in range(len(stream)) for f in dec.feed(stream[i : i + 1])]
    assert frames[0][0] == p.HELLO and p.check_hello(frames[0][1]) == p.VERSION
    assert frames[1:3] == [(p.STDIN, b"abc"), (p.STDIN_EOF, b"")]
    assert [t for t, _ in frames[3:]] == [p.STDOUT] * 3
    assert b"".join(d for _, d in frames[3:]) == b"x" * 150000
    assert dec.pending == 0


@pytest.mark.parametrize(
    "raw, reason",
    [
        (bytes([0x7E]) + struct.pack("!I", 0), "unknown type 0x7e"),
        (bytes([p.STDIN]) + struct.pack("!I", p.MAX_PAYLOAD + 1), "exceeds"),
    ],
)
def test_malformed_frames_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        list(p.FrameDecoder().feed(raw))


def test_hello_checks_magic_and_version() -> None:
    assert p.check_hello(p.hello()[5:]) == 1
    with pytest.raises(p.ProtocolError, match="unsupported protocol version 2"):
        p.check_hello(p.hello(2)[5:])
    with pytest.raises(p.ProtocolError, match="not a flake-pilot sci peer"):
        p.check_hello(b"SSH-2.0-xx")


def test_request_roundtrip_keeps_arguments_exactly() -> None:
    req = p.Request(
        ["/usr/bin/prog", "a b", "'q'", '"d"', "", "\\-x", "ünï"], {"A": "1 2", "E": ""}, "/tmp", True, 40, 120
    )
    payload = p.encode_request(req)[5:]
    assert p.decode_request(payload) == req


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"a\x00\x00\x00\x09/bin/tru", "truncated field"),
        (b"a\x00", "truncated field header"),
        (b"z\x00\x00\x00\x00", "unknown field"),
        (b"a\x00\x00\x00\x04prog", "absolute path"),
        (b"a\x00\x00\x00\x05/b\x00in", "NUL byte"),
        (b"a\x00\x00\x00\x04/bin" + b"e\x00\x00\x00\x03abc", "without NAME="),
    ],
)
def test_malformed_requests_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.decode_request(payload)


def test_exit_frames_carry_code_or_signal() -> None:
    assert p.decode_exit(p.encode_exit(42 << 8)[5:]) == 42
    assert p.decode_exit(p.encode_exit(signal.SIGKILL)[5:]) == 128 + 9
    with pytest.raises(p.ProtocolError):
        p.decode_exit(b"\x05\x01")


# ---- sessions against the real guest code ----------------------------------------------------


class Guest:
    """sci's session code serving one end of a socket pair in a thread."""

    def __init__(self, env: dict[str, str] | None = None, handshake_timeout: float = 5, resync: bool = False) -> None:
        self.handshake_timeout = handshake_timeout
        self.resync = resync
        self.host, self.guest = socket.socketpair()
        self.result: list[str] = []
        self.thread = threading.Thread(target=self._serve, args=(env or ENV,), daemon=True)
        self.thread.start()

    def _serve(self, env: dict[str, str]) -> None:
        try:
            fd = self.guest.fileno()
            self.result.append(
                session.serve(
                    fd, fd, reaper.ThreadWaiter(), env, handshake_timeout=self.handshake_timeout, resync=self.resync
                )
            )
        finally:
            self.guest.close()

    def outcome(self) -> str:
        self.thread.join(10)
        assert not self.thread.is_alive(), "guest session did not end"
        return self.result[0]


def run(req: p.Request, stdin: bytes | None = b"", **kw: object) -> tuple[int, bytes, bytes, str]:
    guest = Guest()
    in_r = None
    if stdin is not None:
        in_r, in_w = os.pipe()
        threading.Thread(target=lambda: (p.write_all(in_w, stdin), os.close(in_w)), daemon=True).start()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def collect(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)

    readers = [threading.Thread(target=collect, args=(fd,)) for fd in (out_r, err_r)]
    for t in readers:
        t.start()
    try:
        status = p.run_session(guest.host, req, in_r, out_w, err_w, **kw)  # type: ignore[arg-type]
    finally:
        guest.host.close()
        for fd in (out_w, err_w) + ((in_r,) if in_r is not None else ()):
            os.close(fd)
        for t in readers:
            t.join(10)
    return status, b"".join(chunks[out_r]), b"".join(chunks[err_r]), guest.outcome()


def test_exit_status_streams_and_exact_arguments() -> None:
    args = ["a b", "'single'", '"double"', "", "$HOME", "*"]
    script = 'for a in "$@"; do printf "<%s>" "$a"; done; echo; echo to-stderr >&2; exit 42'
    status, out, err, outcome = run(p.Request(["/bin/sh", "-c", script, "sh", *args]))
    assert status == 42
    assert out == b"".join(f"<{a}>".encode() for a in args) + b"\n"
    assert err == b"to-stderr\n"
    assert "exit status 42" in outcome


def test_exit_zero_env_and_cwd(tmp_path: Path) -> None:
    req = p.Request(["/bin/sh", "-c", 'echo "$FOO|$PATH"; pwd'], {"FOO": "x  y"}, str(tmp_path))
    status, out, err, _ = run(req)
    assert (status, err) == (0, b"")
    assert out.decode().splitlines() == ["x  y|/usr/bin:/bin", str(tmp_path)]


def test_killed_by_signal_gives_128_plus_n() -> None:
    status, _, _, _ = run(p.Request(["/bin/sh", "-c", "kill -USR1 $$"]))
    assert status == 128 + signal.SIGUSR1


def test_stdin_eof_does_not_end_the_session() -> None:
    data = os.urandom(3 * 1024 * 1024)
    status, out, _, _ = run(p.Request(["/bin/sh", "-c", "cat; echo after-eof >&2; echo end"]), data)
    assert status == 0
    assert out == data + b"end\n"


def test_no_stdin_at_all() -> None:
    status, out, _, _ = run(p.Request(["/bin/cat"]), None)
    assert (status, out) == (0, b"")


def test_host_signal_is_forwarded_to_the_program() -> None:
    def started(pid: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as if somebody killed the launcher

    before = signal.getsignal(signal.SIGTERM)
    status, _, _, _ = run(p.Request(["/bin/sh", "-c", "sleep 30"]), None, on_started=started)
    assert status == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_missing_program_and_missing_cwd() -> None:
    status, _, err, _ = run(p.Request(["/nonexistent/prog"]))
    assert status == 127 and b"/nonexistent/prog" in err
    status, _, err, _ = run(p.Request(["/bin/true"], cwd="/nonexistent-dir"))
    assert status == 126 and b"cannot change to /nonexistent-dir" in err


def test_tty_session_has_a_terminal_of_the_asked_size() -> None:
    script = "stty size; test -t 0 && test -t 1 && echo tty; exit 3"
    status, out, err, _ = run(p.Request(["/bin/sh", "-c", script], tty=True, rows=33, cols=111))
    assert status == 3
    assert out.replace(b"\r", b"").splitlines() == [b"33 111", b"tty"]
    assert err == b""


def test_window_size_change_on_the_host_terminal_reaches_the_program() -> None:
    import fcntl
    import termios

    master, slave = os.openpty()  # the host terminal the launcher runs in
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 10, 20, 0, 0))
    out_r, out_w = os.pipe()
    out = bytearray()
    main = threading.main_thread().ident
    assert main is not None

    def user() -> None:  # sees the first size, resizes the terminal, then types
        while b"10 20" not in out:
            out.extend(os.read(out_r, 4096))
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 60, 0, 0))
        signal.pthread_kill(main, signal.SIGWINCH)  # as the kernel does for the launcher
        os.write(master, b"go\n")
        while chunk := os.read(out_r, 4096):
            out.extend(chunk)

    t = threading.Thread(target=user)
    t.start()
    guest = Guest()
    req = p.Request(["/bin/sh", "-c", "stty size; read x; stty size"], tty=True, rows=10, cols=20)
    status = p.run_session(guest.host, req, slave, out_w, 2)
    os.close(out_w)
    t.join(10)
    assert status == 0
    lines = bytes(out).replace(b"\r", b"").splitlines()
    assert lines == [b"10 20", b"go", b"50 60"]
    assert termios.tcgetattr(slave)[3] & termios.ECHO  # raw mode was undone
    for fd in (master, slave, out_r):
        os.close(fd)
    guest.host.close()
    guest.outcome()


def test_two_sessions_at_once() -> None:
    results: dict[str, tuple[int, bytes, bytes, str]] = {}

    def one(name: str) -> None:
        req = p.Request(["/bin/sh", "-c", f"read x; echo {name}:$x; exit 7"])
        results[name] = run(req, name.encode() + b"\n")

    threads = [threading.Thread(target=one, args=(n,)) for n in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert {n: r[:2] for n, r in results.items()} == {"s1": (7, b"s1:s1\n"), "s2": (7, b"s2:s2\n")}


# ---- refusals: never a hang ----------------------------------------------------------------


def _raw_exchange(guest: Guest, data: bytes) -> list[tuple[int, bytes]]:
    guest.host.sendall(data)
    guest.host.settimeout(10)
    dec = p.FrameDecoder()
    frames: list[tuple[int, bytes]] = []
    while chunk := guest.host.recv(65536):
        frames += dec.feed(chunk)
    return frames


@pytest.mark.parametrize(
    "data, reason",
    [
        (p.hello(9), b"unsupported protocol version 9"),
        (b"GET / HTTP/1.1\r\n\r\n", b"unknown type"),
        (p.frame(p.STDIN, b"x"), b"expected hello first"),
        (p.hello() + p.frame(p.REQUEST, b"q\x00\x00\x00\x00"), b"unknown field"),
        (p.hello() + p.frame(p.STDOUT, b"x"), b"unexpected frame 0x11"),
    ],
)
def test_guest_refuses_bad_peers_with_an_error_frame(data: bytes, reason: bytes) -> None:
    guest = Guest()
    frames = _raw_exchange(guest, data)
    assert [t for t, _ in frames] in ([p.ERROR], [p.HELLO, p.ERROR])  # hello only to a valid hello
    assert reason in frames[-1][1]
    assert guest.outcome().startswith("refused")


def test_resync_skips_leftovers_of_an_earlier_session() -> None:
    """virtio-serial has no connection boundaries: a new host's hello follows whatever the last
    one left unread (here half a frame); the guest skips to it. Strict mode refuses the same."""
    leftover = p.frame(p.STDIN, b"old input")[:7] + p.frame(p.NOP)
    session_bytes = p.hello() + p.encode_request(p.Request(["/bin/echo", "new"])) + p.frame(p.STDIN_EOF)
    guest = Guest(resync=True)
    frames = _raw_exchange(guest, leftover + session_bytes)
    assert [t for t, _ in frames] == [p.HELLO, p.STARTED, p.STDOUT, p.EXIT]
    assert frames[2][1] == b"new\n" and p.decode_exit(frames[3][1]) == 0
    strict = Guest()
    assert _raw_exchange(strict, leftover + session_bytes)[-1][0] == p.ERROR


def test_host_ignores_nop_frames() -> None:
    host, guest = socket.socketpair()
    guest.sendall(p.frame(p.NOP) + p.hello() + p.frame(p.NOP) + p.frame(p.EXIT, b"\x00\x05"))
    assert p.run_session(host, p.Request(["/bin/true"]), None, 1, 2, handshake_timeout=5) == 5
    host.close()
    guest.close()


def test_guest_kills_the_program_when_the_host_goes_away() -> None:
    guest = Guest()
    guest.host.sendall(p.hello() + p.encode_request(p.Request(["/bin/sleep", "60"])))
    dec = p.FrameDecoder()
    pid = None
    while pid is None:
        for ftype, payload in dec.feed(guest.host.recv(4096)):
            if ftype == p.STARTED:
                (pid,) = struct.unpack("!I", payload)
    guest.host.close()
    assert "killed" in guest.outcome()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_handshake_timeout_when_the_host_says_nothing() -> None:
    guest = Guest(handshake_timeout=0.5)
    t0 = time.monotonic()
    frames = _raw_exchange(guest, b"")
    assert frames[-1][0] == p.ERROR and b"no request within 0.5 s" in frames[-1][1]
    assert time.monotonic() - t0 < 5


def test_client_refuses_unknown_guest_version() -> None:
    host, guest = socket.socketpair()
    guest.sendall(p.hello(2))
    with pytest.raises(p.ProtocolError, match="unsupported protocol version 2"):
        p.run_session(host, p.Request(["/bin/true"]), None, 1, 2, handshake_timeout=5)
    host.close()
    guest.close()


def test_client_times_out_on_a_silent_guest() -> None:
    host, guest = socket.socketpair()
    t0 = time.monotonic()
    with pytest.raises(p.ProtocolError, match="no answer from the guest within 0.3 s"):
        p.run_session(host, p.Request(["/bin/true"]), None, 1, 2, handshake_timeout=0.3)
    assert time.monotonic() - t0 < 3
    host.close()
    guest.close()


def test_client_reports_a_guest_that_closes_without_exit() -> None:
    host, guest = socket.socketpair()
    guest.sendall(p.hello() + p.frame(p.STDOUT, b"partial"))
    guest.close()
    out_r, out_w = os.pipe()
    with pytest.raises(p.ProtocolError, match="without an exit status"):
        p.run_session(host, p.Request(["/bin/true"]), None, out_w, 2, handshake_timeout=5)
    os.close(out_w)
    assert os.read(out_r, 100) == b"partial"
    host.close()


# ---- Firecracker vsock handshake -------------------------------------------------------------


def test_connect_firecracker_vsock_handshake(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    seen: list[bytes] = []

    def fake_firecracker() -> None:
        conn, _ = srv.accept()
        seen.append(conn.recv(64))
        conn.sendall(b"OK 1073741824\n" + p.hello())  # the guest's hello may follow at once
        conn.close()

    t = threading.Thread(target=fake_firecracker)
    t.start()
    sock = p.connect_firecracker_vsock(path, 52, timeout=5)
    t.join(5)
    assert seen == [b"CONNECT 52\n"]
    sock.settimeout(5)
    assert sock.recv(64) == p.hello()  # nothing after the OK line was swallowed
    sock.close()
    srv.close()


def test_connect_firecracker_vsock_gives_up_with_the_reason(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(p.ProtocolError, match=r"v\.sock: vsock port 52 not reachable within 0.3 s"):
        p.connect_firecracker_vsock(str(tmp_path / "v.sock"), 52, timeout=0.3)
    assert time.monotonic() - t0 < 3


def test_terminating_signal_before_the_guest_answers_abandons_the_session() -> None:
    """A VM still booting (no hello yet): Ctrl-C or SIGTERM ends the wait, as 128+N."""
    host, guest = socket.socketpair()
    try:
        timer = threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        with pytest.raises(p.Interrupted) as err:
            p.run_session(host, p.Request(["/bin/true"]), None, 1, 2, handshake_timeout=30)
        assert err.value.signo == signal.SIGINT and time.monotonic() - started < 10
        assert guest.recv(5)[0] == p.HELLO  # the request had gone out; nobody answered it
    finally:
        timer.cancel()
        host.close()
        guest.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
