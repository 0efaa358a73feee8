"""The open document: image, its annotation file, autosave and recovery, project, recent files.

:class:`DocumentController` holds the file logic of the window so the window itself only wires widgets.
Every question it asks the user goes through one ``ask_*`` method (tests replace them; with
``interactive = False`` they answer without a dialog, as a screenshot run needs).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PySide6 import QtCore, QtWidgets

from app import __version__
from app.core.annotation import (
    Autosaver,
    ReferenceComparison,
    autosave_path_for,
    check_reference,
    compare_with_reference,
    discard_autosave,
    find_recovery,
    image_stem,
    load_autosave,
    vectors_path_for,
)
from app.core.errors import CellPolError, FileFormatError, MissingVoxelSizeError
from app.core.imageio import read_image_info, read_volume
from app.core.imageio.lazy import open_lazy
from app.core.imageio.readers import is_zarr_folder
from app.core.multiscale import MultiscaleImage, available_memory_bytes, default_cache_dir, in_memory_bytes
from app.core.pairs import (
    PairSet,
    read_3dngmic_vectors,
    read_legacy_csv,
    read_pairs,
    write_3dngmic_vectors,
    write_legacy_csv,
    write_pairs,
)
from app.core.project import PROJECT_FILE, Project
from app.core.review import is_under_review
from app.core.volume import Volume, parse_voxel_size
from app.ui.dialogs import VoxelSizeDialog
from app.ui.series_dialog import choose_series
from app.ui.display import default_displays
from app.ui.state import ViewerState
from app.ui.workers import run_in_thread

MAX_RECENT = 10
#: An image whose pixels would take more than this share of the memory available when it is opened is opened as a
#: large image (a downsampled view, full resolution read for the region in view); the setting ``large_image_mb``
#: (megabytes) overrides it.
LARGE_IMAGE_MEMORY_SHARE = 0.25
LARGE_IMAGE_NOTE = "Large image: showing a downsampled view; zoom in for full resolution."
IMAGE_FILTER = ("Images (*.tif *.tiff *.ome.tif *.ome.tiff *.npy *.czi *.lif *.nd2 zarr.json .zattrs);;"
                "All files (*)")
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".czi")
VECTOR_FILTERS = {
    "project": "CellPol vectors CSV (*.csv)",
    "legacy": "Authors' annotation CSV, no header (*.csv)",
    "3dngmic": "3DNGMic vectors (*.npy)",
}


class DocumentController(QtCore.QObject):
    """Opening, saving, importing and exporting for one window; owns the autosave."""

    document_changed = QtCore.Signal()
    status = QtCore.Signal(str)
    autosaved = QtCore.Signal(str)
    saved = QtCore.Signal(str)
    comparison_changed = QtCore.Signal(object)  # ReferenceComparison or None

    def __init__(self, state: ViewerState, settings: QtCore.QSettings,
                 parent_widget: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent_widget)
        self.state = state
        self.model = state.model
        self.settings = settings
        self.parent_widget = parent_widget
        self.interactive = True
        self.image_path: Optional[Path] = None
        self.vectors_path: Optional[Path] = None
        self.project: Optional[Project] = None
        self.autosaver: Optional[Autosaver] = None
        self.errors: list[str] = []
        self.title = ""
        self.comparison: Optional[ReferenceComparison] = None
        self.reference_name = ""
        self.comparison_level = 5          # τL the colours are for
        self.border_margin_um = 7.0        # the paper's
        self.state.pairs_changed.connect(self._refresh_evaluation)

    # --- questions (replaced in tests) ------------------------------------------------------
    def warn(self, title: str, message: str) -> None:
        self.errors.append(message)
        if self.interactive:
            QtWidgets.QMessageBox.warning(self.parent_widget, title, message)
        else:
            print(f"cellpol: {message}", file=sys.stderr)

    def ask_voxel_size(self, info: dict[str, Any], ask_axes: bool):
        """``(voxel_size, axes, remember)`` or ``None`` if cancelled."""
        if not self.interactive:
            return None
        dialog = VoxelSizeDialog(info, self._last_voxel_size(), ask_axes, self.parent_widget)
        if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return None
        return dialog.voxel_size(), dialog.axes(), dialog.remember.isChecked()

    def ask_recover(self, autosave: Path) -> bool:
        if not self.interactive:
            return True  # keep the user's work: recover rather than drop it silently
        when = _dt.datetime.fromtimestamp(autosave.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        answer = QtWidgets.QMessageBox.question(
            self.parent_widget, "Recover annotations",
            f"Unsaved annotations of this image were autosaved at {when} (the app was closed without "
            f"saving, or stopped).\n\nRecover them?",
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def ask_unsaved(self) -> str:
        """``"save"``, ``"discard"`` or ``"cancel"`` for unsaved edits."""
        if not self.interactive:
            return "keep"  # leave the autosave in place; it is offered on the next open
        buttons = QtWidgets.QMessageBox.StandardButton
        answer = QtWidgets.QMessageBox.question(
            self.parent_widget, "Unsaved annotations",
            "The annotations have unsaved changes (they are autosaved). Save them now?",
            buttons.Save | buttons.Discard | buttons.Cancel)
        return {buttons.Save: "save", buttons.Discard: "discard"}.get(answer, "cancel")

    def ask_legacy_base(self) -> Optional[bool]:
        """Whether a header-less CSV is 1-based (``True``), 0-based (``False``) or cancelled (``None``)."""
        if not self.interactive:
            return False
        return self._choose("Authors' annotation CSV",
                            "This CSV has no header: it is the authors' annotation format (YN,XN,YG,XG,ZN,ZG).\n"
                            "Files saved by their annotation tool count from 0; the older Crop files count from 1.",
                            {"0-based (annotation tool)": False, "1-based (older Crop files)": True})

    def ask_import_mode(self, n_existing: int, n_new: int) -> Optional[str]:
        """``"replace"``, ``"add"`` or ``None`` (cancel) when importing into a non-empty set."""
        if not self.interactive:
            return "replace"
        return self._choose("Import vectors",
                            f"Replace the {n_existing} pairs shown by the {n_new} imported ones, or add them?\n"
                            "(Either can be undone.)", {"Replace": "replace", "Add": "add"})

    def _choose(self, title: str, text: str, choices: dict):
        """A message box with one button per choice plus Cancel; the chosen value, or ``None``."""
        box = QtWidgets.QMessageBox(self.parent_widget)
        box.setWindowTitle(title)
        box.setText(text)
        buttons = {box.addButton(label, QtWidgets.QMessageBox.ButtonRole.AcceptRole): value
                   for label, value in choices.items()}
        box.addButton(QtWidgets.QMessageBox.StandardButton.Cancel)
        box.exec()
        return buttons.get(box.clickedButton())

    # --- settings helpers -------------------------------------------------------------------
    def _settings_json(self, key: str, default: Any) -> Any:
        raw = self.settings.value(key, "")
        try:
            return json.loads(raw) if raw else default
        except (TypeError, ValueError):
            return default

    def _last_voxel_size(self) -> Optional[list[float]]:
        return self._settings_json("last_voxel_size", None)

    def remembered_voxel_size(self, path: Path) -> Optional[tuple[float, float, float]]:
        if self.project is not None and self.project.contains(path):
            remembered = self.project.voxel_size_for(path)
            if remembered:
                return remembered
        value = self._settings_json("voxel_sizes", {}).get(str(Path(path).resolve()))
        try:
            return parse_voxel_size(value) if value else None
        except CellPolError:
            return None

    def remember_voxel_size(self, path: Path, voxel_size: Sequence[float]) -> None:
        sizes = self._settings_json("voxel_sizes", {})
        sizes[str(Path(path).resolve())] = list(voxel_size)
        self.settings.setValue("voxel_sizes", json.dumps(sizes))
        if self.project is not None and self.project.contains(path):
            self.project.remember_voxel_size(path, voxel_size)

    def recent_files(self) -> list[str]:
        return [p for p in self._settings_json("recent_files", []) if isinstance(p, str)]

    def add_recent(self, path: Path) -> None:
        entry = str(Path(path).resolve())
        recent = [entry] + [p for p in self.recent_files() if p != entry]
        self.settings.setValue("recent_files", json.dumps(recent[:MAX_RECENT]))

    def last_dir(self) -> str:
        return str(self.settings.value("last_dir", "") or "")

    def set_last_dir(self, path: Path) -> None:
        self.settings.setValue("last_dir", str(Path(path).resolve().parent))

    # --- opening ----------------------------------------------------------------------------
    def open_path(self, path, voxel_size: Optional[Sequence[float]] = None, axes: Optional[str] = None,
                  series: Optional[int] = None) -> bool:
        """Open an image (asking which series of a multi-series file, and for the voxel size if the file has
        none), a project folder, or import a vectors file into the open image. Returns whether something was
        opened."""
        path = Path(path)
        if path.name in ("zarr.json", ".zattrs", ".zgroup") and is_zarr_folder(path.parent):
            path = path.parent  # an OME-Zarr image is a folder; the file dialog picks the file inside it
        if (path.is_dir() and not is_zarr_folder(path)) or path.name == PROJECT_FILE:
            return self.open_project(path)
        if path.suffix.lower() == ".csv":
            return self.import_vectors(path)
        if not self.maybe_save():
            return False
        if series is None:
            series = choose_series(path, self.parent_widget, self.interactive)
            if series is None:
                self.status.emit("Opening cancelled.")
                return False
        if voxel_size is None:
            voxel_size = self.remembered_voxel_size(path) if path.exists() else None
        if self.is_large_image(path, series):
            return self._open_large(path, voxel_size, axes, series)
        try:
            QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
            try:
                volume = read_volume(path, voxel_size=voxel_size, axes=axes, scene=series)
            finally:
                QtWidgets.QApplication.restoreOverrideCursor()
        except MissingVoxelSizeError:
            return self._ask_and_retry(path, read_image_info(path, scene=series), ask_axes=False, axes=axes,
                                       series=series)
        except FileFormatError as exc:
            info = None
            if axes is None:
                try:
                    info = read_image_info(path, scene=series)
                except CellPolError:
                    info = None
            if info is not None and info.get("axes_problem"):
                return self._ask_and_retry(path, info, ask_axes=True, axes=None, voxel_size=voxel_size,
                                           series=series)
            self.warn("Cannot open image", str(exc))
            return False
        except CellPolError as exc:
            self.warn("Cannot open image", str(exc))
            return False
        except MemoryError:
            self.warn("Cannot open image", f"{path}: not enough memory to load this image.")
            return False
        self.load_volume(volume, image_path=path)
        self.add_recent(path)
        self.set_last_dir(path)
        return True

    # --- large images (read at several resolutions) ---------------------------------------------
    def large_image_threshold(self) -> int:
        """Bytes above which an image opens as a large image: the ``large_image_mb`` setting (or the environment
        variable ``CELLPOL_LARGE_IMAGE_MB``), else :data:`LARGE_IMAGE_MEMORY_SHARE` of the memory available now."""
        try:
            megabytes = float(self.settings.value("large_image_mb", 0) or os.environ.get("CELLPOL_LARGE_IMAGE_MB")
                              or 0)
        except (TypeError, ValueError):
            megabytes = 0.0
        if megabytes > 0:
            return int(megabytes * 2**20)
        return int(LARGE_IMAGE_MEMORY_SHARE * available_memory_bytes())

    def is_large_image(self, path: Path, series: int = 0) -> bool:
        """Whether ``path`` is too large to load whole (its metadata only is read; unreadable files are left to
        the usual path, which says what is wrong)."""
        try:
            info = read_image_info(path, scene=series)
        except (CellPolError, OSError):
            return False
        shape = info.get("czyx_shape") or info.get("shape")
        try:
            needed = in_memory_bytes(shape, info.get("dtype"))
        except TypeError:
            return False
        return needed > self.large_image_threshold()

    def multiscale_cache_dir(self) -> Optional[Path]:
        """Where the coarse levels of large images are cached (the ``multiscale_cache`` setting, else the user
        cache folder; an empty setting value ``"none"`` turns the cache off)."""
        value = str(self.settings.value("multiscale_cache", "") or "")
        if value.lower() == "none":
            return None
        return Path(value) if value else default_cache_dir()

    def _open_large(self, path: Path, voxel_size: Optional[Sequence[float]], axes: Optional[str],
                    series: int) -> bool:
        """Open ``path`` as a :class:`MultiscaleImage`: its coarsest level is computed (or read from the cache)
        in a worker thread while the window keeps answering, then shown; the views read full resolution for the
        region in view. ``state.volume`` is a :class:`Volume` of the full-resolution shape and voxel size whose
        data hold no pixels (annotations stay in full-resolution voxels)."""
        try:
            lazy = open_lazy(path, series=series, axes=axes, voxel_size=voxel_size)
        except MissingVoxelSizeError:
            return self._ask_and_retry(path, read_image_info(path, scene=series), ask_axes=False, axes=axes,
                                       series=series)
        except CellPolError as exc:
            self.warn("Cannot open image", str(exc))
            return False
        except MemoryError:
            self.warn("Cannot open image", f"{path}: not enough memory to open this image.")
            return False
        if lazy.voxel_size is None:
            lazy.close()
            return self._ask_and_retry(path, read_image_info(path, scene=series), ask_axes=False, axes=axes,
                                       series=series)
        multiscale = self._build_multiscale(lazy, path)
        if multiscale is None:
            lazy.close()
            return False
        try:
            volume = self._placeholder_volume(multiscale, path, series)
        except CellPolError as exc:
            multiscale.close()
            self.warn("Cannot open image", str(exc))
            return False
        self.load_volume(volume, image_path=path, multiscale=multiscale)
        self.add_recent(path)
        self.set_last_dir(path)
        self.status.emit(LARGE_IMAGE_NOTE)
        return True

    def _build_multiscale(self, lazy, path: Path) -> Optional[MultiscaleImage]:
        """The multiscale image of ``lazy``, computed in a worker thread; the event loop runs meanwhile (a progress
        dialog with Cancel when interactive). ``None`` (after saying why) when it fails or is cancelled."""
        progress = {"done": 0, "total": 0}
        cancelled = threading.Event()
        outcome: dict[str, Any] = {}
        loop = QtCore.QEventLoop()
        cache_dir = self.multiscale_cache_dir()
        options = {}
        try:  # the coarsest level's memory budget (tests and small machines set it)
            budget_mb = float(self.settings.value("multiscale_budget_mb", 0) or 0)
        except (TypeError, ValueError):
            budget_mb = 0.0
        if budget_mb > 0:
            options["budget_bytes"] = int(budget_mb * 2**20)

        def build() -> MultiscaleImage:
            return MultiscaleImage(lazy, cache_dir=cache_dir, **options, progress=lambda done, total: progress.update(
                done=done, total=total), cancel=cancelled.is_set)

        def finish(key: str, value: Any) -> None:
            outcome[key] = value
            loop.quit()

        dialog = None
        if self.interactive:
            dialog = QtWidgets.QProgressDialog(f"Preparing a downsampled view of {path.name}…", "Cancel", 0, 100,
                                               self.parent_widget)
            dialog.setWindowModality(QtCore.Qt.WindowModality.WindowModal)
            dialog.setMinimumDuration(500)
            dialog.canceled.connect(cancelled.set)
        timer = QtCore.QTimer()
        timer.setInterval(200)

        def report() -> None:
            if progress["total"]:
                share = int(100 * progress["done"] / progress["total"])
                self.status.emit(f"Large image: preparing a downsampled view of {path.name}: {share} %")
                if dialog is not None:
                    dialog.setValue(share)

        timer.timeout.connect(report)
        timer.start()
        self.status.emit(f"Large image: preparing a downsampled view of {path.name}…")
        worker = run_in_thread(build, on_result=lambda value: finish("result", value),
                               on_error=lambda exc: finish("error", exc))
        if not outcome:
            loop.exec()
        timer.stop()
        if dialog is not None:
            dialog.reset()
            dialog.deleteLater()
        del worker
        error = outcome.get("error")
        if error is not None:
            if cancelled.is_set():
                self.status.emit("Opening cancelled.")
            elif isinstance(error, MemoryError):
                self.warn("Cannot open image", f"{path}: not enough memory for its downsampled view.")
            else:
                self.warn("Cannot open image", str(error) if isinstance(error, CellPolError) else
                          f"{path}: cannot read the image ({type(error).__name__}: {error}).")
            return None
        return outcome.get("result")

    @staticmethod
    def _placeholder_volume(multiscale: MultiscaleImage, path: Path, series: int) -> Volume:
        """The :class:`Volume` the rest of the window sees for a large image: full-resolution shape, voxel size and
        channels; its data are a read-only broadcast of zeros (no memory). ``metadata["multiscale"]`` marks it:
        whatever needs pixels must read them through ``ViewerState.multiscale``."""
        image = multiscale.image
        c = image.shape[0]
        data = np.broadcast_to(np.zeros((c, 1, 1, 1), image.dtype), image.shape)
        nucleus, golgi = 0, 1
        try:
            from app.core.imageio.reading import _channel_roles

            nucleus, golgi, _ = _channel_roles(c, image.channel_names, {"nucleus": None, "golgi": None}, {}, path)
        except Exception:  # noqa: BLE001 - the roles are a convenience; the user can set them
            pass
        metadata = {"format": image.format, "scene": series, "series_name": image.series_name,
                    "multiscale": True, "levels": multiscale.describe(), "warnings": [],
                    "original_dtype": str(image.dtype)}
        return Volume(data, image.voxel_size, channel_names=image.channel_names or (), nucleus_channel=nucleus,
                      golgi_channel=golgi, source=str(path), metadata=metadata)

    def _ask_and_retry(self, path: Path, info: dict, ask_axes: bool, axes: Optional[str],
                       voxel_size: Optional[Sequence[float]] = None, series: int = 0) -> bool:
        if info.get("voxel_size") and voxel_size is None:
            voxel_size = info["voxel_size"]
        answer = self.ask_voxel_size(info, ask_axes)
        if answer is None:
            self.status.emit("Opening cancelled: the image needs a voxel size.")
            if not self.interactive:
                self.warn("Cannot open image", f"{path}: no voxel size in the file's metadata.")
            return False
        chosen, chosen_axes, remember = answer
        if ask_axes and not chosen_axes:
            self.warn("Cannot open image", f"{path}: {info.get('axes_problem') or 'the axis order is unknown'} "
                      "Give the axis order (e.g. ZCYX).")
            return False
        self.settings.setValue("last_voxel_size", json.dumps(list(chosen)))
        if remember:
            self.remember_voxel_size(path, chosen)
        return self.open_path(path, voxel_size=chosen, axes=chosen_axes or axes, series=series)

    def load_volume(self, volume: Volume, image_path: Optional[Path] = None,
                    vectors_path: Optional[Path] = None, pairs: Optional[PairSet] = None,
                    fresh: bool = False, multiscale: Optional[MultiscaleImage] = None) -> None:
        """Show ``volume`` and its annotations (from ``vectors_path``, or beside the image), offering to
        recover an autosave newer than the saved file. ``fresh`` starts empty (the demo). ``multiscale``: a large
        image, whose ``volume`` holds no pixels (the large image open now stays when ``volume`` is its placeholder
        again, e.g. with another voxel size)."""
        previous = self.state.multiscale
        if multiscale is None and previous is not None and volume.metadata.get("multiscale") and \
                tuple(previous.shape) == tuple(volume.data.shape):
            multiscale = previous
        self._detach_autosave()
        self.image_path = Path(image_path) if image_path is not None else None
        if vectors_path is None and self.image_path is not None:
            series = int(volume.metadata.get("scene") or 0)  # series N > 0 of a multi-series file: its own file
            if self.project is not None and self.project.contains(self.image_path):
                vectors_path = self.project.vectors_path(self.image_path, series)
            else:
                vectors_path = vectors_path_for(self.image_path, series=series)
        self.vectors_path = Path(vectors_path) if vectors_path is not None else None
        self._clear_comparison()
        self.state.set_volume(volume, self._displays_for(volume, multiscale), multiscale=multiscale)
        if previous is not None and previous is not multiscale:
            previous.close()

        loaded = PairSet.empty(volume.voxel_size)
        if pairs is not None:
            loaded = pairs
        elif self.vectors_path is not None and self.vectors_path.exists() and not fresh:
            try:
                loaded = read_pairs(self.vectors_path, voxel_size=volume.voxel_size)
            except CellPolError as exc:
                self.warn("Cannot read the annotations", str(exc))
        loaded = loaded.with_voxel_size(volume.voxel_size)
        self.model.set_pairset(loaded)
        if fresh and self.vectors_path is not None:
            discard_autosave(self.vectors_path)
        elif self.vectors_path is not None:
            autosave = find_recovery(self.vectors_path)
            if autosave is not None:
                if self.ask_recover(autosave):
                    try:
                        recovered, pending = load_autosave(autosave)
                        self.model.set_pairset(recovered.with_voxel_size(volume.voxel_size), pending=pending)
                        self.model.mark_unsaved()
                        self.status.emit(f"Recovered {len(recovered)} pairs from {autosave.name}.")
                    except CellPolError as exc:
                        self.warn("Cannot recover the autosave", str(exc))
                else:
                    discard_autosave(self.vectors_path)
        threshold = self.model.meta.get("score_threshold", 0.0)
        self.state.set_score_threshold(threshold if isinstance(threshold, (int, float)) else 0.0, record=False)
        if self.vectors_path is not None:
            self.autosaver = Autosaver(self.model, autosave_path_for(self.vectors_path), self.provenance)
            self.autosaver.saved.connect(lambda p: self.autosaved.emit(str(p)))
            self.autosaver.failed.connect(self.status.emit)
        name = self.image_path.name if self.image_path is not None else (volume.source or "demo")
        self.title = str(name)
        if self.project is not None and self.image_path is not None and self.project.contains(self.image_path):
            try:
                self.project.remember_last_image(self.image_path)
            except OSError as exc:
                self.status.emit(f"Cannot update the project file: {exc.strerror or exc}")
        self.document_changed.emit()

    def _displays_for(self, volume: Volume, multiscale: Optional[MultiscaleImage] = None):
        """Default displays with the colours and gammas remembered for the nucleus/Golgi roles."""
        displays = default_displays(volume, multiscale.levels[-1].array if multiscale is not None else None)
        prefs = self._settings_json("channel_display", {})
        for index, display in enumerate(displays):
            role = "nucleus" if index == volume.nucleus_channel else "golgi" if index == volume.golgi_channel else None
            saved = prefs.get(role) if role else None
            if saved:
                try:
                    displays[index] = display.replace(colour=tuple(int(v) for v in saved["colour"]),
                                                      gamma=float(saved.get("gamma", 1.0)))
                except (KeyError, TypeError, ValueError):
                    pass
        return displays

    def remember_displays(self) -> None:
        volume = self.state.volume
        if volume is None:
            return
        prefs = self._settings_json("channel_display", {})
        for role, index in (("nucleus", volume.nucleus_channel), ("golgi", volume.golgi_channel)):
            if index is not None and index < len(self.state.displays):
                prefs[role] = self.state.displays[index].to_dict()
        self.settings.setValue("channel_display", json.dumps(prefs))

    def provenance(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"app_version": __version__}
        if self.image_path is not None:
            meta["image"] = str(self.image_path)
        if self.state.volume is not None:
            meta["image_shape_zyx"] = list(self.state.volume.spatial_shape)
            meta["channels"] = {"nucleus": self.state.volume.nucleus_channel,
                                "golgi": self.state.volume.golgi_channel}
        return meta

    # --- projects ---------------------------------------------------------------------------
    def open_project(self, path) -> bool:
        try:
            self.project = Project.open(path)
        except CellPolError as exc:
            self.warn("Cannot open project", str(exc))
            return False
        self.add_recent(self.project.root)
        self.status.emit(f"Project {self.project.name}: {len(self.project.images())} images.")
        self.document_changed.emit()
        return True

    def open_project_image(self, path) -> bool:
        """Open another image of the project (project panel, Next/Previous image).

        Unsaved annotations of a project image are saved to the project first, without asking: they are
        the project's own files, and moving through the images should not stop at a dialog each time.
        (Annotations of an image from outside the project go through the usual Save/Discard question.)
        If that save fails the current image stays open. Returns whether ``path`` is now open.
        """
        path = Path(path)
        if self.image_path is not None and self.state.volume is not None and \
                path.resolve() == self.image_path.resolve():
            return True
        in_project = (self.project is not None and self.vectors_path is not None
                      and self.project.contains(self.vectors_path))
        if in_project and self.state.volume is not None and self.model.is_dirty and not self.save():
            return False
        return self.open_path(path)

    def new_project(self, path) -> bool:
        try:
            self.project = Project.create(path)
        except (CellPolError, OSError) as exc:
            self.warn("Cannot create project", str(exc))
            return False
        self.add_recent(self.project.root)
        self.document_changed.emit()
        return True

    # --- saving -----------------------------------------------------------------------------
    def save(self, path=None) -> bool:
        """Write the annotations (project CSV + JSON sidecar). ``path`` = save as."""
        if self.state.volume is None:
            return False
        target = Path(path) if path is not None else self.vectors_path
        if target is None:
            return False
        try:
            # a review in progress is the user's annotations even while every pair is still predicted
            content = "annotation" if is_under_review(self.model) else None
            write_pairs(target, self.model.to_pairset(), provenance=self.provenance(), content=content)
        except (CellPolError, OSError) as exc:
            self.warn("Cannot save the annotations", _write_problem(target, exc))
            return False
        if self.vectors_path is not None and target != self.vectors_path:
            discard_autosave(self.vectors_path)
            self.vectors_path = target
            self._detach_autosave()
            self.autosaver = Autosaver(self.model, autosave_path_for(target), self.provenance)
            self.autosaver.saved.connect(lambda p: self.autosaved.emit(str(p)))
            self.autosaver.failed.connect(self.status.emit)
        discard_autosave(target)
        self.model.mark_saved()
        unpaired = (" The nucleus still waiting for its Golgi is not saved: a pair needs both."
                    if self.model.pending_nucleus is not None else "")
        self.status.emit(f"Saved {len(self.model)} pairs to {target}.{unpaired}")
        self.saved.emit(str(target))
        return True

    def maybe_save(self) -> bool:
        """Before the annotations go away: ``True`` to go on, ``False`` to stop."""
        if self.state.volume is None or not self.model.is_dirty:
            return True
        answer = self.ask_unsaved()
        if answer == "save":
            return self.save()
        if answer == "discard":
            if self.vectors_path is not None:
                discard_autosave(self.vectors_path)
            self.model.mark_saved()
            return True
        return answer == "keep"

    def _detach_autosave(self) -> None:
        if self.autosaver is not None:
            self.autosaver.detach()
            self.autosaver = None

    # --- import / export --------------------------------------------------------------------
    def read_vectors(self, path, fmt: Optional[str] = None, own_voxel_size: bool = False) -> Optional[PairSet]:
        """Read any supported vectors file; ``fmt`` forces ``project``, ``legacy`` or ``3dngmic``.

        The pairs get the open image's voxel size, unless ``own_voxel_size``: then a project CSV keeps its
        sidecar's (to check that a reference was made at the image's calibration).
        """
        path = Path(path)
        voxel = self.state.volume.voxel_size if self.state.volume is not None else None
        if own_voxel_size:
            voxel = None
        try:
            if fmt == "3dngmic" or (fmt is None and path.suffix.lower() == ".npy"):
                return read_3dngmic_vectors(path, voxel_size=voxel)
            if fmt != "legacy":
                try:
                    return read_pairs(path, voxel_size=voxel)
                except FileFormatError as exc:
                    if fmt == "project" or "no header" not in str(exc):
                        raise
            one_based = self.ask_legacy_base()
            if one_based is None:
                return None
            return read_legacy_csv(path, one_based=one_based, voxel_size=voxel)
        except CellPolError as exc:
            self.warn("Cannot read vectors", str(exc))
            return None

    def import_vectors(self, path, fmt: Optional[str] = None) -> bool:
        if self.state.volume is None:
            self.warn("Import vectors", "Open an image first, then import its vectors.")
            return False
        pairs = self.read_vectors(path, fmt)
        if pairs is None:
            return False
        mode = "replace"
        if len(self.model):
            mode = self.ask_import_mode(len(self.model), len(pairs))
            if mode is None:
                return False
        name = Path(path).name
        if mode == "add":
            self.model.add_pairs(pairs, text=f"import {name}")
        else:
            self.model.replace_all(pairs, text=f"import {name}")
        self.status.emit(f"Imported {len(pairs)} pairs from {name}.")
        return True

    def export_vectors(self, path, fmt: str = "project") -> bool:
        pairs = self.model.to_pairset()
        try:
            if fmt == "legacy":
                write_legacy_csv(path, pairs, one_based=False)
            elif fmt == "3dngmic":
                write_3dngmic_vectors(path, pairs)
            else:
                write_pairs(path, pairs, provenance=self.provenance())
        except (CellPolError, OSError) as exc:
            self.warn("Cannot export", _write_problem(path, exc))
            return False
        self.status.emit(f"Exported {len(pairs)} pairs to {path}.")
        return True

    # --- comparison with a reference (evaluation) ---------------------------------------------
    def set_reference(self, reference: Optional[PairSet], name: str = "") -> bool:
        """Compare the pairs with ``reference`` (the paper's scoring; TP/FP colours, FN drawn from the
        reference). ``None`` clears the comparison. A reference made for another image (voxel size, shape,
        points outside) is refused with one message; returns whether the comparison is shown."""
        if reference is None:
            self._clear_comparison()
            return True
        volume = self.state.volume
        if volume is None:
            self.warn("Compare with reference", "Open an image first, then compare its vectors with a reference.")
            return False
        try:
            reference = check_reference(reference, volume.voxel_size, volume.spatial_shape)
        except CellPolError as exc:
            self.warn("Cannot compare with the reference", str(exc))
            return False
        self.reference_name = name or str(reference.meta.get("image") or "reference")
        self.state.reference = reference
        self._refresh_evaluation()
        self.state.set_colour_mode("evaluation")
        return True

    def load_reference(self, path) -> bool:
        reference = self.read_vectors(path, own_voxel_size=True)
        if reference is None or not self.set_reference(reference, Path(path).name):
            return False
        score = self.comparison.score if self.comparison is not None else None
        if score is not None:
            level = self.comparison_level
            self.status.emit(f"Against {Path(path).name} at τL = {level}: {score.tp[level]} TP, {score.fp[level]} FP, "
                             f"{score.fn[level]} FN.")
        return True

    def set_comparison_options(self, level: Optional[int] = None, border_margin_um: Optional[float] = None) -> None:
        if level is not None:
            self.comparison_level = int(level)
        if border_margin_um is not None:
            self.border_margin_um = float(border_margin_um)
        self._refresh_evaluation()

    def _clear_comparison(self) -> None:
        self.comparison = None
        self.reference_name = ""
        self.state.set_evaluation(None, {}, [])
        self.state.set_colour_mode("source")
        self.comparison_changed.emit(None)

    def _refresh_evaluation(self, *args) -> None:
        reference = self.state.reference
        if reference is None or self.model.dragging or self.state.volume is None:
            return
        try:
            self.comparison = compare_with_reference(reference, self.model.to_pairset(),
                                                     image_shape=self.state.volume.spatial_shape,
                                                     level=self.comparison_level,
                                                     border_margin_um=self.border_margin_um)
        except CellPolError as exc:
            self.status.emit(f"Evaluation unavailable: {exc}")
            self.comparison = None
            self.state.set_evaluation(reference, {}, [])
        else:
            self.state.set_evaluation(reference, self.comparison.labels, self.comparison.fn_rows)
        self.comparison_changed.emit(self.comparison)

    def default_vectors_name(self) -> str:
        return f"{image_stem(self.image_path)}.vectors.csv" if self.image_path else "vectors.csv"


def _write_problem(path, exc: Exception) -> str:
    """The one message for a failed write: core's own (it names the file and the reason), else the system's."""
    if isinstance(exc, CellPolError):
        return str(exc)
    return f"{path}: {getattr(exc, 'strerror', None) or exc}"
