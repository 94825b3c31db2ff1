"""Where sessions come from: AF_VSOCK connections (Firecracker) or virtio-serial ports (QEMU).

Each source hands plain fds to ``session.serve``; in resume mode every connection/port is served
in its own thread, otherwise the first real session ends sci's work.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from . import session
from .system import SciError, log

Serve = Callable[[int, int, bool], str]  # (rfd, wfd, resync) -> outcome


def vsock_listener(port: int) -> socket.socket:
    """A listening AF_VSOCK socket on *port* (any CID); SciError with the reason."""
    try:
        srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        srv.bind((socket.VMADDR_CID_ANY, port))
        srv.listen(16)
    except (OSError, AttributeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise SciError(f"cannot listen on vsock port {port}: {reason}") from exc
    log(f"listening on vsock port {port}")
    return srv


def serve_vsock(port: int, serve: Serve, resume: bool) -> None:
    serve_listener(vsock_listener(port), serve, resume)


def serve_listener(srv: socket.socket, serve: Serve, resume: bool) -> None:
    """One session per accepted connection (a thread each in resume mode); without resume, return
    after the first real session (empty probe connections do not count)."""
    done = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            outcome = serve(conn.fileno(), conn.fileno(), False)
        log(f"session: {outcome}")
        if outcome != session.PROBE:
            done.set()

    while True:
        conn, _ = srv.accept()
        if resume:
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
            continue
        handle(conn)
        if done.is_set():
            srv.close()
            return


def find_ports(prefix: str, timeout: float = 10.0) -> list[str]:
    """/dev/vportNpM of the virtio-serial ports whose name starts with *prefix*."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        try:
            entries = sorted(os.listdir("/sys/class/virtio-ports"))
        except OSError:
            entries = []
        for entry in entries:
            name_file = f"/sys/class/virtio-ports/{entry}/name"
            try:
                with open(name_file) as f:
                    name = f.read().strip()
            except OSError:
                continue
            dev = "/dev/" + os.path.basename(os.path.dirname(name_file))
            if name.startswith(prefix) and os.path.exists(dev):
                found.append(dev)
        if found:
            return found
        if time.monotonic() >= deadline:
            raise SciError(f"no virtio-serial port named {prefix}* within {timeout:g} s")
        time.sleep(0.02)  # ports appear while virtio_console probes; bounded by the deadline


def serve_virtio_serial(prefix: str, serve: Serve, resume: bool) -> None:
    ports = find_ports(prefix)
    log(f"serving virtio-serial ports {' '.join(ports)}")
    done = threading.Event()

    def port_loop(dev: str) -> None:
        # The port stays open: closing it would drop what a new host already sent. Sessions are
        # told apart by the host's hello (serve(resync=True) skips leftovers before it).
        try:
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log(f"{dev}: {exc.strerror}")
            done.set()
            return
        while not done.is_set():
            try:
                session.wait_for_host(fd)
                outcome = serve(fd, fd, True)
            except OSError as exc:
                log(f"{dev}: {exc.strerror}")
                done.set()
                return
            if outcome != session.PROBE:
                log(f"{dev} session: {outcome}")
                if not resume:
                    done.set()

    for dev in ports:
        threading.Thread(target=port_loop, args=(dev,), name=dev, daemon=True).start()
    done.wait()
