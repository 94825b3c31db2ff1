"""Delta flakes end to end: launched through podman-pilot (app symlink + registration YAML),
as root and as the rootless test user."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import STATE, podman
from delta_images import APP, BASE, HOSTDIR, L1, L2, build_images, registration
from podman_scopes import LAUNCHER, USER_HOME, Scope, prepare_user, remove_user_scope, root_scope, user_scope


@pytest.fixture(scope="session")
def delta_user_store(system_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, int, Path]:
    build_images(system_storage, tmp_path_factory.mktemp("delta-build"))
    uid, gid, storage = prepare_user(system_storage)
    env = {
        "HOME": str(USER_HOME),
        "PATH": "/usr/bin:/bin",
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", ""),
    }
    archive = STATE / f"delta-images-{os.getpid()}.tar"
    try:
        podman("save", "-q", "-m", "-o", str(archive), BASE, L1, L2, APP, storage=system_storage)
        archive.chmod(0o644)
        done = subprocess.run(
            ["podman", "--log-level=error", "load", "-q", "-i", str(archive)],
            env=env,
            user=uid,
            group=gid,
            extra_groups=[],
            cwd=str(USER_HOME),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    finally:
        archive.unlink(missing_ok=True)
    return uid, gid, storage


@pytest.fixture(params=["root", "user"])
def scope(request: pytest.FixtureRequest, tmp_path: Path, system_storage: Path) -> Iterator[Scope]:
    if request.param == "root":
        build_images(system_storage, tmp_path / "build")
        s = root_scope(tmp_path, system_storage)
        yield s
        s.cleanup()
        from flake_pilot.podman import compose

        for app in ("dhello", "dshow"):  # composed entries in the shared test store
            compose.free_entries(app=app, env={"CONTAINERS_STORAGE_CONF": str(system_storage)})
    else:
        s = user_scope(*request.getfixturevalue("delta_user_store"))
        yield s
        remove_user_scope(s)


def register(scope: Scope, app: str, **container: object) -> None:
    runas = "root" if scope.kind == "root" else "flaketest"
    path = registration(scope.flakes_dir, app, runtime={"runas": runas}, **container)
    os.chown(path, scope.uid, scope.gid)
    (scope.bin_dir / app).symlink_to(LAUNCHER)


def test_delta_flake_launches_like_a_native_command(scope: Scope) -> None:
    register(scope, "dhello", base_container=BASE, layers=[L1, L2])
    first = scope.run("dhello", "a b", env={"PILOT_DEBUG": "1"})
    assert (first.returncode, first.stdout) == (3, "hello a b\n"), first.stderr
    assert first.stderr.endswith("err\n") and "compose: composing dhello" in first.stderr
    warm = scope.run("dhello", "x", env={"PILOT_DEBUG": "1"})
    assert (warm.returncode, warm.stdout) == (3, "hello x\n")
    assert "compose: cache hit" in warm.stderr and "compose: composing" not in warm.stderr
    quiet = scope.run("dhello", "y")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (3, "hello y\n", "err\n")


def test_delta_flake_sees_every_layer(scope: Scope) -> None:
    register(scope, "dshow", base_container=BASE, layers=[L1, L2], target_app_path="/bin/cat")
    done = scope.run("dshow", "/opt/order.txt", "/opt/over.txt", "/opt/l1.txt", f"{HOSTDIR}/host-b.txt")
    assert (done.returncode, done.stdout) == (0, "layer2\napp\nl1\nhost-b.txt from the host\n"), done.stderr
    gone = scope.run("dshow", "/opt/gone.txt")
    assert gone.returncode == 1 and "No such file" in gone.stderr


def test_ignore_sync_error_through_the_pilot(tmp_path: Path, system_storage: Path) -> None:
    build_images(system_storage, tmp_path / "build")
    scope = root_scope(tmp_path, system_storage)
    image = "localhost/flake-test/delta-missing-host:latest"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "removed").write_text(f"/no/such/host/file\n{HOSTDIR}/host-a.txt\n")
    (ctx / "Containerfile").write_text(f"FROM {BASE}\nCOPY removed /removed\n")
    podman("build", "-q", "--pull=never", "-t", image, str(ctx), storage=scope.storage)
    register(scope, "dsync", name=image, check_host_dependencies=True, target_app_path="/bin/cat")
    failed = scope.run("dsync", f"{HOSTDIR}/host-a.txt")
    assert failed.returncode == 125
    assert failed.stderr.count("\n") == 1 and "/no/such/host/file: not found" in failed.stderr
    assert "Traceback" not in failed.stderr
    done = scope.run("dsync", "%ignore_sync_error", f"{HOSTDIR}/host-a.txt")
    assert (done.returncode, done.stdout) == (0, "host-a.txt from the host\n"), done.stderr
    podman("rmi", "-f", image, storage=scope.storage, check=False)


def test_registered_with_flake_ctl_like_the_issue_says(tmp_path: Path, system_storage: Path, prefix) -> None:  # type: ignore[no-untyped-def]
    build_images(system_storage, tmp_path / "build")
    extra = tmp_path / "joerc"
    extra.write_text("joe settings\n")
    app = prefix.bin_dir / "djoe"
    done = prefix.ctl(
        "podman",
        "register",
        "--app",
        str(app),
        "--container",
        APP,
        "--base",
        BASE,
        "--layer",
        L1,
        "--layer",
        L2,
        "--target",
        "/bin/cat",
        "--include-path",
        str(extra),
    )
    assert done.returncode == 0, done.stderr
    run = prefix.app("djoe", str(extra), "/opt/order.txt", "/opt/l1.txt")
    assert (run.returncode, run.stdout) == (0, "joe settings\nlayer2\nl1\n"), run.stderr
    from flake_pilot.podman import compose

    env = {"CONTAINERS_STORAGE_CONF": str(system_storage)}
    assert [e for e in compose.list_entries(["podman"], env) if e["app"] == "djoe"]
    removed = prefix.ctl("podman", "remove", "--app", str(app))
    assert removed.returncode == 0 and "removed composed image localhost/flake-composed/djoe:" in removed.stdout, (
        removed.stdout + removed.stderr
    )
    assert not [e for e in compose.list_entries(["podman"], env) if e["app"] == "djoe"]
