"""The Evaluate panel: ground truth against one or more prediction sets, scored as the paper scores them.

A thin view over core: :func:`app.core.evaluate.evaluate_job` scores each set, :func:`app.core.evaluate.read_mistakes`
lists its false positives and misses, :data:`app.core.evaluate.CURVES` says which six curves are drawn and
:func:`app.core.evaluate.write_set_summaries` writes the CSV. The panel builds one job factory
(:func:`evaluate_sets_factory`, run by the window's ``start_job`` in a worker) that scores the sets in turn, then
draws the curves of every set side by side, the per-level table of one set, and the mistakes at a chosen level;
activating a mistake calls ``open_at`` to show the cell.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from app.core.errors import CancelledError, CellPolError
from app.core.evaluate import (
    CURVES,
    FALSE_POSITIVE,
    MAF_LEVELS,
    N_LEVELS,
    EvaluationResult,
    Mistake,
    Mistakes,
    curve_values,
    evaluate_job,
    find_image,
    read_mistakes,
    write_set_summaries,
)
from app.core.fileutil import atomic_path
from app.core.jobs import CancelToken, JobEvent, JobWarning, PauseToken, Progress, Result, check_cancel
from app.ui.widgets import read_only_rows, show_progress, um_spin

JobFactory = Callable[[CancelToken, PauseToken], Iterator[JobEvent]]

#: Label of the set "Add project predictions" adds (the project's ``results/``).
PROJECT_RESULTS_LABEL = "project results"
#: The per-level table: header and the key of :meth:`EvaluationResult.summary_rows` it shows.
TABLE_COLUMNS = (
    ("τL", "level"), ("MAF", "maf"), ("τN / τG µm", "tau_nucleus_um/tau_golgi_um"), ("TP", "tp"), ("FP", "fp"),
    ("FN", "fn"), ("TPR", "tpr"), ("FDR", "fdr"), ("cos", "cos_mean"), ("error µm", "error_mean_um"),
    ("ND µm", "nd_mean_um"), ("GD µm", "gd_mean_um"),
)
_THREE_DIGITS = ("maf", "tpr", "fdr", "cos_mean")
MISTAKE_COLUMNS = ("Set", "Image", "Kind", "Score", "Nucleus x, y, z")
#: The mistakes list shows at most this many rows (the count says how many there are).
MAX_MISTAKE_ROWS = 2000
#: One colour per set, in the order the sets are listed (then again).
SET_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")
#: Progress units per set (a set's images are spread over them).
_UNITS = 1000
_ROLE = QtCore.Qt.ItemDataRole.UserRole
#: Room left around a plot's y range (a fraction of it), so that its ends and their tick labels show.
_Y_PADDING = 0.06


# ------------------------------------------------------------------------------------------
# The job (what runs in the worker): every set in turn
# ------------------------------------------------------------------------------------------
@dataclass
class SetOutcome:
    """How one prediction set fared: its result and its mistakes, or why it could not be scored."""

    label: str
    folder: Path
    result: Optional[EvaluationResult] = None
    mistakes: Optional[Mistakes] = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)


def evaluate_sets_factory(gt_dir: Path, sets: Sequence[tuple[str, Path]], *, images_dir: Optional[Path] = None,
                          border_margin_um: float = 7.0) -> JobFactory:
    """A factory for the job scoring every ``(label, folder)`` of ``sets`` against ``gt_dir`` in turn.

    Its result is ``{label: SetOutcome}`` in the order of ``sets``. A set that cannot be scored (a
    :class:`CellPolError`: no predictions, mismatched sizes, …) has its reason in :attr:`SetOutcome.error` (also
    a :class:`JobWarning`) and the others go on; cancelling stops between images and between sets.
    """
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        outcomes: dict[str, SetOutcome] = {}
        for k, (label, folder) in enumerate(sets):
            check_cancel(cancel)
            outcome = outcomes[label] = SetOutcome(label, Path(folder))
            yield Progress(k * _UNITS, len(sets) * _UNITS, f"{label}: scoring")
            try:
                job = evaluate_job(gt_dir, folder, border_margin_um=border_margin_um, cancel=cancel,
                                   images_dir=images_dir)
                outcome.result = yield from _relay(job, outcome, k, len(sets))
                outcome.mistakes = read_mistakes(outcome.result, gt_dir, folder)
            except CancelledError:
                raise
            except CellPolError as exc:
                outcome.result, outcome.error = None, str(exc)
                yield JobWarning(f"{label}: {exc}")
        scored = sum(o.result is not None for o in outcomes.values())
        yield Result(outcomes, f"{scored} of {len(outcomes)} set(s) scored")
        return outcomes
    return factory


def _relay(job: Iterator[JobEvent], outcome: SetOutcome, k: int, n_sets: int) -> Iterator[JobEvent]:
    """Pass on the events of one set's job, its progress scaled into the set's share; return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress):
            share = event.done * _UNITS // event.total if event.total else 0
            yield Progress(k * _UNITS + share, n_sets * _UNITS, f"{outcome.label}: {event.message}")
        elif isinstance(event, JobWarning):
            outcome.warnings.append(event.message)
            yield JobWarning(f"{outcome.label}: {event.message}")


