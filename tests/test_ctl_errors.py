"""Bad input to flake-ctl: one line on stderr naming what and where, a documented non-zero exit,
no traceback (unless --debug), and nothing half-written (the flakes dir is compared before/after)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Prefix


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under *roots* with its content or link target (the lock file aside)."""
    state: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                if name == ".flake-ctl.lock":
                    continue  # flake-ctl's (empty) lock file
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    state[path] = "-> " + os.readlink(path)
                elif os.path.isfile(path):
                    with open(path, "rb") as handle:
                        state[path] = handle.read().decode(errors="replace")
                else:
                    state[path] = "dir"
    return state


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, f"rc={proc.returncode} stderr={proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("flake-ctl: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_relative_app_and_bad_names(prefix: Prefix, bb_image: str) -> None:
    before = snapshot(prefix.root)
    reg = ("podman", "register", "--container", bb_image)
    one_line_error(prefix.ctl(*reg, "--app", "bin/aws"), 2, "--app", "'bin/aws'", "not an absolute path")
    one_line_error(prefix.ctl(*reg, "--app", f"{prefix.bin_dir}/../x"), 2, "'..'")
    one_line_error(prefix.ctl(*reg, "--app", f"{prefix.bin_dir}/.hidden"), 2, "invalid --app name")
    one_line_error(prefix.ctl(*reg, "--app", f"{prefix.bin_dir}/a", "--target", "bin/a"), 2, "--target")
    one_line_error(prefix.ctl(*reg, "--app", f"{prefix.bin_dir}/a", "--include-tar", "x.tar"), 2, "--include-tar")
    one_line_error(prefix.ctl("podman", "register", "--container=-x", "--app", f"{prefix.bin_dir}/a"), 2, "--container")
    one_line_error(prefix.ctl(*reg, "--app", f"{prefix.bin_dir}/a", "--layer", "l1"), 2, "--layer", "--base")
    one_line_error(prefix.ctl("podman", "remove", "--app", "relative"), 2, "--app")
    assert snapshot(prefix.root) == before


def test_argparse_errors_exit_2(prefix: Prefix) -> None:
    for args in (
        ["bogus"],
        ["podman", "register", "--app", "/x"],
        ["list", "--format", "xml"],
        ["podman", "register", "--container", "c", "--app", "/x", "--resume", "--attach"],
        ["podman", "remove", "--app", "/x", "--container", "c"],
    ):
        proc = prefix.ctl(*args)
        assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, args


def test_malformed_generic_config(prefix: Prefix) -> None:
    prefix.config.write_text("generic:\n  flakes_dir: [unclosed\n")
    one_line_error(prefix.ctl("list"), 3, str(prefix.config), "invalid YAML at line")
    prefix.config.write_text("generic:\n  flakes_dir: relative/flakes\n")
    one_line_error(prefix.ctl("list"), 3, str(prefix.config), "generic.flakes_dir")
    prefix.config.write_text(f"generic:\n  flakes_dir: {prefix.flakes_dir}\n  podman_storage_conf: /nowhere/s.conf\n")
    one_line_error(
        prefix.ctl("podman", "pull", "--uri", "x/y"),
        3,
        str(prefix.config),
        "generic.podman_storage_conf",
        "/nowhere/s.conf",
    )


def test_broken_registrations_are_reported_and_listing_goes_on(prefix: Prefix, bb_image: str) -> None:
    good = prefix.bin_dir / "good"
    assert prefix.ctl("podman", "register", "--container", bb_image, "--app", str(good)).returncode == 0
    (prefix.flakes_dir / "bad.yaml").write_text("container:\n  name: [unclosed\n")
    (prefix.flakes_dir / "typo.yaml").write_text("container:\n  name: img\n  runtime:\n    resume: 'yes'\n")
    (prefix.flakes_dir / "noname.yaml").write_text("container:\n  host_app_path: /usr/bin/noname\n")
    before = snapshot(prefix.root)
    proc = prefix.ctl("list", "--format", "csv")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0] == "name,engine,target,host_app_path,config"
    assert [r.split(",")[:2] for r in rows[1:]] == [
        ["bad", ""],
        ["good", "podman"],
        ["noname", ""],
        ["typo", ""],
    ]
    errors = proc.stderr.splitlines()
    assert len(errors) == 3
    assert f"{prefix.flakes_dir}/bad.yaml: invalid YAML" in errors[0]
    assert "key 'container.name' is missing" in errors[1]
    assert f"{prefix.flakes_dir}/typo.yaml: key 'container.runtime.resume': expected true or false" in errors[2]
    assert snapshot(prefix.root) == before


