"""Attacks on the launcher's promises (docs/security.md), driven as an attacker would: the
installed-style launcher (the venv's podman-pilot through an app symlink), real podman, root and
the rootless test user as victims, the second unprivileged account (``flakeattk``, created by
scripts/setup-host.sh --test) as the attacker where the case needs another user.

Each test names the attack it replays; each failed on the tree before the matching mend.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import STATE, TEST_USER, Prefix
from podman_scopes import LAUNCHER, USER_HOME, Scope, prepare_user, remove_user_scope, root_scope, user_scope

ATTACK_USER = os.environ.get("FLAKE_ATTACK_USER", "flakeattk")


@pytest.fixture(scope="module")
def attacker() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(ATTACK_USER)
    except KeyError:
        pytest.fail(f"attacker account {ATTACK_USER!r} missing: run scripts/setup-host.sh --test")
    return pw.pw_uid, pw.pw_gid


def as_attacker(attacker: tuple[int, int], *argv: str) -> None:
    """Run argv as the attacker (no shell on our side: argv as given)."""
    uid, gid = attacker
    done = subprocess.run(
        list(argv), user=uid, group=gid, extra_groups=[], cwd="/", capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, (argv, done.stderr)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A root-owned 1777 dir like /tmp (pytest's tmp_path is private to root: no attacker reaches it)."""
    path = Path("/tmp") / f"flake-attack-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


LABEL = f"flake-attack={uuid.uuid4().hex[:12]}"  # every container these tests start carries it


def register(scope: Scope, name: str, **kw: object) -> Path:
    return scope.register(name, opts=[f"--label={LABEL}"], **kw)  # type: ignore[arg-type]


def call(
    scope: Scope, name: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the app; a call that hangs is killed with its whole group and reported (returncode None)."""
    proc = scope.popen(
        name,
        *args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        code = None
    return subprocess.CompletedProcess(proc.args, code, out, err)  # type: ignore[arg-type]


def remove_labelled(scope: Scope) -> None:
    scope.podman("rm", "-f", "-t", "0", "--filter", f"label={LABEL}")


@pytest.fixture
def root(tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = root_scope(tmp_path, system_storage)
    yield s
    for path in s.ids_dir.glob("*/*"):  # damage a test left (a FIFO would block the cleanup's reads)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif not path.is_file():
            path.unlink()
    s.cleanup()
    remove_labelled(s)


def one_line_125(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 125, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def use_ids_dir(scope: Scope, ids: Path | None) -> None:
    """Point the scope's system config at *ids* (None: no podman_ids_dir, the default)."""
    config = Path(scope.env["FLAKES_CONFIG"])
    lines = [ln for ln in config.read_text().splitlines() if "_ids_dir:" not in ln]
    if ids is not None:
        lines.append(f"  podman_ids_dir: {ids}")
    config.write_text("\n".join(lines) + "\n")


# -- 1: state base ----------------------------------------------------------------------------------


def test_root_state_defaults_to_a_root_only_runtime_dir(root: Scope) -> None:
    """No state in a /tmp path any user can create first: root's default base is /run/flakes."""
    use_ids_dir(root, None)
    app = f"atk-run-{uuid.uuid4().hex[:6]}"
    register(root, app, resume=True)
    done = call(root, app, "-c", "echo in")
    state = Path("/run/flakes/0")
    try:
        assert (done.returncode, done.stdout) == (0, "in\n"), done.stderr
        cid = state / f"{app}.cid"
        assert cid.is_file() and len(cid.read_text().split()[0]) == 64
        base = os.lstat("/run/flakes")
        assert base.st_uid == 0 and not base.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        own = os.lstat(state)
        assert own.st_uid == 0 and stat.S_IMODE(own.st_mode) == 0o700
    finally:
        cid = state / f"{app}.cid"
        if cid.exists():
            root.podman("rm", "-f", "-t", "0", cid.read_text().split()[0])
        for f in state.glob(f"{app}.*"):
            f.unlink()


@pytest.mark.parametrize("mode", [0o1777, 0o755])
def test_a_base_another_user_owns_is_refused(
    root: Scope, attacker: tuple[int, int], public_dir: Path, mode: int
) -> None:
    """The attacker creates the configured shared base first (sticky or not): root refuses it
    before writing anything, so no swap of <base>/0 can redirect root's files."""
    base = public_dir / "flakes"
    as_attacker(attacker, "mkdir", "-m", f"{mode:o}", str(base))
    use_ids_dir(root, base)
    register(root, "atk-base", resume=True)
    done = call(root, "atk-base", "-c", "echo never")
    one_line_125(done, str(base), f"uid {attacker[0]}")
    assert done.stdout == "" and os.listdir(base) == []


def test_a_symlink_on_the_way_to_the_base_is_refused(root: Scope, attacker: tuple[int, int], public_dir: Path) -> None:
    """A component of the configured base is the attacker's symlink to a dir of root's."""
    victim = root.root / "victim"
    victim.mkdir(mode=0o700)
    as_attacker(attacker, "ln", "-s", str(victim), str(public_dir / "link"))
    use_ids_dir(root, public_dir / "link" / "ids")
    register(root, "atk-link", resume=True)
    one_line_125(call(root, "atk-link", "-c", "echo never"), "symbolic link")
    assert os.listdir(victim) == []


def test_a_user_state_dir_is_their_own(system_storage: Path, bb_image: str) -> None:
    """A user with no configured base keeps state in their own cache dir (no XDG_RUNTIME_DIR here)."""
    scope = user_scope(*prepare_user(system_storage))
    try:
        for cfg in (Path(scope.env["FLAKES_CONFIG"]), scope.root / "config" / "flakes.yml"):
            cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if "_ids_dir:" not in ln) + "\n")
        register(scope, "atk-own", resume=True)
        done = call(scope, "atk-own", "-c", "echo mine")
        assert (done.returncode, done.stdout) == (0, "mine\n"), done.stderr
        state = Path(scope.env["XDG_CACHE_HOME"]) / "flake-pilot" / "run" / str(scope.uid)
        assert (state / "atk-own.cid").is_file()
        assert os.lstat(state).st_uid == scope.uid and stat.S_IMODE(os.lstat(state).st_mode) == 0o700
        cid = (state / "atk-own.cid").read_text().split()[0]
        scope.podman("rm", "-f", "-t", "0", cid)
    finally:
        remove_labelled(scope)
        remove_user_scope(scope)


