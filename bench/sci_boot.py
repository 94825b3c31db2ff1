"""Boot timings of the test guest under QEMU TCG: QEMU start -> program running (STARTED frame),
program exit (EXIT frame) -> QEMU gone. One-shot session over virtio-serial.

    python3 bench/sci_boot.py [RUNS]      (root; builds the guest with scripts/build-guest.sh)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from guest import Guest, guest_images  # noqa: E402


def one(workdir: Path, overlay: bool) -> tuple[float, float]:
    images = guest_images()
    ovl = None
    if overlay:
        ovl = workdir / "overlay.ext2"
        with open(ovl, "wb") as f:
            f.truncate(64 << 20)  # formatted by sci on first use
    vm = Guest(workdir / "vm", images, overlay=ovl).start()
    try:
        res = vm.run(["/bin/true"], stdin=None)
        vm.wait_gone(60)
    finally:
        vm.kill()
    assert res.status == 0 and res.started_at is not None and vm.gone_at is not None
    return res.started_at - vm.started_at, vm.gone_at - res.ended_at


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for overlay in (False, True):
        up, down = [], []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                a, b = one(Path(tmp), overlay)
            up.append(a)
            down.append(b)
        label = "fresh overlay (mkfs.ext2 in the guest)" if overlay else "no overlay"
        print(
            f"{label:40s} start->running min {min(up):5.2f} s median {statistics.median(up):5.2f} s; "
            f"exit->gone min {min(down):4.2f} s median {statistics.median(down):4.2f} s"
        )


if __name__ == "__main__":
    main()
