"""Layer contract: app.core and app.training never need Qt, VTK or pyqtgraph, and the layers import only
downwards (core ← training ← ui ← cli)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

BLOCKED = ("PySide6", "shiboken6", "vtk", "vtkmodules", "pyqtgraph", "superqt", "qtpy")

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked GUI module {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    imported = []
    for package_name in ("app.core", "app.training"):
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("\\n".join(imported))
    """
)


def test_core_and_training_import_without_gui_modules():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=BLOCKED)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    # The walk really visited the modules (a contract test that imports nothing cannot fail).
    assert "app.core.volume" in imported and "app.core.pairs" in imported


def test_blocker_catches_a_gui_import(tmp_path):
    # The same blocker must fail when a module does import Qt.
    script = SCRIPT.format(blocked=BLOCKED).replace(
        "imported = []", "imported = []\nimport PySide6.QtCore"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "blocked GUI module" in result.stderr


# ------------------------------------------------------------------------------------------
# The layers among themselves: core ← training ← ui / cli (DESIGN.md §1)
# ------------------------------------------------------------------------------------------
#: Which app packages each layer may import (besides itself). Nothing imports app.ui but the CLI, which
#: opens the window; app.cli is the top.
LAYER_RULES = {
    "app.core": set(),
    "app.training": {"app.core"},
    "app.ui": {"app.core", "app.training"},
    "app.cli": {"app.core", "app.training", "app.ui"},
}
RULE_TEXT = ("layers: app.core imports no other app package; app.training imports only app.core; app.ui imports "
             "app.core and app.training; app.cli may import them all; nothing else imports app.ui or app.cli")


def layer_of(module: str) -> str:
    for layer in LAYER_RULES:
        if module == layer or module.startswith(layer + "."):
            return layer
    return "app"


def imported_app_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``app.*`` module imported anywhere in the file (function-local imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "app"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "app":
            found.append((node.lineno, node.module))
    return found


def layer_violations(root: Path) -> list[str]:
    problems = []
    for path in sorted((root / "app").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        own = layer_of(module)
        if own == "app":  # app/__init__.py, app/__main__.py: the entry points
            continue
        for line, target in imported_app_modules(path):
            other = layer_of(target)
            if other in (own, "app") or other in LAYER_RULES[own]:
                continue
            problems.append(f"{path.relative_to(root)}:{line} imports {target} — breaks the rule: {RULE_TEXT}")
    return problems


def test_layers_import_only_downwards():
    problems = layer_violations(REPO)
    assert not problems, "\n".join(problems)


def test_the_layer_check_names_the_rule_when_broken(tmp_path):
    for name, text in (("core/bad.py", "def f():\n    from app.training import trainer\n"),
                       ("training/ok.py", "from app.core import volume\n"), ("cli.py", "import app.ui.main_window\n")):
        target = tmp_path / "app" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    problems = layer_violations(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("app/core/bad.py:2 imports app.training")
    assert "app.core imports no other app package" in problems[0]
