"""Size strings: the original's forms (20GiB, 20GB, 512 MiB, bytes) and its man page's (20g)."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "p": 1024**5,
    "pb": 1000**5,
    "pib": 1024**5,
    "e": 1024**6,
    "eb": 1000**6,
    "eib": 1024**6,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
MIN_SIZE = 1024 * 1024  # an ext2 filesystem needs some room
MAX_SIZE = 16 * 1024**4


def parse_size(text: str) -> int:
    """Bytes for a size string; ValueError with a reason otherwise."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r}")
    value = int(float(number) * factor)
    if value < MIN_SIZE:
        raise ValueError(f"{text!r} is below the minimum of 1 MiB")
    if value > MAX_SIZE:
        raise ValueError(f"{text!r} is above the maximum of 16 TiB")
    return value