@contextlib.contextmanager
def _tolerant_svg_paths() -> Iterator[None]:
    """While exporting an SVG, drop the "Z" that closes a path before pyqtgraph reads the path data.

    pyqtgraph's SVGExporter (0.14) reads the path data Qt writes as "x,y" pairs and fails on the "Z" that Qt 6
    writes to close a path (every plot has one; pyqtgraph issue #3485). Qt closes a subpath with a line back to its
    start, so without the "Z" only the join at that corner differs. Main thread only (it swaps a module function).
    """
    module = importlib.import_module("pyqtgraph.exporters.SVGExporter")
    original = getattr(module, "correctCoordinates", None)
    if original is None:  # a pyqtgraph that no longer has it
        yield
        return

    def tolerant(node: Any, defs: Any, item: Any, options: Any) -> Any:
        for element in node.getElementsByTagName("path"):
            element.setAttribute("d", re.sub(r"\s*[Zz]\s*", " ", element.getAttribute("d")).strip())
        return original(node, defs, item, options)

    module.correctCoordinates = tolerant
    try:
        yield
    finally:
        module.correctCoordinates = original


def _cell(value: Any, key: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.3f}" if key in _THREE_DIGITS else f"{value:.2f}"
    return str(value)


def _splitter(orientation: QtCore.Qt.Orientation,
              *parts: tuple[QtWidgets.QWidget, int, int]) -> QtWidgets.QSplitter:
    """A splitter of ``(widget, stretch factor, initial size in pixels)`` parts."""
    splitter = QtWidgets.QSplitter(orientation)
    for index, (widget, stretch, _size) in enumerate(parts):
        splitter.addWidget(widget)
        splitter.setStretchFactor(index, stretch)
    splitter.setSizes([size for _widget, _stretch, size in parts])
    return splitter


def _box(title: str, label: str, chooser: QtWidgets.QWidget, *widgets: QtWidgets.QWidget) -> QtWidgets.QGroupBox:
    """A titled box: ``label`` and ``chooser`` on one row, then ``widgets`` one under the other."""
    box = QtWidgets.QGroupBox(title)
    layout = QtWidgets.QVBoxLayout(box)
    row = QtWidgets.QHBoxLayout()
    row.addWidget(QtWidgets.QLabel(label))
    row.addWidget(chooser, 1)
    layout.addLayout(row)
    for widget in widgets:
        layout.addWidget(widget)
    return box


