"""Unit tests of podman-pilot's pure logic: caller args, %VAR expansion, option splitting,
volume filtering, argv shapes, exit-status mapping, the plan cache and instance liveness."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flake_pilot.errors import UsageError
from flake_pilot.launch.names import instance_name
from flake_pilot.launch.podman import argv, instance, proc


def test_caller_args_are_sorted() -> None:
    c = argv.split_caller_args(["@one", "-x", "%remove", "@two", "%progress:yes", "%%lit", "@@at", "y"], instance_name)
    assert c.instance == "one"  # the first @NAME wins, as in the original
    assert c.options == {"remove": "", "progress": "yes"}
    assert c.app_args == ["-x", "%lit", "@at", "y"]


def test_option_value_split_at_last_colon() -> None:
    assert argv.split_caller_args(["%progress:on"]).options == {"progress": "on"}
    with pytest.raises(ValueError, match="unknown launcher option"):
        argv.split_caller_args(["%progress:a:b"])  # key 'progress:a' is not an option


@pytest.mark.parametrize("bad", ["@a/b", "@..", "@", "@.x", "@a b", "@" + "x" * 64, "@a\0"])
def test_every_instance_name_is_validated(bad: str) -> None:
    with pytest.raises(UsageError):
        argv.split_caller_args(["@ok", bad], instance_name)


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ValueError, match="%silent"):
        argv.split_caller_args(["%silent"])


def test_expand_vars() -> None:
    env = {"HOME": "/home/u", "A_1": "x", "LOOP": "%HOME"}
    assert argv.expand_vars("--volume %HOME/ai:%HOME/ai", env) == "--volume /home/u/ai:/home/u/ai"
    assert argv.expand_vars("%A_1%A_1", env) == "xx"
    assert argv.expand_vars("%LOOP", env) == "%HOME"  # one pass, values are literal
    assert argv.expand_vars("50% %lower %1 %", env) == "50% %lower %1 %"
    with pytest.raises(KeyError):
        argv.expand_vars("%NOT_SET_ANYWHERE", env)


def test_expand_vars_is_bounded() -> None:
    with pytest.raises(ValueError, match="expansions"):
        argv.expand_vars("%A" * (argv.MAX_EXPANSIONS + 1), {"A": "x"})
    with pytest.raises(ValueError, match="characters"):
        argv.expand_vars("%A%A", {"A": "x" * argv.MAX_EXPANDED})


@given(st.text(alphabet="%AB_z1 ", max_size=40))
def test_expand_vars_never_recurses(text: str) -> None:
    env = {"A": "%B", "B": "%A", "AB": "", "A_": "%", "B1": "1"}
    try:
        out = argv.expand_vars(text, env)
    except KeyError:
        return
    assert len(out) <= 2 * len(text)


def test_split_opts_at_first_space() -> None:
    assert argv.split_opts(["--volume /a:/b", "-ti", "--label a=b c", "--net=host"]) == [
        "--volume",
        "/a:/b",
        "-ti",
        "--label",
        "a=b c",
        "--net=host",
    ]


def test_drop_missing_volumes_all_forms() -> None:
    exists = {"/have"}.__contains__
    items = [
        "--volume",
        "/gone:/c",
        "-v",
        "/have:/c",
        "--volume=/gone:/c",
        "-v=/have:/d",
        "-v",
        "named:/n",
        "--net",
        "host",
        "-v=/gone/x:/y",
    ]
    assert argv.drop_missing_volumes(items, exists) == [
        "-v",
        "/have:/c",
        "-v=/have:/d",
        "-v",
        "named:/n",
        "--net",
        "host",
    ]


def test_tty_flags_from_the_registration_are_ignored() -> None:
    assert argv.user_opts(["-ti", "--net", "host", "--tty", "-i"]) == ["--net", "host"]


def test_run_argv_shapes() -> None:
    pre = argv.engine("/usr/bin/podman", debug=False)
    cmd = argv.run_argv(pre, "img", "/bin/app", ["--net", "host"], ["a", "b"], False, "/s/x.cid", "/s/x.pid")
    assert cmd == [
        "/usr/bin/podman",
        "--log-level=error",
        "run",
        "--rm",
        "-i",
        "--pull=missing",
        "--cidfile",
        "/s/x.cid",
        "--conmon-pidfile",
        "/s/x.pid",
        "--entrypoint",
        "/bin/app",
        "--net",
        "host",
        "img",
        "a",
        "b",
    ]
    tty = argv.run_argv(["podman"], "img", "/", [], [], True, "c", "p")
    assert tty[:6] == ["podman", "run", "--rm", "-i", "-t", "--init"] and "--entrypoint" not in tty
    assert argv.exec_argv(["podman"], "cid", "/bin/app", ["x"], False, "tok") == [
        "podman",
        "exec",
        "-i",
        "-e",
        "FLAKE_PILOT_SESSION=tok",
        "cid",
        "/bin/app",
        "x",
    ]
    create = argv.resume_create_argv(["podman"], "img", ["-v", "/a:/b"], "c", "p")
    assert create[-4:] == ["-v", "/a:/b", "img", "-P"] and "--init" in create


def test_exit_code_mapping() -> None:
    assert proc.exit_code(0) == 0
    assert proc.exit_code(3 << 8) == 3
    assert proc.exit_code(signal.SIGTERM) == 128 + signal.SIGTERM  # killed by a signal
    assert proc.exit_code(None) == 125


def test_not_pid1_means_plain_forwarding() -> None:
    assert not proc.is_pid1_without_handler(os.getpid(), signal.SIGTERM)
    assert not proc.is_pid1_without_handler(2**22 + 7, signal.SIGTERM)  # no such process


def test_session_finder_finds_the_topmost_tagged_process() -> None:
    token = f"t{os.getpid()}"
    env = {**os.environ, argv.SESSION_VAR: token}
    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], env=env)
    try:
        find = proc.by_session(argv.SESSION_VAR, token)
        found: list[int] = []
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:  # until the child has exec'd
            found = find()
        assert found == [child.pid]
    finally:
        child.kill()
        child.wait()


def test_instance_liveness_needs_the_right_conmon(tmp_path: Path) -> None:
    paths = instance.Paths(str(tmp_path), "app@x")
    assert instance.alive(paths) is None
    cid = "a" * 64
    Path(paths.cid).write_text(cid + "\n")
    Path(paths.pid).write_text(f"{os.getpid()}\n")  # alive, but not a conmon of that container
    assert instance.alive(paths) is None
    Path(paths.cid).write_text("not-an-id\n")
    assert instance.read_cid(paths.cid) == ""
    instance.clear(paths)
    assert not os.path.exists(paths.cid) and not os.path.exists(paths.pid)


def test_state_file_names_are_checked(tmp_path: Path) -> None:
    from flake_pilot.errors import SecurityError

    with pytest.raises(SecurityError):
        instance.Paths(str(tmp_path), "../x")
    assert instance.name("app", None, oneshot=True).startswith("app@+")
    assert instance.name("app", "n", oneshot=True) == "app@n"
    assert instance.name("app", None, oneshot=False) == "app"
