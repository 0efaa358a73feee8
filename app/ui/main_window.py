"""Main window. For now a preview: maximum-intensity projection of both channels with the vectors.

The full viewer (VTK 3D view, synchronised slice views, annotation) replaces this in the GUI issue.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app import __version__
from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.volume import Volume


def composite_mip(volume: Volume) -> np.ndarray:
    """RGB uint8 (Y, X, 3) maximum-intensity projection: nuclei green, Golgi magenta."""
    height, width = volume.spatial_shape[1:]
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    colours = {volume.nucleus_channel: (0.1, 0.9, 0.3), volume.golgi_channel: (1.0, 0.2, 0.9)}
    for index, colour in colours.items():
        if index is None:
            continue
        mip = volume.data[index].max(axis=0).astype(np.float32)
        low, high = np.percentile(mip, (1.0, 99.8))
        scaled = np.clip((mip - low) / max(high - low, 1e-6), 0, 1)
        rgb += scaled[..., None] * np.asarray(colour, dtype=np.float32)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


class MainWindow(QtWidgets.QMainWindow):
    """Preview window: one image with its polarity vectors drawn on the projection."""

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"CellPol Studio {__version__}")
        self.resize(900, 760)
        self.volume: Optional[Volume] = None
        self.pairs: Optional[PairSet] = None
        self.image_label = QtWidgets.QLabel("Open an image (File ▸ Open) or start with --demo.")
        self.image_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(320, 320)
        self.setCentralWidget(self.image_label)
        menu = self.menuBar().addMenu("&File")
        self.open_action = menu.addAction("&Open image…", self.open_dialog)
        self.open_action.setShortcut(QtGui.QKeySequence.StandardKey.Open)
        menu.addAction("&Quit", self.close).setShortcut(QtGui.QKeySequence.StandardKey.Quit)
        self.statusBar().showMessage("Ready")

    def set_data(self, volume: Volume, pairs: Optional[PairSet] = None) -> None:
        self.volume, self.pairs = volume, pairs
        rgb = np.ascontiguousarray(composite_mip(volume))
        height, width = rgb.shape[:2]
        image = QtGui.QImage(rgb.data, width, height, 3 * width, QtGui.QImage.Format.Format_RGB888).copy()
        if pairs is not None and len(pairs):
            painter = QtGui.QPainter(image)
            painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
            painter.setPen(QtGui.QPen(QtGui.QColor("white"), 1.5))
            for (_, ny, nx), (_, gy, gx) in zip(pairs.nuclei, pairs.golgi):
                painter.drawLine(QtCore.QPointF(nx, ny), QtCore.QPointF(gx, gy))
                painter.drawEllipse(QtCore.QPointF(nx, ny), 2.0, 2.0)
            painter.end()
        self.image_label.setPixmap(QtGui.QPixmap.fromImage(image))
        count = "" if pairs is None else f" — {len(pairs)} vectors"
        self.statusBar().showMessage(volume.describe() + count)

    def open_path(self, path: str) -> bool:
        from app.core.imageio import read_volume

        try:
            volume = read_volume(path)
        except CellPolError as exc:
            QtWidgets.QMessageBox.warning(self, "Cannot open image", str(exc))
            return False
        self.set_data(volume)
        return True

    def open_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Open image", "", "Images (*.tif *.tiff *.npy *.czi);;All files (*)"
        )
        if path:
            self.open_path(path)


def demo_data(seed: int = 1) -> tuple[Volume, PairSet]:
    """A small simulated volume with its ground-truth vectors."""
    from app.core.simulate import SimConfig, simulate

    return simulate(SimConfig(shape=(24, 192, 192), voxel_size=(0.5, 0.33, 0.33), seed=seed))


def run_app(files: Sequence[str] = (), demo: bool = False) -> int:
    """Start the Qt event loop with the main window; returns the exit status."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("CellPol Studio")
    window = MainWindow()
    if demo:
        window.set_data(*demo_data())
    for path in files:
        window.open_path(str(Path(path)))
    window.show()
    return app.exec()
