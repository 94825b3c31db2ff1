"""Resume calls through the OCI runtime (launch/podman/oci.py): what the app sees is what ``podman exec``
gives it, rootful and rootless; every doubt about the recorded entry falls back to podman's path
and renews the record, never a wrong result."""

from __future__ import annotations

import json
import marshal
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flake_pilot.launch.podman import oci
from podman_scopes import Scope, prepare_user, remove_user_scope, root_scope, user_scope

# what an app can see of its isolation: identity, capabilities, seccomp, limits, namespaces,
# cgroup, environment, working directory, hostname, umask and open descriptors
PROBE = r"""
echo "id=$(id)"
echo "groups=$(id -G)"
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp|Seccomp_filters|Umask):' /proc/self/status
echo "cwd=$(pwd)"
echo "hostname=$(hostname)"
echo "limits=$(ulimit -n) $(ulimit -u)"
echo "oom=$(cat /proc/self/oom_score_adj)"
echo "label=$(cat /proc/self/attr/current 2>/dev/null)"
for ns in mnt pid net uts ipc user cgroup; do echo "ns $ns=$(readlink /proc/self/ns/$ns)"; done
sed 's/^/cgroup /' /proc/self/cgroup
env | sort | sed 's/^/env /'
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
"""


@pytest.fixture(params=["root", "user"])
def any_scope(request: pytest.FixtureRequest, tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    if request.param == "root":
        s = root_scope(tmp_path, system_storage)
        yield s
        s.cleanup()
    else:
        s = user_scope(*prepare_user(system_storage))
        yield s
        remove_user_scope(s)


@pytest.fixture
def scope(tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = root_scope(tmp_path, system_storage)
    yield s
    s.cleanup()


DEBUG = {"PILOT_DEBUG": "1"}


def call(scope: Scope, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Run the app with debugging on; returns the result and which path ran it."""
    done = scope.run("app", *args, env={**DEBUG, **(env or {})})
    runtime = "runc exec in" in done.stderr
    podman = "resume: podman exec" in done.stderr
    assert runtime != podman, done.stderr
    return done, "runtime" if runtime else "podman"


def captured(done: subprocess.CompletedProcess) -> bool:
    """The call recorded the runtime entry anew, with one ``podman exec`` reading podman's spec."""
    return "FLAKE_PILOT_CAPTURE=" in done.stderr


def renewed(done: subprocess.CompletedProcess) -> bool:
    """The call found the record out of date and wrote it again (podman's spec for the same
    container is taken over; its debug timing line then has a ``record`` phase)."""
    return " record=" in done.stderr


def record_file(scope: Scope) -> Path:
    files = list(scope.ids_dir.glob("*/app.oci"))
    assert len(files) == 1, files
    return files[0]


def read_record(scope: Scope) -> dict:
    return marshal.loads(record_file(scope).read_bytes())


def tamper(scope: Scope, **changes: object) -> None:
    path = record_file(scope)
    rec = marshal.loads(path.read_bytes())
    rec.update(changes)
    path.write_bytes(marshal.dumps(rec))  # same file, owner and mode


def cid(scope: Scope) -> str:
    return scope.cid_files()[0].read_text().split()[0]


def init_pid(scope: Scope, container: str) -> int:
    return int(scope.podman("inspect", "--format", "{{.State.Pid}}", container, check=True).stdout)


def first_call(scope: Scope) -> None:
    scope.register("app", resume=True)
    done, _ = call(scope, "-c", "true")
    assert done.returncode == 0 and captured(done), done.stderr
    done, path = call(scope, "-c", "echo warm")
    assert (done.returncode, done.stdout, path) == (0, "warm\n", "runtime"), done.stderr
    assert not captured(done)


def test_the_app_sees_what_podman_exec_gives_it(any_scope: Scope) -> None:
    """The same probe through the launcher (runtime path) and through plain ``podman exec`` of
    the same container reads the same, line for line."""
    first_call(any_scope)
    direct, path = call(any_scope, "-c", PROBE)
    assert (direct.returncode, path) == (0, "runtime"), direct.stderr
    engine = any_scope.podman("exec", cid(any_scope), "/bin/sh", "-c", PROBE)
    assert engine.returncode == 0, engine.stderr
    assert direct.stdout.splitlines() == engine.stdout.splitlines()
    lines = direct.stdout.splitlines()
    assert any(line.startswith("CapEff:") for line in lines) and any(line.startswith("ns mnt=mnt:[") for line in lines)
    assert any(line.startswith("cgroup ") for line in lines) and any(line.startswith("env PATH=") for line in lines)
    if any_scope.kind == "user":
        record = read_record(any_scope)
        assert record["holder"] is not None and record["nsenter"]


def test_stopped_instance_is_restarted_through_podman(any_scope: Scope) -> None:
    first_call(any_scope)
    container = cid(any_scope)
    assert any_scope.podman("stop", "-t", "0", container).returncode == 0
    done, _ = call(any_scope, "-c", "echo again")
    assert (done.returncode, done.stdout) == (0, "again\n"), done.stderr
    assert "podman start" in done.stderr and cid(any_scope) == container  # restarted, not replaced
    assert read_record(any_scope)["init"][0] == init_pid(any_scope, container)
    assert call(any_scope, "-c", "true")[1] == "runtime"


def test_removed_instance_is_created_again(scope: Scope) -> None:
    first_call(scope)
    old = cid(scope)
    assert scope.podman("rm", "-f", "-t", "0", old).returncode == 0
    done, _ = call(scope, "-c", "echo fresh")
    assert (done.returncode, done.stdout) == (0, "fresh\n"), done.stderr
    assert cid(scope) != old and read_record(scope)["cid"] == cid(scope)
    assert call(scope, "-c", "true")[1] == "runtime"


def test_missing_runtime_state_falls_back(scope: Scope, tmp_path: Path) -> None:
    first_call(scope)
    real = read_record(scope)["root"]
    tamper(scope, root=str(tmp_path / "no-runtime-state"))
    done, _ = call(scope, "-c", "echo ok")
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
    assert renewed(done) and read_record(scope)["root"] == real


def test_recorded_pid_reused_by_another_process(scope: Scope) -> None:
    """The recorded init PID now names another process: its start time differs, so the record is
    not trusted (and that process is left alone)."""
    first_call(scope)
    other = subprocess.Popen(["sleep", "120"])
    try:
        init = read_record(scope)["init"]
        tamper(scope, init=(other.pid, init[1]))
        done, _ = call(scope, "-c", "echo ok")
        assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
        assert renewed(done) and read_record(scope)["init"] == init
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_changed_registration_takes_podmans_path(scope: Scope) -> None:
    first_call(scope)
    old = cid(scope)
    scope.register("app", resume=True, opts=["-e V=two"])
    done, _ = call(scope, "-c", 'echo "$V"')
    assert (done.returncode, done.stdout) == (0, "two\n"), done.stderr
    assert cid(scope) != old and scope.podman("container", "exists", old).returncode != 0
    assert call(scope, "-c", "true")[1] == "runtime"


def test_running_direct_call_keeps_the_instance_on_a_registration_change(scope: Scope) -> None:
    first_call(scope)
    old = cid(scope)
    busy = scope.popen("app", "-c", "echo ready; read line; echo done", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert busy.stdout is not None and busy.stdout.readline() == b"ready\n"
    scope.register("app", resume=True, opts=["-e V=two"])
    done, path = call(scope, "-c", "cat /etc/hostname")
    assert (done.returncode, path) == (0, "podman"), done.stderr  # the old instance, through podman
    assert done.stdout.strip() == old[:12]
    busy.communicate(b"go\n", timeout=60)
    assert busy.returncode == 0
    done, _ = call(scope, "-c", 'echo "$V"')
    assert (done.returncode, done.stdout) == (0, "two\n") and cid(scope) != old, done.stderr


def test_changed_podman_settings_fall_back(scope: Scope, tmp_path: Path) -> None:
    first_call(scope)
    conf = tmp_path / "containers.conf"
    shutil.copy(os.environ["CONTAINERS_CONF"], conf)
    done, _ = call(scope, "-c", "echo ok", env={"CONTAINERS_CONF": str(conf)})
    assert (done.returncode, done.stdout) == (0, "ok\n") and captured(done), done.stderr


@pytest.mark.parametrize("damage", ["garbage", "older", "missing"])
def test_damaged_older_or_missing_record_falls_back(scope: Scope, damage: str) -> None:
    first_call(scope)
    if damage == "garbage":
        record_file(scope).write_bytes(b"\x00garbage")
    elif damage == "older":
        tamper(scope, format=0)
    else:
        record_file(scope).unlink()  # an instance created before calls went through the runtime
    done, _ = call(scope, "-c", "echo ok")
    assert (done.returncode, done.stdout) == (0, "ok\n") and captured(done), done.stderr  # not taken over
    assert read_record(scope)["format"] == oci.FORMAT


def test_instance_without_entry_stays_on_podman_without_recapture(scope: Scope) -> None:
    """A record saying "not through the runtime" (e.g. another runtime) is trusted for this
    container: calls take podman's path and do not try again each time."""
    first_call(scope)
    tamper(scope, process=None, why="test")
    done, path = call(scope, "-c", "echo ok")
    assert (done.returncode, done.stdout, path) == (0, "ok\n", "podman"), done.stderr
    assert not captured(done)


def test_podman_stop_ends_a_direct_call(any_scope: Scope) -> None:
    first_call(any_scope)
    proc = any_scope.popen(
        "app", "-c", "echo ready; sleep 60; echo not-stopped", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    line = b""
    while b"ready\n" not in line and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line += os.read(proc.stdout.fileno(), 64)
    assert b"ready\n" in line
    assert any_scope.podman("stop", "-t", "0", cid(any_scope)).returncode == 0
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL and b"not-stopped" not in out


# the per-call pieces, without an engine


@pytest.mark.parametrize(
    "args", [[], ["plain"], ['q"uote', "back\\slash"], ["tab\tnl\ncr\r\x01\x1f"], ["ünïcödé €", "漢字", "\U0001f600"]]
)
def test_args_json_is_what_json_reads(args: list[str]) -> None:
    text = oci.args_json(args)
    assert text is not None and json.loads(text) == args


def test_args_json_leaves_non_utf8_arguments_to_podman() -> None:
    assert oci.args_json(["ok", os.fsdecode(b"\xff\xfe")]) is None


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("t")
    os.write(fd, data)
    return fd


@pytest.mark.parametrize(
    ("code", "log", "alive", "expected"),
    [
        (0, b"", True, 0),
        (255, b"", True, 255),  # the app's own 255: nothing logged
        (255, b'{"level":"info","msg":"x"}\n', True, 255),
        (255, b'{"level":"error","msg":"exec: \\"/etc/passwd\\": permission denied"}\n', True, 126),
        (255, b'{"level":"error","msg":"exec: \\"/x\\": stat /x: no such file or directory"}\n', True, 127),
        (255, b'{"level":"error","msg":"exec: \\"x\\": executable file not found in $PATH"}\n', True, 127),
        (255, b'{"level":"error","msg":"cannot exec in a stopped container"}\n', True, 125),
        (255, b'{"level":"error","msg":"stat /run/runc/x: no such file or directory"}\n', False, 125),
    ],
)
def test_runtime_failures_map_like_podmans(code: int, log: bytes, alive: bool, expected: int) -> None:
    fd = _memfd(log)
    try:
        assert oci.outcome(code, fd, alive) == expected
    finally:
        os.close(fd)
