"""The main window's panels: made on first use, and what the window does with their results.

A mixin of :class:`app.ui.main_window.MainWindow` (kept apart so the window's composition stays readable): each
``show_*_panel`` builds its dock the first time (the panels import heavy libraries lazily: torch, matplotlib,
scipy), wires it to the document, the viewer state and the other panels, and raises it. The panels themselves
live in their own modules and hold no job logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from PySide6 import QtCore, QtWidgets

from app.core.batch import image_stem
from app.core.errors import CellPolError
from app.core.review import add_for_review
from app.ui.review_panel import ReviewPanel, put_up_file

if TYPE_CHECKING:  # these panels are imported when first shown (the Predict panel loads torch)
    from app.ui.evaluate_panel import EvaluatePanel
    from app.ui.predict_panel import PredictPanel
    from app.ui.stats_panel import StatsPanel
    from app.ui.synth_panel import SynthPanel
    from app.ui.train_panel import TrainPanel

#: The panels made on first use: ``<key>_panel`` and ``<key>_dock`` of the window are ``None`` until then.
LAZY_PANELS = ("predict", "review", "evaluate", "stats", "train", "synth")
#: The review actions that need a prediction still to review.
REVIEW_ACTIONS = ("accept", "reject", "previous_unreviewed", "next_unreviewed", "reject_below")


class PanelsMixin:
    """The panels of :class:`~app.ui.main_window.MainWindow` (see the module docstring). Uses the window's
    ``state``, ``model``, ``document``, ``actions``, ``device``, ``start_job``, ``open_path``,
    ``open_project_image``, ``refresh_project`` and ``_dock``."""

    # --- prediction -------------------------------------------------------------------------------
    def show_predict_panel(self) -> "PredictPanel":
        """The Predict dock (made on first use: its model card reads the model files, which loads torch)."""
        if self.predict_dock is None:
            from app.ui.predict_panel import PredictPanel  # lazily: torch, see the docstring

            self.predict_panel = PredictPanel(self.start_job, self.volume_to_predict, lambda: self.device,
                                              self.add_predictions, self.open_with_predictions,
                                              get_project=lambda: self.document.project)
            self.predict_panel.threshold_changed.connect(self.state.set_score_threshold)
            self.predict_panel.batch_finished.connect(lambda _records: self._predictions_done())
            self.predict_panel.model_changed.connect(self._predict_model_changed)
            self.document.document_changed.connect(self.predict_panel.refresh_models)
            self._install_panel("predict", "Predict", self.predict_panel)
            self.resizeDocks([self.predict_dock], [520], QtCore.Qt.Orientation.Horizontal)
        return self._raise_panel("predict")

    def volume_to_predict(self):
        """What "predict this image" runs on: the open volume, or for a large image open at several
        resolutions (its ``volume`` holds no pixels) the file itself, streamed tile by tile."""
        volume = self.state.volume
        if volume is None or not self.state.is_multiscale:
            return volume
        from app.core.inference.streaming import LazyVolume

        return LazyVolume(self.state.multiscale.image, tuple(volume.voxel_size), volume.nucleus_channel,
                          volume.golgi_channel, {"voxel_size_source": volume.metadata.get("voxel_size_source")})

    def add_predictions(self, pairs) -> None:
        """Put predicted vectors of the open image into the annotation model, to review (one undoable step)."""
        if self.state.volume is None:
            return
        # coloured by their score (the legend says how); the mode is set first, so the views draw the new pairs
        # once, not twice (a thousand markers take a tenth of a second per drawing: benchmarks/ui_stall.py)
        self.state.set_colour_mode("score")
        add_for_review(self.model, pairs.with_voxel_size(self.state.volume.voxel_size), text="predict image")
        self.statusBar().showMessage(f"{len(pairs)} vectors predicted, coloured by score (grey 0 → cyan 1); "
                                     "review them with Analysis ▸ Review predictions; Ctrl+Z takes them back.",
                                     10000)

    def open_with_predictions(self, image, predictions) -> None:
        """Open ``image`` and put the vectors predicted for it up for review (a row of the Predict panel's results)."""
        opened = (self.open_project_image(image) if self.document.project is not None
                  and self.document.project.contains(image) else self.open_path(image))
        if opened and predictions is not None:
            if put_up_file(self.document, predictions):
                self.state.set_colour_mode("score")

    def _update_review_actions(self) -> None:
        """Accept, reject and stepping work while the image holds predictions to review (at once: a key pressed
        right after "Review this image" or "Predict this image" must work)."""
        pending = any(p.source == "predicted" for p in self.model)
        for name in REVIEW_ACTIONS:
            self.actions[name].setEnabled(pending)

    def _predictions_done(self) -> None:
        """A batch wrote predictions: the project panel's counts follow."""
        if self.document.project is not None:
            self.refresh_project()

    # --- review and evaluation -------------------------------------------------------------------
    def show_review_panel(self) -> ReviewPanel:
        """The Review dock (made on first use)."""
        if self.review_dock is None:
            self._install_panel("review", "Review", ReviewPanel(self.state, self.document, self.actions,
                                                                self.open_project_image))
        return self._raise_panel("review")

    def show_evaluate_panel(self) -> "EvaluatePanel":
        """The Evaluate dock (made on first use). It opens floating, as a window of its own beside the main one:
        six plots and two tables need more room than a side panel has, and a mistake clicked there moves the
        main window's views to the cell while the curves stay in sight. It can be docked like any panel."""
        if self.evaluate_dock is None:
            from app.ui.evaluate_panel import EvaluatePanel

            self._install_panel("evaluate", "Evaluate",
                                EvaluatePanel(self.start_job, self.open_at, lambda: self.document.project),
                                floating=(1200, 860), area=QtCore.Qt.DockWidgetArea.BottomDockWidgetArea)
        return self._raise_panel("evaluate")

    def show_stats_panel(self) -> "StatsPanel":
        """The Statistics dock (made on first use: matplotlib and scipy load then)."""
        if self.stats_dock is None:
            from app.ui.stats_panel import StatsPanel

            self._install_panel("stats", "Statistics", StatsPanel(self.state, self.document, self.start_job),
                                floating=(760, 900))  # the figures need room
        return self._raise_panel("stats")

    def show_train_panel(self) -> "TrainPanel":
        """The Train dock (made on first use), a window of its own beside the main one."""
        if self.train_dock is None:
            from app.ui.train_panel import TrainPanel

            self.train_panel = TrainPanel(self.start_job, lambda: self.document.project, lambda: self.device,
                                          on_model_trained=self.use_trained_model,
                                          predict_images=self.predict_images_again)
            if self.predict_panel is not None:  # retraining starts from the model the user predicts with
                self.train_panel.default_model = self.predict_panel.model
            self.document.document_changed.connect(self.train_panel.refresh)
            self._install_panel("train", "Train", self.train_panel, floating=(1100, 820))
        self.train_panel.refresh()
        return self._raise_panel("train")

    def show_synth_panel(self) -> "SynthPanel":
        """The Synthesis dock (made on first use), a window of its own beside the main one."""
        if self.synth_dock is None:
            from app.ui.synth_panel import SynthPanel

            self.synth_panel = SynthPanel(self.start_job, lambda: self.document.project, self.open_path,
                                          get_device=lambda: self.device, compare=self.compare_with_open_image)
            self.document.document_changed.connect(self.synth_panel.refresh)
            self.synth_panel.training_folders_changed.connect(
                lambda _folders: self.train_panel.refresh() if self.train_panel is not None else None)
            self._install_panel("synth", "Synthesize", self.synth_panel, floating=(1000, 820))
        self.synth_panel.refresh()
        return self._raise_panel("synth")

    def compare_with_open_image(self, volume_path):
        """Show a (synthetic) volume beside the image open in the window, in a window of their own."""
        if self.state.volume is None:
            self.statusBar().showMessage("Open a real image first, then compare a synthetic volume with it.", 8000)
            return None
        from app.ui.compare_view import compare_files

        try:
            window = compare_files(volume_path, self.state.volume, self.document.title or "open image", self)
        except CellPolError as exc:
            self.document.warn("Cannot compare", str(exc))
            return None
        self._compare_windows = [w for w in getattr(self, "_compare_windows", []) if w.isVisible()] + [window]
        return window

    def _predict_model_changed(self, model) -> None:
        if self.train_panel is not None:  # "Retrain with my corrections" starts from the model in use
            self.train_panel.default_model = model

    def use_trained_model(self, model) -> None:
        """A model finished training: it becomes the model the Predict panel uses (and is listed there)."""
        panel = self.show_predict_panel()
        panel.refresh_models()
        panel.set_model_file(model)
        self.statusBar().showMessage(f"Trained {Path(model).name}: the Predict panel uses it now.", 10000)

    def predict_images_again(self, model, images) -> object:
        """Predict ``images`` of the project again with ``model`` (after "Retrain with my corrections"). Images
        whose review has begun keep their predictions: their annotations hold the old ones, being reviewed."""
        project = self.document.project
        if project is None:
            return None
        fresh = [Path(p) for p in images if not project.image_status(p, read_header=False).review.reviewed]
        panel = self.show_predict_panel()
        panel.refresh_models()
        return panel.predict_images(fresh, model)

    def _install_panel(self, key: str, title: str, panel: QtWidgets.QWidget,
                       floating: Optional[tuple[int, int]] = None,
                       area: QtCore.Qt.DockWidgetArea = QtCore.Qt.DockWidgetArea.RightDockWidgetArea) -> None:
        """Put a panel made on first use into its dock ``<key>_dock`` (``<key>_panel`` keeps the panel): tabbed
        with the Vectors panel, or, with ``floating`` (width, height), a window of its own that can be docked
        like any panel; listed in the View menu."""
        dock = self._dock(title, f"{key}_dock", panel)
        self.addDockWidget(area, dock)
        if floating is not None:
            self._float_beside(dock, *floating)
        else:
            self.tabifyDockWidget(self.vectors_dock, dock)
        self.view_menu.addAction(dock.toggleViewAction())
        setattr(self, f"{key}_panel", panel)
        setattr(self, f"{key}_dock", dock)

    def _raise_panel(self, key: str):
        """Show and raise the dock of the panel ``key``; the panel."""
        dock = getattr(self, f"{key}_dock")
        dock.show()
        dock.raise_()
        return getattr(self, f"{key}_panel")

    def _float_beside(self, dock: QtWidgets.QDockWidget, width: int, height: int) -> None:
        """Float ``dock`` as a window of its own, as large as asked where the screen allows, centred on it."""
        dock.setFloating(True)
        screen = self.screen().availableGeometry() if self.screen() is not None else QtCore.QRect(0, 0, 1280, 900)
        width, height = min(width, screen.width() - 40), min(height, screen.height() - 60)
        dock.setGeometry(screen.x() + (screen.width() - width) // 2, screen.y() + (screen.height() - height) // 2,
                         width, height)

    def open_at(self, image, position) -> bool:
        """Open ``image`` (a path, or the stem of a project image) and centre the views on ``position`` (z, y, x
        voxels), selecting the pair there if there is one (the Evaluate panel's list of mistakes)."""
        project = self.document.project
        if isinstance(image, str) and not Path(image).exists():
            matches = [p for p in (project.images() if project is not None else [])
                       if image_stem(p) == image]
            if not matches:
                self.statusBar().showMessage(f"No image named {image} to open: evaluate with an images folder.",
                                             8000)
                return False
            image = matches[0]
        image = Path(image)
        current = self.document.image_path
        if current is None or current.resolve() != image.resolve():
            opened = (self.open_project_image(image) if project is not None and project.contains(image)
                      else self.open_path(image))
            if not opened:
                return False
        self.state.set_cursor(position)
        near = self.model.nearest(position, max_distance_um=3.0)
        if near is not None:
            self.model.select([near[0]])
        return True
