"""The VTK 3D view, screenshots, ``run_app`` and start-up: the volume really renders (pixels from
``vtkWindowToImageFilter``), picking selects a pair, and torch is not imported when the window opens.

Every window's VTK render window is released in teardown (platform notes §3), or Xlib aborts pytest at exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("vtkmodules")
from PySide6 import QtCore, QtGui  # noqa: E402

import app.ui.main_window as main_window  # noqa: E402
from app.core.imageio import write_imagej_tiff  # noqa: E402
from app.core.pairs import PairSet  # noqa: E402
from app.ui.demo import demo_data  # noqa: E402
from app.ui.main_window import MainWindow, save_screenshot  # noqa: E402
from app.ui.viewer3d import BACKGROUND  # noqa: E402
from conftest import REPO  # noqa: E402
from test_ui_annotation import GOLGI_A, GOLGI_B, NUCLEUS_A, NUCLEUS_B, cell_volume  # noqa: E402

Qt = QtCore.Qt


@pytest.fixture(scope="module")
def shared_window(qapp, tmp_path_factory):
    """One window with the 3D view for the tests of this module (each VTK window costs seconds on a
    software renderer). Released (render window finalized) at the end."""
    folder = tmp_path_factory.mktemp("view3d")
    QtCore.QStandardPaths.setTestModeEnabled(True)
    settings = QtCore.QSettings(str(folder / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, enable_3d=True)
    window.document.interactive = False
    window.ask_on_close = False
    window.resize(1000, 700)
    window.show()
    assert window.open_path(write_imagej_tiff(folder / "cells.tif", cell_volume()))
    qapp.processEvents()
    yield window
    window.release()
    window.close()
    window.deleteLater()
    qapp.processEvents()


@pytest.fixture
def window3d(qtbot, shared_window):
    """The shared window, back in its initial state."""
    window = shared_window
    window.document.set_reference(None)
    window.model.set_pairset(PairSet.empty(window.state.volume.voxel_size))
    for index, display in enumerate(window.state.displays):
        if not display.visible:
            window.toggle_channel(index)
    viewer = window.viewer3d
    viewer.set_blend_mode("composite")
    viewer.set_slab(False)
    viewer.set_show_planes(False)
    window.state.set_cursor((6, 45, 50))
    qtbot.wait(10)
    return window


@pytest.fixture
def image_path(tmp_path):
    return write_imagej_tiff(tmp_path / "cells.tif", cell_volume())


def foreground_fraction(rgb: np.ndarray) -> float:
    background = np.round(np.asarray(BACKGROUND) * 255)
    return float((np.abs(rgb.astype(int) - background).sum(axis=2) > 40).mean())


def green_pixels(rgb: np.ndarray) -> int:
    rgb = rgb.astype(int)
    return int(((rgb[..., 1] > rgb[..., 0] + 40) & (rgb[..., 1] > rgb[..., 2] + 40)).sum())


def magenta_pixels(rgb: np.ndarray) -> int:
    rgb = rgb.astype(int)
    return int(((rgb[..., 0] > rgb[..., 1] + 40) & (rgb[..., 2] > rgb[..., 1] + 40)).sum())


def test_3d_view_shows_the_volume(window3d):
    viewer = window3d.viewer3d
    shown = viewer.grab_image()
    assert shown.ndim == 3 and shown.shape[0] > 100 and shown.shape[1] > 100
    assert 0.02 < foreground_fraction(shown) < 0.95
    # Both channels are rendered: nuclei green, Golgi magenta (the outline is grey, the crosshair yellow).
    assert green_pixels(shown) > 200 and magenta_pixels(shown) > 50
    # Hiding both channels leaves only the outline and the crosshair.
    window3d.toggle_channel(0)
    window3d.toggle_channel(1)
    hidden = viewer.grab_image()
    assert green_pixels(hidden) == 0 and magenta_pixels(hidden) == 0
    window3d.toggle_channel(0)
    viewer.set_blend_mode("mip")
    mip = viewer.grab_image()
    assert green_pixels(mip) > 200 and magenta_pixels(mip) == 0
    assert "mip" in viewer.info.text()


def test_3d_pairs_as_glyphs_and_picking_selects(qtbot, window3d):
    viewer, model = window3d.viewer3d, window3d.model
    a = model.add_pair(NUCLEUS_A, GOLGI_A)
    b = model.add_pair(NUCLEUS_B, GOLGI_B, source="predicted")
    model.clear_selection()
    viewer.render()
    assert viewer.arrow_points.GetNumberOfPoints() == 2
    assert viewer.sphere_points["golgi"].GetNumberOfPoints() == 2
    # A click on pair A's nucleus sphere, through the Qt widget and VTK's interactor.
    x, y = viewer.display_position(NUCLEUS_A)
    ratio = viewer.vtk_widget.devicePixelRatioF()
    point = QtCore.QPoint(int(round(x / ratio)), int(round(viewer.vtk_widget.height() - y / ratio)))
    qtbot.mouseClick(viewer.vtk_widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, point)
    assert model.selection == (a,)
    assert window3d.state.cursor == NUCLEUS_A  # the slice views follow the pick
    assert viewer.pick(*[int(round(v)) for v in viewer.display_position(GOLGI_B)]) == (b, "golgi")
    assert model.selection == (b,)
    # Evaluation colours: the FN of a reference are drawn too.
    reference = PairSet([NUCLEUS_A, (2, 40, 70)], [GOLGI_A, (2, 40, 80)], voxel_size=(1.0, 0.5, 0.5))
    window3d.document.set_reference(reference)
    assert window3d.state.labels == {a: "TP", b: "FP"}
    assert viewer.arrow_points.GetNumberOfPoints() == 3  # two pairs + one missed reference pair


def test_3d_slab_and_slice_planes_follow_the_crosshair(window3d):
    viewer, state = window3d.viewer3d, window3d.state
    full = viewer.grab_image()
    viewer.set_slab(True, 2.0)
    assert viewer.mapper.GetClippingPlanes().GetNumberOfItems() == 2
    state.set_cursor((1, 45, 50))
    clipped = viewer.grab_image()
    assert foreground_fraction(clipped) < foreground_fraction(full)
    viewer.set_slab(False)
    viewer.set_show_planes(True)
    assert all(actor.GetVisibility() for actor in viewer.plane_actors)
    z_origin = viewer._plane_images[0].GetOrigin()[2]
    state.set_cursor((8, 45, 50))
    assert viewer._plane_images[0].GetOrigin()[2] == pytest.approx(z_origin + 7 * 1.0)


def test_screenshot_is_the_whole_window_with_the_3d_view(window3d, tmp_path):
    path = save_screenshot(window3d, tmp_path / "shot.png")
    image = QtGui.QImage(str(path))
    ratio = window3d.devicePixelRatioF()
    assert image.width() == round(window3d.width() * ratio) and image.height() == round(window3d.height() * ratio)
    widget = window3d.viewer3d.vtk_widget
    corner = widget.mapTo(window3d, QtCore.QPoint(0, 0))
    region = image.copy(int(corner.x() * ratio), int(corner.y() * ratio),
                        int(widget.width() * ratio), int(widget.height() * ratio))
    region = region.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    pixels = np.frombuffer(region.constBits(), np.uint8).reshape(region.height(), region.bytesPerLine())
    pixels = pixels[:, : region.width() * 3].reshape(region.height(), region.width(), 3)
    assert 0.02 < foreground_fraction(pixels) < 0.95


def test_run_app_screenshot_of_the_demo(qtbot, tmp_path, monkeypatch):
    QtCore.QStandardPaths.setTestModeEnabled(True)
    small = demo_data(seed=3, shape=(12, 96, 96))
    monkeypatch.setattr(main_window, "demo_data", lambda: small)
    out = tmp_path / "demo.png"
    assert main_window.run_app(screenshot=str(out)) == 0
    image = QtGui.QImage(str(out))
    assert not image.isNull() and image.width() > 600 and image.height() > 400


def test_window_starts_without_torch(image_path, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        start = time.perf_counter()
        from PySide6 import QtCore, QtWidgets
        app = QtWidgets.QApplication([])
        from app.ui.main_window import MainWindow
        settings = QtCore.QSettings({str(tmp_path / 's.ini')!r}, QtCore.QSettings.Format.IniFormat)
        window = MainWindow(settings=settings)
        window.document.interactive = False
        window.show()
        assert window.open_path({str(image_path)!r})
        app.processEvents()
        print("torch" in sys.modules, "app.core.inference" in sys.modules, round(time.perf_counter() - start, 2))
        window.release()
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    torch_loaded, inference_loaded, _seconds = result.stdout.split()[-3:]
    assert torch_loaded == "False" and inference_loaded == "False"


def test_3d_slab_across_any_axis(qtbot, window3d):
    viewer, state = window3d.viewer3d, window3d.state
    full = viewer.grab_image()
    key = Qt.KeyboardModifier.ShiftModifier
    window3d.activateWindow()
    qtbot.waitUntil(window3d.isActiveWindow)
    window3d.actions["slab"].setChecked(True)
    viewer.set_slab(True, 4.0)
    for axis, normal_index in ((0, 2), (1, 1), (2, 0)):
        assert viewer.slab_axis == axis and window3d.actions["slab_" + "zyx"[axis]].isChecked()
        planes = viewer.mapper.GetClippingPlanes()
        normals = [planes.GetItem(i).GetNormal() for i in range(planes.GetNumberOfItems())]
        assert [abs(n[normal_index]) for n in normals] == [1.0, 1.0]
        centre = (state.cursor[axis] + 0.5) * state.voxel_size[axis]
        assert planes.GetItem(0).GetOrigin()[normal_index] == pytest.approx(centre - 2.0)
        assert foreground_fraction(viewer.grab_image()) < foreground_fraction(full)
        qtbot.keyClick(window3d, Qt.Key.Key_C, key)  # Shift+C: the next axis
    assert viewer.slab_axis == 0
    window3d.actions["slab"].setChecked(False)


def vtk_point(viewer, voxel) -> QtCore.QPoint:
    """Widget coordinates (Qt, origin top left) of a voxel as rendered."""
    x, y = viewer.display_position(voxel)
    ratio = viewer.vtk_widget.devicePixelRatioF()
    return QtCore.QPoint(int(round(x / ratio)), int(round(viewer.vtk_widget.height() - y / ratio)))


def test_3d_drag_moves_a_selected_centroid_in_the_view_plane(qtbot, window3d):
    viewer, model = window3d.viewer3d, window3d.model
    a = model.add_pair(NUCLEUS_A, GOLGI_A)
    model.clear_selection()
    viewer.render()
    widget = viewer.vtk_widget
    start = vtk_point(viewer, GOLGI_A)
    target = start + QtCore.QPoint(25, -15)
    # Dragging an unselected centroid rotates the view (nothing moves)...
    camera = viewer.renderer.GetActiveCamera()
    before = camera.GetPosition()
    qtbot.mousePress(widget, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(widget, target)
    qtbot.mouseRelease(widget, Qt.MouseButton.LeftButton, pos=target)
    assert model.get(a).golgi == GOLGI_A and camera.GetPosition() != pytest.approx(before)
    viewer.reset_camera()
    viewer.render()
    # ...a selected one follows the mouse in the plane parallel to the screen: one undoable move.
    model.select([a])
    viewer.render()
    start = vtk_point(viewer, GOLGI_A)
    target = start + QtCore.QPoint(25, -15)
    history = len(model.undo_stack)
    qtbot.mousePress(widget, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(widget, start + QtCore.QPoint(10, -5))
    assert model.dragging
    qtbot.mouseMove(widget, target)
    qtbot.mouseRelease(widget, Qt.MouseButton.LeftButton, pos=target)
    moved = model.get(a).golgi
    assert not model.dragging and len(model.undo_stack) == history + 1
    assert moved != GOLGI_A and model.get(a).nucleus == NUCLEUS_A
    landed = vtk_point(viewer, moved)
    assert abs(landed.x() - target.x()) <= 2 and abs(landed.y() - target.y()) <= 2
    window3d.undo()
    assert model.get(a).golgi == GOLGI_A
