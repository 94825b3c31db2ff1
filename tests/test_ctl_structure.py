"""flake-ctl's convention: each ``ctl/<command>.py`` owns its parser and handlers, ``ctl/main.py``
assembles them, and the modules of ``flake_pilot.ctl`` import each other without a cycle (also
through imports inside functions)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from flake_pilot.ctl.main import build_parser

CTL = Path(__file__).resolve().parent.parent / "src" / "flake_pilot" / "ctl"
# top-level command -> the modules that own its leaves
OWNERS = {
    "init": {"init"},
    "list": {"listing"},
    "podman": {"podman", "podman_cache", "build_deb"},
    "firecracker": {"firecracker", "build_deb"},
    "doctor": {"doctor"},
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser.get_default("func"))]
    return [leaf for a in subs for name, child in a.choices.items() for leaf in _leaves(child, (*path, name))]


def test_every_command_is_handled_by_its_own_module() -> None:
    leaves = [(path, func) for path, func in _leaves(build_parser()) if path[0] != "help"]
    assert {path[0] for path, _ in leaves} == set(OWNERS)
    for path, func in leaves:
        module = getattr(func, "__module__", "")
        assert module.rpartition(".")[2] in OWNERS[path[0]], f"{' '.join(path)}: handled by {module}"


def _ctl_imports(path: Path) -> set[str]:
    """The ctl modules *path* imports anywhere in its body (relative or absolute)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1:  # from .x import y / from . import x
                found.update([base.split(".")[0]] if base else [a.name for a in node.names])
            elif node.level == 0 and base.startswith("flake_pilot.ctl"):
                rest = base.removeprefix("flake_pilot.ctl").lstrip(".")
                found.update([rest.split(".")[0]] if rest else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flake_pilot.ctl."):
                    found.add(alias.name.split(".")[2])
    return found


def test_ctl_modules_import_without_a_cycle() -> None:
    modules = {p.stem for p in CTL.glob("*.py")} - {"__init__"}
    graph = {m: _ctl_imports(CTL / f"{m}.py") & modules for m in modules}
    assert "main" in graph["completion"] and "main" in graph["manpages"]  # the walk sees real imports
    assert not {"completion", "manpages"} & graph["main"]
    state: dict[str, str] = {}

    def visit(module: str, trail: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join((*trail, module))
        state[module] = "open"
        for dep in sorted(graph[module]):
            visit(dep, (*trail, module))
        state[module] = "done"

    for module in sorted(graph):
        visit(module, ())
