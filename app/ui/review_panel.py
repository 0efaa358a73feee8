"""The review panel: step through an image's predicted vectors, least confident first; accept, reject or correct.

A thin view over :mod:`app.core.review`: the predictions under review are pairs of the annotation model whose
source is ``predicted``; accepting makes them ``corrected`` (annotations that training uses), rejecting deletes
them, dragging an end in any view corrects them. Every step is on the one undo stack of annotation (Ctrl+Z).
The panel lists what is left to review, least confident first, with the counts; its buttons are the window's
actions (``cellpol.review.*``, keys Y accept, X reject, ] / [ next / previous, U next most uncertain in the
project), so the keys work from the image views too.

"Next most uncertain" looks across the whole project (:func:`app.core.review.most_uncertain`): it opens the
image holding the prediction the model is least sure of (saving the current one first), puts that image's
predictions up for review if they are not yet, and selects the pair.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6 import QtCore, QtGui, QtWidgets

from app.core import review
from app.core.errors import CellPolError
from app.core.pairs import read_pairs
from app.ui.document import DocumentController
from app.ui.state import ViewerState
from app.ui.widgets import action_buttons, fit_columns_when_filled, read_only_rows

COLUMNS = ("Score", "Nucleus (x, y, z)", "Length µm")
ID_ROLE = QtCore.Qt.ItemDataRole.UserRole + 1


class QueueModel(QtCore.QAbstractTableModel):
    """The predictions still to review, least confident first: a model over a list, so a thousand rows cost
    nothing until they are drawn (the view asks only for the visible ones)."""

    def __init__(self, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self.pairs: list[Any] = []
        self.scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def set_pairs(self, pairs: list[Any], scale: Any) -> None:
        self.beginResetModel()
        self.pairs, self.scale = list(pairs), tuple(scale or (1.0, 1.0, 1.0))
        self.endResetModel()

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(self.pairs)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: QtCore.Qt.Orientation,  # noqa: N802 - Qt's name
                   role: int = QtCore.Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == QtCore.Qt.Orientation.Horizontal and role == QtCore.Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QtCore.QModelIndex, role: int = QtCore.Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        pair = self.pairs[index.row()]
        if role == ID_ROLE:
            return pair.id
        if role != QtCore.Qt.ItemDataRole.DisplayRole:
            return None
        if index.column() == 0:
            return "—" if math.isnan(pair.score) else f"{pair.score:.3f}"
        if index.column() == 1:
            z, y, x = pair.nucleus
            return f"{x:.0f}, {y:.0f}, {z:.0f}"
        return f"{math.sqrt(sum(((g - n) * s) ** 2 for n, g, s in zip(pair.nucleus, pair.golgi, self.scale))):.1f}"

    def row_of(self, pair_id: Optional[int]) -> int:
        return next((row for row, pair in enumerate(self.pairs) if pair.id == pair_id), -1)


class ReviewPanel(QtWidgets.QWidget):
    """Review the open image's predictions (and jump across the project to the least certain ones).

    Parameters
    ----------
    state : ViewerState
        Its annotation model holds the pairs under review.
    document : DocumentController
        The open image, its project and how to read vectors files.
    actions : dict of QAction
        The window's actions; the panel's buttons are ``review_start``, ``accept``, ``reject``,
        ``previous_unreviewed``, ``next_unreviewed`` and ``next_uncertain``.
    open_image : callable
        ``open_image(path) -> bool``: open another project image (the window saves the current one first).
    """

    def __init__(self, state: ViewerState, document: DocumentController, actions: dict[str, QtGui.QAction],
                 open_image: Callable[[Path], bool], parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.review")
        self.state = state
        self.model = state.model
        self.document = document
        self._open_image = open_image
        self._actions = actions
        self.last_message = ""  # what the panel last said (in the status bar)

        self.title = QtWidgets.QLabel(objectName="cellpol.review.title")
        self.title.setWordWrap(True)
        self.counts = QtWidgets.QLabel(objectName="cellpol.review.counts")
        self.counts.setWordWrap(True)
        self.progress = QtWidgets.QProgressBar(objectName="cellpol.review.progress")
        self.progress.setFormat("%v of %m reviewed")
        self.queue_model = QueueModel(self)
        self.table = QtWidgets.QTableView(objectName="cellpol.review.queue")
        self.table.setModel(self.queue_model)
        read_only_rows(self.table, QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(True)
        fit_columns_when_filled(self.table)  # rebuilt after every decision: measured once per fill, not per change
        self.table.clicked.connect(lambda index: self._go_to_row(index.row()))
        self.help = QtWidgets.QLabel(
            "<span style='color:#888'>Least confident first. <b>Y</b> accept · <b>X</b> reject · drag an end in a "
            "view to correct · <b>]</b> / <b>[</b> next / previous · <b>U</b> next most uncertain in the project · "
            "Ctrl+Z undoes any of them. Accepted and corrected vectors are annotations that training uses.</span>")
        self.help.setWordWrap(True)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.title)
        layout.addLayout(action_buttons(actions, ("review_start", "next_uncertain")))
        layout.addWidget(self.progress)
        layout.addWidget(self.counts)
        layout.addLayout(action_buttons(actions, ("accept", "reject", "previous_unreviewed", "next_unreviewed")))
        layout.addWidget(self.table, 1)
        layout.addLayout(action_buttons(actions, ("reject_below",)))
        layout.addWidget(self.help)

        self._refresh_pending = False
        state.pairs_changed.connect(self._schedule_refresh)
        state.selection_changed.connect(lambda _ids: self._mark_selection())
        document.document_changed.connect(self.refresh)
        self.refresh()

    # --- what is shown ------------------------------------------------------------------------
    def _schedule_refresh(self, *_args: Any) -> None:
        """Many edits in a row (a drag) rebuild the list once, after the event loop turns."""
        if not self._refresh_pending:
            self._refresh_pending = True
            QtCore.QTimer.singleShot(0, self.refresh)

    def refresh(self) -> None:
        self._refresh_pending = False
        counts = review.model_counts(self.model)
        name = self.document.image_path.name if self.document.image_path is not None else None
        if self.state.volume is None:
            self.title.setText("Open an image to review its predictions.")
        elif counts.total:
            self.title.setText(f"Reviewing the predictions of <b>{name or 'this image'}</b>")
        else:
            self.title.setText(f"No predictions of <b>{name or 'this image'}</b> to review: <i>Review this "
                               "image</i> takes them from the project's results, or predict it (Analysis ▸ Predict…).")
        self.progress.setRange(0, max(counts.total, 1))
        self.progress.setValue(counts.reviewed if counts.total else 0)
        self.counts.setText(f"{counts.accepted} accepted or corrected · {counts.rejected} rejected · "
                            f"{counts.remaining} left" if counts.total else "")
        self.queue_model.set_pairs([self.model.get(i) for i in review.queue(self.model)], self.model.voxel_size)
        self._mark_selection()

    def _mark_selection(self) -> None:
        row = self.queue_model.row_of(self.current())
        if row < 0:
            self.table.clearSelection()
            return
        self.table.selectRow(row)
        self.table.scrollTo(self.queue_model.index(row, 0))

    def queue(self) -> list[int]:
        """Ids still to review, in the order shown (least confident first)."""
        return review.queue(self.model)

    def current(self) -> Optional[int]:
        """The prediction being reviewed: the selected predicted pair, if any."""
        selection = [i for i in self.model.selection if i in self.model
                     and self.model.get(i).source == review.PREDICTED]
        return selection[-1] if selection else None

    # --- stepping -------------------------------------------------------------------------------
    def go_to(self, pair_id: Optional[int]) -> Optional[int]:
        """Select a pair and centre the views on its nucleus."""
        if pair_id is None or pair_id not in self.model:
            return None
        self.model.select([pair_id])
        self.state.set_cursor(self.model.get(pair_id).nucleus)
        return pair_id

    def _go_to_row(self, row: int) -> None:
        if 0 <= row < len(self.queue_model.pairs):
            self.go_to(self.queue_model.pairs[row].id)

    def step(self, step: int = 1) -> Optional[int]:
        """The next (or previous) prediction to review."""
        return self.go_to(review.next_in_queue(self.model, self.current(), step))

    def accept(self) -> Optional[int]:
        """Accept the current prediction (the least confident if none is selected); go to the next one."""
        return self._decide(review.accept, "Accepted")

    def reject(self) -> Optional[int]:
        """Reject the current prediction (the least confident if none is selected); go to the next one."""
        return self._decide(review.reject, "Rejected")

    def reject_below(self) -> int:
        """Reject every prediction still to review that the score threshold hides (one undoable step)."""
        threshold = self.state.score_threshold
        ids = review.below(self.model, threshold)
        if not ids:
            self._say(f"No prediction to review scores below {threshold:.2f}: move the Predict panel's score "
                      "slider to choose the threshold." if threshold <= 0 else
                      f"No prediction to review scores below {threshold:.2f}.")
            return 0
        review.reject(self.model, ids)
        self._say(f"Rejected {len(ids)} predictions scoring below {threshold:.2f}. Ctrl+Z takes them back.")
        return len(ids)

    def _decide(self, decide: Callable[..., int], verb: str) -> Optional[int]:
        target = self.current()
        if target is None:
            target = review.next_in_queue(self.model, None)
        if target is None:
            self._say("Nothing left to review on this image: U jumps to the next most uncertain in the project.")
            return None
        following = review.next_in_queue(self.model, target)
        decide(self.model, [target])
        self._say(f"{verb}. Ctrl+Z takes it back.")
        return self.go_to(following if following != target else None)

    # --- putting predictions up for review ----------------------------------------------------
    def predictions_path(self) -> Optional[Path]:
        """The open image's predictions in its project (``None`` outside a project or when there are none)."""
        project, image = self.document.project, self.document.image_path
        if project is None or image is None or not project.contains(image):
            return None
        path = project.predictions_path(image)
        return path if path.is_file() else None

    def start(self) -> Optional[int]:
        """Review this image: put its project predictions up for review if they are not yet, go to the first."""
        if self.state.volume is None:
            self._say("Open an image first.")
            return None
        if not review.queue(self.model):
            path = self.predictions_path()
            if path is None or review.model_counts(self.model).total:
                self._say("Nothing to review on this image: predict it first (Analysis ▸ Predict…)."
                          if not review.model_counts(self.model).total else
                          "Every prediction of this image is reviewed.")
                return None
            if not self.put_up(path):
                return None
        return self.step(0) if self.current() is None else self.current()

    def put_up(self, path: Path) -> bool:
        """Add the predictions of ``path`` to the open image's annotations for review (one undoable step)."""
        added = put_up_file(self.document, path)
        if added:
            self._say(f"{added} predictions to review, least confident first.")
        return added is not None

    def next_uncertain(self) -> Optional[int]:
        """Jump to the least confident unreviewed prediction of the whole project (this image outside one)."""
        project = self.document.project
        if project is None:
            return self.start()
        live = (self.document.image_path, self.model) if self.document.image_path is not None else None
        try:
            found = review.most_uncertain(project, live=live)
        except (CellPolError, OSError) as exc:
            self.document.warn("Cannot look through the project", str(exc))
            return None
        if found is None:
            self._say("Every prediction of the project is reviewed. Predict more images, or retrain with the "
                      "corrections.")
            return None
        image = self.document.image_path
        if image is None or found.image.resolve() != image.resolve():
            if not self._open_image(found.image):
                return None
        if not found.put_up or not review.is_under_review(self.model):
            path = self.predictions_path()
            if path is not None and not self.put_up(path):
                return None
        pair_id = review.find_pair(self.model, found.nucleus, found.golgi)
        score = "no score" if math.isnan(found.score) else f"score {found.score:.2f}"
        self._say(f"Least certain in the project: {found.image.name}, {score}.")
        return self.go_to(pair_id if pair_id is not None else review.next_in_queue(self.model, None))

    def _say(self, text: str) -> None:
        window = self.window()
        if isinstance(window, QtWidgets.QMainWindow):
            window.statusBar().showMessage(text, 6000)
        self.help.setToolTip(text)
        self.last_message = text


def put_up_file(document: DocumentController, path: str | Path) -> Optional[int]:
    """Add the predictions file ``path`` to the open image's annotations for review (one undoable step).

    Returns how many were added: 0 when this file's predictions are already there (an image reopened), ``None``
    when it cannot be read (the user was told why).
    """
    path = Path(path)
    model = document.model
    if path.name in review.review_meta(model.meta).get("from", []):
        return 0
    try:
        pairs = read_pairs(path, voxel_size=document.state.volume.voxel_size)
    except CellPolError as exc:
        document.warn("Cannot read the predictions", str(exc))
        return None
    return len(review.add_for_review(model, pairs, origin=path.name, text=f"review {path.name}"))
