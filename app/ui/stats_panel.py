"""The Statistics panel: polarity statistics of the open image, the selected vectors or the whole project by group.

A thin view over :mod:`app.core.stats`: the panel gathers the vectors (the open image's from the live annotation
model, the rest from the project's files), and a worker computes the table, the summaries, the between-group tests
and the figures (:func:`compute`); the panel shows the numbers and the rose plot, elevation histogram and
equal-area plot as images drawn by :mod:`app.core.stats.figures` (the same figures the export and ``cellpol stats``
write). It recomputes shortly after the vectors, the selection, the score threshold, the reference or the groups
change. Predictions still to review count only when their score reaches the Predict panel's threshold, as the
views show them.

The reference (an axis, e.g. the flow, or a point, e.g. the optic nerve head, picked with a click) is drawn in the
slice views. **Export…** writes the same files as the command (tables with provenance, figures, report) through a
job in the Jobs dock.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.core.jobs import CancelToken, PauseToken, Progress
from app.core.stats.tables import format_value
from app.ui.document import DocumentController
from app.ui.state import ViewerState
from app.ui.widgets import read_only_rows
from app.ui.workers import run_in_thread

SCOPES = (("image", "This image"), ("selection", "Selected vectors"), ("project", "Project, by group"))
REFERENCES = (("", "None"), ("axis", "Axis (a direction x, y, z)"), ("point", "Point (x, y, z voxels)"))
SUMMARY_COLUMNS = (("name", "Image / group"), ("n", "n"), ("mean_resultant_length", "R̄ 3D"),
                   ("rayleigh_3d_p", "Rayleigh p 3D"), ("circular_mean_deg", "Mean azimuth °"),
                   ("polarity_index", "Polarity index"), ("rayleigh_p", "Rayleigh p 2D (cells)"),
                   ("rayleigh_units_p", "Rayleigh p 2D (images)"), ("v_test_p", "V-test p"))
#: What each column means, for its header's tooltip.
SUMMARY_TIPS = {
    "mean_resultant_length": "Mean resultant length of the 3D directions: 0 = no common direction, 1 = all alike",
    "rayleigh_3d_p": "3D Rayleigh test of uniform directions (— where every vector lies in the image plane)",
    "circular_mean_deg": "Mean in-plane direction, from +x counter-clockwise as displayed",
    "polarity_index": "In-plane mean resultant length (Polarity-JaM's polarity index)",
    "rayleigh_p": "Rayleigh test on the cells: for a group it treats every cell as independent (too small a p "
                  "when images differ)",
    "rayleigh_units_p": "Rayleigh test on one mean direction per image (or animal): the one to quote for a group",
    "v_test_p": "V-test: do the cells point along the reference (— without a reference)?",
}
NO_GROUP = "(no group)"
#: Resamples and permutations while the panel follows the edits (the export uses the command's defaults).
LIVE_BOOT, LIVE_PERM = 300, 1000


@dataclass
class Snapshot:
    """What the worker needs, gathered on the GUI thread (plain data: the live model's pairs are a copy)."""

    scope: str
    live: list[Any] = field(default_factory=list)          # ImageVectors made from the open image
    files: list[tuple[Path, str, str]] = field(default_factory=list)  # (vectors file, image name, group)
    threshold: float = 0.0
    reference: Any = None                                 # app.core.stats.Reference or None
    voxel_size: Optional[tuple[float, float, float]] = None


@dataclass
class Computed:
    table: Any
    summaries: list[Any]
    tests: list[Any]
    images: list[Any]
    pictures: dict[str, bytes]
    notes: list[str]


def _keep(pairs: Any, threshold: float) -> Any:
    """The pairs the views show: predictions still to review only when they score at least ``threshold``."""
    sources = np.array([str(s) for s in pairs.sources], dtype=object)
    scores = np.asarray(pairs.scores, dtype=float)
    hidden = (sources == "predicted") & np.isfinite(scores) & (scores < threshold)
    return pairs.subset(~hidden)


def compute(snapshot: Snapshot, n_boot: int = LIVE_BOOT, n_perm: int = LIVE_PERM,
            pictures: bool = True) -> Computed:
    """The statistics of a :class:`Snapshot` (runs in a worker: reads files, computes, draws)."""
    from app.core.errors import CellPolError
    from app.core.pairs import read_pairs
    from app.core.stats import ImageVectors, compare_groups, summarize, vector_table

    images = list(snapshot.live)
    notes: list[str] = []
    for path, name, group in snapshot.files:
        try:
            pairs = read_pairs(path, voxel_size=None)
        except CellPolError as exc:
            notes.append(f"{name}: left out ({exc})")
            continue
        if pairs.voxel_size is None:
            if snapshot.voxel_size is None:
                notes.append(f"{name}: left out (its vectors file records no voxel size)")
                continue
            pairs = pairs.with_voxel_size(snapshot.voxel_size)
        images.append(ImageVectors(name, _keep(pairs, snapshot.threshold), path, group or NO_GROUP, name))
    images = [image for image in images if len(image.pairs)]
    if not images:
        raise CellPolError("No vectors to measure: annotate or predict some first.")
    reference = snapshot.reference
    table = vector_table(images, reference=reference)
    by = "group" if snapshot.scope == "project" else "image"
    summaries = summarize(table, by=by, n_boot=n_boot)
    if snapshot.scope == "project":  # the groups first, then their images
        summaries = summaries + summarize(table, by="image", n_boot=0)
    tests = compare_groups(table, n_perm=n_perm) if snapshot.scope == "project" else []
    drawn: dict[str, bytes] = {}
    if pictures:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from app.core.stats.figures import table_figures

        for name, figure in table_figures(table).items():
            if name == "lengths":
                continue
            FigureCanvasAgg(figure)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=72)
            drawn[name] = buffer.getvalue()
    return Computed(table, summaries, tests, images, drawn, notes)


