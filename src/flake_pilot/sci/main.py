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
    if args and args[0] not in ("--",):
        sys.stderr.write("usage: sci [--version]  (init; settings from the kernel command line)\n")
        return 2
    from . import system
    pid1 = os.getpid() == 1
    reset, remount, rc = False, ["/"], 1
    try:
        reset, remount = _init(pid1)
        rc = 0
    except BaseException as exc:  # PID 1 must never die: report, then power off
        system.console(f"error: {type(exc).__name__ if not str(exc) else exc}")
    if pid1:
        system.poweroff(reset, remount)
    return rc


def _init(pid1: bool) -> tuple[bool, list[str]]:
    from . import cmdline, system
    from .cmdline import BASE_PATH
    os.environ["PATH"] = BASE_PATH  # the kernel gives init no PATH
    if pid1:
        system.mount("proc", "proc", "/proc")
    settings = cmdline.load()
    system.debug_enabled = settings.debug
    system.log(f"sci {VERSION} as pid {os.getpid()}")
    remount = ["/"]
    if settings.overlay_root and pid1:
        remount.insert(0, system.setup_overlay(settings.overlay_root))
        system.log(f"overlay root on {settings.overlay_root}")
    if pid1:
        system.mount_basic()
    waiter: Reaper | ThreadWaiter = Reaper() if pid1 else ThreadWaiter()
    if settings.session_mode:
        from . import session, transport
        env, winsize = settings.base_env(), (settings.rows, settings.cols)

        def serve(rfd: int, wfd: int) -> str:
            return session.serve(rfd, wfd, waiter, env, winsize)

        if settings.transport == "vsock":
            transport.serve_vsock(settings.vsock_port, serve, settings.resume)
        else:
            transport.serve_virtio_serial(settings.port_prefix, serve, settings.resume)
    else:
        _serial(settings, waiter)
    return settings.reset, remount


def _serial(settings: Settings, waiter: Reaper | ThreadWaiter) -> None:
    """Compatibility: ``run=CMD`` runs on the console; its exit status is logged, not returned."""
    import subprocess

    from . import system
    argv = settings.command()
    system.set_console_size(0, settings.rows, settings.cols)
    try:
        proc = subprocess.Popen(argv, env=settings.base_env(), cwd="/")
    except OSError as exc:
        raise system.SciError(f"{argv[0]}: {exc.strerror}") from exc
    fd = waiter.watch(proc.pid)
    os.read(fd, 1)
    os.close(fd)
    status = waiter.status(proc.pid)
    proc.returncode = status
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
    system.log(f"{argv[0]}: exit status {code}")


if __name__ == "__main__":
    sys.exit(main())
