"""A real local OCI registry (Debian's docker-registry) on 127.0.0.1 for pull tests.

The fixture ``local_registry`` (loaded by ``conftest.py``) yields a ``Registry``. Config and data
live in a world-readable temp dir (the rootless test user reads ``registries_conf`` too); the
server is stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import need_program

REGISTRY_BIN = "docker-registry"


@dataclass
class Registry:
    location: str  # host:port
    registries_conf: Path  # CONTAINERS_REGISTRIES_CONF marking the location insecure (plain http)

    def env(self) -> dict[str, str]:
        return {"CONTAINERS_REGISTRIES_CONF": str(self.registries_conf)}

    def push(self, image: str, name: str, storage: Path | None = None) -> str:
        """Push a local image as ``<location>/<name>``; returns that reference."""
        ref = f"{self.location}/{name}"
        env = {**os.environ, **self.env()}
        if storage is not None:
            env["CONTAINERS_STORAGE_CONF"] = str(storage)
        subprocess.run(["podman", "push", "-q", image, ref], env=env, check=True, capture_output=True, timeout=120)
        return ref


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - fixed local http URL
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)  # poll interval while waiting for the condition
    raise RuntimeError(f"docker-registry did not answer {url} within {deadline_s} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def local_registry() -> Iterator[Registry]:
    binary = need_program(REGISTRY_BIN, "docker-registry")
    root = Path(tempfile.mkdtemp(prefix="flake-registry-", dir="/var/tmp"))
    root.chmod(0o755)
    port = _free_port()
    location = f"127.0.0.1:{port}"
    (root / "data").mkdir()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http: {{addr: {location}}}\n"
    )
    registries_conf = root / "registries.conf"
    registries_conf.write_text(
        f'unqualified-search-registries = []\n\n[[registry]]\nlocation = "{location}"\ninsecure = true\n'
    )
    registries_conf.chmod(0o644)
    log = root / "log"
    with open(log, "wb") as log_handle:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log_handle, stderr=subprocess.STDOUT)
    try:
        _wait_up(f"http://{location}/v2/", proc, log)
        yield Registry(location, registries_conf)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
