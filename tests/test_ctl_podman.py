"""flake-ctl as installed (subprocess) against real podman, system scope (root)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, Prefix, busybox_rootfs_tar, import_image, make_prefix, podman, storage_conf
from flake_pilot import flakeconf
from registry import Registry


def unmount_under(root: Path) -> None:
    """containers/storage bind-mounts <graphroot>/overlay on itself; undo that for a private store."""
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        points = [ln.split()[1] for ln in handle if ln.split()[1].startswith(f"{root}/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], check=False, capture_output=True)


@pytest.fixture
def private_store(tmp_path: Path) -> Iterator[Path]:
    """An empty image store of its own (storage.conf path), unmounted again afterwards."""
    conf = storage_conf(tmp_path / "store")
    yield conf
    unmount_under(tmp_path / "store")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def entries(d: Path) -> list[str]:
    """Registrations in a flakes dir (the lock file of flake-ctl does not count)."""
    return sorted(f.name for f in d.iterdir() if f.name != ".flake-ctl.lock")


def register(p: Prefix, app: str, *extra: str, image: str) -> Path:
    path = p.bin_dir / app
    ok(p.ctl("podman", "register", "--container", image, "--app", str(path), *extra))
    return path


def test_register_list_remove_roundtrip(prefix: Prefix, bb_image: str) -> None:
    tar = prefix.root / "t.tar"
    tar.write_bytes(busybox_rootfs_tar())
    app = register(
        prefix,
        "bb.echo",
        "--target",
        "/bin/echo",
        "--opt",
        "\\--net host",
        "\\-e",
        "X=1",
        "--layer",
        "registry.example.com/l1",
        "registry.example.com/l2",
        "--layer",
        "registry.example.com/l3:1",
        "--base",
        "registry.example.com/base",
        "--include-tar",
        str(tar),
        "--include-path",
        "/etc/hosts",
        "--check-host-dependencies",
        "--resume",
        image=bb_image,
    )
    assert os.readlink(app) == str(BIN / "podman-pilot")
    cfg = prefix.flakes_dir / "bb.echo.yaml"
    assert (prefix.flakes_dir / "bb.echo.d").is_dir()
    flake = flakeconf.parse("bb.echo", str(cfg))
    assert isinstance(flake, flakeconf.PodmanFlake)
    assert (flake.image, flake.target_app_path, flake.host_app_path) == (bb_image, "/bin/echo", str(app))
    assert flake.podman_opts == ("--net host", "-e", "X=1")  # one backslash stripped, values kept apart
    assert flake.layers == ("registry.example.com/l1", "registry.example.com/l2", "registry.example.com/l3:1")
    assert flake.base_container == "registry.example.com/base"  # fully qualified: pulled at the first launch
    assert flake.include == flakeconf.Include(tar=(str(tar),), path=("/etc/hosts",))
    assert flake.check_host_dependencies and flake.resume and not flake.attach
    assert flake.runas == "root"

    register(prefix, "plain", image=bb_image)
    listed = json.loads(ok(prefix.ctl("list", "--format", "json")).stdout)
    assert [r["name"] for r in listed] == ["bb.echo", "plain"]
    assert listed[0] == {
        "name": "bb.echo",
        "engine": "podman",
        "target": "/bin/echo",
        "host_app_path": str(app),
        "config": str(cfg),
    }
    assert listed[1]["target"] == str(prefix.bin_dir / "plain")  # --target defaults to --app
    csv_lines = ok(prefix.ctl("list", "--format", "csv")).stdout.splitlines()
    assert csv_lines[0] == "name,engine,target,host_app_path,config"
    assert csv_lines[1] == f"bb.echo,podman,/bin/echo,{app},{cfg}"
    table = ok(prefix.ctl("list")).stdout.splitlines()
    assert table[0] == f"Flake applications registered in {prefix.flakes_dir}"
    assert table[2].split() == ["NAME", "ENGINE", "TARGET", "APP", "PATH", "HOST", "APP", "PATH", "CONFIG"]

    # a second register of the same app needs --force
    again = prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app))
    assert again.returncode == 5 and "--force" in again.stderr
    ok(prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app), "--attach", "--force"))
    reloaded = flakeconf.parse("bb.echo", str(cfg))
    assert isinstance(reloaded, flakeconf.PodmanFlake) and reloaded.attach and not reloaded.layers

    ok(prefix.ctl("podman", "remove", "--app", str(app)))
    assert not os.path.lexists(app) and not cfg.exists() and not (prefix.flakes_dir / "bb.echo.d").exists()
    gone = prefix.ctl("podman", "remove", "--app", str(app))
    assert gone.returncode == 4 and gone.stderr.count("\n") == 1


def test_register_refuses_non_flake_file_without_force(prefix: Prefix, bb_image: str) -> None:
    app = prefix.bin_dir / "tool"
    app.write_text("#!/bin/sh\necho real\n")
    proc = prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app))
    assert proc.returncode == 5 and "not a flake" in proc.stderr
    assert app.read_text() == "#!/bin/sh\necho real\n" and entries(prefix.flakes_dir) == []
    ok(prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app), "--force"))
    assert os.path.islink(app)


def test_load_archive_with_glob_fallback(
    tmp_path: Path, system_storage: Path, bb_image: str, private_store: Path
) -> None:
    archive = tmp_path / "bb-image-1.0.tar"
    podman("save", "-q", "-o", str(archive), bb_image, storage=system_storage)
    store = private_store
    p = make_prefix(tmp_path / "p", store)
    proc = ok(p.ctl("podman", "load", "--oci", str(tmp_path / "bb-image")))  # glob: bb-image*
    assert bb_image in proc.stdout
    assert podman("image", "exists", bb_image, storage=store, check=False).returncode == 0
    missing = p.ctl("podman", "load", "--oci", str(tmp_path / "nothing-here"))
    assert missing.returncode == 4 and "nothing-here" in missing.stderr and missing.stderr.count("\n") == 1


def test_pull_from_local_registry(
    tmp_path: Path,
    system_storage: Path,
    bb_image: str,
    private_store: Path,
    local_registry: Registry,
) -> None:
    ref = local_registry.push(bb_image, "tools/bb:1", storage=system_storage)
    store = private_store
    p = make_prefix(tmp_path / "p", store)
    proc = ok(p.ctl("podman", "pull", "--uri", ref, env=local_registry.env()))
    assert proc.stdout.startswith(f"pulled {ref}")
    assert podman("image", "exists", ref, storage=store, check=False).returncode == 0
    # an unknown image: podman's reason in one line, no retry, nothing pulled
    bad = p.ctl("--debug", "podman", "pull", "--uri", f"{local_registry.location}/no/such:1", env=local_registry.env())
    assert bad.returncode == 6
    assert len(engine_calls(bad.stderr, "pull")) == 1  # --debug prints each command line: exactly one try
    assert "manifest unknown" in bad.stderr.splitlines()[-1] or "not found" in bad.stderr.splitlines()[-1]


def engine_calls(stderr: str, word: str) -> list[str]:
    """Engine command lines printed by --debug ('[  12.3 ms] + /usr/bin/podman ...')."""
    return [ln for ln in stderr.splitlines() if ln.startswith("[") and "] + " in ln and word in ln]


def _cid_file(p: Prefix, name: str, content: str) -> Path:
    d = p.ids_dir / str(os.getuid())
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = d / f"{name}.cid"
    f.write_text(content)
    return f


def test_show_instances_with_one_podman_call(prefix: Prefix, bb_image: str) -> None:
    register(prefix, "svc", "--resume", image=bb_image)
    storage = prefix.storage
    running = podman("run", "-d", "--network", "none", bb_image, "sleep", "120", storage=storage).stdout.strip()
    created = podman("create", "--network", "none", bb_image, "true", storage=storage).stdout.strip()
    try:
        _cid_file(prefix, "svc", running + "\n")
        _cid_file(prefix, "svc@other", created[:12])
        _cid_file(prefix, "svc@stale", "0123456789abcdef" * 4)
        _cid_file(prefix, "unregistered", running)
        proc = ok(prefix.ctl("--debug", "podman", "show", "--format", "json"))
        rows = {r["name"]: r for r in json.loads(proc.stdout)}
        assert rows["svc"]["status"] == "running" and rows["svc"]["id"] == running
        assert rows["svc@other"]["status"] == "stopped"
        assert rows["svc@stale"]["status"] == "stopped"  # container gone: a stale file
        assert rows["unregistered"]["status"] == "unknown" and rows["unregistered"]["image"] is None
        assert rows["svc"]["image"] == bb_image and rows["svc"]["user"] == "root"
        assert rows["svc"]["config"] == str(prefix.flakes_dir / "svc.yaml")
        assert len(engine_calls(proc.stderr, "podman")) == 1
        table = ok(prefix.ctl("podman", "show")).stdout
        assert running[:12] in table and running not in table  # ID shortened in the table
        # a symlinked state file is reported and skipped, the rest is still shown
        (prefix.ids_dir / str(os.getuid()) / "evil.cid").symlink_to("/etc/passwd")
        proc = prefix.ctl("podman", "show", "--format", "csv")
        assert proc.returncode == 1 and "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout.splitlines()[0] == "name,user,id,status,image,config"
        assert len(proc.stdout.splitlines()) == 5
    finally:
        podman("rm", "-f", "-t", "0", running, created, storage=storage, check=False)


def test_remove_container_removes_its_flakes_and_image(prefix: Prefix, bb_image: str) -> None:
    tag = f"localhost/flake-test/rm-{uuid.uuid4().hex[:8]}:latest"
    import_image(tag, busybox_rootfs_tar({"etc/marker": tag.encode()}), prefix.storage)  # an image of its own
    a = register(prefix, "a", image=tag)
    b = register(prefix, "b", image=tag)
    keep = register(prefix, "keep", image=bb_image)
    user = podman("create", "--network", "none", tag, "true", storage=prefix.storage).stdout.strip()
    try:
        busy = prefix.ctl("podman", "remove", "--container", tag)  # a container still uses it
        assert busy.returncode == 5 and "--force" in busy.stderr
        assert os.path.islink(a) and (prefix.flakes_dir / "a.yaml").exists()  # nothing removed
        ok(prefix.ctl("podman", "remove", "--container", tag, "--force"))
    finally:
        podman("rm", "-f", user, storage=prefix.storage, check=False)
    assert not os.path.lexists(a) and not os.path.lexists(b)
    assert entries(prefix.flakes_dir) == ["keep.d", "keep.yaml"]
    assert os.path.islink(keep)
    assert podman("image", "exists", tag, storage=prefix.storage, check=False).returncode == 1
    unknown = prefix.ctl("podman", "remove", "--container", "localhost/flake-test/never-was")
    assert unknown.returncode == 4 and unknown.stderr.count("\n") == 1


def test_register_info_prints_image_info_file(prefix: Prefix, system_storage: Path) -> None:
    tag = "localhost/flake-test/infoimg:latest"
    info = b"name: infoimg\nrun: flake-ctl podman register --container infoimg --app /usr/bin/x\n"
    if podman("image", "exists", tag, storage=system_storage, check=False).returncode != 0:
        import_image(tag, busybox_rootfs_tar({"infoimg.yaml": info}), system_storage)
    proc = ok(prefix.ctl("podman", "register", "--container", tag, "--info"))
    assert proc.stdout.encode() == info
    assert entries(prefix.flakes_dir) == []  # nothing registered
    bare = prefix.ctl("podman", "register", "--container", "localhost/flake-test/bb", "--info")
    assert bare.returncode == 4 and "no info file /bb.yaml" in bare.stderr
    none = prefix.ctl("podman", "register", "--container", "localhost/flake-test/absent", "--info")
    assert none.returncode == 4 and none.stderr.count("\n") == 1
    leftovers = podman("ps", "-a", "--format", "{{.Image}}", storage=system_storage).stdout
    assert tag not in leftovers  # the helper container was removed


@pytest.mark.parametrize("where", ["before", "after"])
def test_user_flag_position_is_accepted(prefix: Prefix, where: str) -> None:
    args = ["podman", "--user", "show"] if where == "before" else ["podman", "show", "--user"]
    proc = ok(prefix.ctl(*args))  # root: --user is ignored with a note (root's flakes are system flakes)
    assert "ignored for root" in proc.stderr
    assert proc.stdout.startswith(f"Flake podman instances in {prefix.ids_dir}")


# -- registries, removal, messages: a real plain-http registry and real podman -------------------


@pytest.fixture
def remote(
    tmp_path: Path,
    system_storage: Path,
    bb_image: str,
    private_store: Path,
    local_registry: Registry,  # noqa: F811 - fixture
) -> tuple[Prefix, str, dict[str, str]]:
    """A prefix with an empty store of its own, the busybox image in the local registry under a
    fresh name, and an environment whose registries.conf does NOT mark the registry insecure
    (podman then speaks https to it, as on a host without that entry)."""
    ref = local_registry.push(bb_image, f"tools/t{uuid.uuid4().hex[:10]}:1", storage=system_storage)
    conf = tmp_path / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    return make_prefix(tmp_path / "p", private_store), ref, {"CONTAINERS_REGISTRIES_CONF": str(conf)}


def one_line(proc: subprocess.CompletedProcess, code: int, start: str) -> str:
    assert proc.returncode == code, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr
    return lines[0]


def state_files(p: Prefix, app: str) -> list[str]:
    d = p.ids_dir / str(os.getuid())
    return sorted(f.name for f in d.iterdir() if f.name.split("@", 1)[0].split(".", 1)[0] == app) if d.is_dir() else []


def test_pull_plain_http_registry_needs_tls_verify_false(remote: tuple[Prefix, str, dict[str, str]]) -> None:
    p, ref, env = remote
    refused = p.ctl("podman", "pull", "--uri", ref, env=env)
    line = one_line(refused, 6, f"flake-ctl: cannot pull {ref}: ")
    assert "HTTP response to HTTPS client" in line and line.endswith("add --tls-verify=false)")
    assert podman("image", "exists", ref, storage=p.storage, check=False).returncode == 1
    pulled = ok(p.ctl("podman", "pull", "--uri", ref, "--tls-verify=false", env=env))
    assert pulled.stdout.startswith(f"pulled {ref} (") and pulled.stderr == ""
    assert podman("image", "exists", ref, storage=p.storage, check=False).returncode == 0


def test_pull_at_launch_is_quiet_and_fails_in_one_line(remote: tuple[Prefix, str, dict[str, str]]) -> None:
    p, ref, env = remote
    app = register(p, "hello", "--target", "/bin/echo", image=ref)  # fully qualified: pulled at launch
    failed = p.app("hello", "hi", env=env)
    line = one_line(failed, 125, f"hello: cannot pull {ref}: ")
    assert line.endswith("register the flake with --tls-verify=false)") and failed.stdout == ""
    debug = p.app("hello", "hi", env={**env, "PILOT_DEBUG": "1"})
    assert debug.returncode == 125 and "pinging container registry" in debug.stderr  # podman's full text
    ok(
        p.ctl(
            "podman",
            "register",
            "--container",
            ref,
            "--app",
            str(app),
            "--target",
            "/bin/echo",
            "--force",
            "--tls-verify=false",
        )
    )
    ran = p.app("hello", "hi", env=env)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "hi\n", "")  # no "Trying to pull", no blobs
    assert podman("image", "exists", ref, storage=p.storage, check=False).returncode == 0
    again = p.app("hello", "again", env=env)
    assert (again.returncode, again.stdout, again.stderr) == (0, "again\n", "")


def test_pull_at_launch_shows_progress_on_a_terminal(remote: tuple[Prefix, str, dict[str, str]]) -> None:
    import pty

    p, ref, env = remote
    register(p, "hello", "--target", "/bin/echo", "--tls-verify=false", image=ref)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(p.bin_dir / "hello"), "on-tty"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**p.env, **env, "PILOT_DEBUG": "", "NO_PROGRESS": ""},
            start_new_session=True,
        )
        os.close(slave)
        chunks = []
        while True:  # until EIO: the launcher and podman are gone
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert f"hello: pulling {ref}" in out and "on-tty" in out  # the spinner, then the app
    assert "Copying blob" not in out and "Trying to pull" not in out


def test_delta_pull_at_launch_uses_the_registration_tls_setting(
    remote: tuple[Prefix, str, dict[str, str]],
) -> None:
    p, ref, env = remote
    data = p.root / "data.txt"
    data.write_text("included\n")
    app = register(p, "dinc", "--target", "/bin/cat", "--include-path", str(data), image=ref)  # composed at launch
    one_line(p.app("dinc", str(data), env=env), 125, "dinc: ")
    ok(
        p.ctl(
            "podman",
            "register",
            "--container",
            ref,
            "--app",
            str(app),
            "--target",
            "/bin/cat",
            "--include-path",
            str(data),
            "--tls-verify=false",
            "--force",
        )
    )
    ran = p.app("dinc", str(data), env=env)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "included\n", "")
    compose_dir = p.ids_dir / str(os.getuid()) / "compose"
    assert sorted(f.name for f in compose_dir.iterdir()) == ["dinc.cache", "dinc.lock"]
    removed = ok(p.ctl("podman", "remove", "--app", str(app)))
    assert "removed composed image" in removed.stdout
    assert list(compose_dir.iterdir()) == []  # the composition record and its lock go with the flake


def test_register_checks_includes_and_images(remote: tuple[Prefix, str, dict[str, str]]) -> None:
    p, ref, env = remote
    app = str(p.bin_dir / "x")

    def written() -> list[Path]:
        return sorted(f for f in p.root.rglob("*") if f.name != ".flake-ctl.lock")

    before = written()
    missing = p.ctl("podman", "register", "--container", ref, "--app", app, "--include-tar", "/missing.tar")
    one_line(missing, 4, "flake-ctl: --include-tar: /missing.tar does not exist")
    dangling = p.root / "dangling"
    dangling.symlink_to(p.root / "nowhere")
    one_line(
        p.ctl("podman", "register", "--container", ref, "--app", app, "--include-path", str(dangling)),
        4,
        f"flake-ctl: --include-path: {dangling} is a dangling",
    )
    short = ref.split("/", 1)[1]  # never pulled, a short name: podman could only guess at launch
    line = one_line(p.ctl("podman", "register", "--container", short, "--app", app), 4, "flake-ctl: --container: ")
    assert "--pull" in line and "pull --uri" in line
    one_line(
        p.ctl("podman", "register", "--container", ref, "--app", app, "--base", "localhost/nobase"),
        4,
        "flake-ctl: --base: image localhost/nobase",
    )
    dangling.unlink()
    assert written() == before  # nothing written
    # --pull fetches it now (with the registration's TLS setting); then the short name resolves locally
    pulled = ok(p.ctl("podman", "register", "--container", ref, "--app", app, "--pull", "--tls-verify=false", env=env))
    assert f"pulled {ref}" in pulled.stdout
    ok(p.ctl("podman", "register", "--container", short, "--app", str(p.bin_dir / "y")))
    flake = flakeconf.parse("x", str(p.flakes_dir / "x.yaml"))
    assert isinstance(flake, flakeconf.PodmanFlake) and not flake.tls_verify


def test_remove_app_stops_its_instances_and_leaves_no_files(remote: tuple[Prefix, str, dict[str, str]]) -> None:
    p, ref, env = remote
    ok(p.ctl("podman", "pull", "--uri", ref, "--tls-verify=false", env=env))
    app = register(p, "svc", "--target", "/bin/sh", "--resume", image=ref)
    assert p.app("svc", "-c", "echo up").stdout == "up\n"
    assert p.app("svc", "@two", "-c", "echo two").stdout == "two\n"
    cids = [(p.ids_dir / str(os.getuid()) / f"{n}.cid").read_text().split()[0] for n in ("svc", "svc@two")]
    assert all(podman("container", "exists", c, storage=p.storage, check=False).returncode == 0 for c in cids)
    refused = p.ctl("podman", "remove", "--app", str(app))
    one_line(refused, 5, "flake-ctl: instance(s) running: svc, svc@two")
    assert os.path.islink(app) and state_files(p, "svc")  # nothing removed
    ok(p.ctl("podman", "remove", "--app", str(app), "--force"))
    assert not os.path.lexists(app) and state_files(p, "svc") == []
    assert all(podman("container", "exists", c, storage=p.storage, check=False).returncode == 1 for c in cids)
    assert json.loads(ok(p.ctl("podman", "show", "--format", "json")).stdout) == []


def test_remove_container_matches_by_id_and_removes_instances(remote: tuple[Prefix, str, dict[str, str]]) -> None:
    p, ref, env = remote
    ok(p.ctl("podman", "pull", "--uri", ref, "--tls-verify=false", env=env))
    short = ref.split("/", 1)[1]  # the same image under another spelling
    full = register(p, "full", "--target", "/bin/sh", "--resume", image=ref)
    other = register(p, "other", "--target", "/bin/echo", image=short)
    assert p.app("full", "-c", "echo up").stdout == "up\n"
    one_line(p.ctl("podman", "remove", "--container", short), 5, "flake-ctl: instance(s) running: full")
    assert os.path.islink(full) and os.path.islink(other)
    removed = ok(p.ctl("podman", "remove", "--container", short, "--force"))
    assert f"removed {full}" in removed.stdout and f"removed {other}" in removed.stdout
    assert not os.path.lexists(full) and not os.path.lexists(other)
    assert state_files(p, "full") == [] and entries(p.flakes_dir) == []
    assert podman("image", "exists", ref, storage=p.storage, check=False).returncode == 1
    assert json.loads(ok(p.ctl("podman", "show", "--format", "json")).stdout) == []


def test_engine_failures_before_the_app_are_one_line_125(prefix: Prefix, bb_image: str) -> None:
    register(prefix, "vol", "--target", "/bin/echo", "--opt", "\\--volume /nonexistent-flake/p:/p", image=bb_image)
    line = one_line(prefix.app("vol", "x"), 125, "vol: ")
    assert "/nonexistent-flake/p does not exist" in line and "%ignore_missing_volume_path" in line
    register(prefix, "nostore", "--target", "/bin/echo", image=bb_image)
    cfg = prefix.config.read_text()
    prefix.config.write_text(cfg.replace(str(prefix.storage), str(prefix.root / "gone/storage.conf")))
    line = one_line(prefix.app("nostore", "x"), 125, "nostore: ")  # podman itself exits 1 here
    assert str(prefix.root / "gone/storage.conf") in line


def test_lock_files_do_not_pile_up(prefix: Prefix, bb_image: str) -> None:
    app = register(prefix, "lk", "--target", "/bin/sh", "--resume", image=bb_image)
    for name in ("@a", "@b"):
        assert prefix.app("lk", name, "-c", "echo x").stdout == "x\n"
    assert [f for f in state_files(prefix, "lk") if f.endswith(".lock")] == ["lk@a.lock", "lk@b.lock"]
    for name in ("@a", "@b"):
        assert prefix.app("lk", name, "%remove", "-c", "echo y").stdout == "y\n"
    assert state_files(prefix, "lk") == []  # %remove takes the instance's files, its lock included
    assert prefix.app("lk", "-c", "echo z").stdout == "z\n"
    ok(prefix.ctl("podman", "remove", "--app", str(app), "--force"))
    assert state_files(prefix, "lk") == []
