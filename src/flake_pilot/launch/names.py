"""Validation of every name that becomes part of a path."""

# Character sets instead of regular expressions: the launchers validate names on every call and
# ``re`` costs ~10 ms of their start-up. flake_pilot.errors is imported only to raise (a launch
# that goes well does not need it).
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# Upstream rule for @NAME (without the leading @): [A-Za-z0-9@=_-], at most 63 chars, not starting with @.
_INSTANCE_FIRST = _ALNUM | frozenset("=_-")
_INSTANCE = _INSTANCE_FIRST | frozenset("@")
# App/image names: a file name without path separators, control chars or leading dot:
# [A-Za-z0-9_+-][A-Za-z0-9._+@-]{0,127}
_NAME_FIRST = _ALNUM | frozenset("_+-")
_NAME = _NAME_FIRST | frozenset(".@")


def instance_name(value: str) -> str:
    """Validate an instance name as given after '@'."""
    if not (0 < len(value) <= 63 and value[0] in _INSTANCE_FIRST and set(value) <= _INSTANCE):
        from ..errors import UsageError

        raise UsageError(f"invalid instance name {value!r}: use 1-63 of A-Z a-z 0-9 = _ - @ (not starting with @)")
    return value


def app_name(value: str, what: str = "app name") -> str:
    if not (0 < len(value) <= 128 and value[0] in _NAME_FIRST and set(value) <= _NAME) or ".." in value:
        from ..errors import UsageError

        raise UsageError(f"invalid {what} {value!r}: use letters, digits and . _ + - @ (no '/', no '..')")
    return value


def absolute_path(value: str, option: str) -> str:
    from ..errors import UsageError  # flake-ctl's check, not on a launcher's path

    if not value.startswith("/"):
        raise UsageError(f"{option}: {value!r} is not an absolute path")
    if "\0" in value or "\n" in value:
        raise UsageError(f"{option}: path contains a NUL or newline")
    parts = value.split("/")
    if ".." in parts:
        raise UsageError(f"{option}: {value!r} must not contain '..'")
    return value
