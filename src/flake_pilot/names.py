"""Validation of every name that becomes part of a path."""

from __future__ import annotations

import re

from .errors import UsageError

# Upstream rule for @NAME (without the leading @): [A-Za-z0-9@=_-], at most 63 chars.
_INSTANCE = re.compile(r"[A-Za-z0-9=_-][A-Za-z0-9@=_-]{0,62}")
# App/image names: a file name without path separators, control chars or leading dot.
_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+@-]{0,127}")


def instance_name(value: str) -> str:
    """Validate an instance name as given after '@'."""
    if not _INSTANCE.fullmatch(value):
        raise UsageError(
            f"invalid instance name {value!r}: use 1-63 of A-Z a-z 0-9 = _ - @ (not starting with @)"
        )
    return value


def app_name(value: str, what: str = "app name") -> str:
    if not _NAME.fullmatch(value) or ".." in value:
        raise UsageError(f"invalid {what} {value!r}: use letters, digits and . _ + - @ (no '/', no '..')")
    return value


def absolute_path(value: str, option: str) -> str:
    if not value.startswith("/"):
        raise UsageError(f"{option}: {value!r} is not an absolute path")
    if "\0" in value or "\n" in value:
        raise UsageError(f"{option}: path contains a NUL or newline")
    parts = value.split("/")
    if ".." in parts:
        raise UsageError(f"{option}: {value!r} must not contain '..'")
    return value
