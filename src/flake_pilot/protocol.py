"""The host-guest session protocol (version 1), shared by the host and sci in the guest.

Standard library only: the guest has python3-minimal (no json, termios, tty, pty modules), so
payloads use a small binary encoding. Each session is one byte stream (a vsock connection, a
Unix socket or a virtio-serial port); the protocol never looks at which. See docs/protocol.md.

Host side: ``run_session(sock, Request(...), stdin_fd, stdout_fd, stderr_fd) -> exit status``
and ``connect_firecracker_vsock(uds_path, port, timeout)``. Guest side: ``flake_pilot.sci.session``.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from .errors import EngineError

VERSION = 1
MAGIC = b"FLAKESCI"
MAX_PAYLOAD = 1 << 20  # larger frames are malformed
CHUNK = 65536  # data frames carry at most this much
HIGH_WATER = 4 * CHUNK  # stop reading a source while this much waits to be sent

# frame types: host -> guest
HELLO = 0x01  # both directions: MAGIC + u16 version
REQUEST = 0x02
STDIN = 0x03
STDIN_EOF = 0x04
SIGNAL = 0x05  # u8 signal number
WINSIZE = 0x06  # u16 rows, u16 cols
# guest -> host
STARTED = 0x10  # u32 pid
STDOUT = 0x11
STDERR = 0x12
EXIT = 0x13  # u8 kind (0 exited, 1 killed by signal), u8 value
ERROR = 0x1F  # both directions: UTF-8 reason; the session ends
NOP = 0x1E  # both directions, ignored (sci writes one to wait for a virtio-serial host)

TYPES = frozenset({HELLO, REQUEST, STDIN, STDIN_EOF, SIGNAL, WINSIZE, STARTED, STDOUT, STDERR, EXIT, ERROR, NOP})
_HEADER = struct.Struct("!BI")
# request fields: tag byte + u32 length + value
_TAG_ARG, _TAG_ENV, _TAG_CWD, _TAG_TTY, _TAG_WINSIZE = b"a", b"e", b"c", b"t", b"w"

FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


class ProtocolError(EngineError):
    """Malformed frame, unknown version, refused request or a broken session channel."""


class Interrupted(ProtocolError):
    """A terminating signal reached the host before the guest answered (a VM still booting): the
    session is abandoned; the caller exits 128+N."""

    def __init__(self, signo: int) -> None:
        super().__init__(f"interrupted by signal {signo} before the guest answered")
        self.signo = signo


ABANDON_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


class Request:
    """What the host asks the guest to run. ``argv[0]`` is the program path."""

    __slots__ = ("argv", "env", "cwd", "tty", "rows", "cols")

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        tty: bool = False,
        rows: int = 0,
        cols: int = 0,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env or {})
        self.cwd = cwd
        self.tty = tty
        self.rows = rows
        self.cols = cols

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "Request(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


# ---- framing -------------------------------------------------------------------------------


def frame(ftype: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(ftype, len(payload)) + payload


def data_frames(ftype: int, data: bytes) -> bytes:
    return b"".join(frame(ftype, data[i : i + CHUNK]) for i in range(0, len(data), CHUNK))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` yields complete (type, payload) frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            ftype, length = _HEADER.unpack_from(self._buf)
            if ftype not in TYPES:
                raise ProtocolError(f"malformed frame: unknown type 0x{ftype:02x}")
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"malformed frame: length {length} exceeds {MAX_PAYLOAD}")
            end = _HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[_HEADER.size : end])
            del self._buf[:end]
            yield ftype, payload

    @property
    def pending(self) -> int:
        return len(self._buf)


def hello(version: int = VERSION) -> bytes:
    return frame(HELLO, MAGIC + struct.pack("!H", version))


def check_hello(payload: bytes) -> int:
    """The peer's version; ProtocolError unless it is ours."""
    if len(payload) != len(MAGIC) + 2 or not payload.startswith(MAGIC):
        raise ProtocolError("malformed hello: not a flake-pilot sci peer")
    (version,) = struct.unpack_from("!H", payload, len(MAGIC))
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    return version


def _field(tag: bytes, value: bytes) -> bytes:
    return tag + struct.pack("!I", len(value)) + value


def encode_request(req: Request) -> bytes:
    if not req.argv or not req.argv[0]:
        raise ProtocolError("request without a program")
    parts = [_field(_TAG_ARG, os.fsencode(a)) for a in req.argv]
    for key, value in req.env.items():
        if not key or "=" in key:
            raise ProtocolError(f"invalid environment variable name {key!r}")
        parts.append(_field(_TAG_ENV, os.fsencode(f"{key}={value}")))
    parts.append(_field(_TAG_CWD, os.fsencode(req.cwd)))
    parts.append(_field(_TAG_TTY, b"\x01" if req.tty else b"\x00"))
    parts.append(_field(_TAG_WINSIZE, struct.pack("!HH", req.rows, req.cols)))
    return frame(REQUEST, b"".join(parts))


