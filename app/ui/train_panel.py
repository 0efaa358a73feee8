"""The Train panel: train or fine-tune a model on the open project's annotated images, watch it learn, resume it.

A thin view over :func:`app.training.finetune.run_training` (the ``cellpol train`` job). The panel collects the
settings into a plain dict of :class:`~app.training.finetune.TrainingOptions` fields (written beside the run as
``<name>.train-options`` so a run left unfinished resumes with the same settings) and builds a job factory
``factory(cancel, pause)``; the options object, torch and the network are made inside the factory, in the
worker thread (this module imports without torch). A run goes to ``<project>/models/<name>/<name>.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Signal

from app.core.errors import CellPolError
from app.core.jobs import CancelToken, JobEvent, PauseToken, Progress, Result
from app.ui.synth_panel import training_folders
from app.ui.widgets import read_only_rows

JobFactory = Callable[[CancelToken, PauseToken], Iterator[JobEvent]]

#: Start-from choices: label and the ``init`` value (a project model's path is added per model).
STARTER_CHOICE = ("Bundled starter model", "starter")
SCRATCH_CHOICE = ("None (train from scratch)", "none")
#: Validation choices: label and key.
VALIDATION_CHOICES = (("Automatic: hold out ~20% of the images", "auto"), ("One image held out", "one"),
                      ("The images ticked 'Validate'", "chosen"), ("None: check on the training images", "none"))
SETTINGS_SUFFIX = ".train-options"
#: Losses drawn per step and validation rates per epoch: key, legend name, colour.
LOSS_CURVES = (("total", "total", "#1f77b4"), ("heatmap", "heatmaps", "#2ca02c"), ("pull", "pull", "#ff7f0e"),
               ("push", "push", "#9467bd"))
RATE_CURVES = (("tpr0", "TPR τL=0", "#2ca02c"), ("fdr0", "FDR τL=0", "#d62728"), ("tpr5", "TPR τL=5", "#17becf"),
               ("fdr5", "FDR τL=5", "#ff7f0e"))
TABLE_COLUMNS = ("τL", "MAF", "TP", "FP", "FN", "TPR", "FDR")
_IMAGE_COLUMNS = ("Train", "Validate", "Image", "Pairs")
_PATH_ROLE = QtCore.Qt.ItemDataRole.UserRole


# ------------------------------------------------------------------------------------------
# What the panel reads from the project (no torch)
# ------------------------------------------------------------------------------------------
def default_run_name(now: Optional[_dt.datetime] = None) -> str:
    """``model-YYYYMMDD-HHMM``."""
    return (now or _dt.datetime.now()).strftime("model-%Y%m%d-%H%M")


def run_paths(models: Path, name: str) -> dict[str, Path]:
    """Where the run ``name`` writes: ``model`` (.json), ``checkpoints``, ``settings`` (the panel's options)."""
    folder = Path(models) / name
    return {"out": folder / name, "model": folder / f"{name}.json", "checkpoints": folder / f"{name}.checkpoints",
            "settings": folder / f"{name}{SETTINGS_SUFFIX}", "log": folder / f"{name}.log.csv"}


def trainable_pairs(vectors: Path) -> int:
    """Pairs of an annotations file that training uses (predictions not reviewed yet are left out); 0 if none."""
    from app.core.pairs import read_pairs

    if not vectors.is_file():
        return 0
    try:
        pairs = read_pairs(vectors)
    except CellPolError:
        return 0
    return sum(1 for source in pairs.sources if str(source) != "predicted")


def checkpoint_step(checkpoints: Path) -> Optional[tuple[int, int]]:
    """``(step, total steps)`` of the checkpoint in ``checkpoints`` (read from its header without torch), or None."""
    from safetensors import safe_open

    path = Path(checkpoints) / "last.ckpt.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            state = json.loads(handle.metadata()["state"])
        return int(state["step"]), int(state["total_steps"])
    except Exception:  # noqa: BLE001 - a damaged checkpoint is not offered; the job says why if started
        return None


@dataclass
class UnfinishedRun:
    """A run of the panel that left a checkpoint but no model: its name, where it stopped and its settings."""

    name: str
    step: int
    total: int
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        return f"Resume {self.name} (step {self.step} of {self.total})"


def unfinished_runs(models: Path) -> list[UnfinishedRun]:
    """Runs in ``models/`` with settings and a checkpoint but no finished model, newest first."""
    found = []
    for settings_path in sorted(Path(models).glob(f"*/*{SETTINGS_SUFFIX}"), key=lambda p: p.stat().st_mtime,
                                reverse=True):
        name = settings_path.name[:-len(SETTINGS_SUFFIX)]
        paths = run_paths(models, name)
        where = checkpoint_step(paths["checkpoints"])
        if where is None or paths["model"].exists():
            continue
        try:
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append(UnfinishedRun(name, where[0], where[1], settings))
    return found


def read_losses(log: Path, below: int) -> list[dict[str, float]]:
    """The rows of a run's ``<name>.log.csv`` before step ``below`` (the curve of a resumed run)."""
    import csv

    if not log.is_file():
        return []
    try:
        with open(log, newline="", encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    except (OSError, ValueError, csv.Error):
        return []
    return [row for row in rows if row.get("step", math.inf) < below]


# ------------------------------------------------------------------------------------------
# Job factories (run in the worker)
# ------------------------------------------------------------------------------------------
def training_job_factory(settings: dict[str, Any]) -> JobFactory:
    """A factory for :func:`~app.training.finetune.run_training` with ``settings`` (TrainingOptions fields;
    ``augment`` a bool); the result is the model's ``.json``."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        from app.training.data import AugmentConfig
        from app.training.finetune import TrainingOptions, run_training
        from app.ui.workers import freeze_heap

        freeze_heap("torch")
        values = dict(settings)
        values["augment"] = AugmentConfig() if values.get("augment", True) else AugmentConfig.off()
        for key in ("patch_shape", "model_voxel_size", "voxel_size"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return (yield from run_training(TrainingOptions(**values), cancel, pause))
    return factory


def estimate_job_factory(init: Any, device: str, options: dict[str, Any]) -> JobFactory:
    """A factory timing a few training steps (:func:`~app.training.finetune.seconds_per_step`); the result is
    the seconds per step."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        from app.training.finetune import seconds_per_step

        yield Progress(0, 1, "Timing a few training steps…")
        keys = ("batch_size", "levels", "base_filters", "patch_shape")
        voxel = options.get("model_voxel_size") or (1.0, 0.5, 0.5)
        seconds = seconds_per_step(init, device, voxel_size=voxel, **{k: options[k] for k in keys if k in options})
        yield Result(seconds)
        return seconds
    return factory


# ------------------------------------------------------------------------------------------
# The panel
# ------------------------------------------------------------------------------------------
class TrainPanel(QtWidgets.QWidget):
    """Train or fine-tune a model on the open project's annotated and reviewed images.

    Parameters
    ----------
    start_job : callable
        ``start_job(title, factory, can_pause=True) -> JobHandle`` (the window's, :func:`app.ui.workers.start_job`).
    get_project : callable
        ``get_project() -> Project or None``.
    get_device : callable
        ``get_device() -> str``: the device to train on.
    on_model_trained : callable, optional
        ``on_model_trained(model_json_path)``: a model finished (the window makes it the default for prediction).
    predict_images : callable, optional
        ``predict_images(model_json_path, image_paths)``: re-predict images (after :meth:`retrain_with_corrections`).

    Attributes
    ----------
    extra_options : dict
        More :class:`~app.training.finetune.TrainingOptions` fields for every run (e.g. ``batch_size``).
    default_model : Path or None
        The model "Retrain with my corrections" fine-tunes (None: the starter); set to each model trained here.
    handle : JobHandle or None
        The running training job.

    Signals
    -------
    model_trained(object)
        The finished model's ``.json`` path.
    """

    model_trained = Signal(object)

    def __init__(self, start_job: Callable[..., Any], get_project: Callable[[], Any], get_device: Callable[[], str],
                 on_model_trained: Optional[Callable[[Path], None]] = None,
                 predict_images: Optional[Callable[[Path, list[Path]], None]] = None,
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.train")
        self._start_job, self._get_project, self._get_device = start_job, get_project, get_device
        self._on_model_trained, self._predict_images = on_model_trained, predict_images
        self.extra_options: dict[str, Any] = {}
        self.default_model: Optional[Path] = None
        self.handle: Any = None
        self.estimate_handle: Any = None
        self.seconds_per_step: Optional[float] = None
        self.last_model: Optional[Path] = None
        self.last_result: Any = None
        self._unfinished: Optional[UnfinishedRun] = None
        self._after_success: Optional[Callable[[Path], None]] = None
        self._losses: dict[str, list[float]] = {}
        self._rates: dict[str, list[float]] = {}
        self._build()
        self.refresh()

    # --- building ------------------------------------------------------------------------
    def _widget(self, cls: type, name: str, *args: Any) -> Any:
        widget = cls(*args)
        widget.setObjectName(f"cellpol.train.{name}")
        return widget

    def _build(self) -> None:
        w = self._widget
        self.images = w(QtWidgets.QTableWidget, "images", 0, len(_IMAGE_COLUMNS))
        self.images.setHorizontalHeaderLabels(_IMAGE_COLUMNS)
        read_only_rows(self.images)
        self.images.horizontalHeader().setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.images.setMinimumHeight(90)
        self.images.setMaximumHeight(170)
        self.add_folder_button = w(QtWidgets.QPushButton, "add_folder", "Add folder…")
        self.add_folder_button.setToolTip("Train on a folder of images with their <name>.vectors.csv beside them")
        self.add_folder_button.clicked.connect(self._choose_folder)
        self.validation = w(QtWidgets.QComboBox, "validation")
        for label, key in VALIDATION_CHOICES:
            self.validation.addItem(label, key)
        self.held_out = w(QtWidgets.QComboBox, "held_out")
        self.validation.currentIndexChanged.connect(self._validation_changed)
        self.init = w(QtWidgets.QComboBox, "init")
        self.init.currentIndexChanged.connect(self._forget_estimate)
        self.steps = w(QtWidgets.QSpinBox, "steps")
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(500)
        self.steps.setSingleStep(100)
        self.steps.valueChanged.connect(self._show_estimate)
        self.augment = w(QtWidgets.QCheckBox, "augment", "Augment (flips, rotations, noise, intensity)")
        self.augment.setChecked(True)
        self.synthetic = w(QtWidgets.QCheckBox, "synthetic", "Mix in synthetic volumes")
        self.synthetic_fraction = w(QtWidgets.QDoubleSpinBox, "synthetic_fraction")
        self.synthetic_fraction.setRange(0.05, 0.95)
        self.synthetic_fraction.setSingleStep(0.05)
        self.synthetic_fraction.setValue(0.5)
        self.synthetic_fraction.setToolTip("Share of the training patches drawn from the synthetic volumes")
        self.synthetic_dir = w(QtWidgets.QLineEdit, "synthetic_dir")
        self.synthetic_dir.setPlaceholderText("folder of volumes with their vectors")
        self.device_label = w(QtWidgets.QLabel, "device")
        self.name = w(QtWidgets.QLineEdit, "name", default_run_name())
        self.where = w(QtWidgets.QLabel, "where")
        self.where.setWordWrap(True)
        self.name.textChanged.connect(self._show_where)
        self.estimate_label = w(QtWidgets.QLabel, "estimate")
        self.estimate_label.setWordWrap(True)
        self.estimate_button = w(QtWidgets.QPushButton, "estimate_button", "Estimate time")
        self.estimate_button.clicked.connect(self.estimate)

        self.start_button = w(QtWidgets.QPushButton, "start", "Start training")
        self.start_button.clicked.connect(self.start)
        self.pause_button = w(QtWidgets.QPushButton, "pause", "Pause")
        self.pause_button.clicked.connect(self.pause)
        self.resume_button = w(QtWidgets.QPushButton, "resume", "Resume")
        self.resume_button.clicked.connect(self.resume)
        self.cancel_button = w(QtWidgets.QPushButton, "cancel", "Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_run_button = w(QtWidgets.QPushButton, "resume_run", "Resume")
        self.resume_run_button.clicked.connect(self.resume_run)
        self.retrain_button = w(QtWidgets.QPushButton, "retrain", "Retrain with my corrections")
        self.retrain_button.setToolTip("Fine-tune the current model on every annotated and corrected image, then "
                                       "predict again the images whose predictions are not fully reviewed")
        self.retrain_button.clicked.connect(self.retrain_with_corrections)
        self.progress = w(QtWidgets.QProgressBar, "progress")
        self.status = w(QtWidgets.QLabel, "status")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)

        self.loss_plot = w(pg.PlotWidget, "loss_plot")
        self.loss_plot.setBackground("w")
        self.loss_plot.setTitle("Training losses per step", color="#333")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_curves = {key: self.loss_plot.plot([], [], name=name, pen=pg.mkPen(colour, width=1.5))
                            for key, name, colour in LOSS_CURVES}
        self.rate_plot = w(pg.PlotWidget, "rate_plot")
        self.rate_plot.setBackground("w")
        self.rate_plot.setTitle("Validation per epoch", color="#333")
        self.rate_plot.setLabel("bottom", "epoch")
        self.rate_plot.setYRange(0, 1.3)  # room for the legend above rates of 1
        self.rate_plot.addLegend(offset=(-10, 10))
        self.rate_curves = {key: self.rate_plot.plot([], [], name=name, pen=pg.mkPen(colour, width=1.5),
                                                     symbol="o", symbolSize=6, symbolBrush=colour)
                            for key, name, colour in RATE_CURVES}
        self.table = w(QtWidgets.QTableWidget, "table", 0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        read_only_rows(self.table)
        self.card = w(QtWidgets.QPlainTextEdit, "card")
        self.card.setReadOnly(True)

        settings = QtWidgets.QGroupBox("Settings")
        form = QtWidgets.QFormLayout(settings)
        form.addRow(self.images)
        form.addRow(self.add_folder_button)
        form.addRow("Validation", self.validation)
        form.addRow("Held-out image", self.held_out)
        form.addRow("Start from", self.init)
        form.addRow("Steps", self.steps)
        form.addRow(self.augment)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.synthetic)
        row.addWidget(self.synthetic_fraction)
        form.addRow(row)
        form.addRow("Synthetic folder", self.synthetic_dir)
        form.addRow("Device", self.device_label)
        form.addRow("Model name", self.name)
        form.addRow(self.where)
        form.addRow(self.estimate_label)
        form.addRow(self.estimate_button)
        controls = QtWidgets.QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.resume_button, self.cancel_button):
            controls.addWidget(button)
        left = QtWidgets.QVBoxLayout()
        left.addWidget(settings)
        left.addStretch(1)
        left.addLayout(controls)
        left.addWidget(self.resume_run_button)
        left.addWidget(self.retrain_button)

        results = QtWidgets.QTabWidget(objectName="cellpol.train.results")
        results.addTab(self.table, "Validation table")
        results.addTab(self.card, "Model card")
        self.results_tabs = results
        right = QtWidgets.QVBoxLayout()
        right.addWidget(self.loss_plot, 3)
        right.addWidget(self.rate_plot, 2)
        right.addWidget(results, 2)
        top = QtWidgets.QHBoxLayout()
        left_box, right_box = QtWidgets.QWidget(), QtWidgets.QWidget()
        left_box.setLayout(left)
        right_box.setLayout(right)
        left_box.setMaximumWidth(470)
        top.addWidget(left_box)
        top.addWidget(right_box, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(top, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self._set_running(False)

    # --- the project ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the open project again: its trainable images, its models, its synthetic folder and any unfinished
        run (offered as "Resume <name> (step k of N)")."""
        project = self._get_project()
        self.device_label.setText(self._get_device())
        folders = [self.images.item(r, 2).data(_PATH_ROLE) for r in range(self.images.rowCount())
                   if self.images.item(r, 3).text() == "folder"]
        self.images.setRowCount(0)
        if project is not None:
            for image in project.images():
                pairs = trainable_pairs(project.vectors_path(image))
                if pairs:
                    self._add_row(image, str(pairs))
        for folder in folders:
            self._add_row(folder, "folder")
        self._fill_held_out()
        current = self.init.currentData()
        self.init.blockSignals(True)
        self.init.clear()
        self.init.addItem(*STARTER_CHOICE)
        if project is not None:
            from app.ui.predict_panel import project_models

            for path in project_models(project.folder("models")):
                self.init.addItem(f"{path.stem} (project)", str(path))
        self.init.addItem(*SCRATCH_CHOICE)
        found = self.init.findData(current)
        self.init.setCurrentIndex(max(found, 0))
        self.init.blockSignals(False)
        # the synthetic runs ticked "Use in training" in the Synthesis panel are mixed in (one folder: the newest)
        ticked = training_folders(project) if project is not None else []
        if ticked and not self.synthetic_dir.text():
            newest = max(ticked, key=lambda folder: folder.stat().st_mtime)
            self.synthetic_dir.setText(str(newest))
            self.synthetic.setChecked(True)
        runs = unfinished_runs(project.folder("models")) if project is not None else []
        self._unfinished = runs[0] if runs else None
        self.resume_run_button.setVisible(self._unfinished is not None)
        if self._unfinished is not None:
            self.resume_run_button.setText(self._unfinished.label)
        self._show_where()
        self._show_estimate()
        self._set_running(self.busy)

    def _add_row(self, path: Path, pairs: str) -> None:
        row = self.images.rowCount()
        self.images.insertRow(row)
        for column, checked in ((0, True), (1, False)):
            tick = QtWidgets.QTableWidgetItem()
            tick.setFlags(QtCore.Qt.ItemFlag.ItemIsUserCheckable | QtCore.Qt.ItemFlag.ItemIsEnabled)
            tick.setCheckState(QtCore.Qt.CheckState.Checked if checked else QtCore.Qt.CheckState.Unchecked)
            self.images.setItem(row, column, tick)
        name = QtWidgets.QTableWidgetItem(Path(path).name + ("/" if pairs == "folder" else ""))
        name.setData(_PATH_ROLE, Path(path))
        name.setToolTip(str(path))
        self.images.setItem(row, 2, name)
        self.images.setItem(row, 3, QtWidgets.QTableWidgetItem(pairs))

    def _fill_held_out(self) -> None:
        self.held_out.clear()
        for row in range(self.images.rowCount()):
            if self.images.item(row, 3).text() != "folder":
                self.held_out.addItem(self.images.item(row, 2).text(), str(self.images.item(row, 2).data(_PATH_ROLE)))
        self._validation_changed()

    def add_folder(self, folder: str | Path) -> None:
        """Offer a folder of images (vectors beside them) for training."""
        self._add_row(Path(folder), "folder")

    def _choose_folder(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Images with their vectors")
        if folder:
            self.add_folder(folder)

    def set_ticked(self, image: str | Path, train: bool = True, validate: bool = False) -> None:
        """Tick (or untick) an image or folder row for training and validation."""
        for row in range(self.images.rowCount()):
            if Path(self.images.item(row, 2).data(_PATH_ROLE)) == Path(image):
                for column, on in ((0, train), (1, validate)):
                    self.images.item(row, column).setCheckState(
                        QtCore.Qt.CheckState.Checked if on else QtCore.Qt.CheckState.Unchecked)
                return
        raise KeyError(image)

    def set_validation(self, mode: str, held_out: Optional[str | Path] = None) -> None:
        """``mode``: ``auto``, ``one`` (``held_out``: the image), ``chosen`` (rows ticked "Validate") or ``none``."""
        self.validation.setCurrentIndex(self.validation.findData(mode))
        if held_out is not None:
            self.held_out.setCurrentIndex(self.held_out.findData(str(held_out)))

    def set_start_from(self, init: str | Path) -> None:
        """``"starter"``, ``"none"`` or a project model's ``.json``."""
        index = self.init.findData(str(init))
        if index < 0:
            self.init.addItem(Path(init).stem, str(init))
            index = self.init.count() - 1
        self.init.setCurrentIndex(index)

    def _validation_changed(self, *_: Any) -> None:
        mode = self.validation.currentData()
        self.held_out.setEnabled(mode == "one")
        self.images.setColumnHidden(1, mode != "chosen")

    def _ticked(self, column: int) -> list[tuple[Path, bool]]:
        """``(path, is a folder)`` of the rows ticked in ``column``."""
        return [(Path(self.images.item(r, 2).data(_PATH_ROLE)), self.images.item(r, 3).text() == "folder")
                for r in range(self.images.rowCount())
                if self.images.item(r, column).checkState() == QtCore.Qt.CheckState.Checked]

    # --- settings ------------------------------------------------------------------------
    def settings(self, name: Optional[str] = None) -> dict[str, Any]:
        """The run's :class:`~app.training.finetune.TrainingOptions` fields from the panel (``augment`` a bool).

        Raises
        ------
        CellPolError
            No project, no image ticked, project images mixed with folders, no model name.
        """
        project = self._get_project()
        if project is None:
            raise CellPolError("Open a project first (File ▸ Open project…): training uses its annotated images.")
        name = (name or self.name.text()).strip()
        if not name or any(c in name for c in '/\\:*?"<>|'):
            raise CellPolError("Give the model a name without / \\ : * ? \" < > |.")
        mode = self.validation.currentData()
        train = self._ticked(0)
        held: list[Path] = []
        if mode == "one" and self.held_out.currentData():
            held = [Path(self.held_out.currentData())]
        elif mode == "chosen":
            held = [path for path, folder in self._ticked(1) if not folder]
            if not held:
                raise CellPolError("Tick 'Validate' for at least one image, or choose another validation.")
        train = [(path, folder) for path, folder in train if path not in held]
        if not train:
            raise CellPolError("The project has no annotated images yet: annotate at least one image (a dozen cells "
                               "is a good start) and save, or add a folder of annotated images.")
        folders = [path for path, folder in train if folder]
        settings: dict[str, Any] = {"out": str(run_paths(project.folder("models"), name)["out"]), "name": name,
                                    "steps": self.steps.value(), "init": self.init.currentData(),
                                    "device": self._get_device(), "augment": self.augment.isChecked()}
        if folders:
            if len(folders) < len(train):
                raise CellPolError("Train on the project's images or on added folders, not both at once: untick one.")
            settings["images"] = [str(f) for f in folders]
        else:
            annotated = [Path(self.held_out.itemData(i)) for i in range(self.held_out.count())]
            images = [path for path, _ in train]
            if not held and len(images) == len(annotated):
                settings.update(images=None, project=str(project.root))  # the project's own voxel sizes come along
            else:
                settings.update(images=[str(p) for p in images], vectors=str(project.folder("annotations")))
                sizes = {project.voxel_size_for(p) for p in images + held}
                if sizes - {None}:
                    if len(sizes) > 1:
                        raise CellPolError("These images have different voxel sizes typed in the project; tick all "
                                           "the annotated images with automatic validation, or images of one size.")
                    settings["voxel_size"] = list(sizes.pop())
            if held:
                settings.update(val_images=[str(p) for p in held], val_vectors=str(project.folder("annotations")))
        if mode == "none":
            settings["val_fraction"] = 0.0
        if self.synthetic.isChecked():
            if not self.synthetic_dir.text().strip():
                raise CellPolError("Choose the folder of synthetic volumes to mix in, or untick synthetic mixing.")
            settings.update(synthetic_dir=self.synthetic_dir.text().strip(),
                            synthetic_fraction=self.synthetic_fraction.value())
        settings.update(self.extra_options)
        return settings

    def _show_where(self, *_: Any) -> None:
        project = self._get_project()
        name = self.name.text().strip() or "?"
        self.where.setText(f"The model goes to {project.folder('models') / name}/" if project is not None
                           else "Open a project to train.")

    # --- the estimate --------------------------------------------------------------------
    def estimate(self) -> Any:
        """Time a few training steps on this device in a worker; the estimate then reads steps × seconds per step."""
        if self.estimate_handle is not None:
            return None
        options = dict(self.extra_options)
        handle = self._start_job("Time training steps", estimate_job_factory(self.init.currentData(),
                                                                             self._get_device(), options),
                                 can_pause=False)
        self.estimate_handle = handle
        handle.succeeded.connect(self._estimated)
        handle.failed.connect(lambda error: self._say(f"Could not time the training steps: {error}"))
        handle.ended.connect(self._estimate_ended)
        self.estimate_button.setEnabled(False)
        self.estimate_label.setText("Timing a few training steps on this device…")
        return handle

    def _estimated(self, seconds: Any) -> None:
        self.seconds_per_step = float(seconds)
        self._show_estimate()

    def _estimate_ended(self) -> None:
        self.estimate_handle = None
        self.estimate_button.setEnabled(True)
        self._show_estimate()

    def _forget_estimate(self, *_: Any) -> None:
        self.seconds_per_step = None
        self._show_estimate()

    def _show_estimate(self, *_: Any) -> None:
        if self.estimate_handle is not None:
            return
        if self.seconds_per_step is None:
            self.estimate_label.setText("Press Estimate time to time a few steps on this device.")
            return
        device = self._get_device()
        where = "this CPU" if device == "cpu" else f"this device ({device})"
        self.estimate_label.setText(
            f"About {_duration(self.steps.value() * self.seconds_per_step)} on {where}: "
            f"{self.steps.value()} steps × {self.seconds_per_step:.2f} s per step, timed on random patches "
            "(reading the images and the validations add to it).")

    # --- running -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.handle is not None

    def start(self) -> Any:
        """Start training with the panel's settings; returns the JobHandle (None when it cannot start)."""
        if self.busy:
            return None
        try:
            settings = self.settings()
        except CellPolError as exc:
            self._say(str(exc))
            return None
        return self._run(settings, f"Train {settings['name']}")

    def resume_run(self) -> Any:
        """Resume the unfinished run the panel offers, with its own settings."""
        if self.busy or self._unfinished is None:
            return None
        run = self._unfinished
        log = run_paths(Path(run.settings["out"]).parent.parent, run.name)["log"]
        history = read_losses(log, run.step + 1)
        return self._run(dict(run.settings), f"Train {run.name} (resumed)", history)

    def retrain_with_corrections(self) -> Any:
        """Fine-tune the default model (or the starter) on every annotated and corrected image of the project, then
        call ``predict_images(new model, images whose predictions are not fully reviewed)``."""
        if self.busy:
            return None
        project = self._get_project()
        if project is None:
            self._say("Open a project first (File ▸ Open project…).")
            return None
        models = project.folder("models")
        name = "retrain-" + _dt.datetime.now().strftime("%Y%m%d-%H%M")
        base, k = name, 2
        while (models / name).exists():
            name, k = f"{base}-{k}", k + 1
        init = (self.default_model if self.default_model is not None and Path(self.default_model).is_file()
                else "starter")
        settings = {"out": str(run_paths(models, name)["out"]), "name": name, "steps": self.steps.value(),
                    "init": str(init), "device": self._get_device(), "augment": self.augment.isChecked(),
                    "images": None, "project": str(project.root), **self.extra_options}

        def predict_again(model: Path) -> None:
            statuses = [project.image_status(p, read_header=False) for p in project.images()]
            waiting = [s.path for s in statuses if s.has_predictions and s.review.remaining > 0]
            if waiting and self._predict_images is not None:
                self._say(f"Predicting {len(waiting)} image(s) not fully reviewed with {model.stem}…")
                self._predict_images(model, waiting)

        return self._run(settings, f"Retrain {name} with corrections", after=predict_again)

    def _run(self, settings: dict[str, Any], title: str, history: Optional[list[dict[str, float]]] = None,
             after: Optional[Callable[[Path], None]] = None) -> Any:
        paths = Path(settings["out"])
        paths.parent.mkdir(parents=True, exist_ok=True)
        settings_file = paths.parent / f"{paths.name}{SETTINGS_SUFFIX}"
        settings_file.write_text(json.dumps(settings, indent=1), encoding="utf-8")
        self._clear_curves(history or [])
        self.table.setRowCount(0)
        self.card.setPlainText("")
        self.last_result = None
        self._after_success = after
        handle = self._start_job(title, training_job_factory(settings), can_pause=True)
        handle.retry = lambda: self._run(settings, title, after=after)
        self.handle = handle
        handle.event.connect(self._event)
        handle.succeeded.connect(self._succeeded)
        handle.failed.connect(self._failed)
        handle.cancelled.connect(lambda: self._say("Cancelled; the checkpoint stays: Resume carries on from it."))
        handle.ended.connect(self._ended)
        self.progress.setRange(0, 0)
        self._say(f"{title}…")
        self._set_running(True)
        return handle

    def pause(self) -> None:
        if self.handle is not None:
            self.handle.pause()
            self._say("Pausing after this step…")
            self._set_running(True)

    def resume(self) -> None:
        if self.handle is not None:
            self.handle.resume()
            self._set_running(True)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self._say("Cancelling after this step (a checkpoint is saved)…")

    def shutdown(self) -> None:
        """Cancel a running training (its checkpoint stays, to resume later): call when the panel or app closes."""
        for handle in (self.handle, self.estimate_handle):
            if handle is not None:
                handle.cancel()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def _set_running(self, running: bool) -> None:
        paused = running and getattr(self.handle, "status", "") == "paused"
        for widget in (self.start_button, self.retrain_button, self.resume_run_button, self.images,
                       self.add_folder_button, self.validation, self.init, self.steps, self.name):
            widget.setEnabled(not running)
        self.held_out.setEnabled(not running and self.validation.currentData() == "one")
        self.pause_button.setEnabled(running and not paused)
        self.resume_button.setEnabled(paused)
        self.cancel_button.setEnabled(running)

    # --- events --------------------------------------------------------------------------
    def _clear_curves(self, history: list[dict[str, float]]) -> None:
        self._steps = [int(row["step"]) for row in history]
        self._losses = {key: [row.get(key, math.nan) for row in history] for key, _, _ in LOSS_CURVES}
        self._epochs: list[int] = []
        self._rates = {key: [] for key, _, _ in RATE_CURVES}
        self._draw()

    def _draw(self) -> None:
        for key, curve in self.loss_curves.items():
            curve.setData(self._steps, self._losses[key])
        for key, curve in self.rate_curves.items():
            curve.setData(self._epochs, self._rates[key])

    def _event(self, event: Any) -> None:
        kind = getattr(event, "kind", None)
        if kind == "step":
            self._steps.append(event.step)
            for key in self._losses:
                self._losses[key].append(float(event.losses.get(key, math.nan)))
            self.progress.setRange(0, event.total_steps)
            self.progress.setValue(event.step)
            self._draw()
        elif kind in ("epoch", "baseline"):
            if kind == "baseline" or "tpr0" in event.metrics:
                self._epochs.append(0 if kind == "baseline" else event.epoch)
                for key in self._rates:
                    self._rates[key].append(float(event.metrics.get(key, math.nan)))
                self._draw()
            if kind == "epoch":
                self._say(f"Epoch {event.epoch} (step {event.step} of {event.total_steps}): "
                          + ", ".join(f"{label} {event.metrics[key]:.2f}" for key, label, _ in RATE_CURVES
                                      if key in event.metrics))
        elif kind == "paused":
            self._say(f"Paused at step {event.step} of {event.total_steps}; checkpoint saved.")
            self._set_running(True)
        elif kind == "resumed":
            self._say(f"Resumed at step {event.step}.")
            self._set_running(True)
        elif kind == "loading":
            self.progress.setRange(0, event.total_steps)
            self.progress.setValue(event.step)
            self._say(f"Reading {event.message}…")
        elif kind == "done":
            self.last_result = event.data
            self._fill_table(event.data)
        elif getattr(event, "message", ""):
            self._say(event.message)

    def _fill_table(self, result: Any) -> None:
        rows = result.summary_rows() if result is not None else []
        self.table.setRowCount(len(rows))
        keys = ("level", "maf", "tp", "fp", "fn", "tpr", "fdr")
        for r, row in enumerate(rows):
            for c, key in enumerate(keys):
                value = row.get(key)
                text = ("—" if value is None or (isinstance(value, float) and math.isnan(value))
                        else f"{value:.3f}" if isinstance(value, float) else str(value))
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(text))

    def _succeeded(self, path: Any) -> None:
        from app.ui.predict_panel import model_card

        path = Path(path)
        self.last_model = self.default_model = path
        self.card.setPlainText(model_card(path) + f"\n\nFiles: {path.parent}")
        self._say(f"Done: {path.name} is in {path.parent} and is now the model for prediction.")
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.model_trained.emit(path)
        if self._on_model_trained is not None:
            self._on_model_trained(path)
        if self._after_success is not None:
            self._after_success(path)

    def _failed(self, error: Any) -> None:
        if isinstance(error, CellPolError):
            self._say(f"Training failed: {error}")
        else:
            self._say(f"Training failed (an error in the app; the Jobs panel has the details): {error}")

    def _ended(self) -> None:
        self.handle = None
        self._after_success = None
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self.refresh()

    def _say(self, text: str) -> None:
        self.status.setText(text)


def _duration(seconds: float) -> str:
    """``about 12 minutes`` style wording (seconds under two minutes, hours over two)."""
    if seconds < 120:
        return f"{max(1, round(seconds))} seconds"
    if seconds < 7200:
        return f"{round(seconds / 60)} minutes"
    return f"{seconds / 3600:.1f} hours"
