"""Fixtures for firecracker-pilot tests: the real Firecracker binary (pinned download), the tiny
bare-metal guests, and a private flake prefix with VM registrations written as YAML.

The fixtures are loaded by ``conftest.py`` (``pytest_plugins``); test modules import the helpers
(``VmPrefix``, ``alive``, ``wait_for``) from here.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, STATE, Prefix, make_prefix, need

ROOT = Path(__file__).resolve().parent.parent
FC_BIN = STATE / "bin" / "firecracker"
GUEST_DIR = STATE / "guest"


@pytest.fixture(scope="session")
def firecracker_bin() -> Path:
    """The genuine Firecracker v1.12.1 (downloaded and sha256-checked by the setup script)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "get-firecracker.sh"), str(FC_BIN.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    need(proc.returncode == 0, f"scripts/get-firecracker.sh failed: {proc.stderr.strip()}")
    return FC_BIN


@pytest.fixture(scope="session")
def tiny_guest() -> dict[str, Path]:
    """The bare-metal guests: 'reset' prints and ends the VM, 'hang' prints and halts forever."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-tiny-guest.sh"), str(GUEST_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    need(proc.returncode == 0, f"scripts/build-tiny-guest.sh failed: {proc.stderr.strip()}")
    return {"reset": GUEST_DIR / "tiny.elf", "hang": GUEST_DIR / "tiny-hang.elf"}


@pytest.fixture(scope="session")
def kvm(firecracker_bin: Path, tiny_guest: dict[str, Path]) -> None:
    """A usable /dev/kvm: without it Firecracker cannot start any VM on this host."""
    need(
        os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible: Firecracker cannot start a VM"
    )


@dataclass
class VmPrefix:
    prefix: Prefix
    rootfs: Path
    guest: dict[str, Path]

    @property
    def state(self) -> Path:
        return self.prefix.ids_dir / str(os.getuid())

    def register(
        self,
        app: str,
        *,
        guest: str = "reset",
        resume: bool = False,
        force_vsock: bool = False,
        overlay_size: str | None = None,
        boot_args: tuple[str, ...] = ("console=ttyS0",),
        kernel: str | None = None,
        extra: str = "",
        target: str | None = None,
        runtime: dict[str, str] | None = None,
    ) -> Path:
        """Write a registration in the original's YAML shape and the app symlink; *runtime*: more
        ``vm.runtime`` keys (vmm, console, network)."""
        args = ", ".join(f'"{a}"' for a in boot_args)
        more = "".join(f"    {key}: {value}\n" for key, value in (runtime or {}).items())
        yaml = (
            f"{extra}vm:\n"
            f"  name: tiny\n"
            f"  target_app_path: {target or '/bin/' + app}\n"
            f"  host_app_path: {self.prefix.bin_dir / app}\n"
            f"  runtime:\n"
            f"    runas: root\n"
            f"    resume: {str(resume).lower()}\n"
            f"    force_vsock: {str(force_vsock).lower()}\n"
            f"{more}"
            f"    firecracker:\n"
            f"      boot_args: [{args}]\n"
            f"      overlay_size: {overlay_size or '~'}\n"
            f"      rootfs_image_path: {self.rootfs}\n"
            f"      kernel_image_path: {kernel or self.guest[guest]}\n"
            f"      mem_size_mib: 64\n"
            f"      vcpu_count: 1\n"
        )
        (self.prefix.flakes_dir / f"{app}.yaml").write_text(yaml)
        link = self.prefix.bin_dir / app
        if not link.is_symlink():
            link.symlink_to(BIN / "firecracker-pilot")
        return link

    def popen(self, app: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.prefix.bin_dir / app), *args],
            env={**self.prefix.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def files(self) -> set[str]:
        """The instance files (lock files are permanent and not counted)."""
        if not self.state.exists():
            return set()
        return {p.name for p in self.state.iterdir() if not p.name.endswith(".lock")}


@pytest.fixture
def vm_prefix(tmp_path: Path, kvm: None, firecracker_bin: Path, tiny_guest: dict[str, Path]) -> Iterator[VmPrefix]:
    p = make_prefix(tmp_path / "prefix", tmp_path / "no-podman-storage")
    with p.config.open("a") as f:
        f.write(f"  firecracker_binary: {firecracker_bin}\n")
    p.env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the launcher's registration cache
    rootfs = tmp_path / "rootfs.img"
    with rootfs.open("wb") as f:
        f.truncate(4 * 1024 * 1024)  # the bare-metal guest never reads it; Firecracker needs a drive
    vp = VmPrefix(p, rootfs, tiny_guest)
    yield vp
    for vmid in vp.state.glob("*.vmid") if vp.state.exists() else ():
        try:
            pid = int(vmid.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "firecracker":
                os.kill(pid, 9)
        except (ValueError, OSError):
            pass


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll *check* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def firecracker_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "firecracker":
                    pids.add(int(entry))
            except OSError:
                pass
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