# -- 3: root never reads a user's configuration ---------------------------------------------------


def test_root_never_runs_the_engine_a_user_config_names(root: Scope, system_storage: Path) -> None:
    """A system flake with runas: <user>, called by root with the user's XDG_CONFIG_HOME kept
    (su without -, sudo -E): the user's flakes.yml names podman_binary; root must not run it."""
    uid, gid = pwd.getpwnam(TEST_USER).pw_uid, pwd.getpwnam(TEST_USER).pw_gid
    evil = USER_HOME / f"evil-{uuid.uuid4().hex[:8]}"
    config = evil / "config"
    config.mkdir(parents=True)
    marker = evil / "ran-as-root"
    script = evil / "podman"
    script.write_text(f"#!/bin/sh\nid -u > {marker}\nexit 0\n")
    script.chmod(0o755)
    (config / "flakes.yml").write_text(f"generic:\n  podman_binary: {script}\n")
    for path in (evil, config, script, config / "flakes.yml"):
        os.chown(path, uid, gid)
    try:
        register(root, "atk-runas", runas=TEST_USER)
        done = call(root, "atk-runas", "-c", "echo real", env={"XDG_CONFIG_HOME": str(config)})
        assert not marker.exists(), "root ran the program a user's configuration named"
        assert (done.returncode, done.stdout) == (0, "real\n"), done.stderr
    finally:
        shutil.rmtree(evil, ignore_errors=True)


# -- 9: damaged state -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["cid", "pid", "spec", "oci"])
@pytest.mark.parametrize("damage", ["fifo", "dir", "garbage"])
def test_damaged_state_never_hangs_and_heals(root: Scope, suffix: str, damage: str) -> None:
    """A FIFO, an empty directory or garbage in place of a state file: the call completes (no
    hang, no internal error), the instance is the one that ran before (no leak), later calls work."""
    register(root, "atk-dmg", resume=True)
    first = call(root, "atk-dmg", "-c", "echo up", timeout=60)
    assert first.returncode == 0, first.stderr
    state = root.ids_dir / "0"
    cid = (state / "atk-dmg.cid").read_text().split()[0]
    target = state / f"atk-dmg.{suffix}"
    target.unlink()
    if damage == "fifo":
        os.mkfifo(target, 0o600)
    elif damage == "dir":
        target.mkdir()
    else:
        target.write_text("garbage\n")
    for _ in range(2):
        done = call(root, "atk-dmg", "-c", "echo again", timeout=30)
        assert (done.returncode, done.stdout) == (0, "again\n"), done.stderr
    running = root.podman("ps", "-q", "--no-trunc", "--filter", f"label={LABEL}").stdout.split()
    if suffix == "spec":  # a spec that no longer matches replaces the instance, the old one removed
        assert len(running) == 1, running
    else:
        assert running == [cid], "the instance that ran before was leaked or replaced"
    if target.exists() and not target.is_file():  # left where a call never needs it: harmless
        target.rmdir() if target.is_dir() else target.unlink()


