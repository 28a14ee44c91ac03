"""The package layout keeps its promises (ARCHITECTURE.md): no import cycle, folders in DAG order,
no import inside a function except the CLI's, and every module runs its imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
#: each folder imports only folders before it (top-level modules: params, errors first)
FOLDER_ORDER = (
    "errors",
    "params",
    "runtime",
    "data",
    "metrics",
    "models",
    "training",
    "report",
    "crf",
    "evaluation",
    "analysis",
    "experiment",
    "sweeps",
    "cli",
)
LAZY_IMPORTS_ALLOWED = {"pipeline.cli"}  # `densepipe --help` must not import torch


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported pipeline module, inside a function?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    nested = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
    }
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.append(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("pipeline")]
        found += [(n, id(node) in nested) for n in names if n in modules]
    return found


def _folder(module: str) -> str:
    return module.split(".")[1] if "." in module else module


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {d for d, _ in _imports(p, modules) if d != m} for m, p in modules.items()}


def test_no_import_cycle(graph) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_folders_import_only_earlier_folders(graph) -> None:
    rank = {f: i for i, f in enumerate(FOLDER_ORDER)}
    bad = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if _folder(m) != _folder(d) and rank[_folder(d)] > rank[_folder(m)]
    ]
    assert not bad, f"imports against the folder order {FOLDER_ORDER}: {bad}"


def test_no_import_inside_functions_outside_the_cli() -> None:
    modules = _modules()
    bad = [
        f"{m} imports {d} inside a function"
        for m, path in modules.items()
        if m not in LAZY_IMPORTS_ALLOWED
        for d, nested in _imports(path, modules)
        if nested
    ]
    assert not bad, bad


def test_the_dag_packages_import_cleanly() -> None:
    code = "import pipeline.models, pipeline.training, pipeline.evaluation, pipeline.crf"
    subprocess.run([sys.executable, "-c", code], check=True)
