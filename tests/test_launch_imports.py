"""The launchers' import contract, as one rule: a warm launch of an installed launcher
(``#!/usr/bin/python3 -IS``) imports only the interpreter's built-in modules, the modules the
interpreter loads to start at all, flake_pilot itself, and ``_ctypes`` (the C module, <1 ms)
where it needs prctl(2), which the stdlib offers nowhere else (fastos.prctl_function): a
firecracker-pilot VM that dies with the launcher, a resume call through the OCI runtime
without a terminal (the launcher becomes a child subreaper)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BB_IMAGE, foreign, imported, need, podman

ROOT = Path(__file__).resolve().parent.parent
HOSTPY = "/usr/bin/python3"
PRCTL = "_ctypes"

pytestmark = pytest.mark.build


def install_launchers(tmp_path: Path) -> Path:
    need(os.access(HOSTPY, os.X_OK), f"{HOSTPY} missing: install.sh installs for the system Python (Debian python3)")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), "", str(tmp_path / "usr"), str(tmp_path / "etc")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tmp_path / "usr/bin"


def podman_flake(tmp_path: Path, launcher: Path, generic: str, resume: bool) -> tuple[Path, dict[str, str]]:
    flakes, bindir = tmp_path / "flakes", tmp_path / "bin"
    flakes.mkdir()
    bindir.mkdir()
    config = tmp_path / "flakes.yml"
    config.write_text(f"generic:\n  flakes_dir: {flakes}\n  podman_ids_dir: {tmp_path / 'ids'}\n{generic}")
    app = bindir / "app"
    registration = flakes / "app.yaml"
    registration.write_text(
        f"include: {{tar: ~, path: ~}}\ncontainer:\n  name: {BB_IMAGE}\n  target_app_path: /bin/sh\n"
        f"  host_app_path: {app}\n  check_host_dependencies: false\n"
        f"  runtime: {{runas: root, resume: {str(resume).lower()}, attach: false, podman: ~}}\n"
    )
    past = time.time() - 10  # installed registrations are older than a second: the cache trusts stamps
    for path in (config, registration):
        os.utime(path, (past, past))
    app.symlink_to(launcher)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",  # netavark needs iptables
        "FLAKES_CONFIG": str(config),
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", ""),
    }
    return app, env


def warm_trace(app: Path, env: dict[str, str]) -> set[str]:
    for _ in range(2):  # cold (parses the YAML, stores the plan; resume: creates the instance), then warm
        done = subprocess.run([str(app), "-c", "true"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    traced = [HOSTPY, "-IS", "-X", "importtime", str(app), "-c", "true"]
    done = subprocess.run(traced, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return imported(done.stderr)


def test_podman_oneshot_warm_launch_imports_only_builtins_and_itself(tmp_path: Path) -> None:
    (tmp_path / "storage.conf").write_text("")  # the launcher checks that it exists; /bin/true ignores it
    generic = f"  podman_binary: /bin/true\n  podman_storage_conf: {tmp_path / 'storage.conf'}\n"
    app, env = podman_flake(tmp_path, install_launchers(tmp_path) / "podman-pilot", generic, False)
    assert foreign(warm_trace(app, env)) == set()


def test_resume_call_through_the_runtime_keeps_the_rule(tmp_path: Path, system_storage: Path, bb_image: str) -> None:
    generic = f"  podman_storage_conf: {system_storage}\n"
    app, env = podman_flake(tmp_path, install_launchers(tmp_path) / "podman-pilot", generic, True)
    try:
        trace = warm_trace(app, env)
        assert PRCTL in trace, sorted(trace)  # the call went through the runtime, detached
        assert foreign(trace) == set()
    finally:
        cids = [p.read_text().split()[0] for p in (tmp_path / "ids").glob("*/app.cid")]
        if cids:
            podman("rm", "-f", "-t", "0", *cids, storage=system_storage, check=False)
