"""The tests write no tracked file: a reliability test run leaves ``git status`` as it was, its
records land in the results dir, and only ``scripts/reliability-report`` renders them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import need

ROOT = Path(__file__).resolve().parent.parent
HOSTPY = "/usr/bin/python3"  # the system Python, without pytest: the report needs none


def git_status() -> str:
    need((ROOT / ".git").exists(), f"{ROOT} is not a git checkout")
    return subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_reliability_tests_write_records_not_the_checkout(tmp_path: Path) -> None:
    results, report = tmp_path / "results", tmp_path / "reliability.md"
    before = git_status()
    env = {**os.environ, "FLAKE_RELIABILITY_RESULTS": str(results), "FLAKE_FUZZ_EXAMPLES": "10"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_hostile_fuzz.py",
            "-k",
            "names or bomb",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert git_status() == before
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    assert records and {r["result"] for r in records} == {"pass"}, records

    rendered = subprocess.run(
        [HOSTPY, str(ROOT / "scripts/reliability-report"), str(results), str(report)], capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    text = report.read_text()
    assert f"Summary: {len(records)} cases: {len(records)} pass." in text
    assert all(r["case"] in text for r in records)
    assert git_status() == before

    empty = subprocess.run(
        [HOSTPY, str(ROOT / "scripts/reliability-report"), str(tmp_path / "none"), str(tmp_path / "r.md")],
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 4 and "no records" in empty.stderr and not (tmp_path / "r.md").exists()
