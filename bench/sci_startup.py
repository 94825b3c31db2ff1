"""sci's own start-up cost as a process: min wall time of N runs (ms).

    python3 bench/sci_startup.py [PYTHON] [RUNS]

Builds the zipapp from this checkout and compares a bare interpreter with ``sci --version`` and
with importing everything a session needs (protocol, session, transport, system, reaper).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from flake_pilot.sci.bundle import build_zipapp  # noqa: E402


def best(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main() -> None:
    python = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/python3"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as tmp:
        sci = str(build_zipapp(Path(tmp) / "sci"))
        full = (
            f"import sys; sys.path.insert(0, {sci!r}); import flake_pilot.sci.main,"
            " flake_pilot.sci.session, flake_pilot.sci.transport, flake_pilot.sci.system"
        )
        cases = {
            "python3 -c pass": [python, "-c", "pass"],
            "python3 -IS -c pass": [python, "-IS", "-c", "pass"],
            "sci --version (zipapp, -IS)": [sci, "--version"],
            "import all of sci (zipapp, -IS)": [python, "-IS", "-c", full],
        }
        for name, argv in cases.items():
            print(f"{name:32s} {best(argv, runs):7.1f} ms")


if __name__ == "__main__":
    main()
