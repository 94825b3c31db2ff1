"""flake-pilot: run applications from containers and microVMs as native commands.

The app launchers' entry points live here (``podman_pilot``, ``firecracker_pilot``): before the
launcher runs, ``_preload`` executes the byte-code of the modules a warm launch needs straight
from their ``__pycache__`` files, in dependency order, instead of going through the import
system (finders, specs, buffered file objects: about 0.1 ms per module, ~1.3 ms of a launch).
A module is preloaded only when its ``.pyc`` is exactly what the import system would use (same
magic number, timestamp-based, source mtime and size recorded in it); at the first one that is
missing, stale, hash-based or damaged, preloading stops and the import system loads the rest as
usual. Preloaded modules have ``__file__``, ``__cached__``, ``__package__`` (and ``__path__``)
but no ``__spec__``/``__loader__``. tests/test_preload.py checks the hand-over;
tests/test_ctl_install.py and tests/test_fc_warm_imports.py check that an installed warm launch
imports none of these modules through the import system.
"""

__version__ = "0.1.0"

import sys as _sys

# package-relative paths in dependency order: a module's top-level imports come before it
_WARM_PODMAN = (
    "launch/__init__",
    "launch/fastos",
    "launch/debug",
    "launch/main",
    "launch/callargs",
    "launch/runner",
    "launch/statedir",
    "launch/launchcache",
    "launch/podman/__init__",
    "launch/podman/argv",
    "launch/podman/plan",
    "launch/podman/instance",
    "launch/podman/oci",
    "launch/podman/proc",
    "launch/podman/pilot",
)
_WARM_FIRECRACKER = (
    "launch/__init__",
    "launch/fastos",
    "launch/debug",
    "launch/main",
    "launch/callargs",
    "launch/names",
    "launch/statedir",
    "launch/launchcache",
    "launch/firecracker/__init__",
    "launch/firecracker/instances",
    "launch/firecracker/plan",
    "launch/firecracker/vmdef",
    "launch/firecracker/pilot",
)


def _preload(paths: tuple[str, ...]) -> list[str]:
    """Execute the warm modules' byte-code (see the module docstring); returns the names loaded."""
    import posix
    from marshal import loads

    tag = _sys.implementation.cache_tag
    magic = getattr(_sys.modules.get("_frozen_importlib_external"), "MAGIC_NUMBER", None)
    if tag is None or magic is None:
        return []
    root = __path__[0]
    modules = _sys.modules
    loaded = []
    for rel in paths:
        directory, _, base = (root + "/" + rel).rpartition("/")
        package = base == "__init__"
        name = "flake_pilot." + (rel[: -len("/__init__")] if package else rel).replace("/", ".")
        if name in modules:
            continue
        source = f"{directory}/{base}.py"
        cached = f"{directory}/__pycache__/{base}.{tag}.pyc"
        try:
            st = posix.stat(source)
            fd = posix.open(cached, posix.O_RDONLY | posix.O_CLOEXEC)
            try:
                data = posix.read(fd, posix.fstat(fd).st_size)
            finally:
                posix.close(fd)
        except OSError:
            break
        if (
            data[:4] != magic
            or data[4:8] != b"\0\0\0\0"  # flags 0: timestamp-based
            or int.from_bytes(data[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
            or int.from_bytes(data[12:16], "little") != st.st_size & 0xFFFFFFFF
        ):
            break
        try:
            code = loads(memoryview(data)[16:])
        except (EOFError, ValueError, TypeError):  # a damaged .pyc: the import system reports it
            break
        module = type(_sys)(name)
        module.__file__ = source
        module.__dict__["__cached__"] = cached
        module.__package__ = name if package else name.rpartition(".")[0]
        if package:
            module.__path__ = [directory]
        modules[name] = module
        try:
            exec(code, module.__dict__)
        except BaseException:
            del modules[name]
            raise
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent], attr, module)
        loaded.append(name)
    return loaded


def podman_pilot() -> None:
    """Console script ``podman-pilot`` (the app symlinks point to it); exits the process."""
    _preload(_WARM_PODMAN)
    from .launch.podman.pilot import main

    main()


def firecracker_pilot() -> None:
    """Console script ``firecracker-pilot`` (the app symlinks point to it); exits the process."""
    _preload(_WARM_FIRECRACKER)
    from .launch.firecracker.pilot import main

    main()
