"""sci as init of a real Linux guest (Debian cloud kernel, QEMU TCG), sessions over virtio-serial.

Three boots: a one-shot session with a fresh overlay and power-off; resume mode with two ports
and a reused overlay; a broken serial-mode guest that must still power off.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need_root
from guest import Guest, GuestImages, guest_images

pytestmark = [pytest.mark.qemu, pytest.mark.root]  # guests built with debootstrap, booted under QEMU


@pytest.fixture(scope="module")
def images() -> Iterator[GuestImages]:
    need_root("the guest images are built with debootstrap")
    yield guest_images()


GUEST_BENCH = """
import subprocess, time
def best(argv):
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t0)
    return min(runs) * 1000
print(f"{best(['/usr/bin/python3', '-c', 'pass']):.0f} {best(['/usr/sbin/sci', '--version']):.0f}")
"""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_one_shot_session_overlay_and_power_off(tmp_path: Path, images: GuestImages) -> None:
    overlay = tmp_path / "overlay.ext2"
    with open(overlay, "wb") as f:
        f.truncate(64 << 20)  # no file system: sci formats it on first use
    rootfs_before = _sha256(images.rootfs)
    args = ["a b", "'single'", '"double"', "", "back\\slash", "*"]
    script = 'printf "<%s>" "$@" >&2; cat; echo written-in-guest > /root/overlay-proof; echo after-eof; exit 42'
    data = os.urandom(300 * 1024)
    vm = Guest(tmp_path / "vm", images, overlay=overlay).start()
    try:
        res = vm.run(["/bin/sh", "-c", script, "sh", *args], stdin=data)
        assert res.status == 42, vm.diagnostics()
        assert res.stdout == data + b"after-eof\n"  # EOF on stdin did not end the session
        assert res.stderr == b"".join(f"<{a}>".encode() for a in args)
        assert vm.wait_gone(60) == 0  # powered off by itself
    finally:
        vm.kill()
    assert res.started_at is not None and vm.gone_at is not None
    print(
        f"\nQEMU start -> program running: {res.started_at - vm.started_at:.2f} s; "
        f"program exit -> VM gone: {vm.gone_at - res.ended_at:.2f} s"
    )
    assert "sci: error" not in vm.console()
    # the write landed in the overlay's upper layer; the rootfs image is byte-for-byte untouched
    assert "written-in-guest" in _debugfs(overlay, "cat /rootfs_upper/root/overlay-proof")
    assert "File not found" in _debugfs(images.rootfs, "stat /root/overlay-proof")
    assert _sha256(images.rootfs) == rootfs_before


def _overlay_with_marker(path: Path, text: str) -> None:
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(path)], check=True, timeout=60)
    src = path.with_suffix(".marker")
    src.write_text(text)
    for req in ("mkdir rootfs_upper", "mkdir rootfs_upper/etc", f"write {src} rootfs_upper/etc/flake-marker"):
        subprocess.run(["debugfs", "-w", "-R", req, str(path)], check=True, capture_output=True, timeout=60)


def test_resume_mode_serves_concurrent_sessions(tmp_path: Path, images: GuestImages) -> None:
    overlay = tmp_path / "overlay.ext2"
    _overlay_with_marker(overlay, "from-the-host\n")
    with Guest(tmp_path / "vm", images, ports=2, overlay=overlay, resume=True).start() as vm:
        # an existing overlay is reused: a file put in its upper layer shows in the root
        script = 'cat /etc/flake-marker; pwd; echo "$FOO"'
        res = vm.run(["/bin/sh", "-c", script], env={"FOO": "x  y"}, cwd="/tmp")
        assert res.status == 0, vm.diagnostics()
        assert (res.stdout, res.stderr) == (b"from-the-host\n/tmp\nx  y\n", b"")

        # two sessions at once: A can only finish when B runs while A waits
        a_r, a_w = os.pipe()
        a_result: list[object] = []
        fifo_script = "mkfifo /tmp/f && echo ready && cat /tmp/f; echo a-done"
        a = threading.Thread(
            target=lambda: a_result.append(vm.run(["/bin/sh", "-c", fifo_script], port=0, stdout_fd=a_w))
        )
        a.start()
        seen = b""
        deadline = time.monotonic() + 60
        while b"ready\n" not in seen:
            assert time.monotonic() < deadline, f"session A never got ready: {vm.diagnostics()}"
            seen += os.read(a_r, 100)
        b = vm.run(["/bin/sh", "-c", "echo from-b > /tmp/f"], port=1)
        a.join(60)
        os.close(a_w)
        while chunk := os.read(a_r, 100):
            seen += chunk
        os.close(a_r)
        assert b.status == 0 and a_result and a_result[0].status == 0  # type: ignore[attr-defined]
        assert seen == b"ready\nfrom-b\na-done\n"

        # a terminal of the asked size; the exit code comes back in tty mode too
        res = vm.run(["/bin/sh", "-c", "stty size; tty; exit 3"], tty=True, rows=30, cols=100, port=1)
        assert res.status == 3
        assert res.stdout.replace(b"\r", b"").splitlines() == [b"30 100", b"/dev/pts/0"]

        # a signal to the launcher reaches the program: 128+N
        res = vm.run(
            ["/bin/sleep", "60"], forward_signals=True, on_started=lambda pid: os.kill(os.getpid(), signal.SIGTERM)
        )
        assert res.status == 128 + signal.SIGTERM
        res = vm.run(["/nonexistent/prog"])
        assert res.status == 127 and b"/nonexistent/prog: No such file or directory" in res.stderr

        # PID 1 reaps orphans: the background child outlives its parent and becomes sci's
        res = vm.run(["/bin/sh", "-c", '/bin/sh -c "sleep 0.3; exit 5" & echo $!'])
        orphan = int(res.stdout)
        check = (
            f"i=0; while [ -e /proc/{orphan} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
            f"test ! -e /proc/{orphan}"
        )
        assert vm.run(["/bin/sh", "-c", check]).status == 0, f"zombie {orphan} was not reaped"

        # the Firecracker transport's listener works in this kernel (no vhost-vsock here to connect)
        probe = (
            "import sys; sys.path.insert(0, '/usr/sbin/sci'); from flake_pilot.sci import transport;"
            " print(transport.vsock_listener(52).getsockname())"
        )
        res = vm.run(["/usr/bin/python3", "-c", probe])
        assert (res.status, res.stdout) == (0, b"(4294967295, 52)\n"), res.stderr

        # sci's own start-up as a process in the guest, against a bare interpreter
        res = vm.run(["/usr/bin/python3", "-c", GUEST_BENCH])
        assert res.status == 0, res.stderr
        bare_ms, sci_ms = map(float, res.stdout.split())
        print(f"\nin the guest (TCG): python3 -c pass {bare_ms:.0f} ms, sci --version {sci_ms:.0f} ms")
        assert vm.proc is not None and vm.proc.poll() is None  # resume: still serving
        assert "sci: error" not in vm.console()


def test_serial_mode_runs_run_on_the_console(tmp_path: Path, images: GuestImages) -> None:
    """Compatibility fallback: the command comes from run= and talks to the console."""
    run = "run=\"/bin/sh -c 'echo serial:$0:$1; tty; exit 3' zero 'a b'\" PILOT_DEBUG=1"
    vm = Guest(tmp_path / "vm", images, session_mode=False, append=run).start()
    try:
        assert vm.wait_gone(60) == 0
    finally:
        vm.kill()
    console = vm.console().replace("\r", "")
    assert "serial:zero:a b\n/dev/console\n" in console  # the console is its terminal
    assert "/bin/sh: exit status 3" in console


def test_broken_guest_reports_and_powers_off(tmp_path: Path, images: GuestImages) -> None:
    vm = Guest(tmp_path / "vm", images, session_mode=False, append='run="/bin/echo \'unterminated"').start()
    try:
        assert vm.wait_gone(60) == 0
    finally:
        vm.kill()
    assert "sci: error: unterminated single quote" in vm.console()
