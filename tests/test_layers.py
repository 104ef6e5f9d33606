"""The package's layers: stages import only the library, the library imports no stage, no cycles.

Read from the source (every import, at module level or inside a function), so an import hidden in
a function body counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# One module per stage of the chain; each reads top to bottom over the library layer.
STAGES = {
    "alignment.sft",
    "alignment.sample",
    "alignment.rm",
    "alignment.ppo",
    "alignment.dpo",
    "alignment.evaluate",
}
# The commands that run stages: the only modules allowed to import them.
ORCHESTRATION = {"alignment.chain", "alignment.cli"}
PACKAGE_DIRS = {"alignment": ROOT / "alignment", "alignment.ui": ROOT / "ui"}


def module_files() -> dict[str, Path]:
    modules = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in directory.rglob("*.py"):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that `name` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import module` needs the module; a name defined in `base` needs base.
            for alias in node.names:
                module = f"{base}.{alias.name}"
                found.add(module if module in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def test_the_graph_sees_every_stage_and_its_imports():
    graph = import_graph()
    assert set(graph) >= STAGES | ORCHESTRATION
    assert "alignment.trainers" in graph["alignment.sft"]  # a top-level import is seen
    assert "alignment.sft" in graph["alignment.chain"]  # and one inside a function


def test_no_stage_imports_another_stage():
    graph = import_graph()
    crossings = {stage: sorted(graph[stage] & (STAGES - {stage})) for stage in STAGES}
    assert {stage: found for stage, found in crossings.items() if found} == {}


def test_the_library_imports_no_stage_and_no_command():
    graph = import_graph()
    library = set(graph) - STAGES - ORCHESTRATION
    upward = {name: sorted(graph[name] & (STAGES | ORCHESTRATION)) for name in library}
    assert {name: found for name, found in upward.items() if found} == {}


def test_no_import_cycles():
    graph = import_graph()
    cycles = []

    def visit(node: str, path: list[str], state: dict[str, str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target], state)
        state[node] = "done"

    state: dict[str, str] = {}
    for name in sorted(graph):
        if name not in state:
            visit(name, [name], state)
    assert cycles == []


def test_every_subpackage_is_installed():
    """pyproject lists packages by hand (ui/ installs as alignment.ui); none may be forgotten."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert sorted(listed) == sorted(packages)
