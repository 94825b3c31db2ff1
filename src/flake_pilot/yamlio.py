"""YAML reading (C loader when present) and atomic writing."""

from __future__ import annotations

import os
import sys
from typing import Any

from .errors import ConfigError

_SITE_ADDED: list[bool] = []  # site.main() ran (at most once)


def _find_yaml() -> None:
    """Make PyYAML importable in an interpreter started without ``site`` (``-S``: the installed
    launchers, whose warm launch needs the stdlib only): if ``import yaml`` fails there, add the
    site directories (dist-packages, a venv's site-packages) once, as a normal start would have."""
    if not sys.flags.no_site or _SITE_ADDED or "yaml" in sys.modules:
        return
    try:
        import yaml  # noqa: F401
    except ImportError:
        _SITE_ADDED.append(True)
        import site

        site.main()


def load_file(path: str) -> Any:
    """Parse one YAML document; errors name the file, line and column."""
    _find_yaml()
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(data) > 1024 * 1024:
        raise ConfigError(f"{path}: file too large ({len(data)} bytes, at most 1 MiB)")
    try:
        doc = yaml.load(data, Loader=loader)  # noqa: S506 - loader is CSafeLoader or SafeLoader
        if expanded_size(doc) > MAX_NODES:
            raise ConfigError(f"{path}: too many values once aliases are expanded (more than {MAX_NODES}; alias bomb?)")
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{path}: invalid YAML at {where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc  # one line
    except RecursionError as exc:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from exc


MAX_NODES = 100_000  # values of a document with every alias expanded (billion laughs)


def expanded_size(doc: Any) -> int:
    """Number of values in *doc* counting every alias expansion, in time linear in the document
    (each shared mapping/list is measured once). RecursionError when nested too deeply."""
    memo: dict[int, int] = {}

    def size(node: Any) -> int:
        if isinstance(node, dict):
            items: list[Any] = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            items = node
        else:
            return 1
        key = id(node)
        if key not in memo:
            memo[key] = 1 + sum(size(item) for item in items)
        return memo[key]

    return size(doc)


def dump(data: Any) -> str:
    _find_yaml()
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(data, Dumper=dumper, default_flow_style=False, sort_keys=False))


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write to a temp file in the same directory, fsync, rename over *path*."""
    directory = os.path.dirname(path) or "."
    import tempfile  # lazy: launchers only read YAML (tempfile + shutil cost ~8 ms at start)

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
