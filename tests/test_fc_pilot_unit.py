"""Unit tests: VM definition building, boot args, TAP names, caller arguments, instance state."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from flake_pilot.errors import UsageError
from flake_pilot.firecracker import overlay, tap
from flake_pilot.flakeconf import FirecrackerRuntime, Include, VmFlake
from flake_pilot.launch.firecracker import instances, vmdef
from flake_pilot.launch.firecracker.pilot import parse_args


def flake(**kw: object) -> VmFlake:
    fc = FirecrackerRuntime(
        boot_args=("init=/usr/sbin/sci", "console=ttyS0", "root=/dev/vda", "quiet"),
        overlay_size=None,
        rootfs_image_path="/img/rootfs",
        kernel_image_path="/img/kernel",
        initrd_path=None,
        mem_size_mib=256,
        vcpu_count=2,
        cache_type="Writeback",
    )
    fc = replace(fc, **{k: v for k, v in kw.items() if hasattr(fc, k)})
    base = VmFlake(
        app="mybash",
        config_file="/f/mybash.yaml",
        vm_name="leap",
        target_app_path="/bin/bash",
        host_app_path="/usr/bin/mybash",
        include=Include(),
        runas="root",
        resume=False,
        force_vsock=False,
        firecracker=fc,
    )
    return replace(base, **{k: v for k, v in kw.items() if hasattr(base, k) and k != "firecracker"})


def inst(**kw: object) -> vmdef.Instance:
    base: dict[str, object] = {
        "meta": "mybash",
        "vsock_uds": "/s/sci_cmd_mybash.sock",
        "overlay": None,
        "tap": None,
        "mac": vmdef.guest_mac(0, "mybash"),
    }
    return vmdef.Instance(**{**base, **kw})  # type: ignore[arg-type]


# ---- TAP names ---------------------------------------------------------------------------------


def test_tap_name_short_names_kept() -> None:
    assert tap.name("aws") == "tap-aws"
    assert tap.name("aws@id") == "tap-aws@id"
    assert tap.name("abcdefghijk") == "tap-abcdefghijk"  # exactly 15


def test_tap_name_long_names_shortened_uniquely() -> None:
    metas = ("abcdefghijkl", "abcdefghijkl@1", "abcdefghijkl@2", "python3-tools@work")
    names = {m: tap.name(m) for m in metas}
    assert all(len(n) <= 15 and n.startswith("tap-") for n in names.values())
    assert len(set(names.values())) == len(names)
    assert tap.name("abcdefghijkl@1") == names["abcdefghijkl@1"]  # stable
    assert names["python3-tools@work"].startswith("tap-pyth-")


# ---- boot args -----------------------------------------------------------------------------------


def test_serial_mode_boot_args_quiet_and_quoted_command() -> None:
    line = vmdef.boot_args(flake(), ["-c", "ls -l /"], overlay=False)
    assert line.endswith(""" run="/bin/bash -c 'ls -l /'\"""")
    assert "console=ttyS0" in line.split()
    assert "loglevel=0" in line.split() and line.split().count("quiet") == 1
    run = line.split(' run="', 1)[1][:-1]
    assert shlex.split(run) == ["/bin/bash", "-c", "ls -l /"]
    assert "overlay_root" not in line


def test_vsock_mode_boot_args() -> None:
    line = vmdef.boot_args(flake(resume=True), ["x"], overlay=True, term="xterm-256color", winsize=(40, 120))
    words = line.split()
    assert words[-1] == "run=vsock"
    assert "console=" in words and "console=ttyS0" not in words  # no kernel chatter on the console
    assert {
        "overlay_root=/dev/vdb",
        "sci_resume=1",
        "sci_term=xterm-256color",
        "sci_lines=40",
        "sci_columns=120",
    } <= set(words)
    assert "loglevel=0" not in words
    forced = vmdef.boot_args(flake(force_vsock=True), [], overlay=False).split()
    assert "sci_force_vsock=1" in forced and "sci_resume=1" not in forced


def test_debug_keeps_console_and_kernel_messages() -> None:
    words = vmdef.boot_args(flake(resume=True), [], overlay=False, debug=True).split()
    assert words[0] == "PILOT_DEBUG=1" and "console=ttyS0" in words
    assert "loglevel=0" not in vmdef.boot_args(flake(), [], overlay=False, debug=True).split()


def test_bad_term_and_serial_quotes_rejected() -> None:
    assert "sci_term" not in vmdef.boot_args(flake(), [], overlay=False, term="x y;rm")
    with pytest.raises(UsageError, match="console: false"):
        vmdef.boot_args(flake(), ['say "hi"'], overlay=False)
    with pytest.raises(UsageError, match="kernel command line"):
        vmdef.boot_args(flake(), ["a" * 3000], overlay=False)
    assert vmdef.boot_args(flake(force_vsock=True), ['say "hi"'], overlay=False).endswith("run=vsock")


