"""VM flakes end to end under QEMU: ``flake-ctl firecracker pull`` (file:// images built by
scripts/build-guest.sh: Debian cloud kernel, initrd, rootfs; --install-sci) -> ``register --vmm
qemu`` -> the app symlink -> firecracker-pilot -> QEMU (TCG here: KVM is PVM) -> Linux -> sci ->
a session over virtio-serial.

Five boots in all (TCG boots take seconds): a one-shot call carrying the process contract, a
one-shot call killed with SIGKILL, one resume VM that takes every other case, and a second
instance of it (@NAME). The failure cases start no guest.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import STATE, Prefix, make_prefix, need_root
from flake_pilot.launch.firecracker import vmdef
from guest import GuestImages, guest_images

pytestmark = [pytest.mark.qemu, pytest.mark.root]  # guests built with debootstrap, booted under QEMU
ARGS = ["a b", "'single'", '"double"', "", "new\nline", "back\\slash", "*", "$HOME", "-c"]


@dataclass
class Deb:
    prefix: Prefix
    state: Path
    include_dir: Path

    def popen(self, app: str, *args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            [str(self.prefix.bin_dir / app), *args], env={**self.prefix.env, **(env or {})}, **kw
        )

    def run(self, app: str, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str, str]:
        res = self.prefix.app(app, *args, input=stdin, env=env, text=False, timeout=180)
        return res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")

    def files(self) -> set[str]:
        if not self.state.exists():
            return set()
        return {p.name for p in self.state.iterdir()}

    def vm_pid(self, meta: str, timeout: float = 60) -> int:
        vmid = self.state / f"{meta}.vmid"
        deadline = time.monotonic() + timeout
        while not vmid.exists() or not vmid.read_text().strip():
            assert time.monotonic() < deadline, f"no {vmid}"
            time.sleep(0.01)
        return int(vmid.read_text())


def qemu_alive(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return comm.startswith("qemu-system") and state != "Z"


def wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while qemu_alive(pid):
        assert time.monotonic() < deadline, f"QEMU pid {pid} still runs"
        time.sleep(0.02)


def read_until(fd: int, marker: bytes, timeout: float = 120) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout:g} s: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {marker!r}: {seen!r}"
            seen += chunk
    return seen


@pytest.fixture(scope="module")
def images() -> GuestImages:
    need_root("the guest images are built with debootstrap")
    return guest_images()


@pytest.fixture(scope="module")
def deb(images: GuestImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deb]:
    root = tmp_path_factory.mktemp("qemu-e2e")
    prefix = make_prefix(root / "prefix", root / "no-podman-storage")
    prefix.env["XDG_CACHE_HOME"] = str(root / "cache")
    pull = prefix.ctl(
        "firecracker",
        "pull",
        "--name",
        "deb",
        "--rootfs",
        f"file://{images.rootfs}",
        "--kernel",
        f"file://{images.kernel.with_name('vmlinux')}",  # the ELF Firecracker takes: QEMU boots it too (PVH)
        "--initrd",
        f"file://{images.initrd}",
        "--install-sci",
        timeout=300,
    )
    assert pull.returncode == 0, pull.stderr
    assert "guest: sci present, python3 present" in pull.stdout
    # not under /tmp: the guest mounts a tmpfs there, over what the overlay holds
    include_dir = Path(tempfile.mkdtemp(prefix="qemu-e2e-include-", dir=STATE))
    (include_dir / "tree").mkdir(parents=True)
    (include_dir / "tree" / "from-path").write_text("included by path\n")
    (root / "tar-src" / "etc").mkdir(parents=True)
    (root / "tar-src" / "etc" / "from-tar").write_text("included by tar\n")
    subprocess.run(["tar", "-C", str(root / "tar-src"), "-cf", str(root / "inc.tar"), "etc"], check=True)
    common = ["--vm", "deb", "--vmm", "qemu", "--target", "/bin/sh", "--overlay-size", "64MiB"]
    for app, extra in (
        ("vsh", ["--no-net"]),
        # networking on (ip=dhcp in the boot args): a user-mode network NIC, no TAP device
        ("rsh", ["--resume", "--include-tar", str(root / "inc.tar"), "--include-path", str(include_dir / "tree")]),
    ):
        reg = prefix.ctl("firecracker", "register", "--app", str(prefix.bin_dir / app), *common, *extra)
        assert reg.returncode == 0, reg.stderr
        # a drop-in: a smaller VM than register's 4096 MiB and 2 vCPUs boots faster under TCG
        (prefix.flakes_dir / f"{app}.d").mkdir(exist_ok=True)
        (prefix.flakes_dir / f"{app}.d" / "size.yaml").write_text(
            "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n"
        )
    d = Deb(prefix, prefix.ids_dir / str(os.getuid()), include_dir)
    yield d
    for vmid in d.state.glob("*.vmid") if d.state.exists() else ():
        try:
            pid = int(vmid.read_text())
        except (OSError, ValueError):
            continue
        if qemu_alive(pid):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(include_dir, ignore_errors=True)


def test_registration_records_qemu_and_sessions(deb: Deb) -> None:
    runtime = yaml.safe_load((deb.prefix.flakes_dir / "vsh.yaml").read_text())["vm"]["runtime"]
    # the pull installed our sci: every call is a sci session, one-shot ones too
    assert (runtime["vmm"], runtime["console"], runtime["network"]) == ("qemu", False, "user")
    assert os.readlink(deb.prefix.bin_dir / "vsh").endswith("/firecracker-pilot")


def test_one_shot_process_contract(deb: Deb) -> None:
    data = os.urandom(3 * 1024 * 1024) + b"\0tail"  # several MB, binary
    script = 'cat; printf "<%s>" "$@" >&2; test -t 0 || echo " no-tty" >&2; exit 42'
    t0 = time.monotonic()
    res = deb.prefix.app("vsh", "-c", script, "sh", *ARGS, input=data, text=False, timeout=180)
    elapsed = time.monotonic() - t0
    assert res.returncode == 42, res.stderr
    assert res.stdout == data  # byte-identical; cat ended, so EOF arrived
    # stderr apart, the arguments exactly as given, no terminal without one on the caller's side
    assert res.stderr.decode() == "".join(f"<{a}>" for a in ARGS) + " no-tty\n"
    print(f"\none-shot call (QEMU TCG boot, 3 MiB stdin): {elapsed:.2f} s")
    assert deb.files() == set()  # VM gone; instance files, overlay, sockets, locks: none left


def test_one_shot_sigkill_of_the_launcher_takes_the_vm(deb: Deb, tmp_path: Path) -> None:
    launcher = deb.popen(
        "vsh", "@k", "%progress", "-c", "echo ready; sleep 600", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert launcher.stdout is not None and launcher.stderr is not None
        read_until(launcher.stdout.fileno(), b"ready\n")
        pid = deb.vm_pid("vsh@k")
        assert qemu_alive(pid)
        launcher.kill()  # SIGKILL: none of the launcher's cleanup runs
        launcher.wait()
        wait_gone(pid)  # PR_SET_PDEATHSIG took the VM with it
        err = launcher.stderr.read().decode()
    finally:
        launcher.kill()
        launcher.wait()
    # %progress says once how the VM runs
    assert "vsh@k: starting the VM under QEMU with " in err and err.count("starting the VM") == 1
    assert "vsh@k.vmid" in deb.files()  # stale now: the next call of any flake reaps it
    # a call that fails to start (no guest boots) reaps it, and leaves only its named log
    config = deb.prefix.flakes_dir / "vsh.yaml"
    bad = deb.prefix.flakes_dir / "vbad.yaml"
    not_a_kernel = tmp_path / "not-a-kernel"
    not_a_kernel.write_bytes(b"\0" * 4096)
    tree = yaml.safe_load(config.read_text())
    tree["vm"]["runtime"]["firecracker"]["kernel_image_path"] = str(not_a_kernel)
    tree["vm"]["host_app_path"] = str(deb.prefix.bin_dir / "vbad")
    bad.write_text(yaml.safe_dump(tree))
    (deb.prefix.bin_dir / "vbad").symlink_to(os.readlink(deb.prefix.bin_dir / "vsh"))
    status, out, err = deb.run("vbad", "-c", "true", env={"PILOT_DEBUG": "1"})
    assert status == 125
    assert "reaped stale instances: vsh@k" in err
    kept = deb.state / "vbad.failed.log"
    line = [x for x in err.splitlines() if x.startswith("vbad: VM")]
    assert len(line) == 1 and line[0].startswith("vbad: VM vbad ended before its guest answered: ")
    assert line[0].endswith(f" (log: {kept})")
    assert kept.read_text().strip()
    status, out, err = deb.run("vbad", "-c", "true")
    assert status == 125 and err.count("\n") == 1 and "Traceback" not in err
    assert deb.files() == {"vbad.failed.log"}


def test_ctrl_c_while_the_vm_boots(deb: Deb) -> None:
    """SIGINT before the guest answered: the call gives up at once (130, the launcher's one line,
    as for any interrupt of its own work), the VM and the instance's files go."""
    launcher = deb.popen("vsh", "@c", "-c", "echo never", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = deb.vm_pid("vsh@c")
    assert qemu_alive(pid)
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=30)
    assert (launcher.returncode, out, err) == (130, b"", b"vsh: interrupted\n")
    assert not qemu_alive(pid)
    assert not {n for n in deb.files() if n.startswith(("vsh@c", "sci_cmd_vsh@c"))}


