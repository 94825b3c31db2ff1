"""firecracker-pilot with the REAL Firecracker binary and the tiny bare-metal guest.

The guest prints a greeting and the kernel command line it got on the serial port, so the
generated VM definition is proven accepted (boot args, one virtio device per drive/NIC/vsock).
A Linux guest with sci cannot boot here (KVM is PVM), so sessions over vsock are covered by
tests/test_fc_pilot_session.py and scripts/vm-e2e.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import TEST_USER, need_root, need_test_user
from firecracker_fixtures import VmPrefix, alive, wait_for


def virtio_devices(cmdline: str) -> int:
    return cmdline.count("virtio_mmio.device=")


def cmdline_of(stdout: str) -> str:
    lines = [ln for ln in stdout.replace("\r", "").splitlines() if ln.startswith("CMDLINE:")]
    assert lines, f"no CMDLINE line in {stdout!r}"
    return lines[0][len("CMDLINE:") :]


def running_vm(vp: VmPrefix, meta: str) -> int:
    """Wait for the instance file of *meta* to name a live firecracker process; its PID."""
    vmid = vp.state / f"{meta}.vmid"

    def pid() -> int | None:
        try:
            value = int(vmid.read_text())
        except (OSError, ValueError):
            return None
        try:
            return value if Path(f"/proc/{value}/comm").read_text().strip() == "firecracker" else None
        except OSError:
            return None

    return int(wait_for(pid, what=f"{vmid} to name a running firecracker"))  # type: ignore[arg-type]


def test_serial_one_shot_boots_and_cleans_up(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("hello", overlay_size="32MiB")
    res = vm_prefix.prefix.app("hello", "-c", "ls -l /", "@work", timeout=30)
    assert res.returncode == 0, res.stderr
    assert "HELLO-FROM-TINY-GUEST" in res.stdout
    cmd = cmdline_of(res.stdout)
    assert """run="/bin/hello -c 'ls -l /'\"""" in cmd
    assert "overlay_root=/dev/vdb" in cmd and "quiet" in cmd.split() and "loglevel=0" in cmd.split()
    assert virtio_devices(cmd) == 3  # rootfs, overlay, vsock
    assert res.stderr == ""  # firecracker's own log never reaches the caller
    assert vm_prefix.files() == set()  # instance file, overlay, socket, log: all gone


