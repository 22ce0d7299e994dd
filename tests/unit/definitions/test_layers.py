"""Imports point down: the CLI -> Dagster assets -> resources -> plain modules (and their engines) -> scenario data.

Every import counts, function-level ones included: a lazy import that points up is still a cycle.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# package -> the top-level packages it may never import
FORBIDDEN = {
    "scenario_data": {"dagster", "resources", "modelsmith_assets", "modelsmith_cli"},
    "modelsmith": {"dagster", "resources", "modelsmith_assets", "modelsmith_cli"},
    "resources": {"modelsmith_assets", "modelsmith_cli"},
    "modelsmith_assets": {"modelsmith_cli"},
}
# scenario_data sits below modelsmith and may use one leaf of it: the atomic writes (stdlib only, checked below).
SCENARIO_DATA_MAY_USE = {"modelsmith.atomic"}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_floor_above_its_own(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if package == "scenario_data" and top == "modelsmith":
                if not any(name == ok or name.startswith(ok + ".") for ok in SCENARIO_DATA_MAY_USE):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
            elif top in FORBIDDEN[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_leaf_scenario_data_uses_imports_only_the_standard_library():
    import sys

    names = {name.split(".")[0] for _, name in _imports(REPO / "modelsmith" / "atomic.py")}
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