# ---- VM definition -------------------------------------------------------------------------------


def test_config_minimal_read_only() -> None:
    doc = vmdef.config(flake(), inst(), "console=ttyS0 run=vsock")
    assert doc["boot-source"] == {"kernel_image_path": "/img/kernel", "boot_args": "console=ttyS0 run=vsock"}
    assert doc["drives"] == [
        {
            "drive_id": "rootfs",
            "path_on_host": "/img/rootfs",
            "is_root_device": True,
            "is_read_only": True,
            "cache_type": "Writeback",
        }
    ]
    assert doc["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256}
    assert doc["vsock"] == {"guest_cid": 3, "uds_path": "/s/sci_cmd_mybash.sock"}
    assert "network-interfaces" not in doc


def test_config_overlay_initrd_network() -> None:
    f = flake(initrd_path="/img/initrd", cache_type="Unsafe", overlay_size="1GiB")
    doc = vmdef.config(f, inst(overlay="/s/mybash.ext2", tap="tap-mybash"), "x")
    assert doc["boot-source"]["initrd_path"] == "/img/initrd"
    assert doc["drives"][1] == {
        "drive_id": "overlay",
        "path_on_host": "/s/mybash.ext2",
        "is_root_device": False,
        "is_read_only": False,
        "cache_type": "Unsafe",
    }
    (nic,) = doc["network-interfaces"]
    assert nic["host_dev_name"] == "tap-mybash" and nic["iface_id"] == "eth0"
    assert nic["guest_mac"] == vmdef.guest_mac(0, "mybash")


def test_network_only_with_ip_boot_arg() -> None:
    assert not vmdef.wants_network(flake())
    assert vmdef.wants_network(flake(boot_args=("console=ttyS0", "ip=dhcp")))


def test_guest_mac_unique_and_local() -> None:
    macs = {vmdef.guest_mac(uid, m) for uid in (0, 1000) for m in ("a", "a@1", "b")}
    assert len(macs) == 6
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 2 and not first & 1 and len(mac.split(":")) == 6  # locally administered, unicast


def test_missing_kernel_is_a_config_error() -> None:
    from flake_pilot.errors import ConfigError

    with pytest.raises(ConfigError, match="kernel_image_path"):
        vmdef.config(flake(kernel_image_path=None), inst(), "x")


# ---- caller arguments ----------------------------------------------------------------------------


def test_parse_args_instances_options_passthrough() -> None:
    call = parse_args("mybash", ["-c", "@work", "echo", "%port:1234", "@b=2", "%progress", "%other", "x@y"])
    assert call.meta == "mybash@work@b=2"
    assert call.args == ["-c", "echo", "x@y"]
    assert call.port == 1234 and call.progress
    assert parse_args("mybash", []).meta == "mybash" and parse_args("mybash", []).port == 52


@pytest.mark.parametrize("bad", [["@../x"], ["@"], ["@a/b"], ["%port:x"], ["%port:0"]])
def test_parse_args_rejects(bad: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args("mybash", bad)


# ---- instance state --------------------------------------------------------------------------------


def test_stale_instances_reaped(tmp_path: Path) -> None:
    state = str(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not a firecracker process
    try:
        (tmp_path / "a.vmid").write_text(str(sleeper.pid))
        (tmp_path / "sci_cmd_a.sock").write_text("")
        (tmp_path / "sci_cmd_a.sock_52").write_text("")
        (tmp_path / "a.run.ext2").write_text("")
        (tmp_path / "b@x.vmid").write_text("garbage")
        (tmp_path / "c.vmid").write_text("4194303")  # no such pid
        (tmp_path / "c.ext2").write_text("")  # resume overlay: kept
        (tmp_path / "held.vmid").write_text("1")
        fd = instances.try_lock(str(tmp_path / "held.lock"))
        assert fd is not None
        assert instances.try_lock(str(tmp_path / "held.lock")) is None
        reaped = instances.gc(state)
        os.close(fd)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(reaped) == ["a", "b@x", "c"]
    left = {p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")}
    assert left == {"c.ext2", "held.vmid"}


def test_symlinked_vmid_is_removed_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "x.vmid").symlink_to(target)
    instances.gc(str(tmp_path))
    assert not (tmp_path / "x.vmid").exists() and target.read_text() == "keep"


def test_is_vm_requires_firecracker_and_id() -> None:
    assert not instances.is_vm(os.getpid(), "flake-x")
    assert not instances.is_vm(0, "flake-x")
    paths = instances.InstancePaths("/s", "a@b")
    assert paths.fc_id != instances.InstancePaths("/s", "a@c").fc_id
    assert paths.fc_id.replace("-", "").isalnum() and len(paths.fc_id) <= 64


# ---- overlay ------------------------------------------------------------------------------------------


def test_overlay_sparse_with_includes(tmp_path: Path) -> None:
    src = tmp_path / "inc"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("from-path\n")
    tar_dir = tmp_path / "t"
    (tar_dir / "etc").mkdir(parents=True)
    (tar_dir / "etc" / "from-tar").write_text("from-tar\n")
    tar = tmp_path / "inc.tar"
    subprocess.run(["tar", "-C", str(tar_dir), "-cf", str(tar), "etc"], check=True)
    img = tmp_path / "o.ext2"
    overlay.create(str(img), 64 * 1024 * 1024, Include(tar=(str(tar),), path=(str(src),)), "/f.yaml")
    st = img.stat()
    assert st.st_size == 64 * 1024 * 1024 and st.st_blocks * 512 < 8 * 1024 * 1024  # sparse
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("o.ext2.")] == []  # no leftovers

    def cat(path: str) -> str:
        cmd = ["/usr/sbin/debugfs", "-R", f"cat {path}", str(img)]
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    assert cat("/rootfs_upper/etc/from-tar") == "from-tar\n"
    assert cat(f"/rootfs_upper{src}/sub/f.txt") == "from-path\n"
    listing = subprocess.run(["/usr/sbin/debugfs", "-R", "ls /", str(img)], capture_output=True, text=True).stdout
    assert {"rootfs", "rootfs_upper", "rootfs_work"} <= set(listing.split())


def test_overlay_failure_leaves_nothing(tmp_path: Path) -> None:
    from flake_pilot.errors import ConfigError

    img = tmp_path / "o.ext2"
    with pytest.raises(ConfigError, match="include.path"):
        overlay.create(str(img), 8 * 1024 * 1024, Include(path=("/does/not/exist",)), "/f.yaml")
    assert list(tmp_path.iterdir()) == []


def test_find_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flake_pilot.errors import EngineError
    from flake_pilot.launch import fastos
    from flake_pilot.launch.firecracker.pilot import find_binary

    exe = tmp_path / "firecracker"
    exe.write_text("#!/bin/sh\n")
    # the launcher reads its environment through fastos.environ (a snapshot taken at import)
    monkeypatch.setitem(fastos.environ, "PATH", f"/nonexistent:{tmp_path}")
    with pytest.raises(EngineError, match="not found in PATH"):
        find_binary("firecracker")  # not executable yet
    exe.chmod(0o755)
    assert find_binary("firecracker") == str(exe)
    assert find_binary(str(exe)) == str(exe)
    with pytest.raises(EngineError, match="generic.firecracker_binary"):
        find_binary(str(tmp_path / "missing") + "/firecracker")
    with pytest.raises(EngineError, match="must be named 'firecracker'"):
        find_binary("/usr/bin/firecracker-1.12")


def test_boot_timeout_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from flake_pilot.launch import fastos
    from flake_pilot.launch.firecracker.pilot import boot_timeout

    monkeypatch.setitem(fastos.environ, "PILOT_BOOT_TIMEOUT", "2.5")
    assert boot_timeout() == 2.5
    for bad in ("x", "0", "-1", "1e9"):
        monkeypatch.setitem(fastos.environ, "PILOT_BOOT_TIMEOUT", bad)
        with pytest.raises(UsageError, match="PILOT_BOOT_TIMEOUT"):
            boot_timeout()


def test_own_json_and_quoting_match_the_stdlib() -> None:
    """vmdef writes the VM definition and the serial command without json/shlex (their re import
    costs the launcher milliseconds): the text must be exactly what those would produce."""
    import json
    import shlex

    words = ["", "a", "it's", "a b", "x=1,2:/.-@%+", "ü", "$x", "tab\t", 'q"uote', "back\\slash", "\x7f", "\u2028"]
    for word in words:
        assert vmdef.quote(word) == shlex.quote(word)
        assert vmdef.dumps(word) == json.dumps(word)
    doc = vmdef.config(flake(), inst(overlay="/s/o.ext2", tap="tap-x"), 'console=ttyS0 run="/bin/true"')
    assert vmdef.dumps(doc) == json.dumps(doc)
    assert vmdef.dumps({"a": [1, True, None, False, -3, (1, 2)], 5: "k"}) == json.dumps(
        {"a": [1, True, None, False, -3, (1, 2)], 5: "k"}
    )
    with pytest.raises(TypeError):
        vmdef.dumps({"f": 1.5})