def test_resume_first_start_failure_leaves_no_overlay_or_lock(deb: Deb, tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "not-a-kernel"
    not_a_kernel.write_bytes(b"\0" * 4096)
    tree = yaml.safe_load((deb.prefix.flakes_dir / "rsh.yaml").read_text())
    tree["vm"]["runtime"]["firecracker"]["kernel_image_path"] = str(not_a_kernel)
    tree["vm"]["host_app_path"] = str(deb.prefix.bin_dir / "rbad")
    (deb.prefix.flakes_dir / "rbad.yaml").write_text(yaml.safe_dump(tree))
    (deb.prefix.bin_dir / "rbad").symlink_to(os.readlink(deb.prefix.bin_dir / "rsh"))
    status, _, err = deb.run("rbad", "-c", "true")
    assert status == 125 and err.startswith("rbad: VM rbad ended before its guest answered: ")
    assert err.count("\n") == 1
    left = {n for n in deb.files() if n.startswith(("rbad", "sci_cmd_rbad"))}
    assert left == {"rbad.failed.log"}  # no rbad.ext2 (64 MiB overlay), no rbad.lock, no port locks


def test_resume_vm_serves_every_case(deb: Deb) -> None:
    t0 = time.monotonic()
    status, out, err = deb.run(
        "rsh",
        "-c",
        f"cat /etc/from-tar {deb.include_dir}/tree/from-path; echo kept > /root/persist; exit 0",
    )
    first = time.monotonic() - t0
    assert (status, out) == (0, "included by tar\nincluded by path\n"), err
    pid = deb.vm_pid("rsh")
    assert qemu_alive(pid)  # kept after the program ended
    mac = vmdef.guest_mac(os.getuid(), "rsh").lower()
    assert deb.run("rsh", "-c", "cat /sys/class/net/eth0/address") == (0, mac + "\n", "")  # the user-mode NIC
    assert not (deb.state / "rsh.tap").exists()
    show = deb.prefix.ctl("firecracker", "show", "--format", "json")
    assert show.returncode == 0, show.stderr
    listed = {r["name"]: (r["status"], r["id"]) for r in json.loads(show.stdout)}
    assert listed["rsh"] == ("running", str(pid))  # flake-ctl knows a QEMU instance runs

    t0 = time.monotonic()
    assert deb.run("rsh", "-c", "cat /root/persist") == (0, "kept\n", "")  # files live on between calls
    later = time.monotonic() - t0
    print(f"\nresume: first call (boot) {first:.2f} s, a later call {later:.3f} s")
    assert deb.run("rsh", "-c", "/nonexistent/prog")[0] == 127
    assert deb.run("rsh", "-c", "exit 0")[0] == 0
    status, out, _ = deb.run("rsh", "-c", 'printf "<%s>" "$@"', "sh", *ARGS)
    assert (status, out) == (0, "".join(f"<{a}>" for a in ARGS))

    # two sessions at once: A finishes only because B runs while A waits
    a = deb.popen(
        "rsh", "-c", "rm -f /tmp/f; mkfifo /tmp/f; echo ready; cat /tmp/f; echo a-done", stdout=subprocess.PIPE
    )
    assert a.stdout is not None
    seen = read_until(a.stdout.fileno(), b"ready\n")
    assert deb.run("rsh", "-c", "echo from-b > /tmp/f")[0] == 0
    rest, _ = a.communicate(timeout=60)
    assert a.returncode == 0 and seen + rest == b"ready\nfrom-b\na-done\n"

    # SIGTERM to the launcher reaches the program: 128+N
    p = deb.popen("rsh", "-c", "echo ready; exec sleep 600", stdout=subprocess.PIPE)
    assert p.stdout is not None
    read_until(p.stdout.fileno(), b"ready\n")
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM
    # SIGINT too: the program's trap runs and chooses the exit status
    trap = 'trap "echo got-int; exit 7" INT; echo ready; while :; do sleep 0.1; done'
    p = deb.popen("rsh", "-c", trap, stdout=subprocess.PIPE)
    assert p.stdout is not None
    read_until(p.stdout.fileno(), b"ready\n")
    p.send_signal(signal.SIGINT)
    out_b, _ = p.communicate(timeout=60)
    assert (p.returncode, out_b) == (7, b"got-int\n")

    # a terminal only with one on the caller's side, of the caller's size
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    p = deb.popen(
        "rsh", "-c", "stty size; tty; exit 3", stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the launcher closed the terminal
            break
        if not chunk:
            break
        got += chunk
    p.wait(60)
    os.close(master)
    lines = got.replace(b"\r", b"").splitlines()
    assert p.returncode == 3 and lines[0] == b"30 100" and lines[1].startswith(b"/dev/pts/"), got

    # @NAME: another VM with its own overlay, beside the first
    status, out, _ = deb.run("rsh", "@two", "-c", "cat /root/persist 2>/dev/null || echo absent")
    assert (status, out) == (0, "absent\n")
    two = deb.vm_pid("rsh@two")
    assert two != pid and qemu_alive(two) and qemu_alive(pid)
    assert deb.run("rsh", "-c", "cat /root/persist") == (0, "kept\n", "")
    os.kill(two, signal.SIGTERM)
    wait_gone(two)

    # the registration changes (a drop-in): a call while another runs in the VM still uses it;
    # the next call, with none running, stops it and gets a new VM of the new registration
    mem = "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2"
    status, old_mem, _ = deb.run("rsh", "-c", mem)
    assert status == 0 and int(old_mem) > 0
    a = deb.popen("rsh", "-c", "rm -f /tmp/f; mkfifo /tmp/f; echo ready; cat /tmp/f", stdout=subprocess.PIPE)
    assert a.stdout is not None
    read_until(a.stdout.fileno(), b"ready\n")
    dropin = deb.prefix.flakes_dir / "rsh.d" / "size.yaml"
    dropin.write_text(dropin.read_text().replace("mem_size_mib: 256", "mem_size_mib: 320"))
    status, out, err = deb.run("rsh", "-c", "echo from-b > /tmp/f; cat /root/persist", env={"PILOT_DEBUG": "1"})
    assert (status, out) == (0, "kept\n"), err
    assert "still runs calls: kept for now" in err
    rest, _ = a.communicate(timeout=60)
    assert (a.returncode, rest) == (0, b"from-b\n")
    assert deb.vm_pid("rsh") == pid and qemu_alive(pid)
    status, out, err = deb.run(
        "rsh", "-c", f"cat /root/persist 2>/dev/null || echo absent; {mem}", env={"PILOT_DEBUG": "1"}
    )
    assert status == 0 and f"stopping idle VM pid {pid}" in err, err
    fresh, new_mem = out.splitlines()
    assert fresh == "absent"  # a new instance: a new overlay, as a replaced resume container
    assert int(new_mem) > int(old_mem)  # the new registration's VM answered
    new = deb.vm_pid("rsh")
    assert new != pid and qemu_alive(new) and not qemu_alive(pid)
    assert deb.run("rsh", "-c", "echo again")[1] == "again\n"  # unchanged now: the same VM
    assert deb.vm_pid("rsh") == new
    os.kill(new, signal.SIGTERM)
    wait_gone(new)
