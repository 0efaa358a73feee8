"""Layer contract: app.core and app.training never need Qt, VTK or pyqtgraph."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