def decode_request(payload: bytes) -> Request:
    argv: list[str] = []
    env: dict[str, str] = {}
    cwd, tty, rows, cols = "/", False, 0, 0
    pos = 0
    while pos < len(payload):
        if pos + 5 > len(payload):
            raise ProtocolError("malformed request: truncated field header")
        tag = payload[pos : pos + 1]
        (length,) = struct.unpack_from("!I", payload, pos + 1)
        pos += 5
        value = payload[pos : pos + length]
        if len(value) != length:
            raise ProtocolError("malformed request: truncated field")
        pos += length
        if tag in (_TAG_ARG, _TAG_ENV, _TAG_CWD) and b"\x00" in value:
            raise ProtocolError("malformed request: NUL byte in a string field")
        if tag == _TAG_ARG:
            argv.append(os.fsdecode(value))
        elif tag == _TAG_ENV:
            key, sep, val = os.fsdecode(value).partition("=")
            if not sep or not key:
                raise ProtocolError("malformed request: environment entry without NAME=")
            env[key] = val
        elif tag == _TAG_CWD:
            cwd = os.fsdecode(value)
        elif tag == _TAG_TTY and length == 1:
            tty = value != b"\x00"
        elif tag == _TAG_WINSIZE and length == 4:
            rows, cols = struct.unpack("!HH", value)
        else:
            raise ProtocolError(f"malformed request: unknown field {tag!r}")
    if not argv or not argv[0].startswith("/"):
        raise ProtocolError("malformed request: the program must be an absolute path")
    return Request(argv, env, cwd or "/", tty, rows, cols)


def encode_exit(wait_status: int) -> bytes:
    """EXIT frame from an os.waitpid() status."""
    if os.WIFSIGNALED(wait_status):
        return frame(EXIT, struct.pack("!BB", 1, os.WTERMSIG(wait_status)))
    return frame(EXIT, struct.pack("!BB", 0, os.waitstatus_to_exitcode(wait_status) & 0xFF))


def exit_status(wait_status: int) -> int:
    """Shell-style exit status of an os.waitpid() status."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status) & 0xFF


def decode_exit(payload: bytes) -> int:
    """Shell-style exit status: the code, or 128+N for signal N."""
    if len(payload) != 2 or payload[0] not in (0, 1):
        raise ProtocolError("malformed exit frame")
    return payload[1] if payload[0] == 0 else 128 + payload[1]


# ---- fd helpers (both sides) ---------------------------------------------------------------


def write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    """Write everything, also to a non-blocking fd; OSError(ETIMEDOUT) past *deadline*."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0:
                raise OSError(errno.ETIMEDOUT, "peer does not read") from None
            p = select.poll()
            p.register(fd, select.POLLOUT)
            p.poll(None if wait is None else int(wait * 1000) + 1)


def set_nonblocking(fd: int, on: bool = True) -> None:
    os.set_blocking(fd, not on)


# ---- host side -----------------------------------------------------------------------------


