"""Two volumes side by side: a synthetic one beside a real one, to judge whether the training data look like the
microscope's.

Each side shows the nucleus and Golgi channels as the slice views do (green and magenta, contrast from
percentiles: :func:`app.ui.display.default_displays`), in µm so both are at one scale, either the maximum
projection along z or one slice; one slider moves both through the same relative depth. Their ground-truth or
annotated vectors are left out: this is about how the images look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from app.core.volume import Volume
from app.ui.display import CompositeRenderer, default_displays


class ComparePane(QtWidgets.QWidget):
    """One volume: its title and the image."""

    def __init__(self, volume: Volume, title: str, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.volume = volume
        self.displays = default_displays(volume)
        self.renderer = CompositeRenderer()
        z, y, x = volume.voxel_size
        self.title = QtWidgets.QLabel(f"<b>{title}</b> · {'×'.join(str(s) for s in volume.spatial_shape)} voxels · "
                                      f"{z:g} × {y:g} × {x:g} µm")
        self.title.setWordWrap(True)
        self.graphics = pg.GraphicsLayoutWidget()
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.graphics, 1)

    def show_depth(self, fraction: Optional[float]) -> np.ndarray:
        """Show the slice at ``fraction`` (0 top … 1 bottom) of the stack, or the maximum projection (``None``)."""
        data = self.volume.data  # (C, Z, Y, X)
        if fraction is None:
            planes = [channel.max(axis=0) for channel in data]
        else:
            index = int(round(fraction * (data.shape[1] - 1)))
            planes = [channel[index] for channel in data]
        rgb = self.renderer.render(planes, self.displays)
        self.image.setImage(rgb, levels=(0, 255), autoLevels=False)
        _z, y, x = self.volume.voxel_size
        self.image.setRect(QtCore.QRectF(0, 0, rgb.shape[1] * x, rgb.shape[0] * y))  # µm: one scale on both sides
        return rgb


class CompareWindow(QtWidgets.QWidget):
    """A window of its own with two volumes side by side (see the module docstring)."""

    def __init__(self, left: Volume, left_title: str, right: Volume, right_title: str,
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent, QtCore.Qt.WindowType.Window)
        self.setObjectName("cellpol.compare")
        self.setWindowTitle(f"Compare: {left_title} and {right_title}")
        self.panes = (ComparePane(left, left_title), ComparePane(right, right_title))
        self.panes[1].view.setXLink(self.panes[0].view)  # one scale in µm: zooming or panning one moves both
        self.panes[1].view.setYLink(self.panes[0].view)
        self.mip = QtWidgets.QCheckBox("Maximum projection", objectName="cellpol.compare.mip")
        self.mip.setChecked(True)
        self.depth = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal, objectName="cellpol.compare.depth")
        self.depth.setRange(0, 100)
        self.depth.setValue(50)
        self.depth.setToolTip("The same relative depth in both stacks")
        self.mip.toggled.connect(lambda _on: self.refresh())
        self.depth.valueChanged.connect(lambda _v: self.refresh())
        panes = QtWidgets.QHBoxLayout()
        for pane in self.panes:
            panes.addWidget(pane, 1)
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(self.mip)
        controls.addWidget(QtWidgets.QLabel("Depth"))
        controls.addWidget(self.depth, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(panes, 1)
        layout.addLayout(controls)
        self.resize(1100, 600)
        self.refresh()

    def refresh(self) -> None:
        self.depth.setEnabled(not self.mip.isChecked())
        fraction = None if self.mip.isChecked() else self.depth.value() / 100.0
        for pane in self.panes:
            pane.show_depth(fraction)
        if not getattr(self, "_ranged", False):  # frame the larger of the two once
            self._ranged = True
            self.panes[0].view.autoRange(items=[pane.image for pane in self.panes])


def compare_files(synthetic: Path, real: Volume, real_title: str, parent: Optional[QtWidgets.QWidget] = None
                  ) -> CompareWindow:
    """Read the volume ``synthetic`` and show it beside ``real`` (the image open in the window)."""
    from app.core.imageio import read_volume

    volume = read_volume(synthetic)
    window = CompareWindow(volume, f"{Path(synthetic).parent.name}/{Path(synthetic).name}", real, real_title,
                           parent)
    window.show()
    return window
