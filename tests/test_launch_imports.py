"""The launchers' import contract, as one rule: the launch package (flake_pilot.launch) imports
only built-in modules and itself on a warm launch. Built-in: the interpreter's built-in modules,
the modules the interpreter loads to start at all, and ``_ctypes`` (the C module, <1 ms) where it
needs prctl(2), which the stdlib offers nowhere else (fastos.prctl_function): a firecracker-pilot
VM that dies with the launcher, a resume call through the OCI runtime without a terminal (the
launcher becomes a child subreaper).

Checked twice: statically (every module of the package imports at module level only those, and
the launchers' preload lists name only the package), and on real warm launches of installed
launchers (``#!/usr/bin/python3 -IS``, ``-X importtime``). What a cold launch needs is imported
where it is used."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flake_pilot
from conftest import BB_IMAGE, foreign, imported, interpreter_modules, need, podman

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "src/flake_pilot/launch"
HOSTPY = "/usr/bin/python3"
PRCTL = "_ctypes"


def module_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of each import that runs when *path* is imported: its body, and
    blocks under it other than ``if TYPE_CHECKING:``; not the imports inside functions."""
    package = "flake_pilot." + path.parent.relative_to(ROOT / "src/flake_pilot").as_posix().replace("/", ".")
    found: list[tuple[int, str]] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                if node.level and not node.module:  # from . import x: x is a module of the package
                    found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
                else:
                    found.append((node.lineno, module))
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    walk(block)

    walk(ast.parse(path.read_text()).body)
    return found


def test_the_launch_package_imports_only_builtins_and_itself_at_module_level() -> None:
    python = HOSTPY if os.access(HOSTPY, os.X_OK) else sys.executable
    allowed = interpreter_modules(python)
    modules = sorted(LAUNCH.rglob("*.py"))
    assert len(modules) > 10, modules  # the walk is real
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in modules
        for line, name in module_level_imports(path)
        if name not in allowed and name != "flake_pilot.launch" and not name.startswith("flake_pilot.launch.")
    ]
    assert wrong == []


def test_the_preload_lists_name_only_the_launch_package() -> None:
    for warm in (flake_pilot._WARM_PODMAN, flake_pilot._WARM_FIRECRACKER):
        assert warm[0] == "launch/__init__" and all(rel.startswith("launch/") for rel in warm), warm
        assert all((ROOT / "src/flake_pilot" / f"{rel}.py").is_file() for rel in warm), warm


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


@pytest.mark.build
def test_podman_oneshot_warm_launch_imports_only_builtins_and_itself(tmp_path: Path) -> None:
    (tmp_path / "storage.conf").write_text("")  # the launcher checks that it exists; /bin/true ignores it
    generic = f"  podman_binary: /bin/true\n  podman_storage_conf: {tmp_path / 'storage.conf'}\n"
    app, env = podman_flake(tmp_path, install_launchers(tmp_path) / "podman-pilot", generic, False)
    assert foreign(warm_trace(app, env)) == set()


@pytest.mark.build
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
