"""Issue 7 part 5: privilege. User-mode flakes never need root, system flakes give an ordinary
user nothing beyond the registration (and beyond the user's own rights), state is private.

Every user-side command runs as the rootless test user with ``sudo`` trapped: a ``sudo`` first in
PATH records that it was called (and fails). The test user has no sudo rights either.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, need_program
from podman_scopes import USER_HOME, Scope, prepare_user, remove_user_scope, root_scope, user_scope
from reliability import record

SUDO_TRAP = '#!/bin/sh\necho "$@" >> "$(dirname "$0")/sudo-called"\nexit 1\n'


@pytest.fixture
def uscope(system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = user_scope(*prepare_user(system_storage))
    trap = s.root / "trap"
    trap.mkdir()
    (trap / "sudo").write_text(SUDO_TRAP)
    (trap / "sudo").chmod(0o755)
    os.chown(trap, s.uid, s.gid)
    s.env["PATH"] = f"{trap}:{s.bin_dir}:{BIN}:/usr/bin:/bin"
    yield s
    remove_user_scope(s)


def as_user(s: Scope, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv),
        env={**s.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        user=s.uid,
        group=s.gid,
        extra_groups=[],
        cwd=str(USER_HOME),
        stdin=subprocess.DEVNULL,
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    return done


def private_problems(root: Path, uid: int) -> list[str]:
    """Every dir 0700 and every file 0600 (no group/other bits), owned by *uid*; locks may be empty."""
    bad = []
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            bad.append(f"{p}: symlink")
        elif st.st_uid != uid:
            bad.append(f"{p}: owner {st.st_uid}")
        elif st.st_mode & 0o077:
            bad.append(f"{p}: mode {oct(st.st_mode & 0o777)}")
    return bad


def test_user_mode_flow_needs_no_root(uscope: Scope) -> None:
    with record(
        "5",
        "user-mode flow as the rootless user, sudo trapped (register, resume, one-shot, show, remove)",
        count=1,
    ) as rec:
        sudo = need_program("sudo", "sudo", path="/usr/bin:/bin")
        assert (
            subprocess.run(
                [sudo, "-n", "-l"],
                user=uscope.uid,
                group=uscope.gid,
                extra_groups=[],
                capture_output=True,
                env={"PATH": "/usr/bin:/bin"},
                cwd=str(USER_HOME),
            ).returncode
            != 0
        ), "the test user must not have sudo rights"
        app = uscope.bin_dir / "uapp"
        ctl = str(BIN / "flake-ctl")
        ok(
            as_user(
                uscope,
                ctl,
                "podman",
                "--user",
                "register",
                "--container",
                "localhost/flake-test/bb:latest",
                "--app",
                str(app),
                "--target",
                "/bin/sh",
                "--resume",
            )
        )
        one = uscope.bin_dir / "uone"
        ok(
            as_user(
                uscope,
                ctl,
                "podman",
                "--user",
                "register",
                "--container",
                "localhost/flake-test/bb:latest",
                "--app",
                str(one),
                "--target",
                "/bin/sh",
            )
        )
        res = ok(as_user(uscope, str(app), "-c", "id -u; cat /proc/self/uid_map"))
        lines = res.stdout.split("\n")
        assert lines[0] == "0" and lines[1].split()[:2] == ["0", str(uscope.uid)], res.stdout  # root = the user
        ok(as_user(uscope, str(one), "-c", "echo one"))
        shown = json.loads(ok(as_user(uscope, ctl, "podman", "--user", "show", "--format", "json")).stdout)
        assert [r["name"] for r in shown] == ["uapp"] and shown[0]["status"] == "running", shown
        state = uscope.ids_dir / str(uscope.uid)
        problems = private_problems(state, uscope.uid)
        cache = Path(uscope.env["XDG_CACHE_HOME"]) / "flake-pilot"
        problems += private_problems(cache, uscope.uid)
        assert problems == [], problems
        ok(as_user(uscope, str(app), "%remove", "-c", "true"))
        ok(as_user(uscope, ctl, "podman", "--user", "remove", "--app", str(app)))
        ok(as_user(uscope, ctl, "podman", "--user", "remove", "--app", str(one)))
        assert not (uscope.root / "trap" / "sudo-called").exists(), (uscope.root / "trap" / "sudo-called").read_text()
        rec.detail = (
            "no sudo call, container root = the user's uid; state dir, cid/pid/lock and plan cache "
            "all 0700/0600 owned by the user"
        )


def test_root_state_is_private(tmp_path: Path, system_storage: Path, bb_image: str) -> None:
    with record("5", "root scope: state and plan cache private after resume, attach and one-shot", count=3) as rec:
        s = root_scope(tmp_path, system_storage)
        try:
            s.register("r", resume=True)
            s.register("a", attach=True)
            s.register("o")
            for app in ("r", "a", "o"):
                done = s.run(app, "-c", "true")
                assert done.returncode == 0, done.stderr
            state = s.ids_dir / "0"
            assert stat.S_IMODE(s.ids_dir.stat().st_mode) == 0o1777  # the shared base: sticky
            problems = private_problems(state, 0) + private_problems(Path(s.env["XDG_CACHE_HOME"]) / "flake-pilot", 0)
            assert problems == [], problems
            rec.detail = f"{len(list(state.iterdir()))} state files, all 0600 in a 0700 dir; base 1777"
        finally:
            s.cleanup()


def test_system_flake_for_users_gives_no_more_than_the_users_rights(uscope: Scope, system_storage: Path) -> None:
    """A root-owned system registration with runas: <user> runs in the caller's rootless podman:
    asking for /root or --privileged in the registration gives the user nothing new."""
    with record("5", "system flake (root-owned registration) started by an ordinary user", count=2) as rec:
        sysflakes = uscope.root / "sysflakes"
        system = Scope("root", uscope.root, sysflakes, uscope.ids_dir, uscope.bin_dir, uscope.storage, uscope.env)
        secret = Path("/root") / f"flake-secret-{uuid.uuid4().hex[:6]}"
        secret.write_text("root only\n")
        secret.chmod(0o600)
        try:
            system.register("peek", opts=[f"--volume {secret}:/secret", "--privileged"], runas="flaketest")
            for p in (sysflakes, sysflakes / "peek.yaml"):
                os.chown(p, 0, 0)
            (sysflakes / "peek.yaml").chmod(0o644)
            done = as_user(uscope, str(uscope.bin_dir / "peek"), "-c", "cat /secret; id -u")
            assert "root only" not in done.stdout, done.stdout
            assert done.returncode != 0 or "Permission denied" in done.stderr, (done.returncode, done.stderr)
            # runas root: refused outright for the ordinary user, nothing created
            system.register("rootapp")
            (sysflakes / "rootapp.yaml").chmod(0o644)
            before = sorted(uscope.ids_dir.rglob("*"))
            refused = as_user(uscope, str(uscope.bin_dir / "rootapp"), "-c", "id")
            assert refused.returncode == 125 and "runas root" in refused.stderr, refused.stderr
            assert sorted(uscope.ids_dir.rglob("*")) == before
            # the user cannot change the system registration
            wr = as_user(uscope, "/bin/sh", "-c", f"echo x >> {sysflakes / 'peek.yaml'}")
            assert wr.returncode != 0
            assert not (uscope.root / "trap" / "sudo-called").exists()
            rec.detail = (
                "runas=user: root-only file not readable despite --volume/--privileged in the "
                "registration; runas root: exit 125, nothing created; registration not writable"
            )
        finally:
            secret.unlink()
