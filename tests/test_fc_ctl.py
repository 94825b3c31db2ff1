"""flake-ctl firecracker pull/register/remove/show/images through the installed flake-ctl, with
images served by a local HTTPS server (generated certificate, trusted via SSL_CERT_FILE)."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import BIN, TEST_USER, Prefix, need_test_user
from fc_ctl_fixtures import launcher_stub, registry, snapshot
from flake_pilot import flakeconf
from https_server import Site, debugfs_cat, fsck_clean, kis_members, kis_tarball, serve

STATE = Path(os.environ.get("FLAKE_STATE", "/var/tmp/flake-pilot"))


def assert_clean(p: Prefix) -> None:
    leftovers = [e for e in os.listdir(registry(p)) if e.startswith((".pull-", ".trash-"))]
    assert leftovers == []


# -- pull --------------------------------------------------------------------------------------------


def test_pull_kis_over_https(fc: Prefix, cert: tuple[Path, Path], kis_site: Site, rootfs_bytes: bytes) -> None:
    with serve(kis_site, cert) as srv:
        res = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/leap.tar.xz"))
    assert res.returncode == 0, res.stderr
    image = registry(fc) / "images" / "leap"
    assert sorted(os.listdir(image)) == ["checksum", "initrd", "kernel", "rootfs"]
    assert (image / "rootfs").read_bytes() == rootfs_bytes
    assert "sci MISSING, python3 present" in res.stdout
    assert "/leap.tar.xz.sha256" in kis_site.log  # the sibling checksum was looked for
    assert_clean(fc)
    listing = fc.ctl("firecracker", "images", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    [entry] = json.loads(listing.stdout)
    assert (entry["name"], entry["rootfs_size"], entry["initrd"]) == ("leap", len(rootfs_bytes), "yes")
    again = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", str(registry(fc) / "x.tar.xz"))
    assert again.returncode == 5 and "--force" in again.stderr  # exists: refused before any download


def test_pull_components_with_sibling_checksums_and_pins(
    fc: Prefix, cert: tuple[Path, Path], rootfs_bytes: bytes
) -> None:
    kernel = b"vmlinux" * 1000
    site = Site(
        files={
            "/r.ext4": rootfs_bytes,
            "/r.ext4.sha256": f"{hashlib.sha256(rootfs_bytes).hexdigest()}  r.ext4\n".encode(),
            "/vmlinux": kernel,
        }
    )
    with serve(site, cert) as srv:
        bad_pin = fc.ctl(
            "firecracker",
            "pull",
            "--name",
            "fc",
            "--rootfs",
            srv.url("/r.ext4"),
            "--kernel",
            srv.url("/vmlinux"),
            "--sha256",
            "kernel=" + "0" * 64,
        )
        assert bad_pin.returncode == 7 and "sha256 mismatch" in bad_pin.stderr
        assert snapshot(fc).get("images/fc") is None
        site.files["/r.ext4.sha256"] = ("1" * 64 + "\n").encode()  # a sibling that does not match
        bad_sibling = fc.ctl(
            "firecracker",
            "pull",
            "--name",
            "fc",
            "--rootfs",
            srv.url("/r.ext4"),
            "--kernel",
            srv.url("/vmlinux"),
        )
        assert bad_sibling.returncode == 7 and "r.ext4.sha256" in bad_sibling.stderr
        del site.files["/r.ext4.sha256"]
        ok = fc.ctl(
            "firecracker",
            "pull",
            "--name",
            "fc",
            "--rootfs",
            srv.url("/r.ext4"),
            "--kernel",
            srv.url("/vmlinux"),
            "--sha256",
            "kernel=" + hashlib.sha256(kernel).hexdigest(),
        )
    assert ok.returncode == 0, ok.stderr
    assert "rootfs not verified" in ok.stderr and "kernel not verified" not in ok.stderr
    assert (registry(fc) / "images" / "fc" / "kernel").read_bytes() == kernel
    assert_clean(fc)


def test_plain_http_refused_then_allowed(fc: Prefix, kis_site: Site) -> None:
    with serve(kis_site, None) as srv:
        refused = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/leap.tar.xz"))
        assert refused.returncode == 7 and "plain http refused" in refused.stderr
        assert kis_site.log == []
        allowed = fc.ctl(
            "firecracker",
            "pull",
            "--name",
            "leap",
            "--kis-image",
            srv.url("/leap.tar.xz"),
            env={"FLAKE_ALLOW_INSECURE_TRANSPORT": "1"},
        )
    assert allowed.returncode == 0, allowed.stderr
    assert (registry(fc) / "images" / "leap" / "kernel").is_file()


def test_redirect_to_http_refused(fc: Prefix, cert: tuple[Path, Path], kis_site: Site) -> None:
    with (
        serve(kis_site, None) as plain,
        serve(Site(redirects={"/leap": plain.url("/leap.tar.xz")}), cert) as srv,
    ):
        res = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/leap"))
    assert res.returncode == 7 and "redirect to http://" in res.stderr
    assert kis_site.log == []
    assert not (registry(fc) / "images" / "leap").exists()
    assert_clean(fc)


def test_tampered_tarball_refused_and_force_keeps_old(
    fc: Prefix, cert: tuple[Path, Path], kis_site: Site, rootfs_bytes: bytes
) -> None:
    members = kis_members(rootfs_bytes)
    tampered = bytearray(rootfs_bytes)
    tampered[4096] ^= 0xFF
    members["test.x86_64-1.15.6"] = bytes(tampered)  # the .sha256 still describes the original
    kis_site.files["/tampered.tar.xz"] = kis_tarball(members)
    with serve(kis_site, cert) as srv:
        res = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/tampered.tar.xz"))
        assert res.returncode == 7 and "checksum mismatch" in res.stderr
        assert snapshot(fc).get("images/leap") is None
        assert fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/leap.tar.xz")).returncode == 0
        before = snapshot(fc)
        forced = fc.ctl("firecracker", "pull", "--force", "--name", "leap", "--kis-image", srv.url("/tampered.tar.xz"))
    assert forced.returncode == 7
    assert snapshot(fc) == before  # the old image stays until a new one verified
    assert_clean(fc)


def test_dropped_connection_leaves_nothing(fc: Prefix, cert: tuple[Path, Path], kis_site: Site) -> None:
    kis_site.drop.add("/leap.tar.xz")
    with serve(kis_site, cert) as srv:
        res = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/leap.tar.xz"))
    assert res.returncode == 7 and ("incomplete download" in res.stderr or "transfer failed" in res.stderr)
    assert sorted(snapshot(fc)) == ["images", "storage"]
    assert_clean(fc)


def test_killed_pull_is_cleaned_by_the_next(fc: Prefix, cert: tuple[Path, Path], kis_site: Site) -> None:
    """A pull killed with SIGKILL leaves only its staging dir; the next pull removes it."""
    stale = registry(fc) / ".pull-leap-dead"
    stale.mkdir(parents=True)
    (stale / ".lock").write_text("")
    (stale / "image").mkdir()
    with serve(kis_site, cert) as srv:
        res = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/leap.tar.xz"))
    assert res.returncode == 0, res.stderr
    assert not stale.exists()


def test_install_sci_offline_and_read_back(fc: Prefix, tmp_path: Path, rootfs_bytes: bytes) -> None:
    rootfs, kernel, sci = tmp_path / "rootfs.ext4", tmp_path / "vmlinux", tmp_path / "sci"
    rootfs.write_bytes(rootfs_bytes)
    kernel.write_bytes(b"kernel")
    sci.write_bytes(b"#!/usr/bin/python3\nprint('sci')\n")
    res = fc.ctl(
        "firecracker",
        "pull",
        "--name",
        "offline",
        "--rootfs",
        str(rootfs),
        "--kernel",
        "file://" + str(kernel),
        "--sci",
        str(sci),
    )
    assert res.returncode == 0, res.stderr
    assert "sci present, python3 present" in res.stdout
    stored = registry(fc) / "images" / "offline" / "rootfs"
    assert debugfs_cat(stored, "/usr/sbin/sci") == sci.read_bytes()
    assert fsck_clean(stored).returncode == 0
    assert rootfs.read_bytes() == rootfs_bytes  # the source was not touched


@pytest.mark.parametrize(
    "argv,code",
    [
        (["--kis-image", "https://x/a", "--rootfs", "https://x/r"], 2),
        (["--rootfs", "https://x/r"], 2),
        (["--kis-image", "ftp://x/a"], 2),
        (["--kis-image", "https://x/a", "--sha256", "nothex"], 2),
    ],
)
def test_pull_usage_errors(fc: Prefix, argv: list[str], code: int) -> None:
    res = fc.ctl("firecracker", "pull", "--name", "x", *argv)
    assert res.returncode == code and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    bad_name = fc.ctl("firecracker", "pull", "--name", "../etc", "--kis-image", "https://x/a")
    assert bad_name.returncode == 2 and "invalid --name" in bad_name.stderr


# -- register / remove / show ---------------------------------------------------------------------------


@pytest.fixture
def pulled(fc: Prefix, tmp_path: Path, rootfs_bytes: bytes) -> Prefix:
    for name in ("leap", "other"):
        image = registry(fc) / "images" / name
        image.mkdir(parents=True)
        (image / "rootfs").write_bytes(rootfs_bytes)
        (image / "kernel").write_bytes(b"kernel")
    return fc


@pytest.mark.parametrize("size", ["20GiB", "20GB", "20g", "512 MiB"])
def test_register_vm_flake(pulled: Prefix, size: str) -> None:
    app = pulled.bin_dir / "mybash"
    res = pulled.ctl(
        "firecracker",
        "register",
        "--vm",
        "leap",
        "--app",
        str(app),
        "--target",
        "/bin/bash",
        "--overlay-size",
        size,
        "--resume",
        "--force-vsock",
        "--no-net",
        "--include-path",
        str(pulled.config),
    )
    assert res.returncode == 0, res.stderr
    assert os.path.basename(os.readlink(app)) == "firecracker-pilot"
    config = pulled.flakes_dir / "mybash.yaml"
    raw = yaml.safe_load(config.read_text())
    fcr = raw["vm"]["runtime"]["firecracker"]
    assert fcr["boot_args"] == [
        "init=/usr/sbin/sci",
        "console=ttyS0",
        "root=/dev/vda",
        "acpi=off",
        "rd.neednet=1",
        "quiet",
        "sci_resume=1",
        "sci_force_vsock=1",
    ]
    assert set(raw["vm"]) == {"name", "target_app_path", "host_app_path", "base_vm", "layers", "runtime"}
    assert raw["include"] == {"tar": None, "path": [str(pulled.config)]}
    flake = flakeconf.parse("mybash", str(config))
    assert isinstance(flake, flakeconf.VmFlake)
    assert (flake.vm_name, flake.target_app_path, flake.resume, flake.force_vsock) == (
        "leap",
        "/bin/bash",
        True,
        True,
    )
    assert flake.firecracker.overlay_size == size
    assert flake.firecracker.rootfs_image_path == str(registry(pulled) / "images" / "leap" / "rootfs")
    assert flake.firecracker.initrd_path is None
    assert (pulled.flakes_dir / "mybash.d").is_dir()


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["--overlay-size", "20 parsecs"], 2, "--overlay-size"),
        (["--overlay-size", "0"], 2, "minimum"),
        (["--overlay-size", "lots"], 2, "--overlay-size"),
        (["--include-tar", "/etc/hostname"], 2, "need --overlay-size"),
        (["--target", "bin/bash"], 2, "absolute"),
    ],
)
def test_register_refuses_bad_input_and_writes_nothing(
    pulled: Prefix, argv: list[str], code: int, message: str
) -> None:
    app = pulled.bin_dir / "mybash"
    res = pulled.ctl("firecracker", "register", "--vm", "leap", "--app", str(app), *argv)
    assert res.returncode == code and message in res.stderr, res.stderr
    assert not os.path.lexists(app) and list(pulled.flakes_dir.iterdir()) == []


def test_register_needs_the_image(pulled: Prefix) -> None:
    res = pulled.ctl("firecracker", "register", "--vm", "nope", "--app", str(pulled.bin_dir / "x"))
    assert res.returncode == 4 and "no rootfs image" in res.stderr


def test_register_conflict_and_force(pulled: Prefix) -> None:
    app = pulled.bin_dir / "tool"
    args = ("firecracker", "register", "--vm", "leap", "--app", str(app))
    assert pulled.ctl(*args).returncode == 0
    again = pulled.ctl(*args)
    assert again.returncode == 5 and "--force" in again.stderr
    forced = pulled.ctl(*args[:3], "other", *args[4:], "--force")
    assert forced.returncode == 0, forced.stderr
    flake = flakeconf.parse("tool", str(pulled.flakes_dir / "tool.yaml"))
    assert isinstance(flake, flakeconf.VmFlake) and flake.vm_name == "other"


def test_remove_app_and_vm(pulled: Prefix) -> None:
    for app, vm in (("a1", "leap"), ("a2", "leap"), ("b1", "other")):
        res = pulled.ctl("firecracker", "register", "--vm", vm, "--app", str(pulled.bin_dir / app))
        assert res.returncode == 0, res.stderr
    res = pulled.ctl("firecracker", "remove", "--app", str(pulled.bin_dir / "b1"))
    assert res.returncode == 0, res.stderr
    assert not os.path.lexists(pulled.bin_dir / "b1") and not (pulled.flakes_dir / "b1.yaml").exists()
    res = pulled.ctl("firecracker", "remove", "--vm", "leap")
    assert res.returncode == 0, res.stderr
    for app in ("a1", "a2"):
        assert not os.path.lexists(pulled.bin_dir / app) and not (pulled.flakes_dir / f"{app}.yaml").exists()
    assert sorted(os.listdir(registry(pulled) / "images")) == ["other"]
    assert_clean(pulled)
    missing = pulled.ctl("firecracker", "remove", "--vm", "leap")
    assert missing.returncode == 4
    both = pulled.ctl("firecracker", "remove", "--vm", "leap", "--app", "/x")
    assert both.returncode == 2


FakeFirecracker = Callable[[str], subprocess.Popen[bytes]]


@pytest.fixture
def fake_firecracker(tmp_path: Path) -> Iterator[FakeFirecracker]:
    """Start live processes named (comm) 'firecracker' with ``--id ID``: copies of python3 sleeping."""
    exe = tmp_path / "firecracker"
    shutil.copy("/usr/bin/python3", exe)
    started: list[subprocess.Popen[bytes]] = []

    def start(fc_id: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(exe), "-c", "import time; time.sleep(300)", "--id", fc_id])
        started.append(proc)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "firecracker":
            assert time.monotonic() < deadline, "the fake firecracker did not exec"
            time.sleep(0.01)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def fc_id(p: Prefix, meta: str) -> str:
    from flake_pilot.launch.firecracker.instances import InstancePaths

    return InstancePaths(str(p.ids_dir / str(os.getuid())), meta).fc_id


def test_show_tells_running_from_stopped_and_reused_pids(pulled: Prefix, fake_firecracker: FakeFirecracker) -> None:
    assert pulled.ctl("firecracker", "register", "--vm", "leap", "--app", str(pulled.bin_dir / "vmapp")).returncode == 0
    ids = pulled.ids_dir / str(os.getuid())
    ids.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "300"])  # a live process that is not firecracker: a reused PID
    vm = fake_firecracker(fc_id(pulled, "vmapp"))
    try:
        (ids / "vmapp.vmid").write_text(str(vm.pid))
        (ids / "vmapp@other.vmid").write_text(str(vm.pid))  # a VM, but another instance's
        (ids / "vmapp@reused.vmid").write_text(str(other.pid))
        (ids / "vmapp@new.vmid").write_text("0")
        (ids / "vmapp@junk.vmid").write_text("abc")
        (ids / "ghost.vmid").write_text("0")
        res = pulled.ctl("firecracker", "show", "--format", "json")
    finally:
        other.kill()
        other.wait()
    assert res.returncode == 0, res.stderr
    records = {r["name"]: r for r in json.loads(res.stdout)}
    assert {n: r["status"] for n, r in records.items()} == {
        "ghost": "stopped",
        "vmapp": "running",
        "vmapp@junk": "unknown",
        "vmapp@new": "stopped",
        "vmapp@other": "stopped",
        "vmapp@reused": "stopped",
    }
    assert records["vmapp"]["image"] == "leap" and records["vmapp"]["id"] == str(vm.pid)
    assert records["vmapp"]["config"] == str(pulled.flakes_dir / "vmapp.yaml")
    assert records["ghost"]["config"] is None
    assert set(records["vmapp"]) == {"name", "user", "id", "status", "image", "config"}
    table = pulled.ctl("firecracker", "show")
    assert table.stdout.startswith(f"Flake firecracker instances in {pulled.ids_dir}")
    csv_out = pulled.ctl("firecracker", "--user", "show", "--format", "csv")  # root: --user is ignored
    assert csv_out.stdout.splitlines()[0] == "name,user,id,status,image,config"


# -- user mode -------------------------------------------------------------------------------------------


@pytest.fixture
def user_home(cert: tuple[Path, Path]) -> Iterator[tuple[Path, dict[str, str]]]:
    """A home for the unprivileged test user (tmp_path is private to root)."""
    pw = need_test_user()
    STATE.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="fc-user-", dir=STATE))
    os.chmod(home, 0o755)
    shutil.copy(cert[0], home / "cert.pem")
    (home / "bin").mkdir()
    (home / "sys").mkdir()
    launcher_stub(home / "bin")
    (home / "sys" / "flakes.yml").write_text(
        f"generic:\n  firecracker_ids_dir: {home / 'ids'}\n  firecracker_registry_dir: {home / 'sysreg'}\n"
    )
    for path in [home, *home.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    (home / "sysreg").mkdir(mode=0o755)  # the system registry: root's
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "SSL_CERT_FILE": str(home / "cert.pem"),
        "FLAKES_CONFIG": str(home / "sys" / "flakes.yml"),
        "NO_PROGRESS": "1",
        "no_proxy": "localhost,127.0.0.1",
        "PATH": f"{home / 'bin'}:{BIN}:/usr/bin:/bin",
    }
    yield home, env
    shutil.rmtree(home)


def as_user(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "runuser",
        "-u",
        TEST_USER,
        "--",
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        str(BIN / "flake-ctl"),
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_user_mode_pull_register_remove(
    user_home: tuple[Path, dict[str, str]], cert: tuple[Path, Path], kis_site: Site
) -> None:
    home, env = user_home
    sci = home / "sci"
    sci.write_bytes(b"#!/usr/bin/python3\n# sci\n")
    system = as_user(env, "firecracker", "pull", "--name", "x", "--rootfs", str(sci), "--kernel", str(sci))
    assert system.returncode == 1 and "use --user" in system.stderr and os.listdir(home / "sysreg") == []
    with serve(kis_site, cert) as srv:
        res = as_user(
            env,
            "firecracker",
            "--user",
            "pull",
            "--name",
            "leap",
            "--kis-image",
            srv.url("/leap.tar.xz"),
            "--sci",
            str(sci),
        )
    assert res.returncode == 0, res.stderr
    image = home / ".config" / "flakes" / "firecracker" / "images" / "leap"
    assert (image / "rootfs").stat().st_uid != 0
    assert debugfs_cat(image / "rootfs", "/usr/sbin/sci") == sci.read_bytes()  # debugfs -w without root
    app = home / "bin" / "myapp"
    res = as_user(env, "firecracker", "register", "--user", "--vm", "leap", "--app", str(app), "--overlay-size", "1g")
    assert res.returncode == 0, res.stderr
    flake = flakeconf.parse("myapp", str(home / ".config" / "flakes" / "myapp.yaml"))
    assert isinstance(flake, flakeconf.VmFlake) and flake.runas == TEST_USER
    assert flake.firecracker.rootfs_image_path == str(image / "rootfs")
    shown = as_user(env, "firecracker", "--user", "images", "--format", "json")
    assert [i["name"] for i in json.loads(shown.stdout)] == ["leap"]
    res = as_user(env, "firecracker", "--user", "remove", "--vm", "leap")
    assert res.returncode == 0, res.stderr
    assert not os.path.lexists(app) and not image.exists()


def test_help_lists_every_original_option() -> None:
    out = subprocess.run([str(BIN / "flake-ctl"), "firecracker", "register", "--help"], capture_output=True, text=True)
    for option in (
        "--vm",
        "--app",
        "--target",
        "--overlay-size",
        "--no-net",
        "--resume",
        "--force-vsock",
        "--run-as",
        "--include-tar",
        "--include-path",
        "--force",
        "--user",
    ):
        assert option in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "flake_pilot.ctl.main", "firecracker", "pull", "--help"],
        capture_output=True,
        text=True,
    )
    for option in (
        "--name",
        "--kis-image",
        "--rootfs",
        "--kernel",
        "--initrd",
        "--force",
        "--sha256",
        "--install-sci",
    ):
        assert option in out.stdout


def _zip_identity(data: bytes) -> list[tuple[str, bytes]]:
    """Members of a sci zipapp; for .pyc only the header (magic, flags, source hash): marshal
    output may differ between processes (reference flags), the code it encodes does not."""
    import io
    import zipfile

    assert data.startswith(b"#!/usr/bin/python3")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)[:16] if i.filename.endswith(".pyc") else zf.read(i)) for i in zf.infolist()]


def test_install_sci_uses_the_sci_bundle(fc: Prefix, tmp_path: Path, rootfs_bytes: bytes) -> None:
    from flake_pilot.sci import bundle

    rootfs, kernel = tmp_path / "rootfs.ext4", tmp_path / "vmlinux"
    rootfs.write_bytes(rootfs_bytes)
    kernel.write_bytes(b"kernel")
    res = fc.ctl(
        "firecracker",
        "pull",
        "--name",
        "ready",
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(kernel),
        "--install-sci",
    )
    assert res.returncode == 0, res.stderr
    stored = registry(fc) / "images" / "ready" / "rootfs"
    assert _zip_identity(debugfs_cat(stored, "/usr/sbin/sci")) == _zip_identity(bundle.build_bytes())
    listing = json.loads(fc.ctl("firecracker", "images", "--format", "json").stdout)
    assert [(i["name"], i["guest"]) for i in listing] == [("ready", "ready")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_pull_leaves_the_registry_as_it_was(
    fc: Prefix, cert: tuple[Path, Path], kis_site: Site, signum: int
) -> None:
    kis_site.files["/big.tar.xz"] = kis_tarball(kis_members(os.urandom(512 * 2048)), "gz")  # 1 MiB
    kis_site.stall.add("/big.tar.xz")
    with serve(kis_site, cert) as srv:
        proc = subprocess.Popen(
            [
                str(BIN / "flake-ctl"),
                "firecracker",
                "pull",
                "--name",
                "leap",
                "--kis-image",
                srv.url("/big.tar.xz"),
            ],
            env=fc.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not list(registry(fc).glob(".pull-leap-*/download/kis")) or not any(
            f.stat().st_size > 0 for f in registry(fc).glob(".pull-leap-*/download/kis")
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "the pull did not start downloading"
            time.sleep(0.02)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert "Traceback" not in err
    assert sorted(snapshot(fc)) == ["images", "storage"]
    assert_clean(fc)


def test_remove_vm_refuses_while_an_instance_runs(pulled: Prefix, fake_firecracker: FakeFirecracker) -> None:
    assert pulled.ctl("firecracker", "register", "--vm", "leap", "--app", str(pulled.bin_dir / "busy")).returncode == 0
    ids = pulled.ids_dir / str(os.getuid())
    ids.mkdir(parents=True)
    (ids / "busy@one.vmid").write_text(str(fake_firecracker(fc_id(pulled, "busy@one")).pid))
    refused = pulled.ctl("firecracker", "remove", "--vm", "leap")
    assert refused.returncode == 5 and "busy@one" in refused.stderr
    assert (registry(pulled) / "images" / "leap" / "rootfs").is_file() and (pulled.flakes_dir / "busy.yaml").exists()
    forced = pulled.ctl("firecracker", "remove", "--vm", "leap", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (registry(pulled) / "images" / "leap").exists()


def test_not_a_tarball_is_one_line_naming_the_source(fc: Prefix, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.xz"
    junk.write_bytes(b"no archive at all" * 100)
    res = fc.ctl("firecracker", "pull", "--name", "junk", "--kis-image", str(junk))
    assert res.returncode == 7
    assert (
        res.stderr == f"flake-ctl: {junk}: not a readable tar archive: unknown format (expected tar, "
        "tar.gz, tar.bz2 or tar.xz)\n"
    )
    assert sorted(snapshot(fc)) == ["images", "storage"]


def test_progress_bar_only_on_a_terminal(fc: Prefix, tmp_path: Path, rootfs_bytes: bytes) -> None:
    import pty

    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(rootfs_bytes)
    env = {k: v for k, v in fc.env.items() if k != "NO_PROGRESS"}
    argv = [
        str(BIN / "flake-ctl"),
        "firecracker",
        "pull",
        "--name",
        "tty",
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(rootfs),
    ]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 120
        while True:  # read while it runs, so a full terminal buffer can never block it
            assert time.monotonic() < deadline, "flake-ctl pull on a terminal did not finish"
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        proc.wait(timeout=120)
    assert proc.returncode == 0
    assert b"Downloading rootfs.ext4" in shown
    quiet = fc.ctl(
        "firecracker",
        "pull",
        "--force",
        "--name",
        "tty",
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(rootfs),
        env={"NO_PROGRESS": ""},
    )
    assert quiet.returncode == 0 and "Downloading" not in quiet.stderr


@pytest.mark.parametrize("no_net", [False, True])
def test_registration_feeds_firecracker_pilot(pulled: Prefix, no_net: bool) -> None:
    """The contract with firecracker-pilot: its VM document comes out of our registration."""
    from flake_pilot.launch.firecracker import vmdef

    args = ["--no-net"] if no_net else []
    res = pulled.ctl("firecracker", "register", "--vm", "leap", "--app", str(pulled.bin_dir / "net"), "--resume", *args)
    assert res.returncode == 0, res.stderr
    flake = flakeconf.parse("net", str(pulled.flakes_dir / "net.yaml"))
    assert isinstance(flake, flakeconf.VmFlake)
    image = registry(pulled) / "images" / "leap"
    assert vmdef.wants_network(flake) is not no_net
    inst = vmdef.Instance("net", "/run/x.sock", None, None if no_net else "tap-net", "AA:FC:00:00:00:01")
    cmdline = vmdef.boot_args(flake, [], overlay=False)
    doc = vmdef.config(flake, inst, cmdline)
    assert doc["drives"][0]["path_on_host"] == str(image / "rootfs")
    assert doc["boot-source"]["kernel_image_path"] == str(image / "kernel")
    assert "init=/usr/sbin/sci" in cmdline.split() and "sci_resume=1" in cmdline.split()
    assert ("network-interfaces" in doc) is not no_net
