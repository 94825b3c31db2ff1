"""fastos (the launchers' os without ``import os``) gives what os gives for the cases used."""

import os
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest

from flake_pilot.launch import fastos

SRC = Path(__file__).resolve().parent.parent / "src"
PATHS = ["", "/", "//", "///", "a", "a/", "/a", "/a/", "/a/b", "/a/b/", "a//b", "//a", "///a//", "/a/b//c", "a/b/c"]


@pytest.mark.parametrize("path", PATHS)
def test_dirname_and_basename_match_posixpath(path: str) -> None:
    assert fastos.dirname(path) == posixpath.dirname(path)
    assert fastos.basename(path) == posixpath.basename(path)


@pytest.mark.parametrize(
    "parts",
    [
        ("a", "b"),
        ("a/", "b"),
        ("", "b"),
        ("a", "/b"),
        ("/", "x", "y"),
        ("a", "", "b"),
        ("a", ""),
        ("", ""),
        ("/a", "b/", "c"),
        ("/a", "/b", "c"),
        ("a//", "b"),
    ],
)
def test_join_matches_posixpath(parts: tuple[str, ...]) -> None:
    assert fastos.join(*parts) == posixpath.join(*parts)


def test_file_tests_match_os_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "f")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    for name in ("f", "d", "l", "dangling", "missing", "f/x"):
        path = str(tmp_path / name)
        got = (fastos.exists(path), fastos.isdir(path), fastos.isfile(path), fastos.islink(path))
        assert got == (os.path.exists(path), os.path.isdir(path), os.path.isfile(path), os.path.islink(path)), name
    assert not fastos.exists("a\0b") and not os.path.exists("a\0b")


def test_environ_is_os_environ_once_os_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fastos.environ is os.environ  # flake-ctl and tests: monkeypatching reaches the launch code
    monkeypatch.setenv("FASTOS_PROBE", "1")
    assert fastos.environ["FASTOS_PROBE"] == "1"


def test_launcher_snapshot_decodes_like_os_environ_without_importing_os() -> None:
    """In a launcher (python -IS, os never imported) environ is a decoded snapshot: undecodable
    bytes survive as surrogates, exactly as os.environ has them."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from flake_pilot.launch import fastos; "
        "loaded = 'os' in sys.modules; snap = dict(fastos.environ); import os; "
        "print(loaded, snap == dict(os.environ), repr(snap['FASTOS_RAW']))"
    )
    env = {b"PATH": b"/usr/bin:/bin", b"FASTOS_RAW": b"caf\xe9 \xc3\xa9"}
    done = subprocess.run(
        [sys.executable, "-IS", "-c", probe, str(SRC)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 2) == ["False", "True", repr("caf\udce9 \u00e9") + "\n"]


def test_stat_helpers_match_the_stat_module() -> None:
    import stat

    for mode in (0o40755, 0o41777, 0o100644, 0o120777, 0o20666, 0o10600, 0o140755, 0o60660):
        got = (fastos.S_ISDIR(mode), fastos.S_ISREG(mode), fastos.S_ISLNK(mode))
        assert got == (stat.S_ISDIR(mode), stat.S_ISREG(mode), stat.S_ISLNK(mode)), oct(mode)
    assert (fastos.S_ISVTX, fastos.S_IWGRP, fastos.S_IWOTH) == (stat.S_ISVTX, stat.S_IWGRP, stat.S_IWOTH)


def test_which_matches_shutil_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    (tmp_path / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "tool").chmod(0o755)
    (tmp_path / "plain").write_text("")
    (tmp_path / "dir").mkdir()
    monkeypatch.setitem(fastos.environ, "PATH", f"/nonexistent:{tmp_path}:/usr/bin:/bin")
    for program in (
        "tool",
        "plain",
        "dir",
        "sh",
        "no-such-tool",
        str(tmp_path / "tool"),
        str(tmp_path / "dir"),
        str(tmp_path / "plain"),
    ):
        assert fastos.which(program) == shutil.which(program, path=fastos.environ["PATH"]), program
