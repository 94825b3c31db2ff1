"""The launcher's vsock channel: a REAL Firecracker VM started from the generated definition,
the launcher's ``CONNECT <port>`` handshake on the UDS path of that definition, and the REAL sci
session code (flake_pilot.sci.session) running the program.

What cannot run here: a Linux guest whose kernel carries vsock (KVM on this host is PVM, see
docs). So, once Firecracker has created its vsock UDS, the test puts a stand-in at that path that
speaks Firecracker's host-side handshake (``CONNECT n`` -> ``OK m``) and hands each connection to
sci's session server, exactly what the guest side does behind the real UDS. scripts/vm-e2e runs
the real guest path on a host with hardware KVM.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
from pathlib import Path

from firecracker_fixtures import VmPrefix, alive, wait_for
from flake_pilot.sci import reaper, session

GUEST_ENV = {"PATH": "/usr/bin:/bin"}


class FakeGuestVsock:
    """Replaces Firecracker's vsock UDS with a listener that answers like Firecracker + sci."""

    def __init__(self, uds: Path) -> None:
        self.uds = uds
        self.ports: list[int] = []
        self.outcomes: list[str] = []
        wait_for(uds.exists, what=f"firecracker to create {uds}")
        uds.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(uds))
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(1)
                if not chunk:
                    return
                line += chunk
            assert line.startswith(b"CONNECT ")
            self.ports.append(int(line.split()[1]))
            conn.sendall(b"OK 1073741824\n")
            fd = conn.fileno()
            outcome = session.serve(fd, fd, reaper.ThreadWaiter(), GUEST_ENV, handshake_timeout=10)
            self.outcomes.append(outcome)

    def close(self) -> None:
        self.listener.close()


SCRIPT = 'echo "out:$1"; echo err >&2; read x; echo "in:$x"; exit 3'


