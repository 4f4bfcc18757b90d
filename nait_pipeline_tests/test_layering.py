"""`nait_pipeline.lib` is layered by pipeline stage; a module may import only its own stage or the
stages below it (io -> data -> models -> features -> selection -> methods -> evaluation), and none
imports Dagster."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nait_pipeline.lib as lib

LAYERS = ["io", "data", "models", "features", "execution", "selection", "methods", "evaluation"]
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
        for path in (ROOT / package).rglob("*.py"):  # a stage's sub-packages (method families) belong to it
            for name in imported_modules(path):
                if name.split(".")[0] == "dagster":
                    violations.append(f"{path.relative_to(ROOT)} imports dagster")
                parts = name.split(".")
                if parts[:2] == ["nait_pipeline", "lib"] and len(parts) > 2 and parts[2] in LAYERS:
                    if LAYERS.index(parts[2]) > layer:
                        violations.append(f"{path.relative_to(ROOT)} imports {name} (a later stage)")
    assert violations == []


# The shared stages: they run every method and must not know any (a method is its module and a registry line).
SHARED = ["lib/methods/run.py", "lib/methods/audit.py", "lib/evaluation/comparison.py", "cli.py",
          "defs/assets/methods.py"]


def registered_names() -> set[str]:
    """Every method, scorer, feature kind and feature asset name the registries hold."""
    from nait_pipeline.lib.features.registry import KINDS
    from nait_pipeline.lib.methods import METHODS, scorers

    return (set(METHODS) | set(scorers()) | set(KINDS) | {a for kind in KINDS.values() for a in kind.asset_names()}
            | {a for scorer in scorers().values() for a in scorer.target_asset_names})


def name_literals(path: Path, names: set[str]) -> list[str]:
    """String literals that are a registered name, or hold one as a token (compound names such as
    ``pool_activations`` or ``nait_c`` inside a message). Docstrings are prose; a module-level constant
    named ``*_LABEL`` is a report label (the comparison's ``random`` reference), not a method."""
    tree = ast.parse(path.read_text())
    exempt = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            exempt.add(id(body[0].value))
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.endswith("_LABEL") for t in node.targets):
            exempt.add(id(node.value))
    compound = {n for n in names if "_" in n}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exempt:
            tokens = set(re.findall(r"[A-Za-z0-9_]+", node.value))
            hits = sorted(({node.value} & names) | (tokens & compound))
            if hits:
                found.append(f"{path.name}:{node.lineno} {hits}")
    return found


def test_shared_stages_name_no_method_and_no_feature_asset():
    names = registered_names()
    assert {"nait", "random", "kcenter", "pool_activations", "pool_gradients", "selector_trajectories"} <= names
    found = [hit for module in SHARED for hit in name_literals(ROOT.parent / module, names)]
    assert found == [], "shared code must ask the registries, not name what they hold:\n" + "\n".join(found)


def test_the_name_check_catches_a_name_and_spares_prose_and_labels(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('"""Docstrings may say nait and pool_activations."""\nRANDOM_LABEL = "random"\n'
                       'if scorer.name == "less":\n    raise ValueError("materialize pool_gradients first")\n')
    assert name_literals(planted, registered_names()) == ["planted.py:3 ['less']", "planted.py:4 ['pool_gradients']"]
