"""The package's modules import downwards only: no import circle, counting imports inside functions, and the
workflow's own layers (layout -> config -> grid -> weights -> report) in that order."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "pspo").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imported(name: str) -> set[str]:
    """The pspo modules ``name`` imports anywhere in its file (top level or inside a function), each with the
    packages above it that the import runs, but not ``name``'s own packages (running already)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names)  # `from pspo import layout` imports a module
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in MODULES and prefix not in own:
                found.add(prefix)
    return found


GRAPH = {name: _imported(name) for name in MODULES}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as the list of its modules, first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_circle_finder_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_and_from_imports():
    assert "pspo.layout" in GRAPH["pspo.grid"]
    assert "pspo.weights" in GRAPH["pspo.train"]  # imported inside a function


def test_no_import_circle():
    circle = _circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle)


LAYERS = ["pspo.layout", "pspo.config", "pspo.grid", "pspo.weights", "pspo.report"]


@pytest.mark.parametrize("lower, upper", [(a, b) for i, a in enumerate(LAYERS) for b in LAYERS[i + 1:]])
def test_the_workflow_layers_import_downwards(lower, upper):
    members = [m for m in MODULES if m == lower or m.startswith(lower + ".")]
    bad = [m for m in members if any(t == upper or t.startswith(upper + ".") for t in GRAPH[m])]
    assert not bad, f"{bad} import {upper}, a layer above"


def test_layout_imports_nothing_of_the_package():
    assert GRAPH["pspo.layout"] == set()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)
