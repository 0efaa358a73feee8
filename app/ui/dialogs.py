"""Small dialogs: voxel size (and axes) for files without metadata, keyboard shortcuts."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from PySide6 import QtCore, QtGui, QtWidgets

from app.core.errors import CellPolError
from app.core.volume import MAX_VOXEL_SIZE_YX_UM, MAX_VOXEL_SIZE_Z_UM, MIN_VOXEL_SIZE_UM, parse_voxel_size


class VoxelSizeDialog(QtWidgets.QDialog):
    """Ask for the voxel size ``(z, y, x)`` in µm, and the axis order when the file does not say.

    There is never a silent default: the dialog must be confirmed (the values shown are the last ones
    typed, for convenience).
    """

    def __init__(self, info: dict[str, Any], initial: Optional[Sequence[float]] = None,
                 ask_axes: bool = False, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Voxel size")
        name = QtCore.QFileInfo(str(info.get("path", ""))).fileName()
        shape = info.get("shape")
        axes = info.get("axes") or ""
        lines = [f"<b>{name}</b>", f"Stored shape {tuple(shape) if shape else '?'} axes {axes or '?'}, "
                 f"{info.get('dtype', '?')}."]
        problem = info.get("voxel_size_problem") or "no voxel size in the file's metadata"
        lines.append(f"The file gives no voxel size ({problem}). Enter it in µm:")
        text = QtWidgets.QLabel("<br>".join(lines))
        text.setWordWrap(True)
        values = list(initial) if initial else [1.0, 1.0, 1.0]
        self.spins = []
        form = QtWidgets.QFormLayout()
        limits = (MAX_VOXEL_SIZE_Z_UM, MAX_VOXEL_SIZE_YX_UM, MAX_VOXEL_SIZE_YX_UM)  # the range core accepts
        for label, value, limit in zip(("z (slice spacing)", "y (row)", "x (column)"), values, limits):
            spin = QtWidgets.QDoubleSpinBox()
            spin.setRange(MIN_VOXEL_SIZE_UM, limit)
            spin.setDecimals(4)
            spin.setSingleStep(0.01)
            spin.setSuffix(" µm")
            spin.setValue(float(value))
            self.spins.append(spin)
            form.addRow(label, spin)
        self.axes_edit = QtWidgets.QLineEdit()
        self.axes_edit.setPlaceholderText("e.g. ZCYX, CZYX, ZYX, YXZC")
        self.axes_edit.setToolTip("One letter per stored dimension: Z, C, Y, X (T/S/Q of length 1)")
        if ask_axes:
            if info.get("axes_problem"):
                form.addRow(QtWidgets.QLabel(str(info["axes_problem"])))
            form.addRow("Axis order", self.axes_edit)
        self.remember = QtWidgets.QCheckBox("Remember for this file")
        self.remember.setChecked(True)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(text)
        layout.addLayout(form)
        layout.addWidget(self.remember)
        layout.addWidget(buttons)
        self._ask_axes = ask_axes

    def voxel_size(self) -> tuple[float, float, float]:
        return parse_voxel_size([spin.value() for spin in self.spins])

    def axes(self) -> Optional[str]:
        text = self.axes_edit.text().strip().upper()
        return text or None

    def accept(self) -> None:
        try:
            self.voxel_size()
        except CellPolError as exc:
            QtWidgets.QMessageBox.warning(self, "Voxel size", str(exc))
            return
        super().accept()


class ShortcutsDialog(QtWidgets.QDialog):
    """Every action with a shortcut, from the window's actions (so the list is always current)."""

    def __init__(self, rows: Sequence[tuple[str, str, str]], parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        self.resize(560, 620)
        table = QtWidgets.QTableWidget(len(rows), 3)
        table.setHorizontalHeaderLabels(["Keys", "Action", "Group"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                table.setItem(r, c, QtWidgets.QTableWidgetItem(value))
        table.horizontalHeader().setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        table.resizeColumnToContents(0)
        self.table = table
        mouse = QtWidgets.QLabel(
            "<b>Mouse and trackpad</b> (slice views): wheel, Ctrl + wheel or pinch = zoom · two-finger scroll "
            "or drag = pan · Shift/Alt + wheel = slice · click = crosshair, or place in place mode "
            "(Alt + click: no snapping) · drag a marker = move it · Shift + click a marker = add to selection · "
            "right click = cancel a half-placed pair. 3D view: drag = rotate, Shift + drag = pan, "
            "wheel = zoom, click a sphere = select that pair, drag a selected pair's sphere = move it in the plane "
            "of the screen (one undo step).")
        mouse.setWordWrap(True)
        close = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(table, 1)
        layout.addWidget(mouse)
        layout.addWidget(close)


def native_text(sequence: QtGui.QKeySequence) -> str:
    return sequence.toString(QtGui.QKeySequence.SequenceFormat.NativeText)
