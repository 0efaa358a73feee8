"""The main window: it composes the slice views, the 3D view, the panels in their docks, the menus and the
status bar, and connects them to the document.

The window only wires things together: the annotation model is :class:`app.core.annotation.AnnotationModel`
(Qt-free), the shared view state is :class:`app.ui.state.ViewerState`, files are handled by
:class:`app.ui.document.DocumentController`, the views are :mod:`app.ui.slice_views` and :mod:`app.ui.viewer3d`,
the panels :mod:`app.ui.annotation_panel`, :mod:`app.ui.channel_controls`, :mod:`app.ui.project_panel` and
:mod:`app.ui.evaluation_panel`. The commands (text, keys, menus, toolbar) are :mod:`app.ui.actions`; the window
gives each its slot. The status bar is :mod:`app.ui.status_bar`, the legend :mod:`app.ui.legend`, screenshots
:mod:`app.ui.screenshot`. Long jobs start through :meth:`MainWindow.start_job` (:func:`app.ui.workers.start_job`) and
are listed in the Jobs dock (:mod:`app.ui.jobs_dock`); Tools ▸ Device chooses where torch jobs run
(:attr:`MainWindow.device`). ``run_app`` is the entry point of ``cellpol gui``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from PySide6 import QtCore, QtGui, QtWidgets

from app import __version__
from app.core.errors import CellPolError
from app.core.jobs import Progress
from app.core.project import MANUAL_SOURCES
from app.core.review import model_counts
from app.ui.actions import PANELS, create_actions, create_menus, fill_toolbar, shortcut_rows
from app.ui.annotation_panel import AnnotationPanel
from app.ui.applog import log_dir, log_path
from app.ui.channel_controls import ChannelControls
from app.ui.demo import demo_data, demo_predictions
from app.ui.dialogs import ShortcutsDialog, VoxelSizeDialog
from app.ui.document import IMAGE_FILTER, IMAGE_SUFFIXES, VECTOR_FILTERS, DocumentController
from app.ui.evaluation_panel import EvaluationPanel
from app.ui.jobs_dock import JobsDock
from app.ui.legend import Legend
from app.ui.project_panel import ProjectPanel
from app.ui.screenshot import grab_window, save_screenshot
from app.ui.slice_views import OrthoViews
from app.ui.state import ViewerState
from app.ui.status_bar import StatusBar
from app.ui.window_panels import LAZY_PANELS, PanelsMixin
from app.ui.workers import (JobFactory, JobHandle, freeze_heap, install_main_thread_collector, run_in_thread,
                             start_job)

__all__ = ["MainWindow", "demo_data", "grab_window", "run_app", "save_screenshot"]

SETTINGS_ORGANISATION = "CellPol"
SETTINGS_APPLICATION = "CellPol Studio"
#: Bump when the dock layout changes, so an old saved layout is not applied to new docks.
LAYOUT_VERSION = 3


def app_settings() -> QtCore.QSettings:
    """The user's settings (preferences, recent files, window layout)."""
    return QtCore.QSettings(SETTINGS_ORGANISATION, SETTINGS_APPLICATION)


