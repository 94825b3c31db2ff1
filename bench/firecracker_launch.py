#!/usr/bin/env python3
"""firecracker-pilot's overhead over the raw engine, in one run, medians.

Both sides boot the same tiny bare-metal guest (prints, then resets the VM) with the same VM
definition: the launcher's own (taken from its PILOT_DEBUG output), given to the raw
``firecracker --no-api --config-file`` directly. The launcher is the installed console script
(venv bin), called through an app symlink as a user would; with ``--installed`` it is
``PREFIX/bin/firecracker-pilot`` of scripts/install.sh into a temp prefix (what ``make install``
gives: ``#!/usr/bin/python3 -IS``, byte-compiled package). Runs alternate (AB, BA, ...) to share the noise.

Usage: bench/firecracker_launch.py [RUNS] [--installed]   (default 100)

Besides the medians of each side it prints the median of the per-pair differences (launcher minus
raw, run next to each other) with its 95% bootstrap interval: how far this run's noise alone
moves the overhead.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("FLAKE_STATE", "/var/tmp/flake-pilot"))
VENV_BIN = Path(sys.executable).parent
PILOT = VENV_BIN / "firecracker-pilot"


def setup(work: Path, pilot: Path) -> tuple[dict[str, str], Path, Path]:
    subprocess.run(["bash", str(ROOT / "scripts/get-firecracker.sh")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bash", str(ROOT / "scripts/build-tiny-guest.sh")], check=True, stdout=subprocess.DEVNULL)
    fc = STATE / "bin" / "firecracker"
    (work / "flakes").mkdir()
    (work / "bin").mkdir()
    (work / "flakes.yml").write_text(
        f"generic:\n  flakes_dir: {work}/flakes\n  firecracker_ids_dir: {work}/ids\n  firecracker_binary: {fc}\n"
    )
    rootfs = work / "rootfs.img"
    rootfs.write_bytes(b"")
    os.truncate(rootfs, 4 << 20)
    (work / "flakes" / "tiny.yaml").write_text(
        "vm:\n  name: tiny\n  target_app_path: /bin/true\n  runtime:\n    firecracker:\n"
        '      boot_args: ["console=ttyS0"]\n'
        f"      rootfs_image_path: {rootfs}\n"
        f"      kernel_image_path: {STATE / 'guest' / 'tiny.elf'}\n"
        "      mem_size_mib: 64\n      vcpu_count: 1\n"
    )
    app = work / "bin" / "tiny"
    app.symlink_to(pilot)
    past = time.time() - 10  # old inputs: the cache needs no content check (as a long-installed flake)
    for f in (work / "flakes.yml", work / "flakes" / "tiny.yaml"):
        os.utime(f, (past, past))
    env = {**os.environ, "FLAKES_CONFIG": str(work / "flakes.yml"), "XDG_CACHE_HOME": str(work / "cache")}
    env.pop("PILOT_DEBUG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode caches, as an installed package has
    return env, app, fc


def timed(argv: list[str], env: dict[str, str], check: bool = True) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run; CPU = user+sys of the process and the children it reaped
    (firecracker included), which a busy shared machine distorts much less than wall time."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    if proc.returncode != 0 or (check and b"HELLO-FROM-TINY-GUEST" not in out.read()):
        sys.exit(f"run failed ({proc.returncode}): {argv[0]}: {err.read().decode()[-300:]}")
    return dt * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--installed"]
    runs = int(args[0]) if args else 100
    if not PILOT.exists():
        sys.exit(f"{PILOT} missing: pip install -e . into this venv")
    with tempfile.TemporaryDirectory(prefix="fc-bench-") as tmp:
        work = Path(tmp)
        launcher = PILOT
        if "--installed" in sys.argv[1:]:
            from installed import install

            launcher = install(work / "inst") / "firecracker-pilot"
        from installed import interpreter

        python = interpreter(launcher) or [sys.executable]
        env, app, fc = setup(work, launcher)
        dbg = subprocess.run([str(app)], env={**env, "PILOT_DEBUG": "1"}, capture_output=True, text=True)
        line = next(ln for ln in dbg.stderr.splitlines() if "vm definition: " in ln)
        doc = json.loads(line.split("vm definition: ", 1)[1])
        doc["vsock"]["uds_path"] = str(work / "raw.sock")
        cfg = work / "raw.json"
        cfg.write_text(json.dumps(doc))
        (work / "raw.log").write_text("")
        raw_argv = [
            str(fc),
            "--no-api",
            "--config-file",
            str(cfg),
            "--log-path",
            str(work / "raw.log"),
            "--level",
            "Warning",
        ]
        raw: list[tuple[float, float]] = []
        pilot: list[tuple[float, float]] = []
        floor: list[tuple[float, float]] = []
        parse: list[tuple[float, float]] = []
        # a relative XDG_CACHE_HOME: launchcache.cache_dir() is None, no cache (every run parses the YAML)
        nocache = {**env, "XDG_CACHE_HOME": "no-cache"}
        for i in range(runs + 3):  # the first 3 warm the caches
            (work / "raw.sock").unlink(missing_ok=True)  # as the launcher does before each start
            if i % 2:  # AB, BA, ...: a drift in load hits both sides
                p_run = timed([str(app)], env)
                r_run = timed(raw_argv, env)
            else:
                r_run, p_run = timed(raw_argv, env), timed([str(app)], env)
            y_run = timed([str(app)], nocache)
            f_run = timed([*python, "-c", "pass"], env, check=False)
            if i >= 3:
                raw.append(r_run)
                pilot.append(p_run)
                parse.append(y_run)
                floor.append(f_run)
        load = os.getloadavg()[0]
        print(
            f"tiny guest, launch to exit, {runs} alternating runs each (medians; load average {load:.1f}); "
            f"launcher {launcher} ({' '.join(python)})"
        )
        floor_name = " ".join(["python", *python[1:]])
        for k, what in ((0, "wall"), (1, "CPU ")):
            r = statistics.median(x[k] for x in raw)
            p = statistics.median(x[k] for x in pilot)
            y = statistics.median(x[k] for x in parse)
            print(
                f"  {what}: raw firecracker {r:6.1f} ms | firecracker-pilot {p:6.1f} ms, overhead "
                f"{p - r:6.1f} ms (x{p / r:.2f}) | without the registration cache {y:6.1f} ms, overhead "
                f"{y - r:6.1f} ms | `{floor_name} -c pass` {statistics.median(x[k] for x in floor):5.1f} ms"
            )
        diffs = [p_[0] - r_[0] for p_, r_ in zip(pilot, raw, strict=True)]
        low, high = bootstrap_median(diffs)
        print(
            f"  overhead per pair (wall): median {statistics.median(diffs):.1f} ms, "
            f"95% interval {low:.1f}-{high:.1f} ms"
        )


def bootstrap_median(values: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median: how far this run's noise alone moves it."""
    import random

    rng = random.Random(1)  # the interval of a given sample is reproducible
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(rounds * 0.025)], medians[int(rounds * 0.975) - 1]


if __name__ == "__main__":
    main()
