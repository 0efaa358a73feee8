"""The vector table and the annotation tools (place mode, snapping, delete, re-pair)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.core.annotation import vector_angles
from app.ui.display import DEFAULT_OVERLAY_COLOUR, EVALUATION_COLOURS, SOURCE_COLOURS
from app.ui.state import ViewerState
from app.ui.widgets import action_buttons, fit_columns_when_filled, read_only_rows, um_spin

COLUMNS = ("id", "source", "score", "length µm", "azimuth °", "elevation °", "nucleus x, y, z", "Golgi x, y, z")
SORT_ROLE = QtCore.Qt.ItemDataRole.UserRole + 1
ID_ROLE = QtCore.Qt.ItemDataRole.UserRole + 2


def _xyz(point) -> str:
    z, y, x = point
    return f"{x:.1f}, {y:.1f}, {z:.1f}"


class VectorTableModel(QtCore.QAbstractTableModel):
    """The pairs of the annotation model with their length and direction (µm, degrees)."""

    def __init__(self, state: ViewerState, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self.state = state
        self._pairs = []
        self._length = self._azimuth = self._elevation = np.zeros(0)
        self._recompute()
        state.pairs_changed.connect(self._on_pairs_changed)
        state.overlay_changed.connect(self._on_overlay)

    def _recompute(self) -> None:
        model = self.state.model
        self._pairs = model.pairs
        if self._pairs and model.voxel_size is not None:
            self._length, self._azimuth, self._elevation = vector_angles(model.to_pairset())
        else:
            n = len(self._pairs)
            self._length = self._azimuth = self._elevation = np.full(n, np.nan)

    def _on_pairs_changed(self, kind: str, ids) -> None:
        if kind == "update" and len(self._pairs) == len(self.state.model):
            self._recompute()
            rows = [self.state.model.row_of(i) for i in ids if i in self.state.model]
            if rows:
                self.dataChanged.emit(self.index(min(rows), 0), self.index(max(rows), len(COLUMNS) - 1))
            return
        self.beginResetModel()
        self._recompute()
        self.endResetModel()

    def _on_overlay(self) -> None:
        if self._pairs:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._pairs) - 1, len(COLUMNS) - 1))

    def rowCount(self, parent=QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._pairs)

    def columnCount(self, parent=QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=QtCore.Qt.ItemDataRole.DisplayRole):
        if role == QtCore.Qt.ItemDataRole.DisplayRole and orientation == QtCore.Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def pair_id(self, row: int) -> int:
        return self._pairs[row].id

    def data(self, index, role=QtCore.Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        pair = self._pairs[index.row()]
        column = index.column()
        k = index.row()
        if role == ID_ROLE:
            return pair.id
        numbers = (pair.id, None, pair.score, self._length[k], self._azimuth[k], self._elevation[k], None, None)
        if role == SORT_ROLE:
            value = numbers[column]
            if value is None:
                return (pair.source if column == 1 else _xyz(pair.nucleus if column == 6 else pair.golgi))
            return -math.inf if isinstance(value, float) and math.isnan(value) else float(value)
        if role == QtCore.Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return str(pair.id)
            if column == 1:
                label = self.state.labels.get(pair.id) if self.state.colour_mode == "evaluation" else None
                return f"{pair.source} ({label})" if label else pair.source
            if column == 6:
                return _xyz(pair.nucleus)
            if column == 7:
                return _xyz(pair.golgi)
            value = numbers[column]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return ""
            return f"{value:.2f}" if column == 2 else f"{value:.1f}"
        if role == QtCore.Qt.ItemDataRole.DecorationRole and column == 1:
            label = self.state.labels.get(pair.id) if self.state.colour_mode == "evaluation" else None
            rgb = EVALUATION_COLOURS[label] if label else SOURCE_COLOURS.get(pair.source, DEFAULT_OVERLAY_COLOUR)
            return QtGui.QColor(*rgb)
        if role == QtCore.Qt.ItemDataRole.TextAlignmentRole and column not in (1,):
            return int(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        return None


class AnnotationPanel(QtWidgets.QWidget):
    """Annotation tools above the vector table. Selecting rows selects the pairs in every view."""

    def __init__(self, state: ViewerState, actions: dict[str, QtGui.QAction],
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.vectors")  # its stable id (app.ui.actions.PANELS)
        self.state = state
        self._syncing = False

        tools = action_buttons(actions, ("place_mode", "snap", "delete", "repair"))
        self.radius = um_spin(0.1, 20.0, state.snap_radius_um,
                              "Snapping radius: a click moves to the brightest point of the right channel "
                              "within this distance")
        self.radius.valueChanged.connect(lambda v: state.set_snap(radius_um=v))
        self.depth = um_spin(0.0, 50.0, state.depth_um,
                             "Vectors within this distance of a slice are drawn on it (smaller when farther)")
        self.depth.valueChanged.connect(self._on_depth)
        options = QtWidgets.QFormLayout()
        options.addRow("Snap radius", self.radius)
        options.addRow("Show vectors within", self.depth)

        self.table_model = VectorTableModel(state, self)
        self.proxy = QtCore.QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.table_model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, QtCore.Qt.SortOrder.AscendingOrder)
        read_only_rows(self.table, QtWidgets.QAbstractItemView.SelectionMode.ExtendedSelection)
        fit_columns_when_filled(self.table)  # a thousand predicted pairs: measured once, not at every change
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection)
        self.table.doubleClicked.connect(self._on_double_click)
        self.summary = QtWidgets.QLabel()

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(tools)
        layout.addLayout(options)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)

        state.selection_changed.connect(self._on_model_selection)
        state.pairs_changed.connect(lambda *_: self._on_model_selection(state.model.selection))
        state.options_changed.connect(self._sync_options)
        self._update_summary()

    def _on_depth(self, value: float) -> None:
        self.state.depth_um = float(value)
        self.state.overlay_changed.emit()

    def _sync_options(self) -> None:
        self.radius.blockSignals(True)
        self.radius.setValue(self.state.snap_radius_um)
        self.radius.blockSignals(False)

    def row_of_id(self, pair_id: int) -> int:
        """The table row (as displayed, after sorting) of a pair."""
        source_row = self.state.model.row_of(pair_id)
        return self.proxy.mapFromSource(self.table_model.index(source_row, 0)).row()

    def ids_in_table_order(self) -> list[int]:
        return [int(self.proxy.index(r, 0).data(ID_ROLE)) for r in range(self.proxy.rowCount())]

    def _on_table_selection(self, *_args) -> None:
        if self._syncing:
            return
        rows = self.table.selectionModel().selectedRows()
        ids = [int(self.proxy.data(index, ID_ROLE)) for index in rows]
        self._syncing = True
        try:
            self.state.model.select(ids)
            if len(ids) == 1:
                self.state.set_cursor(self.state.model.get(ids[0]).nucleus)
        finally:
            self._syncing = False

    def _on_double_click(self, index: QtCore.QModelIndex) -> None:
        pair_id = int(self.proxy.data(index, ID_ROLE))
        self.state.set_cursor(self.state.model.get(pair_id).nucleus)

    def _on_model_selection(self, ids) -> None:
        self._update_summary()
        if self._syncing:
            return
        self._syncing = True
        try:
            selection = QtCore.QItemSelection()
            for pair_id in ids:
                if pair_id in self.state.model:
                    row = self.row_of_id(pair_id)
                    selection.select(self.proxy.index(row, 0), self.proxy.index(row, len(COLUMNS) - 1))
            self.table.selectionModel().select(selection, QtCore.QItemSelectionModel.SelectionFlag.ClearAndSelect)
            if ids and ids[-1] in self.state.model:
                self.table.scrollTo(self.proxy.index(self.row_of_id(ids[-1]), 0))
        finally:
            self._syncing = False

    def _update_summary(self) -> None:
        model = self.state.model
        text = f"{len(model)} pairs"
        if model.selection:
            text += f" · {len(model.selection)} selected"
        if model.pending_nucleus is not None:
            text += " · nucleus waiting for its Golgi"
        self.summary.setText(text)

    def next_pair(self, step: int = 1) -> Optional[int]:
        """Select the next (or previous) pair in table order and centre the views on it (Tab)."""
        ids = self.ids_in_table_order()
        if not ids:
            return None
        current = self.state.model.selection
        if current and current[-1] in ids:
            position = (ids.index(current[-1]) + step) % len(ids)
        else:
            position = 0 if step > 0 else len(ids) - 1
        pair_id = ids[position]
        self.state.model.select([pair_id])
        self.state.set_cursor(self.state.model.get(pair_id).nucleus)
        return pair_id
