"""Orthogonal slice views XY, XZ and YZ (pyqtgraph) with a shared crosshair, MIP, and annotation.

Scene coordinates are **µm** (the image item spans ``shape × voxel size``), so anisotropic voxels are
drawn with the right aspect ratio and the aspect lock of the view is simply 1. A voxel index ``i``
covers ``[i, i + 1) × voxel size``; positions (voxel centres at integers) map to ``(i + 0.5) × size``.

Mouse and trackpad, the same on every platform:

- mouse wheel, Ctrl + wheel, trackpad pinch: zoom at the pointer;
- trackpad two-finger scroll, or dragging the image: pan;
- Shift/Alt + wheel, the slider, PageUp/PageDown: change slice;
- click: move the crosshair (navigate mode) or place nucleus then Golgi (place mode);
- drag a marker: move that nucleus or Golgi; Shift + click a marker: add it to the selection;
- right click: cancel a half-placed pair.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from app.core.annotation import GOLGI, NUCLEUS
from app.core.multiscale import PLANE_AXES
from app.ui.display import (
    EVALUATION_COLOURS,
    SELECTED_COLOUR,
    CompositeRenderer,
)
from app.ui.state import AXIS_NAMES, VIEW_AXES, ViewerState
from app.ui.workers import run_in_thread

_HIT_PIXELS = 9.0
_NUCLEUS_SIZE = 15.0
_GOLGI_SIZE = 10.0
_MIN_SCALE = 0.35  # marker size at the edge of the depth window
#: A large image's sharp region is asked for this long after the view stops moving (pans and zooms come in bursts).
DETAIL_DELAY_MS = 60
#: At most this many bytes are read from the file for one view's sharp region; a coarser level is shown instead
#: of a larger read (a YZ plane of a striped TIFF reads whole rows of every slice).
MAX_DETAIL_READ_BYTES = 256 * 2**20


def _colour(rgb, alpha: int = 255) -> QtGui.QColor:
    return QtGui.QColor(int(rgb[0]), int(rgb[1]), int(rgb[2]), int(alpha))


# pyqtgraph renders one symbol image per distinct (symbol, size, pen object, brush object): the same pen and
# brush objects for the same look keep a thousand markers to a few renderings.
@functools.lru_cache(maxsize=1024)
def _marker_pen(rgb: tuple, alpha: int, width: float) -> QtGui.QPen:
    return pg.mkPen(_colour(rgb, alpha), width=width)


@functools.lru_cache(maxsize=1024)
def _marker_brush(rgb: Optional[tuple], alpha: int) -> QtGui.QBrush:
    return QtGui.QBrush(QtCore.Qt.BrushStyle.NoBrush) if rgb is None else pg.mkBrush(_colour(rgb, alpha))


class RedrawQueue(QtCore.QObject):
    """Redraws the markers of the views that asked, one view per pass of the event loop.

    A thousand predicted vectors take tens of milliseconds to draw in one view; drawn one after the other in
    one pass, the three views held the window for a fifth of a second (benchmarks/ui_stall.py). Here the
    first view draws one display frame (16 ms) after the edit that asked, outside the pass that made the edit,
    and each next view's timer starts only when the previous view is drawn, so input and painting get their
    turn between.
    """

    #: One display frame at 60 Hz: too short to see, long enough to leave the pass that asked.
    FRAME_MS = 16

    def __init__(self, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self._views: list["SliceView"] = []
        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.FRAME_MS)
        self._timer.timeout.connect(self._next)

    def add(self, view: "SliceView") -> None:
        if view not in self._views:
            self._views.append(view)
        if not self._timer.isActive():
            self._timer.start()

    def _next(self) -> None:
        if self._views:
            self._views.pop(0).flush_overlay()
        if self._views:
            self._timer.start()


class DetailLoader(QtCore.QObject):
    """Reads one view's sharp region of a large image in a worker thread, one read at a time.

    A request made while a read runs waits; a newer one replaces it (the user panned or scrolled on), so a
    burst of scrolling costs one read in flight plus the last position, never a queue of stale reads. The GUI
    thread never waits on the file.
    """

    loaded = QtCore.Signal(object, object)   # request, planes (C, a, b)
    failed = QtCore.Signal(object, str)      # request, message

    def __init__(self, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self.current: Optional[dict] = None   # the request being read
        self.pending: Optional[dict] = None   # the request to read next
        self.reads = 0                        # reads started (tests count them)
        self._worker: Any = None

    @property
    def busy(self) -> bool:
        return self.current is not None

    def request(self, request: dict) -> None:
        if self.current is not None:
            self.pending = request
            return
        self._start(request)

    def drop_pending(self) -> None:
        self.pending = None

    def _start(self, request: dict) -> None:
        self.current = request
        self.reads += 1
        self._worker = run_in_thread(request["read"], on_result=self._on_result, on_error=self._on_error)

    def _next(self) -> None:
        self.current, self._worker = None, None
        if self.pending is not None:
            request, self.pending = self.pending, None
            self._start(request)

    def _on_result(self, planes) -> None:
        request = self.current
        self._next()
        if request is not None:
            self.loaded.emit(request, planes)

    def _on_error(self, exc: BaseException) -> None:
        request = self.current
        self._next()
        if request is not None:
            self.failed.emit(request, f"Cannot read the full-resolution region: {exc}")


class _SliceViewBox(pg.ViewBox):
    """A ViewBox that hands clicks, marker drags and wheel gestures to its :class:`SliceView`."""

    def __init__(self, view: "SliceView") -> None:
        super().__init__(invertY=True, lockAspect=True, enableMenu=False)
        self._view = view
        self._dragging = False

    def mouseClickEvent(self, ev) -> None:
        if ev.button() in (QtCore.Qt.MouseButton.LeftButton, QtCore.Qt.MouseButton.RightButton):
            ev.accept()
            self._view.on_click(self.mapSceneToView(ev.scenePos()), ev.button(), ev.modifiers())
        else:
            super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None) -> None:
        if ev.button() == QtCore.Qt.MouseButton.LeftButton:
            if ev.isStart():
                self._dragging = self._view.start_drag(self.mapSceneToView(ev.buttonDownScenePos()))
            if self._dragging:
                ev.accept()
                position = self.mapSceneToView(ev.scenePos())
                if ev.isFinish():
                    self._dragging = False
                    self._view.finish_drag(position, ev.modifiers())
                else:
                    self._view.drag(position)
                return
        super().mouseDragEvent(ev, axis)

    def wheelEvent(self, ev, axis=None) -> None:
        modifiers = ev.modifiers()
        delta = ev.delta()
        if modifiers & (QtCore.Qt.KeyboardModifier.ShiftModifier | QtCore.Qt.KeyboardModifier.AltModifier):
            # Shift/Alt + wheel changes slice (macOS turns Shift + wheel into a horizontal scroll).
            if delta:
                self._view.state.step_slice(self._view.axis, 1 if delta > 0 else -1)
            ev.accept()
            return
        pixels = ev.pixelDelta() if hasattr(ev, "pixelDelta") else QtCore.QPoint()
        is_trackpad_scroll = not pixels.isNull() and not (modifiers & QtCore.Qt.KeyboardModifier.ControlModifier)
        if is_trackpad_scroll:
            # Two-finger scroll pans (zooming on every scroll is what makes trackpads unusable).
            width, height = self.viewPixelSize()
            self._resetTarget()
            self.translateBy(x=-pixels.x() * width, y=-pixels.y() * height)
            ev.accept()
            return
        super().wheelEvent(ev, axis)  # mouse wheel, Ctrl + wheel (Windows/Linux pinch): zoom


class _Markers(pg.ScatterPlotItem):
    """Markers that leave clicks to the view box (which hit-tests them itself, in screen pixels)."""

    def mouseClickEvent(self, ev) -> None:
        ev.ignore()


class _GraphicsView(pg.GraphicsView):
    """Adds the macOS trackpad pinch (a native gesture, not a wheel event) to pyqtgraph's view."""

    def viewportEvent(self, ev: QtCore.QEvent) -> bool:
        if ev.type() == QtCore.QEvent.Type.NativeGesture:
            if ev.gestureType() == QtCore.Qt.NativeGestureType.ZoomNativeGesture:
                box = self.centralWidget
                if isinstance(box, pg.ViewBox):
                    factor = 1.0 / max(1.0 + ev.value(), 0.1)
                    centre = box.mapSceneToView(self.mapToScene(ev.position().toPoint()))
                    box.scaleBy((factor, factor), centre)
                return True
        return super().viewportEvent(ev)


