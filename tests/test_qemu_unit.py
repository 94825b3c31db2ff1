"""The QEMU engine's pure parts: the vm.runtime keys (vmm, console, network), the session rule,
the kernel command line and QEMU's argv, the KVM/TCG choice on this host, flake-ctl's doctor row
and register --vmm. The engine end to end: tests/test_vm_qemu_e2e.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from flake_pilot import flakeconf
from flake_pilot.errors import ConfigError
from flake_pilot.launch.firecracker import plan, qemu, vmdef
from flake_pilot.settings import Settings


def write(tmp_path: Path, runtime: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(
        "vm:\n"
        "  name: img\n"
        "  target_app_path: /bin/sh\n"
        "  runtime:\n"
        f"{runtime}"
        "    firecracker:\n"
        "      boot_args: [init=/usr/sbin/sci, console=ttyS0, acpi=off, quiet]\n"
        "      overlay_size: 64MiB\n"
        "      rootfs_image_path: /img/rootfs,x\n"
        "      kernel_image_path: /img/kernel\n"
        "      mem_size_mib: 256\n"
        "      vcpu_count: 1\n"
    )
    return path


def vm_plan(tmp_path: Path, runtime: str = "") -> plan.Plan:
    found = flakeconf.parse("app", str(write(tmp_path, runtime)))
    assert isinstance(found, flakeconf.VmFlake)
    cfg = Settings(False, None, "/f", "/ids", "/ids", None, "/reg")
    return plan.from_flake(found, cfg)


def test_original_files_load_unchanged(tmp_path: Path) -> None:
    """No vmm/console/network key: Firecracker, the original's console rule, as before."""
    p = vm_plan(tmp_path)
    assert (p.vmm, p.console, p.network, p.qemu_binary) == ("firecracker", None, "user", "qemu-system-x86_64")
    assert not vmdef.session_mode(p)  # one-shot on the serial console, as in the original
    assert vmdef.session_mode(vm_plan(tmp_path, "    force_vsock: true\n"))
    assert vmdef.session_mode(vm_plan(tmp_path, "    resume: true\n    console: true\n"))  # resume: sessions


