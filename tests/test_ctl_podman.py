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
        "l1",
        "l2",
        "--layer",
        "l3",
        "--base",
        "base",
        "--include-tar",
        "/t.tar",
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
    assert flake.layers == ("l1", "l2", "l3") and flake.base_container == "base"
    assert flake.include == flakeconf.Include(tar=("/t.tar",), path=("/etc/hosts",))
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
