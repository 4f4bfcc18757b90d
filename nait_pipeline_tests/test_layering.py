"""`nait_pipeline.lib` is layered by pipeline stage; a module may import only its own stage or the
stages below it (io -> data -> models -> features -> selection -> methods -> evaluation), and none
imports Dagster."""

from __future__ import annotations

import ast
from pathlib import Path

import nait_pipeline.lib as lib

LAYERS = ["io", "data", "models", "features", "selection", "methods", "evaluation"]
ROOT = Path(lib.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_every_lib_module_sits_in_a_stage_package():
    stray = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert stray == [], f"modules outside a stage package: {stray}"
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("_")) == sorted(LAYERS)


def test_imports_only_go_down_and_never_reach_dagster():
    violations = []
    for layer, package in enumerate(LAYERS):
        for path in (ROOT / package).glob("*.py"):
            for name in imported_modules(path):
                if name.split(".")[0] == "dagster":
                    violations.append(f"{package}/{path.name} imports dagster")
                parts = name.split(".")
                if parts[:2] == ["nait_pipeline", "lib"] and len(parts) > 2 and parts[2] in LAYERS:
                    if LAYERS.index(parts[2]) > layer:
                        violations.append(f"{package}/{path.name} imports {name} (a later stage)")
    assert violations == []
