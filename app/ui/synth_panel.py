"""The Synthesis panel: more training data from the simulator or from a Vox2Vox generator, kept in the project.

A thin view over three jobs (:mod:`app.core.jobs`): :func:`app.core.simulate.synthesize_job` (the simulator),
:func:`app.training.vox2vox.train_vox2vox` (learn a generator from the project's annotated images; pausable,
resumable from its checkpoint) and :func:`app.training.vox2vox.generate_job` (volumes from that generator). The
panel collects their settings and builds job factories ``factory(cancel, pause)`` that the window's
``start_job`` runs in a worker; torch is imported only there.

Where things go in the project::

    <root>/synthetic/<run>/                  one run: <stem>.tif + <stem>.vectors.csv (+ .vectors.json) per volume
    <root>/synthetic/<run>/cellpol-synthetic.json   what made the run and whether training uses it
    <root>/models/vox2vox/generator.json     the project's Vox2Vox generator (+ .safetensors, .checkpoints/,
                                             .log.csv, .ssim.csv as the training writes them, and
                                             .settings.json: the settings a resume needs)

The runs ticked "Use in training" are :meth:`SynthPanel.training_folders` (or :func:`training_folders` of a
project), the folders the Train panel mixes in as ``cellpol train --synthetic-dir`` does.
"""

from __future__ import annotations

import csv
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pyqtgraph as pg
import shiboken6
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Signal

from app.core.errors import CellPolError
from app.core.fileutil import atomic_write_json
from app.core.imageio import find_images
from app.core.jobs import CancelToken, JobEvent, PauseToken, Result
from app.core.simulate import PRESETS
from app.training.dataset import match_project
from app.ui.widgets import show_progress

JobFactory = Callable[[CancelToken, PauseToken], Iterator[JobEvent]]

#: The file in a run's folder that says what made it and whether training uses it.
RUN_FILE = "cellpol-synthetic.json"
SIMULATOR = "simulator"
VOX2VOX = "vox2vox"
#: The project's generator, as a model stem under ``models/``.
GENERATOR_STEM = ("vox2vox", "generator")
#: Loss curves drawn (key of the training's ``step`` losses, label, colour) and SSIM curves (key of ``epoch`` metrics).
LOSS_CURVES = (("g_total", "G total", "#1f77b4"), ("g_gan", "G adversarial", "#17becf"), ("d", "D", "#d62728"))
SSIM_CURVES = (("ssim", "SSIM", "#2ca02c"), ("ssim_nucleus", "nucleus", "#9467bd"), ("ssim_golgi", "Golgi", "#ff7f0e"))
TREE_COLUMNS = ("Run / volume", "Made by", "Shape Z×Y×X", "Vectors", "Use in training")
_USE_COLUMN = 4
_PATH_ROLE = QtCore.Qt.ItemDataRole.UserRole
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NO_PROJECT = "Open a project first (File ▸ Open project…): synthetic volumes are kept in its synthetic/ folder."


# ------------------------------------------------------------------------------------------
# The project's synthetic runs (files only, no Qt)
# ------------------------------------------------------------------------------------------
def synthetic_folder(project: Any) -> Path:
    """The project's ``synthetic/`` folder (where every run goes)."""
    return Path(project.folder("synthetic"))


def generator_paths(project: Any) -> dict[str, Path]:
    """Where the project's Vox2Vox generator lives: the names of
    :func:`app.training.vox2vox.output_paths` for ``models/vox2vox/generator``, and ``settings`` (the run's
    settings, kept so that a run stopped or killed can be resumed with the settings of its checkpoint)."""
    stem = Path(project.root).joinpath("models", *GENERATOR_STEM)
    return {"model": stem.with_name(stem.name + ".json"), "checkpoints": stem.with_name(stem.name + ".checkpoints"),
            "log": stem.with_name(stem.name + ".log.csv"), "eval_log": stem.with_name(stem.name + ".ssim.csv"),
            "settings": stem.with_name(stem.name + ".settings.json"), "stem": stem}


@dataclass
class SyntheticVolume:
    """One volume of a run: the image, its shape ``(Z, Y, X)`` and number of vectors (from the vectors' sidecar,
    ``None`` where it does not say)."""

    path: Path
    shape: Optional[tuple[int, ...]] = None
    n_vectors: Optional[int] = None


@dataclass
class SyntheticRun:
    """One folder of ``synthetic/``: what made it (``simulator``, ``vox2vox`` or ``""``), whether training uses
    it, its settings and its volumes."""

    folder: Path
    kind: str = ""
    use_in_training: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    volumes: list[SyntheticVolume] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name


def read_run(folder: Path) -> SyntheticRun:
    """The run in ``folder`` (its :data:`RUN_FILE`, when readable, and its volumes)."""
    info: dict[str, Any] = {}
    try:
        info = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if not isinstance(info, dict):
        info = {}
    run = SyntheticRun(folder, str(info.get("kind", "")), info.get("use_in_training") is True,
                       info.get("settings") if isinstance(info.get("settings"), dict) else {})
    for image in find_images([folder]):
        run.volumes.append(_describe_volume(image))
    return run


