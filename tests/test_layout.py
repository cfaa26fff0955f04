"""The file list shows the architecture: entry points on top, packages below, imports flowing one way."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

from conftest import ROOT

PACKAGE = ROOT / "birnn"
ENTRY_POINTS = {"train", "evaluate", "predict", "export", "search", "report", "bench", "pack"}
# what each package may import from birnn (besides the top-level ``birnn`` itself): the layers below it
BELOW = {
    "schema": set(),
    "system": {"schema"},
    "data": {"schema", "system"},
    "models": {"schema", "system"},
    "records": {"schema", "system", "data", "models"},
    "engine": {"schema", "system", "data", "models", "records"},
    "studies": {"schema", "system", "data", "models", "records", "engine"},
    "benchmarks": {"schema", "system", "data", "models", "records", "engine"},
}


def birnn_imports(path: Path) -> set[str]:
    """The ``birnn.*`` modules a file imports anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "birnn" else [f"birnn.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("birnn."))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("birnn."))
    return found


def test_birnn_holds_the_entry_points_and_the_packages():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules == ENTRY_POINTS
    assert packages == set(BELOW)
    for package in packages:
        assert ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())), package
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {f"birnn.{p}" for p in packages} | {"birnn", "birnn.conf"} == set(listed)


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(PACKAGE.glob("*/*.py")):
        package = path.parent.name
        for module in birnn_imports(path):
            target = module.split(".")[1]
            if target != package and target not in BELOW[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_entry_points_are_imported_by_no_package():
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(PACKAGE.glob("*/*.py"))
        for module in birnn_imports(path)
        if module.split(".")[1] in ENTRY_POINTS
    ]
    assert wrong == []
