"""The 3D view (VTK): channels volume-rendered, vectors as arrows, centroids as spheres, slice planes.

- Both (all) channels go into one multi-component ``vtkImageData`` with independent components, so the
  GPU ray caster blends them correctly (two overlapping ``vtkVolume`` objects would not). Composite or
  maximum-intensity projection; per-channel colour, contrast, gamma and visibility as in the slice views.
- Large stacks are shown at reduced resolution (block maximum, so small bright Golgi survive): the
  3D view is an overview, the slice views show every voxel. ``max_voxels`` sets the budget.
- World coordinates are µm with voxel ``i`` centred at ``(i + 0.5) × voxel size``, as in the slice views.
- Headless: with Qt's ``offscreen`` platform the widget gets an offscreen render window (platform notes
  §2: the stock widget hands EGL a fake window id and renders black). :meth:`Viewer3D.release` frees
  the render window; call it before the widget goes away or Xlib aborts the process at exit (§3).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

import vtkmodules.qt

vtkmodules.qt.PyQtImpl = "PySide6"

import vtkmodules.vtkInteractionStyle  # noqa: E402,F401  (object factory overrides)
import vtkmodules.vtkRenderingOpenGL2  # noqa: E402,F401
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: E402,F401
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor  # noqa: E402
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy  # noqa: E402
from vtkmodules.vtkCommonCore import vtkPoints  # noqa: E402
from vtkmodules.vtkCommonDataModel import (  # noqa: E402
    vtkCellArray,
    vtkImageData,
    vtkPiecewiseFunction,
    vtkPlane,
    vtkPlaneCollection,
    vtkPolyData,
)
from vtkmodules.vtkFiltersCore import vtkGlyph3D  # noqa: E402
from vtkmodules.vtkFiltersSources import vtkArrowSource, vtkOutlineSource, vtkSphereSource  # noqa: E402
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleTrackballCamera  # noqa: E402
from vtkmodules.vtkRenderingCore import (  # noqa: E402
    vtkActor,
    vtkCellPicker,
    vtkColorTransferFunction,
    vtkImageActor,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkRenderWindow,
    vtkVolume,
    vtkVolumeProperty,
    vtkWindowToImageFilter,
)
from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkSmartVolumeMapper  # noqa: E402

from app.core.annotation import GOLGI, NUCLEUS  # noqa: E402
from app.ui.display import (  # noqa: E402
    EVALUATION_COLOURS,
    SELECTED_COLOUR,
    ChannelDisplay,
    CompositeRenderer,
)
from app.ui.state import ViewerState  # noqa: E402

BACKGROUND = (0.08, 0.08, 0.10)
#: Voxels per channel sent to the GPU at most (64×256×256 ≈ 4 M; a 1024² stack is shown at 1/4 in x/y).
DEFAULT_MAX_VOXELS = 4_500_000
_NUCLEUS_RADIUS_UM = 1.0
_GOLGI_RADIUS_UM = 0.7


def headless_platform() -> bool:
    return QtGui.QGuiApplication.platformName() in ("offscreen", "minimal")


def make_vtk_widget_headless(widget: QVTKRenderWindowInteractor) -> None:
    """Give the widget an offscreen render window that never saw Qt's fake window id (platform notes §2)."""
    old = widget._RenderWindow
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*old.GetSize())
    widget._RenderWindow = window
    widget._Iren.SetRenderWindow(window)
    window.AddObserver("CursorChangedEvent", widget.CursorChangedEvent)


class _FinalizedRenderWindow:
    """Stands in for a released render window so a later ``closeEvent`` finds a no-op ``Finalize``."""

    def Finalize(self) -> None:
        pass

    def SetSize(self, *args) -> None:
        pass

    def SetDPI(self, *args) -> None:
        pass


def release_vtk_widget(widget: QVTKRenderWindowInteractor) -> None:
    """Finalize and drop the widget's render window (it holds its own X connection)."""
    if isinstance(widget._RenderWindow, _FinalizedRenderWindow):
        return
    widget._RenderWindow.Finalize()
    widget._Iren.SetRenderWindow(None)
    widget._RenderWindow = _FinalizedRenderWindow()