# ------------------------------------------------------------------------------------------
# The panel
# ------------------------------------------------------------------------------------------
class EvaluatePanel(QtWidgets.QWidget):
    """Score prediction sets against ground truth; curves, per-level table, mistakes, exports.

    Parameters
    ----------
    start_job : callable
        ``start_job(title, factory, can_pause=False) -> JobHandle`` (the window's, :func:`app.ui.workers.start_job`).
    open_at : callable
        ``open_at(image, position_zyx)``: show the cell at ``position_zyx`` (voxels) of ``image``, the image's
        :class:`~pathlib.Path` when the images folder holds it, else its stem (a ``str``).
    get_project : callable, optional
        ``get_project() -> Project or None``: an open project gives the defaults (ground truth ``annotations/``,
        images ``images/``) and the set "project results" (``results/``).

    Attributes
    ----------
    results : dict of str to EvaluationResult
        The sets scored by the last evaluation, by label.
    outcomes : dict of str to SetOutcome
        Every set of the last evaluation, scored or not.
    plots : dict of str to pyqtgraph.PlotItem
        The six plots, by title (:data:`app.core.evaluate.CURVES`).
    curves : dict of str to list of pyqtgraph.PlotDataItem
        The curves drawn in each plot (one per scored set), by title.
    handle : JobHandle or None
        The running evaluation.
    """

    def __init__(self, start_job: Callable[..., Any], open_at: Callable[[Any, tuple[float, float, float]], None],
                 get_project: Callable[[], Any] = lambda: None,
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.evaluate")
        self._start_job = start_job
        self._open_at = open_at
        self._get_project = get_project
        self.handle: Any = None
        self.results: dict[str, EvaluationResult] = {}
        self.outcomes: dict[str, SetOutcome] = {}
        self.warnings: list[str] = []
        self._shown_mistakes: list[tuple[str, Mistake]] = []

        controls = self._build_controls()
        results = self._build_results()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(_splitter(QtCore.Qt.Orientation.Horizontal, (controls, 0, 280), (results, 1, 1000)))
        self.use_project_defaults()

    # --- building ------------------------------------------------------------------------------------------
    def _folder_row(self, name: str, placeholder: str, title: str) -> tuple[QtWidgets.QLineEdit, QtWidgets.QLayout]:
        edit = QtWidgets.QLineEdit(objectName=f"cellpol.evaluate.{name}")
        edit.setPlaceholderText(placeholder)
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(edit, title))
        row = QtWidgets.QHBoxLayout()
        row.addWidget(edit, 1)
        row.addWidget(browse)
        return edit, row

    def _build_controls(self) -> QtWidgets.QWidget:
        self.gt_edit, gt_row = self._folder_row("gt", "folder of <name>.vectors.csv", "Ground-truth vectors")
        self.images_edit, images_row = self._folder_row(
            "images", "optional", "Images the vectors were made on")
        self.images_edit.setToolTip("The images the vectors were made on: their sizes settle the border exclusion "
                                    "(else the vectors' sidecars do), and a mistake opens its image from here.")
        self.sets_list = QtWidgets.QListWidget(objectName="cellpol.evaluate.sets")
        self.sets_list.setToolTip("Each set is a folder of <name>.pred.vectors.csv; double-click a label to rename it")
        add = QtWidgets.QPushButton("Add folder…", objectName="cellpol.evaluate.add")
        add.clicked.connect(self._choose_set)
        self.add_project_button = QtWidgets.QPushButton("Add project predictions",
                                                        objectName="cellpol.evaluate.add_project")
        self.add_project_button.clicked.connect(self.add_project_predictions)
        remove = QtWidgets.QPushButton("Remove", objectName="cellpol.evaluate.remove")
        remove.clicked.connect(self._remove_selected)
        self.border_spin = um_spin(0.0, 100.0, 7.0, "Pairs this close to the image's edge (in x or y) are left out, "
                                   "as in the paper (7 µm); 0 scores every pair")
        self.border_spin.setObjectName("cellpol.evaluate.border")
        self.run_button = QtWidgets.QPushButton("Evaluate", objectName="cellpol.evaluate.run")
        self.run_button.clicked.connect(self.evaluate)
        self.cancel_button = QtWidgets.QPushButton("Cancel", objectName="cellpol.evaluate.cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QtWidgets.QProgressBar(objectName="cellpol.evaluate.progress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QtWidgets.QLabel("Choose the ground truth and add prediction sets.",
                                       objectName="cellpol.evaluate.status")
        self.status.setWordWrap(True)
        self.status.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop | QtCore.Qt.AlignmentFlag.AlignLeft)
        self.status.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)

        box = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.addWidget(QtWidgets.QLabel("Ground truth"))
        layout.addLayout(gt_row)
        layout.addWidget(QtWidgets.QLabel("Images"))
        layout.addLayout(images_row)
        layout.addWidget(QtWidgets.QLabel("Prediction sets"))
        layout.addWidget(self.sets_list, 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        layout.addLayout(row)
        layout.addWidget(self.add_project_button)
        form = QtWidgets.QFormLayout()
        form.addRow("Border margin", self.border_spin)
        layout.addLayout(form)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status, 1)
        return box

    def _build_results(self) -> QtWidgets.QWidget:
        # --- the six plots, one legend above them
        self.plot_layout = pg.GraphicsLayoutWidget()
        self.plot_layout.setObjectName("cellpol.evaluate.plots")
        self.plot_layout.setBackground("w")
        self.plot_layout.setMinimumHeight(360)
        # The legend is one line of text above the plots (a LegendItem keeps its size in a PNG exported larger).
        self.legend = pg.LabelItem("", justify="center")
        self.plot_layout.addItem(self.legend, row=0, col=0, colspan=3)
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, list[pg.PlotDataItem]] = {}
        ticks = [[(level, str(level)) for level in range(N_LEVELS)]]
        for index, (title, _key, y_range) in enumerate(CURVES):
            row, col = divmod(index, 3)
            plot = self.plot_layout.addPlot(row=row + 1, col=col, title=f"<span style='color:#222'>{title}</span>")
            plot.showGrid(x=True, y=True, alpha=0.25)
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(pg.mkPen("#555"))
                axis.setTextPen(pg.mkPen("#222"))
            plot.getAxis("bottom").setTicks(ticks)
            if row == 1:
                plot.setLabel("bottom", "level τL", color="#222")
            plot.setXRange(-0.4, N_LEVELS - 0.6, padding=0)
            if y_range is not None:
                plot.setYRange(*y_range, padding=_Y_PADDING)
            plot.setMouseEnabled(x=False, y=True)
            plot.hideButtons()
            self.plots[title] = plot
            self.curves[title] = []
        self.plot_layout.ci.layout.setRowStretchFactor(0, 0)
        export_row = QtWidgets.QHBoxLayout()
        export_row.addStretch(1)
        export_row.addWidget(QtWidgets.QLabel("Export:"))
        for kind, method in (("PNG", self.export_png), ("SVG", self.export_svg), ("CSV", self.export_csv)):
            button = QtWidgets.QPushButton(f"{kind}…", objectName=f"cellpol.evaluate.export_{kind.lower()}")
            button.setToolTip("The six plots" if kind != "CSV" else "The per-level table of every set (a 'set' column)")
            button.clicked.connect(lambda _checked=False, k=kind, m=method: self._export_dialog(k, m))
            export_row.addWidget(button)

        # --- the per-level table of one set
        self.table_set = QtWidgets.QComboBox(objectName="cellpol.evaluate.table_set")
        self.table_set.currentIndexChanged.connect(lambda _i: self._fill_table())
        self.table = QtWidgets.QTableWidget(0, len(TABLE_COLUMNS), objectName="cellpol.evaluate.table")
        self.table.setHorizontalHeaderLabels([name for name, _ in TABLE_COLUMNS])
        read_only_rows(self.table)
        table_box = _box("Per level", "Set", self.table_set, self.table)

        # --- the mistakes at a level
        self.level_combo = QtWidgets.QComboBox(objectName="cellpol.evaluate.level")
        for level in range(N_LEVELS):
            self.level_combo.addItem(f"τL = {level} (MAF {MAF_LEVELS[level]:.2f})", level)
        self.level_combo.currentIndexChanged.connect(lambda _i: self._fill_mistakes())
        self.mistakes_table = QtWidgets.QTableWidget(0, len(MISTAKE_COLUMNS), objectName="cellpol.evaluate.mistakes")
        self.mistakes_table.setHorizontalHeaderLabels(list(MISTAKE_COLUMNS))
        read_only_rows(self.mistakes_table, QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.mistakes_table.setToolTip("Double-click (or Enter) to show the cell")
        self.mistakes_table.cellActivated.connect(lambda row, _column: self.open_mistake(row))
        self.mistakes_count = QtWidgets.QLabel(objectName="cellpol.evaluate.mistakes_count")
        mistakes_box = _box("False positives and misses", "At", self.level_combo, self.mistakes_table,
                            self.mistakes_count)

        tables = _splitter(QtCore.Qt.Orientation.Horizontal, (table_box, 3, 580), (mistakes_box, 2, 420))
        top = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(top)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_layout, 1)
        layout.addLayout(export_row)
        return _splitter(QtCore.Qt.Orientation.Vertical, (top, 3, 540), (tables, 2, 340))

    # --- inputs --------------------------------------------------------------------------------------------
    def use_project_defaults(self) -> None:
        """Fill the empty ground-truth and images folders from the open project (``annotations/``, ``images/``)."""
        project = self._get_project()
        self.add_project_button.setEnabled(project is not None)
        if project is None:
            return
        if not self.gt_edit.text().strip():
            self.set_ground_truth(project.folder("annotations"))
        if not self.images_edit.text().strip():
            self.set_images_folder(project.folder("images"))

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # noqa: N802 - Qt's name
        self.use_project_defaults()
        super().showEvent(event)

    def set_ground_truth(self, folder: str | Path) -> None:
        self.gt_edit.setText(str(folder))

    def set_images_folder(self, folder: Optional[str | Path]) -> None:
        """The images the vectors were made on (``None``: none; the sidecars then give the sizes)."""
        self.images_edit.setText("" if folder is None else str(folder))

    @property
    def images_folder(self) -> Optional[Path]:
        text = self.images_edit.text().strip()
        return Path(text) if text else None

    def add_prediction_set(self, folder: str | Path, label: Optional[str] = None) -> str:
        """Add a folder of predictions as a set, labelled ``label`` (default: the folder's name; made unique).
        Returns the label."""
        folder = Path(folder)
        taken = {label_ for label_, _ in self.prediction_sets()}
        label = self._unique(label or folder.name or str(folder), taken)
        item = QtWidgets.QListWidgetItem(label)
        item.setData(_ROLE, str(folder))
        item.setToolTip(str(folder))
        item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsEditable)
        self.sets_list.addItem(item)
        return label

    def add_project_predictions(self) -> Optional[str]:
        """Add the open project's ``results/`` as the set "project results", and each model's predictions kept
        apart in ``results/<model>/`` (the Predict panel's "Keep each model's predictions apart") as a set named
        after the model, so models can be compared. Returns the first label added."""
        project = self._get_project()
        if project is None:
            self._say("Open a project first: its predictions are in its results folder.")
            return None
        results = project.folder("results")
        first = None
        if any(results.glob("*.vectors.csv")):
            first = self.add_prediction_set(results, PROJECT_RESULTS_LABEL)
        for folder in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
            if any(folder.glob("*.pred.vectors.csv")):
                label = self.add_prediction_set(folder, folder.name)
                first = first or label
        if first is None:
            first = self.add_prediction_set(results, PROJECT_RESULTS_LABEL)  # empty: its evaluation says so
        return first

    def prediction_sets(self) -> list[tuple[str, Path]]:
        """``(label, folder)`` of every set, in order; labels made unique."""
        sets: list[tuple[str, Path]] = []
        for index in range(self.sets_list.count()):
            item = self.sets_list.item(index)
            label = self._unique(item.text().strip() or Path(item.data(_ROLE)).name, {s for s, _ in sets})
            sets.append((label, Path(item.data(_ROLE))))
        return sets

    @staticmethod
    def _unique(label: str, taken: set[str]) -> str:
        candidate, n = label, 2
        while candidate in taken:
            candidate, n = f"{label} ({n})", n + 1
        return candidate

    def _browse(self, edit: QtWidgets.QLineEdit, title: str) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, title, edit.text())
        if folder:
            edit.setText(folder)

    def _choose_set(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "A folder of predictions (*.pred.vectors.csv)")
        if folder:
            self.add_prediction_set(folder)

    def _remove_selected(self) -> None:
        for item in self.sets_list.selectedItems():
            self.sets_list.takeItem(self.sets_list.row(item))

    # --- running -------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.handle is not None

    def evaluate(self) -> Any:
        """Score every prediction set against the ground truth in one job; returns its JobHandle (``None`` when
        there is nothing to do, with the reason in the status line)."""
        if self.busy:
            return None
        gt_text = self.gt_edit.text().strip()
        sets = self.prediction_sets()
        if not gt_text:
            self._say("Choose the ground-truth folder first.")
            return None
        if not sets:
            self._say("Add at least one prediction set.")
            return None
        gt_dir = Path(gt_text)
        factory = evaluate_sets_factory(gt_dir, sets, images_dir=self.images_folder,
                                        border_margin_um=float(self.border_spin.value()))
        self.warnings = []
        handle = self._start_job(f"Evaluate {len(sets)} set(s)", factory, can_pause=False)
        self.handle = handle
        handle.event.connect(self._event)
        handle.succeeded.connect(lambda outcomes: self._show_outcomes(gt_dir, outcomes))
        handle.failed.connect(self._failed)
        handle.cancelled.connect(lambda: self._say("Cancelled; the results shown are the previous ones."))
        handle.ended.connect(self._ended)
        self._set_running(True)
        self.progress.setRange(0, 0)
        self._say(f"Evaluating {len(sets)} set(s)…")
        return handle

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self._say("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _event(self, event: Any) -> None:
        if show_progress(self.progress, event, self._say):
            return
        if isinstance(event, JobWarning):
            self.warnings.append(event.message)

    def _failed(self, error: Any) -> None:
        if isinstance(error, CellPolError):
            self._say(f"Could not evaluate: {error}")
        else:  # a bug: say so briefly (the Jobs dock and the log keep the details)
            self._say(f"Evaluation failed unexpectedly ({type(error).__name__}: {error}).")

    def _ended(self) -> None:
        self.handle = None
        self._set_running(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)

    def _say(self, text: str) -> None:
        self.status.setText(text)

    # --- results -------------------------------------------------------------------------------------------
    def _show_outcomes(self, gt_dir: Path, outcomes: dict[str, SetOutcome]) -> None:
        self.outcomes = dict(outcomes)
        self.results = {label: o.result for label, o in outcomes.items() if o.result is not None}
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self._draw_curves()
        current = self.table_set.currentText()
        self.table_set.blockSignals(True)
        self.table_set.clear()
        self.table_set.addItems(list(self.results))
        self.table_set.blockSignals(False)
        if current in self.results:
            self.table_set.setCurrentText(current)
        self._fill_table()
        self._fill_mistakes()
        lines = [f"Scored {len(self.results)} of {len(outcomes)} set(s) against {gt_dir}."]
        for label, outcome in outcomes.items():
            if outcome.result is None:
                lines.append(f"{label}: not scored: {outcome.error}")
            else:
                result = outcome.result
                lines.append(f"{label}: {result.n_images} image(s), TPR {_cell(float(result.tpr[0]), 'tpr')} and "
                             f"FDR {_cell(float(result.fdr[0]), 'fdr')} at τL 0"
                             + (f", {len(outcome.warnings)} warning(s)" if outcome.warnings else ""))
        self._say("\n".join(lines))
        self.status.setToolTip("\n".join(self.warnings[:50]) if self.warnings else "")

    def _draw_curves(self) -> None:
        entries = []
        levels = np.arange(N_LEVELS, dtype=float)
        for title, key, y_range in CURVES:
            plot = self.plots[title]
            for curve in self.curves[title]:
                plot.removeItem(curve)
            self.curves[title] = []
            top = 0.0
            for index, (label, result) in enumerate(self.results.items()):
                colour = SET_COLOURS[index % len(SET_COLOURS)]
                values, _spread = curve_values(result, key)
                values = np.asarray(values, dtype=float)
                finite = np.isfinite(values)
                curve = plot.plot(levels[finite], values[finite], pen=pg.mkPen(colour, width=2), symbol="o",
                                  symbolSize=5, symbolBrush=colour, symbolPen=None, name=None)
                self.curves[title].append(curve)
                if title == CURVES[0][0]:
                    entries.append(f"<span style='color:{colour}'>\u2014\u25cf\u2014</span>&nbsp;"
                                   f"<span style='color:#222'>{html.escape(label)}</span>")
                if finite.any():
                    top = max(top, float(values[finite].max()))
            low, high = y_range if y_range is not None else (0.0, top * 1.1 if top > 0 else 1.0)
            plot.setYRange(low, high, padding=_Y_PADDING)
        self.legend.setText("&nbsp;&nbsp;&nbsp;&nbsp;".join(entries))

    def _fill_table(self) -> None:
        result = self.results.get(self.table_set.currentText())
        rows = result.summary_rows() if result is not None else []
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (_name, key) in enumerate(TABLE_COLUMNS):
                text = " / ".join(f"{row[part]:.1f}" for part in key.split("/")) if "/" in key else _cell(row[key], key)
                item = QtWidgets.QTableWidgetItem(text)
                item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)

    @property
    def level(self) -> int:
        """The level τL whose mistakes are listed."""
        return int(self.level_combo.currentData())

    def set_level(self, level: int) -> None:
        self.level_combo.setCurrentIndex(int(level))

    def mistakes_at(self, level: int) -> list[tuple[str, Mistake]]:
        """``(set label, mistake)`` of every scored set at ``level``, set by set."""
        return [(label, mistake) for label, outcome in self.outcomes.items() if outcome.mistakes is not None
                for mistake in outcome.mistakes.at(level)]

    def _fill_mistakes(self) -> None:
        found = self.mistakes_at(self.level)
        shown = found[:MAX_MISTAKE_ROWS]
        self._shown_mistakes = shown
        table = self.mistakes_table
        table.setUpdatesEnabled(False)
        table.setRowCount(len(shown))
        for r, (label, mistake) in enumerate(shown):
            z, y, x = mistake.nucleus
            cells = (label, mistake.image, mistake.kind, "" if math.isnan(mistake.score) else f"{mistake.score:.3f}",
                     f"{x:.1f}, {y:.1f}, {z:.1f}")
            for c, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                if c == 2:
                    item.setForeground(QtGui.QColor("#b03030" if mistake.kind == FALSE_POSITIVE else "#7a5a00"))
                table.setItem(r, c, item)
        table.setUpdatesEnabled(True)
        n_fp = sum(m.kind == FALSE_POSITIVE for _, m in found)
        text = f"{n_fp} false positive(s), {len(found) - n_fp} miss(es) at τL {self.level}"
        if len(found) > len(shown):
            text += f"; the first {len(shown)} listed"
        self.mistakes_count.setText(text if self.outcomes else "")

    def open_mistake(self, row: int) -> None:
        """Show the cell of the mistake in row ``row`` of the list: ``open_at(image path or stem, nucleus zyx)``."""
        if not 0 <= row < len(self._shown_mistakes):
            return
        _label, mistake = self._shown_mistakes[row]
        image = find_image(mistake.image, self.images_folder)
        self._open_at(image if image is not None else mistake.image, mistake.nucleus)

    # --- export --------------------------------------------------------------------------------------------
    def _exporter_scene(self) -> Any:
        if not self.results:
            raise CellPolError("Nothing to export yet: evaluate first.")
        return self.plot_layout.scene()

    def export_png(self, path: str | Path) -> Path:
        """Save the six plots as a PNG (twice the size on screen)."""
        from pyqtgraph.exporters import ImageExporter

        exporter = ImageExporter(self._exporter_scene())
        exporter.parameters()["width"] = int(max(self.plot_layout.width(), 600) * 2)
        image = exporter.export(toBytes=True)
        with atomic_path(path) as tmp:
            if not image.save(str(tmp), "PNG"):
                raise CellPolError(f"Could not write the PNG {path}.")
        return Path(path)

    def export_svg(self, path: str | Path) -> Path:
        """Save the six plots as an SVG (vector lines and text)."""
        from pyqtgraph.exporters import SVGExporter

        exporter = SVGExporter(self._exporter_scene())
        with _tolerant_svg_paths():
            data = exporter.export(toBytes=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(bytes(data))
        return Path(path)

    def export_csv(self, path: str | Path) -> Path:
        """Save the per-level rows of every scored set in one CSV (``set`` first, then the summary columns)."""
        self._exporter_scene()
        return write_set_summaries(self.results, path)

    def _export_dialog(self, kind: str, method: Callable[[Path], Path]) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, f"Export {kind}", f"evaluation.{kind.lower()}",
                                                        f"{kind} (*.{kind.lower()})")
        if not path:
            return
        try:
            written = method(Path(path))
        except CellPolError as exc:
            self._say(f"Could not export: {exc}")
        else:
            self._say(f"Wrote {written}")
