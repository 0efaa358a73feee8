"""``cellpol --selftest``: does this installation work? Open the window, the demo, predict it with the starter model,
check the vectors, exit 0 (or 1 with the reason).

It is what an installer's test runs on a machine that never saw the project (packaging/), and what a user or a
support request can run: every check prints one line, and a failure says what failed. Without a display it runs
on Qt's off-screen platform.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

#: The least the starter must find on the demo volume against its simulated truth (τL = 0). The demo has about
#: 40 cells; the starter finds ~0.9 of them (docs/models/cellpol_starter.md), so this fails only when it is broken.
MIN_TPR = 0.5


def run_selftest(say: Callable[[str], None] = print, timeout: float = 300.0) -> int:
    """Run the checks; 0 when every one passed, 1 otherwise (the failing check is the last line said)."""
    started = time.perf_counter()
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6 import QtCore, QtWidgets

        from app import __version__
        from app.ui.main_window import MainWindow
    except Exception as exc:  # noqa: BLE001 - the point is to report any failure
        say(f"FAIL: the app cannot load its libraries: {type(exc).__name__}: {exc}")
        return 1
    say(f"CellPol Studio {__version__}, Python {sys.version.split()[0]}, Qt {QtCore.qVersion()}, "
        f"platform {os.environ.get('QT_QPA_PLATFORM') or 'default'}")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    from app.ui.workers import install_main_thread_collector

    install_main_thread_collector(app)  # as the app does: garbage collected on the GUI thread only
    scratch = tempfile.TemporaryDirectory(prefix="cellpol-selftest-")
    settings = QtCore.QSettings(str(Path(scratch.name) / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    QtCore.QStandardPaths.setTestModeEnabled(True)  # the demo's autosave goes to a test folder, not the user's
    window: Optional[MainWindow] = None
    try:
        window = MainWindow(settings=settings)
        window.document.interactive = False
        window.jobs_dock.interactive = False
        window.ask_on_close = False
        window.show()
        app.processEvents()
        say(f"ok: window open in {time.perf_counter() - started:.1f} s (3D view: "
            f"{'yes' if window.viewer3d is not None else 'no'})")
        from app.core.inference import find_starter_model

        starter = find_starter_model()
        if starter is None:
            say("FAIL: no starter model is installed (resources/models)")
            return 1
        say(f"ok: starter model found: {starter}")
        window.open_demo()
        if not window.wait_for_jobs(timeout=timeout):
            say(f"FAIL: the demo prediction did not finish within {timeout:.0f} s")
            return 1
        comparison = window.document.comparison
        n = len(window.model)
        if comparison is None or n == 0:
            say(f"FAIL: the demo prediction gave {n} vectors and no comparison (see the log: Help ▸ Show log)")
            return 1
        how = getattr(window, "demo_how", {}) or {}
        if how.get("method") != "starter model":
            say(f"FAIL: the demo was not predicted by the starter model but by {how.get('method', 'nothing')}")
            return 1
        score, level = comparison.score, 0
        tpr = float(score.tpr[level])
        if not tpr >= MIN_TPR:
            say(f"FAIL: the starter found too few demo cells: TPR {tpr:.3f} < {MIN_TPR} at τL = 0")
            return 1
        say(f"ok: demo predicted: {n} vectors, TPR {tpr:.3f} / FDR {float(score.fdr[level]):.3f} at τL = 0")
        say(f"PASS in {time.perf_counter() - started:.1f} s")
        return 0
    except Exception as exc:  # noqa: BLE001 - the point is to report any failure
        say(f"FAIL: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if window is not None:
            window.release()
        scratch.cleanup()
