"""What firecracker-pilot needs from a VM registration, cached so a warm launch imports no YAML.

Same job as ``podman/plan.py``: ``load`` takes the plan from the launchers' shared registration
cache (``flake_pilot.launch.launchcache``) or parses the registration (flakeconf, settings: PyYAML and
dataclasses, ~40 ms of imports) and stores it there. The plan has the attribute shape of a
``flakeconf.VmFlake`` (``plan.firecracker.boot_args``, ``plan.include.tar``) plus the two settings
the launch needs, built from plain classes: no dataclasses at launch.
"""

from .. import launchcache

# importing typing costs ~13 ms of launcher start, __future__ ~0.5 ms: these names are only
# annotations, quoted
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...flakeconf import VmFlake
    from ...settings import Settings

KIND = "firecracker"
SHAPE = 2  # bump when the fields below change


class _Record:
    """Read-only record built from a dict (the cache's marshal form)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, d: dict[str, object]) -> None:
        for key in self.__slots__:
            object.__setattr__(self, key, d[key])

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def as_dict(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.__slots__}


class Include(_Record):
    __slots__ = ("tar", "path")
    tar: tuple[str, ...]
    path: tuple[str, ...]


class Runtime(_Record):
    __slots__ = (
        "boot_args",
        "overlay_size",
        "rootfs_image_path",
        "kernel_image_path",
        "initrd_path",
        "mem_size_mib",
        "vcpu_count",
        "cache_type",
    )
    boot_args: tuple[str, ...]
    overlay_size: str | None
    rootfs_image_path: str | None
    kernel_image_path: str | None
    initrd_path: str | None
    mem_size_mib: int
    vcpu_count: int
    cache_type: str


class Plan:
    """The launch-relevant part of a VM registration and its settings."""

    __slots__ = (
        "app",
        "config_file",
        "target_app_path",
        "resume",
        "force_vsock",
        "include",
        "firecracker",
        "ids_dir",
        "binary",
        "vmm",
        "console",
        "network",
        "qemu_binary",
    )
    _PLAIN = (
        "app",
        "config_file",
        "target_app_path",
        "resume",
        "force_vsock",
        "ids_dir",
        "binary",
        "vmm",
        "console",
        "network",
        "qemu_binary",
    )

    app: str
    config_file: str
    target_app_path: str
    resume: bool
    force_vsock: bool
    include: Include
    firecracker: Runtime
    ids_dir: str  # generic.firecracker_ids_dir of the scope in use
    binary: str  # generic.firecracker_binary
    vmm: str  # vm.runtime.vmm: firecracker or qemu
    console: bool | None  # vm.runtime.console (None: unset)
    network: str  # vm.runtime.network (QEMU): user or tap
    qemu_binary: str  # generic.qemu_binary

    def __init__(self, d: dict[str, object]) -> None:
        for key in self._PLAIN:
            object.__setattr__(self, key, d[key])
        inc = d["include"]
        fc = d["firecracker"]
        if not isinstance(inc, dict) or not isinstance(fc, dict):
            raise TypeError("plan: include and firecracker must be mappings")
        object.__setattr__(self, "include", Include(inc))
        object.__setattr__(self, "firecracker", Runtime(fc))

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Plan is read-only")

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {key: getattr(self, key) for key in self._PLAIN}
        d["include"] = self.include.as_dict()
        d["firecracker"] = self.firecracker.as_dict()
        return d


def from_flake(flake: "VmFlake", cfg: "Settings") -> Plan:
    fc = flake.firecracker
    return Plan(
        {
            "app": flake.app,
            "config_file": flake.config_file,
            "target_app_path": flake.target_app_path,
            "resume": flake.resume,
            "force_vsock": flake.force_vsock,
            "include": {"tar": tuple(flake.include.tar), "path": tuple(flake.include.path)},
            "firecracker": {
                "boot_args": tuple(fc.boot_args),
                "overlay_size": fc.overlay_size,
                "rootfs_image_path": fc.rootfs_image_path,
                "kernel_image_path": fc.kernel_image_path,
                "initrd_path": fc.initrd_path,
                "mem_size_mib": fc.mem_size_mib,
                "vcpu_count": fc.vcpu_count,
                "cache_type": fc.cache_type,
            },
            "ids_dir": cfg.firecracker_ids_dir,
            "binary": cfg.firecracker_binary,
            "vmm": flake.vmm,
            "console": flake.console,
            "network": flake.network,
            "qemu_binary": cfg.qemu_binary,
        }
    )


def cached(app: str) -> Plan | None:
    data = launchcache.load(KIND, SHAPE, app)
    if data is None:
        return None
    try:
        return Plan(data)
    except (KeyError, TypeError):
        return None


def build(app: str) -> Plan:
    """Parse the registration (the slow path)."""
    from ... import flakeconf, settings
    from ...errors import UsageError

    found, user_mode = flakeconf.find(app)
    if not isinstance(found, flakeconf.VmFlake):
        raise UsageError(f"{found.config_file}: {app} is a {found.engine} flake, not a Firecracker VM")
    return from_flake(found, settings.load(user_mode))


def load(app: str) -> Plan:
    """*app* must be a valid app name (``names.app_name``)."""
    plan = cached(app)
    if plan is not None:
        return plan
    before = launchcache.stamps(launchcache.inputs(app))
    plan = build(app)
    launchcache.store(KIND, SHAPE, app, plan.as_dict(), before)
    return plan
