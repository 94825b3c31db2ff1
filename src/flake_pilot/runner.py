"""The one subprocess wrapper: argv lists only, never a shell.

Every engine command line goes through here so ``PILOT_DEBUG=1`` shows it before it runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import NoReturn

from . import debug
from .errors import EngineError


def which(program: str) -> str:
    """Absolute path of *program* (PATH lookup), or EngineError naming it."""
    if "/" in program:
        if os.access(program, os.X_OK):
            return program
        raise EngineError(f"{program}: not found or not executable")
    found = shutil.which(program)
    if not found:
        raise EngineError(f"{program}: not found in PATH ({os.environ.get('PATH', '')})")
    return found


def _env(overrides: Mapping[str, str] | None) -> dict[str, str] | None:
    if not overrides:
        return None
    env = dict(os.environ)
    env.update(overrides)
    return env


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    stdin: int | None = subprocess.DEVNULL,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv; with *check*, a non-zero exit raises EngineError with the first stderr line."""
    argv = list(argv)
    debug.log("+ " + shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            env=_env(env),
            stdin=None if input_bytes is not None else stdin,
            input=input_bytes,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{shlex.join(argv[:3])}...: no answer within {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise EngineError(f"{shlex.join(argv[:3])} failed: {first_line(proc.stderr)}", proc.returncode)
    return proc


def first_line(data: bytes | None) -> str:
    """The most telling line of an engine's stderr (podman prefixes errors with 'Error:')."""
    text = (data or b"").decode(errors="replace").strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line
    return lines[-1] if lines else "(no error output)"


def exec_replace(argv: Sequence[str], env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process with argv: exit status, streams, signals and TTY stay native."""
    argv = list(argv)
    debug.log("exec " + shlex.join(argv))
    try:
        if env is None:
            os.execv(argv[0], argv)
        os.execve(argv[0], argv, dict(env))
    except OSError as exc:
        raise EngineError(f"{argv[0]}: cannot execute: {exc.strerror}") from exc
