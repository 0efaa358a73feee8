"""Small widget builders the panels share (one way to make a row of action buttons, a µm spin box, a
read-only table)."""

from __future__ import annotations

from typing import Iterable, Optional

from PySide6 import QtCore, QtGui, QtWidgets


def action_buttons(actions: dict[str, QtGui.QAction], names: Iterable[str]) -> QtWidgets.QHBoxLayout:
    """A row of text buttons for window actions (they follow the actions' text, state and shortcuts)."""
    row = QtWidgets.QHBoxLayout()
    for name in names:
        button = QtWidgets.QToolButton()
        button.setDefaultAction(actions[name])
        button.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextOnly)
        row.addWidget(button)
    row.addStretch(1)
    return row


def fit_columns_when_filled(table: QtWidgets.QTableView) -> None:
    """For a table that can hold thousands of rows: columns sized to their contents when rows arrive in an empty
    table (after the event loop turns, from the first 100 rows), and otherwise left as the user set them.

    A header in ``ResizeToContents`` mode measures again after every change of the model: 30–60 ms per
    change with two thousand pairs, in the same pass as the change (benchmarks/ui_stall.py).
    """
    header = table.horizontalHeader()
    header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Interactive)
    table.verticalHeader().setResizeContentsPrecision(100)
    model = table.model()
    state = {"rows": 0, "pending": False}

    def fit() -> None:
        state["pending"] = False
        table.resizeColumnsToContents()

    def changed(*_args) -> None:
        rows, before = model.rowCount(), state["rows"]
        state["rows"] = rows
        if rows and not before and not state["pending"]:
            state["pending"] = True
            QtCore.QTimer.singleShot(0, fit)

    model.modelReset.connect(changed)
    model.rowsInserted.connect(changed)
    model.rowsRemoved.connect(changed)
    model.layoutChanged.connect(changed)
    changed()


def um_spin(minimum: float, maximum: float, value: float, tooltip: str, step: float = 0.5) -> QtWidgets.QDoubleSpinBox:
    """A distance in µm, one decimal."""
    spin = QtWidgets.QDoubleSpinBox()
    spin.setRange(minimum, maximum)
    spin.setSingleStep(step)
    spin.setDecimals(1)
    spin.setSuffix(" µm")
    spin.setValue(value)
    spin.setToolTip(tooltip)
    return spin


def read_only_rows(table: QtWidgets.QAbstractItemView,
                   mode: Optional[QtWidgets.QAbstractItemView.SelectionMode] = None) -> None:
    """Rows selected whole, no editing, no row numbers, compact rows, columns sized to their contents."""
    table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
    if mode is not None:
        table.setSelectionMode(mode)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setDefaultSectionSize(20)
    table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
    # Size the columns from the first rows only: measuring every cell of a thousand predicted pairs stalled the
    # window (benchmarks/ui_stall.py).
    table.horizontalHeader().setResizeContentsPrecision(100)


def show_progress(bar: QtWidgets.QProgressBar, event, say=None) -> bool:
    """Show a job's :class:`~app.core.jobs.Progress` event on ``bar`` (and its message through ``say``).

    Returns whether ``event`` was a Progress (other events are left to the caller).
    """
    from app.core.jobs import Progress

    if not isinstance(event, Progress):
        return False
    if event.total:
        bar.setRange(0, int(event.total))
        bar.setValue(int(event.done))
    if event.message and say is not None:
        say(event.message)
    return True
