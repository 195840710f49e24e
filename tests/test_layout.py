"""The package's tree: every module imports on its own, and the modules import each other without a circle.

An import circle works only in some import orders, so a module that is fine inside the test suite can fail when
a user imports it first. Each module is therefore imported alone in a fresh interpreter, and the import graph,
read from the source, must have no cycle (imports needed for annotations only, under ``TYPE_CHECKING``, are not
edges: they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import titans_edu

PACKAGE = Path(titans_edu.__file__).resolve().parent


def module_names() -> list[str]:
    """Every module of the package, as a dotted name (a package is named by its ``__init__``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, known: set[str]) -> set[str]:
    """The package modules that ``module`` imports when it runs (at the top or inside a function)."""
    path = PACKAGE.parent / Path(*module.split("."))
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in child.names)  # `from . import checkpoint`
            visit(child)

    visit(ast.parse(source.read_text()))
    return {name for name in found if name in known and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return None


def import_graph() -> dict[str, set[str]]:
    known = set(module_names())
    return {name: imports_of(name, known) for name in known}


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_and_reads_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "titans_edu.memory.fused_chunk" in graph["titans_edu.memory.chunked"]  # `from .fused_chunk import`
    assert "titans_edu.training.checkpoint" in graph["titans_edu.training.trainer"]  # `from . import checkpoint`
    assert "titans_edu.models.lm" not in graph["titans_edu.models.generate"]  # under TYPE_CHECKING only


def test_the_layers_import_downwards_only():
    """memory <- models <- training, and course/viz on top: the core never imports the layers above it."""
    above = {"titans_edu.memory": ("models", "training", "course", "viz", "experiments"),
             "titans_edu.models": ("training", "course", "viz", "experiments"),
             "titans_edu.training": ("course", "viz", "experiments")}
    for name, imported in import_graph().items():
        for layer, forbidden in above.items():
            if name.startswith(layer + ".") or name == layer:
                bad = [m for m in imported if any(m.startswith(f"titans_edu.{f}") for f in forbidden)]
                assert not bad, f"{name} imports {bad}, a layer above it"


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    def run(name: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
        return name, done.returncode, done.stderr.strip().splitlines()[-1:] and done.stderr.strip().splitlines()[-1]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, module_names()))
    failed = [f"{name}: {err}" for name, rc, err in results if rc]
    assert not failed, "modules that fail to import on their own:\n" + "\n".join(failed)
    assert len(results) >= 30


def test_the_public_names_come_from_one_all():
    assert len(set(titans_edu.__all__)) == len(titans_edu.__all__)
    missing = [name for name in titans_edu.__all__ if not hasattr(titans_edu, name)]
    assert not missing, f"__all__ names what titans_edu does not define: {missing}"
    # `titans_edu.train` is the command-line module, so no public name may shadow it
    assert not {"train", "prepare", "demo"} & set(titans_edu.__all__)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "prepare", "demo"])
def test_the_command_line_entry_points_run(command):
    done = subprocess.run([sys.executable, "-m", f"titans_edu.{command}", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
