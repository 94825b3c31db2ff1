"""Issue 7 part 1 for firecracker-pilot, with the REAL Firecracker and the tiny bare-metal guest.

A Linux guest (and so sci answering on vsock) cannot boot on this PVM host, so a resume call can
never complete a session here. What can be proven: 16 simultaneous first calls of the same resume
flake boot exactly ONE VM (the instance lock serialises the start, every other call reuses it),
all of them fail with the clear "no answer from sci" error, and nothing is left behind; 16
simultaneous one-shot calls boot 16 independent VMs that each print and end, leaving no files.
"""

from __future__ import annotations

import time

from firecracker_fixtures import VmPrefix, alive
from reliability import record

N = 16


def test_16_first_calls_of_a_resume_vm_boot_one_vm(vm_prefix: VmPrefix) -> None:
    with record(
        "1", "firecracker resume: simultaneous first calls (tiny guest, no sci)", count=N, concurrency=N
    ) as rec:
        vm_prefix.register("rs", guest="hang", resume=True)
        env = {"PILOT_DEBUG": "1", "PILOT_BOOT_TIMEOUT": "25"}
        t0 = time.monotonic()
        calls = [vm_prefix.popen("rs", env=env) for _ in range(N)]
        results = [c.communicate(timeout=120) for c in calls]
        wall = time.monotonic() - t0
        errs = [err for _, err in results]
        started = [e for e in errs if "started firecracker pid" in e]
        assert len(started) == 1, [e[-300:] for e in errs]
        assert sum("reusing VM pid" in e for e in errs) == N - 1, [e[-300:] for e in errs]
        assert all(c.returncode == 125 for c in calls), [c.returncode for c in calls]
        last = [e.strip().splitlines()[-1] for e in errs]
        assert all(line.startswith("rs: ") and "VM rs" in line for line in last), last
        booted = int(started[0].split("started firecracker pid ")[1].split()[0])
        assert not alive(booted)
        assert vm_prefix.files() == set()
        rec.detail = (
            f"1 VM booted, {N - 1} calls reused it; all {N} exit 125 with one clear line "
            f"(no sci answer: Linux guests cannot boot on this PVM host); VM and files removed; "
            f"{wall:.1f} s wall"
        )


def test_16_oneshot_vms_are_independent(vm_prefix: VmPrefix) -> None:
    with record("1", "firecracker one-shot: simultaneous calls (tiny guest, serial)", count=N, concurrency=N) as rec:
        vm_prefix.register("hello", overlay_size="16MiB")
        t0 = time.monotonic()
        calls = [vm_prefix.popen("hello", f"@n{i}", env={"PILOT_DEBUG": "1"}) for i in range(N)]
        results = [c.communicate(timeout=120) for c in calls]
        wall = time.monotonic() - t0
        bad = [
            (c.returncode, err[-200:])
            for c, (out, err) in zip(calls, results, strict=True)
            if c.returncode != 0 or "HELLO-FROM-TINY-GUEST" not in out
        ]
        assert not bad, bad
        pids = {int(err.split("started firecracker pid ")[1].split()[0]) for _, err in results}
        assert len(pids) == N  # each call booted its own VM
        assert not any(alive(pid) for pid in pids)
        assert vm_prefix.files() == set()
        rec.detail = f"{N} VMs, {N} distinct firecracker processes, {N}/{N} greetings, no files left, {wall:.1f} s wall"
