"""flake-ctl doctor against a private prefix: a healthy registration, then broken ones
(dangling symlink, YAML error, missing symlink, foreign symlink target, unsafe state dir)."""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
from pathlib import Path

import pytest

from conftest import Prefix
from flake_pilot.ctl import doctor


def run_doctor(prefix: Prefix, *args: str) -> tuple[int, list[dict[str, str]]]:
    proc = prefix.ctl("doctor", "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    records = json.loads(proc.stdout)
    for record in records:
        assert list(record) == list(doctor.FIELDS)
        assert record["status"] in ("ok", "warn", "fail")
        if record["status"] != "ok":
            assert record["fix"], f"{record['check']}: no fix given"
    assert (proc.returncode == 0) == all(r["status"] != "fail" for r in records)
    return proc.returncode, records


def by_check(records: list[dict[str, str]], check: str) -> dict[str, str]:
    found = [r for r in records if r["check"] == check]
    assert len(found) == 1, f"{check}: {records}"
    return found[0]


@pytest.fixture
def flake(prefix: Prefix, bb_image: str) -> Path:
    app = prefix.bin_dir / "doc-echo"
    prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app), "--target", "/bin/echo", check=True)
    return app


def test_healthy(prefix: Prefix, flake: Path, bb_image: str) -> None:
    code, records = run_doctor(prefix)
    assert code == 0, [r for r in records if r["status"] == "fail"]
    assert by_check(records, "flake doc-echo")["status"] == "ok"
    assert by_check(records, f"image {bb_image}")["status"] == "ok"
    assert by_check(records, "podman run")["status"] == "ok"
    assert by_check(records, "podman storage")["detail"].startswith("runtime ")
    kvm = by_check(records, "kvm")
    if not os.path.exists("/dev/kvm"):
        assert kvm["status"] == "warn"  # no VM flakes registered: not needed
    elif os.path.exists("/sys/module/kvm_pvm"):
        assert "PVM" in kvm["detail"]
    elif os.path.exists("/sys/module/kvm_intel") or os.path.exists("/sys/module/kvm_amd"):
        assert "hardware" in kvm["detail"]


def test_dangling_symlink(prefix: Prefix, flake: Path, tmp_path: Path) -> None:
    flake.unlink()
    flake.symlink_to(tmp_path / "uninstalled" / "podman-pilot")
    code, records = run_doctor(prefix)
    assert code == 1
    record = by_check(records, "flake doc-echo")
    assert record["status"] == "fail" and "dangling" in record["detail"] and str(flake) in record["detail"]
    table = prefix.ctl("doctor")
    assert table.returncode == 1
    assert "fail" in table.stdout and "doc-echo" in table.stdout and "1 problem(s)" in table.stdout


def test_symlink_missing_or_foreign(prefix: Prefix, flake: Path) -> None:
    flake.unlink()
    record = by_check(run_doctor(prefix)[1], "flake doc-echo")
    assert record["status"] == "fail" and "missing" in record["detail"]
    flake.symlink_to("/bin/true")
    code, records = run_doctor(prefix)
    assert code == 1 and "not podman-pilot" in by_check(records, "flake doc-echo")["detail"]


def test_yaml_error(prefix: Prefix, flake: Path) -> None:
    bad = prefix.flakes_dir / "broken.yaml"
    bad.write_text("container:\n  name: [unclosed\n")
    code, records = run_doctor(prefix)
    assert code == 1
    record = by_check(records, "flake broken")
    assert record["status"] == "fail" and str(bad) in record["detail"] and "line" in record["detail"]
    assert by_check(records, "flake doc-echo")["status"] == "ok"  # the others are still checked


def test_unsafe_state_dir(prefix: Prefix) -> None:
    prefix.ids_dir.mkdir()
    os.chmod(prefix.ids_dir, 0o777)
    code, records = run_doctor(prefix)
    assert code == 1
    record = by_check(records, "podman ids dir")
    assert record["status"] == "fail" and "chmod 1777" in record["fix"]


def test_state_dir_uses_the_launchers_walk(prefix: Prefix) -> None:
    """A sticky 1777 base owned by another user passes a mode check but the launchers refuse it
    (that user could rename what it holds): doctor reports it; a root-owned 1777 base is fine."""
    prefix.ids_dir.mkdir()
    os.chmod(prefix.ids_dir, 0o1777)
    code, records = run_doctor(prefix)
    record = by_check(records, "podman ids dir")
    assert record["status"] == "ok", record
    assert not (prefix.ids_dir / str(os.getuid())).exists()  # doctor creates nothing
    other = pwd.getpwnam("flakeattk").pw_uid
    os.chown(prefix.ids_dir, other, other)
    code, records = run_doctor(prefix)
    assert code == 1
    record = by_check(records, "podman ids dir")
    assert record["status"] == "fail" and f"owned by uid {other}" in record["detail"], record
    assert "chown root" in record["fix"]


def test_missing_image_is_a_warning(prefix: Prefix, bb_image: str) -> None:
    app = prefix.bin_dir / "doc-missing"
    image = "registry.example.com/flake-test/not-pulled:never"  # fully qualified: accepted, pulled at launch
    prefix.ctl("podman", "register", "--container", image, "--app", str(app), check=True)
    code, records = run_doctor(prefix)
    record = by_check(records, f"image {image}")
    assert record["status"] == "warn" and image in record["fix"]
    assert code == 0


def test_csv_and_config_error(prefix: Prefix, tmp_path: Path) -> None:
    proc = prefix.ctl("doctor", "--format", "csv")
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == list(doctor.FIELDS) and len(rows) > 5
    broken = tmp_path / "flakes.yml"
    broken.write_text("generic: [unclosed\n")
    proc = prefix.ctl("doctor", "--format", "json", env={"FLAKES_CONFIG": str(broken)})
    assert proc.returncode == 1
    assert json.loads(proc.stdout)[0]["status"] == "fail" and str(broken) in proc.stdout


@pytest.mark.root
def test_user_mode_as_a_rootless_user(tmp_path: Path) -> None:
    """`doctor --user` as the rootless test user: subuid/subgid judged from /etc/subuid, /etc/subgid."""
    import subprocess

    from conftest import BIN, TEST_USER, need_test_user

    user = need_test_user()
    env = {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "LANG": "C.UTF-8"}
    if "CONTAINERS_CONF" in os.environ:
        env["CONTAINERS_CONF"] = os.environ["CONTAINERS_CONF"]
    proc = subprocess.run(
        [
            "/usr/sbin/runuser",
            "-u",
            TEST_USER,
            "--",
            str(BIN / "flake-ctl"),
            "doctor",
            "--user",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode in (0, 1), proc.stderr
    records = {r["check"]: r for r in json.loads(proc.stdout)}
    assert records["config"]["detail"].endswith(f"flakes in {user.pw_dir}/.config/flakes")

    def listed(path: str) -> bool:
        return any(line.split(":")[0] in (TEST_USER, str(user.pw_uid)) for line in Path(path).read_text().splitlines())

    expected = "ok" if listed("/etc/subuid") and listed("/etc/subgid") else "warn"
    assert records["subuid/subgid"]["status"] == expected, records["subuid/subgid"]
