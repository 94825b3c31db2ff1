"""A real Linux guest with sci as init, under QEMU TCG (this machine has no usable KVM and no
vhost-vsock), talking the session protocol over virtio-serial ports (QEMU chardev Unix sockets).

Reusable by other tests::

    images = guest_images()                       # scripts/build-guest.sh (cached)
    with Guest(tmp_path, images, ports=2, resume=True) as vm:   # killed at the end of the block
        res = vm.run(["/bin/sh", "-c", "echo hi"], stdin=b"", port=1)
        assert res.status == 0 and res.stdout == b"hi\\n"
    vm = Guest(tmp_path / "b", images, overlay=tmp_path / "ovl.ext2").start()
    vm.run(["/bin/true"])
    vm.wait_gone(60)                              # non-resume guests power off by themselves
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flake_pilot import protocol

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("FLAKE_STATE", "/var/tmp/flake-pilot"))
GUEST_DIR = Path(os.environ.get("FLAKE_GUEST_DIR", STATE / "guest"))
QEMU = "qemu-system-x86_64"
BASE_APPEND = "console=ttyS0 quiet panic=-1 tsc_early_khz=2000000 lpj=4000000 init=/usr/sbin/sci"


@dataclass(frozen=True)
class GuestImages:
    kernel: Path
    initrd: Path
    rootfs: Path


class GuestError(RuntimeError):
    pass


def guest_images() -> GuestImages:
    """Build (or reuse) kernel, initrd and rootfs with this checkout's sci; GuestError with the
    builder's output when that fails."""
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} is not installed: run scripts/setup-host.sh --test")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-guest.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "FLAKE_GUEST_DIR": str(GUEST_DIR)},
        timeout=900,
    )
    if proc.returncode != 0:
        raise GuestError(f"scripts/build-guest.sh failed: {proc.stderr.strip()[-2000:]}")
    return GuestImages(GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.cpio.gz", GUEST_DIR / "rootfs.ext4")


@dataclass
class Result:
    status: int
    stdout: bytes
    stderr: bytes
    started_at: float | None = None  # monotonic time of the STARTED frame
    ended_at: float = 0.0  # monotonic time the EXIT frame arrived
    pid: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Guest:
    """One QEMU microvm. ``ports`` virtio-serial ports named sci0.. (one session at a time each)."""

    def __init__(
        self,
        workdir: Path,
        images: GuestImages,
        *,
        ports: int = 1,
        overlay: Path | None = None,
        resume: bool = False,
        append: str = "",
        session_mode: bool = True,
        memory_mb: int = 256,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.dir / "console.log"
        self.sockets = [str(self.dir / f"sci{i}.sock") for i in range(ports)]
        args = [BASE_APPEND]
        if session_mode:
            args.append("sci_transport=virtio-serial")
        if resume:
            args.append("sci_resume")
        if overlay is not None:
            args.append("overlay_root=/dev/vdb")
        if append:
            args.append(append)
        self.append = " ".join(args)
        self.argv = [
            QEMU,
            "-M",
            "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            str(memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{self.console_path}",
            "-kernel",
            str(images.kernel),
            "-initrd",
            str(images.initrd),
            "-append",
            self.append,
            "-drive",
            f"id=root,file={images.rootfs},format=raw,if=none,readonly=on",
            "-device",
            "virtio-blk-device,drive=root",
        ]
        if overlay is not None:
            self.argv += [
                "-drive",
                f"id=ovl,file={overlay},format=raw,if=none",
                "-device",
                "virtio-blk-device,drive=ovl",
            ]
        if ports:
            self.argv += ["-device", "virtio-serial-device"]
            for i, path in enumerate(self.sockets):
                self.argv += [
                    "-chardev",
                    f"socket,id=sci{i},path={path},server=on,wait=off",
                    "-device",
                    f"virtserialport,chardev=sci{i},name=sci{i}",
                ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.gone_at: float | None = None

    def start(self) -> Guest:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        return self

    def __enter__(self) -> Guest:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def connect(self, port: int = 0, timeout: float = 30.0) -> socket.socket:
        """Connect to port *port*'s chardev socket (it appears when QEMU is up)."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.sockets[port])
                return sock
            except OSError as exc:
                sock.close()
                if self.proc is not None and self.proc.poll() is not None:
                    raise GuestError(f"QEMU exited ({self.proc.returncode}): {self.diagnostics()}") from exc
                if time.monotonic() >= deadline:
                    raise GuestError(f"{self.sockets[port]}: {exc.strerror}: {self.diagnostics()}") from exc
            time.sleep(0.02)  # QEMU is still starting; bounded by the deadline

    def run(
        self,
        argv: list[str],
        stdin: bytes | None = b"",
        *,
        port: int = 0,
        env: dict[str, str] | None = None,
        cwd: str = "/",
        tty: bool = False,
        rows: int = 0,
        cols: int = 0,
        timeout: float = 120.0,
        stdout_fd: int | None = None,
        forward_signals: bool = False,
        on_started: Callable[[int], None] | None = None,
    ) -> Result:
        """One session: returns status, stdout, stderr and timings. *stdout_fd*: stream stdout
        there instead of collecting it."""
        sock = self.connect(port)
        sock.settimeout(None)
        in_r = None
        if stdin is not None:
            in_r, in_w = os.pipe()
            data = stdin

            def feed() -> None:
                protocol.write_all(in_w, data)
                os.close(in_w)

            threading.Thread(target=feed, daemon=True).start()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

        def collect(fd: int) -> None:
            while data := os.read(fd, 65536):
                chunks[fd].append(data)
            os.close(fd)

        readers = [threading.Thread(target=collect, args=(fd,), daemon=True) for fd in (out_r, err_r)]
        for t in readers:
            t.start()
        result = Result(-1, b"", b"")

        def started(pid: int) -> None:
            result.started_at = time.monotonic()
            result.pid = pid
            if on_started is not None:
                on_started(pid)

        timer = threading.Timer(timeout, sock.shutdown, args=(socket.SHUT_RDWR,))
        timer.start()
        try:
            result.status = protocol.run_session(
                sock,
                protocol.Request(argv, env or {}, cwd, tty, rows, cols),
                in_r,
                out_w if stdout_fd is None else stdout_fd,
                err_w,
                handshake_timeout=timeout,
                forward_signals=forward_signals,
                on_started=started,
            )
            result.ended_at = time.monotonic()
        finally:
            timer.cancel()
            sock.close()
            for fd in (out_w, err_w) + ((in_r,) if in_r is not None else ()):
                os.close(fd)
            for t in readers:
                t.join(10)
        result.stdout, result.stderr = b"".join(chunks[out_r]), b"".join(chunks[err_r])
        return result

    def wait_gone(self, timeout: float = 60.0) -> int:
        """Wait for QEMU to exit by itself; GuestError (and kill) if it does not."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise GuestError(f"guest did not power off within {timeout:g} s: {self.diagnostics()}") from None
        self.gone_at = time.monotonic()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def diagnostics(self) -> str:
        qemu_out = ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout is not None:
            qemu_out = self.proc.stdout.read().decode(errors="replace").strip()
        return f"qemu: {qemu_out[-500:]!r} console: {self.console()[-1500:]!r}"
