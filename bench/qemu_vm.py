"""VM flakes under QEMU: what a call costs through firecracker-pilot against driving QEMU and
the session protocol directly, in the same run, in alternating (AB/BA) pairs.

- one-shot: ``APP -c true`` (the launcher: overlay, QEMU, boot, sci session, VM killed) against
  the raw path of tests/guest.py (host-made overlay, the same QEMU machine, one session, kill);
- resume: one call ``APP -c true`` in a running VM (a process start, the plan cache, a port
  claim, a session) against one session on a running raw VM's port from inside this process.

The guest is scripts/build-guest.sh's (Debian cloud kernel, initrd, rootfs with this checkout's
sci), pulled with ``flake-ctl firecracker pull --install-sci`` into a private prefix and
registered with ``--vmm qemu``. On this machine QEMU runs TCG (software emulation): boot
figures are TCG's, KVM hosts start far faster.

Usage (root): bench/qemu_vm.py [ONESHOT_PAIRS [RESUME_PAIRS]] [--installed]   (default 5 30)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from guest import Guest, guest_images  # noqa: E402

SIZE = "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n"


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def raw_oneshot(workdir: Path, images: object) -> float:
    t0 = time.perf_counter()
    overlay = workdir / "overlay.ext2"
    with open(overlay, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext2", "-F", "-q", str(overlay)], check=True)  # as the launcher makes it
    vm = Guest(workdir / "vm", images, overlay=overlay).start()  # type: ignore[arg-type]
    try:
        res = vm.run(["/bin/sh", "-c", "true"], stdin=None)
    finally:
        vm.kill()
    if res.status != 0:
        raise SystemExit(f"raw session failed: {res.status} {vm.diagnostics()}")
    return time.perf_counter() - t0


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (scripts/build-guest.sh runs debootstrap)")
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    oneshot_pairs = numbers[0] if numbers else 5
    resume_pairs = numbers[1] if len(numbers) > 1 else 30
    images = guest_images()
    with tempfile.TemporaryDirectory(prefix="qemu-bench-") as tmp:
        root = Path(tmp)
        if "--installed" in sys.argv[1:]:
            from installed import install

            bin_dir = install(root / "inst")
        else:
            bin_dir = Path(sys.executable).parent
        flakes, apps = root / "flakes", root / "bin"
        flakes.mkdir()
        apps.mkdir()
        (root / "flakes.yml").write_text(
            f"generic:\n  flakes_dir: {flakes}\n  firecracker_ids_dir: {root / 'ids'}\n"
            f"  podman_ids_dir: {root / 'ids'}\n  firecracker_registry_dir: {root / 'registry'}\n"
        )
        env = {**os.environ, "FLAKES_CONFIG": str(root / "flakes.yml"), "XDG_CACHE_HOME": str(root / "cache")}
        env.pop("PILOT_DEBUG", None)
        ctl = [str(bin_dir / "flake-ctl"), "firecracker"]
        pull = [*ctl, "pull", "--name", "deb", "--install-sci"]
        pull += ["--rootfs", f"file://{images.rootfs}", "--kernel", f"file://{images.kernel}"]
        pull += ["--initrd", f"file://{images.initrd}"]
        subprocess.run(pull, env=env, check=True, capture_output=True, timeout=600)
        common = ["--vm", "deb", "--vmm", "qemu", "--target", "/bin/sh", "--no-net", "--overlay-size", "64MiB"]
        for app, extra in (("vsh", []), ("rsh", ["--resume"])):
            reg = [*ctl, "register", "--app", str(apps / app), *common, *extra]
            subprocess.run(reg, env=env, check=True, capture_output=True, timeout=60)
            # the raw VM's size (register writes the original's 4096 MiB, 2 vCPUs; under TCG these
            # cost seconds of boot): a drop-in, as a user would override it
            (flakes / f"{app}.d").mkdir(exist_ok=True)
            (flakes / f"{app}.d" / "size.yaml").write_text(SIZE)
        vsh, rsh = [str(apps / "vsh"), "-c", "true"], [str(apps / "rsh"), "-c", "true"]

        flake_one, raw_one = [], []
        for i in range(oneshot_pairs):
            order = ("flake", "raw") if i % 2 == 0 else ("raw", "flake")
            for which in order:
                if which == "flake":
                    flake_one.append(timed(vsh, env))
                else:
                    with tempfile.TemporaryDirectory(dir=root) as work:
                        raw_one.append(raw_oneshot(Path(work), images))

        timed(rsh, env)  # boots the resume VM
        flake_res, raw_res = [], []
        with Guest(root / "raw-resume", images, resume=True) as vm:
            vm.run(["/bin/sh", "-c", "true"], stdin=None)  # booted and answering
            for i in range(resume_pairs):
                order = ("flake", "raw") if i % 2 == 0 else ("raw", "flake")
                for which in order:
                    if which == "flake":
                        flake_res.append(timed(rsh, env))
                    else:
                        t0 = time.perf_counter()
                        res = vm.run(["/bin/sh", "-c", "true"], stdin=None)
                        raw_res.append(time.perf_counter() - t0)
                        if res.status != 0:
                            raise SystemExit(f"raw resume session failed: {vm.diagnostics()}")
        pid = (root / "ids" / str(os.getuid()) / "rsh.vmid").read_text()
        os.kill(int(pid), 15)

    from flake_pilot.launch.firecracker.qemu import kvm_accel

    accel, why = kvm_accel()
    print(f"QEMU accelerator: {accel} ({why}); launcher from {bin_dir}")
    for label, flake, raw in (
        ("one-shot `APP -c true` (boot, session, VM gone)", flake_one, raw_one),
        ("resume call `APP -c true` in a running VM", flake_res, raw_res),
    ):
        ratio = statistics.median([f / r for f, r in zip(flake, raw, strict=True)])
        print(
            f"{label}: {len(flake)} pairs, flake median {median_ms(flake):.1f} ms, raw median "
            f"{median_ms(raw):.1f} ms, pair ratio median {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
