"""Host TAP devices for VM networking: ``tap-<app>`` / ``tap-<app>@<id>``.

Linux interface names have at most 15 characters; longer names are shortened to a prefix
plus a hash of the full instance name, so two instances never share (or steal) a device.
Existence is an exact lookup in /sys/class/net (the original matched prefixes).
"""

from __future__ import annotations

import os
import zlib

from ..errors import EngineError

IFNAMSIZ = 15
PREFIX = "tap-"


def name(meta: str) -> str:
    """The TAP device name for instance *meta* (``app`` or ``app@id``), at most 15 characters."""
    full = PREFIX + meta
    if len(full) <= IFNAMSIZ:
        return full
    digest = f"{zlib.crc32(meta.encode()) & 0xFFFFFF:06x}"
    return f"{PREFIX}{meta[: IFNAMSIZ - len(PREFIX) - 7]}-{digest}"


def exists(dev: str) -> bool:
    return os.path.exists(os.path.join("/sys/class/net", dev))


def _ip() -> str:
    for path in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(path, os.X_OK):
            return path
    from ..launch.runner import which

    return which("ip")


def ensure(dev: str, uid: int) -> bool:
    """Create *dev* owned by *uid* when missing; True when this call created it."""
    if exists(dev):
        return False
    from ..launch.runner import run

    ip = _ip()
    proc = run([ip, "tuntap", "add", "dev", dev, "mode", "tap", "user", str(uid)], check=False)
    if proc.returncode != 0:
        if exists(dev):  # a concurrent launcher created it first
            return False
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        reason = err[-1] if err else f"exit {proc.returncode}"
        hint = ""
        if "not permitted" in reason.lower():
            hint = (
                f"; creating TAP devices needs CAP_NET_ADMIN: as root run `ip tuntap add dev {dev} mode tap user {uid}`"
            )
        raise EngineError(f"cannot create TAP device {dev}: {reason}{hint}")
    run([ip, "link", "set", "dev", dev, "up"], check=False)
    return True


def remove(dev: str) -> None:
    """Delete a TAP device this launcher created (quietly: it may be gone already)."""
    if not exists(dev):
        return
    from ..launch.runner import run

    run([_ip(), "tuntap", "del", "dev", dev, "mode", "tap"], check=False)