class _VTKWidget(QVTKRenderWindowInteractor):
    """The stock widget, safe to resize or paint after :func:`release_vtk_widget`."""

    def paintEvent(self, ev) -> None:
        if not isinstance(self._RenderWindow, _FinalizedRenderWindow):
            super().paintEvent(ev)

    def resizeEvent(self, ev) -> None:
        if not isinstance(self._RenderWindow, _FinalizedRenderWindow):
            super().resizeEvent(ev)


def block_max(data: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Downsample ``(C, Z, Y, X)`` by integer ``factors`` (z, y, x) taking block maxima (edges trimmed).

    Element-wise maxima of strided views: a 64×1024×1024×2 stack takes ~0.2 s, against >1 s for a
    reshape-and-reduce (numpy reduces small inner axes slowly and copies a transposed input first).
    """
    fz, fy, fx = (int(f) for f in factors)
    if (fz, fy, fx) == (1, 1, 1):
        return data
    c, z, y, x = data.shape
    fz, fy, fx = min(fz, z), min(fy, y), min(fx, x)
    z2, y2, x2 = z // fz, y // fy, x // fx
    out = np.empty((c, z2, y2, x2), dtype=data.dtype)
    for channel in range(c):
        source = data[channel, : z2 * fz, : y2 * fy, : x2 * fx]
        columns = source[:, :, 0::fx].copy()
        for i in range(1, fx):
            np.maximum(columns, source[:, :, i::fx], out=columns)
        rows = columns[:, 0::fy].copy()
        for j in range(1, fy):
            np.maximum(rows, columns[:, j::fy], out=rows)
        out[channel] = rows[0::fz]
        for k in range(1, fz):
            np.maximum(out[channel], rows[k::fz], out=out[channel])
    return out


def preview_factors(shape_zyx: Sequence[int], voxel_size: Sequence[float], max_voxels: int) -> tuple[int, int, int]:
    """Integer reduction per axis keeping ``Z·Y·X / (fz·fy·fx) ≤ max_voxels``, in-plane first (z is
    usually the short, coarse axis already)."""
    z, y, x = (int(s) for s in shape_zyx)
    fz = fy = fx = 1
    while (z // fz) * (y // fy) * (x // fx) > max_voxels:
        # Reduce the axis with the finest physical sampling.
        steps = [voxel_size[0] * fz if z // fz > 1 else np.inf,
                 voxel_size[1] * fy if y // fy > 1 else np.inf,
                 voxel_size[2] * fx if x // fx > 1 else np.inf]
        axis = int(np.argmin(steps))
        if not np.isfinite(steps[axis]):
            break
        if axis == 0:
            fz += 1
        elif axis == 1:
            fy += 1
        else:
            fx += 1
    return fz, fy, fx


class Viewer3D(QtWidgets.QWidget):
    """Volume rendering with glyphs for the pairs, following a :class:`ViewerState`."""

    picked = QtCore.Signal(int, str)  # pair id, end

    def __init__(self, state: ViewerState, parent: Optional[QtWidgets.QWidget] = None,
                 max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
        super().__init__(parent)
        self.setObjectName("cellpol.view3d")  # its stable id (app.ui.actions.PANELS)
        self.state = state
        self.max_voxels = int(max_voxels)
        self.blend_mode = "composite"
        self.show_planes = False
        self.clip_slab = False
        self.slab_um = 6.0
        self.slab_axis = 0  # the slab is across z (0), y (1) or x (2), centred on the crosshair
        self.factors = (1, 1, 1)
        self._arrays: list[np.ndarray] = []   # numpy buffers VTK points to (kept alive)
        self._plane_buffers: list[np.ndarray] = []
        self._plane_renderer = CompositeRenderer()
        self._n_model_pairs = 0
        self._world_nuclei = self._world_golgi = np.zeros((0, 3))
        self._released = False

        self.vtk_widget = _VTKWidget(self)
        if headless_platform():
            make_vtk_widget_headless(self.vtk_widget)
        self.render_window = self.vtk_widget.GetRenderWindow()
        # Multisampling multiplies the ray caster's cost (4× on Mesa's llvmpipe); FXAA smooths the glyph
        # edges for a fraction of that.
        self.render_window.SetMultiSamples(0)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(*BACKGROUND)
        self.renderer.UseFXAAOn()
        self.render_window.AddRenderer(self.renderer)
        self.interactor = self.vtk_widget._Iren
        self.style = vtkInteractorStyleTrackballCamera()
        self.interactor.SetInteractorStyle(self.style)

        self.info = QtWidgets.QLabel("3D")
        self.info.setStyleSheet("color: #ddd; background: #222; padding: 1px 4px;")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.info)
        layout.addWidget(self.vtk_widget, 1)

        self._build_pipeline()
        # Renders are debounced: a burst of changes (scrolling slices, dragging a slider) renders once
        # when it pauses. The pause grows with the render time, so a slow software renderer (llvmpipe,
        # about a second per frame) never makes the slice views wait.
        self._render_timer = QtCore.QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(15)
        self._render_timer.timeout.connect(self.render)
        self.last_render_seconds = 0.0

        # Observers on the style replace its handlers (the VTK way to extend a style from Python); the
        # style grabs the interactor's focus while rotating, so interactor observers miss the release.
        self._press: Optional[tuple[int, int]] = None
        self._drag_plane: Optional[tuple[np.ndarray, np.ndarray]] = None  # (origin, normal) in world µm
        self.style.AddObserver("LeftButtonPressEvent", self._on_press)
        self.style.AddObserver("LeftButtonReleaseEvent", self._on_release)
        self.style.AddObserver("MouseMoveEvent", self._on_move)

        state.volume_changed.connect(self._on_volume)
        state.display_changed.connect(self._update_transfer_functions)
        state.cursor_changed.connect(self._on_cursor)
        state.mip_changed.connect(lambda _on: self._update_planes())
        for sig in (state.pairs_changed, state.selection_changed, state.overlay_changed):
            sig.connect(self._update_glyphs)

    # --- pipeline ---------------------------------------------------------------------------
    def _build_pipeline(self) -> None:
        self.image = vtkImageData()
        self.mapper = vtkSmartVolumeMapper()
        self.mapper.SetInputData(self.image)
        self.volume_property = vtkVolumeProperty()
        self.volume_property.SetInterpolationTypeToLinear()
        self.volume_property.ShadeOff()
        self.volume_actor = vtkVolume()
        self.volume_actor.SetMapper(self.mapper)
        self.volume_actor.SetProperty(self.volume_property)
        self.volume_actor.VisibilityOff()
        self.renderer.AddVolume(self.volume_actor)

        self.outline = vtkOutlineSource()
        outline_mapper = vtkPolyDataMapper()
        outline_mapper.SetInputConnection(self.outline.GetOutputPort())
        self.outline_actor = vtkActor()
        self.outline_actor.SetMapper(outline_mapper)
        self.outline_actor.GetProperty().SetColor(0.6, 0.6, 0.6)
        self.outline_actor.VisibilityOff()
        self.renderer.AddActor(self.outline_actor)

        self.clip_planes = vtkPlaneCollection()

        arrow = vtkArrowSource()
        arrow.SetTipLength(0.3)
        arrow.SetTipRadius(0.12)
        arrow.SetShaftRadius(0.045)
        arrow.SetTipResolution(12)
        arrow.SetShaftResolution(8)
        self.arrow_points = vtkPolyData()
        self.arrow_actor = self._glyph_actor(self.arrow_points, arrow, scale_by_vector=True)
        self.sphere_actors = {}
        self.sphere_points = {}
        for which, radius in ((NUCLEUS, _NUCLEUS_RADIUS_UM), (GOLGI, _GOLGI_RADIUS_UM)):
            sphere = vtkSphereSource()
            sphere.SetRadius(radius)
            sphere.SetThetaResolution(14)
            sphere.SetPhiResolution(10)
            points = vtkPolyData()
            self.sphere_points[which] = points
            self.sphere_actors[which] = self._glyph_actor(points, sphere, scale_by_vector=False)

        self.plane_actors = [vtkImageActor() for _ in range(3)]
        for actor in self.plane_actors:
            actor.VisibilityOff()
            actor.GetProperty().SetOpacity(0.9)
            self.renderer.AddActor(actor)
        self._plane_images = [vtkImageData() for _ in range(3)]

        self.cursor_source = vtkPolyData()
        cursor_mapper = vtkPolyDataMapper()
        cursor_mapper.SetInputData(self.cursor_source)
        self.cursor_actor = vtkActor()
        self.cursor_actor.SetMapper(cursor_mapper)
        self.cursor_actor.GetProperty().SetColor(1.0, 1.0, 0.0)
        self.cursor_actor.GetProperty().SetOpacity(0.6)
        self.cursor_actor.VisibilityOff()
        self.renderer.AddActor(self.cursor_actor)

        self.picker = vtkCellPicker()
        self.picker.SetTolerance(0.005)
        self.picker.PickFromListOn()
        for actor in self.sphere_actors.values():
            self.picker.AddPickList(actor)

    def _glyph_actor(self, points: vtkPolyData, source, scale_by_vector: bool) -> vtkActor:
        glyph = vtkGlyph3D()
        glyph.SetInputData(points)
        glyph.SetSourceConnection(source.GetOutputPort())
        glyph.OrientOn()
        glyph.SetVectorModeToUseVector()
        if scale_by_vector:
            glyph.SetScaleModeToScaleByVector()
        else:
            glyph.SetScaleModeToDataScalingOff()
        glyph.SetColorModeToColorByScalar()
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(glyph.GetOutputPort())
        mapper.SetColorModeToDirectScalars()
        mapper.ScalarVisibilityOn()
        mapper.SetClippingPlanes(self.clip_planes)
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetSpecular(0.3)
        self.renderer.AddActor(actor)
        return actor

    # --- volume -----------------------------------------------------------------------------
    def _on_volume(self) -> None:
        volume = self.state.volume
        if volume is None:
            return
        if self.state.is_multiscale:
            # a large image: its coarsest level (in memory), reduced further if it is still above max_voxels
            source, base = self.state.preview(), self.state.preview_factors()
            extra = preview_factors(source.shape[1:], [v * f for v, f in zip(volume.voxel_size, base)],
                                    self.max_voxels)
            self.factors = tuple(a * b for a, b in zip(base, extra))
            data = block_max(source[:4], extra)
        else:
            self.factors = preview_factors(volume.spatial_shape, volume.voxel_size, self.max_voxels)
            # The GPU ray caster blends at most 4 independent components.
            data = block_max(volume.data[:4], self.factors)
        interleaved = np.ascontiguousarray(np.moveaxis(data, 0, -1))  # (Z, Y, X, C): x fastest in VTK
        if interleaved.dtype not in (np.uint8, np.uint16, np.float32):
            interleaved = interleaved.astype(np.float32)
        self._arrays = [interleaved]
        z, y, x = interleaved.shape[:3]
        voxel, factors = np.asarray(volume.voxel_size), np.asarray(self.factors)
        size = voxel * factors
        origin = ((factors - 1) / 2.0 + 0.5) * voxel  # block centres, with voxel i centred at (i + 0.5)·size
        image = vtkImageData()
        image.SetDimensions(x, y, z)
        image.SetSpacing(size[2], size[1], size[0])
        image.SetOrigin(origin[2], origin[1], origin[0])
        scalars = numpy_to_vtk(interleaved.reshape(-1, interleaved.shape[-1]), deep=False)
        scalars.SetName("intensity")
        image.GetPointData().SetScalars(scalars)
        self.image = image
        self.mapper.SetInputData(image)
        self.volume_property.SetIndependentComponents(True)
        self._update_transfer_functions(render=False)
        self.volume_actor.VisibilityOn()
        ez, ey, ex = volume.extent_um
        self.outline.SetBounds(0, ex, 0, ey, 0, ez)
        self.outline_actor.VisibilityOn()
        reduced = "" if self.factors == (1, 1, 1) else \
            f"  (shown at 1/{self.factors[2]}×1/{self.factors[1]}×1/{self.factors[0]} x·y·z)"
        self.info.setText(f"3D  {self.blend_mode}{reduced}")
        self._update_glyphs(render=False)
        self._update_planes(render=False)
        self._update_clipping()
        self.reset_camera()
        # Let the slice views paint first: the first frame of a large volume can take a second on a
        # software renderer.
        self._render_timer.start(max(self._render_timer.interval(), 150))

    def reset_camera(self) -> None:
        """Look down the z axis (x to the right, y down, as the XY view), tilted for depth."""
        volume = self.state.volume
        if volume is None:
            return
        ez, ey, ex = volume.extent_um
        camera = self.renderer.GetActiveCamera()
        centre = (ex / 2, ey / 2, ez / 2)
        camera.SetFocalPoint(*centre)
        camera.SetPosition(centre[0], centre[1], centre[2] - 2.5 * max(ex, ey))
        camera.SetViewUp(0, -1, 0)
        camera.Elevation(-30)
        camera.Azimuth(-20)
        camera.OrthogonalizeViewUp()
        self.renderer.ResetCamera()
        camera.Zoom(1.25)
        self.request_render()

    def set_blend_mode(self, mode: str) -> None:
        if mode not in ("composite", "mip"):
            raise ValueError(mode)
        self.blend_mode = mode
        self._update_transfer_functions()
        text = self.info.text().split("  ", 2)
        self.info.setText("  ".join(["3D", mode] + text[2:]))

    def _update_transfer_functions(self, render: bool = True) -> None:
        state = self.state
        if state.volume is None:
            return
        mip = self.blend_mode == "mip"
        if mip:
            self.mapper.SetBlendModeToMaximumIntensity()
        else:
            self.mapper.SetBlendModeToComposite()
        for index, display in enumerate(state.displays[:4]):
            colour, opacity = self._transfer_functions(display, mip)
            self.volume_property.SetColor(index, colour)
            self.volume_property.SetScalarOpacity(index, opacity)
            self.volume_property.SetComponentWeight(index, 1.0 if display.visible else 0.0)
        if render:
            self.request_render()

    @staticmethod
    def _transfer_functions(display: ChannelDisplay, mip: bool):
        colour = vtkColorTransferFunction()
        opacity = vtkPiecewiseFunction()
        low, high = float(display.low), float(max(display.high, display.low + 1e-6))
        rgb = np.asarray(display.colour, dtype=np.float64) / 255.0
        top_opacity = 1.0 if mip else 0.25
        for t in np.linspace(0.0, 1.0, 6):
            value = low + t * (high - low)
            shaped = t ** display.gamma if display.gamma > 0 else t
            colour.AddRGBPoint(value, *(rgb * shaped))
            opacity.AddPoint(value, (top_opacity * shaped) if display.visible else 0.0)
        # Beyond the first and last points both functions hold their end values.
        return colour, opacity

    # --- glyphs -----------------------------------------------------------------------------
    def _pair_colours(self, pairs) -> np.ndarray:
        state = self.state
        selected = set(state.model.selection)
        colours = []
        for pair in pairs:
            if pair.id in selected:
                rgb = SELECTED_COLOUR
            else:
                rgb = state.pair_colour(pair)
            colours.append(rgb)
        return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)

    def world(self, voxels: np.ndarray) -> np.ndarray:
        """Voxel ``(N, 3)`` (z, y, x) → world µm ``(N, 3)`` (x, y, z)."""
        voxels = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
        um = (voxels + 0.5) * np.asarray(self.state.voxel_size)
        return np.ascontiguousarray(um[:, ::-1])

    def _set_points(self, target: vtkPolyData, positions: np.ndarray, colours: np.ndarray,
                    vectors: Optional[np.ndarray] = None) -> None:
        points = vtkPoints()
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        points.SetData(numpy_to_vtk(positions, deep=True))
        poly = vtkPolyData()
        poly.SetPoints(points)
        colour_array = numpy_to_vtk(np.ascontiguousarray(colours, dtype=np.uint8), deep=True)
        colour_array.SetName("colours")
        poly.GetPointData().SetScalars(colour_array)
        if vectors is not None:
            vector_array = numpy_to_vtk(np.ascontiguousarray(vectors, dtype=np.float64), deep=True)
            vector_array.SetName("vectors")
            poly.GetPointData().SetVectors(vector_array)
        target.ShallowCopy(poly)
        target.Modified()

    def _update_glyphs(self, *args, render: bool = True) -> None:
        state = self.state
        if state.volume is None:
            return
        shown = np.array([state.shows(p) for p in state.model.pairs], dtype=bool).reshape(-1)
        pairs = [p for p, keep in zip(state.model.pairs, shown) if keep]
        nuclei = self.world(state.model.positions(NUCLEUS)[shown])
        golgi = self.world(state.model.positions(GOLGI)[shown])
        colours = self._pair_colours(pairs)
        if state.colour_mode == "evaluation" and state.reference is not None and len(state.fn_rows):
            rows = state.fn_rows
            nuclei = np.concatenate([nuclei, self.world(state.reference.nuclei[rows])])
            golgi = np.concatenate([golgi, self.world(state.reference.golgi[rows])])
            fn = np.tile(np.asarray(EVALUATION_COLOURS["FN"], np.uint8), (len(rows), 1))
            colours = np.concatenate([colours, fn])
        self._n_model_pairs = len(pairs)
        self._set_points(self.arrow_points, nuclei, colours, golgi - nuclei)
        self._set_points(self.sphere_points[NUCLEUS], nuclei, colours)
        self._set_points(self.sphere_points[GOLGI], golgi, colours)
        self._world_nuclei, self._world_golgi = nuclei, golgi
        if render:
            self.request_render()

    # --- cursor, planes, clipping -----------------------------------------------------------
    def _on_cursor(self, cursor) -> None:
        self._update_cursor()
        self._update_planes(render=False)
        self._update_clipping()
        self.request_render()

    def _update_cursor(self) -> None:
        state = self.state
        if state.volume is None:
            return
        x, y, z = self.world(np.asarray(state.cursor))[0]
        ez, ey, ex = state.volume.extent_um
        points = vtkPoints()
        for p in ((0, y, z), (ex, y, z), (x, 0, z), (x, ey, z), (x, y, 0), (x, y, ez)):
            points.InsertNextPoint(*p)
        lines = vtkCellArray()
        for k in range(3):
            lines.InsertNextCell(2)
            lines.InsertCellPoint(2 * k)
            lines.InsertCellPoint(2 * k + 1)
        self.cursor_source.SetPoints(points)
        self.cursor_source.SetLines(lines)
        self.cursor_source.Modified()
        self.cursor_actor.VisibilityOn()

    def set_show_planes(self, on: bool) -> None:
        self.show_planes = bool(on)
        self._update_planes()

    def set_slab(self, on: bool, thickness_um: Optional[float] = None, axis: Optional[int] = None) -> None:
        """Clip the volume and glyphs to a slab ``thickness_um`` thick across ``axis`` (0 = z, 1 = y, 2 = x)
        through the crosshair."""
        self.clip_slab = bool(on)
        if thickness_um is not None:
            self.slab_um = float(thickness_um)
        if axis is not None:
            if axis not in (0, 1, 2):
                raise ValueError(axis)
            self.slab_axis = int(axis)
        self._update_clipping()
        self.request_render()

    def _update_planes(self, render: bool = True, planes: Optional[Sequence[np.ndarray]] = None) -> None:
        """Show the three slices (as the slice views composite them) at the crosshair."""
        state = self.state
        for actor in self.plane_actors:
            actor.SetVisibility(bool(self.show_planes and state.volume is not None and not state.mip))
        if not self.show_planes or state.volume is None or state.mip:
            if render:
                self.request_render()
            return
        renderer = self._plane_renderer
        # a large image's planes are its coarsest level's: voxels of preview_factors level-0 voxels
        factors = np.asarray(state.preview_factors())
        size = np.asarray(state.voxel_size) * factors
        shape = state.preview().shape[1:] if state.is_multiscale else state.shape
        self._plane_buffers = []
        for axis in range(3):
            rgb = renderer.render([state.plane(c, axis) if d.visible else None for c, d in enumerate(state.displays)],
                                  state.displays)
            if axis == 2:
                rgb = np.transpose(rgb, (1, 0, 2))  # back to (z, y) rows/cols
            index = state.slice_index(axis)
            image = self._plane_images[axis]
            # VTK image (x fastest): the plane spans the two in-plane axes, one voxel thick across.
            dims = [shape[2], shape[1], shape[0]]
            dims[2 - axis] = 1
            buffer = np.ascontiguousarray(rgb)  # rows × columns = (y, x), (z, x) or (z, y)
            self._plane_buffers.append(buffer)
            image.SetDimensions(*dims)
            image.SetSpacing(size[2], size[1], size[0])
            origin = [0.5 * size[2], 0.5 * size[1], 0.5 * size[0]]
            origin[2 - axis] = (index + 0.5) * state.voxel_size[axis]  # at the slice (inside its block)
            image.SetOrigin(*origin)
            array = numpy_to_vtk(buffer.reshape(-1, 3), deep=False)
            image.GetPointData().SetScalars(array)
            image.Modified()
            actor = self.plane_actors[axis]
            actor.GetMapper().SetInputData(image)
            actor.SetDisplayExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
        if render:
            self.request_render()

    def _update_clipping(self) -> None:
        self.mapper.RemoveAllClippingPlanes()
        self.clip_planes.RemoveAllItems()
        state = self.state
        if not self.clip_slab or state.volume is None:
            return
        axis = self.slab_axis
        centre_um = (state.cursor[axis] + 0.5) * state.voxel_size[axis]
        half = self.slab_um / 2.0
        world_axis = 2 - axis  # world coordinates are (x, y, z)
        for offset, sign in ((-half, 1.0), (half, -1.0)):
            origin, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
            origin[world_axis] = centre_um + offset
            normal[world_axis] = sign
            plane = vtkPlane()
            plane.SetOrigin(*origin)
            plane.SetNormal(*normal)
            self.mapper.AddClippingPlane(plane)
            self.clip_planes.AddItem(plane)

    # --- picking and dragging -------------------------------------------------------------------
    def _on_press(self, obj, event) -> None:
        self._press = self.interactor.GetEventPosition()
        if self._start_drag(*self._press):
            return  # pressing on a selected centroid moves it instead of rotating the view
        self.style.OnLeftButtonDown()  # rotate as usual

    def _on_move(self, obj, event) -> None:
        if self._drag_plane is not None:
            position = self._drag_position(*self.interactor.GetEventPosition())
            if position is not None:
                self.state.model.drag_to(position)
            return
        self.style.OnMouseMove()

    def _on_release(self, obj, event) -> None:
        if self._drag_plane is not None:
            position = self._drag_position(*self.interactor.GetEventPosition())
            self._drag_plane = None
            self.state.model.end_drag(position)  # one undoable move, autosaved
            self._press = None
            return
        self.style.OnLeftButtonUp()
        if self._press is None:
            return
        x, y = self.interactor.GetEventPosition()
        moved = abs(x - self._press[0]) + abs(y - self._press[1])
        self._press = None
        if moved <= 3:  # a click, not a rotation
            self.pick(x, y)

    def hit(self, x: int, y: int) -> Optional[tuple[int, str]]:
        """The pair id and end of the centroid sphere at display pixel ``(x, y)`` (VTK convention: origin
        bottom left), or ``None``."""
        if self.state.volume is None or not self.picker.Pick(x, y, 0, self.renderer):
            return None
        position = np.asarray(self.picker.GetPickPosition())
        n = self._n_model_pairs
        if n == 0:
            return None
        best = None
        for which, world in ((NUCLEUS, self._world_nuclei[:n]), (GOLGI, self._world_golgi[:n])):
            distance = np.linalg.norm(world - position, axis=1)
            k = int(np.argmin(distance))
            if best is None or distance[k] < best[2]:
                best = (k, which, float(distance[k]))
        return self.state.model.pairs[best[0]].id, best[1]

    def pick(self, x: int, y: int) -> Optional[tuple[int, str]]:
        """Select the pair whose centroid is at display pixel ``(x, y)``; the crosshair goes to it."""
        found = self.hit(x, y)
        if found is None:
            return None
        pair_id, which = found
        self.state.model.select([pair_id])
        self.state.set_cursor(self.state.model.get(pair_id).end(which))
        self.picked.emit(pair_id, which)
        return found

    def _start_drag(self, x: int, y: int) -> bool:
        """Begin moving a centroid of a selected pair, in the plane through it parallel to the screen."""
        model = self.state.model
        found = self.hit(x, y) if model.selection else None
        if found is None or found[0] not in model.selection:
            return False
        pair_id, which = found
        model.begin_drag(pair_id, which)
        origin = self.world(np.asarray(model.get(pair_id).end(which)))[0]
        normal = np.asarray(self.renderer.GetActiveCamera().GetDirectionOfProjection(), dtype=np.float64)
        self._drag_plane = (origin, normal)
        return True

    def _drag_position(self, x: int, y: int) -> Optional[tuple[float, float, float]]:
        """Voxel position where the ray through display pixel ``(x, y)`` meets the drag plane."""
        if self._drag_plane is None:
            return None
        origin, normal = self._drag_plane
        ends = []
        for depth in (0.0, 1.0):
            self.renderer.SetDisplayPoint(float(x), float(y), depth)
            self.renderer.DisplayToWorld()
            point = np.asarray(self.renderer.GetWorldPoint(), dtype=np.float64)
            ends.append(point[:3] / point[3])
        direction = ends[1] - ends[0]
        denominator = float(np.dot(direction, normal))
        if abs(denominator) < 1e-12:
            return None
        world = ends[0] + direction * float(np.dot(origin - ends[0], normal)) / denominator
        voxel = world[::-1] / np.asarray(self.state.voxel_size) - 0.5
        return self.state.clamp(voxel)

    def display_position(self, voxel) -> tuple[float, float]:
        """Display pixel (VTK convention) of a voxel position."""
        x, y, z = self.world(np.asarray(voxel))[0]
        self.renderer.SetWorldPoint(x, y, z, 1.0)
        self.renderer.WorldToDisplay()
        px, py, _ = self.renderer.GetDisplayPoint()
        return px, py

    # --- rendering and capture --------------------------------------------------------------
    def request_render(self) -> None:
        if not self._released:
            self._render_timer.start()

    def render(self) -> None:
        if not self._released and self.isVisible():
            start = time.perf_counter()
            self.render_window.Render()
            self.last_render_seconds = time.perf_counter() - start
            self._render_timer.setInterval(int(min(800, max(15, 2000 * self.last_render_seconds))))

    def grab_image(self) -> np.ndarray:
        """The rendered view as RGB uint8 ``(H, W, 3)`` (top row first), from ``vtkWindowToImageFilter``."""
        self._render_timer.stop()
        self.render_window.Render()
        capture = vtkWindowToImageFilter()
        capture.SetInput(self.render_window)
        capture.SetInputBufferTypeToRGB()
        capture.ReadFrontBufferOff()
        capture.ShouldRerenderOff()  # just rendered
        capture.Update()
        output = capture.GetOutput()
        width, height, _ = output.GetDimensions()
        pixels = vtk_to_numpy(output.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])

    def release(self) -> None:
        """Free the render window (call before the widget is destroyed; safe to call twice)."""
        if self._released:
            return
        self._released = True
        self._render_timer.stop()
        release_vtk_widget(self.vtk_widget)
