"""The dialog that asks which series (scene, position) of a multi-series file to open: a table of their names,
shapes and voxel sizes (from :func:`app.core.imageio.list_series`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from PySide6 import QtWidgets

from app.core.errors import CellPolError
from app.core.imageio import SeriesInfo, list_series


class SeriesDialog(QtWidgets.QDialog):
    """One row per series; double-click or OK opens the selected one."""

    COLUMNS = ("#", "Name", "Shape (C×Z×Y×X)", "Voxel size (z×y×x µm)", "Channels")

    def __init__(self, path: Path, series: Sequence[SeriesInfo], parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose a series")
        self.series = list(series)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(QtWidgets.QLabel(f"{Path(path).name} holds {len(self.series)} series. Open which one?"))
        self.table = QtWidgets.QTableWidget(len(self.series), len(self.COLUMNS), self)
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        for row, info in enumerate(self.series):
            shape = "×".join(str(n) for n in info.shape) if info.shape else "axes unknown"
            voxel = "×".join(f"{v:.4g}" for v in info.voxel_size) if info.voxel_size else "not in the file"
            channels = ", ".join(info.channel_names) if info.channel_names else ""
            for column, text in enumerate((str(info.index), info.name, shape, voxel, channels)):
                self.table.setItem(row, column, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.table.selectRow(0)
        self.table.cellDoubleClicked.connect(lambda row, column: self.accept())
        layout.addWidget(self.table)
        self.buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Open | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(640, 320)

    def chosen(self) -> int:
        """The index of the selected series (0 when none is selected)."""
        rows = self.table.selectionModel().selectedRows()
        return self.series[rows[0].row()].index if rows else 0


def choose_series(path: Path, parent: Optional[QtWidgets.QWidget] = None, interactive: bool = True) -> Optional[int]:
    """The series to open: 0 for a file with one (or a file that cannot be listed: opening it reports why), the
    user's choice for a file with several, ``None`` when the user cancels. Without ``interactive``, 0."""
    try:
        series = list_series(path)
    except CellPolError:
        return 0
    if len(series) <= 1 or not interactive:
        return 0
    dialog = SeriesDialog(path, series, parent)
    if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
        return None
    return dialog.chosen()
