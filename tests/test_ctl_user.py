"""flake-ctl in user mode: run as the rootless test user (runuser) with its own HOME, real rootless
podman with the storage that `flake-ctl init --user` configures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BIN, TEST_USER, need_test_user, podman
from registry import Registry


@dataclass
class User:
    name: str
    uid: int
    home: Path
    system_config: Path
    ids_dir: Path

    def env(self, **extra: str) -> list[str]:
        base = {
            "HOME": str(self.home),
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "FLAKES_CONFIG": str(self.system_config),
        }
        conf = os.environ.get("CONTAINERS_CONF")
        if conf:
            base["CONTAINERS_CONF"] = conf
        return [f"{k}={v}" for k, v in {**base, **extra}.items()]

    def run(self, *argv: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", *self.env(**extra), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ctl(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "flake-ctl"), *args, **extra)

    @property
    def storage_conf(self) -> Path:
        return self.home / ".config/flakes/podman/storage.conf"

    def image_exists(self, image: str) -> bool:
        proc = self.run("podman", "image", "exists", image, CONTAINERS_STORAGE_CONF=str(self.storage_conf))
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode == 0


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


pytestmark = pytest.mark.root  # each test runs flake-ctl as the rootless test user


@pytest.fixture
def user() -> Iterator[User]:
    pw = need_test_user()
    root = Path(tempfile.mkdtemp(prefix="flake-user-", dir="/var/tmp"))
    root.chmod(0o755)
    home = root / "home"
    home.mkdir()
    os.chown(home, pw.pw_uid, pw.pw_gid)
    ids = root / "ids"
    ids.mkdir()
    ids.chmod(0o1777)
    config = root / "flakes.yml"
    config.write_text(
        f"generic:\n  flakes_dir: {root / 'system-flakes'}\n  podman_ids_dir: {ids}\n  firecracker_ids_dir: {ids}\n"
    )
    config.chmod(0o644)
    try:
        yield User(TEST_USER, pw.pw_uid, home, config, ids)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def archive(user: User, system_storage: Path, bb_image: str) -> Path:
    path = user.home.parent / "bb.tar"
    podman("save", "-q", "-o", str(path), bb_image, storage=system_storage)
    path.chmod(0o644)
    return path


def test_init_user_writes_config_like_the_original(user: User) -> None:
    proc = ok(user.ctl("init", "--user"))
    cfg = user.home / ".config/flakes.yml"
    data = yaml.safe_load(cfg.read_text())
    assert data == {
        "generic": {
            "flakes_dir": str(user.home / ".config/flakes"),
            "podman_ids_dir": str(user.ids_dir),  # copied from the system config
            "firecracker_ids_dir": str(user.ids_dir),
            "podman_storage_conf": str(user.storage_conf),
        }
    }
    graph = user.home / ".config/flakes/podman/storage"
    assert f'graphroot = "{graph}"' in user.storage_conf.read_text()
    assert f"CONTAINERS_STORAGE_CONF={user.storage_conf}" in proc.stdout
    assert cfg.stat().st_uid == user.uid and (user.home / ".config/flakes/firecracker").is_dir()
    # existing files are kept without --force, replaced with it
    cfg.write_text("generic: {flakes_dir: /custom}\n")
    again = ok(user.ctl("init", "--user"))
    assert again.stderr.count("keeping existing") == 2 and cfg.read_text() == "generic: {flakes_dir: /custom}\n"
    ok(user.ctl("init", "--user", "--force"))
    assert yaml.safe_load(cfg.read_text()) == data


def test_user_flakes_end_to_end(
    user: User,
    archive: Path,
    bb_image: str,
    system_storage: Path,
    local_registry: Registry,
) -> None:
    ok(user.ctl("init", "--user"))
    loaded = ok(user.ctl("podman", "--user", "load", "--oci", str(archive)))
    assert bb_image in loaded.stdout and user.image_exists(bb_image)
    info = user.ctl("podman", "--user", "register", "--container", bb_image, "--info")  # rootless create+cp+rm
    assert info.returncode == 4 and info.stderr.splitlines() == [
        f"flake-ctl: {bb_image}: no info file /bb.yaml in the image"
    ]

    app = user.home / "bin/bb-cat"
    ok(user.ctl("podman", "--user", "register", "--container", bb_image, "--app", str(app), "--target", "/bin/cat"))
    assert os.readlink(app) == str(BIN / "podman-pilot") and app.lstat().st_uid == user.uid
    cfg = user.home / ".config/flakes/bb-cat.yaml"
    assert yaml.safe_load(cfg.read_text())["container"]["runtime"]["runas"] == user.name
    # --user after the subcommand works too
    ok(user.ctl("podman", "register", "--user", "--container", bb_image, "--app", str(user.home / "bin/bb2")))

    listed = json.loads(ok(user.ctl("list", "--user", "--format", "json")).stdout)
    assert [(r["name"], r["engine"], r["host_app_path"]) for r in listed] == [
        ("bb-cat", "podman", str(app)),
        ("bb2", "podman", str(user.home / "bin/bb2")),
    ]
    system = ok(user.ctl("list", "--format", "json"))  # the system scope is a different one
    assert json.loads(system.stdout) == []

    # show: the caller's own instance dir, status from the user's rootless podman (a stale file here)
    private = user.ids_dir / str(user.uid)
    private.mkdir(mode=0o700)
    (private / "bb-cat@x.cid").write_text("f" * 64 + "\n")
    for path in (private, private / "bb-cat@x.cid"):
        os.chown(path, user.uid, -1)
    shown = json.loads(ok(user.ctl("podman", "--user", "show", "--format", "json")).stdout)
    assert shown == [
        {
            "name": "bb-cat@x",
            "user": user.name,
            "id": "f" * 64,
            "status": "stopped",
            "image": bb_image,
            "config": str(cfg),
        }
    ]

    ref = local_registry.push(bb_image, "user/bb:2", storage=system_storage)
    ok(
        user.ctl(
            "podman",
            "--user",
            "pull",
            "--uri",
            ref,
            CONTAINERS_REGISTRIES_CONF=str(local_registry.registries_conf),
        )
    )
    assert user.image_exists(ref)

    ok(user.ctl("podman", "--user", "remove", "--app", str(app)))
    assert not os.path.lexists(app) and not cfg.exists()
    ok(user.ctl("podman", "--user", "remove", "--container", bb_image))
    assert not os.path.lexists(user.home / "bin/bb2") and not user.image_exists(bb_image)
    assert json.loads(ok(user.ctl("list", "--user", "--format", "json")).stdout) == []


def test_system_scope_refused_for_a_user(user: User) -> None:
    app = user.home / "bin/x"
    proc = user.ctl("podman", "register", "--container", "img", "--app", str(app))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"flake-ctl: {user.system_config.parent / 'system-flakes'}: Permission denied "
        "(system flakes need root; use --user for your own flakes)"
    ]
    assert not os.path.lexists(app)
