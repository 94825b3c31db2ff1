"""Per-app registrations: ``<flakes_dir>/<app>.yaml`` plus drop-ins ``<app>.d/*.yaml``.

Merge rule: drop-ins are applied in alphanumeric order of their file names; mappings merge
key by key (recursively), any other value (scalar, list, null) from a later file replaces the
earlier one. Parsed once into frozen dataclasses; every error names the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from typing import Any

Path = tuple[str, ...]


def _merge(base: dict[str, Any], upper: dict[str, Any], prov: dict[Path, str], src: str, at: Path) -> None:
    for key, value in upper.items():
        key = str(key)
        here = (*at, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, prov, src, here)
        else:
            base[key] = _copy(value)
            _mark(value, prov, src, here)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _copy(v) for k, v in value.items()}
    return value


def _mark(value: Any, prov: dict[Path, str], src: str, at: Path) -> None:
    prov[at] = src
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(sub, prov, src, (*at, str(key)))


def dropin_files(config_file: str) -> list[str]:
    directory = config_file[: -len(".yaml")] + ".d" if config_file.endswith(".yaml") else config_file + ".d"
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list drop-ins: {exc.strerror}") from exc
    files = []
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith(".yaml") and not name.startswith(".") and os.path.isfile(path):
            files.append(path)
    return files


def load_merged(config_file: str) -> tuple[dict[str, Any], dict[Path, str]]:
    from .yamlio import load_file

    merged: dict[str, Any] = {}
    prov: dict[Path, str] = {}
    for path in [config_file, *dropin_files(config_file)]:
        data = load_file(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        _merge(merged, data, prov, path, ())
    return merged, prov


class _Reader:
    """Typed access to the merged tree; errors say which file set the offending key."""

    def __init__(self, tree: dict[str, Any], prov: dict[Path, str], default_file: str) -> None:
        self.tree, self.prov, self.default_file = tree, prov, default_file

    def where(self, path: Path) -> str:
        for depth in range(len(path), 0, -1):
            if path[:depth] in self.prov:
                return self.prov[path[:depth]]
        return self.default_file

    def fail(self, path: Path, expected: str, value: Any) -> ConfigError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return ConfigError(f"{self.where(path)}: key '{'.'.join(path)}': expected {expected}, got {shown}")

    def get(self, path: Path) -> Any:
        node: Any = self.tree
        for i, key in enumerate(path):
            if node is None:
                return None
            if not isinstance(node, dict):
                raise self.fail(path[:i], "a mapping", node)
            node = node.get(key)
        return node

    def mapping(self, path: Path, required: bool = False) -> dict[str, Any]:
        value = self.get(path)
        if value is None:
            if required:
                raise ConfigError(f"{self.where(path)}: key '{'.'.join(path)}' is missing")
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "a mapping", value)
        return value

    def string(self, path: Path, required: bool = False, absolute: bool = False) -> str | None:
        value = self.get(path)
        if value is None or value == "":
            if required:
                raise ConfigError(f"{self.where(path)}: key '{'.'.join(path)}' is missing")
            return None
        if not isinstance(value, str):
            raise self.fail(path, "a string", value)
        if "\0" in value or len(value) > 4096:
            raise self.fail(path, "a string without NUL of at most 4096 characters", value)
        if absolute and not value.startswith("/"):
            raise self.fail(path, "an absolute path", value)
        return value

    def boolean(self, path: Path, default: bool = False) -> bool:
        value = self.get(path)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(path, "true or false", value)
        return value

    def integer(self, path: Path, default: int, low: int, high: int) -> int:
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(path, f"an integer from {low} to {high}", value)
        return value

    def strings(self, path: Path, absolute: bool = False) -> tuple[str, ...] | None:
        value = self.get(path)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, "a list of strings", value)
        if len(value) > 1024:
            raise self.fail(path, "at most 1024 entries", f"{len(value)} entries")
        for item in value:
            if not isinstance(item, str) or "\0" in item:
                raise self.fail(path, "a list of strings", value)
            if absolute and not item.startswith("/"):
                raise self.fail(path, "a list of absolute paths", item)
        return tuple(value)


@dataclass(frozen=True)
class Include:
    tar: tuple[str, ...] = ()
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodmanFlake:
    app: str
    config_file: str
    image: str
    target_app_path: str
    host_app_path: str | None
    base_container: str | None
    check_host_dependencies: bool
    layers: tuple[str, ...]
    include: Include
    runas: str
    resume: bool
    attach: bool
    podman_opts: tuple[str, ...] | None  # None: not configured
    tls_verify: bool = True  # False: pulls at launch may use a plain-http registry

    @property
    def engine(self) -> str:
        return "podman"

    @property
    def user_mode(self) -> bool:
        return self.runas != "root"


@dataclass(frozen=True)
class FirecrackerRuntime:
    boot_args: tuple[str, ...]
    overlay_size: str | None
    rootfs_image_path: str | None
    kernel_image_path: str | None
    initrd_path: str | None
    mem_size_mib: int
    vcpu_count: int
    cache_type: str


@dataclass(frozen=True)
class VmFlake:
    app: str
    config_file: str
    vm_name: str
    target_app_path: str
    host_app_path: str | None
    include: Include
    runas: str
    resume: bool
    force_vsock: bool
    firecracker: FirecrackerRuntime
    vmm: str = "firecracker"  # vm.runtime.vmm: the VM monitor, firecracker or qemu
    console: bool | None = None  # vm.runtime.console; None (unset): the original's rule, see vmdef.session_mode
    network: str = "user"  # vm.runtime.network under QEMU: user (user-mode networking) or tap

    @property
    def engine(self) -> str:
        return "firecracker"


Flake = PodmanFlake | VmFlake


def _include(r: _Reader) -> Include:
    r.mapping(("include",))
    return Include(
        tar=r.strings(("include", "tar")) or (),
        path=r.strings(("include", "path")) or (),
    )


def _podman(app: str, config_file: str, r: _Reader) -> PodmanFlake:
    c = ("container",)
    r.mapping((*c, "runtime"))
    runas = r.string((*c, "runtime", "runas")) or ""
    resume = r.boolean((*c, "runtime", "resume"))
    attach = r.boolean((*c, "runtime", "attach"))
    if resume and attach:
        raise ConfigError(
            f"{r.where((*c, 'runtime'))}: keys 'container.runtime.resume' and 'attach' exclude each other"
        )
    layers = r.strings((*c, "layers")) or ()
    base = r.string((*c, "base_container"))
    if layers and not base:
        raise ConfigError(f"{r.where((*c, 'layers'))}: key 'container.layers' needs 'container.base_container'")
    return PodmanFlake(
        app=app,
        config_file=config_file,
        image=r.string((*c, "name"), required=True) or "",
        target_app_path=r.string((*c, "target_app_path")) or app,
        host_app_path=r.string((*c, "host_app_path")),
        base_container=base,
        check_host_dependencies=r.boolean((*c, "check_host_dependencies")),
        layers=layers,
        include=_include(r),
        runas=runas,
        resume=resume,
        attach=attach,
        podman_opts=r.strings((*c, "runtime", "podman")),
        tls_verify=r.boolean((*c, "runtime", "tls_verify"), default=True),
    )


CACHE_TYPES = ("Writeback", "Unsafe")
VMMS = ("firecracker", "qemu")
NETWORKS = ("user", "tap")


def _vm(app: str, config_file: str, r: _Reader) -> VmFlake:
    v = ("vm",)
    fc = (*v, "runtime", "firecracker")
    r.mapping((*v, "runtime"))
    r.mapping(fc)
    cache = r.string((*fc, "cache_type")) or "Writeback"
    if cache not in CACHE_TYPES:
        raise r.fail((*fc, "cache_type"), "Writeback or Unsafe", cache)
    overlay = r.get((*fc, "overlay_size"))
    if overlay is not None and not isinstance(overlay, str | int):
        raise r.fail((*fc, "overlay_size"), "a size such as 20GiB", overlay)
    if overlay is not None:
        from .sizes import parse_size

        try:
            parse_size(str(overlay))
        except ValueError as exc:
            raise r.fail((*fc, "overlay_size"), f"a size such as 20GiB ({exc})", overlay) from None
    vmm = r.string((*v, "runtime", "vmm")) or "firecracker"
    if vmm not in VMMS:
        raise r.fail((*v, "runtime", "vmm"), " or ".join(VMMS), vmm)
    network = r.string((*v, "runtime", "network")) or "user"
    if network not in NETWORKS:
        raise r.fail((*v, "runtime", "network"), " or ".join(NETWORKS), network)
    console = r.get((*v, "runtime", "console"))
    if console is not None and not isinstance(console, bool):
        raise r.fail((*v, "runtime", "console"), "true or false", console)
    return VmFlake(
        app=app,
        config_file=config_file,
        vm_name=r.string((*v, "name"), required=True) or "",
        target_app_path=r.string((*v, "target_app_path")) or app,
        host_app_path=r.string((*v, "host_app_path")),
        include=_include(r),
        runas=r.string((*v, "runtime", "runas")) or "",
        resume=r.boolean((*v, "runtime", "resume")),
        force_vsock=r.boolean((*v, "runtime", "force_vsock")),
        firecracker=FirecrackerRuntime(
            boot_args=r.strings((*fc, "boot_args")) or (),
            overlay_size=None if overlay is None else str(overlay),
            rootfs_image_path=r.string((*fc, "rootfs_image_path"), absolute=True),
            kernel_image_path=r.string((*fc, "kernel_image_path"), absolute=True),
            initrd_path=r.string((*fc, "initrd_path"), absolute=True),
            mem_size_mib=r.integer((*fc, "mem_size_mib"), 4096, 16, 1024 * 1024),
            vcpu_count=r.integer((*fc, "vcpu_count"), 2, 1, 32),
            cache_type=cache,
        ),
        vmm=vmm,
        console=console,
        network=network,
    )


def parse(app: str, config_file: str) -> Flake:
    """Load and validate a registration (with drop-ins)."""
    tree, prov = load_merged(config_file)
    r = _Reader(tree, prov, config_file)
    has_container = r.get(("container",)) is not None
    has_vm = r.get(("vm",)) is not None
    if has_container and has_vm:
        raise ConfigError(f"{config_file}: both 'container' and 'vm' sections are set; a flake has one engine")
    if has_container:
        r.mapping(("container",))
        return _podman(app, config_file, r)
    if has_vm:
        r.mapping(("vm",))
        return _vm(app, config_file, r)
    raise ConfigError(f"{config_file}: neither a 'container' nor a 'vm' section")


def config_path(flakes_dir: str, app: str) -> str:
    return os.path.join(flakes_dir, app + ".yaml")


def find(app: str) -> tuple[Flake, bool]:
    """Find the registration for *app*: system scope first, then the caller's user scope (not
    for root, which never reads user-scope files).

    Returns the flake and whether it came from the user scope.
    """
    from . import settings

    searched = []
    for user_mode in (False, True) if settings.user_scope_allowed() else (False,):
        cfg = settings.load(user_mode)
        path = config_path(cfg.flakes_dir, app)
        searched.append(path)
        if os.path.isfile(path):
            return parse(app, path), user_mode
    raise NotFoundError(f"no flake registration for {app!r} (looked in {' and '.join(searched)})")
