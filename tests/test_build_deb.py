"""flake-ctl podman|firecracker build-deb: packages built from real images, installed with the real
dpkg and apt-get (from the local repository --repo writes), run, upgraded, removed and purged.

The flake-pilot package itself is built from this tree and installed for the module (as in
test_packaging.py) and purged at its end, with every package made here, also on failure. The
packages' scripts run flake-ctl with FLAKES_CONFIG pointing at the test's private prefix, so
registrations, images and state go there (and into the shared test storage), and the apps live
in the prefix, not in /usr/bin.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import BIN, STATE, Prefix, busybox_rootfs_tar, import_image, make_prefix, need, need_test_user, podman
from debian_build import build_deb, clean_env, copy_tree, installed_version, run
from registry import Registry

PILOT = "flake-pilot"
PKG = "flake-deb-test-bb"
VM_PKG = "flake-deb-test-vm"
PULL_PKG = "flake-deb-test-pull"
OURS = (PKG, VM_PKG, PULL_PKG)
PACKAGES_DIR = Path("/usr/share/flake-pilot/packages")
EPOCH = "1700000000"
# installs packages on the host with dpkg and apt-get (the flake-pilot package is built first)
INSTALLS = (pytest.mark.root, pytest.mark.build)


def installs(test):  # type: ignore[no-untyped-def]
    for mark in INSTALLS:
        test = mark(test)
    return test


def status(package: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 and "not-installed" not in proc.stdout else None


def purge(*packages: str) -> None:
    subprocess.run(["dpkg", "--purge", *packages], capture_output=True, env=clean_env(), timeout=300)


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """flake-pilot installed from this tree; afterwards the host is as before (our packages purged).

    The module holds a host-wide lock while it does so: another run of these tests on the same
    host (same package names) waits for it instead of installing and purging in between.
    """
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "build-deb-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the module's tests are done
        yield from _installed_pilot(tmp_path_factory)


def _installed_pilot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    for package in OURS:
        need(not status(package), f"{package} is installed on this machine; purge it first (dpkg --purge {package})")
    before = installed_version()
    if before is None:
        deb = build_deb(copy_tree(tmp_path_factory.mktemp("pilot") / PILOT))
        run(["dpkg", "-i", str(deb)])
    try:
        yield
    finally:
        purge(*OURS)
        if before is None:
            purge(PILOT)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two busybox images that differ in /etc/flake-version (in the shared test storage)."""
    from conftest import STORAGE, storage_conf

    storage = storage_conf(STORAGE / "root")
    images = {}
    for version in ("1", "2"):
        tag = f"localhost/flake-test/deb-v{version}:latest"
        if podman("image", "exists", tag, storage=storage, check=False).returncode != 0:
            import_image(tag, busybox_rootfs_tar({"etc/flake-version": f"{version}\n".encode()}), storage)
        images[version] = tag
    return images


def host_env(p: Prefix, tmp_path: Path, **extra: str) -> dict[str, str]:
    """dpkg, apt-get and the apps: system PATH, the prefix's configuration, a private plan cache."""
    return clean_env(FLAKES_CONFIG=str(p.config), XDG_CACHE_HOME=str(tmp_path / "cache"), **extra)


