"""What the views share: the volume, the channel displays, the crosshair, the overlay options, and the
edit actions that need the image (snapping).

One :class:`ViewerState` per window. Views read it and listen to its Qt signals; the annotation model
(:class:`app.core.annotation.AnnotationModel`) stays Qt-free and is relayed here through
:attr:`ViewerState.pairs_changed` and friends, so widgets connect to Qt signals only.
"""

from __future__ import annotations

import math

from typing import Callable, Optional, Sequence

import numpy as np
from PySide6 import QtCore

from app.core.annotation import GOLGI, NUCLEUS, AnnotationModel, snap_to_peak
from app.core.pairs import PairSet
from app.core.volume import Volume
from app.ui.display import (DEFAULT_OVERLAY_COLOUR, EVALUATION_COLOURS, SOURCE_COLOURS, ChannelDisplay,
                             default_displays, score_colour)

#: View kinds by the axis they look along: XY looks along z (0), XZ along y (1), YZ along x (2).
AXIS_NAMES = {0: "XY", 1: "XZ", 2: "YZ"}
#: (horizontal, vertical) array axes of each view, (z, y, x) indexing.
VIEW_AXES = {0: (2, 1), 1: (2, 0), 2: (0, 1)}


class ViewerState(QtCore.QObject):
    """Shared view state of one window."""

    volume_changed = QtCore.Signal()
    cursor_changed = QtCore.Signal(object)    # (z, y, x) voxel floats
    display_changed = QtCore.Signal()
    mip_changed = QtCore.Signal(bool)
    hover_changed = QtCore.Signal(object)     # (axis, (z, y, x)) or None
    overlay_changed = QtCore.Signal()         # colour mode, evaluation labels, depth window
    options_changed = QtCore.Signal()         # place mode, snapping
    pairs_changed = QtCore.Signal(str, object)
    selection_changed = QtCore.Signal(object)
    pending_changed = QtCore.Signal(object)
    history_changed = QtCore.Signal()
    message = QtCore.Signal(str)              # for the status bar

    def __init__(self, model: Optional[AnnotationModel] = None, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self.volume: Optional[Volume] = None
        self.displays: list[ChannelDisplay] = []
        self.cursor: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.mip = False
        self.place_mode = False
        self.snap = True
        self.snap_radius_um = 2.0
        self.depth_um = 2.0
        self.colour_mode = "source"            # or "evaluation", or "score" (predictions by their score)
        self.score_threshold = 0.0             # predicted pairs scoring below it are not drawn
        self.labels: dict[int, str] = {}       # pair id → TP / FP
        self.reference: Optional[PairSet] = None
        self.fn_rows = np.zeros(0, dtype=np.int64)
        self.hover: Optional[tuple[int, tuple[float, float, float]]] = None
        # the statistics' reference: ("point", (x, y, z) voxels) or ("axis", (x, y, z) direction), drawn in the views
        self.polarity_reference: Optional[tuple[str, tuple[float, float, float]]] = None
        self.pick: Optional[Callable[[tuple[float, float, float]], None]] = None  # the next click's taker, if any
        self._mips: dict[tuple[int, int], np.ndarray] = {}
        # A large image opened at several resolutions (app.core.multiscale); ``volume.data`` is then a placeholder
        # of the full-resolution shape that holds no pixels (see :meth:`is_multiscale`).
        self.multiscale = None
        self.model = model if model is not None else AnnotationModel()
        self._connect_model(self.model)

    # --- the annotation model ---------------------------------------------------------------
    def _connect_model(self, model: AnnotationModel) -> None:
        model.changed.connect(self.pairs_changed.emit)
        model.selection_changed.connect(self.selection_changed.emit)
        model.pending_changed.connect(self.pending_changed.emit)
        model.history_changed.connect(self.history_changed.emit)

    # --- volume and display -----------------------------------------------------------------
    def set_volume(self, volume: Volume, displays: Optional[Sequence[ChannelDisplay]] = None,
                   multiscale=None) -> None:
        """Show ``volume``; ``multiscale`` (a :class:`~app.core.multiscale.MultiscaleImage`) for a large image whose
        ``volume.data`` holds no pixels: the views then read the multiscale image."""
        self.volume = volume
        self.multiscale = multiscale
        self.displays = list(displays) if displays is not None else default_displays(volume)
        self._mips.clear()
        z, y, x = volume.spatial_shape
        self.cursor = (float(z // 2), float(y // 2), float(x // 2))
        self.model.voxel_size = volume.voxel_size
        self.model.image_shape = volume.spatial_shape
        self.volume_changed.emit()
        self.cursor_changed.emit(self.cursor)

    def set_roles(self, nucleus_channel: int, golgi_channel: int) -> None:
        """Change which channels hold nuclei and Golgi (snapping and prediction use them)."""
        self.volume = self.volume.with_roles(nucleus_channel, golgi_channel)
        self.display_changed.emit()

    def set_display(self, index: int, **changes) -> None:
        self.displays[index] = self.displays[index].replace(**changes)
        self.display_changed.emit()

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self.volume.voxel_size if self.volume is not None else (1.0, 1.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.spatial_shape if self.volume is not None else (1, 1, 1)

    @property
    def is_multiscale(self) -> bool:
        """A large image is open at several resolutions: ``volume.data`` holds no pixels (read them through
        :attr:`multiscale`, :meth:`intensities_at` or :meth:`preview`)."""
        return self.multiscale is not None

    def preview(self) -> np.ndarray:
        """The whole image in memory, ``(C, Z, Y, X)``: the volume's data, or a large image's coarsest level."""
        if self.multiscale is not None:
            return self.multiscale.levels[-1].array
        return self.volume.data

    def preview_factors(self) -> tuple[int, int, int]:
        """Level-0 voxels per voxel of :meth:`preview` along z, y and x ((1, 1, 1) for an image in memory)."""
        if self.multiscale is not None:
            return self.multiscale.scale_at(self.multiscale.coarsest)
        return (1, 1, 1)

    def intensities_at(self, position: Sequence[float], wait: bool = True) -> Optional[np.ndarray]:
        """Every channel's value at voxel ``(z, y, x)``: from memory, or read from a large image's file
        (``wait=False``: ``None`` while another thread is reading that file; see ``MultiscaleImage``)."""
        z, y, x = (int(v) for v in np.clip(np.round(position), 0, np.asarray(self.shape) - 1))
        if self.multiscale is not None:
            return self.multiscale.intensities_at((z, y, x), wait=wait)
        return self.volume.data[:, z, y, x]

    def plane(self, channel: int, axis: int) -> np.ndarray:
        """What a view looking along ``axis`` shows of ``channel``: rows = its vertical axis. For a large image,
        the plane of its coarsest level (:meth:`preview_factors` voxels per pixel)."""
        data = self.preview()[channel]
        if self.mip:
            key = (channel, axis)
            if key not in self._mips:
                self._mips[key] = data.max(axis=axis)
            plane = self._mips[key]
        else:
            index = min(self.slice_index(axis) // self.preview_factors()[axis], data.shape[axis] - 1)
            plane = data[(slice(None),) * axis + (index,)]
        return plane.T if axis == 2 else plane  # YZ: rows = y, columns = z

    def slice_index(self, axis: int) -> int:
        return int(np.clip(round(self.cursor[axis]), 0, self.shape[axis] - 1))

    def set_mip(self, on: bool) -> None:
        if bool(on) != self.mip:
            self.mip = bool(on)
            self.mip_changed.emit(self.mip)

    # --- crosshair and hover ----------------------------------------------------------------
    def clamp(self, position: Sequence[float]) -> tuple[float, float, float]:
        upper = np.asarray(self.shape, dtype=np.float64) - 1
        clamped = np.clip(np.asarray(position, dtype=np.float64), 0, upper)
        return (float(clamped[0]), float(clamped[1]), float(clamped[2]))

    def set_cursor(self, position: Sequence[float]) -> None:
        cursor = self.clamp(position)
        if cursor != self.cursor:
            self.cursor = cursor
            self.cursor_changed.emit(cursor)

    def step_slice(self, axis: int, step: int) -> None:
        cursor = list(self.cursor)
        cursor[axis] = self.slice_index(axis) + step
        self.set_cursor(cursor)

    def set_hover(self, axis: Optional[int], position: Optional[Sequence[float]]) -> None:
        self.hover = None if axis is None or position is None else (axis, self.clamp(position))
        self.hover_changed.emit(self.hover)

    # --- overlay options --------------------------------------------------------------------
    def set_colour_mode(self, mode: str) -> None:
        if mode not in ("source", "evaluation", "score"):
            raise ValueError(mode)
        self.colour_mode = mode
        self.overlay_changed.emit()

    def set_score_threshold(self, threshold: float, record: bool = True) -> None:
        """Draw only the predicted pairs scoring at least ``threshold`` (the Predict panel's slider).

        ``record``: while the image holds predictions, the threshold goes into the annotations' meta (saved in
        the sidecar as ``score_threshold`` with the next save, and restored when the image is opened again);
        the annotations count as unsaved until then.
        """
        self.score_threshold = float(threshold)
        model = self.model
        if record and model.meta.get("score_threshold", 0.0) != self.score_threshold and any(
                p.source == "predicted" for p in model):
            model.meta["score_threshold"] = self.score_threshold
            model.mark_unsaved()
        self.overlay_changed.emit()

    def set_polarity_reference(self, kind: Optional[str], xyz: Optional[Sequence[float]] = None) -> None:
        """Draw the statistics' reference: a point (``"point"``, x y z in voxels, e.g. the optic nerve head) or an
        axis (``"axis"``, a direction x y z, e.g. the flow), or nothing (``None``)."""
        self.polarity_reference = (kind, tuple(float(v) for v in xyz)) if kind and xyz is not None else None
        self.overlay_changed.emit()

    def pick_next_click(self, taker: Optional[Callable[[tuple[float, float, float]], None]]) -> None:
        """The next click in a slice view goes to ``taker(voxel z, y, x)`` instead of placing or selecting."""
        self.pick = taker
        self.message.emit("Click the point in a slice view (Esc cancels)." if taker else "")

    def shows(self, pair) -> bool:
        """Whether the views draw ``pair``: everything but predictions scoring below :attr:`score_threshold`
        (the user's own and corrected pairs always show)."""
        return not (pair.source == "predicted" and math.isfinite(pair.score) and pair.score < self.score_threshold)

    def pair_colour(self, pair) -> tuple[int, int, int]:
        """The colour of ``pair`` in the views (the selection's colour is the views' own)."""
        if self.colour_mode == "evaluation" and pair.id in self.labels:
            return EVALUATION_COLOURS[self.labels[pair.id]]
        if self.colour_mode == "score" and pair.source == "predicted" and math.isfinite(pair.score):
            return score_colour(pair.score)
        return SOURCE_COLOURS.get(pair.source, DEFAULT_OVERLAY_COLOUR)

    def set_evaluation(self, reference: Optional[PairSet], labels: dict[int, str], fn_rows: np.ndarray) -> None:
        self.reference, self.labels, self.fn_rows = reference, dict(labels), np.asarray(fn_rows, dtype=np.int64)
        self.overlay_changed.emit()

    def set_place_mode(self, on: bool) -> None:
        self.place_mode = bool(on)
        self.options_changed.emit()

    def set_snap(self, on: Optional[bool] = None, radius_um: Optional[float] = None) -> None:
        if on is not None:
            self.snap = bool(on)
        if radius_um is not None:
            self.snap_radius_um = float(radius_um)
        self.options_changed.emit()

    # --- edits that need the image ----------------------------------------------------------
    def next_end(self) -> str:
        """Which end a placement makes now: a nucleus, or the Golgi of a pending nucleus."""
        return NUCLEUS if self.model.pending_nucleus is None else GOLGI

    def snapped(self, position: Sequence[float], which: str, axis: Optional[int] = None) -> tuple[float, float, float]:
        """``position`` snapped to the peak of the nucleus or Golgi channel (as configured).

        On a maximum-intensity projection the click has no depth, so the whole ray along ``axis`` is
        searched (with or without snapping).
        """
        position = self.clamp(position)
        volume = self.volume
        if volume is None:
            return position
        channel = volume.nucleus_channel if which == NUCLEUS else volume.golgi_channel
        free_axis = axis if (self.mip and axis is not None) else None
        if channel is None or (not self.snap and free_axis is None):
            return position
        radius = self.snap_radius_um if self.snap else 0.0
        if self.multiscale is not None:
            return self._snapped_large(channel, position, radius, free_axis)
        return snap_to_peak(volume.data[channel], position, volume.voxel_size, radius, free_axis=free_axis)

    def _snapped_large(self, channel: int, position: tuple[float, float, float], radius: float,
                       free_axis: Optional[int]) -> tuple[float, float, float]:
        """Snapping on a large image: the peak in a box of the full-resolution file around ``position`` (the
        whole ray along ``free_axis`` on a projection), read for this click only."""
        voxel = np.asarray(self.voxel_size)
        # snap_to_peak smooths with sigma = max(radius / 3, 0.3) µm: a margin of 3 sigma beyond the radius
        half = np.ceil((radius + 3 * max(radius / 3, 0.3)) / voxel).astype(int) + 1
        centre = np.round(position).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, np.asarray(self.shape))
        if free_axis is not None:
            lo[free_axis], hi[free_axis] = 0, self.shape[free_axis]
        box = self.multiscale.read_level0(*((int(a), int(b)) for a, b in zip(lo, hi)))[channel]
        local = snap_to_peak(box, np.asarray(position) - lo, self.voxel_size, radius, free_axis=free_axis)
        return self.clamp(np.asarray(local) + lo)

    def place_at(self, position: Sequence[float], axis: Optional[int] = None) -> Optional[int]:
        """Place the next end (nucleus, then its Golgi) at ``position``; the crosshair follows it.

        Returns the new pair's id when this completed a pair.
        """
        which = self.next_end()
        point = self.snapped(position, which, axis)
        pair_id = self.model.place(point)
        self.set_cursor(point)
        if pair_id is None:
            self.message.emit("Nucleus placed: now click its Golgi (Esc cancels).")
        else:
            self.message.emit(f"Pair {pair_id} added.")
        return pair_id
