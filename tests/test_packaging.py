"""Packaging: the Debian package built from this tree with dpkg-buildpackage, installed with dpkg on
this machine, used to register and run a flake in a private prefix, upgraded, purged; and
``pip install`` / ``pipx install`` giving working commands."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BB_IMAGE, STATE, Prefix, need, need_program
from debian_build import PKG, SYSTEM_PATH, build_deb, clean_env, copy_tree, installed_version, run

pytestmark = pytest.mark.build


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two builds of this tree: the changelog's version and a bumped one (for the upgrade)."""
    tmp = tmp_path_factory.mktemp("deb")
    first = build_deb(copy_tree(tmp / "a" / PKG))
    second = build_deb(copy_tree(tmp / "b" / PKG), version="99.0.0")
    return first, second


@pytest.fixture
def purge_after() -> Iterator[None]:
    before = installed_version()
    need(before is None, f"{PKG} {before} is already installed on this machine; purge it first (dpkg --purge {PKG})")
    yield
    subprocess.run(["dpkg", "--purge", PKG], capture_output=True, env=clean_env(), timeout=300)


def test_deb_contents(debs: tuple[Path, Path]) -> None:
    listing = run(["dpkg-deb", "-c", str(debs[0])]).stdout
    files = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for path in (
        "/usr/bin/flake-ctl",
        "/usr/bin/podman-pilot",
        "/usr/bin/firecracker-pilot",
        "/usr/share/man/man8/flake-ctl.8.gz",
        "/usr/share/man/man8/flake-ctl-podman-register.8.gz",
        "/usr/share/man/man8/podman-pilot.8.gz",
        "/usr/share/man/man8/firecracker-pilot.8.gz",
        "/usr/share/man/man8/sci.8.gz",
        "/usr/share/man/man5/flakes.yml.5.gz",
        "/usr/share/bash-completion/completions/flake-ctl",
        "/usr/share/zsh/vendor-completions/_flake-ctl",
        "/usr/share/fish/vendor_completions.d/flake-ctl.fish",
        "/etc/flakes.yml",
        "/etc/flakes/container-flake.yaml",
        "/etc/flakes/firecracker-flake.yaml",
        "/etc/flakes/storage.conf",
    ):
        assert path in files, f"{path} missing from {debs[0].name}"
    # the app launchers start without site (like `make install`'s), the package's modules named
    extracted = debs[0].parent / "extracted"
    run(["dpkg-deb", "-x", str(debs[0]), str(extracted)])
    for launcher, engine in (("podman-pilot", "podman"), ("firecracker-pilot", "firecracker")):
        lines = (extracted / "usr/bin" / launcher).read_text().splitlines()
        assert lines[0] == "#!/usr/bin/python3 -IS", lines
        assert f"from flake_pilot import {engine}_pilot" in lines and f"sys.exit({engine}_pilot())" in lines
    control = debs[0].parent / "control"
    run(["dpkg-deb", "-e", str(debs[0]), str(control)])
    conffiles = (control / "conffiles").read_text().split()
    assert {"/etc/flakes.yml", "/etc/flakes/storage.conf", "/etc/flakes/container-flake.yaml"} <= set(conffiles)
    depends = run(["dpkg-deb", "-f", str(debs[0]), "Depends"]).stdout
    assert "python3-yaml" in depends and "python3" in depends


