"""Shared fixtures. The real datasets live beside the checkout in ../shared/data."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# PyTorch's OpenMP threads busy-wait by default; on a shared 2-core CI machine that makes small steps
# up to 30x slower whenever another process runs. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Qt must never combine the offscreen platform with a live X display (platform notes §2).
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def settings(tmp_path):
    """The window's settings in a file of this test's own (nothing remembered from other tests or the user)."""
    from PySide6 import QtCore

    QtCore.QStandardPaths.setTestModeEnabled(True)
    return QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings):
    """The main window without its 3D view, shown, dialogs answered without asking (test_ui_annotation.make_window)."""
    from test_ui_annotation import make_window

    window = make_window(qtbot, settings)
    yield window
    window.release()


@pytest.fixture
def image_path(tmp_path):
    """A two-cell ImageJ TIFF (test_ui_annotation.cell_volume) with its voxel size."""
    from app.core.imageio import write_imagej_tiff
    from test_ui_annotation import cell_volume

    return write_imagej_tiff(tmp_path / "cells.tif", cell_volume())


@pytest.fixture(autouse=True)
def _collect_qt_garbage_on_the_main_thread(request):
    """In a test with widgets, garbage is collected on the main thread only, as in the app
    (app.ui.workers.MainThreadCollector): a collection that a job's worker thread happens to start can reach dead
    Qt objects and deadlock with the GUI thread. After the test, Python collects as usual again."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    from app.ui.workers import install_main_thread_collector

    collector = install_main_thread_collector(request.getfixturevalue("qapp"))
    yield
    collector.stop()
    gc.collect()