def _describe_volume(image: Path) -> SyntheticVolume:
    stem = image.name[: -len(".tif")] if image.name.endswith(".tif") else image.stem
    volume = SyntheticVolume(image)
    try:
        sidecar = json.loads(image.with_name(f"{stem}.vectors.json").read_text(encoding="utf-8"))
        volume.shape = tuple(int(s) for s in sidecar["image_shape_zyx"])
        volume.n_vectors = int(sidecar["n_pairs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return volume


def list_runs(project: Any) -> list[SyntheticRun]:
    """The project's synthetic runs, by name."""
    root = synthetic_folder(project)
    if not root.is_dir():
        return []
    return [read_run(folder) for folder in sorted(root.iterdir(), key=lambda p: p.name.lower())
            if folder.is_dir() and not folder.name.startswith(".")]


def write_run_file(folder: Path, kind: str, settings: dict[str, Any], use_in_training: bool = False) -> None:
    """Write a run's :data:`RUN_FILE` (kind, settings, the training tick)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_FILE, {"format": "cellpol-synthetic", "version": 1, "kind": kind,
                                          "use_in_training": bool(use_in_training), "settings": settings})


def set_use_in_training(folder: Path, use: bool) -> None:
    """Tick or untick a run for training (its :data:`RUN_FILE`, other entries kept)."""
    path = folder / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    info.setdefault("format", "cellpol-synthetic")
    info.setdefault("version", 1)
    info["use_in_training"] = bool(use)
    atomic_write_json(path, info)


def training_folders(project: Any) -> list[Path]:
    """The project's runs ticked "Use in training" that hold at least one volume."""
    return [run.folder for run in list_runs(project) if run.use_in_training and run.volumes]


def new_run_name(project: Any, prefix: str) -> str:
    """``<prefix>-1``, ``<prefix>-2``, …: the first name not taken in ``synthetic/``."""
    root = synthetic_folder(project)
    k = 1
    while (root / f"{prefix}-{k}").exists():
        k += 1
    return f"{prefix}-{k}"


def check_run_name(project: Any, name: str) -> Path:
    """The folder of a new run ``name``.

    Raises
    ------
    CellPolError
        A name that is not a plain folder name, or a run of that name that already holds volumes.
    """
    if not _NAME_OK.match(name):
        raise CellPolError(f"The run name {name!r} must be a plain folder name: letters, digits, '-', '_' or '.'.")
    folder = synthetic_folder(project) / name
    if folder.is_dir() and find_images([folder]):
        raise CellPolError(f"A run named {name!r} already holds volumes; choose another name.")
    return folder


def checkpoint_step(checkpoints: Path) -> Optional[tuple[int, int]]:
    """``(step, total_steps)`` of the Vox2Vox checkpoint in ``checkpoints`` (read from the safetensors header
    alone, without torch), or ``None`` when there is none or it cannot be read."""
    path = checkpoints / "last.ckpt.safetensors"
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if not 0 < size < 100_000_000:
                return None
            state = json.loads(json.loads(handle.read(size))["__metadata__"]["state"])
        return int(state["step"]), int(state["total_steps"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _read_log(path: Path, keys: Sequence[str]) -> dict[str, list[float]]:
    """The columns ``step`` and ``keys`` of a training CSV log (empty where it cannot be read)."""
    columns: dict[str, list[float]] = {key: [] for key in ("step", *keys)}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                values = [float(row[key]) for key in columns]
                for key, value in zip(columns, values):
                    columns[key].append(value)
    except (OSError, ValueError, KeyError, TypeError):
        return {key: [] for key in columns}
    return columns


# ------------------------------------------------------------------------------------------
# Job factories (what runs in the worker)
# ------------------------------------------------------------------------------------------
def simulate_factory(out: Path, n: int, options: dict[str, Any]) -> JobFactory:
    """A factory for :func:`app.core.simulate.synthesize_job` writing ``n`` volumes into the run ``out`` with
    ``options`` (``preset``, ``shape``, ``voxel_size``, ``seed``, ``vary_samples``, polarity)."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        from app.core.simulate import synthesize_job

        write_run_file(out, SIMULATOR, {"n": n, **options})
        return (yield from synthesize_job(out, n, cancel=cancel, **options))
    return factory


def vox2vox_train_factory(settings: dict[str, Any], settings_path: Path) -> JobFactory:
    """A factory for :func:`app.training.vox2vox.train_vox2vox` with :class:`~app.training.vox2vox.Vox2VoxOptions`
    ``settings`` (JSON values), first kept in ``settings_path`` for a later resume."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        from app.training.vox2vox import Vox2VoxOptions, train_vox2vox
        from app.ui.workers import freeze_heap

        freeze_heap("torch")
        settings_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(settings_path, {**settings, "overwrite": False})
        return (yield from train_vox2vox(Vox2VoxOptions(**settings), cancel=cancel, pause=pause))
    return factory


def vox2vox_generate_factory(model: Path, n: int, out: Path, seed: int, shape: Optional[Sequence[int]],
                             dropout: bool, device: str) -> JobFactory:
    """A factory for :func:`app.training.vox2vox.generate_job`: ``n`` volumes from ``model`` into the run ``out``."""
    def factory(cancel: CancelToken, pause: PauseToken) -> Iterator[JobEvent]:
        from app.training.vox2vox import generate_job
        from app.ui.workers import freeze_heap

        freeze_heap("torch")
        write_run_file(out, VOX2VOX, {"model": str(model), "n": n, "seed": seed,
                                      "shape": list(shape) if shape else None, "dropout": dropout})
        return (yield from generate_job(model, n, out, seed=seed, shape=shape, dropout=dropout, device=device,
                                        cancel=cancel))
    return factory


# ------------------------------------------------------------------------------------------
# Small widgets
# ------------------------------------------------------------------------------------------
def _int_spin(name: str, minimum: int, maximum: int, value: int, tooltip: str = "",
              special: str = "") -> QtWidgets.QSpinBox:
    spin = QtWidgets.QSpinBox(objectName=f"cellpol.synth.{name}")
    spin.setRange(minimum, maximum)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    spin.setMinimumWidth(80)
    if special:
        spin.setSpecialValueText(special)
    return spin


def _float_spin(name: str, minimum: float, maximum: float, value: float, decimals: int, step: float,
                tooltip: str = "") -> QtWidgets.QDoubleSpinBox:
    spin = QtWidgets.QDoubleSpinBox(objectName=f"cellpol.synth.{name}")
    spin.setRange(minimum, maximum)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    return spin


def _row(*widgets: QtWidgets.QWidget, stretch: bool = False) -> QtWidgets.QWidget:
    holder = QtWidgets.QWidget()
    layout = QtWidgets.QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    if stretch:
        layout.addStretch(1)
    return holder


def _zyx_spins(name: str, minimum: int, maximum: int, values: Sequence[int], tooltip: str,
               special: str = "") -> list[QtWidgets.QSpinBox]:
    return [_int_spin(f"{name}_{axis}", minimum, maximum, value, f"{tooltip} ({axis})", special)
            for axis, value in zip("zyx", values)]


def _plot(widget: pg.GraphicsLayoutWidget, row: int, title: str, x_label: str) -> pg.PlotItem:
    plot = widget.addPlot(row=row, col=0, title=f"<span style='color:#222'>{title}</span>")
    plot.showGrid(x=True, y=True, alpha=0.25)
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setPen(pg.mkPen("#555"))
        axis.setTextPen(pg.mkPen("#222"))
    plot.setLabel("bottom", x_label, color="#222")
    plot.hideButtons()
    legend = plot.addLegend(offset=(-8, 8), labelTextColor="#222", brush=pg.mkBrush(255, 255, 255, 200))
    legend.setParentItem(plot.vb)
    return plot


# ------------------------------------------------------------------------------------------
# The panel
# ------------------------------------------------------------------------------------------
class SynthPanel(QtWidgets.QWidget):
    """Simulate volumes, or train a Vox2Vox generator on the project's annotated images and generate with it;
    list the project's synthetic runs, open their volumes, and choose which ones training uses.

    Parameters
    ----------
    start_job : callable
        ``start_job(title, factory, can_pause=False) -> JobHandle`` (the window's, :func:`app.ui.workers.start_job`).
    get_project : callable
        ``get_project() -> Project or None``: the open project (runs go into its ``synthetic/``).
    open_image : callable
        ``open_image(path)``: open a listed volume in the window (double-click).
    parent : QWidget, optional
    get_device : callable, optional
        ``get_device() -> str``: the device Vox2Vox trains and generates on (default ``"auto"``).

    Signals
    -------
    runs_changed()
        The list of runs was read again (after a job, a refresh or a tick).
    training_folders_changed(list)
        The runs ticked "Use in training" changed; the new :meth:`training_folders`.
    """

    runs_changed = Signal()
    training_folders_changed = Signal(object)

    def __init__(self, start_job: Callable[..., Any], get_project: Callable[[], Any],
                 open_image: Callable[[Path], Any], parent: Optional[QtWidgets.QWidget] = None,
                 get_device: Callable[[], str] = lambda: "auto",
                 compare: Optional[Callable[[Path], Any]] = None) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.synth")
        self._compare = compare  # compare(volume path): show it beside the real image open in the window
        self._start_job = start_job
        self._get_project = get_project
        self._open_image = open_image
        self._get_device = get_device
        self.sim_handle: Any = None  # the simulator's running JobHandle
        self.vox_handle: Any = None  # Vox2Vox's running JobHandle (training or generation)
        self._filling = False
        self._loss: dict[str, list[float]] = {}
        self._ssim: dict[str, list[float]] = {}

        self.tabs = QtWidgets.QTabWidget(objectName="cellpol.synth.tabs")
        self.tabs.addTab(self._build_simulator(), "Simulator")
        self.tabs.addTab(self._build_vox2vox(), "Vox2Vox")

        self.tree = QtWidgets.QTreeWidget(objectName="cellpol.synth.runs")
        self.tree.setColumnCount(len(TREE_COLUMNS))
        self.tree.setHeaderLabels(TREE_COLUMNS)
        self.tree.setUniformRowHeights(True)
        self.tree.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.header().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setStretchLastSection(False)
        self.tree.setToolTip("Double-click a volume to open it in the viewer. Tick a run to mix it into training.")
        self.tree.itemDoubleClicked.connect(self._item_activated)
        self.tree.itemChanged.connect(self._item_changed)
        self.refresh_button = QtWidgets.QPushButton("Refresh", objectName="cellpol.synth.refresh")
        self.refresh_button.clicked.connect(self.refresh_runs)
        self.open_button = QtWidgets.QPushButton("Open volume", objectName="cellpol.synth.open")
        self.open_button.setToolTip("Open the selected volume in the viewer (or double-click it)")
        self.open_button.clicked.connect(lambda: self._item_activated(self.tree.currentItem(), 0))
        self.compare_button = QtWidgets.QPushButton("Compare with the open image", objectName="cellpol.synth.compare")
        self.compare_button.setToolTip("Show the selected volume beside the real image open in the main window")
        self.compare_button.clicked.connect(self.compare_selected)
        self.compare_button.setVisible(compare is not None)
        self.runs_label = QtWidgets.QLabel(objectName="cellpol.synth.runs_label")
        self.runs_label.setWordWrap(True)

        runs_box = QtWidgets.QGroupBox("Synthetic data in the project")
        runs_layout = QtWidgets.QVBoxLayout(runs_box)
        runs_layout.addWidget(self.tree, 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.runs_label, 1)
        row.addWidget(self.compare_button)
        row.addWidget(self.open_button)
        row.addWidget(self.refresh_button)
        runs_layout.addLayout(row)

        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        splitter.addWidget(self.tabs)
        splitter.addWidget(runs_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([700, 560])

        self.status = QtWidgets.QLabel(objectName="cellpol.synth.status")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.status)

        self._preset_chosen()
        self._polarity_chosen()
        self.refresh()

    # --- building ----------------------------------------------------------------------------
    def _build_simulator(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget(objectName="cellpol.synth.simulator")
        self.preset_combo = QtWidgets.QComboBox(objectName="cellpol.synth.preset")
        for name, preset in PRESETS.items():
            self.preset_combo.addItem(name, name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, preset.description,
                                          QtCore.Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.currentIndexChanged.connect(self._preset_chosen)
        self.preset_note = QtWidgets.QLabel(objectName="cellpol.synth.preset_note")
        self.preset_note.setWordWrap(True)
        self.preset_note.setStyleSheet("color: #555")
        self.count_spin = _int_spin("count", 1, 10000, 10, "How many volumes to simulate")
        self.shape_spins = _zyx_spins("shape", 1, 2048, (64, 256, 256), "Volume size in voxels; Z = 1 gives 2D images")
        for spin in self.shape_spins[1:]:
            spin.setMinimum(8)
        self.voxel_spins = [_float_spin(f"voxel_{axis}", 0.01, 10.0, 0.333, 3, 0.05, f"Voxel size in µm ({axis})")
                            for axis in "zyx"]
        self.voxel_reset = QtWidgets.QToolButton(objectName="cellpol.synth.voxel_reset")
        self.voxel_reset.setText("Preset's")
        self.voxel_reset.setToolTip("Back to the preset's voxel size")
        self.voxel_reset.clicked.connect(self._preset_voxel_size)
        self.sim_seed = _int_spin("seed", 0, 2**31 - 1, 0, "Random seed: volume k is made from the seed and k, so any "
                                  "volume can be made again alone")
        self.vary_check = QtWidgets.QCheckBox("Vary the samples", objectName="cellpol.synth.vary")
        self.vary_check.setToolTip("Each volume draws its cell density, distractors, stain brightness and optics from "
                                   "wide ranges instead of the preset's fixed amounts (broader training data)")
        self.polarity_combo = QtWidgets.QComboBox(objectName="cellpol.synth.polarity")
        self.polarity_combo.addItem("None (random directions)", False)
        self.polarity_combo.addItem("Towards a direction", True)
        self.polarity_combo.currentIndexChanged.connect(self._polarity_chosen)
        self.direction_spins = [_float_spin(f"direction_{axis}", -1.0, 1.0, value, 2, 0.1,
                                            f"Preferred nucleus→Golgi direction, {axis} component")
                                for axis, value in zip("zyx", (0.0, 0.0, 1.0))]
        self.concentration_spin = _float_spin("concentration", 0.0, 100.0, 4.0, 1, 0.5,
                                              "von Mises–Fisher concentration κ around the direction (0 = uniform, "
                                              "5 = strong, 20 = tight)")
        self.sim_name = QtWidgets.QLineEdit(objectName="cellpol.synth.sim_name")
        self.sim_name.setToolTip("Folder of the run in the project's synthetic/ (empty: a new name)")
        self.sim_button = QtWidgets.QPushButton("Generate", objectName="cellpol.synth.generate")
        self.sim_button.setToolTip("Simulate the volumes with their ground-truth vectors into the project")
        self.sim_button.clicked.connect(self.simulate)
        self.sim_cancel = QtWidgets.QPushButton("Cancel", objectName="cellpol.synth.sim_cancel")
        self.sim_cancel.setEnabled(False)
        self.sim_cancel.clicked.connect(lambda: self.sim_handle is not None and self.sim_handle.cancel())
        self.sim_progress = QtWidgets.QProgressBar(objectName="cellpol.synth.sim_progress")

        form = QtWidgets.QFormLayout()
        form.addRow("Microscope", self.preset_combo)
        form.addRow("", self.preset_note)
        form.addRow("Volumes", _row(self.count_spin, stretch=True))
        form.addRow("Shape Z Y X", _row(*self.shape_spins, stretch=True))
        form.addRow("Voxel µm z y x", _row(*self.voxel_spins, self.voxel_reset, stretch=True))
        form.addRow("Seed", _row(self.sim_seed, stretch=True))
        form.addRow("", self.vary_check)
        form.addRow("Polarity", self.polarity_combo)
        form.addRow("Direction z y x", _row(*self.direction_spins, stretch=True))
        form.addRow("Concentration κ", _row(self.concentration_spin, stretch=True))
        form.addRow("Run name", self.sim_name)
        layout = QtWidgets.QVBoxLayout(page)
        layout.addLayout(form)
        layout.addStretch(1)
        layout.addWidget(_row(self.sim_progress, self.sim_button, self.sim_cancel))
        return page

    def _build_vox2vox(self) -> QtWidgets.QWidget:
        page = QtWidgets.QWidget(objectName="cellpol.synth.vox2vox")
        self.steps_spin = _int_spin("steps", 1, 1_000_000, 2000, "Training steps (one batch of patches each)")
        self.eval_spin = _int_spin("eval_every", 1, 100_000, 100, "Steps between SSIM evaluations on held-out images "
                                   "(and checkpoints)")
        self.batch_spin = _int_spin("batch", 1, 64, 2, "Patches per step")
        self.filters_spin = _int_spin("base_filters", 1, 128, 16, "Generator width (filters of its first level)")
        self.levels_spin = _int_spin("levels", 1, 6, 4, "Generator depth (levels)")
        self.patch_spins = _zyx_spins("patch", 0, 1024, (0, 0, 0), "Training patch in voxels, a multiple of the "
                                      "generator's strides; auto: about 12×32×32 µm", special="auto")
        self.vox_seed = _int_spin("vox_seed", 0, 2**31 - 1, 0, "Random seed of the training")
        self.train_button = QtWidgets.QPushButton("Train", objectName="cellpol.synth.train")
        self.train_button.setToolTip("Train a new generator on the project's annotated images (replaces the "
                                     "project's generator and its checkpoint)")
        self.train_button.clicked.connect(self.train)
        self.resume_button = QtWidgets.QPushButton("Resume from checkpoint", objectName="cellpol.synth.resume")
        self.resume_button.setToolTip("Go on with the stopped training from its last checkpoint, with its settings")
        self.resume_button.clicked.connect(self.resume_training)
        self.pause_button = QtWidgets.QPushButton("Pause", objectName="cellpol.synth.pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip("Pause the training (a checkpoint is saved); press again to go on")
        self.pause_button.toggled.connect(self._pause_toggled)
        self.vox_cancel = QtWidgets.QPushButton("Cancel", objectName="cellpol.synth.vox_cancel")
        self.vox_cancel.setToolTip("Stop; training keeps a checkpoint to resume from")
        self.vox_cancel.clicked.connect(lambda: self.vox_handle is not None and self.vox_handle.cancel())
        self.vox_progress = QtWidgets.QProgressBar(objectName="cellpol.synth.vox_progress")
        self.generator_label = QtWidgets.QLabel(objectName="cellpol.synth.generator")
        self.generator_label.setWordWrap(True)

        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setObjectName("cellpol.synth.curves")
        self.plots.setBackground("w")
        self.plots.setMinimumHeight(260)
        self.loss_plot = _plot(self.plots, 0, "Losses per step", "step")
        self.loss_plot.setLogMode(y=True)
        self.ssim_plot = _plot(self.plots, 1, "SSIM on held-out images", "step")
        self.ssim_plot.setYRange(0.0, 1.0, padding=0.05)
        self.loss_curves = {key: self.loss_plot.plot([], [], pen=pg.mkPen(colour, width=1.5), name=label)
                            for key, label, colour in LOSS_CURVES}
        self.ssim_curves = {key: self.ssim_plot.plot([], [], pen=pg.mkPen(colour, width=2), name=label, symbol="o",
                                                     symbolSize=5, symbolBrush=colour, symbolPen=None)
                            for key, label, colour in SSIM_CURVES}

        self.gen_count = _int_spin("gen_count", 1, 10000, 10, "How many volumes to generate")
        self.gen_seed = _int_spin("gen_seed", 0, 2**31 - 1, 0, "Random seed (volume k uses the seed and k)")
        self.gen_shape = _zyx_spins("gen_shape", 0, 2048, (0, 0, 0), "Volume size in voxels at the generator's voxel "
                                    "size, a multiple of its strides; auto: its training images' size", special="auto")
        self.dropout_check = QtWidgets.QCheckBox("Dropout on (more variety)", objectName="cellpol.synth.dropout")
        self.gen_name = QtWidgets.QLineEdit(objectName="cellpol.synth.gen_name")
        self.gen_name.setToolTip("Folder of the run in the project's synthetic/ (empty: a new name)")
        self.gen_button = QtWidgets.QPushButton("Generate volumes", objectName="cellpol.synth.vox_generate")
        self.gen_button.setToolTip("Generate volumes with exact ground-truth vectors from the trained generator")
        self.gen_button.clicked.connect(self.generate)

        train_box = QtWidgets.QGroupBox("Train on the project's annotated images")
        form = QtWidgets.QFormLayout(train_box)
        form.addRow("Steps", _row(self.steps_spin, QtWidgets.QLabel("SSIM every"), self.eval_spin, stretch=True))
        form.addRow("Batch", _row(self.batch_spin, QtWidgets.QLabel("width"), self.filters_spin,
                                  QtWidgets.QLabel("depth"), self.levels_spin, QtWidgets.QLabel("seed"), self.vox_seed,
                                  stretch=True))
        form.addRow("Patch Z Y X", _row(*self.patch_spins, stretch=True))
        form.addRow(_row(self.train_button, self.pause_button, self.vox_cancel, self.resume_button, stretch=True))
        form.addRow(self.generator_label)
        gen_box = QtWidgets.QGroupBox("Generate from the trained generator")
        form = QtWidgets.QFormLayout(gen_box)
        form.addRow("Volumes", _row(self.gen_count, QtWidgets.QLabel("seed"), self.gen_seed, self.dropout_check,
                                    stretch=True))
        form.addRow("Shape Z Y X", _row(*self.gen_shape, stretch=True))
        form.addRow("Run name", _row(self.gen_name, self.gen_button))
        layout = QtWidgets.QVBoxLayout(page)
        layout.addWidget(train_box)
        layout.addWidget(self.plots, 1)
        layout.addWidget(self.vox_progress)
        layout.addWidget(gen_box)
        return page

    # --- state -------------------------------------------------------------------------------
    @property
    def sim_busy(self) -> bool:
        return self.sim_handle is not None

    @property
    def vox_busy(self) -> bool:
        return self.vox_handle is not None

    def _say(self, message: str) -> None:
        self.status.setText(message)

    def _project_for(self, busy: bool) -> Any:
        """The open project when a job may start (not ``busy``); else ``None``, and without a project the status
        line says so."""
        project = self._get_project()
        if project is None:
            self._say(NO_PROJECT)
        return None if busy else project

    def refresh(self) -> None:
        """Read the project again: its runs, its generator and checkpoint, the buttons."""
        self.refresh_runs()
        self._update_generator()

    def _update_controls(self) -> None:
        project = self._get_project()
        has = project is not None
        self.sim_button.setEnabled(not self.sim_busy)
        self.sim_cancel.setEnabled(self.sim_busy)
        training = self.vox_busy and self.vox_handle.can_pause
        self.train_button.setEnabled(not self.vox_busy)
        self.pause_button.setEnabled(training)
        self.vox_cancel.setEnabled(self.vox_busy)
        paths = generator_paths(project) if has else None
        saved = checkpoint_step(paths["checkpoints"]) if paths is not None else None
        self.resume_button.setEnabled(not self.vox_busy and saved is not None and paths["settings"].is_file()
                                      and (saved[0] < saved[1] or not paths["model"].is_file()))
        self.gen_button.setEnabled(not self.vox_busy and paths is not None and paths["model"].is_file())
        self.refresh_button.setEnabled(has)

    def _update_generator(self) -> None:
        """Say what the project has: a generator, a checkpoint to resume, nothing; draw the logged curves."""
        project = self._get_project()
        if project is None:
            self.generator_label.setText("No project open.")
        else:
            paths = generator_paths(project)
            saved = checkpoint_step(paths["checkpoints"])
            lines = []
            if paths["model"].is_file():
                lines.append(f"Generator: models/{'/'.join(GENERATOR_STEM)}.json" + _ssim_note(paths["model"]))
            if saved is not None and saved[0] < saved[1]:
                lines.append(f"A stopped training has a checkpoint at step {saved[0]} of {saved[1]}: resume it, or "
                             "train anew.")
            self.generator_label.setText("\n".join(lines) or "No generator yet: train one on the annotated images.")
            if not self.vox_busy:
                self._load_curves(paths)
        self._update_controls()

    # --- the runs ----------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        """List the project's synthetic runs and their volumes again."""
        project = self._get_project()
        runs = list_runs(project) if project is not None else []
        expanded = {self.tree.topLevelItem(i).text(0) for i in range(self.tree.topLevelItemCount())
                    if self.tree.topLevelItem(i).isExpanded()}
        self._filling = True
        try:
            self.tree.clear()
            for run in runs:
                item = QtWidgets.QTreeWidgetItem([run.name, {SIMULATOR: "simulator", VOX2VOX: "Vox2Vox"}.get(
                    run.kind, "?"), "", f"{sum(v.n_vectors or 0 for v in run.volumes)}", ""])
                item.setData(0, _PATH_ROLE, str(run.folder))
                item.setToolTip(0, f"{run.folder}\n{len(run.volumes)} volume(s)")
                item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(_USE_COLUMN, QtCore.Qt.CheckState.Checked if run.use_in_training
                                   else QtCore.Qt.CheckState.Unchecked)
                item.setText(2, f"{len(run.volumes)} volume(s)")
                for volume in run.volumes:
                    child = QtWidgets.QTreeWidgetItem([
                        volume.path.name, "", "×".join(map(str, volume.shape)) if volume.shape else "?",
                        "" if volume.n_vectors is None else str(volume.n_vectors), ""])
                    child.setData(0, _PATH_ROLE, str(volume.path))
                    child.setToolTip(0, str(volume.path))
                    item.addChild(child)
                self.tree.addTopLevelItem(item)
                item.setExpanded(run.name in expanded)
        finally:
            self._filling = False
        self._show_counts(runs)
        self._update_controls()
        self.runs_changed.emit()

    def _show_counts(self, runs: Sequence[SyntheticRun]) -> None:
        if self._get_project() is None:
            self.runs_label.setText("No project open.")
            return
        used = sum(run.use_in_training and bool(run.volumes) for run in runs)
        self.runs_label.setText(f"{len(runs)} run(s), {sum(len(r.volumes) for r in runs)} volume(s); "
                                f"{used} used in training.")

    def run_item(self, name: str) -> Optional[QtWidgets.QTreeWidgetItem]:
        """The tree row of the run ``name`` (``None`` when not listed)."""
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if item.text(0) == name:
                return item
        return None

    def training_folders(self) -> list[Path]:
        """The runs of the open project ticked "Use in training" (with at least one volume): the folders the Train
        panel mixes into training."""
        project = self._get_project()
        return training_folders(project) if project is not None else []

    def set_use_in_training(self, name: str, use: bool) -> None:
        """Tick or untick the run ``name`` (as clicking its box does)."""
        item = self.run_item(name)
        if item is not None:
            item.setCheckState(_USE_COLUMN, QtCore.Qt.CheckState.Checked if use else QtCore.Qt.CheckState.Unchecked)

    def _item_changed(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        if self._filling or column != _USE_COLUMN or item.parent() is not None:
            return
        folder = Path(item.data(0, _PATH_ROLE))
        use = item.checkState(_USE_COLUMN) == QtCore.Qt.CheckState.Checked
        try:
            set_use_in_training(folder, use)
        except (OSError, CellPolError) as exc:
            self._say(f"Could not record the choice for {folder.name}: {exc}")
            return
        self._say(f"{folder.name} is {'now' if use else 'no longer'} used in training.")
        project = self._get_project()
        self._show_counts(list_runs(project) if project is not None else [])
        self.training_folders_changed.emit(self.training_folders())

    def _volume_of(self, item: Optional[QtWidgets.QTreeWidgetItem]) -> Optional[Path]:
        """The volume an item stands for (a run: its first volume)."""
        if item is None:
            return None
        if item.parent() is None:
            if item.childCount() == 0:
                return None
            item = item.child(0)
        return Path(item.data(0, _PATH_ROLE))

    def _item_activated(self, item: Optional[QtWidgets.QTreeWidgetItem], column: int = 0) -> None:
        path = self._volume_of(item)
        if path is not None:
            self._open_image(path)

    def compare_selected(self) -> Any:
        """Show the selected volume beside the real image open in the main window."""
        path = self._volume_of(self.tree.currentItem())
        if path is None or self._compare is None:
            self.status.setText("Select a synthetic volume to compare with the open image.")
            return None
        return self._compare(path)

    # --- the simulator -----------------------------------------------------------------------
    def _preset_chosen(self) -> None:
        preset = PRESETS[self.preset_combo.currentData()]
        self.preset_note.setText(preset.description)
        self._preset_voxel_size()

    def _preset_voxel_size(self) -> None:
        for spin, value in zip(self.voxel_spins, PRESETS[self.preset_combo.currentData()].voxel_size):
            spin.setValue(value)

    def _polarity_chosen(self) -> None:
        directed = bool(self.polarity_combo.currentData())
        for spin in (*self.direction_spins, self.concentration_spin):
            spin.setEnabled(directed)

    def _run_folder(self, project: Any, name_edit: QtWidgets.QLineEdit, prefix: str) -> Optional[Path]:
        """The folder of the new run named in ``name_edit`` (empty: the next free ``<prefix>-k``); ``None`` with the
        reason in the status line when the name cannot be used."""
        try:
            return check_run_name(project, name_edit.text().strip() or new_run_name(project, prefix))
        except CellPolError as exc:
            self._say(str(exc))
            return None

    def simulation_options(self) -> dict[str, Any]:
        """The simulator's settings as :func:`app.core.simulate.synthesize_job` takes them."""
        options: dict[str, Any] = {
            "preset": self.preset_combo.currentData(), "shape": tuple(s.value() for s in self.shape_spins),
            "voxel_size": tuple(round(s.value(), 6) for s in self.voxel_spins), "seed": self.sim_seed.value(),
            "vary_samples": self.vary_check.isChecked()}
        if self.polarity_combo.currentData():
            options["polarity_direction"] = tuple(s.value() for s in self.direction_spins)
            options["polarity_concentration"] = self.concentration_spin.value()
        return options

    def simulate(self) -> Any:
        """Simulate the volumes into ``synthetic/<run name>/``; returns the JobHandle (``None``: not started, the
        reason in the status line)."""
        project = self._project_for(self.sim_busy)
        if project is None:
            return None
        options = self.simulation_options()
        if options.get("polarity_direction") is not None and not any(options["polarity_direction"]):
            self._say("The polarity direction must not be 0 0 0: give the direction the Golgi lie towards.")
            return None
        out = self._run_folder(project, self.sim_name, "simulated")
        if out is None:
            return None
        n = self.count_spin.value()
        handle = self._start_job(f"Simulate {n} volume(s) into {out.name}", simulate_factory(out, n, options))
        self.sim_handle = handle
        self._connect(handle, self.sim_progress, lambda: setattr(self, "sim_handle", None), out)
        self._say(f"Simulating {n} volume(s) into synthetic/{out.name}…")
        return handle

    # --- Vox2Vox -----------------------------------------------------------------------------
    def training_settings(self, project: Any) -> dict[str, Any]:
        """The Vox2Vox training settings (:class:`~app.training.vox2vox.Vox2VoxOptions` fields, JSON values) for the
        project's annotated images.

        Raises
        ------
        CellPolError
            The project has no annotated image.
        """
        files, _unannotated = match_project(project.root)
        typed = {f.voxel_size for f in files}
        patch = [s.value() for s in self.patch_spins]
        paths = generator_paths(project)
        return {
            "images": [str(f.image) for f in files], "vectors": str(project.folder("annotations")),
            "out": str(paths["stem"]), "steps": self.steps_spin.value(), "eval_every": self.eval_spin.value(),
            "batch_size": self.batch_spin.value(), "base_filters": self.filters_spin.value(),
            "levels": self.levels_spin.value(), "patch_shape": patch if all(patch) else None,
            "seed": self.vox_seed.value(), "device": self._get_device(),
            # Voxel sizes typed into the project for images without metadata: one for all, when they agree.
            "voxel_size": list(next(iter(typed))) if len(typed) == 1 and None not in typed else None,
            "name": f"{project.name or Path(project.root).name} Vox2Vox", "overwrite": True}

    def train(self) -> Any:
        """Train a new generator on the project's annotated images (replacing the project's generator and its
        checkpoint); returns the JobHandle, or ``None`` with the reason in the status line."""
        project = self._project_for(self.vox_busy)
        if project is None:
            return None
        try:
            settings = self.training_settings(project)
        except CellPolError as exc:
            self._say(f"Vox2Vox learns from your annotated images: {exc}")
            return None
        return self._start_training(project, settings, "Train Vox2Vox")

    def resume_training(self) -> Any:
        """Go on with the project's stopped training from its checkpoint, with the settings it started with."""
        project = self._project_for(self.vox_busy)
        if project is None:
            return None
        paths = generator_paths(project)
        try:
            settings = json.loads(paths["settings"].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._say("There is no stopped Vox2Vox training to resume in this project.")
            return None
        settings["overwrite"] = False
        self._load_curves(paths)
        return self._start_training(project, settings, "Resume Vox2Vox")

    def _start_training(self, project: Any, settings: dict[str, Any], title: str) -> Any:
        paths = generator_paths(project)
        if settings.get("overwrite"):
            self._clear_curves()
        handle = self._start_job(title, vox2vox_train_factory(settings, paths["settings"]), can_pause=True)
        self.vox_handle = handle
        self.vox_progress.setRange(0, int(settings["steps"]))
        self._connect(handle, self.vox_progress, self._vox_ended, None)
        handle.event.connect(self._while_alive(self._training_event))
        self._say(f"{title}: reading the annotated images…")
        return handle

    def generate(self) -> Any:
        """Generate volumes from the project's generator into ``synthetic/<run name>/``; the JobHandle or ``None``."""
        project = self._project_for(self.vox_busy)
        if project is None:
            return None
        model = generator_paths(project)["model"]
        if not model.is_file():
            self._say("Train a Vox2Vox generator first (there is none in this project yet).")
            return None
        out = self._run_folder(project, self.gen_name, "vox2vox")
        if out is None:
            return None
        shape = [s.value() for s in self.gen_shape]
        n = self.gen_count.value()
        factory = vox2vox_generate_factory(model, n, out, self.gen_seed.value(), shape if all(shape) else None,
                                           self.dropout_check.isChecked(), self._get_device())
        handle = self._start_job(f"Generate {n} Vox2Vox volume(s) into {out.name}", factory)
        self.vox_handle = handle
        self._connect(handle, self.vox_progress, self._vox_ended, out)
        self._say(f"Generating {n} volume(s) into synthetic/{out.name}…")
        return handle

    def _vox_ended(self) -> None:
        self.vox_handle = None
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(False)
        self.pause_button.setText("Pause")
        self.pause_button.blockSignals(False)

    def _pause_toggled(self, paused: bool) -> None:
        handle = self.vox_handle
        if handle is None:
            return
        if paused:
            handle.pause()
            self.pause_button.setText("Continue")
            self._say("Pausing after this step…")
        else:
            handle.resume()
            self.pause_button.setText("Pause")
            self._say("Training goes on.")

    # --- the curves ----------------------------------------------------------------------------
    def _clear_curves(self) -> None:
        self._loss = {key: [] for key in ("step", *(k for k, _l, _c in LOSS_CURVES))}
        self._ssim = {key: [] for key in ("step", *(k for k, _l, _c in SSIM_CURVES))}
        self._draw_curves()

    def _load_curves(self, paths: dict[str, Path]) -> None:
        """The curves of the project's last training, from its logs (before a resume adds to them)."""
        self._loss = _read_log(paths["log"], [k for k, _l, _c in LOSS_CURVES])
        self._ssim = _read_log(paths["eval_log"], [k for k, _l, _c in SSIM_CURVES])
        saved = checkpoint_step(paths["checkpoints"])
        if saved is not None:  # steps logged after the checkpoint were lost with the stopped run: a resume redoes them
            for data in (self._loss, self._ssim):
                keep = sum(1 for s in data["step"] if s <= saved[0])
                for values in data.values():
                    del values[keep:]
        self._draw_curves()

    def _draw_curves(self) -> None:
        for curves, data in ((self.loss_curves, self._loss), (self.ssim_curves, self._ssim)):
            steps = data.get("step", [])
            for key, curve in curves.items():
                values = data.get(key, [])
                pairs = [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and (curves is not self.loss_curves
                                                                                      or v > 0)]
                curve.setData([s for s, _v in pairs], [v for _s, v in pairs])

    @staticmethod
    def _append(data: dict[str, list[float]], step: int, values: dict[str, Any]) -> None:
        """Add a row at ``step``, first dropping rows at or after it (a resumed run repeats the steps after its
        checkpoint)."""
        steps = data.setdefault("step", [])
        keep = sum(1 for s in steps if s < step)
        for key in list(data):
            del data[key][keep:]
        steps.append(float(step))
        for key in data:
            if key != "step":
                data[key].append(float(values.get(key, float("nan"))))

    def _training_event(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        if kind == "step":
            self._append(self._loss, event.step, event.losses)
            self._draw_curves()
        elif kind == "epoch":
            self._append(self._ssim, event.step, event.metrics)
            self._draw_curves()
            m = event.metrics
            self._say(f"Step {event.step}: SSIM {m.get('ssim', float('nan')):.3f} (nucleus "
                      f"{m.get('ssim_nucleus', float('nan')):.3f}, Golgi {m.get('ssim_golgi', float('nan')):.3f}) on "
                      "the held-out images.")
        elif kind == "paused":
            self._say(f"Paused at step {event.step}; checkpoint saved. Press Continue to go on.")
        elif kind == "info":
            self._say(event.message)
        elif kind == "done":
            m = event.metrics or {}
            self._say(f"Generator trained: {event.total_steps} steps in {event.seconds / 60:.1f} min, SSIM "
                      f"{m.get('ssim', float('nan')):.3f} on the held-out images. Generate volumes with it below.")

    # --- one job's signals -----------------------------------------------------------------------
    def _connect(self, handle: Any, bar: QtWidgets.QProgressBar, on_end: Callable[[], None],
                 out: Optional[Path]) -> None:
        if out is not None:  # volumes: busy until the first one is written
            bar.setRange(0, 0)
        bar.setValue(0)
        cancelled = f"{handle.title}: cancelled" + ("; the checkpoint is kept, resume it when you like."
                                                   if handle.can_pause else "; the volumes written so far are kept.")
        # The handle belongs to the window and may outlive the panel: nothing reaches a panel already deleted.
        alive = self._while_alive
        handle.event.connect(alive(lambda event: self._job_event(event, bar)))
        handle.succeeded.connect(alive(lambda result: self._succeeded(result, out)))
        handle.failed.connect(alive(lambda error: self._say(f"{handle.title} failed: {error}")))
        handle.cancelled.connect(alive(lambda: self._say(cancelled)))
        handle.ended.connect(alive(lambda: (on_end(), self.refresh())))
        self._update_controls()

    def _while_alive(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, called only while this panel's Qt object exists."""
        return lambda *args: function(*args) if shiboken6.isValid(self) else None

    def _job_event(self, event: Any, bar: QtWidgets.QProgressBar) -> None:
        if getattr(event, "kind", None) is not None:  # training: the bar counts steps
            if event.total_steps:
                bar.setRange(0, int(event.total_steps))
                bar.setValue(int(event.step))
            return
        if not show_progress(bar, event, self._say) and not isinstance(event, Result) and getattr(event, "message", ""):
            self._say(event.message)

    def _succeeded(self, result: Any, out: Optional[Path]) -> None:
        if out is None:
            return
        self.refresh_runs()
        item = self.run_item(out.name)
        if item is not None:
            item.setExpanded(True)
            self.tree.setCurrentItem(item)
        self._say(f"{len(result or [])} volume(s) with their vectors in synthetic/{out.name}. Double-click one to "
                  "open it; tick the run to use it in training.")


def _ssim_note(model: Path) -> str:
    """`` (SSIM 0.71 after 2000 steps)`` from a generator's JSON, or ``""``."""
    try:
        provenance = json.loads(model.read_text(encoding="utf-8")).get("provenance") or {}
        return f" (SSIM {float(provenance['final_ssim']['ssim']):.3f} after {int(provenance['steps'])} steps)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
