"""Shared fixtures: real podman with this machine's settings, a tiny busybox image,
a private flake prefix per test (FLAKES_CONFIG), and helpers to run the installed programs."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STATE = Path(os.environ.get("FLAKE_STATE", "/var/tmp/flake-pilot"))
BIN = Path(sys.executable).parent  # the venv's bin: flake-ctl, podman-pilot, ...
TEST_USER = os.environ.get("FLAKE_TEST_USER", "flaketest")
BB_IMAGE = "localhost/flake-test/bb:latest"
STORAGE = STATE / "test-storage"


def _podman_available() -> bool:
    return shutil.which("podman") is not None


@pytest.fixture(scope="session", autouse=True)
def _podman_settings() -> None:
    conf = STATE / "podman" / "containers.conf"
    if conf.exists():
        os.environ["CONTAINERS_CONF"] = str(conf)
    os.environ.pop("PILOT_DEBUG", None)


def imported(stderr: str) -> set[str]:
    """Module names in ``-X importtime`` output (``import time: self | cumulative | name``)."""
    return {ln.rsplit("|", 1)[1].strip() for ln in stderr.splitlines() if ln.startswith("import time:")} - {"package"}


def check_preload(trace: Callable[[], set[str]], lib: Path, warm: tuple[str, ...]) -> None:
    """An installed launcher (package in *lib*) preloads its warm modules (flake_pilot._preload):
    a traced warm launch imports none of them through the import system. With the first one's
    .pyc stale (its source touched), preloading stops and the import system loads the rest: the
    launch still works and imports exactly the modules of *warm*, the launcher's preload list."""
    names = {"flake_pilot." + p.removesuffix("/__init__").replace("/", ".") for p in warm}
    first = lib / "flake_pilot" / f"{warm[0]}.py"
    warm_trace = trace()
    assert "flake_pilot" in warm_trace, sorted(warm_trace)  # the trace is real
    assert not {m for m in warm_trace if m.startswith("flake_pilot.")}, sorted(warm_trace)
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    stale_trace = trace()
    assert {m for m in stale_trace if m.startswith("flake_pilot.")} == names, sorted(stale_trace)


def storage_conf(root: Path) -> Path:
    """A podman storage.conf whose graphroot/runroot live under *root*."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "storage.conf"
    if not conf.exists():
        conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    return conf


def busybox_rootfs_tar(extra: dict[str, bytes] | None = None) -> bytes:
    """A tar of a minimal busybox root filesystem (Debian's busybox-static)."""
    busybox = Path("/bin/busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, check=True, text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "var"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        add_file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for name, data in (extra or {}).items():
            add_file(name, data, 0o755 if name.startswith(("bin/", "usr/bin/")) else 0o644)
    return buf.getvalue()


def podman(*args: str, storage: Path | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if storage is not None:
        env["CONTAINERS_STORAGE_CONF"] = str(storage)
    return subprocess.run(["podman", *args], env=env, check=check, capture_output=True, text=True, **kw)


def import_image(tag: str, tar_bytes: bytes, storage: Path | None) -> None:
    tmp = STATE / f"import-{os.getpid()}.tar"
    tmp.write_bytes(tar_bytes)
    try:
        podman(
            "import",
            "-q",
            "--change",
            'CMD ["/bin/sh"]',
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            str(tmp),
            tag,
            storage=storage,
        )
    finally:
        tmp.unlink()


@pytest.fixture(scope="session")
def system_storage() -> Path:
    """The podman storage.conf shared by the root tests (images are built once per session)."""
    if not _podman_available():
        pytest.fail("podman is not installed: run `make test` (scripts/setup-host.sh --test installs it)")
    return storage_conf(STORAGE / "root")


@pytest.fixture(scope="session")
def bb_image(system_storage: Path) -> str:
    if podman("image", "exists", BB_IMAGE, storage=system_storage, check=False).returncode != 0:
        import_image(BB_IMAGE, busybox_rootfs_tar(), system_storage)
    return BB_IMAGE


@dataclass
class Prefix:
    """A private flake installation: config, flakes dir, ids dir, app dir."""

    root: Path
    config: Path
    flakes_dir: Path
    ids_dir: Path
    bin_dir: Path
    storage: Path
    env: dict[str, str]

    def ctl(
        self,
        *args: str,
        check: bool = False,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flake-ctl"), *args],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def app(
        self,
        name: str,
        *args: str,
        input: str | bytes | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin_dir / name), *args],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            stdin=subprocess.DEVNULL if input is None else None,
        )


def make_prefix(root: Path, storage: Path) -> Prefix:
    flakes_dir = root / "flakes"
    ids_dir = root / "ids"
    bin_dir = root / "bin"
    for d in (flakes_dir, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    config = root / "flakes.yml"
    config.write_text(
        "generic:\n"
        f"  flakes_dir: {flakes_dir}\n"
        f"  podman_ids_dir: {ids_dir}\n"
        f"  firecracker_ids_dir: {ids_dir}\n"
        f"  podman_storage_conf: {storage}\n"
        f"  firecracker_registry_dir: {root / 'firecracker'}\n"
    )
    env = dict(os.environ)
    env["FLAKES_CONFIG"] = str(config)
    env["PATH"] = f"{bin_dir}:{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return Prefix(root, config, flakes_dir, ids_dir, bin_dir, storage, env)


@pytest.fixture
def prefix(tmp_path: Path, system_storage: Path) -> Iterator[Prefix]:
    """A fresh system-scope flake prefix using the shared root storage."""
    p = make_prefix(tmp_path / "prefix", system_storage)
    yield p
    # remove containers a failed test may have left
    for cid_file in p.ids_dir.glob("*/*.cid"):
        cid = cid_file.read_text().strip()
        if cid:
            podman("rm", "-f", "-t", "0", cid, storage=system_storage, check=False)
