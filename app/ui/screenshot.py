"""Screenshots of the whole window, the VTK 3D view included (File ▸ Save screenshot…, ``cellpol gui
--screenshot``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.core.errors import CellPolError


def grab_window(window: QtWidgets.QMainWindow) -> QtGui.QImage:
    """The whole window as an image, VTK view included.

    On a real display (or Xvfb) the window is grabbed from the screen (``QWidget.grab`` would show garbage
    where VTK draws with OpenGL). On the offscreen platform there is no screen: the Qt widgets are
    rendered with ``grab`` and the VTK image from ``vtkWindowToImageFilter`` is pasted over its area.

    Parameters
    ----------
    window : QMainWindow
        The main window; its ``viewer3d`` attribute is the 3D view, or ``None``.
    """
    app = QtWidgets.QApplication.instance()
    viewer = window.viewer3d
    if viewer is not None:
        viewer.render()
    app.processEvents()
    # Deliberately lazy, like the 3D view itself: app.ui.viewer3d loads VTK and its OpenGL libraries.
    from app.ui.viewer3d import headless_platform

    if not headless_platform():
        screen = window.screen() or QtGui.QGuiApplication.primaryScreen()
        image = screen.grabWindow(window.winId()).toImage()
        if not image.isNull():
            return image
    image = window.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    if viewer is not None and viewer.isVisible():
        rgb = np.ascontiguousarray(viewer.grab_image())
        height, width = rgb.shape[:2]
        vtk_image = QtGui.QImage(rgb.data, width, height, 3 * width, QtGui.QImage.Format.Format_RGB888).copy()
        top_left = viewer.vtk_widget.mapTo(window, QtCore.QPoint(0, 0))
        painter = QtGui.QPainter(image)
        target = QtCore.QRectF(top_left.x(), top_left.y(), viewer.vtk_widget.width(), viewer.vtk_widget.height())
        painter.drawImage(target, vtk_image)
        painter.end()
    return image


def save_screenshot(window: QtWidgets.QMainWindow, path) -> Path:
    """Save :func:`grab_window` as ``path`` (PNG by its suffix), creating its folder; returns the path.

    Raises
    ------
    CellPolError
        If the image cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = grab_window(window)
    if not image.save(str(path)):
        raise CellPolError(f"Cannot write the screenshot to {path}.")
    return path
