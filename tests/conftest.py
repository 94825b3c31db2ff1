"""Shared fixtures: real podman with this machine's settings, a tiny busybox image,
a private flake prefix per test (FLAKES_CONFIG), and helpers to run the installed programs.

Every fixture reaches the tests one way: defined here or in a fixture module named in
``pytest_plugins`` below; test modules import helpers (classes, functions), never fixtures.

The tiers: a test is marked from what it uses (``FIXTURE_MARKS``: the fixtures it requests,
directly or through other fixtures; a module's ``pytestmark`` where it drives an engine or
needs root by itself). ``make check`` runs the tests carrying none of those markers, unprivileged
and without touching the host; ``make test`` runs everything. What a test needs from the host
is checked with ``need()``: a clear failure in ``make test``, a skip naming it in ``make check``.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import reliability

STATE = Path(os.environ.get("FLAKE_STATE", "/var/tmp/flake-pilot"))
BIN = Path(sys.executable).parent  # the venv's bin: flake-ctl, podman-pilot, ...
TEST_USER = os.environ.get("FLAKE_TEST_USER", "flaketest")
BB_IMAGE = "localhost/flake-test/bb:latest"
STORAGE = STATE / "test-storage"


pytest_plugins = ["registry", "firecracker_fixtures", "fc_ctl_fixtures"]

# fixture -> the markers (pyproject.toml, --strict-markers) of every test that requests it, directly
# or through other fixtures
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "system_storage": ("root", "podman"),  # root's podman storage under the state dir
    "local_registry": ("podman",),
    "firecracker_bin": ("firecracker",),
    "tiny_guest": ("firecracker",),
    "kvm": ("firecracker",),
    "user_home": ("root",),  # switches to the test user
}

_tier = "full"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        choices=("full", "check"),
        default="full",
        help="full (make test, the default): a test whose setup is missing (a tool scripts/setup-host.sh --test "
        "installs, root, the test user, /dev/kvm) fails, reliability records go to the state dir; check (make "
        "check): such a test is skipped with the reason, records stay in the run's temp dir",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _tier
    _tier = config.getoption("tier")


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marks = {m for name in getattr(item, "fixturenames", ()) for m in FIXTURE_MARKS.get(name, ())}
        for mark in sorted(marks - {m.name for m in item.iter_markers()}):
            item.add_marker(mark)


def need(ok: object, what: str) -> None:
    """A test's precondition on the host: where *ok* is false, fail naming *what* is missing and
    how to get it (``make test``: the setup must provide it), or skip with that reason
    (``--tier=check``, ``make check``)."""
    if ok:
        return
    if _tier == "check":
        pytest.skip(what)
    pytest.fail(what, pytrace=False)


def need_root(why: str) -> None:
    """Root, which ``make check`` never uses (even when run as root: such a test lacks its marker)."""
    need(os.geteuid() == 0 and _tier != "check", f"needs root: {why}")


def need_program(name: str, package: str, path: str | None = None) -> str:
    """The path of program *name* (looked up in *path*, default PATH), which
    ``scripts/setup-host.sh --test`` installs (Debian *package*)."""
    found = shutil.which(name, path=path)
    need(found, f"{name} is not installed: run `make setup-test` (scripts/setup-host.sh --test installs {package})")
    return str(found)


def need_test_user() -> pwd.struct_passwd:
    """The rootless test user, created by ``scripts/setup-host.sh --test``; switching to it needs root."""
    need_root(f"the test switches to the unprivileged test user {TEST_USER}")
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        need(False, f"test user {TEST_USER} missing: run `make setup-test` (scripts/setup-host.sh --test creates it)")
        raise  # not reached: need() failed or skipped


@pytest.fixture(scope="session", autouse=True)
def _reliability_records(tmp_path_factory: pytest.TempPathFactory) -> None:
    """reliability.record() writes to the state dir in ``make test`` (root); ``make check`` and any
    unprivileged run keep their records in the run's pytest temp dir."""
    if "FLAKE_RELIABILITY_RESULTS" not in os.environ and (_tier == "check" or os.geteuid() != 0):
        reliability.RESULTS = tmp_path_factory.getbasetemp() / "reliability-results"


@pytest.fixture(scope="session", autouse=True)
def _podman_settings() -> None:
    conf = STATE / "podman" / "containers.conf"
    if conf.exists():
        os.environ["CONTAINERS_CONF"] = str(conf)
    os.environ.pop("PILOT_DEBUG", None)


def imported(stderr: str) -> set[str]:
    """Module names in ``-X importtime`` output (``import time: self | cumulative | name``)."""
    return {ln.rsplit("|", 1)[1].strip() for ln in stderr.splitlines() if ln.startswith("import time:")} - {"package"}


def interpreter_modules(python: str) -> set[str]:
    """The built-in modules of *python* and those ``python -IS`` imports before any code."""
    names = subprocess.run(
        [python, "-IS", "-c", "import sys; print(' '.join(sys.builtin_module_names))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    startup = imported(
        subprocess.run([python, "-IS", "-X", "importtime", "-c", "pass"], capture_output=True, text=True).stderr
    )
    return set(names) | startup


def foreign(trace: set[str], python: str = "/usr/bin/python3") -> set[str]:
    """Modules in a launch's import *trace* beyond the interpreter's own, flake_pilot and _ctypes (prctl)."""
    assert "flake_pilot" in trace, sorted(trace)  # the trace is real
    allowed = interpreter_modules(python) | {"_ctypes"}
    return {m for m in trace - allowed if m != "flake_pilot" and not m.startswith("flake_pilot.")}


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
    need_program("podman", "podman")
    need_root("the podman tests share root's image storage under the state dir")
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
