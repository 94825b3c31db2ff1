"""Delta containers against real podman: base + 2 layers + app image + includes + host files.

The images are built locally (busybox base imported, layers and app by `podman build
--pull=never`); composition goes through `compose.ensure_image` and the result runs with
`podman run` (end-to-end launches through podman-pilot live in test_delta_pilot.py).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import STATE, podman
from delta_images import APP, BASE, HOSTDIR, L1, L2, build, build_images, registration
from flake_pilot import errors
from flake_pilot.flakeconf import parse
from flake_pilot.podman import compose
from registry import Registry

PODMAN = [shutil.which("podman") or "podman"]


@pytest.fixture(scope="session")
def delta_images(system_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_images(system_storage, tmp_path_factory.mktemp("delta-build"))
    return system_storage


def compose_app(tmp_path: Path, storage: Path, app: str, ignore: bool = False, **container: object) -> str:
    flake = parse(app, str(registration(tmp_path / "flakes", app, **container)))
    assert compose.needs_compose(flake)
    return compose.ensure_image(
        flake,
        PODMAN,
        {"CONTAINERS_STORAGE_CONF": str(storage)},
        ignore_sync_error=ignore,
        state_dir=str(state(tmp_path)),
    )


def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def run_in(image: str, storage: Path, script: str) -> str:
    proc = podman(
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        script,
        storage=storage,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def composed_of(app: str, storage: Path) -> list[str]:
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}", storage=storage).stdout.split()
    return [n for n in out if n.startswith(f"localhost/flake-composed/{compose_repo(app)}:")]


def compose_repo(app: str) -> str:
    from flake_pilot.podman.compose_build import repo_name

    return repo_name(app)


SHOW = (
    "for f in base order l1 l2 over app gone; do"
    " printf '%s=' $f; cat /opt/$f.txt 2>/dev/null || echo -; done;"
    " for f in {h}/host-a.txt {h}/host-b.txt /etc/inc/a.txt /etc/inc/abs.txt {p}/conf.txt; do"
    " printf '%s=' $f; cat $f 2>/dev/null || echo -; done; readlink {p}/link"
)


def parse_show(out: str) -> dict[str, str]:
    lines = out.splitlines()
    result = dict(line.split("=", 1) for line in lines if "=" in line)
    result["link"] = lines[-1]
    return result


@pytest.fixture(scope="module")
def full(delta_images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str], Path]:
    """One composition of everything: base + 2 layers + app + include tar/path + host files."""
    tmp = tmp_path_factory.mktemp("delta-full")
    inc = tmp / "inc.tar"
    with tarfile.open(inc, "w:gz") as tar:
        for name, data in (("etc/inc/a.txt", b"included\n"), ("/etc/inc/abs.txt", b"absolute\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pdir = tmp / "incdir"
    pdir.mkdir()
    (pdir / "conf.txt").write_text("path include\n")
    (pdir / "link").symlink_to("/does/not/matter")
    tag = compose_app(
        tmp,
        delta_images,
        "dfull",
        base_container=BASE,
        layers=[L1, L2],
        include={"tar": [str(inc)], "path": [str(pdir)]},
    )
    shown = parse_show(run_in(tag, delta_images, SHOW.format(h=HOSTDIR, p=pdir)))
    return tag, shown, tmp


def test_every_layer_in_order(full: tuple[str, dict[str, str], Path]) -> None:
    tag, shown, _ = full
    assert tag.startswith("localhost/flake-composed/dfull:")
    assert (shown["base"], shown["l1"], shown["l2"], shown["app"]) == ("base", "l1", "l2", "app")
    assert shown["order"] == "layer2"  # layer 2 comes after layer 1
    assert shown["over"] == "app"  # the app container comes after the layers


def test_file_deleted_by_a_layer_stays_deleted(full: tuple[str, dict[str, str], Path]) -> None:
    # layer 1 deletes /opt/gone.txt; layer 2 and the app are built FROM the base that has it
    assert full[1]["gone"] == "-"


def test_includes_land(full: tuple[str, dict[str, str], Path]) -> None:
    _, shown, tmp = full
    assert shown["/etc/inc/a.txt"] == "included"
    assert shown["/etc/inc/abs.txt"] == "absolute"  # leading '/' made relative to the root
    assert shown[f"{tmp}/incdir/conf.txt"] == "path include"
    assert shown["link"] == "/does/not/matter"  # symlinks copied as links, not followed


def test_host_files_synced(full: tuple[str, dict[str, str], Path]) -> None:
    shown = full[1]
    assert shown[f"{HOSTDIR}/host-a.txt"] == "host-a.txt from the host"  # base's /removed list
    assert shown[f"{HOSTDIR}/host-b.txt"] == "host-b.txt from the host"  # layer 2's /systemfiles output


def test_composed_image_keeps_the_process_contract(full: tuple[str, dict[str, str], Path], delta_images: Path) -> None:
    proc = podman(
        "run",
        "--rm",
        "-i",
        "--pull=never",
        "--network=none",
        "--entrypoint",
        "/usr/bin/hello",
        full[0],
        "a b",
        storage=delta_images,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "hello a b\n", "err\n")


def _debug_compose(
    tmp: Path, storage: Path, app: str, extra_env: dict[str, str] | None = None, **kw: object
) -> subprocess.Popen[str]:
    """ensure_image in a fresh interpreter with PILOT_DEBUG=1 (prints engine calls on stderr)."""
    path = registration(tmp / "flakes", app, **kw)
    code = (
        "import sys; from flake_pilot.flakeconf import parse; from flake_pilot.podman import compose\n"
        "try:\n"
        f"    print(compose.ensure_image(parse({app!r}, {str(path)!r}), {PODMAN!r},"
        f" {{'CONTAINERS_STORAGE_CONF': {str(storage)!r}}}, state_dir={str(state(tmp))!r}))\n"
        "except KeyboardInterrupt:\n    sys.exit(99)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc, file=sys.stderr)\n"
        "    sys.exit(getattr(exc, 'exit_code', 1))\n"
    )
    env = {**os.environ, "PILOT_DEBUG": "1", **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_cache_hit_makes_no_engine_call(delta_images: Path, tmp_path: Path) -> None:
    first = _debug_compose(tmp_path, delta_images, "dhit", base_container=BASE, layers=[L1])
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert "compose: composing" in err1
    second = _debug_compose(tmp_path, delta_images, "dhit", base_container=BASE, layers=[L1])
    out2, err2 = second.communicate(timeout=60)
    assert second.returncode == 0 and out2 == out1
    assert "compose: cache hit" in err2
    assert "+ " not in err2, err2  # no engine command line ran


def test_rebuilt_layer_and_changed_include_invalidate(delta_images: Path, tmp_path: Path) -> None:
    layer = "localhost/flake-test/delta-rebuilt:latest"
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "v.txt").write_text("one\n")
    kw = {"base_container": BASE, "layers": [layer], "include": {"tar": None, "path": [str(inc)]}}
    build(layer, f"FROM {BASE}\nCOPY v /opt/v.txt\n", {"v": "first\n"}, delta_images, tmp_path / "b1")
    tag1 = compose_app(tmp_path, delta_images, "drebuild", **kw)
    assert compose_app(tmp_path, delta_images, "drebuild", **kw) == tag1
    build(layer, f"FROM {BASE}\nCOPY v /opt/v.txt\n", {"v": "second\n"}, delta_images, tmp_path / "b2")
    tag2 = compose_app(tmp_path, delta_images, "drebuild", **kw)
    assert tag2 != tag1
    assert run_in(tag2, delta_images, f"cat /opt/v.txt {inc}/v.txt") == "second\none\n"
    (inc / "v.txt").write_text("two\n")
    tag3 = compose_app(tmp_path, delta_images, "drebuild", **kw)
    assert tag3 not in (tag1, tag2)
    assert run_in(tag3, delta_images, f"cat {inc}/v.txt") == "two\n"
    assert composed_of("drebuild", delta_images) == [tag3]  # older entries freed
    compose.free_entries(app="drebuild", podman_argv=PODMAN, env={"CONTAINERS_STORAGE_CONF": str(delta_images)})
    podman("rmi", layer, storage=delta_images, check=False)


def test_changed_host_file_invalidates(delta_images: Path, tmp_path: Path) -> None:
    public = STATE / f"hostdep-{os.getpid()}-{tmp_path.name}"  # reachable by anyone (tmp_path is root's 0700)
    public.mkdir(mode=0o755, exist_ok=True)
    host = public / "hostdep.txt"
    host.write_text("v1\n")
    host.chmod(0o644)
    build(
        "localhost/flake-test/delta-hd:latest",
        f"FROM {BASE}\nCOPY removed /removed\n",
        {"removed": f"{host}\n"},
        delta_images,
        tmp_path / "ctx",
    )
    kw = {"name": "localhost/flake-test/delta-hd:latest", "check_host_dependencies": True}
    tag1 = compose_app(tmp_path, delta_images, "dhostchg", **kw)
    assert run_in(tag1, delta_images, f"cat {host}") == "v1\n"
    host.write_text("v2\n")
    tag2 = compose_app(tmp_path, delta_images, "dhostchg", **kw)
    assert tag2 != tag1 and run_in(tag2, delta_images, f"cat {host}") == "v2\n"
    compose.free_entries(app="dhostchg", podman_argv=PODMAN, env={"CONTAINERS_STORAGE_CONF": str(delta_images)})
    podman("rmi", "localhost/flake-test/delta-hd:latest", storage=delta_images, check=False)
    shutil.rmtree(public)


def test_concurrent_first_launches_compose_once(delta_images: Path, tmp_path: Path) -> None:
    procs = [_debug_compose(tmp_path, delta_images, "dconc", base_container=BASE, layers=[L2]) for _ in range(3)]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    assert len({out for out, _ in results}) == 1
    assert sum(err.count("compose: composing") for _, err in results) == 1


def _nothing_left(tmp_path: Path, storage: Path, app: str) -> None:
    assert composed_of(app, storage) == []
    assert not (state(tmp_path) / "compose" / f"{app}.work").exists()
    assert not (state(tmp_path) / "compose" / f"{app}.cache").exists()
    ps = podman("ps", "-a", "--format", "{{.Image}}", storage=storage).stdout
    assert f"flake-composed/{compose_repo(app)}:" not in ps


def test_missing_layer_fails_cleanly(delta_images: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.NotFoundError, match="localhost/flake-test/no-such-layer"):
        compose_app(
            tmp_path,
            delta_images,
            "dmissing",
            base_container=BASE,
            layers=[L1, "localhost/flake-test/no-such-layer:latest"],
        )
    _nothing_left(tmp_path, delta_images, "dmissing")


@pytest.mark.parametrize("case", ["missing", "not-a-tar", "escape"])
def test_bad_include_fails_cleanly(delta_images: Path, tmp_path: Path, case: str) -> None:
    bad = tmp_path / "bad.tar"
    if case == "not-a-tar":
        bad.write_text("this is not a tar archive\n")
    elif case == "escape":
        with tarfile.open(bad, "w") as tar:
            info = tarfile.TarInfo("etc/../../escape.txt")
            tar.addfile(info, io.BytesIO(b""))
    expected = errors.SecurityError if case == "escape" else errors.NotFoundError
    with pytest.raises(expected, match=str(bad)):
        compose_app(tmp_path, delta_images, "dbadinc", base_container=BASE, include={"tar": [str(bad)]})
    _nothing_left(tmp_path, delta_images, "dbadinc")


def test_private_or_missing_host_file(delta_images: Path, tmp_path: Path) -> None:
    image = "localhost/flake-test/delta-private:latest"
    build(
        image,
        f"FROM {BASE}\nCOPY removed /removed\n",
        {"removed": f"{HOSTDIR}/secret.txt\n{HOSTDIR}/no-such-file\n{HOSTDIR}/host-a.txt\n"},
        delta_images,
        tmp_path / "ctx",
    )
    with pytest.raises(errors.SecurityError, match="secret.txt: not world-readable"):
        compose_app(tmp_path, delta_images, "dprivate", name=image, check_host_dependencies=True)
    _nothing_left(tmp_path, delta_images, "dprivate")
    # %ignore_sync_error: the refused and the missing file are skipped, the rest is copied
    tag = compose_app(tmp_path, delta_images, "dprivate", ignore=True, name=image, check_host_dependencies=True)
    out = run_in(tag, delta_images, f"cat {HOSTDIR}/host-a.txt; ls {HOSTDIR}")
    assert out == "host-a.txt from the host\nhost-a.txt\n"
    compose.free_entries(image=image, podman_argv=PODMAN, env={"CONTAINERS_STORAGE_CONF": str(delta_images)})
    podman("rmi", image, storage=delta_images, check=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_composition_leaves_nothing(delta_images: Path, tmp_path: Path, signum: int) -> None:
    fifo = tmp_path / "slow.tar"
    os.mkfifo(fifo)
    proc = _debug_compose(
        tmp_path,
        delta_images,
        "dintr",
        base_container=BASE,
        layers=[L1],
        include={"tar": [str(fifo)], "path": None},
    )
    with open(fifo, "wb") as writer:  # returns once the composition opened the include: it is mid-way
        assert (state(tmp_path) / "compose" / "dintr.work").is_dir()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        writer.close()
    assert proc.returncode == 130, err
    assert "ComposeInterrupted" in err and "interrupted" in err
    _nothing_left(tmp_path, delta_images, "dintr")


def test_full_disk_leaves_nothing(delta_images: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        flake = parse("dfull2", str(registration(tmp_path / "flakes", "dfull2", base_container=BASE, layers=[L1])))
        with pytest.raises(errors.FlakeError, match="no space left on device"):
            compose.ensure_image(flake, PODMAN, {"CONTAINERS_STORAGE_CONF": str(delta_images)}, state_dir=str(small))
        assert os.listdir(small / "compose") == ["dfull2.lock"]
        assert composed_of("dfull2", delta_images) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_cache_list_prune_and_free(delta_images: Path, tmp_path: Path, prefix) -> None:  # type: ignore[no-untyped-def]
    tag = compose_app(tmp_path, delta_images, "dcache", base_container=BASE)

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:  # the installed flake-ctl
        return prefix.ctl("podman", *argv, timeout=60)

    listed = ctl("cache", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["tag"]: e for e in json.loads(listed.stdout)}
    assert entries[tag]["app"] == "dcache" and entries[tag]["inputs"] == f"{BASE} {APP}"
    # not registered in the prefix: prune removes it
    pruned = ctl("cache", "prune", "--app", "dcache")
    assert pruned.returncode == 0 and f"removed {tag}" in pruned.stdout, pruned.stderr
    assert composed_of("dcache", delta_images) == []
    # registered in the prefix: prune keeps its newest entry, --all removes it
    kept = compose.ensure_image(
        parse("dkeep", str(registration(prefix.flakes_dir, "dkeep", base_container=BASE))),
        PODMAN,
        {"CONTAINERS_STORAGE_CONF": str(delta_images)},
        state_dir=str(state(tmp_path)),
    )
    pruned = ctl("cache", "prune", "--app", "dkeep")
    assert pruned.returncode == 0 and composed_of("dkeep", delta_images) == [kept], pruned.stdout
    pruned = ctl("cache", "prune", "--app", "dkeep", "--all")
    assert pruned.returncode == 0 and composed_of("dkeep", delta_images) == [], pruned.stdout
    # free_entries by input image (what flake-ctl calls when a container is removed)
    alias = "localhost/flake-test/delta-base-alias:latest"
    podman("tag", BASE, alias, storage=delta_images)
    tag = compose_app(tmp_path, delta_images, "dcache", base_container=alias)
    assert (
        compose.free_entries(image=alias, podman_argv=PODMAN, env={"CONTAINERS_STORAGE_CONF": str(delta_images)}).count(
            tag
        )
        == 1
    )
    assert composed_of("dcache", delta_images) == []
    podman("untag", alias, alias, storage=delta_images)


def test_warm_check_reads_the_store_quickly(full: tuple[str, dict[str, str], Path], delta_images: Path) -> None:
    """Correctness of the cheap path: the store index resolves what podman resolves."""
    from flake_pilot.podman import compose_store

    info = podman("info", "--format", "{{.Store.GraphRoot}}", storage=delta_images).stdout.strip()
    index = compose_store.load(compose_store.images_json_path(info, "overlay"))
    assert index is not None
    for ref in (BASE, L1, full[0]):
        want = podman("image", "inspect", "--format", "{{.Id}}", ref, storage=delta_images).stdout.strip()
        assert index.resolve(ref) == want
    assert index.resolve("localhost/flake-test/never-built:latest") is None


def test_warm_image_skips_the_parse_until_the_registration_changes(delta_images: Path, tmp_path: Path) -> None:
    tag = compose_app(tmp_path, delta_images, "dwarm", base_container=BASE)
    config = tmp_path / "flakes" / "dwarm.yaml"
    env = {"CONTAINERS_STORAGE_CONF": str(delta_images)}

    def warm() -> str | None:
        return compose.warm_image("dwarm", str(config), PODMAN, env, state_dir=str(state(tmp_path)))

    assert warm() == tag
    podman("tag", BASE, "localhost/flake-test/delta-unrelated:latest", storage=delta_images)  # store rewritten
    try:
        assert warm() == tag  # checked in images.json, still the same inputs
    finally:
        podman("untag", BASE, "localhost/flake-test/delta-unrelated:latest", storage=delta_images)
    (tmp_path / "flakes" / "dwarm.d").mkdir()
    (tmp_path / "flakes" / "dwarm.d" / "10-more.yaml").write_text("container:\n  layers: []\n")
    assert warm() is None  # a drop-in appeared: the launcher parses and calls ensure_image
    compose.free_entries(app="dwarm", podman_argv=PODMAN, env=env)


def test_missing_layer_is_pulled_first(delta_images: Path, tmp_path: Path, local_registry: Registry) -> None:
    ref = local_registry.push(L2, "delta/l2:v1", storage=delta_images)
    podman("rmi", ref, storage=delta_images, check=False)
    assert podman("image", "exists", ref, storage=delta_images, check=False).returncode == 1
    env = {"CONTAINERS_STORAGE_CONF": str(delta_images), **local_registry.env()}
    path = registration(tmp_path / "flakes", "dpull", base_container=BASE, layers=[ref])
    missing = registration(
        tmp_path / "flakes",
        "dnopull",
        base_container=BASE,
        layers=[f"{local_registry.location}/delta/never-pushed:v1"],
    )
    try:
        tag = compose.ensure_image(parse("dpull", str(path)), PODMAN, env, state_dir=str(state(tmp_path)))
        assert run_in(tag, delta_images, "cat /opt/l2.txt") == "l2\n"
        with pytest.raises(errors.NotFoundError, match="never-pushed:v1 is missing and cannot be pulled"):
            compose.ensure_image(parse("dnopull", str(missing)), PODMAN, env, state_dir=str(state(tmp_path)))
    finally:
        compose.free_entries(app="dpull", podman_argv=PODMAN, env=env)
        podman("rmi", ref, storage=delta_images, check=False)
