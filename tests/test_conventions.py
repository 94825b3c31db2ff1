"""The test suite's one way of sharing: fixtures come from conftest.py and the fixture modules it
names in ``pytest_plugins``; test modules import helpers from helper modules, never a fixture
and never another test module."""

from __future__ import annotations

import ast
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def fixtures_of(module: Path) -> set[str]:
    """Names of the functions *module* decorates with ``pytest.fixture`` (called or not)."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    names.add(node.name)
    return names


def imports_of(module: Path) -> list[tuple[str, list[str]]]:
    return [
        (node.module or "", [alias.name for alias in node.names])
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.ImportFrom)
    ]


def declares_plugins(module: Path) -> bool:
    return any(
        isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets)
        for node in ast.parse(module.read_text()).body
    )


def test_fixtures_are_shared_one_way() -> None:
    shared = {name: fixtures_of(TESTS / f"{name}.py") for name in conftest.pytest_plugins}
    assert all(shared.values()), shared  # each plugin module holds fixtures
    shared["conftest"] = fixtures_of(TESTS / "conftest.py")
    wrong = []
    for module in sorted(TESTS.glob("*.py")):
        if module.name != "conftest.py" and declares_plugins(module):
            wrong.append(f"{module.name}: pytest_plugins outside conftest.py")
        for source, names in imports_of(module):
            if source.startswith("test_"):
                wrong.append(f"{module.name}: imports from the test module {source}")
            wrong += [f"{module.name}: imports the fixture {source}.{n}" for n in names if n in shared.get(source, ())]
    assert wrong == []