def test_damaged_plan_cache_never_hangs(root: Scope) -> None:
    register(root, "atk-plan")
    assert call(root, "atk-plan", "-c", "true").returncode == 0
    plans = Path(root.env["XDG_CACHE_HOME"]) / "flake-pilot" / "plans"
    (plan,) = plans.glob("podman-atk-plan-*.plan")
    plan.unlink()
    os.mkfifo(plan, 0o600)
    done = call(root, "atk-plan", "-c", "echo fine", timeout=30)
    assert (done.returncode, done.stdout) == (0, "fine\n"), done.stderr


# -- 8: names that would collide ------------------------------------------------------------------


def test_at_and_plus_in_app_names_never_share_state(root: Scope) -> None:
    """The flake ``rsh@x`` and the call ``rsh @x`` are two instances; a one-shot ``bsh`` call
    never garbage-collects the state of a resume flake named ``bsh@+1``."""
    register(root, "rsh", resume=True)
    register(root, "rsh@x", resume=True)
    a = call(root, "rsh", "@x", "-c", "hostname")
    b = call(root, "rsh@x", "-c", "hostname")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout != b.stdout, "one container served both"
    register(root, "bsh")
    register(root, "bsh@+1", resume=True)
    first = call(root, "bsh@+1", "-c", "hostname")
    assert first.returncode == 0, first.stderr
    assert call(root, "bsh", "-c", "true").returncode == 0
    again = call(root, "bsh@+1", "-c", "hostname")
    assert again.stdout == first.stdout, "the resume instance's state was collected"
    cids = [f.read_text().split()[0] for f in root.cid_files()]
    assert len(cids) == len(set(cids)) == 3


# -- 2: host files private by directory -----------------------------------------------------------


@pytest.fixture(scope="module")
def removed_image(system_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A delta image whose /removed lists host files: one in a 0700 dir, one behind another
    user's symlink, one readable the whole way (the control)."""
    from delta_images import BASE, build_images

    build_images(system_storage, tmp_path_factory.mktemp("atk-build"))
    host = STATE / f"atk-host-{uuid.uuid4().hex[:8]}"
    (host / "private").mkdir(parents=True)
    host.chmod(0o755)
    (host / "private").chmod(0o700)
    (host / "private" / "key").write_text("secret\n")
    (host / "private" / "key").chmod(0o644)
    (host / "open.txt").write_text("public\n")
    (host / "open.txt").chmod(0o644)
    image = f"localhost/flake-test/atk-removed-{uuid.uuid4().hex[:6]}:latest"
    ctx = tmp_path_factory.mktemp("atk-ctx")
    lines = [f"{host}/private/key", f"/tmp/flake-atk-link-{host.name}/key", f"{host}/open.txt"]
    (ctx / "removed").write_text("\n".join(lines) + "\n")
    (ctx / "Containerfile").write_text(f"FROM {BASE}\nCOPY removed /removed\n")
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(system_storage)}
    subprocess.run(["podman", "build", "-q", "--pull=never", "-t", image, str(ctx)], env=env, check=True)
    yield image, host
    subprocess.run(["podman", "rmi", "-f", image], env=env, capture_output=True)
    shutil.rmtree(host, ignore_errors=True)


