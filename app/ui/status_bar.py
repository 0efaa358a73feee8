"""The window's status bar: messages on the left; the annotation mode, the position and intensities under
the mouse (or at the crosshair), the time of the last autosave, and the device jobs run on on the right."""

from __future__ import annotations

import time
from typing import Optional

from PySide6 import QtWidgets

from app.ui.state import ViewerState


class StatusBar(QtWidgets.QStatusBar):
    """A status bar that follows the viewer state.

    Parameters
    ----------
    state : ViewerState
        Its hover, crosshair, option and pending-nucleus changes update the labels; its messages are shown
        for five seconds.
    parent : QWidget, optional

    Attributes
    ----------
    mode_label, position_label, autosave_label, device_label : QLabel
        The permanent labels, left to right.
    """

    def __init__(self, state: ViewerState, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.position_label = QtWidgets.QLabel()
        self.position_label.setMinimumWidth(420)
        self.mode_label = QtWidgets.QLabel()
        self.autosave_label = QtWidgets.QLabel()
        self.autosave_label.setStyleSheet("color: #777;")
        self.device_label = QtWidgets.QLabel()
        self.device_label.setStyleSheet("color: #777;")
        self.addPermanentWidget(self.mode_label)
        self.addPermanentWidget(self.position_label)
        self.addPermanentWidget(self.autosave_label)
        self.addPermanentWidget(self.device_label)
        self.showMessage("Ready")
        state.hover_changed.connect(self.show_position)
        state.cursor_changed.connect(lambda _cursor: self.show_position(state.hover))
        state.message.connect(lambda text: self.showMessage(text, 5000))
        state.pending_changed.connect(lambda _pending: self.show_mode())
        state.options_changed.connect(self.show_mode)

    def show_position(self, hover) -> None:
        """Voxel and µm coordinates and each channel's intensity at ``hover`` (``(axis, (z, y, x))``), or at
        the crosshair when ``None``."""
        volume = self.state.volume
        if volume is None:
            self.position_label.setText("")
            return
        position = hover[1] if hover is not None else self.state.cursor
        z, y, x = (int(round(v)) for v in position)
        vz, vy, vx = volume.voxel_size
        # never wait on the GUI thread for a large image's file while a view is reading it
        values = self.state.intensities_at((z, y, x), wait=False)
        intensities = ("reading…" if values is None else
                       "  ".join(f"{name} {value:g}" for name, value in zip(volume.channel_names, values.tolist())))
        where = "" if hover is not None else "crosshair "
        self.position_label.setText(
            f"{where}x {x} y {y} z {z} vox · {x * vx:.2f}, {y * vy:.2f}, {z * vz:.2f} µm · {intensities}")

    def show_mode(self) -> None:
        """Place mode and what the next click places, and the snapping radius when snapping is on."""
        parts = []
        pending = self.state.model.pending_nucleus
        if self.state.place_mode:
            parts.append("PLACE" + (" Golgi" if pending is not None else " nucleus"))
        elif pending is not None:
            parts.append("Golgi next")
        if self.state.snap:
            parts.append(f"snap {self.state.snap_radius_um:g} µm")
        self.mode_label.setText(" · ".join(parts))

    def show_autosaved(self, path: str) -> None:
        """The time of the last autosave (its file in the tooltip)."""
        self.autosave_label.setText(f"autosaved {time.strftime('%H:%M:%S')}")
        self.autosave_label.setToolTip(path)

    def show_device(self, text: str, tip: str = "") -> None:
        """What the jobs run on (the window's Tools ▸ Device)."""
        self.device_label.setText(text)
        self.device_label.setToolTip(tip)
