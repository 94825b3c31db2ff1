#!/usr/bin/env python3
"""Launch cost of a delta flake (base + 2 layers + app) against a plain one-shot flake.

Both are launched through the installed podman-pilot (venv bin) via an app symlink in a private
prefix with its own podman storage. The plain flake runs the composed image itself, so both
start the very same image (same size, same layers); the difference is what the delta launch
adds: parsing the registration and the composition key check. Warm launches alternate
(plain, delta) pairs; we report medians, the ratio of the medians and the median of the
per-pair ratios. Cold launches (composition from scratch) are reported too.

With --launcher-only, podman is a stub that returns at once for the app's ``podman run``
(every other engine call is passed on), so the pairs show the launcher's own cost up to exec.

Usage: .venv/bin/python bench/delta_launch.py [--pairs N] [--cold N] [--launcher-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("FLAKE_STATE", "/var/tmp/flake-pilot"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=21)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--launcher-only", action="store_true", help="stub the app's podman run")
    args = ap.parse_args()

    from conftest import storage_conf
    from test_delta import BASE, L1, L2, build_images, registration

    conf = STATE / "podman" / "containers.conf"
    if conf.exists():
        os.environ["CONTAINERS_CONF"] = str(conf)
    os.environ.pop("PILOT_DEBUG", None)
    # an installed program's .pyc files exist; without this a stale one is recompiled per launch
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    root = Path(tempfile.mkdtemp(prefix="bench-delta-", dir=STATE))
    storage = storage_conf(STATE / "bench-storage")
    build_images(storage, root / "build")
    flakes, ids, bindir = root / "flakes", root / "ids", root / "bin"
    for d in (flakes, bindir):
        d.mkdir(parents=True)
    podman = shutil.which("podman") or "/usr/bin/podman"
    if args.launcher_only:
        stub = root / "podman-stub"
        stub.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = --cidfile ] && exit 0; done\nexec {podman} "$@"\n')
        stub.chmod(0o755)
        podman = str(stub)
    (root / "flakes.yml").write_text(
        f"generic:\n  flakes_dir: {flakes}\n  podman_ids_dir: {ids}\n"
        f"  podman_storage_conf: {storage}\n  podman_binary: {podman}\n"
    )
    env = {**os.environ, "FLAKES_CONFIG": str(root / "flakes.yml"), "XDG_CACHE_HOME": str(root / "cache")}
    registration(flakes, "delta", base_container=BASE, layers=[L1, L2], target_app_path="/bin/true")
    (bindir / "delta").symlink_to(BIN / "podman-pilot")

    def launch(app: str) -> float:
        t0 = time.perf_counter()
        done = subprocess.run([str(bindir / app)], env=env, stdin=subprocess.DEVNULL, capture_output=True)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{app}: exit {done.returncode}: {done.stderr.decode().strip()}")
        return elapsed

    try:
        from flake_pilot.podman import compose

        engine = ([podman], {"CONTAINERS_STORAGE_CONF": str(storage)})
        cold = []
        for _ in range(args.cold):
            compose.free_entries(app="delta", podman_argv=engine[0], env=engine[1])
            cold.append(launch("delta"))
        launch("delta")
        tag = next(e["tag"] for e in compose.list_entries(*engine) if e["app"] == "delta")
        registration(flakes, "plain", name=tag, target_app_path="/bin/true")
        (bindir / "plain").symlink_to(BIN / "podman-pilot")
        for _ in range(3):  # warm-up: page cache, plan caches
            launch("plain")
            launch("delta")
        plain, delta = [], []
        for i in range(args.pairs):
            order = ("plain", "delta") if i % 2 == 0 else ("delta", "plain")
            got = {app: launch(app) for app in order}
            plain.append(got["plain"])
            delta.append(got["delta"])
        mp, md = statistics.median(plain), statistics.median(delta)
        pair = statistics.median(d / p for d, p in zip(delta, plain, strict=True))
        what = "launcher only (podman run stubbed)" if args.launcher_only else "full launch"
        print(
            f"{what}; image: {tag} (base + 2 layers + app, {args.pairs} alternating pairs, "
            f"load average {os.getloadavg()[0]:.1f})"
        )
        print(f"plain one-shot launch, median: {mp * 1000:7.1f} ms")
        print(f"delta warm launch, median:     {md * 1000:7.1f} ms")
        print(f"ratio of medians: {md / mp:.3f}x   median of pair ratios: {pair:.3f}x   (target <= 1.10x)")
        runs = ", ".join(f"{c * 1000:.0f}" for c in cold)
        print(
            f"delta cold launch (composition), median of {len(cold)}: "
            f"{statistics.median(cold) * 1000:7.1f} ms  ({runs} ms)"
        )
        compose.free_entries(app="delta", podman_argv=engine[0], env=engine[1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