def test_host_files_private_by_directory_stay_on_the_host(
    root: Scope, removed_image: tuple[str, Path], attacker: tuple[int, int]
) -> None:
    from delta_images import registration

    image, host = removed_image
    link = Path(f"/tmp/flake-atk-link-{host.name}")
    link.unlink(missing_ok=True)
    as_attacker(attacker, "ln", "-s", str(host / "private"), str(link))
    try:
        registration(root.flakes_dir, "atk-deps", name=image, target_app_path="/bin/cat", check_host_dependencies=True)
        (root.bin_dir / "atk-deps").symlink_to(LAUNCHER)
        refused = call(root, "atk-deps", f"{host}/open.txt")
        one_line_125(refused, f"{host}/private/key", "private")
        done = call(
            root, "atk-deps", "%ignore_sync_error", f"{host}/open.txt", f"{host}/private/key", str(link / "key")
        )
        assert done.stdout == "public\n" and "secret" not in done.stdout, done
        assert done.returncode == 1  # cat: the two private paths do not exist in the container
    finally:
        link.unlink(missing_ok=True)
        from flake_pilot.podman import compose

        compose.free_entries(app="atk-deps", env={"CONTAINERS_STORAGE_CONF": str(root.storage)})


# -- 5: closed standard streams -------------------------------------------------------------------

CLOSE_AND_EXEC = "import os, sys; os.close(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"


