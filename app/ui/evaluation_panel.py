"""The comparison panel: the open image's pairs scored against reference vectors, as the paper scores them.

The numbers come from :func:`app.core.evaluate.score_pairs` (through
:func:`app.core.annotation.compare_with_reference`); nothing is scored here. Rows τL = 0 and τL = 5 with their
thresholds, TP, FP, FN, TPR and FDR; the markers in every view are coloured TP/FP/FN at the chosen level, and
pairs left out by the border margin are grey. It follows the edits live.
"""

from __future__ import annotations

import math
from typing import Optional

from PySide6 import QtCore, QtGui, QtWidgets

from app.core.annotation import SHOWN_LEVELS, ReferenceComparison
from app.ui.document import DocumentController
from app.ui.widgets import action_buttons, read_only_rows, um_spin

COLUMNS = ("Level", "τN / τG µm", "TP", "FP", "FN", "TPR", "FDR")


def _ratio(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3f}"


class EvaluationPanel(QtWidgets.QWidget):
    """Shows :attr:`DocumentController.comparison` and sets its options (level, border margin)."""

    def __init__(self, document: DocumentController, actions: dict[str, QtGui.QAction],
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.comparison")  # its stable id (app.ui.actions.PANELS)
        self.document = document
        self.title = QtWidgets.QLabel("No reference: Analysis ▸ Compare with reference…")
        self.title.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(len(SHOWN_LEVELS), len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        read_only_rows(self.table, QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.table.setMaximumHeight(90)
        for row in range(len(SHOWN_LEVELS)):
            for column in range(len(COLUMNS)):
                item = QtWidgets.QTableWidgetItem("")
                item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(row, column, item)

        self.level = QtWidgets.QComboBox()
        for level in SHOWN_LEVELS:
            self.level.addItem(f"τL = {level}", level)
        self.level.setCurrentIndex(SHOWN_LEVELS.index(document.comparison_level))
        self.level.setToolTip("The level whose TP/FP/FN colour the markers")
        self.level.currentIndexChanged.connect(
            lambda _i: document.set_comparison_options(level=self.level.currentData()))
        self.border = um_spin(0.0, 100.0, document.border_margin_um,
                              "Pairs this close to the image's edge (in x or y) are left out, as in the paper "
                              "(7 µm); 0 scores every pair")
        self.border.valueChanged.connect(lambda v: document.set_comparison_options(border_margin_um=v))
        form = QtWidgets.QFormLayout()
        form.addRow("Colour markers at", self.level)
        form.addRow("Border margin", self.border)

        buttons = action_buttons(actions, ("reference", "evaluation_colours", "clear_reference"))
        self.notes = QtWidgets.QLabel()
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color: #888;")

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.notes)
        layout.addStretch(1)
        document.comparison_changed.connect(self.show_comparison)
        self.show_comparison(document.comparison)

    def cell(self, level: int, column: str) -> str:
        return self.table.item(SHOWN_LEVELS.index(level), COLUMNS.index(column)).text()

    def show_comparison(self, comparison: Optional[ReferenceComparison]) -> None:
        if comparison is None:
            self.title.setText("No reference: Analysis ▸ Compare with reference…")
            for row in range(self.table.rowCount()):
                for column in range(self.table.columnCount()):
                    self.table.item(row, column).setText("")
            self.notes.setText("")
            return
        score = comparison.score
        self.title.setText(f"<b>{len(self.document.model)}</b> pairs against <b>{self.document.reference_name}</b> "
                           f"({score.n_gt + score.n_gt_excluded} pairs) · {score.protocol.upper()} protocol")
        for row, level in enumerate(SHOWN_LEVELS):
            values = (f"τL = {level}", f"{score.tau_nucleus[level]:g} / {score.tau_golgi[level]:g}",
                      str(score.tp[level]), str(score.fp[level]), str(score.fn[level]),
                      _ratio(score.tpr[level]), _ratio(score.fdr[level]))
            for column, value in enumerate(values):
                item = self.table.item(row, column)
                item.setText(value)
                font = item.font()
                font.setBold(level == comparison.level)
                item.setFont(font)
        notes = []
        if score.border_excluded:
            notes.append(f"Border margin {self.document.border_margin_um:g} µm ({score.border_margin_voxels} voxels): "
                         f"{score.n_gt_excluded} reference and {score.n_pred_excluded} of these pairs left out "
                         "(grey markers).")
        notes.extend(score.warnings)
        self.notes.setText("<br>".join(notes))
