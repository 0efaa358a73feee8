"""The project panel: the images of the open project with their annotation status.

One row per image of ``images/``: name, shape and voxel size (from the file header), the pairs annotated
(the user's own and all), whether predictions exist in ``results/``, how many predictions are reviewed
(:mod:`app.core.review`), and the annotation state. Double-click
or Enter asks the window to open an image (:attr:`ProjectPanel.open_requested`); the window saves the
current annotations first. The row of the open image follows the annotation model live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6 import QtCore, QtGui, QtWidgets

from app.core.project import NOT_STARTED, SAVED, UNREADABLE, UNSAVED, ImageStatus, Project
from app.core.review import ReviewCounts
from app.ui.widgets import action_buttons, read_only_rows

COLUMNS = ("Image", "Shape Z×Y×X", "Voxel µm", "Pairs", "Predicted", "Reviewed", "Status")
STATUS_COLUMN = COLUMNS.index("Status")
PATH_ROLE = QtCore.Qt.ItemDataRole.UserRole + 1
_STATE_TEXT = {NOT_STARTED: "—", SAVED: "saved", UNSAVED: "unsaved", UNREADABLE: "unreadable"}
_STATE_COLOUR = {SAVED: "#3a9d5d", UNSAVED: "#d08a00", UNREADABLE: "#d04040"}


class _ImageTable(QtWidgets.QTableWidget):
    """A table where Enter/Return opens the current row on every platform (``activated`` does not on macOS)."""

    open_row = QtCore.Signal(int)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:
        if event.key() in (QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter) and self.currentRow() >= 0:
            self.open_row.emit(self.currentRow())
            event.accept()
            return
        super().keyPressEvent(event)


class ProjectPanel(QtWidgets.QWidget):
    """The images of a :class:`~app.core.project.Project` and their status."""

    open_requested = QtCore.Signal(object)  # Path

    def __init__(self, actions: dict[str, QtGui.QAction], parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.project")  # its stable id (app.ui.actions.PANELS)
        self.project: Optional[Project] = None
        self.current: Optional[Path] = None
        self.statuses: list[ImageStatus] = []

        self.title = QtWidgets.QLabel("No project open")
        self.title.setWordWrap(True)
        self.table = _ImageTable(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        read_only_rows(self.table, QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(lambda index: self._request(index.row()))
        self.table.open_row.connect(self._request)

        buttons = action_buttons(actions, ("previous_image", "next_image", "refresh_project"))
        self.summary = QtWidgets.QLabel()

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.title)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.summary)

    # --- contents ---------------------------------------------------------------------------
    def set_project(self, project: Optional[Project]) -> None:
        self.project = project
        self.refresh()

    def refresh(self) -> None:
        """Re-read the image list and every image's status from disk."""
        project = self.project
        self.statuses = project.statuses() if project is not None else []
        self.title.setText(f"<b>{project.name}</b><br><span style='color:#888'>{project.root}</span>"
                           if project is not None else "No project open")
        self.table.setRowCount(len(self.statuses))
        for row, status in enumerate(self.statuses):
            self._fill_row(row, status)
        self._mark_current()
        self._update_summary()

    def _fill_row(self, row: int, status: ImageStatus) -> None:
        shape = "×".join(str(s) for s in status.shape) if status.shape else "?"
        voxel = " × ".join(f"{v:g}" for v in status.voxel_size) if status.voxel_size else "?"
        pairs = f"{status.n_manual} / {status.n_pairs}" if status.n_pairs != status.n_manual else str(status.n_pairs)
        values = (status.name, shape, voxel, pairs if status.n_pairs else "0",
                  "yes" if status.has_predictions else "", status.review.text(),
                  _STATE_TEXT.get(status.state, status.state))
        for column, value in enumerate(values):
            item = self.table.item(row, column)
            if item is None:
                item = QtWidgets.QTableWidgetItem()
                self.table.setItem(row, column, item)
            item.setText(value)
            item.setData(PATH_ROLE, str(status.path))
            item.setToolTip(status.problem or str(status.path))
        self.table.item(row, 3).setToolTip(
            f"{status.n_manual} placed or corrected by hand, {status.n_pairs} in all" if status.n_pairs else "no pairs")
        if status.voxel_size is None:
            self.table.item(row, 2).setToolTip("No voxel size yet: asked when the image is opened")
        review = status.review
        self.table.item(row, COLUMNS.index("Reviewed")).setToolTip(
            f"{review.reviewed} of {review.total} predictions reviewed: {review.accepted} accepted or corrected, "
            f"{review.rejected} rejected" if review.total else "No predictions to review")
        colour = _STATE_COLOUR.get(status.state)
        self.table.item(row, STATUS_COLUMN).setForeground(QtGui.QBrush(QtGui.QColor(colour)) if colour else QtGui.QBrush())

    def row_of(self, path) -> int:
        """The row of an image (``-1`` if it is not in the project)."""
        if path is None:
            return -1
        target = Path(path).resolve()
        for row, status in enumerate(self.statuses):
            if status.path.resolve() == target:
                return row
        return -1

    def path_of(self, row: int) -> Path:
        return self.statuses[row].path

    def set_current(self, path) -> None:
        """Mark the open image (bold) and select its row."""
        self.current = Path(path) if path is not None else None
        self._mark_current()

    def _mark_current(self) -> None:
        current = self.row_of(self.current)
        for row in range(self.table.rowCount()):
            for column in range(self.table.columnCount()):
                item = self.table.item(row, column)
                font = item.font()
                font.setBold(row == current)
                item.setFont(font)
        if current >= 0:
            self.table.selectRow(current)
            self.table.scrollToItem(self.table.item(current, 0))
        elif self.project is not None:
            last = self.row_of(self.project.last_image)
            if last >= 0 and not self.table.selectedItems():
                self.table.selectRow(last)

    def update_image(self, path, n_pairs: int, n_manual: int, dirty: bool, saved_exists: bool,
                     review: Optional[ReviewCounts] = None) -> None:
        """Show an image's live annotation and review counts (no disk access: called after every edit).

        ``review`` ``None``: the image has no predictions under review; the row keeps what it read from disk.
        """
        row = self.row_of(path)
        if row < 0:
            return
        old = self.statuses[row]
        state = UNSAVED if dirty else (SAVED if saved_exists else NOT_STARTED)
        review = review if review is not None else old.review
        if (old.n_pairs, old.n_manual, old.state, old.review) == (n_pairs, n_manual, state, review):
            return
        old.n_pairs, old.n_manual, old.state, old.problem, old.review = n_pairs, n_manual, state, "", review
        self._fill_row(row, old)
        self._update_summary()

    def _update_summary(self) -> None:
        if self.project is None:
            self.summary.setText("")
            return
        annotated = sum(1 for s in self.statuses if s.n_pairs)
        pairs = sum(s.n_pairs for s in self.statuses)
        if not self.statuses:
            self.summary.setText(f"No images yet: put them in {self.project.folder('images')}.")
        else:
            total = sum(s.review.total for s in self.statuses)
            reviewed = sum(s.review.reviewed for s in self.statuses)
            text = f"{len(self.statuses)} images · {annotated} annotated · {pairs} pairs"
            self.summary.setText(text + (f" · {reviewed} of {total} predictions reviewed" if total else ""))

    def _request(self, row: int) -> None:
        if 0 <= row < len(self.statuses):
            self.open_requested.emit(self.statuses[row].path)