class SliceView(QtWidgets.QWidget):
    """One orthogonal view (``axis`` 0 = XY, 1 = XZ, 2 = YZ) with its slice slider."""

    def __init__(self, state: ViewerState, axis: int, parent: Optional[QtWidgets.QWidget] = None,
                 redraws: Optional[RedrawQueue] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.axis = axis
        self.redraws = redraws if redraws is not None else RedrawQueue(self)
        self.h_axis, self.v_axis = VIEW_AXES[axis]
        self.renderer = CompositeRenderer()
        self._drawn = np.zeros((0, 2))          # marker positions (µm) drawn in this view
        self._drawn_keys: list[tuple[int, str]] = []
        self._drag_key: Optional[tuple[int, str]] = None

        self.graphics = _GraphicsView(self, background="k")
        self.graphics.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.viewbox = _SliceViewBox(self)
        self.graphics.setCentralItem(self.viewbox)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.viewbox.addItem(self.image)
        # A large image: the coarsest level is ``image``; the region in view at the resolution the zoom asks for
        # is ``detail``, above it, read in a worker thread (DetailLoader) after the view stops moving.
        self.detail = pg.ImageItem(axisOrder="row-major")
        self.detail.setZValue(5)
        self.detail.setVisible(False)
        self.viewbox.addItem(self.detail, ignoreBounds=True)
        self.detail_loader = DetailLoader(self)
        self.detail_loader.loaded.connect(self._on_detail_loaded)
        self.detail_loader.failed.connect(self._on_detail_failed)
        self.detail_shown: Optional[dict] = None   # the request whose planes ``detail`` shows
        self.detail_planes: Optional[np.ndarray] = None
        self._detail_timer = QtCore.QTimer(self)
        self._detail_timer.setSingleShot(True)
        self._detail_timer.setInterval(DETAIL_DELAY_MS)
        self._detail_timer.timeout.connect(self.request_detail)
        self.viewbox.sigRangeChanged.connect(self._schedule_detail)
        self._line_items: dict[tuple, pg.PlotCurveItem] = {}
        self.markers = _Markers(pxMode=True)
        self.markers.setZValue(20)
        self.viewbox.addItem(self.markers)
        self.pending_marker = _Markers(pxMode=True, symbol="+", size=18,
                                                 pen=pg.mkPen("w", width=2), brush=None)
        self.pending_marker.setZValue(25)
        self.viewbox.addItem(self.pending_marker)
        # the statistics' reference: a point (a star, in every view) or an axis (an arrow from the image centre)
        self.reference_marker = _Markers(pxMode=True, symbol="star", size=22, pen=pg.mkPen((255, 90, 200), width=2),
                                         brush=pg.mkBrush(255, 90, 200, 120))
        self.reference_marker.setZValue(26)
        self.viewbox.addItem(self.reference_marker)
        self.reference_arrow = pg.PlotCurveItem(pen=pg.mkPen((255, 90, 200), width=3))
        self.reference_arrow.setZValue(26)
        self.viewbox.addItem(self.reference_arrow, ignoreBounds=True)
        crosshair_pen = pg.mkPen((255, 255, 0, 110), width=1)
        self.h_line = pg.InfiniteLine(angle=0, movable=False, pen=crosshair_pen)
        self.v_line = pg.InfiniteLine(angle=90, movable=False, pen=crosshair_pen)
        for line in (self.h_line, self.v_line):
            line.setZValue(10)
            self.viewbox.addItem(line, ignoreBounds=True)

        self.title = QtWidgets.QLabel(AXIS_NAMES[axis])
        self.title.setStyleSheet("color: #ddd; background: #222; padding: 1px 4px;")
        # A long title must not widen a thin view (YZ/XZ are narrow on thin stacks).
        self.title.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.slider.setMinimumWidth(30)
        self.graphics.setMinimumSize(40, 40)
        self.slider.valueChanged.connect(self._on_slider)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.slider)

        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        state.volume_changed.connect(self._on_volume)
        state.cursor_changed.connect(self._on_cursor)
        state.display_changed.connect(self.refresh_image)
        state.mip_changed.connect(self._on_mip)
        for sig in (state.pairs_changed, state.selection_changed, state.overlay_changed, state.pending_changed):
            sig.connect(self.schedule_overlay)
        self._overlay_pending = False
        self._slice = -1

    # --- coordinates ------------------------------------------------------------------------
    def to_view(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` voxel positions → ``(N, 2)`` view coordinates (µm) of this view."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        size = np.asarray(self.state.voxel_size)
        return np.stack([(points[:, self.h_axis] + 0.5) * size[self.h_axis],
                         (points[:, self.v_axis] + 0.5) * size[self.v_axis]], axis=1)

    def to_voxel(self, view_point: QtCore.QPointF, depth: Optional[float] = None) -> tuple[float, float, float]:
        """View coordinates (µm) → voxel ``(z, y, x)``; the depth is the current slice unless given."""
        size = self.state.voxel_size
        position = [0.0, 0.0, 0.0]
        position[self.h_axis] = view_point.x() / size[self.h_axis] - 0.5
        position[self.v_axis] = view_point.y() / size[self.v_axis] - 0.5
        position[self.axis] = float(self.state.slice_index(self.axis)) if depth is None else float(depth)
        return self.state.clamp(position)

    def viewport_pos(self, voxel) -> QtCore.QPoint:
        """Where voxel ``(z, y, x)`` is on this view's viewport (widget pixels), e.g. for test clicks."""
        h, v = self.to_view(np.asarray(voxel))[0]
        scene = self.viewbox.mapViewToScene(QtCore.QPointF(h, v))
        return self.graphics.mapFromScene(scene)

    # --- state → view -----------------------------------------------------------------------
    def _on_volume(self) -> None:
        state = self.state
        self.renderer = CompositeRenderer()
        n = state.shape[self.axis]
        self.slider.blockSignals(True)
        self.slider.setRange(0, n - 1)
        self.slider.setValue(state.slice_index(self.axis))
        self.slider.blockSignals(False)
        self.slider.setEnabled(n > 1 and not state.mip)
        size = state.voxel_size
        width = state.shape[self.h_axis] * size[self.h_axis]
        height = state.shape[self.v_axis] * size[self.v_axis]
        self._clear_detail()
        if state.is_multiscale:
            # the coarsest level's voxels cover whole blocks of level-0 voxels (the last block may run past the edge)
            factors, preview = state.preview_factors(), state.preview().shape[1:]
            width = preview[self.h_axis] * factors[self.h_axis] * size[self.h_axis]
            height = preview[self.v_axis] * factors[self.v_axis] * size[self.v_axis]
        self._slice = -1
        self.refresh_image()
        self.image.setRect(QtCore.QRectF(0, 0, width, height))
        self.refresh_overlay()
        self._update_crosshair()
        self.reset_zoom()

    def reset_zoom(self) -> None:
        self.viewbox.autoRange(items=[self.image], padding=0.02)

    def _on_cursor(self, cursor) -> None:
        index = self.state.slice_index(self.axis)
        if index != self._slice and not self.state.mip:
            self.refresh_image()
            self.refresh_overlay()
            self._schedule_detail()
        self.slider.blockSignals(True)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        self._update_crosshair()

    def _on_mip(self, on: bool) -> None:
        self.slider.setEnabled(not on and self.state.shape[self.axis] > 1)
        self.refresh_image()
        self.refresh_overlay()
        self._schedule_detail()

    def _on_slider(self, value: int) -> None:
        self.state.step_slice(self.axis, value - self.state.slice_index(self.axis))

    def _update_crosshair(self) -> None:
        h, v = self.to_view(np.asarray(self.state.cursor))[0]
        self.v_line.setPos(h)
        self.h_line.setPos(v)

    def _update_title(self) -> None:
        state = self.state
        if state.volume is None:
            return
        letter = "zyx"[self.axis]
        if state.mip:
            text = f"{AXIS_NAMES[self.axis]}  MIP along {letter}"
        else:
            index = state.slice_index(self.axis)
            um = index * state.voxel_size[self.axis]
            text = f"{AXIS_NAMES[self.axis]}  {letter} = {index + 1}/{state.shape[self.axis]}  ({um:.2f} µm)"
        self.title.setText(text)

    def current_rgb(self) -> np.ndarray:
        """The composite shown now, ``(rows, columns, 3)`` uint8."""
        state = self.state
        planes = [state.plane(c, self.axis) if d.visible else None for c, d in enumerate(state.displays)]
        return self.renderer.render(planes, state.displays)

    def refresh_image(self) -> None:
        if self.state.volume is None:
            return
        self._slice = self.state.slice_index(self.axis)
        self.image.setImage(self.current_rgb(), levels=(0, 255), autoLevels=False)
        self._show_detail()
        self._update_title()

    # --- a large image: the sharp region in view --------------------------------------------
    def _clear_detail(self) -> None:
        self._detail_timer.stop()
        self.detail_loader.drop_pending()
        self.detail_shown, self.detail_planes = None, None
        self.detail.setVisible(False)

    def _schedule_detail(self, *args) -> None:
        if self.state.is_multiscale:
            self._detail_timer.start()  # restarts: the read waits until the view stops moving

    def _is_current(self, request: dict) -> bool:
        """Whether ``request`` is for what the view shows now (its slice of its level, not a projection)."""
        state = self.state
        if not state.is_multiscale or state.mip or request["multiscale"] is not state.multiscale:
            return False
        factor = state.multiscale.scale_at(request["level"])[self.axis]
        return state.slice_index(self.axis) // factor == request["slice"]

    def wanted_detail(self) -> Optional[dict]:
        """The region and level the view needs now (the region in view, at the level its zoom asks for), or
        ``None`` when the coarsest level, in memory, is as sharp as the screen shows."""
        state = self.state
        multiscale = state.multiscale
        if multiscale is None or state.volume is None or state.mip:
            return None
        size, shape = state.voxel_size, state.shape
        (x0, x1), (y0, y1) = self.viewbox.viewRange()
        ranges = {}
        for axis, lo, hi in ((self.h_axis, x0, x1), (self.v_axis, y0, y1)):
            first = int(np.clip(math.floor(lo / size[axis]), 0, shape[axis]))
            last = int(np.clip(math.ceil(hi / size[axis]), 0, shape[axis]))
            if last <= first:
                return None
            ranges[axis] = (first, last)
        pixel_w, pixel_h = self.viewbox.viewPixelSize()
        if not (pixel_w > 0 and pixel_h > 0):
            return None
        per_voxel = [math.inf, math.inf, math.inf]
        per_voxel[self.h_axis] = size[self.h_axis] / pixel_w
        per_voxel[self.v_axis] = size[self.v_axis] / pixel_h
        plane_axes = PLANE_AXES[self.axis]
        region0 = tuple(ranges[a] for a in plane_axes)
        level = multiscale.choose_level(self.axis, per_voxel, region0, MAX_DETAIL_READ_BYTES)
        if level >= multiscale.coarsest:
            return None
        factors = multiscale.scale_at(level)
        region = tuple((lo // factors[a], -(-hi // factors[a])) for a, (lo, hi) in zip(plane_axes, region0))
        return {"level": level, "slice": state.slice_index(self.axis) // factors[self.axis], "region": region,
                "multiscale": multiscale}

    @staticmethod
    def _covers(have: Optional[dict], want: dict) -> bool:
        return (have is not None and have["multiscale"] is want["multiscale"] and have["level"] == want["level"]
                and have["slice"] == want["slice"]
                and all(h0 <= w0 and w1 <= h1 for (h0, h1), (w0, w1) in zip(have["region"], want["region"])))

    def request_detail(self) -> None:
        """Ask for the sharp region in view (a worker thread reads it) unless it is shown or being read."""
        want = self.wanted_detail()
        if want is None:  # zoomed out to the coarsest level (as sharp as the screen), or a projection
            self.detail_loader.drop_pending()
            self.detail.setVisible(False)
            return
        if self._covers(self.detail_shown, want):
            self.detail_loader.drop_pending()
            self._show_detail()
            return
        if self._covers(self.detail_loader.current, want):
            self.detail_loader.drop_pending()
            return
        # read a quarter more on each side, so that small pans need no new read
        multiscale = want["multiscale"]
        level_shape = multiscale.shape_at(want["level"])
        padded = []
        for a, (lo, hi) in zip(PLANE_AXES[self.axis], want["region"]):
            margin = (hi - lo) // 4
            padded.append((max(0, lo - margin), min(level_shape[1 + a], hi + margin)))
        want["region"] = tuple(padded)
        axis, index, level, region = self.axis, self.state.slice_index(self.axis), want["level"], want["region"]
        want["read"] = lambda: multiscale.plane(axis, index, level, region)
        self.detail_loader.request(want)

    def _on_detail_loaded(self, request: dict, planes: np.ndarray) -> None:
        if not self._is_current(request):
            return  # the user scrolled on meanwhile: the next request is on its way
        self.detail_shown, self.detail_planes = request, planes
        self._show_detail()

    def _on_detail_failed(self, request: dict, message: str) -> None:
        if request["multiscale"] is self.state.multiscale:  # not a read of an image closed meanwhile
            self.state.message.emit(message)

    def _show_detail(self) -> None:
        """Draw the loaded region (again, with the current channel displays), or hide it when it is stale."""
        request, planes = self.detail_shown, self.detail_planes
        if request is None or planes is None or not self._is_current(request):
            self.detail.setVisible(False)
            return
        state = self.state
        if self.axis == 2:
            planes = planes.transpose(0, 2, 1)  # YZ: rows = y, columns = z
        rgb = self.renderer.render([planes[c] if d.visible else None for c, d in enumerate(state.displays)],
                                   state.displays)
        factors, size = request["multiscale"].scale_at(request["level"]), state.voxel_size
        extent = dict(zip(PLANE_AXES[self.axis], request["region"]))
        (h0, h1), (v0, v1) = extent[self.h_axis], extent[self.v_axis]
        fh, fv = factors[self.h_axis] * size[self.h_axis], factors[self.v_axis] * size[self.v_axis]
        self.detail.setImage(rgb, levels=(0, 255), autoLevels=False)
        self.detail.setRect(QtCore.QRectF(h0 * fh, v0 * fv, (h1 - h0) * fh, (v1 - v0) * fv))
        self.detail.setVisible(True)

    # --- overlay ----------------------------------------------------------------------------

    def _depth_weights(self, depth: np.ndarray) -> np.ndarray:
        """1 on the slice, falling to ``_MIN_SCALE`` at the depth window's edge; NaN outside it."""
        if self.state.mip:
            return np.ones_like(depth)
        window = max(self.state.depth_um, 1e-6)
        weight = 1.0 - (1.0 - _MIN_SCALE) * np.minimum(depth / window, 1.0)
        weight[depth > window + 1e-9] = np.nan
        return weight

    def schedule_overlay(self, *args) -> None:
        """Redraw the markers soon: the edits of one moment (pairs added, their colour mode set, the selection)
        draw once, and the views draw one per pass of the event loop (:class:`RedrawQueue`), so the window
        answers in between. Whatever reads the drawing (:meth:`hit_test`) flushes it first."""
        if not self._overlay_pending:
            self._overlay_pending = True
            self.redraws.add(self)

    def flush_overlay(self) -> None:
        """Draw a scheduled redraw now (nothing if none is pending)."""
        if self._overlay_pending:
            self.refresh_overlay()

    def refresh_overlay(self, *args) -> None:
        self._overlay_pending = False
        state = self.state
        if state.volume is None:
            return
        model = state.model
        pairs = model.pairs
        selected = set(model.selection)
        size = np.asarray(state.voxel_size)
        index = state.slice_index(self.axis)
        segments: dict[tuple, list[np.ndarray]] = {}
        spots_pos, spots_size, spots_brush, spots_pen, spots_symbol, keys = [], [], [], [], [], []

        def add_pairs(nuclei, golgi, colours, ids, selectable):
            if len(nuclei) == 0:
                return
            depth_n = np.abs(nuclei[:, self.axis] - index) * size[self.axis]
            depth_g = np.abs(golgi[:, self.axis] - index) * size[self.axis]
            low = np.minimum(nuclei[:, self.axis], golgi[:, self.axis])
            high = np.maximum(nuclei[:, self.axis], golgi[:, self.axis])
            window = state.depth_um / size[self.axis]
            crosses = state.mip | ((low - window <= index) & (index <= high + window))
            view_n, view_g = self.to_view(nuclei), self.to_view(golgi)
            # Depth weights in eighths: pyqtgraph renders one symbol image per distinct size and colour, so
            # a thousand predicted cells at a thousand depths cost a thousand renderings; eight steps look alike.
            w_n, w_g = (np.maximum(np.round(w * 8) / 8, 1 / 8) for w in (self._depth_weights(depth_n),
                                                                         self._depth_weights(depth_g)))
            for k in np.flatnonzero(crosses):
                is_selected = ids[k] in selected
                colour = SELECTED_COLOUR if is_selected else colours[k]
                width = 2.5 if is_selected else 1.5
                segments.setdefault((colour, width), []).append(np.stack([view_n[k], view_g[k]]))
                for which, view_pt, weight, base in ((NUCLEUS, view_n[k], w_n[k], _NUCLEUS_SIZE),
                                                     (GOLGI, view_g[k], w_g[k], _GOLGI_SIZE)):
                    if np.isnan(weight):
                        continue
                    alpha = int(90 + 165 * weight)
                    spots_pos.append(view_pt)
                    spots_size.append(base * weight * (1.3 if is_selected else 1.0))
                    rgb = tuple(int(c) for c in colour[:3])
                    if which == NUCLEUS:
                        spots_brush.append(_marker_brush(None, 0))
                        spots_pen.append(_marker_pen(rgb, alpha, 2.5 if is_selected else 2))
                        spots_symbol.append("o")
                    else:
                        spots_brush.append(_marker_brush(rgb, alpha))
                        spots_pen.append(_marker_pen((0, 0, 0), alpha, 1))
                        spots_symbol.append("d")
                    keys.append((ids[k], which) if selectable else None)

        shown = np.array([state.shows(p) for p in pairs], dtype=bool)
        if shown.any():
            nuclei = model.positions(NUCLEUS)[shown]
            golgi = model.positions(GOLGI)[shown]
            drawn = [p for p, keep in zip(pairs, shown) if keep]
            add_pairs(nuclei, golgi, [state.pair_colour(p) for p in drawn], [p.id for p in drawn], True)
        if state.colour_mode == "evaluation" and state.reference is not None and len(state.fn_rows):
            ref = state.reference
            rows = state.fn_rows
            add_pairs(ref.nuclei[rows], ref.golgi[rows], [EVALUATION_COLOURS["FN"]] * len(rows),
                      [None] * len(rows), False)

        for key in list(self._line_items):
            if key not in segments:
                self._line_items[key].setData([], [])
        for (colour, width), segs in segments.items():
            item = self._line_items.get((colour, width))
            if item is None:
                item = pg.PlotCurveItem(pen=pg.mkPen(_colour(colour, 220), width=width), connect="pairs")
                item.setZValue(15)
                self.viewbox.addItem(item, ignoreBounds=True)
                self._line_items[(colour, width)] = item
            points = np.concatenate(segs)
            item.setData(points[:, 0], points[:, 1], connect="pairs")

        if spots_pos:
            positions = np.asarray(spots_pos)
            self.markers.setData(pos=positions, size=spots_size, brush=spots_brush, pen=spots_pen,
                                 symbol=spots_symbol)
        else:
            positions = np.zeros((0, 2))
            self.markers.setData([], [])
        selectable = [k is not None for k in keys]
        self._drawn = positions[selectable] if len(positions) else positions
        self._drawn_keys = [k for k in keys if k is not None]

        pending = model.pending_nucleus
        if pending is not None:
            depth = abs(pending[self.axis] - index) * size[self.axis]
            if state.mip or depth <= state.depth_um:
                self.pending_marker.setData(pos=self.to_view(np.asarray(pending)))
            else:
                self.pending_marker.setData([], [])
        else:
            self.pending_marker.setData([], [])
        self._draw_reference()

    def _draw_reference(self) -> None:
        """The statistics' reference point (a star, wherever the slice is: it is a landmark) or axis (an arrow
        from the image centre, its in-view component, a quarter of the image long)."""
        reference = self.state.polarity_reference
        self.reference_marker.setData([], [])
        self.reference_arrow.setData([], [])
        if reference is None:
            return
        kind, (x, y, z) = reference
        if kind == "point":
            self.reference_marker.setData(pos=self.to_view(np.array([z, y, x])))
            return
        size = np.asarray(self.state.voxel_size)
        shape = np.asarray(self.state.shape, dtype=float)
        direction = np.array([z, y, x]) / size  # µm direction -> voxel steps (z, y, x)
        centre = (shape - 1) / 2
        view_dir = self.to_view(centre + direction) - self.to_view(centre)
        norm = float(np.hypot(*view_dir[0]))
        if norm == 0:
            return  # the axis is along this view's depth
        start = self.to_view(centre)[0]
        extent = 0.25 * max(shape[self.h_axis] * size[self.h_axis], shape[self.v_axis] * size[self.v_axis])
        unit = view_dir[0] / norm
        tip = start + unit * extent
        side = np.array([-unit[1], unit[0]]) * extent * 0.08
        back = tip - unit * extent * 0.15
        points = np.array([start, tip, back + side, tip, back - side])
        self.reference_arrow.setData(points[:, 0], points[:, 1])

    # --- hit testing ------------------------------------------------------------------------
    def hit_test(self, view_point: QtCore.QPointF, pixels: float = _HIT_PIXELS) -> Optional[tuple[int, str]]:
        """The drawn marker (pair id, end) within ``pixels`` of ``view_point``, nearest first."""
        self.flush_overlay()
        if not len(self._drawn):
            return None
        width, height = self.viewbox.viewPixelSize()
        delta = (self._drawn - np.array([view_point.x(), view_point.y()])) / np.array([width, height])
        distance = np.hypot(delta[:, 0], delta[:, 1])
        k = int(np.argmin(distance))
        return self._drawn_keys[k] if distance[k] <= pixels else None

    def hit_test_voxel(self, voxel) -> Optional[tuple[int, str]]:
        h, v = self.to_view(np.asarray(voxel))[0]
        return self.hit_test(QtCore.QPointF(h, v))

    # --- mouse ------------------------------------------------------------------------------
    def _on_mouse_moved(self, scene_pos: QtCore.QPointF) -> None:
        if self.state.volume is None:
            return
        point = self.viewbox.mapSceneToView(scene_pos)
        inside = self.image.sceneBoundingRect().contains(scene_pos)
        self.state.set_hover(self.axis, self.to_voxel(point) if inside else None)

    def on_click(self, view_point: QtCore.QPointF, button, modifiers) -> None:
        state = self.state
        if state.volume is None:
            return
        if button == QtCore.Qt.MouseButton.RightButton:
            state.model.cancel_pending()
            return
        if state.pick is not None:  # a panel asked for a point (e.g. the statistics' reference point)
            taker = state.pick
            state.pick_next_click(None)
            taker(self.to_voxel(view_point))
            return
        hit = self.hit_test(view_point)
        shift = bool(modifiers & QtCore.Qt.KeyboardModifier.ShiftModifier)
        if shift:
            if hit is not None:
                state.model.toggle_selection(hit[0])
            return
        voxel = self.to_voxel(view_point)
        if state.place_mode:
            if modifiers & QtCore.Qt.KeyboardModifier.AltModifier:
                snap, state.snap = state.snap, False  # Alt: place exactly where clicked
                try:
                    state.place_at(voxel, self.axis)
                finally:
                    state.snap = snap
            else:
                state.place_at(voxel, self.axis)
            return
        if hit is not None:
            state.model.select([hit[0]])
            state.set_cursor(state.model.get(hit[0]).end(hit[1]))
        else:
            state.model.clear_selection()
            state.set_cursor(voxel)

    def start_drag(self, view_point: QtCore.QPointF) -> bool:
        """Begin dragging the marker under ``view_point``; ``False`` lets the view pan instead."""
        hit = self.hit_test(view_point)
        if hit is None or self.state.model.dragging:
            return False
        self._drag_key = hit
        self.state.model.begin_drag(*hit)
        self.state.model.select([hit[0]])
        return True

    def _drag_position(self, view_point: QtCore.QPointF) -> tuple[float, float, float]:
        pair_id, which = self._drag_key
        depth = self.state.model.get(pair_id).end(which)[self.axis]
        return self.to_voxel(view_point, depth=depth)

    def drag(self, view_point: QtCore.QPointF) -> None:
        if self._drag_key is not None:
            self.state.model.drag_to(self._drag_position(view_point))

    def finish_drag(self, view_point: QtCore.QPointF, modifiers=QtCore.Qt.KeyboardModifier.NoModifier) -> None:
        if self._drag_key is None:
            return
        position = self._drag_position(view_point)
        which = self._drag_key[1]
        self._drag_key = None
        state = self.state
        if state.snap and not (modifiers & QtCore.Qt.KeyboardModifier.AltModifier):
            saved_mip, state.mip = state.mip, False  # a drag keeps its depth even on a projection
            try:
                position = state.snapped(position, which, self.axis)
            finally:
                state.mip = saved_mip
        state.model.end_drag(position)
        state.set_cursor(position)


class OrthoViews(QtWidgets.QWidget):
    """XY (top left), YZ (top right, z horizontal), XZ (bottom left) and a free slot for the 3D view."""

    def __init__(self, state: ViewerState, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.redraws = RedrawQueue(self)  # the three views redraw their markers one per pass of the event loop
        self.xy = SliceView(state, 0, redraws=self.redraws)
        self.xz = SliceView(state, 1, redraws=self.redraws)
        self.yz = SliceView(state, 2, redraws=self.redraws)
        self.views = (self.xy, self.xz, self.yz)
        self.top = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.bottom = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.top.addWidget(self.xy)
        self.top.addWidget(self.yz)
        self.bottom.addWidget(self.xz)
        self.corner = QtWidgets.QWidget()
        self.corner_layout = QtWidgets.QVBoxLayout(self.corner)
        self.corner_layout.setContentsMargins(0, 0, 0, 0)
        self.bottom.addWidget(self.corner)
        self.rows = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        self.rows.addWidget(self.top)
        self.rows.addWidget(self.bottom)
        # The two rows keep their columns aligned, as in Fiji's orthogonal views.
        self.top.splitterMoved.connect(lambda *_: self.bottom.setSizes(self.top.sizes()))
        self.bottom.splitterMoved.connect(lambda *_: self.top.setSizes(self.bottom.sizes()))
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.rows)
        state.volume_changed.connect(self._on_volume)

    def set_corner(self, widget: QtWidgets.QWidget) -> None:
        self.corner_layout.addWidget(widget)

    def view(self, axis: int) -> SliceView:
        return self.views[axis]

    def _on_volume(self) -> None:
        state = self.state
        z, y, x = state.volume.extent_um
        two_d = state.volume.is_2d
        self.xz.setVisible(not two_d)
        self.yz.setVisible(not two_d)
        # Split space in proportion to the physical extents (z is usually much thinner).
        z_share = max(0.25, min(0.45, z / max(x, 1e-9))) if not two_d else 0.0
        total = 1000
        self.top.setSizes([int(total * (1 - z_share)), int(total * z_share)])
        self.bottom.setSizes([int(total * (1 - z_share)), int(total * z_share)])
        self.rows.setSizes([int(total * (1 - z_share)), int(total * z_share)])

    def reset_zoom(self) -> None:
        for view in self.views:
            view.reset_zoom()