def test_deb_install_register_run_upgrade_purge(
    debs: tuple[Path, Path], purge_after: None, prefix: Prefix, bb_image: str
) -> None:
    first, second = debs
    run(["dpkg", "-i", str(first)])
    assert installed_version() is not None
    assert Path("/etc/flakes.yml").is_file()
    version = run(["/usr/bin/flake-ctl", "--version"]).stdout
    assert "flake-ctl" in version
    # the man pages and completion are where man and bash-completion look
    assert run(["man", "-w", "flake-ctl"]).stdout.strip().startswith("/usr/share/man/man8/flake-ctl.8")
    rendered = run(["man", "-P", "cat", "flake-ctl-podman-register"], env=clean_env(MANWIDTH="100")).stdout
    assert "--container" in rendered

    env = clean_env(FLAKES_CONFIG=str(prefix.config), PATH=f"{prefix.bin_dir}:{SYSTEM_PATH}")
    app = prefix.bin_dir / "pkg-echo"
    run(
        [
            "/usr/bin/flake-ctl",
            "podman",
            "register",
            "--container",
            BB_IMAGE,
            "--app",
            str(app),
            "--target",
            "/bin/echo",
        ],
        env=env,
    )
    assert os.readlink(app) == "/usr/bin/podman-pilot", "a registration must point at the installed launcher"
    out = run([str(app), "from", "the", "package"], env=env, stdin=subprocess.DEVNULL)
    assert out.stdout == "from the package\n"
    listed = run(["/usr/bin/flake-ctl", "list", "--format", "json"], env=env).stdout
    assert str(app) in listed

    # upgrade: the same registration keeps working with the new launcher
    run(["dpkg", "-i", str(second)])
    assert installed_version() == "99.0.0"
    assert os.readlink(app) == "/usr/bin/podman-pilot"
    out = run([str(app), "after", "upgrade"], env=env, stdin=subprocess.DEVNULL)
    assert out.stdout == "after upgrade\n"
    run(["/usr/bin/flake-ctl", "podman", "remove", "--app", str(app)], env=env)
    assert not os.path.lexists(app)

    run(["dpkg", "--purge", PKG])
    assert installed_version() is None
    assert not Path("/usr/bin/flake-ctl").exists()
    assert not Path("/etc/flakes.yml").exists(), "purge must remove the conffiles"


def _check_installed_commands(bin_dir: Path, prefix: Prefix, name: str) -> None:
    """flake-ctl from *bin_dir* registers a flake whose symlink points at *bin_dir*'s podman-pilot."""
    ctl = bin_dir / "flake-ctl"
    assert "flake-ctl" in run([str(ctl), "--version"]).stdout
    for launcher in ("podman-pilot", "firecracker-pilot"):
        assert os.access(bin_dir / launcher, os.X_OK), f"{launcher} not installed in {bin_dir}"
    env = clean_env(FLAKES_CONFIG=str(prefix.config), PATH=f"{prefix.bin_dir}:{SYSTEM_PATH}")
    app = prefix.bin_dir / name
    run(
        [str(ctl), "podman", "register", "--container", BB_IMAGE, "--app", str(app), "--target", "/bin/echo"],
        env=env,
    )
    assert os.path.dirname(os.readlink(app)) == str(bin_dir)
    assert run([str(app), "ok", name], env=env, stdin=subprocess.DEVNULL).stdout == f"ok {name}\n"


def test_pip_install(tmp_path: Path, prefix: Prefix, bb_image: str) -> None:
    src = copy_tree(tmp_path / "src")
    venv = tmp_path / "venv"
    # Debian's python3 with its python3-yaml/setuptools: no download needed
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)])
    run(
        [str(venv / "bin/pip"), "install", "-q", "--no-build-isolation", "--no-deps", str(src)],
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    _check_installed_commands(venv / "bin", prefix, "pip-echo")


def test_pipx_install(tmp_path: Path, prefix: Prefix, bb_image: str) -> None:
    pipx = need_program("pipx", "pipx", path=SYSTEM_PATH)
    src = copy_tree(tmp_path / "src")
    env = clean_env(
        PIPX_HOME=str(tmp_path / "pipx"),
        PIPX_BIN_DIR=str(tmp_path / "bin"),
        PIPX_SHARED_LIBS=str(STATE / "pipx-shared"),  # kept between runs: pipx upgrades it only when old
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    run([pipx, "install", "--system-site-packages", "--pip-args=--no-build-isolation", str(src)], env=env)
    _check_installed_commands(tmp_path / "bin", prefix, "pipx-echo")
