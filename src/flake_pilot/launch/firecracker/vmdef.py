"""The VM definition: a registered VM (a VmFlake or the launcher's cached plan) plus one
instance -> Firecracker's config-file JSON.

Pure functions (no I/O) so the exact document Firecracker gets is unit-testable; the pilot
passes it through a pipe (``--no-api --config-file /dev/fd/N``), no temporary file. On the
launcher's start path: no dataclasses, shlex/re or json imports (``dumps`` is json.dumps for
the plain values of a VM definition).
"""

import zlib

# importing typing costs ~13 ms of launcher start, __future__ ~0.5 ms: these names are only
# annotations, quoted; flake_pilot.errors is imported where an error is raised
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from ...flakeconf import VmFlake
    from .plan import Plan

    Vm: TypeAlias = VmFlake | Plan

CMDLINE_MAX = 2048  # Firecracker's x86-64 kernel command line limit (bytes, incl. what it appends)
GUEST_CID = 3
_TERM_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.+")


class Instance:
    """Where one VM instance's per-instance resources live (all in the private state dir)."""

    __slots__ = ("meta", "vsock_uds", "overlay", "tap", "mac")

    def __init__(self, meta: str, vsock_uds: str, overlay: str | None, tap: str | None, mac: str) -> None:
        self.meta = meta  # app[@name]: the instance name
        self.vsock_uds = vsock_uds
        self.overlay = overlay  # per-instance write layer, None: read-only instance
        self.tap = tap  # host TAP device, None: no network
        self.mac = mac


def session_mode(flake: "Vm") -> bool:
    """True: every call is a sci session (vsock, virtio-serial); False: the serial console
    compatibility mode (run= on the kernel command line, no exit status, merged output).

    ``vm.runtime.console: false`` (written by flake-ctl for images with our sci) asks for sessions,
    ``true`` for the console; unset (the original's files) keeps the original's rule: sessions only
    with resume or force_vsock."""
    return bool(flake.resume or flake.force_vsock or flake.console is False)


def wants_network(flake: "Vm") -> bool:
    """Networking is on iff the boot args configure it (``ip=...``); otherwise no NIC at all."""
    return any(arg.startswith("ip=") for arg in flake.firecracker.boot_args)


def guest_mac(uid: int, meta: str) -> str:
    """A stable, locally administered unicast MAC, distinct per user and instance."""
    digest = zlib.crc32(f"{uid}:{meta}".encode()).to_bytes(4, "big")
    return "AA:FC:" + ":".join(f"{b:02X}" for b in digest)


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")


def quote(word: str) -> str:
    """``shlex.quote`` without importing shlex and re."""
    if not word:
        return "''"
    if set(word) <= _SAFE:
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def run_command(flake: "Vm", args: list[str]) -> str:
    """The serial-mode command for sci's ``run=``: shell words, double-quoted on the cmdline."""
    words = [flake.target_app_path, *args]
    for word in words:
        if '"' in word or any(ord(c) < 32 or ord(c) == 127 for c in word):
            from ...errors import UsageError

            raise UsageError(
                f"{flake.app}: argument {word!r} cannot travel on the serial console's kernel command line "
                "(no '\"' or control characters); use a sci session (vm.runtime.console: false)"
            )
    return " ".join(quote(w) for w in words)