def test_symlink_deleted_by_hand(prefix: Prefix, bb_image: str) -> None:
    app = prefix.bin_dir / "gone"
    assert prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app)).returncode == 0
    app.unlink()
    before = snapshot(prefix.root)
    one_line_error(prefix.ctl("podman", "remove", "--app", str(app)), 5, str(app), "missing", "--force")
    one_line_error(
        prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app)),
        5,
        "gone.yaml",
        "--force",
    )
    assert snapshot(prefix.root) == before
    assert prefix.ctl("podman", "remove", "--app", str(app), "--force").returncode == 0
    assert not (prefix.flakes_dir / "gone.yaml").exists() and not (prefix.flakes_dir / "gone.d").exists()


def test_remove_refuses_foreign_file(prefix: Prefix) -> None:
    app = prefix.bin_dir / "real"
    app.write_text("real binary\n")
    (prefix.flakes_dir / "real.yaml").write_text("container:\n  name: x\n")
    before = snapshot(prefix.root)
    one_line_error(prefix.ctl("podman", "remove", "--app", str(app)), 5, "not a symlink to podman-pilot")
    one_line_error(prefix.ctl("podman", "remove", "--app", str(app), "--force"), 5, "not a symlink")
    assert snapshot(prefix.root) == before


def test_failed_registration_rolls_back(prefix: Prefix, bb_image: str) -> None:
    (prefix.root / "blocker").write_text("a file where the app's directory should be\n")
    before = snapshot(prefix.root)
    proc = prefix.ctl("podman", "register", "--container", bb_image, "--app", str(prefix.root / "blocker/app"))
    one_line_error(proc, 1, "registration failed")
    assert snapshot(prefix.root) == before  # config and drop-in dir were rolled back


@pytest.mark.parametrize("how", ["PATH", "podman_binary"])
def test_missing_podman_binary(prefix: Prefix, how: str) -> None:
    if how == "PATH":
        env = {"PATH": str(prefix.bin_dir)}  # a PATH without podman
        needle = "podman: not found in PATH"
    else:
        with prefix.config.open("a") as handle:
            handle.write("  podman_binary: /nonexistent/podman\n")
        env = {}
        needle = "/nonexistent/podman: not found or not executable"
    before = snapshot(prefix.root)
    for args in (
        ["podman", "pull", "--uri", "x/y"],
        ["podman", "load", "--oci", str(prefix.config)],
        ["podman", "remove", "--container", "x/y"],
        ["podman", "register", "--container", "x", "--info"],
    ):
        one_line_error(prefix.ctl(*args, env=env), 6, needle)
    assert snapshot(prefix.root) == before


def test_unknown_image(prefix: Prefix) -> None:
    before = snapshot(prefix.root)
    one_line_error(
        prefix.ctl("podman", "remove", "--container", "localhost/flake-test/unknown"),
        4,
        "localhost/flake-test/unknown",
    )
    one_line_error(
        prefix.ctl("podman", "register", "--container", "localhost/flake-test/unknown", "--info"),
        4,
        "localhost/flake-test/unknown",
    )
    # an unknown image on pull: test_ctl_podman.py::test_pull_from_local_registry
    assert snapshot(prefix.root) == before


def test_debug_shows_traceback_and_command_lines(prefix: Prefix) -> None:
    proc = prefix.ctl("--debug", "podman", "remove", "--container", "localhost/flake-test/unknown")
    assert proc.returncode == 4
    assert "Traceback" in proc.stderr and "] + " in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("flake-ctl: ")
    env_debug = prefix.ctl("podman", "remove", "--app", "rel", env={"PILOT_DEBUG": "1"})
    assert env_debug.returncode == 2 and "Traceback" in env_debug.stderr


def test_init_refused_for_root(prefix: Prefix, tmp_path: Path) -> None:
    home = tmp_path / "home"
    one_line_error(prefix.ctl("init", "--user", env={"HOME": str(home)}), 2, "root has no user mode")
    one_line_error(prefix.ctl("init", env={"HOME": str(home)}), 2, "init --user")
    assert not home.exists()


def test_ctrl_c_exits_130(prefix: Prefix) -> None:
    """SIGINT while podman pull waits on a registry that never answers: exit 130, one line."""
    import signal
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepts connections (kernel backlog) but never answers
        uri = f"127.0.0.1:{server.getsockname()[1]}/hang/img:1"
        proc = subprocess.Popen(
            [str(BIN / "flake-ctl"), "podman", "pull", "--uri", uri],
            env=prefix.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not children.read_text().strip():
            time.sleep(0.02)  # poll for the condition: podman has been started
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.splitlines() == ["flake-ctl: interrupted"] and out == ""