def test_console_false_makes_one_shot_calls_sessions(tmp_path: Path) -> None:
    fc = vm_plan(tmp_path, "    console: false\n")
    assert vmdef.session_mode(fc)
    words = vmdef.boot_args(fc, ['a "quoted" arg'], overlay=True).split()
    assert words[-1] == "run=vsock" and "console=" in words and "acpi=off" in words  # Firecracker keeps acpi=off
    assert not any(w.startswith('run="') for w in words)  # arguments travel in the session, not here


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ("    vmm: kvmtool\n", "key 'vm.runtime.vmm': expected firecracker or qemu, got 'kvmtool'"),
        ("    console: maybe\n", "key 'vm.runtime.console': expected true or false, got 'maybe'"),
        ("    vmm: qemu\n    network: bridge\n", "key 'vm.runtime.network': expected user or tap, got 'bridge'"),
    ],
)
def test_bad_runtime_keys_are_one_line(tmp_path: Path, runtime: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        vm_plan(tmp_path, runtime)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_qemu_kernel_command_line(tmp_path: Path) -> None:
    q = vm_plan(tmp_path, "    vmm: qemu\n    console: false\n")
    words = vmdef.boot_args(q, ["x"], overlay=True, extra=qemu.TCG_ARGS).split()
    assert words[-1] == "sci_transport=virtio-serial" and "run=vsock" not in words
    assert "acpi=off" not in words  # microvm announces its virtio-mmio devices through ACPI
    assert "console=" in words and "console=ttyS0" not in words  # quiet boot, no console
    assert {"overlay_root=/dev/vdb", *qemu.TCG_ARGS} <= set(words)
    debug = vmdef.boot_args(q, [], overlay=False, debug=True).split()
    assert "console=ttyS0" in debug and "PILOT_DEBUG=1" in debug
    serial = vm_plan(tmp_path, "    vmm: qemu\n    console: true\n")
    assert vmdef.boot_args(serial, ["a b"], overlay=False).endswith("run=\"/bin/sh 'a b'\"")


def argv_of(p: plan.Plan, **kw: object) -> list[str]:
    inst = vmdef.Instance(
        "app", "/s/sci_cmd_app.sock", kw.pop("overlay", None), kw.pop("tap", None), "AA:FC:00:00:00:01"
    )  # type: ignore[arg-type]
    args: dict[str, object] = {
        "name": "flake-0123",
        "binary": "/usr/bin/qemu-system-x86_64",
        "accel": "tcg",
        "console": False,
        "user_net": False,
        "session_ports": 1,
        "sock": "/s/sci_cmd_app.sock",
    }
    args.update(kw)
    return qemu.argv(p, inst, "quiet", **args)  # type: ignore[arg-type]


def test_qemu_argv(tmp_path: Path) -> None:
    p = vm_plan(tmp_path, "    vmm: qemu\n    resume: true\n")
    argv = argv_of(p, overlay="/s/app.ext2", session_ports=qemu.ports(p))
    joined = " ".join(argv)
    assert argv[:3] == ["/usr/bin/qemu-system-x86_64", "-name", "flake-0123"]
    assert "-M microvm," in joined and "-accel tcg -cpu max" in joined and "-serial none" in joined
    assert "-smp 1 -m 256" in joined and "-no-reboot" in argv and "-nodefaults" in argv
    # the rootfs read-only (a comma in its path doubled), the overlay writable as the second disk
    assert "id=rootfs,file=/img/rootfs,,x,format=raw,if=none,readonly=on" in argv
    assert argv.index("id=overlay,file=/s/app.ext2,format=raw,if=none,cache=writeback") > argv.index(
        "virtio-blk-device,drive=rootfs"
    )
    ports = [a for a in argv if a.startswith("virtserialport,")]
    assert len(ports) == qemu.RESUME_PORTS and ports[0] == "virtserialport,chardev=sci0,name=sci0"
    assert "socket,id=sci7,path=/s/sci_cmd_app.sock_7,server=on,wait=off" in argv
    assert "-netdev" not in argv and "-initrd" not in argv


def test_qemu_argv_kvm_network_and_console(tmp_path: Path) -> None:
    p = vm_plan(tmp_path, "    vmm: qemu\n")
    user = argv_of(p, user_net=True, accel="kvm")
    assert "-accel kvm -cpu host" in " ".join(user)
    assert user[user.index("-netdev") + 1] == "user,id=net0"
    assert "virtio-net-device,netdev=net0,mac=AA:FC:00:00:00:01" in user
    tap = argv_of(p, tap="tap-app")
    assert tap[tap.index("-netdev") + 1] == "tap,id=net0,ifname=tap-app,script=no,downscript=no"
    console = argv_of(p, console=True, session_ports=0)
    assert "-serial stdio" in " ".join(console) and "virtio-serial-device" not in console


def test_kvm_choice_on_this_host() -> None:
    accel, why = qemu.kvm_accel()
    if os.path.exists("/sys/module/kvm_pvm"):
        assert (accel, why) == ("tcg", "/dev/kvm is PVM (kvm_pvm), which boots no stock guest kernel")
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert accel == "tcg" and "/dev/kvm" in why
    else:
        assert (accel, why) == ("kvm", "hardware KVM")


def test_doctor_reports_the_qemu_accelerator() -> None:
    from flake_pilot.ctl import doctor

    row = doctor.qemu_accel()
    accel, why = qemu.kvm_accel()
    assert row.status == "ok"
    assert (why in row.detail and "TCG" in row.detail) if accel == "tcg" else "hardware KVM" in row.detail


def test_register_vmm_qemu_writes_the_keys(tmp_path: Path) -> None:
    """register --vmm qemu; calls are sci sessions only for images whose pull installed our sci."""
    import argparse

    from flake_pilot.ctl.firecracker import vm_config
    from flake_pilot.firecracker.images import Image

    args = argparse.Namespace(
        no_net=False,
        resume=False,
        force_vsock=False,
        include_tar=[],
        include_path=[],
        target="/bin/sh",
        app="/usr/bin/vsh",
        overlay_size=None,
        vmm="qemu",
        console=False,
        network="user",
    )
    with_sci = Image("deb", "/r/deb", "/r/deb/rootfs", "/r/deb/kernel", None, 1, sci=True)
    runtime = vm_config(args, with_sci, "root")["vm"]["runtime"]
    assert (runtime["vmm"], runtime["console"], runtime["network"]) == ("qemu", False, "user")
    assert vm_config(args, Image("x", "/r/x", "/r/x/rootfs", "/r/x/kernel", None, 1), "root")["vm"]["runtime"][
        "console"
    ]
    args.vmm, args.console = "firecracker", True
    runtime = vm_config(args, with_sci, "root")["vm"]["runtime"]
    assert (runtime["vmm"], runtime["console"]) == ("firecracker", True) and "network" not in runtime
    # the written file loads as a registration
    path = tmp_path / "vsh.yaml"
    path.write_text(yaml.safe_dump(vm_config(args, with_sci, "root")))
    assert isinstance(flakeconf.parse("vsh", str(path)), flakeconf.VmFlake)
