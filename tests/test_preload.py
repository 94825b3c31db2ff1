"""flake_pilot._preload (the launchers' entry points run their warm modules from the .pyc files):
it loads exactly what the import system would load and hands over to it at the first .pyc the
import system would not use as is. Each case runs in a fresh interpreter on a copy of the package."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flake_pilot

SRC = Path(flake_pilot.__file__).resolve().parent
WARM = flake_pilot._WARM_PODMAN
NAMES = ["flake_pilot." + p.removesuffix("/__init__").replace("/", ".") for p in WARM]
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import flake_pilot
loaded = flake_pilot._preload(flake_pilot._WARM_PODMAN)
import importlib
for rel in flake_pilot._WARM_PODMAN:  # the rest through the import system
    importlib.import_module("flake_pilot." + rel.removesuffix("/__init__").replace("/", "."))
from flake_pilot.launch.podman import pilot
mods = {n: (m.__spec__ is None) for n, m in sys.modules.items() if n.startswith("flake_pilot.")}
print(json.dumps({"loaded": loaded, "preloaded": mods, "main": callable(pilot.main)}))
"""


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    shutil.copytree(SRC, tmp_path / "flake_pilot", ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("__init__", *WARM):
        source = tmp_path / "flake_pilot" / f"{rel}.py"
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)
    return tmp_path


def probe(root: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def pyc(root: Path, rel: str) -> Path:
    return Path(importlib.util.cache_from_source(str(root / "flake_pilot" / f"{rel}.py")))


def test_every_warm_module_is_preloaded_with_its_package_attributes(package: Path) -> None:
    out = probe(package)
    assert out["loaded"] == NAMES and out["main"]
    assert all(out["preloaded"][n] for n in NAMES)  # no spec: not through the import system
    script = f"""
import sys
sys.path.insert(0, {str(package)!r})
import flake_pilot
flake_pilot._preload(flake_pilot._WARM_PODMAN)
from flake_pilot.launch.podman import pilot, plan
assert pilot.__package__ == "flake_pilot.launch.podman" and pilot.__file__.endswith("launch/podman/pilot.py")
podman = flake_pilot.launch.podman
assert podman.plan is plan and podman.__path__ == [{str(package / "flake_pilot/launch/podman")!r}]
"""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("damage", ["bad magic", "hash-based", "damaged code", "missing"])
def test_the_import_system_takes_over_at_the_first_pyc_it_would_not_use(package: Path, damage: str) -> None:
    victim = WARM.index("launch/launchcache")
    path = pyc(package, WARM[victim])
    data = bytearray(path.read_bytes())
    if damage == "bad magic":
        data[:4] = b"\0\0\0\0"
    elif damage == "hash-based":
        data[4:8] = (3).to_bytes(4, "little")  # checked hash: the source's hash decides
    elif damage == "damaged code":
        del data[20:]
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(bytes(data))
    if damage == "damaged code":  # the import system reads it too, and fails: so must the launch
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", PROBE, str(package)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0 and "marshal" in done.stderr, done.stderr
        return
    out = probe(package)
    assert out["loaded"] == NAMES[:victim] and out["main"]
    assert not any(out["preloaded"][n] for n in NAMES[victim:])
