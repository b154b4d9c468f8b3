"""The layout rules, measured from the AST of the library: a task's knowledge lives in its task
module, modules use each other through public names, and the Lightning module and the predictor
stay thin."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import tpo
from tpo.tasks import BUILTIN_TASKS

PACKAGE = Path(tpo.__file__).parent
TASK_NAMES = {*BUILTIN_TASKS, "conversation"}
MAX_CLASS_LINES = 250


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_definitions(trees: dict[Path, ast.Module]) -> dict[str, set[Path]]:
    """Private names (functions, classes, module variables, attributes) and the files defining them."""
    defined: dict[str, set[Path]] = defaultdict(set)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            targets: list[ast.AST] = []
            named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if named and _is_private(node.name):
                defined[node.name].add(path)
            elif isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if _is_private(name):
                    defined[name].add(path)
    return defined


def test_no_comparison_against_a_task_name_outside_the_task_modules():
    hits = []
    for path, tree in _trees().items():
        if path.parent.name == "tasks":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                _strings(part) & TASK_NAMES for part in (node.left, *node.comparators)
            ):
                hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert hits == []


def test_no_module_reaches_into_another_modules_private_names():
    trees = _trees()
    defined = _private_definitions(trees)
    hits = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            used = []
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                used.append(node.attr)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tpo"):
                used += [alias.name for alias in node.names if _is_private(alias.name)]
            hits += [f"{path.relative_to(PACKAGE)}:{node.lineno} {name}" for name in used
                     if defined.get(name) and path not in defined[name]]
    assert hits == []


@pytest.mark.parametrize(("module", "name"), [("module.py", "TPOModule"), ("predict.py", "Predictor")])
def test_the_lightning_module_and_the_predictor_are_thin(module, name):
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    assert cls.end_lineno - cls.lineno + 1 <= MAX_CLASS_LINES


def test_the_checks_see_what_they_look_for(tmp_path):
    """The comparison and privacy checks flag a planted case (so the tests above can fail)."""
    planted = ast.parse('if task == "track":\n    helper._secret()\n')
    compares = [n for n in ast.walk(planted) if isinstance(n, ast.Compare)]
    assert compares and _strings(compares[0].comparators[0]) & TASK_NAMES
    attributes = [n.attr for n in ast.walk(planted) if isinstance(n, ast.Attribute)]
    assert any(_is_private(a) for a in attributes)
