"""Root and user scopes for the podman-pilot tests.

Registrations are written directly in the original's YAML shape (flake-ctl has its own tests)
with a symlink to the venv's podman-pilot. The user scope runs the launcher as the rootless
test user (its own HOME, its own podman storage, the busybox image loaded with save/load);
the launcher is started with Popen(user=...) so signals sent by a test reach it directly.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conftest import BB_IMAGE, BIN, STATE, TEST_USER, podman

LAUNCHER = BIN / "podman-pilot"
USER_HOME = STATE / "test-users" / TEST_USER


@dataclass
class Scope:
    kind: str  # "root" or "user"
    root: Path
    flakes_dir: Path
    ids_dir: Path
    bin_dir: Path
    storage: Path
    env: dict[str, str]
    uid: int = 0
    gid: int = 0
    apps: list[str] = field(default_factory=list)

    def register(
        self,
        name: str,
        target: str = "/bin/sh",
        *,
        resume: bool = False,
        attach: bool = False,
        opts: list[str] | None = None,
        image: str = BB_IMAGE,
        runas: str | None = None,
    ) -> Path:
        config = {
            "include": {"tar": None, "path": None},
            "container": {
                "name": image,
                "target_app_path": target,
                "host_app_path": str(self.bin_dir / name),
                "base_container": None,
                "check_host_dependencies": False,
                "layers": None,
                "runtime": {
                    "runas": runas or ("root" if self.kind == "root" else TEST_USER),
                    "resume": resume,
                    "attach": attach,
                    "podman": opts,
                },
            },
        }
        path = self.flakes_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        link = self.bin_dir / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(LAUNCHER)
        self.apps.append(name)
        return link

    def argv(self, name: str, *args: str) -> list[str]:
        return [str(self.bin_dir / name), *args]

    def popen(self, name: str, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        if self.kind == "user":
            kw.update(user=self.uid, group=self.gid, extra_groups=[], cwd=str(USER_HOME))
        return subprocess.Popen(self.argv(name, *args), env={**self.env, **(env or {})}, **kw)

    def run(
        self,
        name: str,
        *args: str,
        input: str | bytes | None = None,
        stdin=None,
        timeout: float = 90,
        env: dict[str, str] | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        if input is None and stdin is None:
            stdin = subprocess.DEVNULL
        with self.popen(
            name,
            *args,
            env=env,
            stdin=subprocess.PIPE if input is not None else stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=text,
        ) as proc:
            out, err = proc.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def podman(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        env = {**self.env, "CONTAINERS_STORAGE_CONF": str(self.storage)}
        kw = (
            {"user": self.uid, "group": self.gid, "extra_groups": [], "cwd": str(USER_HOME)}
            if self.kind == "user"
            else {}
        )
        return subprocess.run(
            ["podman", "--log-level=error", *args],
            env=env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            **kw,
        )

    def state_files(self) -> list[Path]:
        return sorted(self.ids_dir.glob("*/*"))

    def cid_files(self) -> list[Path]:
        return sorted(self.ids_dir.glob("*/*.cid"))

    def cleanup(self) -> None:
        cids = [f.read_text().strip() for f in self.cid_files()]
        cids = [c for c in cids if c]
        if cids:
            self.podman("rm", "-f", "-t", "0", "--ignore", *cids)


def root_scope(tmp_path: Path, storage: Path) -> Scope:
    from conftest import make_prefix

    p = make_prefix(tmp_path / "prefix", storage)
    env = {**p.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("PILOT_DEBUG", None)
    return Scope("root", p.root, p.flakes_dir, p.ids_dir, p.bin_dir, storage, env)


def _as_user(uid: int, gid: int, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        user=uid,
        group=gid,
        extra_groups=[],
        cwd=str(USER_HOME),
        timeout=300,
    )


def prepare_user(system_storage: Path) -> tuple[int, int, Path]:
    """The test user's HOME, storage.conf and image store (busybox loaded once)."""
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError as exc:
        raise RuntimeError(
            f"test user {TEST_USER!r} missing: run `make test` (scripts/setup-host.sh --test creates it)"
        ) from exc
    uid, gid = pw.pw_uid, pw.pw_gid
    for d in (USER_HOME.parent, USER_HOME):
        d.mkdir(parents=True, exist_ok=True)
    USER_HOME.parent.chmod(0o755)
    os.chown(USER_HOME, uid, gid)
    USER_HOME.chmod(0o700)
    storage = USER_HOME / "storage.conf"
    if not storage.exists():
        storage.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{USER_HOME}/graph"\nrunroot = "{USER_HOME}/run"\n'
        )
        os.chown(storage, uid, gid)
    env = {
        "HOME": str(USER_HOME),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", ""),
        "CONTAINERS_STORAGE_CONF": str(storage),
    }
    podman_user = ["podman", "--log-level=error"]
    if _as_user(uid, gid, [*podman_user, "image", "exists", BB_IMAGE], env).returncode != 0:
        _as_user(uid, gid, [*podman_user, "system", "migrate"], env)
        archive = STATE / f"bb-{uuid.uuid4().hex[:8]}.tar"
        try:
            podman("save", "-q", "-o", str(archive), BB_IMAGE, storage=system_storage)
            archive.chmod(0o644)
            done = _as_user(uid, gid, [*podman_user, "load", "-q", "-i", str(archive)], env)
            if done.returncode != 0:
                raise RuntimeError(f"rootless podman load failed for {TEST_USER}: {done.stderr.strip()}")
        finally:
            archive.unlink(missing_ok=True)
    return uid, gid, storage


def user_scope(uid: int, gid: int, storage: Path) -> Scope:
    root = USER_HOME / "t" / uuid.uuid4().hex[:12]
    dirs = {k: root / k for k in ("flakes", "ids", "bin", "config", "cache", "sysflakes")}
    for d in (root.parent, root, *dirs.values()):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
    system_cfg = root / "system.yml"
    system_cfg.write_text(f"generic:\n  flakes_dir: {dirs['sysflakes']}\n  podman_ids_dir: {dirs['ids']}\n")
    user_cfg = dirs["config"] / "flakes.yml"
    user_cfg.write_text(
        f"generic:\n  flakes_dir: {dirs['flakes']}\n  podman_ids_dir: {dirs['ids']}\n  podman_storage_conf: {storage}\n"
    )
    for f in (system_cfg, user_cfg):
        os.chown(f, uid, gid)
    env = {
        "HOME": str(USER_HOME),
        "PATH": f"{dirs['bin']}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", ""),
        "FLAKES_CONFIG": str(system_cfg),
        "XDG_CONFIG_HOME": str(dirs["config"]),
        "XDG_CACHE_HOME": str(dirs["cache"]),
    }
    return Scope("user", root, dirs["flakes"], dirs["ids"], dirs["bin"], storage, env, uid, gid)


def remove_user_scope(scope: Scope) -> None:
    scope.cleanup()
    shutil.rmtree(scope.root, ignore_errors=True)


def run_in_pty(scope: Scope, app: str, *args: str, timeout: float = 90) -> tuple[int, str]:
    """Run the launcher with stdin/stdout/stderr on a fresh pseudo-terminal."""
    master, slave = os.openpty()
    proc = scope.popen(app, *args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave end is closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
            break
    os.close(master)
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return code, out.decode(errors="replace").replace("\r\n", "\n")
