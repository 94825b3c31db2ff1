"""One session on the guest side: handshake, run the program, pump its streams, send its exit.

Works on plain fds (a vsock or Unix socket, or a virtio-serial port), standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import time
from collections.abc import Callable

from .. import protocol as p
from .reaper import Reaper, ThreadWaiter
from .spawn import spawn

TIOCSWINSZ = 0x5414  # no termios module in python3-minimal; generic Linux value (x86, arm)
SIGKILL = 9  # the signal module costs an enum import
OUTPUT_GRACE = 2.0  # after the exit: wait this long at most for stdout/stderr EOF
FLUSH_TIMEOUT = 10.0
PROBE = "empty connection (readiness probe)"


Waiter = Reaper | ThreadWaiter  # watch(pid) -> fd readable at exit; status(pid) -> wait status


def set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows and cols:
        fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Child:
    """The running program: its pid, and our ends of its stdin/stdout/stderr (pty: one master fd)."""

    def __init__(self, req: p.Request, base_env: dict[str, str], winsize: tuple[int, int]) -> None:
        env = dict(base_env)
        env.update(req.env)
        self.tty = req.tty
        if req.tty:
            master, slave = os.openpty()
            os.set_inheritable(master, False)
            set_winsize(master, req.rows or winsize[0], req.cols or winsize[1])
            try:
                self.pid = spawn(
                    req.argv, env, cwd=req.cwd, stdin=slave, stdout=slave, stderr=slave, controlling_tty=True
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            fds: tuple[int, int, int | None] = (master, master, None)
        else:
            pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
            try:
                self.pid = spawn(req.argv, env, cwd=req.cwd, stdin=pipes[0][0], stdout=pipes[1][1], stderr=pipes[2][1])
            except BaseException:
                for r, w in pipes:
                    os.close(r)
                    os.close(w)
                raise
            for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):
                os.close(fd)
            fds = (pipes[0][1], pipes[1][0], pipes[2][0])
        self.stdin: int | None = fds[0]
        self.stdout: int | None = fds[1]
        self.stderr: int | None = fds[2]
        for fd in {fds[0], fds[1]}:
            os.set_blocking(fd, False)
        if fds[2] is not None:
            os.set_blocking(fds[2], False)

    def signal(self, signo: int) -> None:
        try:
            os.killpg(self.pid, signo)  # its session/process group, as a terminal would
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for fd in {self.stdin, self.stdout, self.stderr}:
            if fd is not None:
                os.close(fd)
        self.stdin = self.stdout = self.stderr = None


def _spawn_error(req: p.Request, exc: OSError) -> tuple[bytes, int]:
    if exc.filename == req.cwd and exc.filename != req.argv[0]:
        return f"sci: cannot change to {req.cwd}: {exc.strerror}\n".encode(), 126
    code = 127 if isinstance(exc, FileNotFoundError) else 126
    return f"sci: {req.argv[0]}: {exc.strerror}\n".encode(), code


HELLO_START = p.hello()[: 5 + len(p.MAGIC)]  # header + magic, whatever the version


def serve(
    rfd: int,
    wfd: int,
    waiter: Waiter,
    base_env: dict[str, str],
    winsize: tuple[int, int] = (24, 80),
    handshake_timeout: float = 30.0,
    resync: bool = False,
) -> str:
    """Serve one session on (rfd, wfd); returns what happened, for the debug log. Never raises for
    peer errors: a malformed or refused session gets an ERROR frame and ends. The guest answers
    the host's hello. *resync* (virtio-serial, a stream without connection boundaries): bytes
    before the host's hello are leftovers of an earlier session and are skipped."""
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    out = bytearray()
    dec = p.FrameDecoder()
    peer_ok = False
    skipped = bytearray()  # resync: bytes before the hello
    child: Child | None = None
    exit_fd: int | None = None
    status: int | None = None
    stdin_buf = bytearray()
    stdin_eof = False  # EOF frame received
    stdin_done = False  # ... and passed on to the program
    conn_eof = False
    deadline = time.monotonic() + handshake_timeout
    try:
        while True:
            if (
                child is not None
                and status is not None
                and ((child.stdout is None and child.stderr is None) or time.monotonic() >= deadline)
            ):
                out += p.encode_exit(status)
                p.write_all(wfd, bytes(out), time.monotonic() + FLUSH_TIMEOUT)
                return f"pid {child.pid} exit status {p.exit_status(status)}"
            if conn_eof:
                if not peer_ok and (resync or not dec.pending):
                    return PROBE
                if child is not None and status is None:
                    child.signal(SIGKILL)
                    _wait_fd(exit_fd)
                    status = waiter.status(child.pid)
                return "host closed the session" + (f", pid {child.pid} killed" if child else "")
            want: dict[int, int] = {}
            add = _adder(want)

            if len(stdin_buf) < p.HIGH_WATER:
                add(rfd, select.POLLIN)
            if out:
                add(wfd, select.POLLOUT)
            if child is not None:
                if stdin_buf and child.stdin is not None:
                    add(child.stdin, select.POLLOUT)
                if len(out) < p.HIGH_WATER:
                    add(child.stdout, select.POLLIN)
                    add(child.stderr, select.POLLIN)
                if status is None:
                    add(exit_fd, select.POLLIN)
            poller = select.poll()
            for fd, mask in want.items():
                poller.register(fd, mask)
            timeout = None
            if child is None or status is not None:
                timeout = max(0, int((deadline - time.monotonic()) * 1000) + 1)
            events = poller.poll(timeout)
            if not events and child is None and time.monotonic() >= deadline:
                raise p.ProtocolError(f"no request within {handshake_timeout:g} s")
            for fd, ev in events:
                if fd == wfd and ev & select.POLLOUT and out:
                    try:
                        del out[: os.write(wfd, out)]
                    except BlockingIOError:
                        pass
                if child is not None and fd == child.stdin and ev & (select.POLLOUT | select.POLLERR):
                    _feed_stdin(child, stdin_buf)
                if child is not None and fd in (child.stdout, child.stderr) and ev:
                    ftype = p.STDERR if fd == child.stderr and not child.tty else p.STDOUT
                    try:
                        data = os.read(fd, p.CHUNK)
                    except BlockingIOError:
                        data = None
                    except OSError:  # EIO: pty slave closed by everybody
                        data = b""
                    if data:
                        out += p.frame(ftype, data)
                    elif data is not None:
                        _close_output(child, fd)
                if exit_fd is not None and fd == exit_fd and status is None and child is not None:
                    status = waiter.status(child.pid)
                    deadline = time.monotonic() + OUTPUT_GRACE
                if fd == rfd and ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        data = os.read(rfd, p.CHUNK)
                    except BlockingIOError:
                        continue
                    if not data:
                        conn_eof = True
                        continue
                    if resync and not peer_ok and not dec.pending:
                        skipped += data
                        at = skipped.find(HELLO_START)
                        if at < 0:
                            del skipped[: -len(HELLO_START)]
                            continue
                        data = bytes(skipped[at:])
                        skipped.clear()
                    for ftype, payload in dec.feed(data):
                        if ftype == p.NOP:
                            continue
                        if ftype == p.HELLO and not peer_ok:
                            p.check_hello(payload)
                            peer_ok = True
                            out += p.hello()
                        elif not peer_ok:
                            raise p.ProtocolError("malformed session: expected hello first")
                        elif ftype == p.REQUEST and child is None:
                            req = p.decode_request(payload)
                            try:
                                child = Child(req, base_env, winsize)
                            except OSError as exc:
                                msg, code = _spawn_error(req, exc)
                                tail = p.frame(p.STDERR, msg) + p.encode_exit(code << 8)
                                p.write_all(wfd, bytes(out) + tail, time.monotonic() + FLUSH_TIMEOUT)
                                return f"{req.argv[0]}: cannot run ({exc.strerror})"
                            exit_fd = waiter.watch(child.pid)
                            out += p.frame(p.STARTED, struct.pack("!I", child.pid))
                        elif ftype == p.STDIN and not stdin_eof:
                            stdin_buf += payload
                        elif ftype == p.STDIN_EOF and not stdin_eof:
                            stdin_eof = True
                        elif ftype == p.SIGNAL and len(payload) == 1 and 0 < payload[0] < 65:
                            if child is not None and status is None:
                                child.signal(payload[0])
                        elif ftype == p.WINSIZE and len(payload) == 4:
                            if child is not None and child.tty and child.stdin is not None:
                                set_winsize(child.stdin, *struct.unpack("!HH", payload))
                        elif ftype == p.ERROR:
                            reason = payload.decode(errors="replace")
                            raise p.ProtocolError(f"host ended the session: {reason}")
                        else:
                            raise p.ProtocolError(f"malformed session: unexpected frame 0x{ftype:02x}")
            if child is not None and stdin_eof and not stdin_done and not stdin_buf and child.stdin is not None:
                stdin_done = True
                if child.tty:
                    if status is None:
                        stdin_buf += b"\x04"  # EOF character at the terminal (canonical mode)
                else:
                    os.close(child.stdin)
                    child.stdin = None
            if child is not None and stdin_buf and child.stdin is not None and status is not None:
                stdin_buf.clear()  # nobody will read it any more
    except p.ProtocolError as exc:
        try:
            p.write_all(wfd, bytes(out) + p.frame(p.ERROR, str(exc).encode()), time.monotonic() + 2)
        except OSError:
            pass
        if child is not None and status is None:
            child.signal(SIGKILL)
        return f"refused: {exc}"
    except OSError as exc:
        if child is not None and status is None:
            child.signal(SIGKILL)
        return f"session channel failed: {exc.strerror or exc}"
    finally:
        if child is not None:
            child.close()
        if exit_fd is not None:
            os.close(exit_fd)


def _adder(want: dict[int, int]) -> Callable[[int | None, int], None]:
    def add(fd: int | None, mask: int) -> None:
        if fd is not None:
            want[fd] = want.get(fd, 0) | mask

    return add


def _feed_stdin(child: Child, buf: bytearray) -> None:
    assert child.stdin is not None
    try:
        del buf[: os.write(child.stdin, buf)]
    except BlockingIOError:
        pass
    except OSError as exc:  # EPIPE: the program closed its stdin; what is left is dropped
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise
        buf.clear()
        if not child.tty:
            os.close(child.stdin)
            child.stdin = None


def _close_output(child: Child, fd: int) -> None:
    if child.tty:  # master: also our stdin end
        os.close(fd)
        child.stdin = child.stdout = None
        return
    os.close(fd)
    if fd == child.stdout:
        child.stdout = None
    else:
        child.stderr = None


def _wait_fd(fd: int | None) -> None:
    if fd is not None:
        select.select([fd], [], [])


def wait_for_host(fd: int) -> None:
    """virtio-serial: a write blocks until a host is connected to the port; a NOP frame is ignored
    by whichever host gets it (the previous one may still be connected)."""
    os.set_blocking(fd, True)
    p.write_all(fd, p.frame(p.NOP))
