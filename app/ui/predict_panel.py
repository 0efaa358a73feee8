"""The prediction panel: choose a model, predict the open image or a folder, watch, cancel, filter by score.

A thin view over two core jobs (:mod:`app.core.jobs`): :meth:`Predictor.job` for the open image and
:func:`app.core.batch.predict_batch` for a folder. The panel only collects settings and builds a job *factory*
``factory(cancel, pause) -> Iterator[JobEvent]``; whoever constructs it supplies ``start_job`` (the window's, which
runs the factory in a worker thread and lists the job in the Jobs dock) and the callbacks that put results into
the rest of the window. Models (weights, torch) are loaded inside the factory, in the worker; the GUI thread only
reads the small JSON spec for the model card.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Signal

from app.core.jobs import CancelToken, JobEvent, PauseToken, Result
from app.ui.widgets import show_progress

STARTER_LABEL = "Starter models (3D/2D)"
CHOOSE_LABEL = "Choose file…"
COLUMNS = ("Image", "Vectors", "Mean length µm", "Seconds", "Status", "Error")
_PATHS_ROLE = QtCore.Qt.ItemDataRole.UserRole
_PROJECT_ROLE = QtCore.Qt.ItemDataRole.UserRole + 2

JobFactory = Callable[[CancelToken, PauseToken], Iterator[JobEvent]]


# ------------------------------------------------------------------------------------------
# Job factories (what runs in the worker): build the predictor there, then drive the core job.
# ------------------------------------------------------------------------------------------
def build_predictor(model: Optional[Path], device: str, options: Optional[dict[str, Any]] = None) -> Any:
    """The predictor for ``model`` (a ``.json``; ``None``: the bundled starters, 3D or 2D per image) on ``device``.

    Loads weights and imports torch: call it in a worker thread.
    """
    from app.core.inference import Predictor, StarterPredictor
    from app.ui.workers import freeze_heap

    freeze_heap("torch")  # torch's objects stay for the life of the app: no full collection scans them again
    options = dict(options or {})
    if model is None:
        return StarterPredictor(device, **options)
    return Predictor.from_files([model], device, **options)


def image_job_factory(model: Optional[Path], device: str, volume: Any,
                      options: Optional[dict[str, Any]] = None) -> JobFactory:
    """A factory for the job predicting one volume; its result is the :class:`~app.core.inference.Prediction`."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        predictor = build_predictor(model, device, options)
        return (yield from predictor.job(volume, cancel))
    return factory


