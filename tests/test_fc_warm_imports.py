"""The installed firecracker-pilot (scripts/install.sh: ``#!/usr/bin/python3 -IS``) starts a VM
without the modules that cost a launch milliseconds: a warm launch (registration cache hit) of a
serial one-shot VM imports no os, __future__, typing, subprocess, and neither yaml nor site; its own
modules are preloaded from their byte-code (flake_pilot._preload)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import flake_pilot
from conftest import check_preload, foreign, imported, need

ROOT = Path(__file__).resolve().parent.parent
HOSTPY = "/usr/bin/python3"
NOT_AT_LAUNCH = {"os", "__future__", "typing", "subprocess", "yaml", "_yaml", "site"}


def test_installed_launcher_warm_launch_imports(
    tmp_path: Path, kvm: None, firecracker_bin: Path, tiny_guest: dict[str, Path]
) -> None:
    need(os.access(HOSTPY, os.X_OK), f"{HOSTPY} missing: install.sh installs for the system Python (Debian python3)")
    prefix = tmp_path / "usr"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "", str(prefix), str(tmp_path / "etc")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    launcher = prefix / "bin/firecracker-pilot"
    assert launcher.read_text().splitlines()[0] == f"#!{HOSTPY} -IS"
    flakes, bindir, cache = tmp_path / "flakes", tmp_path / "bin", tmp_path / "cache"
    flakes.mkdir()
    bindir.mkdir()
    config = tmp_path / "flakes.yml"
    config.write_text(
        f"generic:\n  flakes_dir: {flakes}\n  firecracker_ids_dir: {tmp_path / 'ids'}\n"
        f"  firecracker_binary: {firecracker_bin}\n"
    )
    rootfs = tmp_path / "rootfs.img"
    with rootfs.open("wb") as f:
        f.truncate(4 * 1024 * 1024)  # the bare-metal guest never reads it; Firecracker needs a drive
    registration = flakes / "tiny.yaml"
    registration.write_text(
        "vm:\n  name: tiny\n  target_app_path: /bin/true\n  runtime:\n    firecracker:\n"
        '      boot_args: ["console=ttyS0"]\n'
        f"      rootfs_image_path: {rootfs}\n      kernel_image_path: {tiny_guest['reset']}\n"
        "      mem_size_mib: 64\n      vcpu_count: 1\n"
    )
    past = time.time() - 10  # old inputs: a cache hit needs no content check (a long-installed flake)
    for path in (config, registration):
        os.utime(path, (past, past))
    app = bindir / "tiny"
    app.symlink_to(launcher)
    env = {"PATH": "/usr/bin:/bin", "FLAKES_CONFIG": str(config), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(cache)}

    def launch(*pre: str) -> str:
        done = subprocess.run(
            [*pre, str(app)], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "HELLO-FROM-TINY-GUEST" in done.stdout, done.stdout + done.stderr
        return done.stderr

    launch()  # through the shebang, cold: parses the YAML, stores the plan
    assert list((cache / "flake-pilot/plans").iterdir()), "the cold launch stored no plan"
    # the same interpreter and flags as the shebang, plus -X importtime (-I ignores PYTHON* variables)
    warm = imported(launch(HOSTPY, "-IS", "-X", "importtime"))
    assert "flake_pilot" in warm  # the trace is real
    assert not NOT_AT_LAUNCH & warm, sorted(warm)
    assert foreign(warm) == set()  # the launchers' one import rule (tests/test_launch_imports.py)
    # the warm modules run from their .pyc without the import system; a stale one falls back to it
    check_preload(
        lambda: imported(launch(HOSTPY, "-IS", "-X", "importtime")),
        prefix / "lib/flake-pilot",
        flake_pilot._WARM_FIRECRACKER,
    )
