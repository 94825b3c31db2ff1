"""Start programs without the subprocess module (it pulls in locale, re, selectors, ...: about
0.3 s more start-up under TCG). fork + execve; exec errors come back through a CLOEXEC pipe."""

from __future__ import annotations

import fcntl
import os

TIOCSCTTY = 0x540E  # no termios module in python3-minimal; generic Linux value (x86, arm)


def find_program(name: str, path: str) -> str:
    if "/" in name:
        return name
    for d in path.split(":"):
        cand = f"{d or '.'}/{name}"
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand
    raise FileNotFoundError(2, "No such file or directory", name)


def spawn(
    argv: list[str],
    env: dict[str, str],
    *,
    cwd: str = "/",
    stdin: int = -1,
    stdout: int = -1,
    stderr: int = -1,
    new_session: bool = True,
    controlling_tty: bool = False,
) -> int:
    """Start *argv* (PATH from *env*) with the given fds as 0/1/2 (-1: inherit); returns the pid.
    OSError (with filename = program or cwd) when it cannot start; the child is then reaped."""
    program = find_program(argv[0], env.get("PATH", "/usr/bin:/bin"))
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only os-level calls, then exec
        step = "exec"
        try:
            if new_session:
                os.setsid()
            for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                if fd >= 0 and fd != target:
                    os.dup2(fd, target)
                elif fd == target:
                    os.set_inheritable(fd, True)
            if controlling_tty:
                fcntl.ioctl(0, TIOCSCTTY, 0)
            step = "chdir"
            os.chdir(cwd)
            step = "exec"
            os.execve(program, argv, env)
        except OSError as exc:
            os.write(err_w, f"{step}:{exc.errno}".encode())
        finally:
            os._exit(127)
    os.close(err_w)
    try:
        data = os.read(err_r, 64)
    finally:
        os.close(err_r)
    if data:
        os.waitpid(pid, 0)
        step, _, num = data.decode().partition(":")
        errno_ = int(num)
        raise OSError(errno_, os.strerror(errno_), cwd if step == "chdir" else argv[0])
    return pid


def run(argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    """Run a tool to its end: (exit status, its stdout+stderr). Only before a reaper runs."""
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = spawn(argv, env, stdin=null, stdout=out_w, stderr=out_w, new_session=False)
    finally:
        os.close(out_w)
        os.close(null)
    chunks = []
    while data := os.read(out_r, 65536):
        chunks.append(data)
    os.close(out_r)
    _, status = os.waitpid(pid, 0)
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
    return code, b"".join(chunks).decode(errors="replace")
