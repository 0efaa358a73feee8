"""What the PyInstaller bundle carries besides the code, and what it leaves out: read by ``cellpol.spec`` and
by ``tests/test_packaging.py`` (which checks these files exist and are where the app looks for them when frozen).

Layout inside the bundle (``sys._MEIPASS``, i.e. ``dist/cellpol/_internal`` on Linux/Windows,
``CellPol Studio.app/Contents/Frameworks`` on macOS): the modules sit at ``app/...`` as in the source tree, so
``app.core.inference.models_dir()`` (``Path(__file__).parents[3] / "resources" / "models"``) and
``app.ui.demo`` find ``resources/models`` there, exactly as they find ``<repo>/resources/models`` from source.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "cellpol"                      # the executable, the bundle folder, the command
DISPLAY_NAME = "CellPol Studio"           # menus, the macOS .app, the Windows Start menu
MIME_TYPE = "application/x-cellpol-project"
PROJECT_FILE = "cellpol-project.json"     # app.core.project.PROJECT_FILE
ICON_DIR = ROOT / "packaging" / "icons"
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "app" / "__init__.py").read_text()).group(1)


def datas() -> list[tuple[str, str]]:
    """``(source file, folder in the bundle)`` pairs: the starter models (each ``.json`` with its weights)
    and the icon (the Linux installers copy it from the bundle into the icon theme)."""
    out = []
    for spec in sorted((ROOT / "resources" / "models").glob("*.json")):
        out.append((str(spec), "resources/models"))
        weights = spec.with_suffix(".safetensors")
        if weights.exists():
            out.append((str(weights), "resources/models"))
    out.append((str(ICON_DIR / "cellpol.png"), "resources/icons"))
    return out


#: Modules never imported by the app (tools, tests, optional backends the stock hooks would pull in).
EXCLUDES = [
    "tkinter", "_tkinter", "IPython", "jupyter_client", "ipykernel", "notebook", "pytest", "_pytest", "hypothesis",
    "pytestqt", "torch.utils.tensorboard", "tensorboard", "pyqtgraph.opengl",
    "pyqtgraph.examples", "matplotlib.backends.backend_tkagg", "matplotlib.backends._backend_tk",
    "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtQuickWidgets", "PySide6.QtWebEngineCore",
    "PySide6.Qt3DCore", "PySide6.QtMultimedia", "PySide6.QtDesigner", "PySide6.QtHelp",
    "PyQt5", "PyQt6", "PySide2", "sphinx", "docutils",
]

#: Bundle paths (as placed under ``_internal``, forward slashes) dropped after analysis: headers, build files,
#: sample data and translations nothing loads. Patterns are fnmatch-style over the whole destination path.
DROP = [
    # torch's C++ headers and build files, its C++ test programs and protoc (83 + 50 MB); not torch.testing,
    # which `import torch` needs.
    "torch/include/*", "torch/share/*", "torch/lib/*.a", "torch/test/*", "torch/bin/*Test", "torch/bin/test_*",
    "torch/bin/protoc*",
    "matplotlib/mpl-data/sample_data/*",
    "skimage/data/*",
    "PySide6/Qt/translations/*",
    "PySide6/Qt/plugins/platforms/libqvnc.so", "PySide6/Qt/plugins/platforms/libqminimalegl.so",
    "PySide6/Qt/plugins/platforms/libqlinuxfb.so", "PySide6/Qt/plugins/platforms/libqvkkhrdisplay.so",
    "PySide6/Qt/plugins/platformthemes/libqgtk3.so",   # needs GTK 3, which the bundle does not carry
    "*/__pycache__/*",
]

#: Must survive DROP (the test checks it): Qt's X11 and off-screen platforms and the models.
KEEP = ["PySide6/Qt/plugins/platforms/libqxcb.so", "PySide6/Qt/plugins/platforms/libqoffscreen.so",
        "resources/models/*"]


#: Linux libraries stripped of their symbol tables one by one (``strip --strip-unneeded`` on a copy in
#: build/): 750 -> 575 MB, checked by --selftest. Never all binaries: strip corrupts numpy's OpenBLAS.
STRIP = ["torch/lib/libtorch_cpu.so", "torch/lib/libtorch_python.so", "vtkmodules/libvtk*.so"]


def dropped(dest: str) -> bool:
    """Whether the bundle path ``dest`` is left out (see :data:`DROP`)."""
    dest = dest.replace("\\", "/")
    return any(fnmatch.fnmatchcase(dest, pattern) for pattern in DROP)


def prune(toc):
    """``toc`` (PyInstaller's list of ``(dest, source, kind)``) less the entries :func:`dropped` names."""
    return [entry for entry in toc if not dropped(entry[0])]


def strip_selected(toc, workdir):
    """``toc`` with the :data:`STRIP` libraries replaced by stripped copies under ``workdir`` (Linux only,
    where ``strip`` exists; reused while newer than their source)."""
    import shutil
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or shutil.which("strip") is None:
        return toc
    out = []
    for dest, source, kind in toc:
        if any(fnmatch.fnmatchcase(dest.replace("\\", "/"), pattern) for pattern in STRIP):
            copy = Path(workdir) / "stripped" / dest
            if not copy.exists() or copy.stat().st_mtime < Path(source).stat().st_mtime:
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy)
                subprocess.run(["strip", "--strip-unneeded", str(copy)], check=True)
            source = str(copy)
        out.append((dest, source, kind))
    return out