class MainWindow(PanelsMixin, QtWidgets.QMainWindow):
    """CellPol Studio's main window.

    Parameters
    ----------
    settings : QSettings, optional
        Where preferences, recent files and window layout are remembered (default: the user's).
    enable_3d : bool
        Build the VTK view (tests of the 2D tools may leave it out).
    parent : QWidget, optional
    """

    def __init__(self, settings: Optional[QtCore.QSettings] = None, enable_3d: bool = True,
                 parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else app_settings()
        self.state = ViewerState(parent=self)
        self.model = self.state.model
        self.document = DocumentController(self.state, self.settings, self)
        self.ask_on_close = True
        self._workers: list = []
        self._closed = False
        self.setWindowTitle(f"CellPol Studio {__version__}")
        self.resize(1400, 900)
        self.setAcceptDrops(True)

        self.ortho = OrthoViews(self.state)
        self.legend = Legend(self.state)
        self.ortho.set_corner(self.legend)
        self.viewer3d = None
        if enable_3d:
            # Deliberately lazy: VTK and its OpenGL libraries are loaded only when the 3D view is built, so the
            # 2D tools (and their tests) work without them.
            from app.ui.viewer3d import Viewer3D

            self.viewer3d = Viewer3D(self.state)
        self.welcome = QtWidgets.QLabel(
            "<h2>CellPol Studio</h2><p>Open an image (Ctrl+O), drop a file or project folder here,<br>"
            "or open the demo (File ▸ Open demo volume).</p>")
        self.welcome.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.ortho)
        self.setCentralWidget(self.stack)

        self.actions: dict[str, QtGui.QAction] = create_actions(self, self._slots())
        self.actions["slab_z"].setChecked(True)
        self.actions["snap"].setChecked(self.state.snap)
        self.actions["redo"].setEnabled(False)
        self.actions["clear_reference"].setEnabled(False)
        menus = create_menus(self.menuBar(), self.actions)
        self.recent_menu, self.view_menu = menus["recent"], menus["view"]
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self.device = "auto"
        self._create_device_menu(menus["help"])
        self._create_docks()
        self.main_toolbar = self.addToolBar("Main")
        self.main_toolbar.setObjectName("main_toolbar")
        fill_toolbar(self.main_toolbar, self.actions)
        self.status_bar = StatusBar(self.state)
        self.setStatusBar(self.status_bar)
        self.position_label, self.mode_label = self.status_bar.position_label, self.status_bar.mode_label
        self._connect()
        self._update_review_actions()
        self._restore_settings()
        self.status_bar.show_device(f"Device: {self.device}", "Tools ▸ Device says what it is and chooses another")
        self._update_history()

    # ------------------------------------------------------------------------------------------
    # Composition
    # ------------------------------------------------------------------------------------------
    def _slots(self) -> dict[str, Callable]:
        """What each command of :data:`app.ui.actions.ACTIONS` does."""
        slots: dict[str, Callable] = {
            "open": self.open_dialog,
            "open_project": self.open_project_dialog,
            "new_project": self.new_project_dialog,
            "demo": self.open_demo,
            "save": self.save,
            "save_as": self.save_as_dialog,
            "import": self.import_dialog,
            "export_legacy": lambda: self.export_dialog("legacy"),
            "export_3dngmic": lambda: self.export_dialog("3dngmic"),
            "predict": self.show_predict_panel,
            "review": self.show_review_panel,
            "evaluate": self.show_evaluate_panel,
            "statistics": self.show_stats_panel,
            "train": self.show_train_panel,
            "synthesize": self.show_synth_panel,
            "review_start": lambda: self.show_review_panel().start(),
            "accept": lambda: self.show_review_panel().accept(),
            "reject": lambda: self.show_review_panel().reject(),
            "next_unreviewed": lambda: self.show_review_panel().step(1),
            "previous_unreviewed": lambda: self.show_review_panel().step(-1),
            "next_uncertain": lambda: self.show_review_panel().next_uncertain(),
            "reject_below": lambda: self.show_review_panel().reject_below(),
            "reference": self.reference_dialog,
            "clear_reference": lambda: self.document.set_reference(None),
            "voxel_size": self.voxel_size_dialog,
            "next_image": lambda: self.step_image(1),
            "previous_image": lambda: self.step_image(-1),
            "refresh_project": self.refresh_project,
            "screenshot": self.screenshot_dialog,
            "quit": self.close,
            "undo": self.undo,
            "redo": self.redo,
            "delete": self.delete_selected,
            "delete_at": self.delete_at_cursor,
            "repair": self.repair,
            "cancel": self.cancel,
            "select_all": self.model.select_all,
            "next_pair": lambda: self.annotation_panel.next_pair(1),
            "previous_pair": lambda: self.annotation_panel.next_pair(-1),
            "place_mode": self.state.set_place_mode,
            "place_nucleus": lambda: self.place_at_cursor("nucleus"),
            "place_golgi": lambda: self.place_at_cursor("golgi"),
            "snap": lambda on: self.state.set_snap(on=on),
            "mip": self.state.set_mip,
            "fit": self.ortho.reset_zoom,
            "slice_up": lambda: self.step_slice(1),
            "slice_down": lambda: self.step_slice(-1),
            "evaluation_colours": self.set_evaluation_colours,
            "render_mip": self.set_3d_mip,
            "planes": self.set_3d_planes,
            "slab": self.set_3d_slab,
            "slab_next_axis": lambda: self.set_3d_slab_axis(
                (self.viewer3d.slab_axis + 1) % 3 if self.viewer3d else 0),
            "reset_3d": self.reset_3d_camera,
            "shortcuts": self.show_shortcuts,
            "show_log": self.show_log,
            "about": self.show_about,
        }
        for index in range(4):
            slots[f"channel_{index + 1}"] = lambda _=False, i=index: self.toggle_channel(i)
        for axis, letter in enumerate("zyx"):
            slots[f"slab_{letter}"] = lambda on, i=axis: on and self.set_3d_slab_axis(i)
        return slots

    def _dock(self, title: str, name: str, widget: QtWidgets.QWidget) -> QtWidgets.QDockWidget:
        """A dock holding ``widget``; ``name`` keys it in the saved window layout."""
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        return dock

    def _create_docks(self) -> None:
        self.channel_controls = ChannelControls(self.state)
        self.channel_controls.roles_changed.connect(self.state.set_roles)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.channel_controls)
        self.channel_dock = self._dock("Channels", "channels_dock", scroll)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, self.channel_dock)
        self.annotation_panel = AnnotationPanel(self.state, self.actions)
        self.vectors_dock = self._dock("Vectors", "vectors_dock", self.annotation_panel)
        right = QtCore.Qt.DockWidgetArea.RightDockWidgetArea
        docks = [self.vectors_dock, self.channel_dock]
        if self.viewer3d is not None:
            self.view3d_dock = self._dock("3D view", "view3d_dock", self.viewer3d)
            self.addDockWidget(right, self.view3d_dock)
            docks.insert(0, self.view3d_dock)
        self.addDockWidget(right, self.vectors_dock)
        self.addDockWidget(right, self.channel_dock)
        self.project_panel = ProjectPanel(self.actions)
        self.project_dock = self._dock("Project", "project_dock", self.project_panel)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, self.project_dock)
        self.project_dock.hide()  # shown when a project is opened
        docks.append(self.project_dock)
        self.evaluation_panel = EvaluationPanel(self.document, self.actions)
        self.evaluation_dock = self._dock("Comparison", "evaluation_dock", self.evaluation_panel)
        self.addDockWidget(right, self.evaluation_dock)
        self.tabifyDockWidget(self.channel_dock, self.evaluation_dock)
        self.evaluation_dock.hide()  # shown when a reference is loaded
        docks.append(self.evaluation_dock)
        self.tabifyDockWidget(self.vectors_dock, self.channel_dock)
        self.vectors_dock.raise_()
        self.resizeDocks([self.vectors_dock], [460], QtCore.Qt.Orientation.Horizontal)
        if self.viewer3d is not None:
            self.resizeDocks([self.view3d_dock, self.vectors_dock], [420, 480], QtCore.Qt.Orientation.Vertical)
        for key in LAZY_PANELS:  # made on first use by show_<key>_panel (app.ui.window_panels)
            setattr(self, f"{key}_dock", None)
            setattr(self, f"{key}_panel", None)
        self.jobs_dock = JobsDock(self)
        self.jobs_dock.use_device = self.set_device  # out of GPU memory: offer the CPU
        self.addDockWidget(QtCore.Qt.DockWidgetArea.BottomDockWidgetArea, self.jobs_dock)
        self.jobs_dock.hide()  # shown by the first job
        docks.append(self.jobs_dock)
        self.view_menu.addSeparator()
        for dock in docks:
            self.view_menu.addAction(dock.toggleViewAction())

    def _connect(self) -> None:
        state, status = self.state, self.status_bar
        state.history_changed.connect(self._update_history)
        state.pending_changed.connect(lambda _p: (self._sync_mode_actions(), self._update_history()))
        state.options_changed.connect(self._sync_mode_actions)
        state.overlay_changed.connect(self._sync_evaluation_action)
        self.document.status.connect(lambda text: status.showMessage(text, 8000))
        self.document.autosaved.connect(status.show_autosaved)
        self.document.document_changed.connect(self._on_document_changed)
        self.document.saved.connect(lambda _path: self._update_project_row())
        self.project_panel.open_requested.connect(self.open_project_image)
        state.pairs_changed.connect(lambda *_: self._update_project_row())
        state.pairs_changed.connect(lambda *_: self._update_review_actions())
        self.document.document_changed.connect(self._update_review_actions)
        state.history_changed.connect(self._update_project_row)
        if self.viewer3d is not None:
            self.viewer3d.picked.connect(lambda pid, which: status.showMessage(
                f"Pair {pid} ({which}) picked in 3D.", 4000))

    # ------------------------------------------------------------------------------------------
    # Settings
    # ------------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        window_state = s.value("window/state")
        if window_state is not None:
            self.restoreState(window_state, LAYOUT_VERSION)
        self.project_dock.hide()  # until a project is open
        self.evaluation_dock.hide()  # until a reference is loaded
        self.jobs_dock.hide()  # until a job starts
        self.device = str(s.value("jobs/device", "auto")) or "auto"
        self.state.snap = _as_bool(s.value("annotate/snap", True))
        self.state.snap_radius_um = float(s.value("annotate/snap_radius_um", 2.0))
        self.state.depth_um = float(s.value("annotate/depth_um", 2.0))
        self.actions["snap"].setChecked(self.state.snap)
        self.actions["place_mode"].setChecked(_as_bool(s.value("annotate/place_mode", False)))
        self.annotation_panel.radius.setValue(self.state.snap_radius_um)
        self.annotation_panel.depth.setValue(self.state.depth_um)
        if self.viewer3d is not None:
            self.actions["render_mip"].setChecked(_as_bool(s.value("view3d/mip", False)))
            self.actions["planes"].setChecked(_as_bool(s.value("view3d/planes", False)))
            self.viewer3d.slab_um = float(s.value("view3d/slab_um", 6.0))
            self.set_3d_slab_axis(int(s.value("view3d/slab_axis", 0)) % 3)

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState(LAYOUT_VERSION))
        s.setValue("annotate/snap", self.state.snap)
        s.setValue("annotate/snap_radius_um", self.state.snap_radius_um)
        s.setValue("annotate/depth_um", self.state.depth_um)
        s.setValue("annotate/place_mode", self.state.place_mode)
        s.setValue("jobs/device", self.device)
        if self.viewer3d is not None:
            s.setValue("view3d/mip", self.viewer3d.blend_mode == "mip")
            s.setValue("view3d/planes", self.viewer3d.show_planes)
            s.setValue("view3d/slab_um", self.viewer3d.slab_um)
            s.setValue("view3d/slab_axis", self.viewer3d.slab_axis)
        self.document.remember_displays()
        s.sync()

    # ------------------------------------------------------------------------------------------
    # Opening and saving
    # ------------------------------------------------------------------------------------------
    def open_path(self, path) -> bool:
        return self.document.open_path(path)

    def set_data(self, volume, pairs=None, vectors_path=None) -> None:
        """Show ``volume`` (and ``pairs``) without a file (scripts, tests)."""
        self.document.load_volume(volume, vectors_path=vectors_path, pairs=pairs)

    def open_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open image", self.document.last_dir(), IMAGE_FILTER)
        if path:
            self.open_path(path)

    def open_project_dialog(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Open project folder", self.document.last_dir())
        if folder:
            self.document.open_project(folder)

    def new_project_dialog(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "New project: choose or create a folder",
                                                            self.document.last_dir())
        if folder and self.document.new_project(folder):
            self.statusBar().showMessage(
                f"Project created in {folder}: put images in images/, annotations go to annotations/.", 8000)

    # --- project images -------------------------------------------------------------------------
    def open_project_image(self, path) -> bool:
        """Open an image of the project; the current annotations are saved first (nothing is lost)."""
        opened = self.document.open_project_image(path)
        if not opened:
            self.project_panel.set_current(self.document.image_path)  # back to the image still open
        return opened

    def step_image(self, step: int) -> bool:
        """Next (``step`` = 1) or previous (-1) image of the project (Ctrl+PgDown / Ctrl+PgUp)."""
        project = self.document.project
        if project is None:
            self.statusBar().showMessage("No project open: File ▸ Open project…", 4000)
            return False
        target = project.neighbour(self.document.image_path, step)
        if target is None:
            self.statusBar().showMessage("This is the last image of the project." if step > 0 else
                                         "This is the first image of the project.", 4000)
            return False
        return self.open_project_image(target)

    def refresh_project(self) -> None:
        self.project_panel.refresh()
        self._update_project_row()

    def _update_project_row(self) -> None:
        """The open image's row in the project panel follows the edits (counts, unsaved state)."""
        document = self.document
        if document.project is None or document.image_path is None or self.state.volume is None:
            return
        pairs = self.model.pairs
        manual = sum(1 for p in pairs if p.source in MANUAL_SOURCES)
        exists = document.vectors_path is not None and document.vectors_path.exists()
        counts = model_counts(self.model)
        self.project_panel.update_image(document.image_path, len(pairs), manual, self.model.is_dirty, exists,
                                        counts if counts.total else None)

    def open_demo(self) -> None:
        """A simulated volume with predictions (starter model, or the classic peer) and its ground truth
        as the reference, so TP/FP/FN colours can be shown."""
        if not self.document.maybe_save():
            return
        self.statusBar().showMessage("Simulating the demo volume…")
        QtWidgets.QApplication.processEvents()
        volume, truth = demo_data()
        demo_dir = Path(QtCore.QStandardPaths.writableLocation(
            QtCore.QStandardPaths.StandardLocation.AppDataLocation)) / "demo"
        self.document.load_volume(volume, vectors_path=demo_dir / "demo.vectors.csv", fresh=True)
        self.document.title = "demo (simulated)"
        self._on_document_changed()
        self.statusBar().showMessage("Predicting vectors on the demo volume…")

        def done(result) -> None:
            pairs, how = result
            if self.state.volume is not volume or self._closed:
                return  # another image was opened meanwhile
            self.demo_how = how  # how the demo was predicted (the self-test checks it was the starter)
            self.model.set_pairset(pairs.with_voxel_size(volume.voxel_size))
            if not self.document.set_reference(truth, "the simulated truth"):
                return
            self.state.set_colour_mode("source")  # predictions by source first; E shows TP/FP/FN
            score, level = self.document.comparison.score, self.document.comparison_level
            self.statusBar().showMessage(
                f"Demo: {len(pairs)} vectors predicted ({how['method']}); against the simulated truth at τL = {level} "
                f"{score.tp[level]} TP, {score.fp[level]} FP, {score.fn[level]} FN (E shows these colours; "
                "Analysis ▸ Comparison).", 15000)

        def job(cancel, pause):
            yield Progress(0, 1, "Predicting vectors on the demo volume")
            result = demo_predictions(volume)
            yield Progress(1, 1, f"{len(result[0])} vectors ({result[1]['method']})")
            return result

        self.start_job("Demo prediction", job).succeeded.connect(done)

    def save(self) -> bool:
        return self.document.save()

    def save_as_dialog(self) -> bool:
        start = str(self.document.vectors_path or Path(self.document.last_dir()) / self.document.default_vectors_name())
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save vectors as", start, VECTOR_FILTERS["project"])
        return bool(path) and self.document.save(path)

    def import_dialog(self) -> bool:
        filters = ";;".join(VECTOR_FILTERS.values())
        path, chosen = QtWidgets.QFileDialog.getOpenFileName(self, "Import vectors", self.document.last_dir(), filters)
        if not path:
            return False
        fmt = next((key for key, value in VECTOR_FILTERS.items() if value == chosen), None)
        return self.document.import_vectors(path, fmt)

    def export_dialog(self, fmt: str) -> bool:
        suffix = ".npy" if fmt == "3dngmic" else ".legacy.csv"
        stem = Path(self.document.default_vectors_name()).name.replace(".vectors.csv", "")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "Export vectors", str(Path(self.document.last_dir()) / (stem + suffix)), VECTOR_FILTERS[fmt])
        return bool(path) and self.document.export_vectors(path, fmt)

    def reference_dialog(self) -> bool:
        if self.state.volume is None:
            self.statusBar().showMessage("Open an image first, then compare its vectors with a reference.", 5000)
            return False
        filters = ";;".join(VECTOR_FILTERS.values())
        path, chosen = QtWidgets.QFileDialog.getOpenFileName(self, "Reference vectors (ground truth)",
                                                             self.document.last_dir(), filters)
        return bool(path) and self.compare_with_reference(path)

    def compare_with_reference(self, path) -> bool:
        """Score the pairs against the vectors in ``path`` and show the Comparison dock."""
        if not self.document.load_reference(path):
            return False
        self.show_comparison()
        return True

    def show_comparison(self) -> None:
        self.evaluation_dock.show()
        self.evaluation_dock.raise_()

    def voxel_size_dialog(self) -> None:
        volume = self.state.volume
        if volume is None:
            return
        info = {"path": self.document.image_path or "", "shape": volume.data.shape, "axes": "CZYX",
                "dtype": str(volume.data.dtype), "voxel_size_problem": f"now {volume.voxel_size}"}
        dialog = VoxelSizeDialog(info, volume.voxel_size, parent=self)
        dialog.setWindowTitle("Set voxel size")
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            voxel = dialog.voxel_size()
            if dialog.remember.isChecked() and self.document.image_path is not None:
                self.document.remember_voxel_size(self.document.image_path, voxel)
            pairs = self.model.to_pairset().with_voxel_size(voxel)
            dirty = self.model.is_dirty
            self.document.load_volume(volume.with_voxel_size(voxel), image_path=self.document.image_path,
                                      vectors_path=self.document.vectors_path, pairs=pairs)
            if dirty:
                self.model.mark_unsaved()

    def screenshot_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save screenshot", "cellpol.png", "PNG (*.png)")
        if path:
            save_screenshot(self, path)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.document.recent_files()
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)
        for entry in recent:
            action = self.recent_menu.addAction(entry)
            action.setEnabled(Path(entry).exists())
            action.triggered.connect(lambda _=False, p=entry: self.open_path(p))

    # --- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:
        if any(self._droppable(url) for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if self._droppable(url)]
        event.acceptProposedAction()
        images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES or p.is_dir()]
        vectors = [p for p in paths if p.suffix.lower() == ".csv"]
        if images:
            self.open_path(images[0])
        for path in vectors:
            self.document.import_vectors(path)

    @staticmethod
    def _droppable(url: QtCore.QUrl) -> bool:
        if not url.isLocalFile():
            return False
        path = Path(url.toLocalFile())
        return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES + (".csv",)

    # ------------------------------------------------------------------------------------------
    # Editing
    # ------------------------------------------------------------------------------------------
    def undo(self) -> None:
        self.model.undo()

    def redo(self) -> None:
        self.model.redo()

    def delete_selected(self) -> None:
        n = self.model.remove_selected()
        self.statusBar().showMessage(f"Deleted {n} pair(s)." if n else "Nothing selected to delete.", 4000)

    def _hover_or_cursor(self) -> tuple[int, tuple[float, float, float]]:
        if self.state.hover is not None:
            return self.state.hover
        return 0, self.state.cursor

    def delete_at_cursor(self) -> None:
        """D: delete the pair whose marker is under the mouse (else the selection)."""
        if self.state.volume is None:
            return
        axis, position = self._hover_or_cursor()
        hit = self.ortho.view(axis).hit_test_voxel(position)
        if hit is not None:
            self.model.remove_pairs([hit[0]])
            self.statusBar().showMessage(f"Deleted pair {hit[0]}.", 4000)
        else:
            self.delete_selected()

    def place_at_cursor(self, which: str) -> None:
        """A / G: place a nucleus (A) or the pending nucleus's Golgi (G) where the mouse is."""
        if self.state.volume is None:
            return
        if which == "golgi" and self.model.pending_nucleus is None:
            self.statusBar().showMessage("Place a nucleus first (A), then its Golgi (G).", 4000)
            return
        if which == "nucleus" and self.model.pending_nucleus is not None:
            self.model.cancel_pending()  # A again restarts the pair
        axis, position = self._hover_or_cursor()
        self.state.place_at(position, axis)

    def repair(self) -> None:
        try:
            self.model.repair_selected()
        except CellPolError as exc:
            self.statusBar().showMessage(str(exc), 5000)

    def cancel(self) -> None:
        if self.state.pick is not None:  # a panel waiting for a click: Esc gives up
            self.state.pick_next_click(None)
        elif self.model.dragging:
            self.model.cancel_drag()
        elif not self.model.cancel_pending():
            self.model.clear_selection()

    def step_slice(self, step: int) -> None:
        if self.state.volume is None:
            return
        axis = self.state.hover[0] if self.state.hover is not None else 0
        self.state.step_slice(axis, step)

    def toggle_channel(self, index: int) -> None:
        if index < len(self.state.displays):
            self.state.set_display(index, visible=not self.state.displays[index].visible)

    def set_evaluation_colours(self, on: bool) -> None:
        if on and self.state.reference is None:
            self.statusBar().showMessage("No reference vectors: Analysis ▸ Compare with reference…", 5000)
            self.actions["evaluation_colours"].setChecked(False)
            return
        self.state.set_colour_mode("evaluation" if on else "source")

    def _sync_evaluation_action(self) -> None:
        action = self.actions["evaluation_colours"]
        action.blockSignals(True)
        action.setChecked(self.state.colour_mode == "evaluation")
        action.blockSignals(False)
        self.actions["clear_reference"].setEnabled(self.state.reference is not None)

    # --- 3D -----------------------------------------------------------------------------------
    def set_3d_mip(self, on: bool) -> None:
        if self.viewer3d is not None:
            self.viewer3d.set_blend_mode("mip" if on else "composite")

    def set_3d_planes(self, on: bool) -> None:
        if self.viewer3d is not None:
            self.viewer3d.set_show_planes(on)

    def set_3d_slab(self, on: bool) -> None:
        if self.viewer3d is not None:
            self.viewer3d.set_slab(on)

    def set_3d_slab_axis(self, axis: int) -> None:
        """Make the slab cross z (0), y (1) or x (2); whether it is shown stays with C."""
        if self.viewer3d is None:
            return
        action = self.actions["slab_" + "zyx"[axis]]
        if not action.isChecked():
            action.setChecked(True)  # re-enters here through the action; the viewer is set below either way
        self.viewer3d.set_slab(self.viewer3d.clip_slab, axis=axis)

    def reset_3d_camera(self) -> None:
        if self.viewer3d is not None:
            self.viewer3d.reset_camera()

    # ------------------------------------------------------------------------------------------
    # Following the model and the document
    # ------------------------------------------------------------------------------------------
    def _sync_mode_actions(self) -> None:
        """The Place mode and Snap actions follow the state, however it was changed."""
        for name, on in (("place_mode", self.state.place_mode), ("snap", self.state.snap)):
            action = self.actions[name]
            if action.isChecked() != on:
                action.blockSignals(True)
                action.setChecked(on)
                action.blockSignals(False)

    def _update_history(self) -> None:
        model = self.model
        undo, redo = self.actions["undo"], self.actions["redo"]
        undo.setEnabled(model.can_undo)
        redo.setEnabled(model.can_redo)
        undo.setText(f"&Undo {model.undo_stack.undo_text}".rstrip())
        redo.setText(f"&Redo {model.undo_stack.redo_text}".rstrip())
        self.setWindowModified(model.is_dirty)

    def _on_document_changed(self) -> None:
        self.stack.setCurrentWidget(self.ortho if self.state.volume is not None else self.welcome)
        project = self.document.project
        if project is not self.project_panel.project:
            self.project_panel.set_project(project)
            self.project_dock.setVisible(project is not None)
            if project is not None:
                self.project_dock.raise_()
                self.project_panel.table.setFocus()
        self.project_panel.set_current(self.document.image_path)
        self._update_project_row()
        if self.predict_panel is not None:  # the slider shows the threshold saved with the image's predictions
            self.predict_panel.set_threshold(self.state.score_threshold)
        title = self.document.title or ""
        if project is not None:
            title = f"{title} — {project.name}" if title else project.name
        self.setWindowTitle(f"{title}[*] — CellPol Studio" if title else f"CellPol Studio {__version__}")
        self._update_history()
        self.status_bar.show_mode()
        self._sync_mode_actions()
        self.status_bar.show_position(None)
        if self.state.volume is not None:
            self.statusBar().showMessage(self.state.volume.describe(), 6000)

    # --- help ---------------------------------------------------------------------------------
    def show_shortcuts(self) -> ShortcutsDialog:
        """Help ▸ Keyboard shortcuts: every action (with its keys, where it has any) and every panel, with the
        stable id scripts and tests find them by."""
        rows = shortcut_rows(self.actions, with_ids=True, keyed_only=False)
        rows += [("", title, "Panels", panel_id) for panel_id, title in PANELS]
        dialog = ShortcutsDialog([row[:3] for row in rows], self)
        # The stable ids (objectNames) in a fourth column, for scripts and bug reports.
        table = dialog.table
        table.setColumnCount(4)
        table.setHorizontalHeaderLabels(["Keys", "Action", "Group", "Id"])
        for r, row in enumerate(rows):
            table.setItem(r, 3, QtWidgets.QTableWidgetItem(row[3]))
        table.resizeColumnToContents(3)
        dialog.resize(max(dialog.width(), 760), dialog.height())
        dialog.show()
        return dialog

    def shortcut_rows(self) -> list[tuple[str, str, str]]:
        """``(keys, action, group)`` of every action with a shortcut."""
        return shortcut_rows(self.actions)

    def show_log(self) -> bool:
        """Help ▸ Show log: open the log file (or, before anything was logged, its folder)."""
        target = log_path()
        if not target.exists():  # nothing logged yet: open the folder
            target = log_dir()
            target.mkdir(parents=True, exist_ok=True)
        opened = QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(target)))
        if not opened:
            self.statusBar().showMessage(f"The log is {target}", 10000)
        return opened

    def show_welcome(self) -> QtWidgets.QMessageBox:
        """The first run's welcome: what the app does, and a way in (the demo, or your images)."""
        box = QtWidgets.QMessageBox(self)
        box.setObjectName("cellpol.welcome")
        box.setWindowTitle("Welcome to CellPol Studio")
        box.setIcon(QtWidgets.QMessageBox.Icon.Information)
        box.setText(f"<b>CellPol Studio {__version__}</b>")
        box.setInformativeText(
            "Measure nucleus→Golgi polarity in 3D (and 2D) microscopy: annotate, predict with a model, review, "
            "evaluate and get the statistics.<br><br>Start with the <b>demo</b> (a simulated stack with predicted "
            "vectors), or open a <b>folder</b> of your images as a project (its images go in <i>images/</i>).")
        demo = box.addButton("Open the demo", QtWidgets.QMessageBox.ButtonRole.AcceptRole)
        folder = box.addButton("Open a folder…", QtWidgets.QMessageBox.ButtonRole.ActionRole)
        box.addButton("Later", QtWidgets.QMessageBox.ButtonRole.RejectRole)
        demo.setObjectName("cellpol.welcome.demo")
        folder.setObjectName("cellpol.welcome.folder")
        demo.clicked.connect(lambda: QtCore.QTimer.singleShot(0, self.open_demo))
        folder.clicked.connect(lambda: QtCore.QTimer.singleShot(0, self.new_project_dialog))
        self.settings.setValue("welcome_shown", True)
        box.open()
        return box

    def welcome_due(self) -> bool:
        """Whether this is the first run (the welcome has not been shown with these settings)."""
        return not _as_bool(self.settings.value("welcome_shown", False))

    def show_about(self) -> None:
        QtWidgets.QMessageBox.about(
            self, "About CellPol Studio",
            f"<b>CellPol Studio {__version__}</b><p>Nucleus→Golgi cell polarity in 3D microscopy: "
            "annotate, train, predict and evaluate polarity vectors.</p>")

    # ------------------------------------------------------------------------------------------
    # Jobs and lifetime
    # ------------------------------------------------------------------------------------------
    def start_job(self, title: str, factory: JobFactory, can_pause: bool = False) -> JobHandle:
        """Start a job (``factory(cancel, pause)`` returns its generator, :mod:`app.core.jobs`) in a worker
        thread and show it in the Jobs dock, which also reports how it fails. Connect to the handle's
        ``succeeded`` for the result."""
        handle = start_job(title, factory, can_pause=can_pause, parent=self)
        self.jobs_dock.add(handle)
        if self.jobs_dock.isHidden():
            self.jobs_dock.show()
        self.jobs_dock.raise_()
        return handle

    # --- device -----------------------------------------------------------------------------------
    def _create_device_menu(self, before: QtWidgets.QMenu) -> None:
        """Tools ▸ Device, filled when opened: finding the GPUs imports torch (below)."""
        tools = QtWidgets.QMenu("&Tools", self)
        self.menuBar().insertMenu(before.menuAction(), tools)
        self.device_menu = tools.addMenu("&Device")
        self.device_menu.setObjectName("cellpol.tools.device")
        self.device_menu.aboutToShow.connect(self._fill_device_menu)
        self._device_group = QtGui.QActionGroup(self)

    def available_devices(self) -> list[tuple[str, str]]:
        """``(device, menu text)`` for auto, the CPU, each CUDA GPU and Apple's MPS where present."""
        # torch is imported here, not at the top: it takes seconds and hundreds of MB, and the window (and
        # every UI test) starts without it (`python -X importtime -c "import app.ui.main_window"`).
        import torch

        devices = [("auto", "Automatic (GPU if present)"), ("cpu", "CPU")]
        for index in range(torch.cuda.device_count()):
            devices.append((f"cuda:{index}", f"CUDA:{index} {torch.cuda.get_device_name(index)}"))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            devices.append(("mps", "Apple GPU (MPS)"))
        return devices

    def _fill_device_menu(self) -> None:
        self.device_menu.clear()
        for action in self._device_group.actions():
            self._device_group.removeAction(action)
        for device, text in self.available_devices():
            action = self.device_menu.addAction(text)
            action.setObjectName(f"cellpol.tools.device.{device.replace(':', '_')}")
            action.setCheckable(True)
            action.setChecked(device == self.device)
            action.triggered.connect(lambda _=False, d=device: self.set_device(d))
            self._device_group.addAction(action)
        self.update_device_label()

    def set_device(self, device: str) -> bool:
        """Run torch jobs on ``device`` (``auto``, ``cpu``, ``cuda:N``, ``mps``: what
        :func:`app.core.device.select_device` takes); ``False``, with a message, where it is absent."""
        from app.core.device import select_device  # imports torch: see available_devices

        try:
            select_device(device)
        except CellPolError as exc:
            self.statusBar().showMessage(str(exc), 8000)
            return False
        self.device = device
        self.update_device_label()
        return True

    def update_device_label(self) -> str:
        """Say in the status bar what :attr:`device` runs on (imports torch: see available_devices)."""
        from app.core.device import describe_device

        try:
            text = describe_device(self.device)
        except CellPolError as exc:
            text = f"{self.device}: {exc}"
        self.status_bar.show_device(text, f"Jobs run on: {text} (Tools ▸ Device)")
        return text

    def run_job(self, function, *args, on_result=None, **kwargs):
        """Run a job in a worker thread; errors become one message (never a traceback dialog)."""
        def failed(exc: BaseException) -> None:
            message = str(exc) if isinstance(exc, CellPolError) else f"{type(exc).__name__}: {exc}"
            self.document.warn("Job failed", message)

        worker = run_in_thread(function, *args, on_result=on_result, on_error=failed, **kwargs)
        self._workers.append(worker)
        worker.finished.connect(lambda w=worker: self._workers.remove(w) if w in self._workers else None)
        return worker

    def wait_for_jobs(self, timeout: float = 120.0) -> bool:
        """Process events until every job has finished (scripted use); ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        app = QtWidgets.QApplication.instance()
        while (self._workers or self.jobs_dock.running()) and time.monotonic() < deadline:
            app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.01)
        app.processEvents()
        return not (self._workers or self.jobs_dock.running())

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        if not self._closed and self.ask_on_close and not self.document.maybe_save():
            event.ignore()
            return
        self.release()
        event.accept()

    def release(self) -> None:
        """Save settings and free the VTK render window (also what test teardown calls)."""
        if self._closed:
            return
        self._closed = True
        for panel in (self.train_panel, self.synth_panel):  # a running training stops; its checkpoint stays
            if panel is not None and hasattr(panel, "shutdown"):
                panel.shutdown()
        try:
            self.save_settings()
        finally:
            if self.viewer3d is not None:
                self.viewer3d.release()


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def app_icon_path() -> Optional[Path]:
    """The app's icon: ``resources/icons`` in an installed bundle, ``packaging/icons`` in a source tree."""
    root = Path(__file__).resolve().parents[2]
    for candidate in (root / "resources" / "icons" / "cellpol.png", root / "packaging" / "icons" / "cellpol.png"):
        if candidate.is_file():
            return candidate
    return None


