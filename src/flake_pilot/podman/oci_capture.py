"""Record how to enter a resume instance through its OCI runtime (see oci.py); runs when an
instance is created or restarted, or when a call finds its record out of date.

Where podman keeps things is read from the instance's own conmon (its command line names the
runtime, the bundle and the runtime's global options; its environment the runtime dir) and
verified against the runtime's state (``ROOT/CID/state.json`` names the same init process).
The process spec is the one podman itself writes for ``podman exec`` of this container: one
exec of the container's catatonit, whose spec file is read from the exec session while it
runs, then ended. Whatever cannot be recorded leaves a record without an entry: calls of this
instance then take podman's path (without trying again until the instance changes).
"""

import json
import marshal
import os
import shutil
import signal
import time
from typing import Any

from ..launch import debug, runner
from ..launch.podman import argv, instance, oci

CAPTURE_DEADLINE_S = 20.0
CAPTURE_VAR = "FLAKE_PILOT_CAPTURE"
SUPPORTED_RUNTIMES = ("runc",)  # the runtime whose exec/--process/--log this module relies on


class Unusable(Exception):
    """This instance cannot be entered directly (the message says why)."""


def ensure(prefix: list[str], env: dict[str, str], cid: str, paths: instance.Paths, wanted: str, key: str) -> None:
    """Record the instance unless a current record exists (call with the instance lock held)."""
    fd, rec, verdict = oci.open_record(paths.stem, wanted, key)
    if fd >= 0:
        os.close(fd)
    if verdict == oci.STALE:
        record(prefix, env, cid, paths, wanted, key, rec)


def record(
    prefix: list[str],
    env: dict[str, str],
    cid: str,
    paths: instance.Paths,
    wanted: str,
    key: str,
    previous: dict[str, object] | None = None,
) -> None:
    """Write ``<instance>.oci`` for container *cid*; never fails the launch."""
    rec: dict[str, object] = {"format": oci.FORMAT, "cid": cid, "spec": wanted, "engine": key}
    reuse = None  # a restarted container keeps its configuration, so podman's spec for it too
    same = {"format": oci.FORMAT, "cid": cid, "spec": wanted, "engine": key}
    if previous and all(previous.get(name) == value for name, value in same.items()):
        reuse = previous.get("process")
    try:
        rec.update(_capture(prefix, env, cid, paths, reuse if isinstance(reuse, str) else None))
    except Unusable as exc:
        debug.log(f"resume calls of {cid[:12]} go through podman: {exc}")
        rec.update(process=None, why=str(exc))
    except Exception as exc:  # noqa: BLE001 - recording is an optimisation: never a failed launch
        debug.log(f"resume calls of {cid[:12]} go through podman: {type(exc).__name__}: {exc}")
        return
    _write(oci.record_path(paths.stem), marshal.dumps(rec))


def _write(path: str, data: bytes) -> None:
    from ..launch import statedir

    try:  # temp + rename, a damaged file or empty dir in the way replaced; a full disk: no record
        statedir.write_file(path, data)
    except OSError as exc:
        debug.log(f"{path}: not recorded: {exc.strerror}")


def _capture(
    prefix: list[str], env: dict[str, str], cid: str, paths: instance.Paths, reuse: str | None
) -> dict[str, object]:
    conmon = instance.conmon_pid(paths)
    if not instance.runs(conmon, cid):
        raise Unusable("its conmon is not running")
    init = instance.container_init(conmon)
    if init is None:
        raise Unusable("its init process is not running")
    found: dict[str, object] = {"init": (init, oci.started(init))}
    if found["init"][1] < 0:  # type: ignore[index]
        raise Unusable("its init process is not running")
    options = _conmon_options(conmon)
    runtime = options.get("-r", [""])[0]
    if os.path.basename(runtime) not in SUPPORTED_RUNTIMES or not os.path.isabs(runtime):
        raise Unusable(f"runtime {runtime or '?'} is not entered directly (only {', '.join(SUPPORTED_RUNTIMES)})")
    global_args, root = _runtime_args(options.get("--runtime-arg", []))
    roots = [root] if root else _default_roots(conmon)
    root = next((r for r in roots if _state_names(r, cid, found["init"])), "")  # type: ignore[arg-type]
    if not root:
        raise Unusable(f"no runtime state for it under {' or '.join(roots)}")
    found.update(runtime=runtime, root=root, runtime_args=global_args, holder=None, nsenter=None)
    found["global"] = tuple(global_args)
    del found["runtime_args"]
    if os.getuid() != 0:  # rootless: the runtime runs in podman's user and mount namespaces
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise Unusable("nsenter (util-linux) not found")
        found.update(holder=(conmon, oci.started(conmon)), nsenter=nsenter)
    bundle = options.get("-b", [""])[0]
    found["process"] = reuse if reuse is not None else _exec_spec(prefix, env, cid, bundle)
    found["why"] = ""
    return found


