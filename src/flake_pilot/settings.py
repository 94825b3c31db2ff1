"""The generic configuration: ``/etc/flakes.yml`` and ``~/.config/flakes.yml``.

``FLAKES_CONFIG`` names a file that replaces ``/etc/flakes.yml`` (tests and the demo use it
so they never touch ``/etc``). Keys live under ``generic:`` as in the original.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from .errors import ConfigError

SYSTEM_CONFIG = "/etc/flakes.yml"
DEFAULTS = {
    "flakes_dir": "/usr/share/flakes",
    "podman_ids_dir": "",  # "": the caller's own (statedir.default_base), resolved by load()
    "firecracker_ids_dir": "",
    "podman_storage_conf": "/etc/flakes/storage.conf",
    "firecracker_registry_dir": "/var/lib/firecracker",
}
BINARY_KEYS = frozenset({"podman_binary", "firecracker_binary", "qemu_binary"})  # a name on PATH or a path
KNOWN_KEYS = frozenset(DEFAULTS) | BINARY_KEYS


@dataclass(frozen=True)
class Settings:
    user_mode: bool
    source: str | None  # the file that was read, None when none existed
    flakes_dir: str
    podman_ids_dir: str
    firecracker_ids_dir: str
    podman_storage_conf: str | None  # None: the caller's own podman storage
    firecracker_registry_dir: str  # holds images/<name>/ and storage/
    podman_binary: str = "podman"
    firecracker_binary: str = "firecracker"
    qemu_binary: str = "qemu-system-x86_64"


def home_dir() -> str:
    home = os.environ.get("HOME")
    if home and home.startswith("/"):
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def system_config_path() -> str:
    return os.environ.get("FLAKES_CONFIG") or SYSTEM_CONFIG


def user_config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home_dir(), ".config")
    return os.path.join(base, "flakes.yml")


def user_flakes_root() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home_dir(), ".config")
    return os.path.join(base, "flakes")


def _read_generic(path: str) -> dict[str, str] | None:
    if not os.path.exists(path):
        return None
    from .yamlio import load_file

    data = load_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("generic", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'generic' section")
    generic = data.get("generic") or {}
    result: dict[str, str] = {}
    for key, value in generic.items():
        if key not in KNOWN_KEYS:
            continue  # tolerate keys of newer/older versions
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: key 'generic.{key}': expected a non-empty string, got {value!r}")
        if key not in BINARY_KEYS and not value.startswith("/"):
            raise ConfigError(f"{path}: key 'generic.{key}': {value!r} is not an absolute path")
        result[key] = value
    return result


def user_scope_allowed() -> bool:
    """Root never reads user-scope configuration: with HOME or XDG_CONFIG_HOME kept (``su``
    without ``-``, ``sudo -E``) it would be another user's file naming root's engine binary."""
    return os.getuid() != 0


def load(user_mode: bool = False) -> Settings:
    """The system settings, or with *user_mode* the caller's user scope on top of them (root:
    always the system settings, see user_scope_allowed). Unset state dirs are the caller's own."""
    from .launch.statedir import default_base

    system_path = system_config_path()
    system = _read_generic(system_path)
    sys_values = {**DEFAULTS, **(system or {})}
    for key in ("podman_ids_dir", "firecracker_ids_dir"):
        sys_values[key] = sys_values[key] or default_base()
    if not user_mode or not user_scope_allowed():
        return Settings(
            user_mode=False,
            source=system_path if system is not None else None,
            flakes_dir=sys_values["flakes_dir"],
            podman_ids_dir=sys_values["podman_ids_dir"],
            firecracker_ids_dir=sys_values["firecracker_ids_dir"],
            podman_storage_conf=sys_values["podman_storage_conf"],
            firecracker_registry_dir=sys_values["firecracker_registry_dir"],
            podman_binary=sys_values.get("podman_binary", "podman"),
            firecracker_binary=sys_values.get("firecracker_binary", "firecracker"),
            qemu_binary=sys_values.get("qemu_binary", "qemu-system-x86_64"),
        )
    user_path = user_config_path()
    user = _read_generic(user_path) or {}
    flakes_dir = user.get("flakes_dir", user_flakes_root())
    return Settings(
        user_mode=True,
        source=user_path if os.path.exists(user_path) else None,
        flakes_dir=flakes_dir,
        podman_ids_dir=user.get("podman_ids_dir", sys_values["podman_ids_dir"]),
        firecracker_ids_dir=user.get("firecracker_ids_dir", sys_values["firecracker_ids_dir"]),
        podman_storage_conf=user.get("podman_storage_conf"),
        firecracker_registry_dir=user.get("firecracker_registry_dir", os.path.join(flakes_dir, "firecracker")),
        podman_binary=user.get("podman_binary", sys_values.get("podman_binary", "podman")),
        firecracker_binary=user.get("firecracker_binary", sys_values.get("firecracker_binary", "firecracker")),
        qemu_binary=user.get("qemu_binary", sys_values.get("qemu_binary", "qemu-system-x86_64")),
    )
