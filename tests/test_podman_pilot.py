"""podman-pilot features and bad input against real podman (root scope unless noted)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podman_scopes import LAUNCHER, Scope, prepare_user, remove_user_scope, root_scope, user_scope
from registry import Registry


@pytest.fixture
def scope(tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = root_scope(tmp_path, system_storage)
    yield s
    s.cleanup()


@pytest.fixture
def uscope(system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = user_scope(*prepare_user(system_storage))
    yield s
    remove_user_scope(s)


def one_error_line(done: subprocess.CompletedProcess, app: str = "app") -> str:
    """A launcher failure: exit 125, exactly one line on stderr naming the app, no traceback."""
    assert done.returncode == 125, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{app}: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def hostname(scope: Scope, app: str, *args: str) -> str:
    done = scope.run(app, *args, "-c", "cat /etc/hostname")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_debug_prints_every_engine_command_and_timings(scope: Scope) -> None:
    scope.register("app", resume=True)
    done = scope.run("app", "-c", "echo hi", env={"PILOT_DEBUG": "1"})
    assert done.returncode == 0 and done.stdout == "hi\n", done.stderr
    assert "+ " in done.stderr and " run -d --init" in done.stderr  # the instance creation
    assert "spawn " in done.stderr and " exec -d --process " in done.stderr  # the app's own call (the runtime)
    assert "timing: plan=" in done.stderr


def test_named_instances_are_separate_and_reused(scope: Scope) -> None:
    scope.register("app", resume=True)
    first_a = hostname(scope, "app", "@a")
    assert hostname(scope, "app", "@b") != first_a
    assert hostname(scope, "app", "@a") == first_a
    assert sorted(p.name for p in scope.cid_files()) == ["app@a.cid", "app@b.cid"]


def test_named_oneshot_instance_leaves_no_state(scope: Scope) -> None:
    scope.register("app")
    done = scope.run("app", "@job1", "-c", f"ls {scope.ids_dir}/*/ 2>/dev/null; echo ran")
    assert done.returncode == 0 and done.stdout.endswith("ran\n"), done.stderr
    assert scope.cid_files() == []


@pytest.mark.parametrize("bad", ["@a/b", "@..", "@", "@../x", "@a b", "@" + "x" * 64])
def test_bad_instance_name_rejected(scope: Scope, bad: str) -> None:
    scope.register("app", resume=True)
    line = one_error_line(scope.run("app", bad, "-c", "true"))
    assert "instance name" in line
    assert scope.state_files() == []


def test_unknown_option_rejected_and_literals_pass(scope: Scope) -> None:
    scope.register("app")
    assert "%bogus" in one_error_line(scope.run("app", "%bogus", "-c", "true"))
    done = scope.run("app", "-c", 'echo "$1 $2"', "x", "%%s", "@@home")
    assert (done.returncode, done.stdout) == (0, "%s @home\n"), done.stderr


def test_var_expansion_in_podman_options(scope: Scope) -> None:
    scope.register("app", opts=["-e GREETING=%FLAKE_T_WORD-%FLAKE_T_OTHER", "--label t=%FLAKE_T_WORD"])
    env = {"FLAKE_T_WORD": "hello world", "FLAKE_T_OTHER": "%FLAKE_T_WORD"}
    done = scope.run("app", "-c", 'echo "$GREETING"', env=env)
    # one pass: a value that looks like %VAR is inserted literally, never expanded again
    assert (done.returncode, done.stdout) == (0, "hello world-%FLAKE_T_WORD\n"), done.stderr


def test_unset_var_names_file_and_key(scope: Scope) -> None:
    scope.register("app", opts=["-e X=%FLAKE_T_UNSET"])
    line = one_error_line(scope.run("app", "-c", "true"))
    assert str(scope.flakes_dir / "app.yaml") in line and "runtime.podman" in line and "FLAKE_T_UNSET" in line


MISSING = "/nonexistent-flake-path:/mnt"


@pytest.mark.parametrize("form", [[f"--volume {MISSING}"], [f"-v={MISSING}"], [f"--volume={MISSING}"]])
def test_ignore_missing_volume_path(scope: Scope, tmp_path: Path, form: list[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("present\n")
    scope.register("app", opts=[*form, f"--volume {tmp_path / 'data'}:/data"])
    without = scope.run("app", "-c", "cat /data/f")
    assert without.returncode == 125 and "nonexistent-flake-path" in without.stderr
    script = "cat /data/f; test -e /mnt/x || echo dropped"
    done = scope.run("app", "%ignore_missing_volume_path", "-c", script)
    assert (done.returncode, done.stdout) == (0, "present\ndropped\n"), done.stderr


def test_concurrent_first_resume_calls_create_one_instance(scope: Scope) -> None:
    label = f"flaketest={uuid.uuid4().hex}"
    scope.register("app", resume=True, opts=[f"--label {label}"])
    procs = [
        scope.popen(
            "app",
            "-c",
            "cat /etc/hostname",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    assert len({out for out, _, _ in results}) == 1
    listed = scope.podman("ps", "-a", "-q", "--filter", f"label={label}", check=True).stdout.split()
    assert len(listed) == 1


def test_stale_state_never_blocks_a_launch(scope: Scope) -> None:
    scope.register("app", resume=True)
    state = scope.ids_dir / str(os.getuid())
    state.mkdir(parents=True, mode=0o700)
    (state / "app.cid").write_text("f" * 64 + "\n")  # left by a crash: no such container
    (state / "app.pid").write_text("1\n")  # a live pid that is not its conmon
    first = hostname(scope, "app")
    assert not first.startswith("ffff")
    cid = (state / "app.cid").read_text().strip()
    assert cid.startswith(first)
    scope.podman("stop", "-t", "0", cid, check=True)  # stopped: restarted, not replaced
    assert hostname(scope, "app") == first
    scope.podman("rm", "-f", "-t", "0", cid, check=True)  # removed behind our back: recreated
    assert hostname(scope, "app") not in ("", first)


def test_oneshot_state_is_garbage_collected(scope: Scope) -> None:
    scope.register("app")
    state = scope.ids_dir / str(os.getuid())
    state.mkdir(parents=True, mode=0o700)
    stale = state / "app@+0123456789ab.cid"
    stale.write_text("e" * 64 + "\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    young = state / "other@+ba9876543210.cid"  # maybe a launch in progress: kept
    young.write_text("d" * 64 + "\n")
    done = scope.run("app", "-c", "echo ok")
    assert done.stdout == "ok\n", done.stderr
    assert not stale.exists() and young.exists()
    assert [p.name for p in scope.cid_files()] == [young.name]


def test_missing_podman_binary(scope: Scope) -> None:
    scope.register("app")
    line = one_error_line(scope.run("app", "-c", "true", env={"PATH": str(scope.bin_dir)}))
    assert "podman" in line and "not found" in line


def test_remove_option_deletes_the_resume_instance(scope: Scope) -> None:
    scope.register("app", resume=True)
    host = hostname(scope, "app")
    done = scope.run("app", "%remove", "-c", "exit 5")
    assert done.returncode == 5, done.stderr
    assert scope.cid_files() == []
    assert scope.podman("container", "exists", host).returncode != 0


def test_attach_mode_keeps_the_container(scope: Scope) -> None:
    scope.register("app", attach=True)
    first = scope.run("app", "-c", "cat /etc/hostname; echo err >&2; exit 6")
    assert (first.returncode, first.stderr) == (6, "err\n")
    again = scope.run("app", "ignored", "args")  # the original re-runs the command baked in
    assert (again.returncode, again.stdout) == (6, first.stdout), again.stderr
    assert len(scope.cid_files()) == 1


def test_registration_change_is_seen_at_once(scope: Scope) -> None:
    scope.register("app", opts=["-e V=one"])
    assert scope.run("app", "-c", 'echo "$V"').stdout == "one\n"
    dropins = scope.flakes_dir / "app.d"
    dropins.mkdir()
    (dropins / "10-v.yaml").write_text("container:\n  runtime:\n    podman: ['-e V=two']\n")
    assert scope.run("app", "-c", 'echo "$V"').stdout == "two\n"
    (dropins / "10-v.yaml").write_text("container:\n  runtime:\n    podman: ['-e V=three']\n")
    assert scope.run("app", "-c", 'echo "$V"').stdout == "three\n"


def test_malformed_registration(scope: Scope) -> None:
    scope.register("app")
    (scope.flakes_dir / "app.yaml").write_text("container: [unclosed\n")
    line = one_error_line(scope.run("app"))
    assert str(scope.flakes_dir / "app.yaml") in line


def test_unregistered_app_and_direct_call(scope: Scope) -> None:
    scope.register("app")
    (scope.flakes_dir / "app.yaml").unlink()
    assert "no flake registration" in one_error_line(scope.run("app"))
    direct = subprocess.run([str(LAUNCHER)], env=scope.env, capture_output=True, text=True, timeout=60)
    assert "symlink" in one_error_line(direct, "podman-pilot")


def test_user_flake_runs_rootless_with_private_state(uscope: Scope) -> None:
    uscope.register("app", resume=True)
    done = uscope.run("app", "-c", "id -u")
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr  # root in the user namespace
    [cid_file] = uscope.cid_files()
    assert cid_file.parent.name == str(uscope.uid)
    assert (cid_file.parent.stat().st_mode & 0o777, cid_file.parent.stat().st_uid) == (0o700, uscope.uid)
    running = uscope.podman("ps", "-q", "--no-trunc", check=True).stdout.split()
    assert cid_file.read_text().strip() in running


def test_ordinary_user_calling_a_system_flake_gets_a_clear_error(uscope: Scope) -> None:
    sysflakes = uscope.root / "sysflakes"
    system = Scope("root", uscope.root, sysflakes, uscope.ids_dir, uscope.bin_dir, uscope.storage, uscope.env)
    system.register("sysapp")
    done = uscope.run("sysapp", "-c", "true")
    line = one_error_line(done, "sysapp")
    assert "runas root" in line and "sudo sysapp" in line
    assert uscope.state_files() == []


def test_progress_shows_on_a_terminal_while_an_instance_starts(scope: Scope) -> None:
    from podman_scopes import run_in_pty

    scope.register("app", resume=True)
    code, out = run_in_pty(scope, "app", "%progress", "-c", "echo started")
    assert code == 0 and "starting app" in out and "started" in out, out


def test_flake_registered_by_flake_ctl_runs(scope: Scope, bb_image: str) -> None:
    from conftest import BIN

    app = scope.bin_dir / "viactl"
    argv = [
        str(BIN / "flake-ctl"),
        "podman",
        "register",
        "--container",
        bb_image,
        "--app",
        str(app),
        "--target",
        "/bin/sh",
        "--resume",
    ]
    done = subprocess.run(argv, env=scope.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ran = scope.run("viactl", "-c", "echo via-ctl; exit 2")
    assert (ran.returncode, ran.stdout) == (2, "via-ctl\n"), ran.stderr


def test_changed_registration_replaces_an_idle_resume_instance(scope: Scope) -> None:
    scope.register("app", resume=True, opts=["-e V=one"])
    first = hostname(scope, "app")
    assert scope.run("app", "-c", 'echo "$V"').stdout == "one\n"
    busy = scope.popen(
        "app",
        "-c",
        "echo ready; read line; echo done",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # an app still running in it
    assert busy.stdout is not None and busy.stdout.readline() == b"ready\n"
    scope.register("app", resume=True, opts=["-e V=two"])
    assert hostname(scope, "app") == first  # kept while an app runs in it
    busy.communicate(b"go\n", timeout=60)
    assert busy.returncode == 0
    done = scope.run("app", "-c", 'echo "$V"; cat /etc/hostname')
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "two", done.stderr
    assert done.stdout.split("\n")[1] != first
    assert scope.podman("container", "exists", first).returncode != 0  # the old one is gone


def test_missing_image_is_pulled_at_first_launch(
    scope: Scope,
    bb_image: str,
    local_registry: Registry,
) -> None:
    ref = local_registry.push(bb_image, f"flaketest/pull-{uuid.uuid4().hex[:8]}:latest", scope.storage)
    assert scope.podman("image", "exists", ref).returncode != 0
    scope.register("app", image=ref)
    try:
        done = scope.run("app", "-c", "echo pulled", env=local_registry.env())
        assert (done.returncode, done.stdout) == (0, "pulled\n"), done.stderr
        assert scope.podman("image", "exists", ref).returncode == 0
    finally:
        scope.podman("rmi", "-f", ref)


BACKGROUND_JOB = """
import os, subprocess, sys
fd = os.open(sys.argv[1], os.O_RDWR)  # a session leader opening a terminal: its controlling tty
for n in (0, 1, 2):
    os.dup2(fd, n)
job = subprocess.Popen(sys.argv[2:], process_group=0)  # `app &`: not the foreground group
sys.exit(job.wait())
"""


@pytest.mark.parametrize("resume", [False, True], ids=["oneshot", "resume"])
def test_background_job_does_not_read_the_terminal(scope: Scope, resume: bool) -> None:
    import select
    import sys

    scope.register("app", resume=resume)
    master, slave = os.openpty()
    shell = subprocess.Popen(
        [
            sys.executable,
            "-c",
            BACKGROUND_JOB,
            os.ttyname(slave),
            *scope.argv("app", "-c", "[ -t 0 ] && echo tty || echo no-tty; cat; echo end"),
        ],
        env=scope.env,
        start_new_session=True,
    )
    out = b""  # our slave fd stays open, so reading the master never fails early with EIO
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not (shell.poll() is not None and b"end" in out):
            if select.select([master], [], [], 0.2)[0]:
                out += os.read(master, 4096)
        assert shell.wait(timeout=30) == 0, out
    finally:
        if shell.poll() is None:
            shell.kill()
        os.close(slave)
        os.close(master)  # hang-up: whatever still reads the terminal ends
    assert out.replace(b"\r\n", b"\n") == b"no-tty\nend\n"
