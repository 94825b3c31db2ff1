"""scripts/install.sh (make install): a distro-style install into a staging DESTDIR and a runnable
install into a private prefix."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HOSTPY = "/usr/bin/python3"


def install(destdir: str, prefix: str, sysconfdir: str) -> subprocess.CompletedProcess:
    if not os.access(HOSTPY, os.X_OK):
        pytest.fail(f"{HOSTPY} missing: install.sh installs for the system Python (Debian python3)")
    return subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), destdir, prefix, sysconfdir],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_make_install_layout_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    before = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "build"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    proc = install(str(dest), "/usr", "/etc")
    assert proc.returncode == 0, proc.stderr
    for prog in ("flake-ctl", "podman-pilot"):
        launcher = dest / "usr/bin" / prog
        assert os.access(launcher, os.X_OK)
        head = launcher.read_text().splitlines()
        assert head[0] == f"#!{HOSTPY} -I" and 'sys.path.insert(0, "/usr/lib/flake-pilot")' in head
    assert (dest / "usr/lib/flake-pilot/flake_pilot/ctl/main.py").is_file()
    generic = yaml.safe_load((dest / "etc/flakes.yml").read_text())["generic"]
    assert generic == {
        "flakes_dir": "/usr/share/flakes",
        "podman_ids_dir": "/tmp/flakes",
        "firecracker_ids_dir": "/tmp/flakes",
        "podman_storage_conf": "/etc/flakes/storage.conf",
    }
    template = yaml.safe_load((dest / "etc/flakes/container-flake.yaml").read_text())
    assert set(template) == {"include", "container"} and "runtime" in template["container"]
    assert "vm" in yaml.safe_load((dest / "etc/flakes/firecracker-flake.yaml").read_text())
    assert 'graphroot = "/usr/share/flakes/storage"' in (dest / "etc/flakes/storage.conf").read_text()
    after = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "build"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert after == before  # the checkout got no build/ dir

    # a second install keeps changed configuration and puts the new one next to it
    (dest / "etc/flakes.yml").write_text("generic: {flakes_dir: /srv/flakes}\n")
    proc = install(str(dest), "/usr", "/etc")
    assert proc.returncode == 0 and "kept" in proc.stderr
    assert (dest / "etc/flakes.yml").read_text() == "generic: {flakes_dir: /srv/flakes}\n"
    assert (dest / "etc/flakes.yml.new").is_file()


def test_installed_programs_run(tmp_path: Path) -> None:
    prefix, etc = tmp_path / "usr", tmp_path / "etc"
    proc = install("", str(prefix), str(etc))
    assert proc.returncode == 0, proc.stderr
    assert f"podman_storage_conf: {etc}/flakes/storage.conf" in (etc / "flakes.yml").read_text()
    env = {"PATH": "/usr/bin:/bin", "FLAKES_CONFIG": str(etc / "flakes.yml"), "HOME": str(tmp_path)}
    version = subprocess.run(
        [str(prefix / "bin/flake-ctl"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.startswith("flake-ctl ")
    # flakes_dir of the installed default config is /usr/share/flakes: point it into the test dir
    cfg = (etc / "flakes.yml").read_text().replace("/usr/share/flakes", str(tmp_path / "flakes"))
    (etc / "flakes.yml").write_text(cfg)
    (etc / "flakes/storage.conf").write_text(
        (etc / "flakes/storage.conf").read_text().replace("/usr/share/flakes", str(tmp_path / "flakes"))
    )
    app = tmp_path / "bin/hello"
    reg = subprocess.run(
        [str(prefix / "bin/flake-ctl"), "podman", "register", "--container", "img", "--app", str(app)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert reg.returncode == 0, reg.stderr
    assert os.readlink(app) == str(
        prefix / "bin/podman-pilot"
    )  # the installed launcher, found next to flake-ctl
    listed = subprocess.run(
        [str(prefix / "bin/flake-ctl"), "list", "--format", "csv"], capture_output=True, text=True, env=env
    )
    assert listed.stdout.splitlines()[1].startswith("hello,podman,")
    shutil.rmtree(prefix)
