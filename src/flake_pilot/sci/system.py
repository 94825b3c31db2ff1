"""PID 1 duties: mounts, the overlay root, power-off. Uses util-linux/e2fsprogs through argv
lists (python3-minimal has no mount() call); standard library only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

OVERLAY_DIR = "/overlayroot"  # in the image, as in the original; else a tmpfs dir under /run
EXT_MAGIC_OFFSET = 1080  # ext2/3/4 superblock magic 0xEF53 (little endian)
_T0 = time.monotonic()
debug_enabled = False


class SciError(Exception):
    """A step of sci failed; the message says which and why."""


def log(msg: str) -> None:
    if debug_enabled:
        console(f"[{uptime():8.3f}] {msg}")


def console(msg: str) -> None:
    sys.stderr.write(f"sci: {msg}\n")
    sys.stderr.flush()


def uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _T0


def run(argv: list[str]) -> None:
    """Run a tool; SciError with its stderr on failure."""
    log("+ " + " ".join(argv))
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
    except OSError as exc:
        raise SciError(f"{argv[0]}: {exc.strerror}") from exc
    if proc.returncode != 0:
        text = proc.stdout.decode(errors="replace").strip().replace("\n", "; ")
        raise SciError(f"{' '.join(argv)} failed ({proc.returncode}): {text}")


def ismount(path: str) -> bool:
    return os.path.ismount(path)


def mount(fstype: str, source: str, target: str, options: str = "") -> None:
    if ismount(target):
        return
    os.makedirs(target, exist_ok=True)
    run(["mount", "-t", fstype, *(["-o", options] if options else []), source, target])


def mount_basic() -> None:
    """/proc /sys /dev /dev/pts /run /tmp, skipping what is mounted already."""
    mount("proc", "proc", "/proc")
    mount("sysfs", "sysfs", "/sys")
    mount("devtmpfs", "devtmpfs", "/dev")
    mount("devpts", "devpts", "/dev/pts", "gid=5,mode=620,ptmxmode=666")
    mount("tmpfs", "tmpfs", "/run", "mode=755,nosuid,nodev")
    mount("tmpfs", "tmpfs", "/tmp", "mode=1777,nosuid,nodev")


def wait_for_device(dev: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(dev):
        if time.monotonic() >= deadline:
            raise SciError(f"overlay device {dev} did not appear within {timeout:g} s")
        time.sleep(0.02)  # devtmpfs node of a probing driver; bounded by the deadline


def has_ext_fs(dev: str) -> bool:
    with open(dev, "rb") as f:
        f.seek(EXT_MAGIC_OFFSET)
        return f.read(2) == b"\x53\xef"


def setup_overlay(dev: str) -> str:
    """Mount an overlay with its writable layer on *dev* over the (read-only) root and pivot into
    it. Returns where the overlay device is mounted afterwards."""
    wait_for_device(dev)
    if not has_ext_fs(dev):
        log(f"{dev}: no file system, formatting ext2")
        run(["mkfs.ext2", "-q", "-F", dev])
    base = OVERLAY_DIR if os.path.isdir(OVERLAY_DIR) else "/run/sci-overlayroot"
    if base != OVERLAY_DIR:
        mount("tmpfs", "tmpfs", "/run", "mode=755")
        os.makedirs(base, exist_ok=True)
    run(["mount", dev, base])
    for sub in ("rootfs", "rootfs_upper", "rootfs_work"):
        os.makedirs(f"{base}/{sub}", mode=0o755, exist_ok=True)
    new = f"{base}/rootfs"
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir=/,upperdir={base}/rootfs_upper,workdir={base}/rootfs_work", new])
    os.makedirs(f"{new}/mnt", exist_ok=True)
    os.chdir(new)
    run(["pivot_root", ".", "mnt"])  # moves the root of every process, sci's included
    os.chroot(".")
    os.chdir("/")
    return "/mnt" + base


def set_console_size(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    if os.isatty(fd):
        fcntl.ioctl(fd, 0x5414, struct.pack("HHHH", rows, cols, 0, 0))  # TIOCSWINSZ


def poweroff(reset: bool, remount: list[str]) -> None:
    """End the VM: stop everything, sync, remount read-only, then sysrq power-off (or reset with
    ``reboot=k``, which ends Firecracker); falls back to reset if power-off does not happen."""
    try:
        os.kill(-1, signal.SIGKILL)  # every process but init
    except OSError:
        pass
    os.sync()
    for path in remount:
        try:
            run(["mount", "-o", "remount,ro", path])
        except SciError as exc:
            log(str(exc))
    os.sync()
    log("power off" if not reset else "reset")
    try:
        with open("/proc/sys/kernel/sysrq", "w") as f:
            f.write("1")
    except OSError:
        pass
    for key in ("b",) if reset else ("o", "b"):
        try:
            with open("/proc/sysrq-trigger", "w") as f:
                f.write(key)
        except OSError as exc:
            console(f"cannot trigger sysrq {key}: {exc.strerror}")
        time.sleep(3)  # the power-off runs in a kernel worker; reset if we are still here
    console("power-off failed; halting")
    while True:
        signal.pause()