def build(p: Prefix, engine: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = p.ctl(engine, "build-deb", *args, env={"SOURCE_DATE_EPOCH": EPOCH}, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def apt_get(env: dict[str, str], tmp_path: Path, repo: Path, *args: str) -> subprocess.CompletedProcess:
    """apt-get with only the local repository as source and its own lists and cache."""
    base = tmp_path / "apt"
    for d in ("lists/partial", "cache/archives/partial", "parts"):
        (base / d).mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    sources.write_text(f"deb [trusted=yes] file:{repo} ./\n")
    opts = [
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        f"Dir::Etc::SourceParts={base / 'parts'}",
        "-o",
        f"Dir::State::Lists={base / 'lists'}",
        "-o",
        f"Dir::Cache={base / 'cache'}",
        "-o",
        "DPkg::Lock::Timeout=120",
    ]
    env = {**env, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", *opts, "update"], env=env)
    return run(["apt-get", *opts, "install", "-y", "--no-install-recommends", *args], env=env)


def owned_images(package: str) -> list[str]:
    from conftest import STORAGE, storage_conf

    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", storage=storage_conf(STORAGE / "root"))
    return [n for n in listed.stdout.split() if n.startswith(f"localhost/flake-deb/{package}:")]


def check_gone(p: Prefix, package: str, apps: list[Path]) -> None:
    assert status(package) is None
    assert not (PACKAGES_DIR / package).exists()
    for app in apps:
        assert not os.path.lexists(app), f"{app} left behind"
        assert not (p.flakes_dir / f"{app.name}.yaml").exists() and not (p.flakes_dir / f"{app.name}.d").exists()
    state = p.ids_dir / "0"
    left = [f.name for f in state.iterdir() if f.name.startswith(tuple(a.name for a in apps))] if state.exists() else []
    assert left == [], f"instance state left: {left}"


def run_apps(p: Prefix, env: dict[str, str], sh: Path, cat: Path, version: str) -> None:
    """Status, both output streams and stdin through the installed launcher."""
    shown = subprocess.run([str(cat), "/etc/flake-version"], env=env, capture_output=True, text=True, timeout=120)
    assert (shown.returncode, shown.stdout) == (0, f"{version}\n"), shown.stderr
    piped = subprocess.run([str(cat)], env=env, input="from stdin\n", capture_output=True, text=True, timeout=120)
    assert (piped.returncode, piped.stdout) == (0, "from stdin\n"), piped.stderr
    script = "echo out; echo err >&2; exit 3"
    mixed = subprocess.run(
        [str(sh), "-c", script], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert (mixed.returncode, mixed.stdout, mixed.stderr) == (3, "out\n", "err\n")


@installs
def test_podman_package_dpkg_apt_upgrade_purge(
    pilot: None, prefix: Prefix, versions: dict[str, str], tmp_path: Path
) -> None:
    env = host_env(prefix, tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    sh, cat = prefix.bin_dir / "fdt-sh", prefix.bin_dir / "fdt-cat"
    for version, image in versions.items():
        apps = ("--app", f"{sh}:/bin/sh", "--app", f"{cat}:/bin/cat")
        build(
            prefix,
            "podman",
            "--container",
            image,
            *apps,
            "--resume",
            "--name",
            PKG,
            "--version",
            f"{version}.0",
            "--repo",
            str(repo),
        )
    index = (repo / "Packages").read_text()
    assert f"Package: {PKG}\nVersion: 1.0\n" in index and f"Package: {PKG}\nVersion: 2.0\n" in index
    assert {f.name for f in repo.iterdir()} >= {"Packages", "Packages.gz", "Release"}
    first = next(repo.glob(f"{PKG}_1.0_*.deb"))
    depends = run(["dpkg-deb", "-f", str(first), "Depends"]).stdout
    assert depends.startswith("flake-pilot (>= ") and "podman" in depends
    try:
        installed = run(["dpkg", "-i", str(first)], env=env)
        assert f"registered {sh}" in installed.stdout
        assert status(PKG) == "install ok installed 1.0"
        assert os.readlink(sh) == "/usr/bin/podman-pilot"
        assert run(["dpkg", "-S", str(sh)]).stdout.startswith(f"{PKG}: ")
        [v1_image] = owned_images(PKG)
        assert v1_image in (prefix.flakes_dir / "fdt-cat.yaml").read_text()
        run_apps(prefix, env, sh, cat, "1")
        assert (prefix.ids_dir / "0" / "fdt-cat.cid").exists()  # a resume instance of version 1 runs

        v1_instances = podman("ps", "-a", "-q", "--filter", f"ancestor={v1_image}", storage=prefix.storage).stdout
        assert len(v1_instances.split()) == 2  # fdt-sh's and fdt-cat's resume instances
        upgraded = apt_get(env, tmp_path, repo, PKG)  # the upgrade, from the repository
        assert status(PKG) == "install ok installed 2.0"
        v2_image = next(n for n in owned_images(PKG) if n != v1_image)
        assert v2_image in (prefix.flakes_dir / "fdt-cat.yaml").read_text()
        assert f"image {v1_image} kept" in upgraded.stderr + upgraded.stdout  # its instances still run
        run_apps(prefix, env, sh, cat, "2")  # the old instances were replaced at their next idle call
        left = podman("ps", "-a", "-q", "--filter", f"ancestor={v1_image}", storage=prefix.storage).stdout
        assert left.split() == [] and v1_image in owned_images(PKG)  # it goes with the next upgrade or removal

        removed = run(["dpkg", "-r", PKG], env=env)
        assert f"removed {cat}" in removed.stdout
        assert owned_images(PKG) == []
        for image in (v1_image, v2_image):  # gone, not left nameless (the source image has the same ID)
            tags = podman(
                "image",
                "inspect",
                "--format",
                "{{.RepoTags}}",
                image.rsplit(":", 1)[1],
                check=False,
                storage=prefix.storage,
            )
            assert tags.returncode != 0 or "localhost/flake-test/deb-v" in tags.stdout, tags.stdout
        run(["dpkg", "--purge", PKG], env=env)
        check_gone(prefix, PKG, [sh, cat])
        containers = podman("ps", "-a", "--format", "{{.Image}}", storage=prefix.storage).stdout
        assert f"localhost/flake-deb/{PKG}:" not in containers
    finally:
        purge(PKG)


@installs
def test_apt_installs_from_the_repository_and_purge_leaves_nothing(
    pilot: None, prefix: Prefix, versions: dict[str, str], tmp_path: Path
) -> None:
    env = host_env(prefix, tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    sh, cat = prefix.bin_dir / "fdt-sh", prefix.bin_dir / "fdt-cat"
    apps = ("--app", f"{sh}:/bin/sh", "--app", f"{cat}:/bin/cat")
    build(prefix, "podman", "--container", versions["2"], *apps, "--name", PKG, "--version", "2.0", "--repo", str(repo))
    try:
        apt_get(env, tmp_path, repo, PKG)
        assert status(PKG) == "install ok installed 2.0"
        run_apps(prefix, env, sh, cat, "2")
        run(["apt-get", "purge", "-y", PKG], env={**env, "DEBIAN_FRONTEND": "noninteractive"})
        check_gone(prefix, PKG, [sh, cat])
        assert owned_images(PKG) == []
    finally:
        purge(PKG)


@installs
def test_pull_at_install_time_with_register_options(
    pilot: None,
    prefix: Prefix,
    versions: dict[str, str],
    tmp_path: Path,
    local_registry: Registry,
) -> None:
    ref = local_registry.push(versions["1"], "flake-test/deb-pull:1", storage=prefix.storage)
    env = host_env(prefix, tmp_path, **local_registry.env())
    out = tmp_path / "out"
    out.mkdir()
    include = tmp_path / "extra.tar"
    with tarfile.open(include, "w") as tar:
        data = b"shipped in the package\n"
        info = tarfile.TarInfo("included.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    app = prefix.bin_dir / "fdt-pulled"
    options = ("--opt", "\\--env=DEB_TEST=yes", "--include-tar", str(include))
    build(
        prefix, "podman", "--pull", ref, "--app", f"{app}:/bin/sh", *options, "--name", PULL_PKG, "--output", str(out)
    )
    deb = next(out.glob("*.deb"))
    assert deb.name == f"{PULL_PKG}_1_all.deb"  # version from the tag; the host pulls its own architecture
    contents = run(["dpkg-deb", "-c", str(deb)]).stdout
    assert "image.tar" not in contents and f"/{PULL_PKG}/include/0-extra.tar" in contents
    try:
        run(["dpkg", "-i", str(deb)], env=env)
        assert len(owned_images(PULL_PKG)) == 1
        assert podman("image", "exists", ref, storage=prefix.storage, check=False).returncode != 0, "ref kept"
        script = "echo $DEB_TEST; cat /etc/flake-version /included.txt"
        shown = subprocess.run(
            [str(app), "-c", script], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        assert (shown.returncode, shown.stdout) == (0, "yes\n1\nshipped in the package\n"), shown.stderr
        run(["dpkg", "--purge", PULL_PKG], env=env)
        check_gone(prefix, PULL_PKG, [app])
        assert owned_images(PULL_PKG) == []
        composed = podman("images", "--format", "{{.Repository}}", storage=prefix.storage).stdout.split()
        assert f"localhost/flake-composed/{app.name}" not in composed
    finally:
        purge(PULL_PKG)


@installs
def test_configure_refuses_a_flake_registered_by_hand_and_purge_keeps_it(
    pilot: None, prefix: Prefix, versions: dict[str, str], tmp_path: Path
) -> None:
    env = host_env(prefix, tmp_path)
    mine = prefix.bin_dir / "fdt-mine"
    res = prefix.ctl("podman", "register", "--container", versions["1"], "--app", str(mine), "--target", "/bin/cat")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    out.mkdir()
    other = tmp_path / "elsewhere" / "fdt-mine"  # another path, the same registration name
    build(
        prefix,
        "podman",
        "--container",
        versions["2"],
        "--app",
        f"{other}:/bin/cat",
        "--name",
        PKG,
        "--output",
        str(out),
    )
    try:
        failed = subprocess.run(
            ["dpkg", "-i", str(next(out.glob("*.deb")))], env=env, capture_output=True, text=True, timeout=300
        )
        assert failed.returncode != 0
        assert f"flake-ctl: {other}: {prefix.flakes_dir}/fdt-mine.yaml is a flake registered outside" in failed.stderr
        assert owned_images(PKG) == [], "a refused configure loaded the image"
        run(["dpkg", "--purge", PKG], env=env)
        assert status(PKG) is None
        assert os.path.islink(mine) and "deb-v1" in (prefix.flakes_dir / "fdt-mine.yaml").read_text()
        assert podman("image", "exists", versions["1"], storage=prefix.storage, check=False).returncode == 0
    finally:
        purge(PKG)


@installs
def test_vm_package_install_show_launch_purge(
    pilot: None,
    tmp_path: Path,
    kvm: None,
    firecracker_bin: Path,
    tiny_guest: dict[str, Path],
) -> None:
    p = make_prefix(tmp_path / "prefix", tmp_path / "no-podman-storage")
    with p.config.open("a") as f:
        f.write(f"  firecracker_binary: {firecracker_bin}\n")
    env = host_env(p, tmp_path)
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"\0" * 65536)  # the bare-metal guest never reads it; Firecracker needs a drive
    out = tmp_path / "out"
    out.mkdir()
    app = p.bin_dir / "fdt-hello"
    kernel = tiny_guest["reset"]
    build(
        p,
        "firecracker",
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(kernel),
        "--app",
        f"{app}:/bin/hello",
        "--name",
        VM_PKG,
        "--version",
        "1.0",
        "--output",
        str(out),
        "--",
        "--vmm",
        "firecracker",
    )
    deb = next(out.glob(f"{VM_PKG}_1.0_*.deb"))
    assert "podman" not in run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    registry = p.root / "firecracker" / "images"
    try:
        run(["dpkg", "-i", str(deb)], env=env)
        [image] = [d.name for d in registry.iterdir()]
        assert image.startswith(f"{VM_PKG}@")
        assert (registry / image / "kernel").read_bytes() == kernel.read_bytes()
        ctl = ["/usr/bin/flake-ctl"]
        listed = run([*ctl, "list", "--format", "json"], env=env).stdout
        registered = (p.flakes_dir / "fdt-hello.yaml").read_text()
        assert str(app) in listed and image in registered and "vmm: firecracker" in registered
        images = run([*ctl, "firecracker", "images", "--format", "json"], env=env).stdout
        assert image in images
        run([*ctl, "firecracker", "show"], env=env)
        launched = subprocess.run(
            [str(app)], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        assert launched.returncode == 0 and "HELLO-FROM-TINY-GUEST" in launched.stdout, launched.stderr
        run(["dpkg", "-r", VM_PKG], env=env)
        assert list(registry.iterdir()) == []
        run(["dpkg", "--purge", VM_PKG], env=env)
        check_gone(p, VM_PKG, [app])
    finally:
        purge(VM_PKG)


# -- no installation needed ----------------------------------------------------------------------


def test_two_builds_are_identical(prefix: Prefix, versions: dict[str, str], tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    podman("save", "-q", "-o", str(archive), versions["1"], storage=prefix.storage)
    app = f"--app={prefix.bin_dir}/fdt-cat:/bin/cat"
    debs: list[Path] = []
    for n, source in enumerate((["--container", versions["1"]], ["--oci", str(archive)]) * 2):
        out = tmp_path / f"out{n}"
        out.mkdir()
        build(prefix, "podman", *source, app, "--name", PKG, "--version", "1.0", "--output", str(out))
        [deb] = out.iterdir()
        debs.append(deb)
    assert debs[0].read_bytes() == debs[2].read_bytes(), "two builds of the same image differ"
    assert debs[1].read_bytes() == debs[3].read_bytes(), "two builds of the same archive differ"
    manifests = []
    for deb in debs[:2]:  # podman save's archive carries the same image (its manifest may differ)
        run(["dpkg-deb", "-x", str(deb), str(deb.parent / "x")])
        manifests.append((deb.parent / "x" / PACKAGES_DIR.relative_to("/") / PKG / "manifest.yaml").read_text())
    assert manifests[0] == manifests[1]
    listing = run(["dpkg-deb", "-c", str(debs[0])]).stdout.splitlines()
    assert listing and all(" root/root " in line and " 2023-11-14 22:13 " in line for line in listing), listing
    later = tmp_path / "later"
    later.mkdir()
    res = prefix.ctl(
        "podman",
        "build-deb",
        "--container",
        versions["1"],
        app,
        "--name",
        PKG,
        "--version",
        "1.0",
        "--output",
        str(later),
        env={"SOURCE_DATE_EPOCH": "1800000000"},
    )
    assert res.returncode == 0, res.stderr
    assert next(later.iterdir()).read_bytes() != debs[0].read_bytes(), "SOURCE_DATE_EPOCH is not used"


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--container", "localhost/flake-test/no-such-image:1"], 4, "not in the flake storage"),
        (["--oci", "/nonexistent/image.tar"], 4, "no such file"),
        (["--app", "relative/path"], 2, "not an absolute path"),
        (["--app", "/usr/bin/dpkg"], 5, "belongs to package dpkg"),
        (["--name", "Bad_Name"], 2, "not a Debian package name"),
        (["--version", "latest"], 2, "not a Debian version"),
        (["--app", "/opt/x/../y"], 2, ".."),
        (["--", "--no-such-option"], 2, "unrecognized arguments: --no-such-option"),
        (["--", "--app", "/usr/bin/other"], 2, "only register options"),
        (["--", "--opt"], 2, "expected at least one argument"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    prefix: Prefix, versions: dict[str, str], tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    given = set(args[: args.index("--")] if "--" in args else args)
    argv = [
        *("--container", versions["1"]) * ("--container" not in given and "--oci" not in given),
        *("--app", f"{prefix.bin_dir}/fdt-cat:/bin/cat") * ("--app" not in given),
        "--output",
        str(out),
        *args,
    ]
    res = build(prefix, "podman", *argv, check=False)
    assert res.returncode == code, res.stderr
    assert len(res.stderr.splitlines()) == 1 and message in res.stderr and res.stderr.startswith("flake-ctl: ")
    assert list(out.iterdir()) == []


def test_vm_bad_input(prefix: Prefix, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.write_bytes(b"\0" * 4096)
    app = f"--app={prefix.bin_dir}/fdt-vm"
    missing = build(prefix, "firecracker", "--vm", "no-such-vm", app, "--output", str(tmp_path), check=False)
    assert missing.returncode == 4 and "no rootfs image" in missing.stderr
    no_kernel = build(prefix, "firecracker", "--rootfs", str(rootfs), app, "--output", str(tmp_path), check=False)
    assert no_kernel.returncode == 2 and "--kernel" in no_kernel.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefix", "rootfs"]


def test_help_documents_the_command() -> None:
    for engine in ("podman", "firecracker"):
        proc = subprocess.run([str(BIN / "flake-ctl"), engine, "build-deb", "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "--app HOST_PATH[:TARGET]" in proc.stdout and "--repo DIR" in proc.stdout


def test_build_needs_no_root(prefix: Prefix, versions: dict[str, str]) -> None:
    """The unprivileged test user builds from an image archive (its own rootless podman for the
    throw-away storage) the same bytes as root."""
    user = need_test_user()
    work = Path(tempfile.mkdtemp(prefix="build-deb-", dir=STATE))
    try:
        work.chmod(0o755)
        archive = work / "image.tar"
        podman("save", "-q", "-o", str(archive), versions["1"], storage=prefix.storage)
        archive.chmod(0o644)
        home, mine, theirs = work / "home", work / "root-out", work / "user-out"
        for d in (home, mine, theirs):
            d.mkdir()
        os.chown(home, user.pw_uid, user.pw_gid)
        os.chown(theirs, user.pw_uid, user.pw_gid)
        options = ["--oci", str(archive), "--app", "/opt/fdt/cat:/bin/cat", "--name", PKG]
        build(prefix, "podman", *options, "--output", str(mine))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "SOURCE_DATE_EPOCH": EPOCH, "LANG": "C.UTF-8"}
        conf = os.environ.get("CONTAINERS_CONF")
        env.update({"CONTAINERS_CONF": conf} if conf else {})
        as_user = ["runuser", "-u", user.pw_name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
        ctl = [str(BIN / "flake-ctl"), "podman", "build-deb", *options, "--output", str(theirs)]
        res = subprocess.run([*as_user, *ctl], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        [built] = theirs.iterdir()
        assert built.stat().st_uid == user.pw_uid
        assert built.read_bytes() == next(mine.iterdir()).read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@installs
def test_failed_first_configure_leaves_no_image(pilot: None, tmp_path: Path) -> None:
    """A registration the installing host refuses (an --include-path it lacks): postinst fails
    with one line and takes the VM image it had put into the registry out again."""
    p = make_prefix(tmp_path / "prefix", tmp_path / "no-podman-storage")
    env = host_env(p, tmp_path)
    rootfs, kernel = tmp_path / "rootfs", tmp_path / "kernel"
    rootfs.write_bytes(b"\0" * 4096)
    kernel.write_bytes(b"kernel")
    out = tmp_path / "out"
    out.mkdir()
    app = p.bin_dir / "fdt-vm"
    missing = tmp_path / "not-on-this-host"
    options = ("--overlay-size", "64MiB", "--include-path", str(missing))
    build(
        p,
        "firecracker",
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(kernel),
        "--app",
        str(app),
        *options,
        "--name",
        VM_PKG,
        "--output",
        str(out),
    )
    try:
        failed = subprocess.run(
            ["dpkg", "-i", str(next(out.glob("*.deb")))], env=env, capture_output=True, text=True, timeout=300
        )
        assert failed.returncode != 0
        assert f"flake-ctl: --include-path: {missing}: no such file or directory\n" in failed.stderr
        registry = p.root / "firecracker" / "images"
        assert not registry.exists() or list(registry.iterdir()) == []
        assert list(p.flakes_dir.glob("fdt-vm*")) == []
        run(["dpkg", "--purge", VM_PKG], env=env)
        check_gone(p, VM_PKG, [app])
    finally:
        purge(VM_PKG)


def test_register_options_become_the_register_command_line(
    prefix: Prefix, versions: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    app = f"{prefix.bin_dir}/fdt-delta"
    build(
        prefix,
        "podman",
        "--container",
        versions["2"],
        "--app",
        f"{app}:/bin/cat",
        "--base",
        versions["1"],
        "--layer",
        "localhost/flake-test/layer:1",
        "--attach",
        "--opt",
        "\\--net host",
        "--include-path",
        "/etc/hosts",
        "--name",
        PKG,
        "--output",
        str(out),
        "--",
        "--check-host-dependencies",
    )
    deb = next(out.iterdir())
    run(["dpkg-deb", "-x", str(deb), str(tmp_path / "x")])
    manifest = yaml.safe_load((tmp_path / "x" / PACKAGES_DIR.relative_to("/") / PKG / "manifest.yaml").read_text())
    assert manifest["register"] == [
        "--attach",
        "--opt",
        "\\--net host",
        "--base",
        versions["1"],
        "--layer",
        "localhost/flake-test/layer:1",
        "--include-path",
        "/etc/hosts",
        "--check-host-dependencies",
    ]
    assert manifest["apps"] == [{"app": app, "target": "/bin/cat"}]
    assert manifest["image"]["source"] == "archive" and len(manifest["image"]["id"]) == 64