def _conmon_options(pid: int) -> dict[str, list[str]]:
    """conmon's options: ``-r RUNTIME``, ``-b BUNDLE``, ``--runtime-arg X`` (or ``=X``)..."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        words = handle.read().decode(errors="surrogateescape").split("\0")
    options: dict[str, list[str]] = {}
    i = 1
    while i < len(words):
        word = words[i]
        if word.startswith("--runtime-arg="):
            options.setdefault("--runtime-arg", []).append(word.split("=", 1)[1])
        elif word in ("-r", "-b", "--runtime-arg") and i + 1 < len(words):
            options.setdefault(word, []).append(words[i + 1])
            i += 1
        i += 1
    return options


def _runtime_args(values: list[str]) -> tuple[list[str], str]:
    """The runtime's global options podman passes (minus its log file: calls log to a memfd),
    and ``--root`` when given there."""
    keep: list[str] = []
    root = ""
    i = 0
    while i < len(values):
        value = values[i]
        name, eq, inline = value.partition("=")
        if name in ("--log", "--log-format", "--root"):
            arg = inline if eq else (values[i + 1] if i + 1 < len(values) else "")
            i += 1 if eq else 2
            if name == "--root":
                root = arg
            continue
        keep.append(value)
        i += 1
    return keep, root


def _default_roots(conmon: int) -> list[str]:
    """runc's default state roots: $XDG_RUNTIME_DIR/runc (podman sets it for rootless), /run/runc."""
    with open(f"/proc/{conmon}/environ", "rb") as handle:
        variables = handle.read().split(b"\0")
    xdg = next((v[len(b"XDG_RUNTIME_DIR=") :] for v in variables if v.startswith(b"XDG_RUNTIME_DIR=")), b"")
    roots = [os.fsdecode(xdg) + "/runc"] if xdg.startswith(b"/") else []
    return [*roots, "/run/runc"]


def _state_names(root: str, cid: str, init: tuple[int, int]) -> bool:
    try:
        with open(os.path.join(root, cid, "state.json"), "rb") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return False
    return state.get("init_process_pid") == init[0] and str(state.get("init_process_start")) == str(init[1])


def _exec_spec(prefix: list[str], env: dict[str, str], cid: str, bundle: str) -> str:
    """The process spec podman writes for ``podman exec`` of this container, as the JSON object
    body after ``{"args":[...],"terminal":...,`` (oci.command splices those in per call)."""
    token = f"{os.getpid()}-{os.urandom(6).hex()}"
    cmd = [*prefix, "exec", "-e", f"{CAPTURE_VAR}={token}", cid, *argv.KEEPALIVE]
    child = runner.spawn(cmd, env, stdin_null=True, quiet=True)
    try:
        spec, pid = _find_session(bundle, token, child)
        umask = _umask(pid)
        _end(pid)
    finally:
        _reap(child)
    env_list = [e for e in spec.get("env", []) if not e.startswith(CAPTURE_VAR + "=")]
    spec["env"] = env_list
    user = spec.setdefault("user", {})
    if "umask" not in user and umask is not None:
        user["umask"] = umask  # podman's exec leaves it to conmon's (0022): say so explicitly
    for name in ("args", "terminal", "consoleSize"):
        spec.pop(name, None)
    body = json.dumps(spec, separators=(",", ":"))
    assert body.startswith("{") and len(body) > 2
    return body[1:]


def _find_session(bundle: str, token: str, child: int) -> tuple[dict[str, Any], int]:
    """Our exec session in the bundle (``SESSION/exec-process-*`` with our token, ``exec_pid``)."""
    needle = f"{CAPTURE_VAR}={token}"
    deadline = time.monotonic() + CAPTURE_DEADLINE_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            raise Unusable(f"podman exec ended early (exit status {os.waitstatus_to_exitcode(status)})")
        for session in _sessions(bundle):
            spec = _spec_with(session, needle)
            if spec is None:
                continue
            try:
                with open(os.path.join(session, "exec_pid"), "rb") as handle:
                    pid = int(handle.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and needle.encode() in _environ(pid):
                return spec, pid
        time.sleep(0.01)
    raise Unusable("podman exec did not start within the deadline")


def _sessions(bundle: str) -> list[str]:
    try:
        entries = os.listdir(bundle)
    except OSError as exc:
        raise Unusable(f"{bundle}: {exc.strerror}") from None
    return [os.path.join(bundle, e) for e in entries if len(e) == 64 and os.path.isdir(os.path.join(bundle, e))]


def _spec_with(session: str, needle: str) -> dict[str, Any] | None:
    try:
        names = [n for n in os.listdir(session) if n.startswith("exec-process-")]
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(session, name), "rb") as handle:
                spec = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(spec, dict) and needle in spec.get("env", []):
            return spec
    return None


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _umask(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reap(child: int) -> None:
    """Wait for the capturing ``podman exec`` (it removes its session once the process ended)."""
    deadline = time.monotonic() + CAPTURE_DEADLINE_S
    try:
        while os.waitpid(child, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                return
            time.sleep(0.01)
    except ChildProcessError:
        pass


def _end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