def run_app(files: Sequence[str] = (), demo: bool = False, screenshot: Optional[str] = None) -> int:
    """Open the main window (on ``files``, or the demo) and run the event loop; returns the exit status.

    With ``screenshot``, nothing waits for the user: the window opens ``files`` (or, without files, the
    demo volume with predictions), renders, saves a full-window PNG, closes, and returns 0 (1 if a file
    could not be opened).
    """
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setOrganizationName(SETTINGS_ORGANISATION)
    app.setApplicationName(SETTINGS_APPLICATION)
    install_main_thread_collector(app)  # garbage collected on this thread only: see MainThreadCollector
    icon = app_icon_path()
    if icon is not None:
        app.setWindowIcon(QtGui.QIcon(str(icon)))
    scripted = screenshot is not None
    settings = None
    if scripted:
        # A scripted run looks the same every time: default layout, nothing remembered.
        scratch = tempfile.TemporaryDirectory(prefix="cellpol-screenshot-")
        settings = QtCore.QSettings(str(Path(scratch.name) / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    if scripted:
        window.document.interactive = False
        window.jobs_dock.interactive = False
        window.ask_on_close = False
        screen = QtGui.QGuiApplication.primaryScreen()
        if screen is not None:
            available = screen.availableGeometry()
            window.resize(min(1400, available.width()), min(900, available.height()))
            window.move(available.topLeft())
    window.show()
    freeze_heap("window")  # Qt's, pyqtgraph's and VTK's objects: see freeze_heap
    status = 0
    for path in files:
        if not window.open_path(str(Path(path))):
            status = 1
    if demo or (scripted and not files):
        window.open_demo()
    if not scripted:
        if not files and not demo and window.welcome_due():
            window.show_welcome()
        return app.exec()
    if not window.wait_for_jobs(timeout=300):
        print("cellpol: the demo prediction did not finish in time; screenshot taken without it", file=sys.stderr)
    if window.viewer3d is not None:
        window.viewer3d.render()
    QtCore.QThread.msleep(50)
    app.processEvents()
    out = save_screenshot(window, screenshot)
    print(f"Screenshot saved to {out}")
    window.close()
    return status