def test_read_only_instance_without_overlay(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("ro")
    res = vm_prefix.prefix.app("ro", timeout=30)
    assert res.returncode == 0, res.stderr
    cmd = cmdline_of(res.stdout)
    assert virtio_devices(cmd) == 2 and "overlay_root" not in cmd  # rootfs (read-only) + vsock


def test_instance_files_while_running_and_sigkill_kills_vm(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("hang", guest="hang", overlay_size="16MiB")
    launcher = vm_prefix.popen("hang", "@one")
    try:
        pid = running_vm(vm_prefix, "hang@one")
        expected = {"hang@one.vmid", "hang@one.run.ext2", "sci_cmd_hang@one.sock", "hang@one.fc.log"}
        wait_for(lambda: expected <= vm_prefix.files(), what=f"instance files {expected}")
        assert (vm_prefix.state / "hang@one.vmid").stat().st_mode & 0o777 == 0o600
        assert vm_prefix.state.stat().st_mode & 0o777 == 0o700
        launcher.kill()  # SIGKILL: no cleanup code of the launcher runs
        launcher.wait()
        wait_for(lambda: not alive(pid), what=f"firecracker {pid} to die with its launcher")
    finally:
        launcher.kill()
        launcher.communicate()
    assert "hang@one.vmid" in vm_prefix.files()  # stale now; the next call reaps it
    vm_prefix.register("hello")
    res = vm_prefix.prefix.app("hello", env={"PILOT_DEBUG": "1"}, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "reaped stale instances: hang@one" in res.stderr
    assert vm_prefix.files() == set()


def test_sigterm_stops_vm_and_cleans_up(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("hang", guest="hang", overlay_size="16MiB")
    launcher = vm_prefix.popen("hang")
    pid = running_vm(vm_prefix, "hang")
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=15)
    assert launcher.returncode == 128 + signal.SIGTERM, err
    assert not alive(pid)
    assert vm_prefix.files() == set()


def test_instance_in_use_and_separate_instance(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("hang", guest="hang")
    launcher = vm_prefix.popen("hang")
    try:
        running_vm(vm_prefix, "hang")
        res = vm_prefix.prefix.app("hang", timeout=30)
        assert res.returncode == 125
        assert res.stderr.startswith("hang: instance hang is in use") and "@NAME" in res.stderr
        second = vm_prefix.popen("hang", "@other")
        try:
            assert running_vm(vm_prefix, "hang@other") != running_vm(vm_prefix, "hang")
        finally:
            second.kill()
            second.communicate()
    finally:
        launcher.kill()
        launcher.communicate()


def test_firecracker_failure_is_one_line_and_leaves_only_its_log(vm_prefix: VmPrefix, tmp_path: Path) -> None:
    rootfs = tmp_path / ("r" * 200) / ("no-such-rootfs-" + "n" * 100)  # named in a reason of 300+ characters
    vm_prefix.register("broken", overlay_size="16MiB", extra="")
    config = vm_prefix.prefix.flakes_dir / "broken.yaml"
    config.write_text(config.read_text().replace(str(vm_prefix.rootfs), str(rootfs)))
    res = vm_prefix.prefix.app("broken", timeout=30)
    assert res.returncode == 125
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("broken: firecracker exited with 1")
    assert str(rootfs) in res.stderr
    kept = vm_prefix.state / "broken.failed.log"
    assert res.stderr.rstrip().endswith(f"(log: {kept})")  # the whole reason, then where the log is
    reason = res.stderr[len("broken: firecracker exited with 1: ") : -len(f" (log: {kept})\n")]
    assert len(reason) > 300 and reason in kept.read_text()
    assert vm_prefix.files() == {"broken.failed.log"}  # instance files and overlay gone; the log is kept


def test_resume_first_start_failure_leaves_no_overlay_or_lock(vm_prefix: VmPrefix, tmp_path: Path) -> None:
    vm_prefix.register("rfail", resume=True, overlay_size="64MiB", kernel=str(tmp_path / "no-such-kernel"))
    res = vm_prefix.prefix.app("rfail", timeout=30)
    assert res.returncode == 125 and res.stderr.count("\n") == 1, res.stderr
    assert "kernel file cannot be opened" in res.stderr
    left = {p.name for p in vm_prefix.state.iterdir()}
    assert left == {"rfail.failed.log"}  # no rfail.ext2 (the 64 MiB overlay), no rfail.lock


def test_force_vsock_guest_without_sci(vm_prefix: VmPrefix) -> None:
    """A guest that never answers on vsock: a clear error, the VM is gone, nothing left."""
    vm_prefix.register("nosci", force_vsock=True)
    res = vm_prefix.prefix.app("nosci", timeout=30)
    assert res.returncode == 125
    assert "ended before its guest answered" in res.stderr
    assert res.stderr.rstrip().endswith(f"(log: {vm_prefix.state / 'nosci.failed.log'})")
    assert vm_prefix.files() == {"nosci.failed.log"}


def test_resume_concurrent_first_calls_boot_one_vm(vm_prefix: VmPrefix) -> None:
    """Two first calls of a resume flake at once: exactly one VM is booted (the other waits on the
    lock and reuses it). The guest has no sci, so both give up after PILOT_BOOT_TIMEOUT and the
    caller that booted the VM removes it again."""
    vm_prefix.register("rs", guest="hang", resume=True)
    env = {"PILOT_DEBUG": "1", "PILOT_BOOT_TIMEOUT": "1.5"}
    calls = [vm_prefix.popen("rs", env=env) for _ in range(2)]
    results = [c.communicate(timeout=30) for c in calls]
    errs = [err for _, err in results]
    assert sum("started firecracker pid" in e for e in errs) == 1, errs
    assert sum("reusing VM pid" in e for e in errs) == 1, errs
    assert all(c.returncode == 125 for c in calls)
    assert any("no answer from sci on vsock port 52" in e for e in errs)
    (booted,) = (int(e.split("started firecracker pid ")[1].split()[0]) for e in errs if "started firecracker" in e)
    assert not alive(booted)  # the caller that booted the never-answering VM removed it
    assert vm_prefix.files() == set()


def test_resume_vm_outlives_caller_session(vm_prefix: VmPrefix) -> None:
    """A resume VM is started in its own session (terminal hang-up does not kill it) and without
    the die-with-launcher signal; its PID is recorded while the caller waits for the guest."""
    vm_prefix.register("rs", guest="hang", resume=True)
    launcher = vm_prefix.popen("rs", env={"PILOT_BOOT_TIMEOUT": "30"})
    try:
        pid = running_vm(vm_prefix, "rs")
        assert os.getsid(pid) == pid != os.getsid(launcher.pid)
        launcher.kill()
        launcher.wait()
        # not a one-shot VM: it survives the launcher's death (a later call would reuse it)
        with open(f"/proc/{pid}/status") as st:
            assert "firecracker" in st.readline()
        assert alive(pid)
    finally:
        launcher.kill()
        launcher.communicate()
        os.kill(pid, signal.SIGKILL)


def test_tap_created_attached_and_removed(vm_prefix: VmPrefix) -> None:
    need_root("creating TAP devices needs CAP_NET_ADMIN")
    vm_prefix.register("net", guest="hang", boot_args=("console=ttyS0", "ip=dhcp"))
    dev = Path("/sys/class/net/tap-net@t1")
    assert not dev.exists()
    launcher = vm_prefix.popen("net", "@t1")
    try:
        running_vm(vm_prefix, "net@t1")
        wait_for(dev.exists, what="the TAP device")
        assert (dev / "owner").read_text().strip() == str(os.getuid())
        assert (vm_prefix.state / "net@t1.tap").read_text() == "tap-net@t1"
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.communicate(timeout=15)
    assert launcher.returncode == 128 + signal.SIGTERM
    assert not dev.exists()  # this launcher created it, so it removed it
    assert vm_prefix.files() == set()


def test_tap_existing_device_kept(vm_prefix: VmPrefix) -> None:
    need_root("creating TAP devices needs CAP_NET_ADMIN")
    subprocess.run(["ip", "tuntap", "add", "dev", "tap-net2", "mode", "tap"], check=True)
    try:
        static_ip = "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"
        vm_prefix.register("net2", boot_args=("console=ttyS0", static_ip))
        res = vm_prefix.prefix.app("net2", timeout=30)
        assert res.returncode == 0, res.stderr
        assert virtio_devices(cmdline_of(res.stdout)) == 3  # rootfs, NIC, vsock
        assert Path("/sys/class/net/tap-net2").exists()  # not ours: left alone
    finally:
        subprocess.run(["ip", "tuntap", "del", "dev", "tap-net2", "mode", "tap"], check=False)


def _as_test_user(vm_prefix: VmPrefix, tmp_path: Path, app: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run *app* as the unprivileged test user (no /dev/kvm access, no CAP_NET_ADMIN)."""
    user = need_test_user()
    vm_prefix.prefix.ids_dir.mkdir(mode=0o755)
    os.chmod(vm_prefix.prefix.ids_dir, 0o1777)  # like /tmp/flakes: shared base, private <uid> dirs
    for p in (tmp_path, *tmp_path.parents):
        if p == Path("/"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o005)
    res = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", str(vm_prefix.prefix.bin_dir / app)],
        env=vm_prefix.prefix.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res, user.pw_uid


def test_tap_not_permitted_is_a_clear_error(vm_prefix: VmPrefix, tmp_path: Path) -> None:
    # QEMU needs no /dev/kvm (TCG): the TAP device is the first thing the test user may not do
    vm_prefix.register("net3", boot_args=("console=ttyS0", "ip=dhcp"), runtime={"vmm": "qemu", "network": "tap"})
    res, uid = _as_test_user(vm_prefix, tmp_path, "net3")
    assert res.returncode == 125, res.stderr
    assert res.stderr.startswith("net3: cannot create TAP device tap-net3:")
    assert f"ip tuntap add dev tap-net3 mode tap user {uid}" in res.stderr


def test_kvm_access_checked_before_firecracker_starts(vm_prefix: VmPrefix, tmp_path: Path) -> None:
    """/dev/kvm is root's only here (0600): the test user gets one line saying what to do, and
    nothing is made for the instance (no overlay, no TAP device, no Firecracker)."""
    if os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm is open to every user on this host: nothing to refuse")
    vm_prefix.register("kvmless", overlay_size="16MiB", boot_args=("console=ttyS0", "ip=dhcp"))
    res, uid = _as_test_user(vm_prefix, tmp_path, "kvmless")
    assert res.returncode == 125, res.stderr
    assert res.stderr == (
        f"kvmless: /dev/kvm: no read/write access for uid {uid}: Firecracker needs it; add the user to the "
        "group owning it (usermod -aG kvm USER, then log in again) or register the flake with --vmm qemu\n"
    )
    state = vm_prefix.prefix.ids_dir / str(uid)
    assert not state.exists() or not [p.name for p in state.iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("guest", ["reset", "hang"])
def test_serial_console_terminal_restored(vm_prefix: VmPrefix, guest: str) -> None:
    """Firecracker makes the console terminal raw (so Ctrl-C goes to the guest as a byte) and
    leaves it raw when it is killed: the launcher restores the caller's terminal mode."""
    import pty
    import select
    import termios

    vm_prefix.register("tty", guest=guest)
    master, slave = pty.openpty()
    try:
        launcher = subprocess.Popen(
            [str(vm_prefix.prefix.bin_dir / "tty")],
            env=vm_prefix.prefix.env,
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
        seen = bytearray()

        def greeted() -> bool:
            if select.select([master], [], [], 0.05)[0]:
                seen.extend(os.read(master, 65536))
            return b"HELLO-FROM-TINY-GUEST" in seen

        wait_for(greeted, what="the guest's greeting on the terminal")
        if guest == "hang":
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # raw while the VM runs
            launcher.send_signal(signal.SIGTERM)
        launcher.communicate(timeout=30)
        assert launcher.returncode == (0 if guest == "reset" else 128 + signal.SIGTERM)
        assert termios.tcgetattr(slave)[3] & termios.ICANON  # canonical mode is back
    finally:
        os.close(master)
        os.close(slave)


def test_debug_keeps_guest_console_in_the_log(vm_prefix: VmPrefix) -> None:
    """vsock mode: the console is off the caller's output; with PILOT_DEBUG it goes to the log."""
    vm_prefix.register("dbg", guest="hang", force_vsock=True)
    launcher = vm_prefix.popen("dbg", env={"PILOT_DEBUG": "1", "PILOT_BOOT_TIMEOUT": "30"})
    try:
        log = vm_prefix.state / "dbg.fc.log"

        def cmdline_logged() -> bool:  # the guest prints HELLO, then CMDLINE:<args>\r\n
            data = log.read_bytes() if log.exists() else b""
            return b"HELLO-FROM-TINY-GUEST" in data and b"\n" in data.partition(b"CMDLINE:")[2]

        wait_for(cmdline_logged, what="console in the log")
        assert "PILOT_DEBUG=1" in log.read_text(errors="replace")  # the command line the guest printed
    finally:
        launcher.kill()
        out, _ = launcher.communicate()
    assert "HELLO" not in out


def test_serial_start_path_imports_no_heavy_modules(vm_prefix: VmPrefix) -> None:
    """The launcher runs on every call: its serial one-shot path must not import modules it does
    not need (a guard on the import list, not a timing test). With the registration cache warm,
    not even PyYAML, typing, dataclasses, enum, re or json."""
    import time

    vm_prefix.register("imp")
    past = time.time() - 10  # old inputs: no content check on a hit
    for f in (vm_prefix.prefix.flakes_dir / "imp.yaml", vm_prefix.prefix.config):
        os.utime(f, (past, past))
    heavy = {
        "subprocess",
        "hashlib",
        "socket",
        "tempfile",
        "shutil",
        "glob",
        "logging",
        "http.client",
        "argparse",
        "flake_pilot.protocol",
        "threading",
    }
    for run in ("parse", "cached"):
        res = vm_prefix.prefix.app("imp", env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=30)
        assert res.returncode == 0, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("import time:")]
        modules = {ln.rsplit("|", 1)[1].strip() for ln in lines}
        assert "flake_pilot" in modules  # the listing works (the warm modules may come preloaded: _preload)
        assert ("yaml" in modules) == (run == "parse")
        warm = {
            "typing",
            "dataclasses",
            "inspect",
            "enum",
            "ast",
            "re",
            "json",
            "ctypes",
            "shlex",
            "flake_pilot.flakeconf",
            "flake_pilot.settings",
        }  # ~30 ms of imports a warm launch skips
        assert modules & (heavy | (warm if run == "cached" else set())) == set()


def test_socket_path_too_long_is_refused(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("long")
    res = vm_prefix.prefix.app("long", "@" + "n" * 63, timeout=30)
    assert res.returncode == 125
    assert "longer than a Unix socket path may be" in res.stderr and res.stderr.count("\n") == 1
    assert vm_prefix.files() == set()
