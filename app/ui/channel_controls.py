"""Per-channel display controls: visibility, colour, contrast limits, gamma, and channel roles."""

from __future__ import annotations

from typing import Optional

from PySide6 import QtCore, QtGui, QtWidgets
from superqt import QLabeledDoubleRangeSlider, QLabeledDoubleSlider

from app.ui.display import auto_contrast, intensity_range
from app.ui.state import ViewerState


class ChannelRow(QtWidgets.QGroupBox):
    """Controls of one channel."""

    def __init__(self, state: ViewerState, index: int, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.index = index
        display = state.displays[index]
        self.setTitle(f"{index}: {display.name}")

        self.visible = QtWidgets.QCheckBox("Show")
        self.visible.setChecked(display.visible)
        self.visible.setToolTip(f"Show or hide this channel (key {index + 1})")
        self.visible.toggled.connect(lambda on: self.state.set_display(self.index, visible=on))
        self.colour = QtWidgets.QPushButton()
        self.colour.setFixedWidth(48)
        self.colour.setToolTip("Channel colour")
        self.colour.clicked.connect(self._choose_colour)
        self.auto = QtWidgets.QPushButton("Auto")
        self.auto.setToolTip("Contrast from the 0.5–99.8 percentiles")
        self.auto.clicked.connect(self.auto_contrast)

        channel = state.preview()[index]
        low, high = intensity_range(channel.dtype, channel)
        self.contrast = QLabeledDoubleRangeSlider(QtCore.Qt.Orientation.Horizontal)
        self.contrast.setRange(low, high)
        self.contrast.setDecimals(0 if channel.dtype.kind in "ui" else 3)
        self.contrast.setValue((max(low, display.low), min(high, display.high)))
        self.contrast.setToolTip("Contrast limits (black point, white point)")
        self.contrast.valueChanged.connect(self._on_contrast)
        self.gamma = QLabeledDoubleSlider(QtCore.Qt.Orientation.Horizontal)
        self.gamma.setRange(0.2, 3.0)
        self.gamma.setDecimals(2)
        self.gamma.setValue(display.gamma)
        self.gamma.setToolTip("Gamma (< 1 brightens dim structures)")
        self.gamma.valueChanged.connect(lambda g: self.state.set_display(self.index, gamma=float(g)))

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.visible)
        top.addStretch(1)
        top.addWidget(self.colour)
        top.addWidget(self.auto)
        form = QtWidgets.QFormLayout()
        form.addRow("Contrast", self.contrast)
        form.addRow("Gamma", self.gamma)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(form)
        self._show_colour()

    def _show_colour(self) -> None:
        r, g, b = self.state.displays[self.index].colour
        self.colour.setStyleSheet(f"background-color: rgb({r},{g},{b}); border: 1px solid #444;")

    def _choose_colour(self) -> None:
        current = QtGui.QColor(*self.state.displays[self.index].colour)
        colour = QtWidgets.QColorDialog.getColor(current, self, "Channel colour")
        if colour.isValid():
            self.set_colour((colour.red(), colour.green(), colour.blue()))

    def set_colour(self, rgb) -> None:
        self.state.set_display(self.index, colour=tuple(int(v) for v in rgb))
        self._show_colour()

    def _on_contrast(self, values) -> None:
        low, high = (float(v) for v in values)
        if high <= low:
            high = low + 1e-6
        self.state.set_display(self.index, low=low, high=high)

    def auto_contrast(self) -> None:
        low, high = auto_contrast(self.state.preview()[self.index])
        self.contrast.setValue((low, high))

    def sync(self) -> None:
        """Show the state's values (after a change made elsewhere, e.g. a shortcut)."""
        display = self.state.displays[self.index]
        for widget, value in ((self.visible, display.visible), (self.gamma, display.gamma),
                              (self.contrast, (display.low, display.high))):
            widget.blockSignals(True)
            if widget is self.visible:
                widget.setChecked(value)
            else:
                widget.setValue(value)
            widget.blockSignals(False)
        self._show_colour()


class ChannelControls(QtWidgets.QWidget):
    """All channel rows plus the nucleus/Golgi channel roles (snapping and prediction use them)."""

    roles_changed = QtCore.Signal(int, int)

    def __init__(self, state: ViewerState, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.channels")  # its stable id (app.ui.actions.PANELS)
        self.state = state
        self.rows: list[ChannelRow] = []
        self.nucleus_role = QtWidgets.QComboBox()
        self.golgi_role = QtWidgets.QComboBox()
        self.nucleus_role.setToolTip("Channel holding the nuclei")
        self.golgi_role.setToolTip("Channel holding the Golgi")
        roles = QtWidgets.QFormLayout()
        roles.addRow("Nucleus channel", self.nucleus_role)
        roles.addRow("Golgi channel", self.golgi_role)
        self.nucleus_role.activated.connect(self._on_roles)
        self.golgi_role.activated.connect(self._on_roles)
        self.rows_layout = QtWidgets.QVBoxLayout()
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(roles)
        layout.addLayout(self.rows_layout)
        layout.addStretch(1)
        state.volume_changed.connect(self._rebuild)
        state.display_changed.connect(self._sync)

    def _rebuild(self) -> None:
        for row in self.rows:
            row.setParent(None)
            row.deleteLater()
        self.rows = [ChannelRow(self.state, i, self) for i in range(len(self.state.displays))]
        for row in self.rows:
            self.rows_layout.addWidget(row)
        volume = self.state.volume
        for combo, current in ((self.nucleus_role, volume.nucleus_channel), (self.golgi_role, volume.golgi_channel)):
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("none", None)
            for i, name in enumerate(volume.channel_names):
                combo.addItem(f"{i}: {name}", i)
            combo.setCurrentIndex(0 if current is None else current + 1)
            combo.blockSignals(False)

    def _sync(self) -> None:
        for row in self.rows:
            row.sync()

    def _on_roles(self, *_args) -> None:
        nucleus, golgi = self.nucleus_role.currentData(), self.golgi_role.currentData()
        if nucleus is None or golgi is None or nucleus == golgi:
            return
        self.roles_changed.emit(int(nucleus), int(golgi))