def boot_args(
    flake: "Vm",
    args: list[str],
    *,
    overlay: bool,
    debug: bool = False,
    term: str | None = None,
    winsize: tuple[int, int] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """The kernel command line: registration boot args plus what sci needs for this call.

    Under QEMU (``flake.vmm == "qemu"``) sessions travel over virtio-serial ports, not vsock, and
    ``acpi=off`` is dropped (the microvm machine announces its virtio-mmio devices through ACPI).
    *extra*: arguments the engine adds (QEMU TCG's timer calibration)."""
    vsock = session_mode(flake)  # False: serial console, run= on the kernel cmdline
    qemu = flake.vmm == "qemu"
    out: list[str] = []
    if debug:
        out.append("PILOT_DEBUG=1")
    if overlay:
        out.append("overlay_root=/dev/vdb")
    if term and len(term) <= 32 and set(term) <= _TERM_OK:
        out.append(f"sci_term={term}")
    if winsize and winsize[0] > 0 and winsize[1] > 0:
        out += [f"sci_lines={winsize[0]}", f"sci_columns={winsize[1]}"]
    out += extra
    for arg in flake.firecracker.boot_args:
        if qemu and arg == "acpi=off":
            continue
        if vsock and not debug and arg.startswith("console="):
            arg = "console="  # the serial console is not the app's terminal: keep boot quiet and fast
        out.append(arg)
    # Host and guest modes must agree: the original relied on registration writing these.
    if flake.resume and "sci_resume=1" not in out:
        out.append("sci_resume=1")
    if flake.force_vsock and not flake.resume and "sci_force_vsock=1" not in out:
        out.append("sci_force_vsock=1")
    if not vsock and not debug:
        # serial mode: the console is the app's output, so kernel messages must stay off it
        if "quiet" not in out:
            out.append("quiet")
        if not any(a.startswith("loglevel=") for a in out):
            out.append("loglevel=0")
    if not vsock:
        out.append(f'run="{run_command(flake, args)}"')
    elif qemu:
        out.append("sci_transport=virtio-serial")
    else:
        out.append("run=vsock")
    cmdline = " ".join(out)
    if len(cmdline.encode()) > CMDLINE_MAX - 128:  # Firecracker appends root=/dev/vda ro virtio_mmio...
        from ...errors import UsageError

        raise UsageError(
            f"{flake.app}: kernel command line is {len(cmdline)} bytes, more than the "
            f"{CMDLINE_MAX - 128} that fit; pass long arguments in a sci session (vm.runtime.console: false)"
        )
    return cmdline


def config(flake: "Vm", inst: Instance, cmdline: str) -> "dict[str, Any]":
    """Firecracker's config-file document (``--no-api --config-file``)."""
    fc = flake.firecracker
    for key, value in (("kernel_image_path", fc.kernel_image_path), ("rootfs_image_path", fc.rootfs_image_path)):
        if not value:
            from ...errors import ConfigError

            raise ConfigError(f"{flake.config_file}: key 'vm.runtime.firecracker.{key}' is missing")
    boot: dict[str, Any] = {"kernel_image_path": fc.kernel_image_path, "boot_args": cmdline}
    if fc.initrd_path:
        boot["initrd_path"] = fc.initrd_path
    drives: list[dict[str, Any]] = [
        {
            "drive_id": "rootfs",
            "path_on_host": fc.rootfs_image_path,
            "is_root_device": True,
            "is_read_only": True,
            "cache_type": "Writeback",
        },
    ]
    if inst.overlay:
        drives.append(
            {
                "drive_id": "overlay",
                "path_on_host": inst.overlay,
                "is_root_device": False,
                "is_read_only": False,
                "cache_type": fc.cache_type,
            }
        )
    doc: dict[str, Any] = {
        "boot-source": boot,
        "drives": drives,
        "machine-config": {"vcpu_count": fc.vcpu_count, "mem_size_mib": fc.mem_size_mib},
    }
    if inst.tap:
        doc["network-interfaces"] = [{"iface_id": "eth0", "guest_mac": inst.mac, "host_dev_name": inst.tap}]
    doc["vsock"] = {"guest_cid": GUEST_CID, "uds_path": inst.vsock_uds}
    return doc


def dumps(value: object) -> str:
    """``json.dumps(value)`` (same text) for str, int, bool, None, dict and list/tuple values."""
    if isinstance(value, str):
        return _quote_json(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote_json(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"not part of a VM definition: {type(value).__name__}")


def _quote_json(text: str) -> str:
    if text.isascii() and text.isprintable():  # paths and boot args: only '"' and '\\' to escape
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    from _json import encode_basestring_ascii  # json.dumps's own C escaper, without json's re import

    result: str = encode_basestring_ascii(text)
    return result
