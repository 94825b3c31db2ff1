"""PID 1 duties: mounts, the overlay root, power-off. Uses util-linux/e2fsprogs through argv
lists (python3-minimal has no mount() call); standard library only."""

from __future__ import annotations

import os
import sys
import time

from . import spawn

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


def run(argv: list[str], pass_fds: tuple[int, ...] = ()) -> None:
    """Run a tool; SciError with its stderr on failure."""
    log("+ " + " ".join(argv))
    try:
        code, output = spawn.run(argv, {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}, pass_fds)
    except OSError as exc:
        raise SciError(f"{argv[0]}: {exc.strerror}") from exc
    if code != 0:
        text = output.strip().replace("\n", "; ")
        raise SciError(f"{' '.join(argv)} failed ({code}): {text}")


def ismount(path: str) -> bool:
    return os.path.ismount(path)


def mount(fstype: str, source: str, target: str, options: str = "") -> None:
    if ismount(target):
        return
    os.makedirs(target, exist_ok=True)
    run(["mount", "-t", fstype, *(["-o", options] if options else []), source, target])


Mount = tuple[str, str, str, str]  # fstype, source, target, options

BASIC: list[Mount] = [
    ("proc", "proc", "/proc", "nosuid,nodev,noexec"),
    ("sysfs", "sysfs", "/sys", "nosuid,nodev,noexec"),
    ("devtmpfs", "devtmpfs", "/dev", "nosuid"),
    ("devpts", "devpts", "/dev/pts", "gid=5,mode=620,ptmxmode=666"),
    ("tmpfs", "tmpfs", "/run", "mode=755,nosuid,nodev"),
    ("tmpfs", "tmpfs", "/tmp", "mode=1777,nosuid,nodev"),
]


def mount_all(entries: list[Mount]) -> None:
    """Several mounts with ONE exec of mount(8) (each exec costs about 0.2 s under TCG): an fstab
    in a memfd, ``mount -a -T /proc/self/fd/N``; missing mount points are created."""
    if not entries:
        return
    text = "".join(
        f"{src} {target} {fstype} {opts or 'defaults'},X-mount.mkdir 0 0\n" for fstype, src, target, opts in entries
    )
    fd = os.memfd_create("sci-fstab")
    try:
        os.write(fd, text.encode())
        os.lseek(fd, 0, os.SEEK_SET)
        run(["mount", "-a", "-T", f"/proc/self/fd/{fd}"], pass_fds=(fd,))
    finally:
        os.close(fd)


def mount_basic(root: str = "") -> None:
    """/proc /sys /dev /dev/pts /run /tmp under *root*, skipping what is mounted already."""
    if not ismount("/proc"):
        mount("proc", "proc", "/proc")  # mount -a needs /proc/self/fd
    mount_all([(t, s, root + d, o) for t, s, d, o in BASIC if root or not ismount(d)])


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


def setup_overlay(dev: str) -> int:
    """Mount an overlay with its writable layer on *dev* over the (read-only) root, the basic
    file systems inside it, and chroot into it. Returns an fd of the overlay device's mount."""
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
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    new = f"{base}/rootfs"
    overlay: Mount = ("overlay", "overlay", new, f"lowerdir=/,upperdir={base}/rootfs_upper,workdir={base}/rootfs_work")
    mount_all([overlay] + [(t, s, new + d, o) for t, s, d, o in BASIC])
    os.chroot(new)  # what switch_root does in the end; no exec of pivot_root needed
    os.chdir("/")
    return base_fd


def set_console_size(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct

    if os.isatty(fd):
        fcntl.ioctl(fd, 0x5414, struct.pack("HHHH", rows, cols, 0, 0))  # TIOCSWINSZ


def _sysrq(key: str) -> None:
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write(key)
    except OSError as exc:
        console(f"cannot trigger sysrq {key}: {exc.strerror}")


def _all_readonly(fds: list[int]) -> bool:
    return all(os.fstatvfs(fd).f_flag & os.ST_RDONLY for fd in fds)


def poweroff(reset: bool, watch_fds: list[int]) -> None:
    """End the VM: stop everything, sync, remount every file system read-only (sysrq u; waits
    until the ones in *watch_fds* are), then sysrq power-off (or reset with ``reboot=k``, which
    ends Firecracker); falls back to reset if power-off does not happen."""
    try:
        os.kill(-1, 9)  # SIGKILL to every process but init
    except OSError:
        pass
    os.sync()
    try:
        with open("/proc/sys/kernel/sysrq", "w") as f:
            f.write("1")
    except OSError:
        pass
    _sysrq("u")
    deadline = time.monotonic() + 3
    while not _all_readonly(watch_fds) and time.monotonic() < deadline:
        time.sleep(0.01)  # the remount runs in a kernel worker; bounded by the deadline
    log(("reset" if reset else "power off") + ("" if _all_readonly(watch_fds) else " (not all read-only)"))
    for key in ("b",) if reset else ("o", "b"):
        _sysrq(key)
        time.sleep(3)  # the power-off runs in a kernel worker; reset if we are still here
    console("power-off failed; halting")
    while True:
        time.sleep(3600)
