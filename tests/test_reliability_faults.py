"""Issue 7 part 2: faults. The launcher SIGKILLed at each step of a launch, a full disk, a missing
engine, a hanging engine.

Fault injector: a wrapper named ``podman`` first in PATH. For the podman subcommand named by
``FAULT_AT`` it writes its PID to ``$FAULT_DIR/reached`` (the synchronisation point the test
polls for) and then blocks, either before running the real podman (``FAULT_MODE=before``) or
after it (``after``), or never answers at all (``hang``). Every other call goes straight to the
real podman.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import BB_IMAGE, Prefix, need_root, podman
from podman_scopes import LAUNCHER, Scope, root_scope
from reliability import record

REAL_PODMAN = subprocess.run(["sh", "-c", "command -v podman"], capture_output=True, text=True).stdout.strip()

FAKE = """#!/bin/sh
sub=""
for a in "$@"; do case "$a" in -*) ;; *) sub="$a"; break ;; esac; done
if [ "$sub" = "$FAULT_AT" ]; then
  case "$FAULT_MODE" in
    before) echo $$ > "$FAULT_DIR/r.tmp"; mv "$FAULT_DIR/r.tmp" "$FAULT_DIR/reached"; exec sleep 3600 ;;
    after) "$REAL_PODMAN" "$@"; echo $$ > "$FAULT_DIR/r.tmp"; mv "$FAULT_DIR/r.tmp" "$FAULT_DIR/reached"
           exec sleep 3600 ;;
    hang) exec sleep 3600 ;;
  esac
