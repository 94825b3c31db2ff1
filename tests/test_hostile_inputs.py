"""Issue 7 part 4: a corpus of hostile inputs. Each one must give ONE clear line on stderr, a
non-zero documented exit code, no traceback, and change nothing (the prefix's flakes, ids and
bin dirs are snapshotted before and after, plus the file a planted symlink points to).

podman-pilot failures exit 125 (LAUNCHER_EXIT); flake-ctl failures exit with the documented
code of their error class (errors.EXIT_CODES).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BB_IMAGE, BIN, Prefix
from flake_pilot.errors import EXIT_CODES
from reliability import record

LAUNCHER = BIN / "podman-pilot"
GOOD = {
    "include": {"tar": None, "path": None},
    "container": {"name": BB_IMAGE, "target_app_path": "/bin/sh", "runtime": {"runas": "root"}},
}


def good(**container: object) -> str:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["container"].update(container)
    return yaml.safe_dump(data)


def laughs(mapping: bool, levels: int = 9) -> str:
    lines = []
    for i in range(levels):
        ref = "x" if i == 0 else f"*l{i - 1}"
        if mapping:
            body = ", ".join(f"k{j}: {ref}" for j in range(10))
            lines.append(f"l{i}: &l{i} {{{body}}}")
        else:
            lines.append(f"l{i}: &l{i} [{', '.join([ref] * 10)}]")
    return "\n".join(lines) + f"\ncontainer:\n  name: {BB_IMAGE}\n  runtime: *l{levels - 1}\n"


# -- the corpus -----------------------------------------------------------------------------------

YAML_CASES: dict[str, str | bytes] = {
    "not YAML (unclosed flow)": "container: [unclosed\n",
    "tab indentation": "container:\n\tname: x\n",
    "billion laughs (lists)": laughs(False),
    "billion laughs (mappings)": laughs(True),
    "deep nesting (5000 levels)": "container: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep mapping nesting (3000 levels)": "container:\n  name: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "file over 1 MiB": "# " + "x" * (1 << 20) + "\n" + good(),
    "huge image name (5000 chars)": good(name="a" * 5000),
    "python object tag": "container: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "unknown tag": "container: !evil {name: x}\n",
    "binary scalar as name": f"container:\n  name: !!binary {'aGVsbG8='}\n",
    "NUL in image name": good(name="bb\0evil"),
    "NUL in podman option": good(runtime={"runas": "root", "podman": ["-e A=\0"]}),
    "top level is a list": "- container\n- vm\n",
    "top level is a scalar": "just a string\n",
    "empty file": "",
    "no container nor vm": "include: {tar: null}\n",
    "container and vm at once": good() + "vm: {name: x}\n",
    "container is a string": "container: hello\n",
    "container is a list": "container: [1, 2]\n",
    "image name is a number": good(name=42),
    "image name is missing": good(name=None),
    "runtime is a string": good(runtime="fast"),
    "resume is a string": good(runtime={"runas": "root", "resume": "yes please"}),
    "resume and attach both": good(runtime={"runas": "root", "resume": True, "attach": True}),
    "podman options not a list": good(runtime={"runas": "root", "podman": 5}),
    "podman option not a string": good(runtime={"runas": "root", "podman": [["-v", "/:/host"]]}),
    "2000 podman options": good(runtime={"runas": "root", "podman": ["-e A=1"] * 2000}),
    "layers without base": good(layers=["x"]),
    "target path is a mapping": good(target_app_path={"a": 1}),
    "include.tar is a mapping": good() + "include: {tar: {a: 1}}\n",
    "duplicate anchors / undefined alias": "container: *nowhere\n",
    "invalid UTF-8": b"container:\n  name: \xff\xfe\n",
    "%VAR not set": good(runtime={"runas": "root", "podman": ["-e X=%FLAKE_HOSTILE_UNSET"]}),
    "%VAR: more than 64 expansions": good(runtime={"runas": "root", "podman": ["-e X=" + "%HOME" * 65]}),
    "%VAR: expands beyond 64 KiB": good(runtime={"runas": "root", "podman": ["-e X=%HOSTILE_BIG%HOSTILE_BIG"]}),
}

INSTANCE_CASES = {
    "instance name with /": "@a/b",
    "instance name ..": "@..",
    "instance name with newline": "@a\nb",
    "instance name with $(...)": "@$(id)",
    "instance name with ;": "@a;rm -rf x",
    "instance name with space": "@a b",
    "instance name with *": "@a*",
    "instance name empty": "@",
    "instance name 64 chars": "@" + "a" * 64,
    "instance name with . (hidden file)": "@.x",
    "instance name with control char": "@a\x1b[2J",
    "unknown %option": "%bogus",
    "bare %": "%",
}

APP_NAME_CASES = ["a;b", "a b", "a\nb", "$(id)", "a*", "-rf", "a" * 200]


@dataclass
class Outcome:
    code: int
    stderr: str


def snapshot(*dirs: Path) -> dict[str, tuple[int, int, bytes]]:
    snap = {}
    for d in dirs:
        if not d.exists():
            continue
        for p in sorted([d, *d.rglob("*")]):
            if p.name == ".flake-ctl.lock":  # flake-ctl's (empty) lock file may appear: not state
                continue
            st = p.lstat()
            data = (
                p.read_bytes()
                if p.is_file() and not p.is_symlink()
                else os.fsencode(str(p.readlink()))
                if p.is_symlink()
                else b""
            )
            snap[str(p)] = (st.st_mode, st.st_uid, data)
    return snap


def launch(prefix: Prefix, app: str, *args: str, env: dict[str, str] | None = None) -> Outcome:
    done = subprocess.run(
        [str(prefix.bin_dir / app), *args],
        env={**prefix.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout == "", done.stdout
    return Outcome(done.returncode, done.stderr)


def check(out: Outcome, who: str, codes: set[int] | None = None) -> str:
    lines = out.stderr.splitlines()
    assert "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1, out.stderr
    shown = who if who.isprintable() else ascii(who)
    assert lines[0].startswith(f"{shown}: "), lines[0]
    assert "internal error" not in lines[0], lines[0]
    if codes is None:
        codes = {125} if who != "flake-ctl" else set(EXIT_CODES) - {0}
    assert out.code in codes, (out.code, lines[0])
    return lines[0]


def hostile(case: str, prefix: Prefix, act: Callable[[], str], extra: list[Path] | None = None) -> None:
    """Run *act* (which asserts the error and returns its line) with the change-nothing check."""
    with record("4", case) as rec:
        rec.extra["group"] = "hostile input corpus (one line, documented exit code, nothing changed)"
        dirs = [prefix.flakes_dir, prefix.ids_dir, prefix.bin_dir, *(extra or [])]
        before = snapshot(*dirs)
        line = act()
        after = snapshot(*dirs)
        assert after == before, sorted(set(after.items()) ^ set(before.items()))[:4]
        rec.detail = line[:160]


def register_raw(prefix: Prefix, app: str, text: str | bytes) -> None:
    path = prefix.flakes_dir / f"{app}.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    (prefix.bin_dir / app).symlink_to(LAUNCHER)


@pytest.fixture
def root_prefix(prefix: Prefix, tmp_path: Path) -> Prefix:
    prefix.env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    prefix.env.pop("PILOT_DEBUG", None)
    return prefix


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_hostile_registration_yaml(root_prefix: Prefix, case: str) -> None:
    register_raw(root_prefix, "app", YAML_CASES[case])
    env = {"HOSTILE_BIG": "x" * 40000}
    t0 = time.monotonic()

    def act() -> str:
        line = check(launch(root_prefix, "app", "-c", "true", env=env), "app")
        assert "app.yaml" in line or "registration" in line, line  # names the file
        return line

    hostile(f"registration YAML: {case}", root_prefix, act)
    assert time.monotonic() - t0 < 30


def test_hostile_dropin(root_prefix: Prefix) -> None:
    register_raw(root_prefix, "app", good())
    dropins = root_prefix.flakes_dir / "app.d"
    dropins.mkdir()
    (dropins / "50-bad.yaml").write_text("container:\n  name: [not, a, string]\n")

    def act() -> str:
        line = check(launch(root_prefix, "app", "-c", "true"), "app")
        assert "50-bad.yaml" in line and "container.name" in line, line
        return line

    hostile("drop-in overriding the image with a list (error names the drop-in)", root_prefix, act)


@pytest.mark.parametrize("case", list(INSTANCE_CASES))
def test_hostile_caller_arguments(root_prefix: Prefix, case: str) -> None:
    register_raw(root_prefix, "app", good(runtime={"runas": "root", "resume": True}))
    hostile(
        f"caller argument: {case}",
        root_prefix,
        lambda: check(launch(root_prefix, "app", INSTANCE_CASES[case], "-c", "true"), "app"),
    )


@pytest.mark.parametrize("name", APP_NAME_CASES, ids=lambda n: repr(n)[:20])
def test_hostile_app_symlink_name(root_prefix: Prefix, name: str) -> None:
    (root_prefix.bin_dir / name).symlink_to(LAUNCHER)
    hostile(
        f"app symlink named {name[:20]!r}",
        root_prefix,
        lambda: check(launch(root_prefix, name, "-c", "true"), name),
    )


@pytest.mark.parametrize(
    "app", ["relative/app", "/x/../etc/passwd", "/tmp/a;b", "/tmp/a\nb", "/tmp/..", "/tmp/.hidden"]
)
def test_hostile_register_app_path(root_prefix: Prefix, app: str) -> None:
    hostile(
        f"flake-ctl register --app {app!r}",
        root_prefix,
        lambda: check(
            Outcome(*_ctl(root_prefix, "podman", "register", "--container", BB_IMAGE, "--app", app)),
            "flake-ctl",
            {2},
        ),
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--container=-rf"],
        ["--container", "a b"],
        ["--container", ""],
        ["--container", BB_IMAGE, "--target", "relative"],
        ["--container", BB_IMAGE, "--include-tar", "x.tar"],
    ],
    ids=lambda a: " ".join(a)[:30],
)
def test_hostile_register_options(root_prefix: Prefix, argv: list[str]) -> None:
    app = str(root_prefix.bin_dir / "app")
    hostile(
        f"flake-ctl register {' '.join(argv)!r}",
        root_prefix,
        lambda: check(Outcome(*_ctl(root_prefix, "podman", "register", *argv, "--app", app)), "flake-ctl", {2}),
    )


def _ctl(prefix: Prefix, *args: str) -> tuple[int, str]:
    done = prefix.ctl(*args)
    return done.returncode, done.stderr


def test_register_over_a_real_file_keeps_it(root_prefix: Prefix) -> None:
    victim = root_prefix.bin_dir / "ls"
    victim.write_text("#!/bin/sh\necho precious\n")
    hostile(
        "flake-ctl register over an existing non-flake file",
        root_prefix,
        lambda: check(
            Outcome(*_ctl(root_prefix, "podman", "register", "--container", BB_IMAGE, "--app", str(victim))),
            "flake-ctl",
            {5},
        ),
    )
    hostile(
        "flake-ctl remove --force of a non-flake file",
        root_prefix,
        lambda: check(
            Outcome(*_ctl(root_prefix, "podman", "remove", "--force", "--app", str(victim))), "flake-ctl", {5}
        ),
    )


# -- the per-user state dir -----------------------------------------------------------------------


def state_case(prefix: Prefix, case: str, plant: Callable[[Path], None], tmp_path: Path) -> None:
    register_raw(prefix, "app", good(runtime={"runas": "root", "resume": True}))
    prefix.ids_dir.mkdir(exist_ok=True, mode=0o1777)
    prefix.ids_dir.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "secret").write_text("keep me\n")
    plant(victim)

    def act() -> str:
        line = check(launch(prefix, "app", "-c", "true"), "app")
        return line

    hostile(f"state dir: {case}", prefix, act, extra=[victim])


def test_state_private_dir_is_a_symlink(root_prefix: Prefix, tmp_path: Path) -> None:
    state_case(
        root_prefix,
        "<ids>/<uid> is a symlink",
        lambda v: (root_prefix.ids_dir / str(os.getuid())).symlink_to(v),
        tmp_path,
    )


def test_state_cid_file_is_a_symlink(root_prefix: Prefix, tmp_path: Path) -> None:
    def plant(v: Path) -> None:
        d = root_prefix.ids_dir / str(os.getuid())
        d.mkdir(mode=0o700)
        (d / "app.cid").symlink_to(v / "secret")

    state_case(root_prefix, "app.cid is a symlink to another file", plant, tmp_path)


def test_state_pid_file_is_a_symlink(root_prefix: Prefix, tmp_path: Path) -> None:
    def plant(v: Path) -> None:
        d = root_prefix.ids_dir / str(os.getuid())
        d.mkdir(mode=0o700)
        (d / "app.cid").write_text("a" * 64 + "\n")
        (d / "app.pid").symlink_to(v / "secret")

    state_case(root_prefix, "app.pid is a symlink to another file", plant, tmp_path)


def test_state_lock_file_is_a_symlink(root_prefix: Prefix, tmp_path: Path) -> None:
    def plant(v: Path) -> None:
        d = root_prefix.ids_dir / str(os.getuid())
        d.mkdir(mode=0o700)
        (d / "app.lock").symlink_to(v / "secret")

    state_case(root_prefix, "app.lock is a symlink to another file", plant, tmp_path)


def test_state_base_world_writable_without_sticky_bit(root_prefix: Prefix, tmp_path: Path) -> None:
    def plant(v: Path) -> None:
        root_prefix.ids_dir.chmod(0o777)

    state_case(root_prefix, "state base world-writable without the sticky bit", plant, tmp_path)


def test_state_base_is_a_symlink(root_prefix: Prefix, tmp_path: Path) -> None:
    register_raw(root_prefix, "app", good(runtime={"runas": "root", "resume": True}))
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o1777)
    root_prefix.ids_dir.symlink_to(victim)
    hostile(
        "state dir: the state base is a symlink",
        root_prefix,
        lambda: check(launch(root_prefix, "app", "-c", "true"), "app"),
        extra=[victim],
    )


def test_state_private_dir_owned_by_another_user(root_prefix: Prefix, tmp_path: Path) -> None:
    def plant(v: Path) -> None:
        d = root_prefix.ids_dir / str(os.getuid())
        d.mkdir(mode=0o700)
        os.chown(d, 1001, 1001)

    state_case(root_prefix, "<ids>/<uid> owned by another user", plant, tmp_path)


def test_var_expansion_loop_is_not_followed(tmp_path: Path, system_storage: Path, bb_image: str) -> None:
    """%A -> "%B" -> "%A" ...: values are inserted literally and never expanded again (one pass)."""
    from podman_scopes import root_scope

    with record("4", "%VAR expansion loop (A=%B, B=%A): one pass, values literal") as rec:
        s = root_scope(tmp_path, system_storage)
        try:
            s.register("app", opts=["-e X=%A+%B"])
            done = s.run("app", "-c", 'echo "$X"', env={"A": "%B", "B": "%A"}, timeout=60)
            assert (done.returncode, done.stdout) == (0, "%B+%A\n"), done.stderr
            rec.detail = "the app saw X='%B+%A' (no second expansion, no loop)"
        finally:
            s.cleanup()
