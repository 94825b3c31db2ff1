"""Issue 7 part 1: concurrency against real podman (root scope) and flake-ctl registrations."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import BB_IMAGE, Prefix
from podman_scopes import Scope, root_scope
from reliability import record

N = 16


@pytest.fixture
def scope(tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = root_scope(tmp_path, system_storage)
    yield s
    s.cleanup()


def start_all(scope: Scope, app: str, script_of: list[str]) -> list[tuple[int, str, str]]:
    procs = [
        scope.popen(
            app,
            "-c",
            script,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in script_of
    ]
    return [_wait(p) for p in procs]


def _wait(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=240)
    return p.returncode, out, err


def labelled(scope: Scope, label: str) -> list[str]:
    return scope.podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label={label}", check=True).stdout.split()


def test_16_first_calls_of_a_resume_flake_share_one_instance(scope: Scope) -> None:
    with record("1", "podman resume: simultaneous first calls", count=N, concurrency=N) as rec:
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", resume=True, opts=[f"--label {label}"])
        t0 = time.monotonic()
        results = start_all(scope, "app", [f"echo call-{i}; cat /etc/hostname" for i in range(N)])
        wall = time.monotonic() - t0
        bad = [(i, r) for i, r in enumerate(results) if r[0] != 0 or not r[1].startswith(f"call-{i}\n")]
        assert not bad, bad[:3]
        hosts = {r[1].split("\n")[1] for r in results}
        assert len(hosts) == 1, hosts
        containers = labelled(scope, label)
        assert len(containers) == 1, containers
        assert containers[0].startswith(hosts.pop())
        assert [p.name for p in scope.cid_files()] == ["app.cid"]
        rec.detail = f"1 container, {N}/{N} correct outputs, {wall:.1f} s wall"


def test_16_oneshot_calls_are_independent_and_leave_nothing(scope: Scope) -> None:
    with record("1", "podman one-shot: simultaneous calls", count=N, concurrency=N) as rec:
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", opts=[f"--label {label}"])
        t0 = time.monotonic()
        results = start_all(scope, "app", [f"echo call-{i}; cat /etc/hostname; exit {i % 5}" for i in range(N)])
        wall = time.monotonic() - t0
        bad = [(i, r) for i, r in enumerate(results) if r[0] != i % 5 or not r[1].startswith(f"call-{i}\n")]
        assert not bad, bad[:3]
        hosts = {r[1].split("\n")[1] for r in results}
        assert len(hosts) == N, f"{len(hosts)} distinct containers for {N} calls"
        assert labelled(scope, label) == []  # all removed (--rm)
        assert scope.state_files() == [], scope.state_files()
        rec.detail = f"{N} distinct containers, {N}/{N} outputs and exit codes, 0 left over, {wall:.1f} s wall"


# -- flake-ctl register/remove --------------------------------------------------------------------


def ctl_all(prefix: Prefix, calls: list[list[str]]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda argv: prefix.ctl(*argv), calls))


def register_argv(prefix: Prefix, name: str, target: str = "/bin/sh") -> list[str]:
    return [
        "podman",
        "register",
        "--container",
        BB_IMAGE,
        "--app",
        str(prefix.bin_dir / name),
        "--target",
        target,
    ]


def state_of(prefix: Prefix, name: str) -> tuple[bool, bool]:
    """(config present, symlink present); a present config must parse to this app."""
    cfg = prefix.flakes_dir / f"{name}.yaml"
    link = prefix.bin_dir / name
    if cfg.exists():
        data = yaml.safe_load(cfg.read_text())
        assert data["container"]["host_app_path"] == str(link), data
    if link.is_symlink():
        assert os.readlink(link).endswith("podman-pilot")
    return cfg.exists(), link.is_symlink()


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flake-ctl: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_concurrent_register_and_remove_of_different_apps(prefix: Prefix, bb_image: str) -> None:
    k = 8
    with record("1", "flake-ctl: register 8 apps while removing 8 others", count=2 * k, concurrency=2 * k) as rec:
        for i in range(k):
            assert prefix.ctl(*register_argv(prefix, f"old{i}")).returncode == 0
        calls = [register_argv(prefix, f"new{i}", f"/bin/t{i}") for i in range(k)]
        calls += [["podman", "remove", "--app", str(prefix.bin_dir / f"old{i}")] for i in range(k)]
        results = ctl_all(prefix, calls)
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
        for i in range(k):
            assert state_of(prefix, f"new{i}") == (True, True)
            data = yaml.safe_load((prefix.flakes_dir / f"new{i}.yaml").read_text())
            assert data["container"]["target_app_path"] == f"/bin/t{i}"
            assert state_of(prefix, f"old{i}") == (False, False)
            assert not (prefix.flakes_dir / f"old{i}.d").exists()
        leftovers = [
            p.name
            for p in (*prefix.flakes_dir.iterdir(), *prefix.bin_dir.iterdir())
            if p.name.startswith(".") and p.name != ".flake-ctl.lock"
        ]
        assert leftovers == []
        rec.detail = f"{2 * k}/{2 * k} succeeded, every config+symlink consistent, no temp files"


def test_concurrent_register_of_the_same_app_one_wins(prefix: Prefix, bb_image: str) -> None:
    k = 8
    with record("1", "flake-ctl: same app registered 8 times at once", count=k, concurrency=k) as rec:
        results = ctl_all(prefix, [register_argv(prefix, "same", f"/bin/t{i}") for i in range(k)])
        winners = [i for i, r in enumerate(results) if r.returncode == 0]
        assert len(winners) == 1, [(r.returncode, r.stderr) for r in results]
        losers = [r for r in results if r.returncode != 0]
        assert all(r.returncode == 5 for r in losers), [(r.returncode, r.stderr) for r in losers]
        assert all("already" in one_line(r) for r in losers)
        assert state_of(prefix, "same") == (True, True)
        data = yaml.safe_load((prefix.flakes_dir / "same.yaml").read_text())
        assert data["container"]["target_app_path"] == f"/bin/t{winners[0]}"  # the winner's, whole
        rec.detail = "1 winner, 7 clean conflicts (exit 5, one line), config = the winner's"


def test_concurrent_remove_of_the_same_app_one_wins(prefix: Prefix, bb_image: str) -> None:
    k = 8
    with record("1", "flake-ctl: same app removed 8 times at once", count=k, concurrency=k) as rec:
        assert prefix.ctl(*register_argv(prefix, "same")).returncode == 0
        results = ctl_all(prefix, [["podman", "remove", "--app", str(prefix.bin_dir / "same")]] * k)
        assert sum(r.returncode == 0 for r in results) == 1, [(r.returncode, r.stderr) for r in results]
        losers = [r for r in results if r.returncode != 0]
        assert all(r.returncode == 4 and "not registered" in one_line(r) for r in losers), [
            (r.returncode, r.stderr) for r in losers
        ]
        assert state_of(prefix, "same") == (False, False)
        rec.detail = "1 winner, 7 clean 'not registered' (exit 4), config and symlink both gone"


def test_register_racing_remove_of_the_same_app_stays_consistent(prefix: Prefix, bb_image: str) -> None:
    rounds = 6
    with record("1", "flake-ctl: register racing remove of the same app", count=rounds, concurrency=2) as rec:
        outcomes = []
        for _ in range(rounds):
            reg, rem = ctl_all(
                prefix,
                [register_argv(prefix, "race"), ["podman", "remove", "--app", str(prefix.bin_dir / "race")]],
            )
            assert reg.returncode == 0, reg.stderr
            assert rem.returncode in (0, 4), rem.stderr
            state = state_of(prefix, "race")
            assert state in ((True, True), (False, False)), state
            assert state == ((True, True) if rem.returncode == 4 else (False, False))
            outcomes.append("remove-first" if rem.returncode == 4 else "register-first")
            prefix.ctl("podman", "remove", "--force", "--app", str(prefix.bin_dir / "race"))
        rec.detail = (
            f"{rounds}/{rounds} consistent (both present or both absent); orders seen: "
            f"{outcomes.count('register-first')} register-first, "
            f"{outcomes.count('remove-first')} remove-first"
        )


@pytest.fixture
def uscope(system_storage: Path, bb_image: str) -> Iterator[Scope]:
    from podman_scopes import prepare_user, remove_user_scope, user_scope

    s = user_scope(*prepare_user(system_storage))
    yield s
    remove_user_scope(s)


def test_16_first_calls_of_a_rootless_resume_flake_share_one_instance(uscope: Scope) -> None:
    with record("1", "podman resume, rootless user: simultaneous first calls", count=N, concurrency=N) as rec:
        label = f"flake-rel={uuid.uuid4().hex}"
        uscope.register("app", resume=True, opts=[f"--label {label}"])
        t0 = time.monotonic()
        results = start_all(uscope, "app", [f"echo call-{i}; cat /etc/hostname" for i in range(N)])
        wall = time.monotonic() - t0
        bad = [(i, r) for i, r in enumerate(results) if r[0] != 0 or not r[1].startswith(f"call-{i}\n")]
        assert not bad, bad[:3]
        assert len({r[1].split("\n")[1] for r in results}) == 1
        assert len(labelled(uscope, label)) == 1
        assert [p.name for p in uscope.cid_files()] == ["app.cid"]
        rec.detail = f"1 container in the user's rootless podman, {N}/{N} correct outputs, {wall:.1f} s wall"