fi
exec "$REAL_PODMAN" "$@"
"""


def wait_for(cond, what: str, timeout: float = 120.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Injector:
    def __init__(self, root: Path) -> None:
        self.dir = root / "fault"
        self.bin = self.dir / "bin"
        self.bin.mkdir(parents=True)
        fake = self.bin / "podman"
        fake.write_text(FAKE)
        fake.chmod(0o755)

    def env(self, scope: Scope, at: str, mode: str) -> dict[str, str]:
        (self.dir / "reached").unlink(missing_ok=True)
        return {
            "PATH": f"{self.bin}:{scope.env['PATH']}",
            "FAULT_AT": at,
            "FAULT_MODE": mode,
            "FAULT_DIR": str(self.dir),
            "REAL_PODMAN": REAL_PODMAN,
        }

    def reached(self, proc: subprocess.Popen) -> int:
        path = self.dir / "reached"

        def ready() -> bool:
            if proc.poll() is not None and not path.exists():
                out, err = proc.communicate()
                raise AssertionError(f"launcher ended (rc {proc.returncode}) before the fault point: {err[-500:]!r}")
            return path.exists()

        wait_for(ready, f"the launcher to reach the fault point ({path})")
        return int(path.read_text())


@pytest.fixture
def scope(tmp_path: Path, system_storage: Path, bb_image: str) -> Iterator[Scope]:
    s = root_scope(tmp_path, system_storage)
    yield s
    s.cleanup()


def kill_at(scope: Scope, inj: Injector, app: str, at: str, mode: str, *args: str) -> None:
    """Start the app, wait until the fault point is reached, SIGKILL the launcher and the blocked
    engine call (as a crash of the whole launch would leave it)."""
    proc = scope.popen(
        app,
        *args,
        env=inj.env(scope, at, mode),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        blocked = inj.reached(proc)
        proc.kill()
        os.kill(blocked, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def labelled(scope: Scope, label: str) -> list[str]:
    return scope.podman("ps", "-a", "-q", "--filter", f"label={label}", check=True).stdout.split()


def state_names(scope: Scope) -> list[str]:
    return sorted(p.name for p in scope.state_files() if p.is_file())


@pytest.mark.parametrize(
    ("step", "at", "mode"),
    [
        ("before create", "run", "before"),
        ("after create", "run", "after"),
    ],
    ids=["before-create", "after-create"],
)
def test_sigkill_during_resume_launch(scope: Scope, tmp_path: Path, step: str, at: str, mode: str) -> None:
    with record("2", f"SIGKILL of the launcher {step} (resume flake)", count=1) as rec:
        inj = Injector(tmp_path)
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", resume=True, opts=[f"--label {label}"])
        kill_at(scope, inj, "app", at, mode, "-c", "echo first")
        created = labelled(scope, label)
        assert len(created) == (1 if mode == "after" else 0), created
        shown = subprocess.run(
            [str(Path(LAUNCHER).parent / "flake-ctl"), "podman", "show", "--format", "json"],
            env=scope.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in shown.stderr and shown.returncode in (0, 1), shown.stderr
        again = scope.run("app", "-c", "echo next; cat /etc/hostname")
        assert again.returncode == 0 and again.stdout.startswith("next\n"), again.stderr
        after = labelled(scope, label)
        assert len(after) == 1, after
        fate = "none created"
        if created:  # reused, or (when it cannot be trusted) replaced; never two of them
            fate = "reused" if after == created else "replaced (old one removed)"
        names = set(state_names(scope))  # (app.spec: what the instance was created from, app.oci: how
        # calls enter it through the runtime, if recorded)
        assert {"app.cid", "app.lock", "app.pid"} <= names <= {"app.cid", "app.lock", "app.pid", "app.spec", "app.oci"}
        rec.detail = (
            f"{len(created)} container left by the kill ({fate}); next call ok, 1 instance, "
            "lock free, state = cid+pid+lock"
        )


def test_sigkill_after_attach_create(scope: Scope, tmp_path: Path) -> None:
    with record("2", "SIGKILL of the launcher after create (attach flake)", count=1) as rec:
        inj = Injector(tmp_path)
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", attach=True, opts=[f"--label {label}"])
        kill_at(scope, inj, "app", "create", "after", "-c", "echo first")
        created = labelled(scope, label)
        assert len(created) == 1, created  # created, never started
        again = scope.run("app", "-c", "echo next")
        assert again.returncode == 0 and again.stdout in ("next\n", "first\n"), again.stderr
        after = labelled(scope, label)
        assert len(after) == 1, after
        rec.detail = (
            f"next call ok ({'reused the created container' if after == created else 'replaced it'}), 1 container"
        )


def test_sigkill_while_the_resume_app_runs(scope: Scope, tmp_path: Path) -> None:
    with record("2", "SIGKILL of the launcher while the app runs (resume flake)", count=1) as rec:
        sync = tmp_path / "sync"
        sync.mkdir()
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", resume=True, opts=[f"--label {label}", f"--volume {sync}:/sync"])
        proc = scope.popen(
            "app",
            "-c",
            "touch /sync/started; while [ ! -e /sync/go ]; do sleep 0.1; done",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for((sync / "started").exists, "the app to start")
        proc.kill()  # the engine child (own session) lives on, as after a real crash
        proc.wait(timeout=60)
        (sync / "go").touch()
        again = scope.run("app", "-c", "echo next")
        assert (again.returncode, again.stdout) == (0, "next\n"), again.stderr
        assert len(labelled(scope, label)) == 1
        rec.detail = "next call ok on the same instance, no lock held"


@pytest.mark.parametrize("named", [False, True], ids=["anonymous", "named"])
def test_sigkill_while_the_oneshot_app_runs(scope: Scope, tmp_path: Path, named: bool) -> None:
    with record(
        "2", f"SIGKILL of the launcher while the app runs (one-shot{', @NAME' if named else ''})", count=1
    ) as rec:
        sync = tmp_path / "sync"
        sync.mkdir()
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", opts=[f"--label {label}", f"--volume {sync}:/sync"])
        inst = ["@x"] if named else []
        proc = scope.popen(
            "app",
            *inst,
            "-c",
            "touch /sync/started; while [ ! -e /sync/go ]; do sleep 0.1; done",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for((sync / "started").exists, "the app to start")
        proc.kill()  # the engine child (own session) lives on, as after a real crash
        proc.wait(timeout=60)
        if named:  # while the orphaned instance still runs, the name is refused clearly
            busy = scope.run("app", "@x", "-c", "true")
            assert busy.returncode == 125 and "is running" in busy.stderr, busy.stderr
            assert len(busy.stderr.splitlines()) == 1
        (sync / "go").touch()
        wait_for(lambda: not labelled(scope, label), "the orphaned one-shot container to end (--rm)")
        again = scope.run("app", *inst, "-c", "echo next")
        assert (again.returncode, again.stdout) == (0, "next\n"), again.stderr
        leftovers = [n for n in state_names(scope) if n.endswith((".cid", ".pid"))]
        if not named:  # gc keeps an anonymous .cid only while conmon runs
            assert leftovers == [], leftovers
        else:
            assert leftovers == [], leftovers
        rec.detail = "orphan ran to its end and was removed (--rm); next call ok; no state left"


@pytest.fixture
def delta(tmp_path: Path, system_storage: Path) -> None:
    from delta_images import build_images

    build_images(system_storage, tmp_path / "build")


@pytest.mark.parametrize(
    ("step", "at", "mode"),
    [
        ("provisioning: while saving base+layers", "save", "before"),
        ("provisioning: after loading the composed image", "load", "after"),
    ],
    ids=["compose-save", "compose-load"],
)
def test_sigkill_during_provisioning(scope: Scope, tmp_path: Path, delta: None, step: str, at: str, mode: str) -> None:
    from delta_images import BASE, L1, L2, registration

    with record("2", f"SIGKILL of the launcher during {step} (delta flake)", count=1) as rec:
        inj = Injector(tmp_path)
        app = f"d{uuid.uuid4().hex[:8]}"
        registration(scope.flakes_dir, app, base_container=BASE, layers=[L1, L2], runtime={"runas": "root"})
        (scope.bin_dir / app).symlink_to(LAUNCHER)
        kill_at(scope, inj, app, at, mode, "x")
        again = scope.run(app, "y", env={"PILOT_DEBUG": "1"})
        assert (again.returncode, again.stdout) == (3, "hello y\n"), again.stderr[-2000:]
        warm = scope.run(app, "z", env={"PILOT_DEBUG": "1"})
        assert (warm.returncode, warm.stdout) == (3, "hello z\n") and "compose: cache hit" in warm.stderr
        compose_dir = scope.ids_dir / str(os.getuid()) / "compose"
        junk = [p.name for p in compose_dir.iterdir() if p.name.endswith(".tmp") or p.is_dir()]
        assert junk == [], junk
        images = podman("images", "-q", "--filter", "reference=localhost/flake-composed/*", storage=scope.storage)
        rec.detail = (
            f"next call composed and ran (exit 3 as the app), then warm cache hit; "
            f"no temp files; {len(set(images.stdout.split()))} composed image(s) in the store"
        )


# -- full disk, missing engine, hanging engine ---------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    need_root("mounting a small tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=1777", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path) -> None:
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    for i in range(10000):  # also use up what tiny writes could still take
        try:
            (fs / f"f{i}").write_bytes(b"x")
        except OSError:
            break


def snapshot(*dirs: Path) -> dict[str, tuple[int, bytes]]:
    snap = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            st = p.lstat()
            snap[str(p)] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    return snap


def test_full_disk_state_dir(scope: Scope, tiny_fs: Path) -> None:
    with record("2", "full disk: state (ids) dir on a full tmpfs, resume launch", count=1) as rec:
        scope.config_path = scope.root / "flakes.yml"  # type: ignore[attr-defined]
        text = scope.config_path.read_text().replace(str(scope.ids_dir), str(tiny_fs))  # type: ignore[attr-defined]
        scope.config_path.write_text(text)  # type: ignore[attr-defined]
        scope.ids_dir = tiny_fs
        (tiny_fs / "0").mkdir(mode=0o700)
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", resume=True, opts=[f"--label {label}"])
        fill(tiny_fs)
        before = snapshot(tiny_fs / "0")
        done = scope.run("app", "-c", "echo hi")
        assert done.returncode == 125, (done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("app: ") and "Traceback" not in done.stderr, done.stderr
        assert "space" in lines[0].lower(), lines[0]
        after = snapshot(tiny_fs / "0")
        assert set(after) - set(before) <= {str(tiny_fs / "0" / "app.lock")}, set(after) - set(before)
        assert labelled(scope, label) == []  # the container whose cid file could not be written is gone
        rec.detail = f"exit 125: {lines[0][:120]}"


def test_full_disk_flakes_dir_registration(prefix: Prefix, tiny_fs: Path, bb_image: str) -> None:
    with record("2", "full disk: flake-ctl register into a full flakes dir", count=1) as rec:
        text = prefix.config.read_text().replace(str(prefix.flakes_dir), str(tiny_fs))
        prefix.config.write_text(text)
        (tiny_fs / ".flake-ctl.lock").touch()
        fill(tiny_fs)
        before = snapshot(tiny_fs, prefix.bin_dir)
        done = prefix.ctl("podman", "register", "--container", BB_IMAGE, "--app", str(prefix.bin_dir / "full"))
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "space" in lines[0].lower(), done.stderr
        assert snapshot(tiny_fs, prefix.bin_dir) == before  # nothing half-written
        rec.detail = f"exit {done.returncode}: {lines[0][:120]}; nothing written"


@pytest.mark.parametrize("how", ["PATH without podman", "podman_binary names a missing file"])
def test_missing_engine(scope: Scope, how: str) -> None:
    with record("2", f"missing engine: {how}", count=1) as rec:
        scope.register("app", resume=True)
        env = {}
        if how.startswith("PATH"):
            env["PATH"] = str(scope.bin_dir)
        else:
            cfg = scope.root / "flakes.yml"
            cfg.write_text(cfg.read_text() + "  podman_binary: /nonexistent/podman\n")
            assert yaml.safe_load(cfg.read_text())["generic"]["podman_binary"] == "/nonexistent/podman"
        done = scope.run("app", "-c", "true", env=env)
        lines = done.stderr.splitlines()
        assert done.returncode == 125 and len(lines) == 1 and "podman" in lines[0] and "not" in lines[0], done.stderr
        assert scope.state_files() == []
        rec.detail = f"exit 125: {lines[0][:100]}"


@pytest.mark.parametrize(
    ("step", "at", "mode_kw"),
    [
        ("resume create (podman run -d)", "run", {"resume": True}),
        ("attach create (podman container exists/create)", "create", {"attach": True}),
        ("restart of a stopped resume instance (podman start)", "start", {"resume": True}),
    ],
    ids=["resume-create", "attach-create", "resume-start"],
)
def test_hanging_engine_is_bounded(scope: Scope, tmp_path: Path, step: str, at: str, mode_kw: dict) -> None:
    with record("2", f"hanging engine: {step}", count=1) as rec:
        inj = Injector(tmp_path)
        label = f"flake-rel={uuid.uuid4().hex}"
        scope.register("app", opts=[f"--label {label}"], **mode_kw)
        if at == "start":  # a stopped instance, so the launch has to `podman start` it
            first = scope.run("app", "-c", "true")
            assert first.returncode == 0, first.stderr
            scope.podman("stop", "-t", "0", *labelled(scope, label), check=True)
        t0 = time.monotonic()
        done = scope.run(
            "app",
            "-c",
            "echo never",
            env={**inj.env(scope, at, "hang"), "PILOT_ENGINE_TIMEOUT": "3"},
            timeout=60,
        )
        took = time.monotonic() - t0
        lines = done.stderr.splitlines()
        assert done.returncode == 125 and len(lines) == 1 and "no answer within 3 s" in lines[0], done.stderr
        assert took < 30, took
        again = scope.run("app", "-c", "echo ok")  # the real engine again: the state did not block
        assert (again.returncode, again.stdout) == (0, "ok\n"), again.stderr
        rec.detail = f"failed after {took:.1f} s (timeout 3 s): {lines[0][:90]}; next call ok"


def test_hanging_engine_during_provisioning_is_bounded(scope: Scope, tmp_path: Path, delta: None) -> None:
    from delta_images import BASE, L1, L2, registration

    with record("2", "hanging engine: provisioning (podman save of base+layers)", count=1) as rec:
        inj = Injector(tmp_path)
        app = f"d{uuid.uuid4().hex[:8]}"
        registration(scope.flakes_dir, app, base_container=BASE, layers=[L1, L2], runtime={"runas": "root"})
        (scope.bin_dir / app).symlink_to(LAUNCHER)
        t0 = time.monotonic()
        done = scope.run(app, "x", env={**inj.env(scope, "save", "hang"), "PILOT_ENGINE_TIMEOUT": "3"}, timeout=90)
        took = time.monotonic() - t0
        lines = done.stderr.splitlines()
        assert done.returncode == 125 and len(lines) == 1 and "no answer within 3 s" in lines[0], done.stderr
        again = scope.run(app, "y")
        assert (again.returncode, again.stdout) == (3, "hello y\n"), again.stderr
        rec.detail = f"failed after {took:.1f} s (timeout 3 s); next call composed and ran"
