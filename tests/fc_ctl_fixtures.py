"""Fixtures for the flake-ctl firecracker tests (pull, register, hostile downloads): a generated
certificate the programs trust (SSL_CERT_FILE), an ext4 root filesystem, a private flake prefix
and a KIS image site for the local HTTPS server of ``https_server``. Loaded by ``conftest.py``
(``pytest_plugins``); the helpers ``registry``/``snapshot`` are imported from here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import BIN, Prefix, make_prefix
from https_server import Site, ext4_image, kis_members, kis_tarball, make_cert


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="session")
def rootfs_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = ext4_image(tmp_path_factory.mktemp("img") / "rootfs.ext4", {"usr/bin/python3": b"#!fake\n"})
    return path.read_bytes()


def launcher_stub(bin_dir: Path) -> None:
    """firecracker-pilot must exist for a registration; use the installed one, else a stub."""
    if not (BIN / "firecracker-pilot").exists():
        stub = bin_dir / "firecracker-pilot"
        stub.write_text("#!/bin/sh\necho 'firecracker-pilot stub' >&2\nexit 125\n")
        stub.chmod(0o755)


@pytest.fixture
def fc(tmp_path: Path, cert: tuple[Path, Path]) -> Prefix:
    p = make_prefix(tmp_path / "prefix", tmp_path / "storage.conf")
    p.env["SSL_CERT_FILE"] = str(cert[0])
    p.env.pop("FLAKE_ALLOW_INSECURE_TRANSPORT", None)
    p.env["NO_PROGRESS"] = "1"
    p.env["no_proxy"] = "localhost,127.0.0.1"  # the local test server, even where a proxy is configured
    launcher_stub(p.bin_dir)
    return p


@pytest.fixture
def kis_site(rootfs_bytes: bytes) -> Site:
    return Site(files={"/leap.tar.xz": kis_tarball(kis_members(rootfs_bytes))})


def registry(p: Prefix) -> Path:
    return p.root / "firecracker"


def snapshot(p: Prefix) -> dict[str, str]:
    """Every file under the registry with its sha256 (lock files aside)."""
    result = {}
    for path in sorted(registry(p).rglob("*")):
        if path.name.endswith(".lock"):
            continue
        rel = str(path.relative_to(registry(p)))
        result[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return result