class StatsPanel(QtWidgets.QWidget):
    """Polarity statistics in the window (see the module docstring).

    Parameters
    ----------
    state : ViewerState
    document : DocumentController
        The open image and project.
    start_job : callable
        The window's ``start_job(title, factory, can_pause=False)`` (the export runs as a job).
    """

    computed = QtCore.Signal(object)  # Computed, after each update

    def __init__(self, state: ViewerState, document: DocumentController, start_job: Callable[..., Any],
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.stats")
        self.state = state
        self.document = document
        self._start_job = start_job
        self.result: Optional[Computed] = None
        self.error = ""
        self._worker: Any = None
        self._again = False

        self.scope = QtWidgets.QComboBox(objectName="cellpol.stats.scope")
        for key, text in SCOPES:
            self.scope.addItem(text, key)
        self.reference_kind = QtWidgets.QComboBox(objectName="cellpol.stats.reference")
        for key, text in REFERENCES:
            self.reference_kind.addItem(text, key)
        self.reference_kind.setToolTip("Axis: one direction for every cell (e.g. the flow), x to the right, y down "
                                       "the rows, z deeper. Point: each cell's reference is the direction from the "
                                       "point to its nucleus (e.g. the optic nerve head: radial polarity).")
        self.xyz = []
        for axis in "xyz":
            spin = QtWidgets.QDoubleSpinBox(objectName=f"cellpol.stats.reference_{axis}")
            spin.setRange(-1e6, 1e6)
            spin.setDecimals(2)
            spin.setPrefix(f"{axis} ")
            self.xyz.append(spin)
        self.xyz[0].setValue(1.0)
        self.pick_button = QtWidgets.QPushButton("Pick on image", objectName="cellpol.stats.pick")
        self.pick_button.setToolTip("Click the reference point in a slice view (Esc cancels)")
        self.pick_button.clicked.connect(self.pick_point)

        self.groups = QtWidgets.QTableWidget(0, 2, objectName="cellpol.stats.groups")
        self.groups.setHorizontalHeaderLabels(["Image", "Group (condition)"])
        self.groups.verticalHeader().setVisible(False)
        self.groups.horizontalHeader().setStretchLastSection(True)
        self.groups.setMaximumHeight(140)
        self.groups.itemChanged.connect(self._group_edited)
        self.summary = QtWidgets.QTableWidget(0, len(SUMMARY_COLUMNS), objectName="cellpol.stats.summary")
        self.summary.setHorizontalHeaderLabels([title for _key, title in SUMMARY_COLUMNS])
        for column, (key, _title) in enumerate(SUMMARY_COLUMNS):
            if key in SUMMARY_TIPS:
                self.summary.horizontalHeaderItem(column).setToolTip(SUMMARY_TIPS[key])
        read_only_rows(self.summary, QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.summary.setMinimumHeight(90)
        self.summary.setMaximumHeight(200)
        self.tests = QtWidgets.QLabel(objectName="cellpol.stats.tests")
        self.tests.setWordWrap(True)
        self.tests.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.pictures: dict[str, QtWidgets.QLabel] = {}
        pictures = QtWidgets.QWidget()
        grid = QtWidgets.QVBoxLayout(pictures)
        grid.setContentsMargins(0, 0, 0, 0)
        for name in ("rose", "equal_area", "elevation"):
            label = QtWidgets.QLabel(objectName=f"cellpol.stats.{name}")
            label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
            label.setMinimumHeight(220)
            self.pictures[name] = label
            grid.addWidget(label)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(pictures)
        self.export_button = QtWidgets.QPushButton("Export…", objectName="cellpol.stats.export")
        self.export_button.setToolTip("Write the tables (with provenance), the figures and the report into a folder, "
                                      "as `cellpol stats` does")
        self.export_button.clicked.connect(self._export_dialog)
        self.status = QtWidgets.QLabel(objectName="cellpol.stats.status")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #888;")

        form = QtWidgets.QFormLayout()
        form.addRow("Vectors of", self.scope)
        form.addRow("Reference", self.reference_kind)
        row = QtWidgets.QHBoxLayout()
        for spin in self.xyz:
            row.addWidget(spin)
        row.addWidget(self.pick_button)
        form.addRow("", row)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(form)
        layout.addWidget(self.groups)
        layout.addWidget(self.summary)
        layout.addWidget(self.tests)
        layout.addWidget(scroll, 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.status, 1)
        row.addWidget(self.export_button)
        layout.addLayout(row)

        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(400)
        self._timer.timeout.connect(self.update_now)
        self.scope.currentIndexChanged.connect(lambda _i: self._scope_changed())
        self.reference_kind.currentIndexChanged.connect(lambda _i: self._reference_changed())
        for spin in self.xyz:
            spin.valueChanged.connect(lambda _v: self._reference_changed())
        state.pairs_changed.connect(self.schedule)
        state.overlay_changed.connect(self.schedule)  # the score threshold
        state.selection_changed.connect(lambda _ids: self.schedule() if self.scope_key == "selection" else None)
        document.document_changed.connect(self._scope_changed)
        self._scope_changed()
        self._reference_changed()

    # --- settings -----------------------------------------------------------------------------
    @property
    def scope_key(self) -> str:
        return self.scope.currentData()

    def set_scope(self, key: str) -> None:
        self.scope.setCurrentIndex([k for k, _t in SCOPES].index(key))

    def reference(self) -> Any:
        """The :class:`app.core.stats.Reference` chosen, or ``None``."""
        from app.core.errors import CellPolError
        from app.core.stats import Reference

        kind = self.reference_kind.currentData()
        if not kind:
            return None
        try:
            return Reference(kind, tuple(spin.value() for spin in self.xyz))
        except CellPolError:
            return None  # e.g. an axis (0, 0, 0) while it is being typed

    def set_reference(self, kind: str, xyz: Sequence[float] = (1.0, 0.0, 0.0)) -> None:
        for spin, value in zip(self.xyz, xyz):
            spin.blockSignals(True)
            spin.setValue(float(value))
            spin.blockSignals(False)
        self.reference_kind.setCurrentIndex([k for k, _t in REFERENCES].index(kind))
        self._reference_changed()

    def _reference_changed(self) -> None:
        kind = self.reference_kind.currentData()
        for spin in self.xyz:
            spin.setEnabled(bool(kind))
        self.pick_button.setEnabled(kind == "point")
        reference = self.reference()
        self.state.set_polarity_reference(reference.kind if reference else None,
                                          reference.xyz if reference else None)
        self.schedule()

    def pick_point(self) -> None:
        """The next click in a slice view sets the reference point."""
        self.state.pick_next_click(self._picked)

    def _picked(self, voxel: Sequence[float]) -> None:
        z, y, x = voxel
        self.set_reference("point", (x, y, z))

    def _scope_changed(self) -> None:
        project = self.document.project
        self.groups.setVisible(self.scope_key == "project")
        if self.scope_key == "project":
            self.groups.blockSignals(True)
            images = project.images() if project is not None else []
            self.groups.setRowCount(len(images))
            for row, image in enumerate(images):
                name = QtWidgets.QTableWidgetItem(image.name)
                name.setFlags(name.flags() & ~QtCore.Qt.ItemFlag.ItemIsEditable)
                name.setData(QtCore.Qt.ItemDataRole.UserRole, str(image))
                self.groups.setItem(row, 0, name)
                self.groups.setItem(row, 1, QtWidgets.QTableWidgetItem(project.group_of(image)))
            self.groups.blockSignals(False)
        self.schedule()

    def set_group(self, image: str | Path, group: str) -> None:
        """Tag a project image with a group (what editing the Group column does)."""
        project = self.document.project
        if project is not None:
            project.set_group(image, group)
            self._scope_changed()

    def _group_edited(self, item: QtWidgets.QTableWidgetItem) -> None:
        if item.column() != 1 or self.document.project is None:
            return
        image = self.groups.item(item.row(), 0).data(QtCore.Qt.ItemDataRole.UserRole)
        self.document.project.set_group(image, item.text())
        self.schedule()

    # --- computing ----------------------------------------------------------------------------
    def schedule(self, *_args: Any) -> None:
        """Recompute shortly (edits in a row count once), while the panel is shown."""
        self._timer.start()

    def snapshot(self) -> Snapshot:
        """The vectors to measure, gathered now (on the GUI thread)."""
        from app.core.review import saved_annotations
        from app.core.stats import ImageVectors

        state, document, project = self.state, self.document, self.document.project
        snap = Snapshot(self.scope_key, threshold=state.score_threshold, reference=self.reference(),
                        voxel_size=state.voxel_size if state.volume is not None else None)
        live_name = document.image_path.name if document.image_path is not None else "image"
        group = project.group_of(document.image_path) if project is not None and document.image_path else ""
        if state.volume is not None and len(state.model):
            pairs = state.model.to_pairset()
            if snap.scope == "selection":
                chosen = set(state.model.selection)
                pairs = pairs.subset(np.array([int(i) in chosen for i in pairs.ids], dtype=bool))
            live_stem = Path(live_name).stem
            kept = _keep(pairs, snap.threshold)
            if len(kept):
                snap.live = [ImageVectors(live_stem, kept, document.vectors_path or Path(live_name),
                                          group or NO_GROUP, live_stem)]
        if snap.scope == "project" and project is not None:
            current = document.image_path.resolve() if document.image_path is not None else None
            if current is None or state.volume is None:
                snap.live = []
            for image in project.images():
                if current is not None and image.resolve() == current and snap.live:
                    continue
                path = saved_annotations(project.vectors_path(image))
                if path is None and project.predictions_path(image).is_file():
                    path = project.predictions_path(image)
                if path is not None:
                    snap.files.append((path, Path(image.name).stem, project.group_of(image)))
        return snap

    def update_now(self) -> None:
        """Recompute in a worker (one at a time: a change while it runs recomputes once more after)."""
        if not self.isVisible() and self.result is not None:
            return  # hidden: recompute when shown
        if self._worker is not None:
            self._again = True
            return
        snapshot = self.snapshot()
        if not snapshot.live and not snapshot.files:
            self._show_error("No vectors yet: annotate or predict some." if self.scope_key != "selection"
                             else "Select some vectors.")
            return
        self.status.setText("Computing…")
        self._worker = run_in_thread(compute, snapshot, on_result=self._show, on_error=self._failed,
                                     on_finished=self._finished)

    def _finished(self) -> None:
        self._worker = None
        if self._again:
            self._again = False
            self.update_now()

    def _failed(self, exc: BaseException) -> None:
        from app.core.errors import CellPolError
        from app.ui.applog import log_exception

        if isinstance(exc, CellPolError):
            self._show_error(str(exc))
        else:
            path = log_exception(exc, context="Statistics")
            self._show_error(f"Unexpected error ({type(exc).__name__}: {exc}); details in {path}.")

    def _show_error(self, text: str) -> None:
        self.error = text
        self.status.setText(text)
        self.summary.setRowCount(0)
        self.tests.setText("")
        for label in self.pictures.values():
            label.clear()

    def _show(self, result: Computed) -> None:
        self.result, self.error = result, ""
        self.summary.setRowCount(len(result.summaries))
        for r, summary in enumerate(result.summaries):
            for c, (key, _title) in enumerate(SUMMARY_COLUMNS):
                value = getattr(summary, key)
                if key == "name" and summary.level == "group":
                    value = f"{summary.name} (group)"
                item = QtWidgets.QTableWidgetItem(format_value(value))
                if summary.level == "group":
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.summary.setItem(r, c, item)
        lines = [f"<b>{t.name}</b> {t.groups[0]} vs {t.groups[1]}: p = {format_value(t.p)}"
                 + (f" <span style='color:#a60'>({t.caveat})</span>" if t.caveat else "") for t in result.tests]
        self.tests.setText("<br>".join(lines))
        for name, label in self.pictures.items():
            data = result.pictures.get(name)
            if data:
                image = QtGui.QImage.fromData(data, "PNG")
                label.setPixmap(QtGui.QPixmap.fromImage(image).scaledToWidth(
                    max(200, min(label.width(), image.width())), QtCore.Qt.TransformationMode.SmoothTransformation))
        n = len(result.table) if result.table is not None else 0
        self.status.setText(f"{n} vectors from {len(result.images)} image(s)."
                            + (" " + " ".join(result.notes) if result.notes else ""))
        self.computed.emit(result)

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self.schedule()

    # --- export -------------------------------------------------------------------------------
    def _export_dialog(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Export the statistics into a folder")
        if folder:
            self.export(folder)

    def export(self, folder: str | Path) -> Any:
        """Write the tables, figures and report of the current scope into ``folder`` (a job); the JobHandle."""
        snapshot = self.snapshot()
        if not snapshot.live and not snapshot.files:
            self._show_error("No vectors to export.")
            return None
        reference, threshold = snapshot.reference, snapshot.threshold

        def factory(cancel: CancelToken, pause: PauseToken) -> Any:
            from app.core.stats.command import stats_provenance, write_outputs

            yield Progress(0, 2, "computing the statistics")
            done = compute(snapshot, n_boot=2000, n_perm=5000, pictures=False)
            yield Progress(1, 2, "writing the tables, figures and report")
            provenance = stats_provenance(done.images, reference=reference, min_score=threshold or None)
            provenance["scope"] = snapshot.scope
            return write_outputs(done.table, done.summaries, done.tests, folder, provenance)

        handle = self._start_job("Export statistics", factory)
        handle.succeeded.connect(lambda paths: self.status.setText(f"Exported {len(paths)} files to {folder}."))
        return handle


__all__ = ["StatsPanel", "Snapshot", "Computed", "compute"]
