"""The layers of docs/DEVELOPING.md, checked on the import statements of every module (also
imports inside functions): nothing below ``posttrain/recipes/`` (and ``cli.py``) imports a recipe;
``rollout/`` imports neither judges nor config; ``losses/`` is pure math (torch and itself)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "posttrain"


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path`` (``from a import b`` gives a.b and a)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def modules(under: str = "") -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py"))


def offenders(paths, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(PACKAGE.parent)}:{line}: imports {name}"
        for p in paths
        for line, name in imports(p)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


COMMANDS = ("recipes", "plan")  # the command layer, with cli.py: may import recipes


def test_nothing_below_the_recipes_imports_a_recipe():
    tops = [PACKAGE / name for name in COMMANDS]
    below = [
        p
        for p in modules()
        if not any(top in p.parents for top in tops) and p != PACKAGE / "cli.py"
    ]
    assert len(below) > 50
    assert offenders(below, ("posttrain.recipes",)) == []


def test_rollout_imports_neither_judges_nor_config():
    assert offenders(modules("rollout"), ("posttrain.judges", "posttrain.config")) == []


@pytest.mark.parametrize("package", ["losses"])
def test_losses_are_pure_math(package):
    allowed = ("posttrain.losses", "torch", "math", "__future__", "typing", "dataclasses")
    bad = [
        f"{p.name}:{line}: {name}"
        for p in modules(package)
        for line, name in imports(p)
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    ]
    assert bad == []


def test_the_checker_sees_a_recipe_import(tmp_path):
    """The check itself: a module importing a recipe (even inside a function) is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from posttrain.recipes.dpo import Config\n")
    assert imports(bad) == [(2, "posttrain.recipes.dpo"), (2, "posttrain.recipes.dpo.Config")]
