"""Caller arguments of an app call, one parser for both launchers (on their warm path: no imports).

``@NAME`` names an instance, ``%option`` or ``%option:value`` (split at the last ``:``) sets a
launcher option, ``@@x`` and ``%%x`` pass a literal ``@x`` / ``%x`` to the app; everything else
goes to the app in order. Each launcher gives its option set: podman-pilot refuses an unknown
``%x``, firecracker-pilot ignores it (as the original did).
"""

TYPE_CHECKING = False  # typing is not imported at launch; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

PODMAN_OPTIONS = ("interactive", "remove", "progress", "ignore_missing_volume_path", "ignore_sync_error")
FIRECRACKER_OPTIONS = ("port", "progress")


class CallerArgs:
    """``instances``: every ``@NAME`` in order; ``options``: launcher option -> value ('' if none)."""

    __slots__ = ("instances", "options", "app_args")

    def __init__(self, instances: list[str], options: dict[str, str], app_args: list[str]) -> None:
        self.instances, self.options, self.app_args = instances, options, app_args

    @property
    def instance(self) -> "str | None":
        """The first ``@NAME`` (podman-pilot's instance, as in the original), or None."""
        return self.instances[0] if self.instances else None


def split(
    args: "Sequence[str]",
    known: "tuple[str, ...]",
    validate: "Callable[[str], str] | None" = None,
    strict: bool = True,
) -> CallerArgs:
    """Sort *args* into instance names, launcher options of *known* and app args.

    Every ``@NAME`` goes through *validate*. An option not in *known* raises ValueError (with the
    message for the user) when *strict*, else it is dropped.
    """
    instances: list[str] = []
    options: dict[str, str] = {}
    app_args: list[str] = []
    for arg in args:
        if arg.startswith(("@@", "%%")):
            app_args.append(arg[1:])
        elif arg.startswith("@"):
            instances.append(validate(arg[1:]) if validate else arg[1:])
        elif arg.startswith("%"):
            key, sep, value = arg[1:].rpartition(":")
            if not sep:
                key, value = arg[1:], ""
            if key in known:
                options[key] = value
            elif strict:
                names = " ".join("%" + o for o in known)
                raise ValueError(f"unknown launcher option {arg!r} (known: {names}; %%x passes a literal %x)")
        else:
            app_args.append(arg)
    return CallerArgs(instances, options, app_args)
