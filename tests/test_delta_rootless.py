"""Rootless composition: the test user composes base + layers + includes in its own storage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import STATE, TEST_USER, need_test_user, podman, storage_conf
from delta_images import APP, BASE, HOSTDIR, L1, L2, build_images, registration


@dataclass
class User:
    name: str
    uid: int
    root: Path  # owned by the user: storage, registrations, state
    storage: Path

    def run(self, *argv: str, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(self.root),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "CONTAINERS_STORAGE_CONF": str(self.storage),
            **extra,
        }
        if os.environ.get("CONTAINERS_CONF"):
            env["CONTAINERS_CONF"] = os.environ["CONTAINERS_CONF"]
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def compose(self, app: str, **container: object) -> subprocess.CompletedProcess[str]:
        path = registration(self.root / "flakes", app, **container)
        os.chown(path, self.uid, -1)
        state = self.root / "state"
        code = (
            "import sys; from flake_pilot.flakeconf import parse; from flake_pilot.podman import compose\n"
            "try:\n"
            f"    print(compose.ensure_image(parse({app!r}, {str(path)!r}), ['podman', '--log-level=error'],"
            f" {{'CONTAINERS_STORAGE_CONF': {str(self.storage)!r}}}, state_dir={str(state)!r}))\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc, file=sys.stderr); sys.exit(getattr(exc, 'exit_code', 1))\n"
        )
        return self.run(sys.executable, "-c", code, PILOT_DEBUG="1")


@pytest.fixture(scope="module")
def user(system_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    pw = need_test_user()
    build_images(system_storage, tmp_path_factory.mktemp("delta-build"))
    root = Path(tempfile.mkdtemp(prefix="delta-rootless-", dir=STATE))
    root.chmod(0o755)
    storage = storage_conf(root / "storage")
    (root / "flakes").mkdir()
    (root / "state").mkdir(mode=0o700)
    for path in [root, *root.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    u = User(TEST_USER, pw.pw_uid, root, storage)
    archive = root / "images.tar"
    podman("save", "-q", "-m", "-o", str(archive), BASE, L1, L2, APP, storage=system_storage)
    archive.chmod(0o644)
    loaded = u.run("podman", "--log-level=error", "load", "-q", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    try:
        yield u
    finally:
        u.run("podman", "--log-level=error", "rmi", "-a", "-f")
        u.run("podman", "--log-level=error", "unshare", "rm", "-rf", str(root / "storage"))
        shutil.rmtree(root, ignore_errors=True)


def test_rootless_composition(user: User) -> None:
    inc = user.root / "incdir"
    inc.mkdir()
    (inc / "user.txt").write_text("from the user\n")
    os.chown(inc, user.uid, -1)
    os.chown(inc / "user.txt", user.uid, -1)
    proc = user.compose("drootless", base_container=BASE, layers=[L1, L2], include={"tar": None, "path": [str(inc)]})
    assert proc.returncode == 0, proc.stderr
    tag = proc.stdout.strip()
    assert "unshare" not in proc.stderr and " mount " not in proc.stderr  # no mount needed
    out = user.run(
        "podman",
        "--log-level=error",
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--entrypoint",
        "/bin/sh",
        tag,
        "-c",
        f"cat /opt/order.txt /opt/over.txt {inc}/user.txt {HOSTDIR}/host-a.txt "
        f"{HOSTDIR}/host-b.txt; test -e /opt/gone.txt || echo gone",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "layer2",
        "app",
        "from the user",
        "host-a.txt from the host",
        "host-b.txt from the host",
        "gone",
    ]
    again = user.compose("drootless", base_container=BASE, layers=[L1, L2], include={"tar": None, "path": [str(inc)]})
    assert again.returncode == 0 and again.stdout.strip() == tag
    assert "compose: cache hit" in again.stderr and "+ " not in again.stderr  # warm: no engine call
    listed = user.run("podman", "--log-level=error", "images", "--format", "json")
    names = [n for img in json.loads(listed.stdout) for n in img.get("Names") or []]
    assert tag in names  # in the user's own store


def test_rootless_unreadable_include(user: User) -> None:
    secret = user.root / "root-only.tar"
    secret.write_bytes(b"")
    secret.chmod(0o600)  # owned by root: the user cannot read it
    proc = user.compose("dunreadable", base_container=BASE, include={"tar": [str(secret)], "path": None})
    assert proc.returncode == 8, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("SecurityError") and f"{secret}: cannot read: permission denied" in lines[-1]
    assert not (user.root / "state" / "compose" / "dunreadable.work").exists()
    listed = user.run("podman", "--log-level=error", "images", "--format", "{{.Repository}}")
    assert "flake-composed/dunreadable" not in listed.stdout
