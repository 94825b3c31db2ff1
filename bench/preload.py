#!/usr/bin/env python3
"""Does ``flake_pilot._preload`` still pay? (not a test)

Two ``make install`` prefixes (scripts/install.sh into temp dirs): one as installed, one whose
``_preload`` returns at once (its warm modules then come through the import system), each with
a one-shot podman flake whose engine is ``/bin/true`` (the launcher alone: interpreter start,
plan cache, state dir, spawn and wait). Alternating pairs (AB, BA, ...); prints the medians of
wall and CPU time (user+sys of the launcher and /bin/true) and their differences.
Run as root from the repository: ``.venv/bin/python bench/preload.py [-n 201]``
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from installed import install  # noqa: E402
from podman_launch import bootstrap_median, timed  # noqa: E402


def flake(root: Path, pilot: Path) -> list[str]:
    """A one-shot flake of *pilot* whose engine is /bin/true; returns its command line."""
    for d in ("flakes", "bin"):
        (root / d).mkdir()
    config = root / "flakes.yml"
    (root / "storage.conf").write_text("")  # the launcher checks that it exists; /bin/true ignores it
    config.write_text(
        f"generic:\n  flakes_dir: {root / 'flakes'}\n  podman_ids_dir: {root / 'ids'}\n  podman_binary: /bin/true\n"
        f"  podman_storage_conf: {root / 'storage.conf'}\n"
    )
    registration = root / "flakes" / "bench.yaml"
    registration.write_text(
        "include: {tar: ~, path: ~}\ncontainer:\n  name: img\n  target_app_path: /bin/sh\n"
        f"  host_app_path: {root / 'bin' / 'bench'}\n  check_host_dependencies: false\n"
        "  runtime: {runas: root, resume: false, attach: false, podman: ~}\n"
    )
    past = time.time() - 10  # installed registrations are older than a second
    for f in (config, registration):
        os.utime(f, (past, past))
    (root / "bin" / "bench").symlink_to(pilot)
    return [str(root / "bin" / "bench"), "-c", "true"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=201, help="pairs (default 201)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flake-preload-") as tmp:
        base = Path(tmp)
        calls, envs = [], []
        for name, preload in (("with", True), ("without", False)):
            root = base / name
            pilot = install(root / "inst") / "podman-pilot"
            if not preload:
                init = next((root / "inst").glob("usr/lib/flake-pilot/flake_pilot/__init__.py"))
                text = init.read_text()
                patched = text.replace('    """Execute the warm', '    return []\n    """Execute the warm', 1)
                assert patched != text, "flake_pilot._preload not found"
                init.write_text(patched)
                compileall.compile_file(str(init), quiet=1)
            calls.append(flake(root, pilot))
            envs.append(
                {
                    "PATH": "/usr/bin:/bin",
                    "HOME": str(root),
                    "FLAKES_CONFIG": str(root / "flakes.yml"),
                    "XDG_CACHE_HOME": str(root / "cache"),
                }
            )
        for _ in range(3):  # warm-up: plan caches, page cache
            for call, env in zip(calls, envs, strict=True):
                timed(call, env)
        wall: list[list[float]] = [[], []]
        cpu: list[list[float]] = [[], []]
        for i in range(args.n):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for k in order:
                wall[k].append(timed(calls[k], envs[k], cpu[k]))
        ratios = [a / b for a, b in zip(wall[0], wall[1], strict=True)]
        low, high = bootstrap_median(ratios)
        (w0, w1), (c0, c1) = ([statistics.median(x) * 1000 for x in m] for m in (wall, cpu))
        print(f"launcher alone, {args.n} pairs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        print(f"with _preload     wall {w0:6.2f} ms   CPU {c0:6.2f} ms")
        print(f"without _preload  wall {w1:6.2f} ms   CPU {c1:6.2f} ms")
        print(
            f"difference        wall {w1 - w0:+6.2f} ms   CPU {c1 - c0:+6.2f} ms   "
            f"median pair ratio with/without {statistics.median(ratios):.3f} (95% CI {low:.3f}-{high:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