def folder_job_factory(model: Optional[Path], device: str, folder: Path | Sequence[Path], out_dir: Path,
                       overwrite: bool, options: Optional[dict[str, Any]] = None) -> JobFactory:
    """A factory for the batch job over the images of ``folder`` (or over a list of image files); its result is
    the list of ``BatchRecord``."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        from app.core.batch import predict_batch
        from app.core.imageio import find_images

        images = find_images([folder]) if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
        predictor = build_predictor(model, device, options)
        provenance = predictor.provenance() if hasattr(predictor, "provenance") else None
        return (yield from predict_batch(images, out_dir, predictor, provenance=provenance, overwrite=overwrite,
                                         cancel=cancel))
    return factory


# ------------------------------------------------------------------------------------------
# The model card
# ------------------------------------------------------------------------------------------
def model_card(model: Optional[Path]) -> str:
    """A short plain-text card of ``model`` (``None``: the bundled starters) read from its JSON only."""
    from app.core.errors import CellPolError
    from app.core.modelfile import load_spec

    if model is None:
        from app.core.inference import starter_models

        found = starter_models()
        if not found:
            return "No starter model is installed (resources/models): choose a model file."
        return "\n\n".join(_card_lines(load_spec(path), path, f"{dims}D images") for dims, path in sorted(
            found.items(), reverse=True))
    try:
        return _card_lines(load_spec(model), Path(model), "")
    except CellPolError as exc:
        return f"Cannot use this model: {exc}"


def _card_lines(spec: Any, path: Path, serves: str) -> str:
    net = spec.network
    z, y, x = spec.voxel_size
    name = spec.name or path.stem
    lines = [f"{name}" + (f" ({serves})" if serves else "")]
    if spec.description:
        lines.append(spec.description)
    lines.append(f"Architecture: {net.architecture}, {net.spatial_dims}D, {net.levels} levels, "
                 f"{net.base_filters} base filters")
    lines.append(f"Trained at voxel size: {z:g} × {y:g} × {x:g} µm (z, y, x)")
    provenance = spec.provenance or {}
    trained_by = provenance.get("trained_by")
    if trained_by:
        text = str(trained_by)
        lines.append("Trained by: " + (text if len(text) <= 120 else text[:117] + "…"))
    average = provenance.get("weight_average")
    if isinstance(average, dict) and average.get("members"):
        lines.append("Weights: averaged, " + ", ".join(
            f"{weight:g} × {member}" for member, weight in zip(average["members"], average.get("weights", []))))
    if provenance.get("data"):
        lines.append(f"Data: {provenance['data']}")
    calibration = provenance.get("calibration")
    if isinstance(calibration, dict) and calibration.get("method"):
        lines.append(f"Calibration: {calibration['method']}")
    dec = spec.decoding
    lines.append(f"Decoding: peaks ≥ {dec.peak_threshold_nucleus:g} (nucleus) / {dec.peak_threshold_golgi:g} "
                 f"(Golgi), pairs ≤ {dec.max_pair_distance_um:g} µm")
    return "\n".join(lines)


def project_models(folder: Path) -> list[Path]:
    """The models in a project's ``models/`` folder: ``*.json`` model files there or one folder down (a training
    run's output), leaving out training checkpoints (``checkpoints/``, ``last``/``best``) and files that are not
    models. Newest first."""
    from app.core.errors import CellPolError
    from app.core.modelfile import load_spec

    if not folder.is_dir():
        return []
    found = []
    for path in list(folder.glob("*.json")) + list(folder.glob("*/*.json")):
        if path.stem in ("last", "best") or "checkpoints" in path.parts[len(folder.parts):]:
            continue
        try:
            load_spec(path)
        except (CellPolError, OSError, ValueError):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def filter_by_score(pairs: Any, threshold: float) -> Any:
    """The pairs scoring at least ``threshold`` (pairs without a score are kept), ``meta["score_threshold"]`` set."""
    scores = np.asarray(pairs.scores, dtype=float)
    keep = ~(scores < threshold)  # NaN (no score) is kept
    shown = pairs.subset(keep)
    shown.meta["score_threshold"] = float(threshold)
    return shown


def _number(value: float, digits: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------
# The panel
# ------------------------------------------------------------------------------------------
class PredictPanel(QtWidgets.QWidget):
    """Predict polarity vectors with a model: the open image, or every image of a folder.

    Parameters
    ----------
    start_job : callable
        ``start_job(title, factory, can_pause=False) -> JobHandle`` (the window's): runs ``factory(cancel, pause)``
        in a worker and relays its events through the handle's ``event`` / ``succeeded`` / ``failed`` /
        ``cancelled`` / ``ended`` signals.
    get_volume : callable
        ``get_volume() -> Volume or None``: the open image.
    get_device : callable
        ``get_device() -> str``: the device to predict on ("auto", "cpu", "cuda", …).
    on_pairs : callable
        ``on_pairs(pairset)``: called with *all* predicted pairs of the open image when its prediction succeeds
        (``meta["score_threshold"]`` holds the slider's value; :meth:`visible` gives the ones to show).
    open_image : callable, optional
        ``open_image(image_path, predictions_path_or_None)``: a results row was double-clicked.
    predictor_options : dict, optional
        Extra :class:`~app.core.inference.Predictor` options (``window``, ``batch_size``, ``context_um``, …).
    get_project : callable, optional
        ``get_project() -> Project or None``: the open project; "Predict project" predicts its ``images/`` into
        its ``results/``, and its models are offered in the chooser (:meth:`refresh_models`).

    Signals
    -------
    threshold_changed(float)
        The score slider moved.
    batch_finished(list)
        A folder or project batch ended; the ``BatchRecord`` list of the images it went through.
    model_changed(path or None)
        Another model was chosen (``None``: the starters).
    """

    threshold_changed = Signal(float)
    batch_finished = Signal(object)
    model_changed = Signal(object)  # the chosen model's .json, or None for the starters

    def __init__(self, start_job: Callable[..., Any], get_volume: Callable[[], Any], get_device: Callable[[], str],
                 on_pairs: Callable[[Any], None], open_image: Optional[Callable[[Path, Optional[Path]], None]] = None,
                 predictor_options: Optional[dict[str, Any]] = None,
                 get_project: Callable[[], Any] = lambda: None,
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.predict")
        self._get_project = get_project
        self._start_job = start_job
        self._get_volume = get_volume
        self._get_device = get_device
        self._on_pairs = on_pairs
        self._open_image = open_image
        self.predictor_options: dict[str, Any] = dict(predictor_options or {})
        self.handle: Any = None  # the running job's JobHandle
        self.last_pairs: Any = None  # all pairs of the last prediction of the open image
        self.last_records: list[Any] = []
        self._model: Optional[Path] = None

        # --- model chooser and card
        self.model_combo = QtWidgets.QComboBox(objectName="cellpol.predict.model")
        self.model_combo.addItem(STARTER_LABEL, None)
        self.model_combo.addItem(CHOOSE_LABEL, CHOOSE_LABEL)
        self.model_combo.activated.connect(self._model_activated)
        self.card = QtWidgets.QLabel(objectName="cellpol.predict.card")
        self.card.setWordWrap(True)
        self.card.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.card.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)

        # --- one image
        self.image_button = QtWidgets.QPushButton("Predict this image", objectName="cellpol.predict.image")
        self.image_button.clicked.connect(self.predict_image)
        self.threshold_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal,
                                                  objectName="cellpol.predict.threshold")
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setToolTip("Show only the vectors scoring at least this much (0–1).")
        self.threshold_slider.valueChanged.connect(self._threshold_moved)
        self.threshold_label = QtWidgets.QLabel()
        self.shown_label = QtWidgets.QLabel()

        # --- a folder
        self.folder_button = QtWidgets.QPushButton("Predict folder…", objectName="cellpol.predict.folder")
        self.folder_button.clicked.connect(self._choose_folder)
        self.project_button = QtWidgets.QPushButton("Predict project", objectName="cellpol.predict.project")
        self.project_button.setToolTip("Predict every image of the open project into its results/ folder")
        self.project_button.clicked.connect(self.predict_project)
        self.overwrite_check = QtWidgets.QCheckBox("Overwrite existing predictions",
                                                   objectName="cellpol.predict.overwrite")
        self.overwrite_check.setToolTip("Unticked, images whose predictions exist are skipped")
        self.tta_check = QtWidgets.QCheckBox("Average over mirror images (about 3× slower)",
                                             objectName="cellpol.predict.tta")
        self.tta_check.setToolTip("Runs the network on the image and on its mirror images in y, x and both and "
                                  "averages: fewer false vectors on images unlike the training data, for about "
                                  "three times the time (model card: docs/models/cellpol_starter.md)")
        self.apart_check = QtWidgets.QCheckBox("Keep each model's predictions apart",
                                               objectName="cellpol.predict.apart")
        self.apart_check.setToolTip("Predict project writes into results/<model name>/ instead of results/, so "
                                    "the Evaluate panel can compare models (the Review panel reviews results/)")
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS), objectName="cellpol.predict.results")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.cellDoubleClicked.connect(self._row_activated)
        self.table.setMinimumHeight(130)

        # --- progress and cancel
        self.progress = QtWidgets.QProgressBar(objectName="cellpol.predict.progress")
        self.progress.setTextVisible(True)
        self.status = QtWidgets.QLabel(objectName="cellpol.predict.status")
        self.status.setWordWrap(True)
        self.cancel_button = QtWidgets.QPushButton("Cancel", objectName="cellpol.predict.cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)

        layout = QtWidgets.QVBoxLayout(self)
        form = QtWidgets.QFormLayout()
        form.addRow("Model", self.model_combo)
        layout.addLayout(form)
        card_area = QtWidgets.QScrollArea(objectName="cellpol.predict.card_area")  # a long card scrolls
        card_area.setWidget(self.card)
        card_area.setWidgetResizable(True)
        card_area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        card_area.setMaximumHeight(110)
        layout.addWidget(card_area)
        layout.addWidget(self.image_button)
        layout.addWidget(self.tta_check)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Score ≥"))
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_label)
        layout.addLayout(row)
        layout.addWidget(self.shown_label)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.folder_button)
        row.addWidget(self.project_button)
        row.addWidget(self.overwrite_check)
        layout.addLayout(row)
        layout.addWidget(self.apart_check)
        layout.addWidget(self.table, 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.status)

        self._threshold_moved(self.threshold_slider.value())
        self.card.setText(model_card(None))
        self.refresh_models()

    def job_options(self) -> dict[str, Any]:
        """The :class:`~app.core.inference.Predictor` options of the next job: ``predictor_options`` plus the
        panel's own (``tta`` when "Average over mirror images" is ticked)."""
        options = dict(self.predictor_options)
        if self.tta_check.isChecked():
            options["tta"] = True
        return options

    # --- model ---------------------------------------------------------------------------
    @property
    def model(self) -> Optional[Path]:
        """The chosen model ``.json``; ``None``: the bundled starters."""
        return self._model

    def set_model_file(self, path: Optional[str | Path]) -> None:
        """Use the model ``path`` (``None``: the starters), adding it to the chooser, and show its card."""
        self._model = Path(path) if path else None
        if self._model is None:
            self.model_combo.setCurrentIndex(0)
        else:
            index = self.model_combo.findData(str(self._model))
            if index < 0:
                index = self.model_combo.count() - 1  # before "Choose file…"
                self.model_combo.insertItem(index, self._model.name, str(self._model))
                self.model_combo.setItemData(index, str(self._model), QtCore.Qt.ItemDataRole.ToolTipRole)
            self.model_combo.setCurrentIndex(index)
        self.card.setText(model_card(self._model))
        self.model_changed.emit(self._model)

    def refresh_models(self) -> None:
        """Offer the open project's models (``models/``) in the chooser, after the starters."""
        project = self._get_project()
        for index in reversed(range(self.model_combo.count())):
            if self.model_combo.itemData(index, _PROJECT_ROLE):
                self.model_combo.removeItem(index)
        self.project_button.setEnabled(project is not None and not self.busy)
        if project is None:
            return
        for offset, path in enumerate(project_models(project.folder("models"))):
            index = 1 + offset
            self.model_combo.insertItem(index, f"{path.stem} (project)", str(path))
            self.model_combo.setItemData(index, True, _PROJECT_ROLE)
            self.model_combo.setItemData(index, str(path), QtCore.Qt.ItemDataRole.ToolTipRole)
        if self._model is not None:
            found = self.model_combo.findData(str(self._model))
            if found >= 0:
                self.model_combo.setCurrentIndex(found)

    def _model_activated(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        if data == CHOOSE_LABEL:
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Choose a model", "", "CellPol model (*.json)")
            self.set_model_file(path or self._model)
        else:
            self.set_model_file(data)

    # --- score threshold -----------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100.0

    def set_threshold(self, value: float) -> None:
        self.threshold_slider.setValue(int(round(min(max(value, 0.0), 1.0) * 100)))

    def visible(self, pairs: Any) -> Any:
        """The pairs of ``pairs`` scoring at least the threshold, the threshold recorded in their meta."""
        return filter_by_score(pairs, self.threshold)

    def _threshold_moved(self, value: int) -> None:
        threshold = value / 100.0
        self.threshold_label.setText(f"{threshold:.2f}")
        if self.last_pairs is not None:
            self.last_pairs.meta["score_threshold"] = threshold
            self.shown_label.setText(f"{len(self.visible(self.last_pairs))} of {len(self.last_pairs)} vectors shown")
        self.threshold_changed.emit(threshold)

    # --- running -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.handle is not None

    def predict_image(self) -> Any:
        """Predict the open image with the chosen model; the pairs go to ``on_pairs``. Returns the JobHandle."""
        if self.busy:
            return None
        volume = self._get_volume()
        if volume is None:
            self._say("Open an image first.")
            return None
        factory = image_job_factory(self._model, self._get_device(), volume, self.job_options())
        return self._start("Predict image", factory, self._image_done, retry=self.predict_image)

    def _choose_folder(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Images to predict")
        if not folder:
            return
        out_dir = QtWidgets.QFileDialog.getExistingDirectory(self, "Where the predictions go", folder)
        if out_dir:
            self.predict_folder(folder, out_dir)

    def predict_folder(self, folder: str | Path, out_dir: str | Path) -> Any:
        """Predict every image of ``folder`` into ``out_dir`` (one ``<stem>.pred.vectors.csv`` each)."""
        if self.busy:
            return None
        self.table.setRowCount(0)
        self.last_records = []
        factory = folder_job_factory(self._model, self._get_device(), Path(folder), Path(out_dir),
                                     self.overwrite_check.isChecked(), self.job_options())
        return self._start(f"Predict folder {Path(folder).name}", factory, self._folder_done,
                           retry=lambda: self.predict_folder(folder, out_dir))

    def predict_project(self) -> Any:
        """Predict every image of the open project into its ``results/`` (existing ones skipped unless asked)."""
        project = self._get_project()
        if project is None:
            self._say("Open a project first (File ▸ Open project…).")
            return None
        if self.busy:
            return None
        self.table.setRowCount(0)
        self.last_records = []
        out = project.folder("results")
        if self.apart_check.isChecked():  # one folder per model, to compare them (Evaluate panel)
            out = out / (self._model.stem if self._model is not None else "starter")
        factory = folder_job_factory(self._model, self._get_device(), project.folder("images"), out,
                                     self.overwrite_check.isChecked(), self.job_options())
        return self._start(f"Predict project {project.name}", factory, self._folder_done,
                           retry=self.predict_project)

    def predict_images(self, images: Sequence[Path], model: Optional[Path] = None) -> Any:
        """Predict these images of the open project again into its ``results/`` (their predictions are replaced),
        with ``model`` (default: the chosen one), e.g. after a retraining. Returns the JobHandle."""
        project = self._get_project()
        if project is None or self.busy or not images:
            return None
        if model is not None:
            self.set_model_file(model)
        self.table.setRowCount(0)
        self.last_records = []
        factory = folder_job_factory(self._model, self._get_device(), list(images), project.folder("results"),
                                     True, self.job_options())
        return self._start(f"Predict {len(images)} image(s) again", factory, self._folder_done,
                           retry=lambda: self.predict_images(images, model))

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self._say("Cancelling…")

    def _start(self, title: str, factory: JobFactory, on_success: Callable[[Any], None],
               retry: Optional[Callable[[], Any]] = None) -> Any:
        handle = self._start_job(title, factory, can_pause=False)
        handle.retry = retry  # run again as it was (the Jobs dock offers it on the CPU after a GPU ran out)
        self.handle = handle
        handle.event.connect(self._event)
        handle.succeeded.connect(on_success)
        handle.failed.connect(self._failed)
        handle.cancelled.connect(lambda: self._say("Cancelled."))
        handle.ended.connect(self._ended)
        self._set_running(True)
        self.progress.setRange(0, 0)
        self._say(f"{title}…")
        return handle

    def _set_running(self, running: bool) -> None:
        self.image_button.setEnabled(not running)
        self.folder_button.setEnabled(not running)
        self.project_button.setEnabled(not running and self._get_project() is not None)
        self.model_combo.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _event(self, event: Any) -> None:
        if show_progress(self.progress, event, self._say):
            item = getattr(event, "item", None)
            if item is not None and hasattr(item, "status"):
                self._add_record(item)
        elif not isinstance(event, Result) and getattr(event, "message", ""):
            self._say(event.message)

    def _add_record(self, record: Any) -> None:
        self.last_records.append(record)
        row = self.table.rowCount()
        self.table.insertRow(row)
        cells = (Path(record.image).name, str(record.n_vectors) if record.status != "failed" else "",
                 _number(record.mean_length_um, 2), _number(record.seconds, 1), record.status, record.error)
        for column, text in enumerate(cells):
            item = QtWidgets.QTableWidgetItem(text)
            if column in (0, 5):
                item.setToolTip(str(record.image) if column == 0 else text)
            self.table.setItem(row, column, item)
        self.table.item(row, 0).setData(_PATHS_ROLE, (Path(record.image), record.output and Path(record.output)))

    def _row_activated(self, row: int, column: int) -> None:
        item = self.table.item(row, 0)
        if item is not None and self._open_image is not None:
            image, output = item.data(_PATHS_ROLE)
            self._open_image(image, output)

    def _image_done(self, prediction: Any) -> None:
        pairs = getattr(prediction, "pairs", prediction)
        pairs = pairs.subset(slice(None))  # our own copy: the threshold goes into its meta
        pairs.meta["score_threshold"] = self.threshold
        self.last_pairs = pairs
        self.shown_label.setText(f"{len(self.visible(pairs))} of {len(pairs)} vectors shown")
        self._say(f"{len(pairs)} vector(s) predicted.")
        self._on_pairs(pairs)

    def _folder_done(self, records: Any) -> None:
        records = list(records or [])
        ok = sum(r.status == "ok" for r in records)
        failed = sum(r.status == "failed" for r in records)
        skipped = sum(r.status == "skipped" for r in records)
        self._say(f"{ok} predicted, {skipped} skipped, {failed} failed.")
        self.batch_finished.emit(records)

    def _failed(self, error: Any) -> None:
        self._say(f"Failed: {error}")

    def _ended(self) -> None:
        self.handle = None
        self._set_running(False)
        if self.progress.maximum() == 0:  # still the busy indicator: no progress was reported
            self.progress.setRange(0, 1)

    def _say(self, text: str) -> None:
        self.status.setText(text)