def connect_firecracker_vsock(uds_path: str, port: int, timeout: float = 10.0) -> socket.socket:
    """Connect to guest vsock *port* through Firecracker's Unix socket (``CONNECT <port>`` / ``OK <n>``).

    Retries until the guest listens or *timeout* passes; ProtocolError names the socket on failure.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.05, min(2.0, deadline - time.monotonic())))
            sock.connect(uds_path)
            sock.sendall(f"CONNECT {port}\n".encode())
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                chunk = sock.recv(1)  # byte-wise: nothing after the line may be consumed
                if not chunk:
                    break
                line += chunk
            if line.startswith(b"OK ") and line.endswith(b"\n"):
                sock.settimeout(None)
                return sock
            last = f"answer {line!r}"
        except OSError as exc:
            last = exc.strerror or str(exc)
        sock.close()
        if time.monotonic() >= deadline:
            raise ProtocolError(f"{uds_path}: vsock port {port} not reachable within {timeout:g} s ({last})")
        time.sleep(0.05)  # retry interval while the guest boots; bounded by the deadline


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on *fd*, (0, 0) when it is none."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 0, 0
    return size.lines, size.columns


class _RawTerminal:
    """Raw mode on the host terminal for the session's duration (termios: host only)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[int | list[bytes | int]] | None = None

    def __enter__(self) -> _RawTerminal:
        if os.isatty(self.fd):
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def run_session(
    sock: socket.socket,
    request: Request,
    stdin_fd: int | None,
    stdout_fd: int,
    stderr_fd: int,
    *,
    handshake_timeout: float = 60.0,
    forward_signals: bool = True,
    on_started: Callable[[int], None] | None = None,
) -> int:
    """Run *request* over the connected *sock*; return the exit status (code, or 128+N on signal N).

    stdin EOF is sent as a frame and does not end the session. With *forward_signals* (main thread
    only) SIGINT/TERM/HUP/QUIT/USR1/USR2 go to the program and SIGWINCH sends the new window size;
    SIGINT/TERM/HUP/QUIT before the guest's hello (a VM still booting) raise ``Interrupted``.
    A raw host terminal is set up when ``request.tty`` and *stdin_fd* is a terminal.
    *on_started*, if callable, gets the guest pid when the program runs.
    ProtocolError on a refused request, a malformed frame or a lost connection.
    """
    fd = sock.fileno()
    sock.setblocking(False)
    out = bytearray(hello() + encode_request(request))
    if stdin_fd is None:
        out += frame(STDIN_EOF)
    dec = FrameDecoder()
    peer_ok = False
    status: int | None = None
    stdout_broken = False
    deadline = time.monotonic() + handshake_timeout
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    saved_handlers: dict[signal.Signals, object] = {}
    if forward_signals:
        try:
            for signo in FORWARDED_SIGNALS:
                saved_handlers[signo] = signal.signal(signo, lambda n, _f: os.write(sig_w, bytes([n])))
        except ValueError:  # not the main thread: no forwarding
            pass
    raw = _RawTerminal(stdin_fd) if request.tty and stdin_fd is not None else None
    try:
        if raw:
            raw.__enter__()
        while status is None:
            poller = select.poll()
            poller.register(fd, select.POLLIN | (select.POLLOUT if out else 0))
            poller.register(sig_r, select.POLLIN)
            if stdin_fd is not None and peer_ok and len(out) < HIGH_WATER:
                poller.register(stdin_fd, select.POLLIN)
            wait = None if peer_ok else max(0.0, deadline - time.monotonic())
            try:
                events = poller.poll(None if wait is None else int(wait * 1000) + 1)
            except InterruptedError:
                continue
            if not events and not peer_ok and time.monotonic() >= deadline:
                raise ProtocolError(f"no answer from the guest within {handshake_timeout:g} s")
            for efd, ev in events:
                if efd == sig_r:
                    for sig_byte in os.read(sig_r, 64):
                        if sig_byte == signal.SIGWINCH:
                            rows, cols = terminal_size(stdin_fd if stdin_fd is not None else stdout_fd)
                            out += frame(WINSIZE, struct.pack("!HH", rows, cols))
                        elif not peer_ok and sig_byte in ABANDON_SIGNALS:
                            raise Interrupted(sig_byte)
                        else:
                            out += frame(SIGNAL, bytes([sig_byte]))
                elif efd == fd and ev & select.POLLOUT and out:
                    try:
                        del out[: os.write(fd, out)]
                    except BlockingIOError:
                        pass
                    except OSError:  # peer closed: what it sent last is still read below
                        out.clear()
                elif efd == stdin_fd:
                    try:
                        data = os.read(stdin_fd, CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:  # EIO: terminal hung up
                        data = b""
                    if data:
                        out += frame(STDIN, data)
                    else:
                        out += frame(STDIN_EOF)
                        stdin_fd = None
                if efd == fd and ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        data = os.read(fd, CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise ProtocolError(f"session channel failed: {exc.strerror}") from exc
                    if not data:
                        raise ProtocolError("the guest closed the session without an exit status")
                    for ftype, payload in dec.feed(data):
                        if ftype == NOP:
                            continue
                        if ftype == HELLO:
                            check_hello(payload)
                            peer_ok = True
                        elif not peer_ok:
                            if ftype == ERROR:
                                raise ProtocolError(f"guest refused: {payload.decode(errors='replace')}")
                            raise ProtocolError("malformed session: guest did not start with hello")
                        elif ftype == STDOUT:
                            if not stdout_broken:
                                try:
                                    write_all(stdout_fd, payload)
                                except BrokenPipeError:
                                    stdout_broken = True
                                    out += frame(SIGNAL, bytes([signal.SIGPIPE]))
                        elif ftype == STDERR:
                            try:
                                write_all(stderr_fd, payload)
                            except BrokenPipeError:
                                pass
                        elif ftype == STARTED:
                            if on_started is not None and len(payload) == 4:
                                on_started(struct.unpack("!I", payload)[0])
                        elif ftype == EXIT:
                            status = decode_exit(payload)
                            break
                        elif ftype == ERROR:
                            raise ProtocolError(f"guest refused: {payload.decode(errors='replace')}")
                        else:
                            raise ProtocolError(f"malformed session: unexpected frame 0x{ftype:02x}")
                    if status is not None:
                        break
        return status
    finally:
        if raw:
            raw.__exit__()
        for signo, handler in saved_handlers.items():
            signal.signal(signo, handler)  # type: ignore[arg-type]
        os.close(sig_r)
        os.close(sig_w)