def launch(vp: VmPrefix, app: str, *args: str, stdin: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(vp.prefix.bin_dir / app), *args],
        env={**vp.prefix.env, **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_one_shot_vsock_session_process_contract(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("vs", guest="hang", force_vsock=True, target="/bin/sh", overlay_size="16MiB")
    proc = launch(vm_prefix, "vs", "-c", SCRIPT, "sh", "a b 'c' \"d\"", stdin="hello\n")
    fake = FakeGuestVsock(vm_prefix.state / "sci_cmd_vs.sock")
    try:
        out, err = proc.communicate("hello\n", timeout=30)
    finally:
        fake.close()
    assert proc.returncode == 3, err
    assert out == "out:a b 'c' \"d\"\nin:hello\n"  # arguments arrive exactly, stdin flows
    assert err == "err\n"  # stderr stays separate
    assert fake.ports == [52] and "exit status 3" in fake.outcomes[0]
    assert vm_prefix.files() == set()  # one-shot: VM, instance file, overlay, sockets gone


def test_one_shot_default_for_images_with_sci_is_a_session(vm_prefix: VmPrefix) -> None:
    """console: false (what register writes for an image whose pull installed sci), no
    force_vsock: the one-shot call takes the same session path, nothing on the kernel cmdline."""
    vm_prefix.register("ds", guest="hang", target="/bin/sh", runtime={"console": "false"})
    args = ["a b", "'c'", '"d"', "new\nline", ""]
    proc = launch(vm_prefix, "ds", "-c", 'printf "<%s>" "$@"; echo err >&2; cat; exit 9', "sh", *args, stdin="")
    fake = FakeGuestVsock(vm_prefix.state / "sci_cmd_ds.sock")
    try:
        out, err = proc.communicate("x" * 300_000, timeout=30)
    finally:
        fake.close()
    assert proc.returncode == 9, err
    assert out == "".join(f"<{a}>" for a in args) + "x" * 300_000
    assert err == "err\n" and fake.ports == [52]
    assert vm_prefix.files() == set()


def test_resume_vm_kept_and_reused_by_later_calls(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("rs", guest="hang", resume=True, target="/bin/sh")
    env = {"PILOT_DEBUG": "1"}
    first = launch(vm_prefix, "rs", "-c", "exit 5", env=env, stdin="")
    fake = FakeGuestVsock(vm_prefix.state / "sci_cmd_rs.sock")
    try:
        _, err = first.communicate("", timeout=30)
        assert first.returncode == 5, err
        pid = int((vm_prefix.state / "rs.vmid").read_text())
        assert f"started firecracker pid {pid}" in err
        assert alive(pid)  # kept after the program ended
        calls = [
            launch(vm_prefix, "rs", "-c", f"read x; echo ${{x}}{i}", "%port:1234", env=env, stdin="") for i in range(2)
        ]
        results = [c.communicate("s\n", timeout=30) for c in calls]
        assert [c.returncode for c in calls] == [0, 0]
        assert sorted(out for out, _ in results) == ["s0\n", "s1\n"]
        assert all(f"reusing VM pid {pid}" in e for _, e in results)
        assert sorted(fake.ports) == [52, 1234, 1234]
        assert alive(pid) and (vm_prefix.state / "rs.vmid").exists()
    finally:
        fake.close()
        vmid = vm_prefix.state / "rs.vmid"
        if vmid.exists():
            os.kill(int(vmid.read_text()), 9)


def test_resume_vm_replaced_when_its_registration_changed_and_no_call_runs(vm_prefix: VmPrefix) -> None:
    """A running resume VM whose registration changed: a call while another runs in it still
    uses it; the next call, with none running, stops it and boots a VM of the new registration."""
    vm_prefix.register("rs", guest="hang", resume=True, target="/bin/sh")
    env = {"PILOT_DEBUG": "1"}
    vmid = vm_prefix.state / "rs.vmid"
    first = launch(vm_prefix, "rs", "-c", "exit 0", env=env, stdin="")
    fake = FakeGuestVsock(vm_prefix.state / "sci_cmd_rs.sock")
    try:
        _, err = first.communicate("", timeout=30)
        assert first.returncode == 0, err
        old = int(vmid.read_text())
        old_spec = (vm_prefix.state / "rs.spec").read_text()
        busy = launch(vm_prefix, "rs", "-c", "echo ready; read x; echo got-$x", env=env, stdin="")
        assert busy.stdout is not None and busy.stdin is not None
        ready, _, _ = select.select([busy.stdout], [], [], 30)
        assert ready and busy.stdout.readline() == "ready\n"
        vm_prefix.register("rs", guest="hang", resume=True, target="/bin/sh", boot_args=("console=ttyS0", "quiet"))
        during = launch(vm_prefix, "rs", "-c", "echo during", env=env, stdin="")
        out, err = during.communicate("", timeout=30)
        assert (during.returncode, out) == (0, "during\n"), err
        assert "still runs calls: kept for now" in err and f"reusing VM pid {old}" in err
        out, err = busy.communicate("x\n", timeout=30)
        assert (busy.returncode, out) == (0, "got-x\n"), err
        assert alive(old) and int(vmid.read_text()) == old
        fake.close()
        after = launch(vm_prefix, "rs", "-c", "echo after", env=env, stdin="")
        wait_for(lambda: vmid.exists() and vmid.read_text().strip() not in ("", str(old)), what="a new VM")
        fake = FakeGuestVsock(vm_prefix.state / "sci_cmd_rs.sock")
        out, err = after.communicate("", timeout=30)
        assert (after.returncode, out) == (0, "after\n"), err
        assert f"stopping idle VM pid {old}" in err
        new = int(vmid.read_text())
        assert new != old and alive(new) and not alive(old)
        assert (vm_prefix.state / "rs.spec").read_text() not in ("", old_spec)  # the new registration's
    finally:
        fake.close()
        if vmid.exists():
            os.kill(int(vmid.read_text()), 9)


def test_guest_refusal_is_one_line(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("bad", guest="hang", force_vsock=True, target="relative/prog")
    proc = launch(vm_prefix, "bad", stdin="")
    fake = FakeGuestVsock(vm_prefix.state / "sci_cmd_bad.sock")
    try:
        _, err = proc.communicate("", timeout=30)
    finally:
        fake.close()
    assert proc.returncode == 125
    assert err.count("\n") == 1 and err.startswith("bad: ") and "absolute path" in err
    assert vm_prefix.files() == set()
