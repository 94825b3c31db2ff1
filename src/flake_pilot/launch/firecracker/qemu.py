"""The QEMU engine of firecracker-pilot (``vm.runtime.vmm: qemu``): same images, same instance
state, sessions over virtio-serial ports instead of vsock.

The machine is QEMU's ``microvm`` (virtio-mmio devices found through ACPI, no PCI, no firmware
option ROMs): the smallest one that carries virtio-blk, virtio-serial and virtio-net. Hardware
KVM when ``/dev/kvm`` is usable and not PVM (``kvm_accel``), TCG (software emulation) otherwise.

Per instance, next to the Firecracker engine's files: ``sci_cmd_<meta>.sock_<i>`` (the chardev
Unix socket of port ``sci<i>``, QEMU listens on it) and ``sci_cmd_<meta>.sock_<i>.lock`` (flock:
held by the call using that port). A one-shot VM has one port, a resume VM ``RESUME_PORTS``:
as many calls run at once; further calls wait for a free port.

On the launcher's start path: fastos, no os/subprocess/json imports.
"""

from .. import fastos

TYPE_CHECKING = False
if TYPE_CHECKING:
    from socket import socket

    from .instances import InstancePaths
    from .plan import Plan
    from .vmdef import Instance

MACHINE = "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=on"
RESUME_PORTS = 8  # concurrent sessions of one resume VM
# TCG: the kernel cannot calibrate its clocks against the emulated PIT in time (it hangs after
# "Unable to calibrate against PIT"); give it the numbers
TCG_ARGS = ("tsc_early_khz=2000000", "lpj=4000000")
KVM_DEV = "/dev/kvm"
PVM_MODULE = "/sys/module/kvm_pvm"


def kvm_accel() -> tuple[str, str]:
    """('kvm' or 'tcg', why). Hardware KVM only: PVM (/sys/module/kvm_pvm, software nested
    virtualisation) has a /dev/kvm too, but interprets a stock guest kernel's ring-0 code and
    never finishes booting it, so it counts as no KVM."""
    if fastos.exists(PVM_MODULE):
        return "tcg", f"{KVM_DEV} is PVM (kvm_pvm), which boots no stock guest kernel"
    if not fastos.exists(KVM_DEV):
        return "tcg", f"no {KVM_DEV}"
    if not fastos.access(KVM_DEV, 6):  # R_OK | W_OK
        return "tcg", f"{KVM_DEV} is not read/writable for uid {fastos.getuid()}"
    return "kvm", "hardware KVM"


def _opt(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas doubled."""
    return value.replace(",", ",,")


def ports(flake: "Plan") -> int:
    return RESUME_PORTS if flake.resume else 1


def port_socket(paths: "InstancePaths", index: int) -> str:
    return f"{paths.sock}_{index}"


def argv(
    flake: "Plan",
    inst: "Instance",
    cmdline: str,
    *,
    name: str,
    binary: str,
    accel: str,
    user_net: bool,
    console: bool,
    session_ports: int,
    sock: str,
) -> list[str]:
    """The QEMU command line. *name*: the instance id (``-name``, how a running instance is
    recognised); *console*: the guest's serial console on QEMU's stdio (the compatibility mode, or
    the debug log); *user_net*: a user-mode network NIC (when no TAP); *session_ports*:
    virtio-serial ports for sci, their sockets ``<sock>_<i>``."""
    fc = flake.firecracker
    for key, value in (("kernel_image_path", fc.kernel_image_path), ("rootfs_image_path", fc.rootfs_image_path)):
        if not value:
            from ...errors import ConfigError

            raise ConfigError(f"{flake.config_file}: key 'vm.runtime.firecracker.{key}' is missing")
    assert fc.kernel_image_path is not None and fc.rootfs_image_path is not None
    out = [
        binary,
        "-name",
        name,
        "-M",
        MACHINE,
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else "max",
        "-smp",
        str(fc.vcpu_count),
        "-m",
        str(fc.mem_size_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio" if console else "none",
        "-kernel",
        fc.kernel_image_path,
    ]
    if fc.initrd_path:
        out += ["-initrd", fc.initrd_path]
    out += [
        "-append",
        cmdline,
        "-drive",
        f"id=rootfs,file={_opt(fc.rootfs_image_path)},format=raw,if=none,readonly=on",
        "-device",
        "virtio-blk-device,drive=rootfs",
    ]
    if inst.overlay:
        cache = "unsafe" if fc.cache_type == "Unsafe" else "writeback"
        out += [
            "-drive",
            f"id=overlay,file={_opt(inst.overlay)},format=raw,if=none,cache={cache}",
            "-device",
            "virtio-blk-device,drive=overlay",
        ]
    if inst.tap:
        out += ["-netdev", f"tap,id=net0,ifname={inst.tap},script=no,downscript=no"]
    elif user_net:
        out += ["-netdev", "user,id=net0"]
    if inst.tap or user_net:
        out += ["-device", f"virtio-net-device,netdev=net0,mac={inst.mac}"]
    if session_ports:
        out += ["-device", "virtio-serial-device"]
        for i in range(session_ports):
            out += [
                "-chardev",
                f"socket,id=sci{i},path={_opt(f'{sock}_{i}')},server=on,wait=off",
                "-device",
                f"virtserialport,chardev=sci{i},name=sci{i}",
            ]
    return out


def claim_port(paths: "InstancePaths", count: int) -> tuple[int, int]:
    """A port no other call uses: (index, fd of its lock, held until closed). Waits for one
    port when all are busy."""
    from . import instances

    for index in range(count):
        fd = instances.try_lock(port_socket(paths, index) + ".lock")
        if fd is not None:
            return index, fd
    index = fastos.getpid() % count
    return index, instances.lock(port_socket(paths, index) + ".lock")


def connect(paths: "InstancePaths", index: int, pid: int, deadline: float) -> "socket | None":
    """Connect to port *index*'s chardev socket (QEMU creates it a few ms after its start);
    None when the VM is gone."""
    import socket
    import time

    from .instances import is_vm

    path = port_socket(paths, index)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
        if not is_vm(pid, paths.fc_id):
            return None
        if time.monotonic() >= deadline:
            from ...errors import EngineError

            raise EngineError(f"VM {paths.meta}: {path}: {reason}")
        time.sleep(0.01)  # QEMU is starting; bounded by the deadline
