"""sci entry point: the guest's PID 1 (or a plain process, for ``--version`` and tests).

Order: /proc, settings from the kernel command line, overlay root (pivot into it), the other
mounts, then serial mode (``run=CMD`` on the console) or session mode (vsock / virtio-serial,
resume keeps serving). Whatever happens, PID 1 ends with a clean power-off.
"""

from __future__ import annotations

import os
import sys

from .cmdline import Settings
from .reaper import Reaper, ThreadWaiter

VERSION = "1"  # sci release; the protocol version is flake_pilot.protocol.VERSION


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        sys.stdout.write(f"sci {VERSION}\n")
        return 0
    pid1 = os.getpid() == 1
    if pid1:
        _std_fds()
    if args and not pid1:  # as init, argv holds the kernel's flag parameters: read from /proc/cmdline
        sys.stderr.write("usage: sci [--version]  (init; settings from the kernel command line)\n")
        return 2
    from . import system

    state = _State()
    rc = 1
    try:
        _init(pid1, state)
        rc = 0
    except BaseException as exc:  # PID 1 must never die: report, then power off
        system.console(f"error: {type(exc).__name__ if not str(exc) else exc}")
    if pid1:
        system.poweroff(state.reset, state.watch)
    return rc


def _std_fds() -> None:
    """Without a console (``console=``, as the launchers boot session VMs) the kernel starts init
    without fds 0-2: put /dev/null there, or the first pipes of a session would land on them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open("/dev/null", os.O_RDWR)
            except OSError:
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


class _State:
    """What power-off needs to know, filled in as far as _init gets."""

    def __init__(self) -> None:
        self.reset = False  # reboot=k: end by reset (Firecracker)
        self.watch: list[int] = []  # fds of file systems that must be read-only first


def _init(pid1: bool, state: _State) -> None:
    from . import cmdline, system
    from .cmdline import BASE_PATH

    os.environ["PATH"] = BASE_PATH  # the kernel gives init no PATH
    if pid1 and not system.ismount("/proc"):
        system.mount("proc", "proc", "/proc")
    settings = cmdline.load()
    state.reset = settings.reset
    system.debug_enabled = settings.debug
    system.log(f"sci {VERSION} as pid {os.getpid()}")
    if settings.overlay_root and pid1:
        base_fd = system.setup_overlay(settings.overlay_root)
        state.watch = [base_fd]  # sysrq u remounts block file systems (not the overlay itself)
        system.log(f"overlay root on {settings.overlay_root}")
    elif pid1:
        system.mount_basic()
    waiter: Reaper | ThreadWaiter = Reaper() if pid1 else ThreadWaiter()
    if settings.session_mode:
        from . import session, transport

        env, winsize = settings.base_env(), (settings.rows, settings.cols)

        def serve(rfd: int, wfd: int, resync: bool) -> str:
            return session.serve(rfd, wfd, waiter, env, winsize, resync=resync)

        if settings.transport == "vsock":
            transport.serve_vsock(settings.vsock_port, serve, settings.resume)
        else:
            transport.serve_virtio_serial(settings.port_prefix, serve, settings.resume)
    else:
        _serial(settings, waiter)


def _serial(settings: Settings, waiter: Reaper | ThreadWaiter) -> None:
    """Compatibility: ``run=CMD`` runs on the console; its exit status is logged, not returned."""
    from . import system
    from .spawn import spawn

    argv = settings.command()
    # a fresh /dev/console: the inherited fds may point at the initrd's (deleted) node, whose
    # name programs cannot find (tty(1): "not a tty")
    con = -1
    if os.getpid() == 1:
        try:
            con = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            pass
    tty = os.isatty(con if con >= 0 else 0)
    system.set_console_size(con if con >= 0 else 0, settings.rows, settings.cols)
    try:
        pid = spawn(argv, settings.base_env(), stdin=con, stdout=con, stderr=con, controlling_tty=tty)
    except OSError as exc:
        raise system.SciError(f"{argv[0]}: {exc.strerror}") from exc
    finally:
        if con >= 0:
            os.close(con)
    fd = waiter.watch(pid)
    os.read(fd, 1)
    os.close(fd)
    status = waiter.status(pid)
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
    system.log(f"{argv[0]}: exit status {code}")


if __name__ == "__main__":
    sys.exit(main())