@pytest.mark.parametrize("resume", [False, True], ids=["oneshot", "resume"])
@pytest.mark.parametrize("closed", [0, 1, 2], ids=["stdin", "stdout", "stderr"])
def test_closed_standard_stream(root: Scope, closed: int, resume: bool) -> None:
    """``app -c 'echo x' >&-`` (and 2>&-, <&-): the app runs and its status comes back, no traceback."""
    app = f"atk-closed-{int(resume)}"
    register(root, app, resume=resume)
    argv = [shutil.which("python3") or "/usr/bin/python3", "-c", CLOSE_AND_EXEC, str(closed), *root.argv(app)]
    done = subprocess.run(
        [*argv, "-c", "echo out; echo err >&2; exit 3"],
        env=root.env,
        stdin=None if closed == 0 else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ("" if closed == 1 else "out\n")
    assert done.stderr == ("" if closed == 2 else "err\n")


# -- 7: hung engines ------------------------------------------------------------------------------


def hung_engine(scope: Scope) -> tuple[Path, Path]:
    """An engine that hangs and ignores SIGTERM/SIGINT/SIGHUP, with a child of its own (a fake:
    real podman cannot be made to hang on demand). Returns (script, file with the child's pid)."""
    script = scope.root / "hung-podman"
    child_pid = scope.root / "hung-child.pid"
    script.write_text(
        "#!/bin/sh\ntrap '' TERM INT HUP\nsleep 300 &\n"
        f"echo $! > {child_pid}.tmp\nmv {child_pid}.tmp {child_pid}\nwait\n"
    )
    script.chmod(0o755)
    config = Path(scope.env["FLAKES_CONFIG"])
    config.write_text(config.read_text() + f"  podman_binary: {script}\n")
    return script, child_pid


def wait_for(path: Path, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.parametrize("resume", [False, True], ids=["oneshot", "resume"])
def test_sigterm_ends_a_launch_whose_engine_hangs(root: Scope, resume: bool) -> None:
    """SIGTERM while the engine hangs before the app starts, the engine ignoring SIGTERM: the
    launcher ends within seconds (128+15) and takes the engine's whole process group with it."""
    import time

    _, child_pid = hung_engine(root)
    register(root, "atk-hung", resume=resume)
    proc = root.popen("atk-hung", "-c", "true", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(child_pid)
        sent = time.monotonic()
        proc.send_signal(15)
        proc.wait(timeout=20)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pid = int(child_pid.read_text())
    if not gone(pid):
        os.kill(pid, 9)
        pytest.fail("the hung engine's child outlived the launcher")
    assert proc.returncode in (143, 125) and took < 12, (proc.returncode, took, proc.stderr.read())


def test_engine_timeout_ends_the_engines_whole_group(root: Scope) -> None:
    """PILOT_ENGINE_TIMEOUT bounds an engine helper call (here: creating a resume instance);
    the engine and every process it started are gone afterwards, one line, 125."""
    _, child_pid = hung_engine(root)
    register(root, "atk-slow", resume=True)
    done = call(root, "atk-slow", "-c", "true", env={"PILOT_ENGINE_TIMEOUT": "2"}, timeout=30)
    wait_for(child_pid, 1)
    pid = int(child_pid.read_text())
    if not gone(pid):
        os.kill(pid, 9)
        pytest.fail("the engine's child outlived the timeout")
    one_line_125(done, "no answer within 2 s")


# -- 4: parallel calls of an attach flake ---------------------------------------------------------


def test_parallel_attach_calls_each_get_their_status(root: Scope) -> None:
    """16 calls at once on a fresh attach instance: each runs the app once and gets its status
    (the app exits 1), none sees podman's "can only attach to running containers" or 0."""
    register(root, "atk-attach", attach=True)
    procs = [
        root.popen("atk-attach", "-c", "exit 1", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(16)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stderr.close()  # type: ignore[union-attr]
    assert [code for code, _ in results] == [1] * 16, results


# -- 6, 10: a full state disk ---------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled up (a real full filesystem; root mounts it)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "ids").mkdir()
        (mnt / "ids" / "0").mkdir(mode=0o700)
        with open(mnt / "filler", "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def conmons_under(path: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if entry.isdigit() and b"conmon" in cmdline.split(b"\0")[0] and str(path).encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("resume", [False, True], ids=["oneshot", "resume"])
def test_full_state_disk_is_one_line_and_leaks_nothing(root: Scope, full_disk: Path, resume: bool) -> None:
    use_ids_dir(root, full_disk / "ids")
    register(root, "atk-full", resume=resume)
    for _ in range(2):
        done = call(root, "atk-full", "-c", "echo never")
        one_line_125(done, "no space left")
        assert done.stdout == ""
    assert conmons_under(full_disk) == [], "a conmon (and its runc init) was left behind"
    assert root.podman("ps", "-a", "-q", "--filter", f"label={LABEL}").stdout.split() == []
    (full_disk / "filler").unlink()
    done = call(root, "atk-full", "-c", "echo works")
    assert (done.returncode, done.stdout) == (0, "works\n"), done.stderr
    remove_labelled(root)


# -- 11: download bounds --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["trickle", "too big"])
def test_download_deadline_and_size_cap(fc: Prefix, cert: tuple[Path, Path], rootfs_bytes: bytes, case: str) -> None:
    """A server trickling a byte every 0.2 s is given up at FLAKE_DOWNLOAD_TIMEOUT; an image
    over FLAKE_DOWNLOAD_MAX_SIZE is refused; one line, exit 7, no partial file or staging left."""
    import time

    from fc_ctl_fixtures import registry
    from https_server import Site, kis_members, kis_tarball, serve

    site = Site(files={"/x.tar.xz": kis_tarball(kis_members(rootfs_bytes))})
    env = {"FLAKE_DOWNLOAD_TIMEOUT": "2"} if case == "trickle" else {"FLAKE_DOWNLOAD_MAX_SIZE": "1MiB"}
    if case == "trickle":
        site.trickle.add("/x.tar.xz")
    else:
        site.files["/x.tar.xz"] += b"\0" * (2 << 20)  # trailing zeros: still over the cap on the wire
    with serve(site, cert) as srv:
        started = time.monotonic()
        done = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/x.tar.xz"), env=env, timeout=60)
        took = time.monotonic() - started
    assert done.returncode == 7 and done.stderr.count("\n") == 1, (done.returncode, done.stderr)
    assert ("FLAKE_DOWNLOAD_TIMEOUT" if case == "trickle" else "FLAKE_DOWNLOAD_MAX_SIZE") in done.stderr
    assert took < 30, took
    reg = registry(fc)
    assert not reg.exists() or [p.name for p in reg.iterdir() if p.name.startswith(".pull-")] == []
    assert not (reg / "images" / "leap").exists()


@pytest.mark.parametrize("damage", ["fifo", "garbage"])
def test_damaged_cid_of_a_kept_container_neither_hangs_nor_leaks(root: Scope, damage: str) -> None:
    """An attach flake reads its .cid on every call: a FIFO there must not hang it, garbage there
    must not leave the old container behind (unknown to every later call)."""
    register(root, "atk-kept", attach=True)
    assert call(root, "atk-kept", "-c", "exit 4").returncode == 4
    target = root.ids_dir / "0" / "atk-kept.cid"
    target.unlink()
    if damage == "fifo":
        os.mkfifo(target, 0o600)
    else:
        target.write_text("garbage\n")
    for _ in range(2):
        done = call(root, "atk-kept", "-c", "exit 4", timeout=30)
        assert done.returncode == 4, (done.returncode, done.stderr)
    kept = root.podman("ps", "-a", "-q", "--filter", f"label={LABEL}").stdout.split()
    assert len(kept) == 1, f"containers of one attach instance: {kept}"
