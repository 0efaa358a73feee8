"""The scene the simulator renders, and how it is drawn: cells, Golgi, vessels, specks and fragments.

Everything here is in µm and independent of the voxel size (voxel ``i`` is centred at ``(i + ½)·size``),
so the same seed gives physically the same scene at any voxel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from app.core.simulate._config import MAX_PAIR_LENGTH_UM, SimConfig
from app.core.simulate._shapes import (
    GOLGI_SHAPES_FILE,
    NUCLEUS_SHAPES_FILE,
    _load_shapes,
    _mask_ellipse,
    _transform_shape,
)


# ----------------------------------------------------------------------------------------------
# Scene description (all in µm; independent of the voxel size)
# ----------------------------------------------------------------------------------------------
@dataclass
class _Nucleus:
    centre: np.ndarray  # (z, y, x) µm
    semi_axes: tuple[float, float, float]  # (major, minor, half-thickness) µm; thickness inf in 2D
    angle: float  # in-plane angle of the major axis (radians, from +x towards +y)
    rotation: np.ndarray  # 3×3, rows = local axes (major, minor, thickness) in world (z, y, x)
    brightness: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows: smooth outline perturbation
    spots: np.ndarray  # (K, 4): chromocentre centres (z, y, x) µm and radii
    spot_gain: np.ndarray
    nucleoli: np.ndarray  # (K, 4)
    shape_mask: Optional[np.ndarray] = None  # real shape (z, y, x) at the shapes' voxel size, float


@dataclass
class _Golgi:
    centre: np.ndarray  # sampled reference point, µm
    spheres: np.ndarray  # (K, 4): centres µm and radii (empty for a real shape)
    weights: np.ndarray  # (K,)
    flat: float  # z radius / xy radius of the blobs
    brightness: float
    shape_mask: Optional[np.ndarray] = None


@dataclass
class _Scene:
    nuclei: list[_Nucleus]
    golgi: list[Optional[_Golgi]]  # one per nucleus, None when no place was found
    vessels: list[tuple[np.ndarray, float, float]]  # (points (P,3) µm, radius, brightness)
    dirt: np.ndarray  # (K, 5): centre, radius, brightness
    fragments: list[tuple[np.ndarray, float]]  # (spheres (K,4), brightness)
    illumination: "_SmoothField"
    background: "_SmoothField"
    layer_mid_um: float
    n_requested: int


class _SmoothField:
    """A smooth random 2D field in [0, 1] made of a few long-wavelength plane waves (µm coordinates)."""

    def __init__(self, rng: np.random.Generator, wavelength_um: tuple[float, float], n_waves: int = 3) -> None:
        angles = rng.uniform(0.0, 2.0 * np.pi, n_waves)
        wavelengths = rng.uniform(*wavelength_um, n_waves)
        self.k_y = 2.0 * np.pi * np.sin(angles) / wavelengths
        self.k_x = 2.0 * np.pi * np.cos(angles) / wavelengths
        self.phase = rng.uniform(0.0, 2.0 * np.pi, n_waves)
        self.weight = rng.uniform(0.5, 1.0, n_waves)

    def __call__(self, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
        y = np.asarray(y_um, dtype=np.float64)
        x = np.asarray(x_um, dtype=np.float64)
        total = np.zeros(np.broadcast_shapes(y.shape, x.shape))
        for ky, kx, ph, w in zip(self.k_y, self.k_x, self.phase, self.weight):
            total = total + w * np.cos(ky * y + kx * x + ph)
        return 0.5 + 0.5 * total / self.weight.sum()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _rotation(angle: float, tilt: float) -> np.ndarray:
    """Rows: the nucleus' major, minor and thickness axes in world (z, y, x), with a small tilt."""
    major = np.array([0.0, math.sin(angle), math.cos(angle)])
    minor = np.array([0.0, math.cos(angle), -math.sin(angle)])
    thick = np.array([1.0, 0.0, 0.0])
    # Tilt about the major axis (Rodrigues): the cell lies on a slightly sloping surface.
    c, s = math.cos(tilt), math.sin(tilt)
    minor, thick = c * minor + s * thick, -s * minor + c * thick
    return np.stack([major, minor, thick])


def _edge_radius(a: float, b: float, angle: float, direction_angle: np.ndarray | float) -> np.ndarray:
    """Distance from the centre to the edge of an (a, b, angle) ellipse along ``direction_angle``."""
    phi = np.asarray(direction_angle) - angle
    return 1.0 / np.sqrt((np.cos(phi) / a) ** 2 + (np.sin(phi) / b) ** 2)


def _sample_vmf(rng: np.random.Generator, mean: np.ndarray, kappa: float) -> np.ndarray:
    """One unit vector from a von Mises–Fisher distribution on the sphere (Wood 1994, p = 3)."""
    if kappa < 1e-6:
        v = rng.standard_normal(3)
        return _unit(v)
    u = rng.uniform()
    w = 1.0 + math.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
    phi = rng.uniform(0.0, 2.0 * np.pi)
    helper = np.array([1.0, 0.0, 0.0]) if abs(mean[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(mean, helper))
    e2 = np.cross(mean, e1)
    s = math.sqrt(max(0.0, 1.0 - w * w))
    return _unit(w * mean + s * (math.cos(phi) * e1 + math.sin(phi) * e2))


# ----------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------
class _Layout:
    """Nucleus centres and footprint ellipses as arrays, for vectorised placement checks."""

    def __init__(self) -> None:
        self.centres = np.zeros((0, 3))
        self.a = np.zeros(0)
        self.b = np.zeros(0)
        self.angle = np.zeros(0)

    @property
    def n(self) -> int:
        return len(self.a)

    def add(self, centre: np.ndarray, a: float, b: float, angle: float) -> None:
        self.centres = np.vstack([self.centres, centre[None, :]])
        self.a = np.append(self.a, a)
        self.b = np.append(self.b, b)
        self.angle = np.append(self.angle, angle)

    def accepts(self, centre: np.ndarray, a: float, b: float, angle: float, min_distance: float,
                overlap: float) -> bool:
        """True if a new nucleus keeps ``min_distance`` and overlaps its neighbours by at most ``overlap``."""
        if self.n == 0:
            return True
        delta = centre[None, :] - self.centres
        if np.min(np.linalg.norm(delta, axis=1)) < min_distance:
            return False
        planar = np.hypot(delta[:, 1], delta[:, 2])
        direction = np.arctan2(delta[:, 1], delta[:, 2])
        reach = _edge_radius(a, b, angle, direction) + _edge_radius(self.a, self.b, self.angle, direction)
        return bool(np.all(planar >= (1.0 - overlap) * reach))

    def rho(self, yx: np.ndarray) -> np.ndarray:
        """Normalised in-plane ellipse radius of point ``yx`` relative to every nucleus (1 = on its edge)."""
        d = np.asarray(yx)[None, :] - self.centres[:, 1:]
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        along = d[:, 0] * sa + d[:, 1] * ca
        across = d[:, 0] * ca - d[:, 1] * sa
        return np.sqrt((along / self.a) ** 2 + (across / self.b) ** 2)


class _Field:
    """The field of view in µm, the margin around it where objects are placed too, and the cell layer's height.

    Parameters
    ----------
    cfg : SimConfig
        A resolved configuration.
    layer : _SmoothField
        The smooth up-and-down of the cell layer, scaled by ``cfg.layer_undulation_um``.
    """

    #: Objects are placed up to this far (µm) outside the field too, so that its edges look like its middle.
    MARGIN_UM = 12.0

    def __init__(self, cfg: SimConfig, layer: _SmoothField) -> None:
        self.is_2d = cfg.is_2d
        self.layer = layer
        self.undulation_um = cfg.layer_undulation_um
        voxel = np.asarray(cfg.voxel_size)
        shape = np.asarray(cfg.shape)
        self.extent = shape * voxel  # field of view (z, y, x) µm; voxel i is centred at (i + ½)·voxel
        self.area = float(shape[1] * voxel[1] * shape[2] * voxel[2])
        self.lo_yx = -self.MARGIN_UM * np.ones(2)
        self.hi_yx = self.extent[1:] + self.MARGIN_UM
        self.placed_area = float(np.prod(self.hi_yx - self.lo_yx))  # field plus margin, µm²
        self.z_mid = 0.0 if self.is_2d else float(self.extent[0]) / 2.0

    def layer_z(self, y: float, x: float) -> float:
        """Height (µm) of the middle of the cell layer at ``(y, x)``; 0 in 2D."""
        if self.is_2d:
            return 0.0
        wave = (float(self.layer(np.array(y), np.array(x))) - 0.5) * 2.0 * self.undulation_um
        return self.z_mid + wave

    def contains(self, point: np.ndarray) -> bool:
        """Whether ``point`` (z, y, x) µm lies in the field of view."""
        lo = np.zeros(3)
        return bool(np.all(point >= lo - 1e-9) and np.all(point <= self.extent + 1e-9))


def _sample_scene(cfg: SimConfig, rng: np.random.Generator) -> _Scene:
    """Draw the scene of a resolved ``cfg`` from ``rng``: the cells (random, or ``cfg.layout_um``), then
    vessels, specks and nuclear fragments."""
    layer = _SmoothField(rng, (60.0, 220.0), n_waves=2)
    illumination = _SmoothField(rng, (120.0, 400.0), n_waves=3)
    background = _SmoothField(rng, (40.0, 160.0), n_waves=3)
    field = _Field(cfg, layer)
    shapes_n, shapes_g = _shape_masks(cfg)

    if cfg.layout_um is not None:
        # A given layout: cells where the annotations put them.
        nuclei, golgi, layout = _layout_cells(cfg, rng, shapes_n, shapes_g)
        n_inside = len(nuclei)
    else:
        if cfg.n_cells is not None:
            n_inside = int(cfg.n_cells)
        else:
            n_inside = int(round(cfg.density_per_100um2 * field.area / 100.0))
        nuclei, layout = _random_nuclei(cfg, rng, field, n_inside, shapes_n)
        # Golgi: beside (or on top of) its own nucleus, closer to it than to any other.
        golgi: list[Optional[_Golgi]] = []
        for i in range(len(nuclei)):
            golgi.append(_sample_golgi(cfg, rng, i, nuclei, layout, golgi, shapes_g))

    area_ext = field.placed_area / 10000.0
    vessels = [_sample_vessel(rng, field) for _ in range(int(rng.poisson(cfg.vessels_per_10000um2 * area_ext)))]
    dirt = _sample_dirt(cfg, rng, field)
    fragments = _sample_fragments(cfg, rng, field, layout, len(nuclei))
    return _Scene(nuclei, golgi, vessels, dirt, fragments, illumination, background, field.z_mid, n_inside)


def _shape_masks(cfg: SimConfig) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The real nucleus and Golgi masks of ``cfg.shapes_dir`` (cached), or two empty tuples without one."""
    if cfg.shapes_dir is None:
        return (), ()
    base = Path(cfg.shapes_dir)
    return _load_shapes(str(base / NUCLEUS_SHAPES_FILE), 300), _load_shapes(str(base / GOLGI_SHAPES_FILE), 60)


def _random_nuclei(
    cfg: SimConfig, rng: np.random.Generator, field: _Field, n_inside: int, shapes_n: tuple[np.ndarray, ...]
) -> tuple[list[_Nucleus], _Layout]:
    """Nuclei by random sequential addition, at least ``min_nucleus_distance_um`` apart and overlapping their
    neighbours by at most ``nucleus_overlap``, until ``n_inside`` of them lie in the field or the attempts
    (about 60 per cell of field and margin) run out."""
    is_2d = cfg.is_2d
    extent = field.extent
    n_total_target = int(round(n_inside * field.placed_area / max(field.area, 1e-9)))
    nuclei: list[_Nucleus] = []
    layout = _Layout()
    n_inside_done = 0
    attempts = 0
    max_attempts = 60 * max(n_total_target, 1) + 200
    while n_inside_done < n_inside and attempts < max_attempts:
        attempts += 1
        yx = rng.uniform(field.lo_yx, field.hi_yx)
        shape_mask, a, b, c, angle, tilt = _draw_nucleus_shape(cfg, rng, shapes_n)
        if is_2d:
            z = 0.0
            c = math.inf
        else:
            z = field.layer_z(yx[0], yx[1]) + rng.normal(0.0, 0.4)
            half = min(c, extent[0] / 2.0)
            z = float(np.clip(z, half, max(half, extent[0] - half)))
        centre = np.array([z, yx[0], yx[1]])
        if not layout.accepts(centre, a, b, angle, cfg.min_nucleus_distance_um, cfg.nucleus_overlap):
            continue
        nuclei.append(_finish_nucleus(cfg, rng, centre, (a, b, c), angle, tilt, shape_mask))
        layout.add(centre, a, b, angle)
        if field.contains(centre):
            n_inside_done += 1
    return nuclei, layout


def _sample_dirt(cfg: SimConfig, rng: np.random.Generator, field: _Field) -> np.ndarray:
    """Bright specks in the field: ``(K, 5)`` rows of centre ``(z, y, x)`` µm, radius and brightness."""
    extent = field.extent
    n_dirt = int(rng.poisson(cfg.dirt_per_10000um2 * field.area / 10000.0))
    dirt = np.zeros((n_dirt, 5))
    if n_dirt:
        dirt[:, 0] = 0.0 if field.is_2d else rng.uniform(0.0, extent[0], n_dirt)
        dirt[:, 1] = rng.uniform(0.0, extent[1], n_dirt)
        dirt[:, 2] = rng.uniform(0.0, extent[2], n_dirt)
        dirt[:, 3] = rng.uniform(0.2, 0.35, n_dirt)
        dirt[:, 4] = rng.uniform(2.0, 6.0, n_dirt)
    return dirt


def _sample_fragments(
    cfg: SimConfig, rng: np.random.Generator, field: _Field, layout: _Layout, n_nuclei: int
) -> list[tuple[np.ndarray, float]]:
    """Unpaired nuclear fragments / mitotic dots, away from the nuclei where possible: ``(spheres, brightness)``."""
    fragments = []
    for _ in range(int(rng.poisson(cfg.fragments_per_cell * max(n_nuclei, 1)))):
        for _try in range(20):
            yx = rng.uniform(field.lo_yx, field.hi_yx)
            if layout.n == 0 or layout.rho(yx).min() > 1.4:
                break
        centre = np.array([field.layer_z(yx[0], yx[1]), yx[0], yx[1]])
        k = int(rng.integers(1, 5))
        spheres = np.zeros((k, 4))
        spheres[:, :3] = centre + rng.normal(0.0, 1.0, (k, 3)) * np.array([0.0 if field.is_2d else 0.6, 1.2, 1.2])
        spheres[:, 3] = rng.uniform(0.5, 1.2, k)
        fragments.append((spheres, float(rng.uniform(1.2, 2.0))))
    return fragments


#: Least clearance (µm) between a nucleus' edge and its own Golgi centroid when a layout puts the Golgi beside it.
_LAYOUT_GOLGI_CLEARANCE_UM = 1.0
#: Smallest in-plane semi-axis (µm) a layout nucleus is shrunk to.
_LAYOUT_MIN_SEMI_AXIS_UM = 2.0
#: Smallest half-thickness (µm) a layout nucleus is flattened to.
_LAYOUT_MIN_HALF_THICKNESS_UM = 1.0


def _layout_cells(
    cfg: SimConfig,
    rng: np.random.Generator,
    shapes_n: tuple[np.ndarray, ...],
    shapes_g: tuple[np.ndarray, ...],
) -> tuple[list[_Nucleus], list[Optional[_Golgi]], _Layout]:
    """Nuclei and Golgi centred on the points of ``cfg.layout_um`` (see :class:`SimConfig`).

    Each nucleus' size, shape, orientation, brightness and spots are drawn as in the random layout. Its
    in-plane semi-axes then shrink (keeping their ratio, down to :data:`_LAYOUT_MIN_SEMI_AXIS_UM`) so that
    it leaves :data:`_LAYOUT_GOLGI_CLEARANCE_UM` around its own Golgi, does not cover another cell's Golgi
    and overlaps its neighbours by at most ``nucleus_overlap``; a Golgi too close in-plane for that is
    taken to lie on top of its nucleus, which flattens instead. A nucleus also flattens to fit the
    field's depth. The Golgi is today's blob cluster or real shape, curving around its nucleus.
    """
    is_2d = cfg.is_2d
    voxel = np.asarray(cfg.voxel_size)
    # PairSet µm (voxel index × size) → scene µm (voxel i centred at (i + ½) · size).
    nuc_um = np.asarray(cfg.layout_um[0], dtype=np.float64).reshape(-1, 3) + 0.5 * voxel
    gol_um = np.asarray(cfg.layout_um[1], dtype=np.float64).reshape(-1, 3) + 0.5 * voxel
    if is_2d:
        nuc_um[:, 0] = 0.0
        gol_um[:, 0] = 0.0
    n = len(nuc_um)

    # Draw every nucleus' own shape first, as the random layout does.
    masks: list[Optional[np.ndarray]] = []
    axes = np.zeros((n, 3))
    angles = np.zeros(n)
    tilts = np.zeros(n)
    for i in range(n):
        mask, a, b, c, angle, tilt = _draw_nucleus_shape(cfg, rng, shapes_n)
        masks.append(mask)
        axes[i] = (a, b, math.inf if is_2d else c)
        angles[i] = angle
        tilts[i] = tilt
    scale, thick, on_top = _fit_layout_nuclei(cfg, nuc_um, gol_um, axes, angles)

    nuclei: list[_Nucleus] = []
    golgi: list[Optional[_Golgi]] = []
    layout = _Layout()
    for i in range(n):
        centre = nuc_um[i]
        a, b = axes[i, 0] * scale[i], axes[i, 1] * scale[i]
        c = math.inf if is_2d else float(thick[i])
        mask = masks[i]
        if mask is not None and (scale[i] < 1.0 or (not is_2d and c < axes[i, 2])):
            factors = (1.0 if is_2d else c / axes[i, 2], scale[i], scale[i])
            mask = np.clip(ndi.zoom(mask, factors, order=1, prefilter=False), 0.0, 1.0).astype(np.float32)
        nucleus = _finish_nucleus(cfg, rng, centre, (a, b, c), float(angles[i]), float(tilts[i]), mask)
        brightness = nucleus.brightness
        nuclei.append(nucleus)
        layout.add(centre, a, b, float(angles[i]))

        target = gol_um[i]
        d = target - centre
        direction = math.atan2(d[1], d[2]) if np.hypot(d[1], d[2]) > 1e-9 else rng.uniform(0.0, 2.0 * np.pi)
        g_brightness = brightness * rng.uniform(0.8, 1.2)
        if shapes_g:
            g_mask = _transform_shape(rng, shapes_g[rng.integers(len(shapes_g))], cfg.shapes_voxel_size)
            golgi.append(_Golgi(target.copy(), np.zeros((0, 4)), np.zeros(0), 1.0, g_brightness, g_mask))
        else:
            spheres, weights, flat = _golgi_spheres(rng, centre, target, direction, bool(on_top[i]), is_2d)
            golgi.append(_Golgi(target.copy(), spheres, weights, flat, g_brightness))
    return nuclei, golgi, layout


def _fit_layout_nuclei(
    cfg: SimConfig, nuc_um: np.ndarray, gol_um: np.ndarray, axes: np.ndarray, angles: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How much each layout nucleus shrinks to fit among the given points (see :func:`_layout_cells`).

    Parameters
    ----------
    cfg : SimConfig
        The resolved configuration.
    nuc_um, gol_um : ndarray
        ``(N, 3)`` nucleus and Golgi centres, scene µm.
    axes : ndarray
        ``(N, 3)`` drawn semi-axes ``(a, b, half-thickness)`` µm (half-thickness infinite in 2D).
    angles : ndarray
        ``(N,)`` in-plane angles of the major axes.

    Returns
    -------
    scale : ndarray
        ``(N,)`` factor on the in-plane semi-axes.
    thick : ndarray
        ``(N,)`` half-thickness µm.
    on_top : ndarray
        ``(N,)`` bool: the Golgi is taken to lie on top of its nucleus.
    """
    is_2d = cfg.is_2d
    extent = np.asarray(cfg.shape) * np.asarray(cfg.voxel_size)
    n = len(nuc_um)
    # In-plane scale s_i of each nucleus and its half-thickness.
    s_min = np.minimum(1.0, _LAYOUT_MIN_SEMI_AXIS_UM / axes[:, 1])
    scale = np.ones(n)
    thick = axes[:, 2].copy()
    on_top = np.zeros(n, dtype=bool)
    for i in range(n):
        d = gol_um[i] - nuc_um[i]
        planar = float(np.hypot(d[1], d[2]))
        edge = float(_edge_radius(axes[i, 0], axes[i, 1], angles[i], math.atan2(d[1], d[2])))
        need = (planar - _LAYOUT_GOLGI_CLEARANCE_UM) / edge
        if need >= s_min[i]:
            scale[i] = min(1.0, need)
        else:
            on_top[i] = True
            if not is_2d:
                thick[i] = min(thick[i], max(abs(d[0]) - 0.5, _LAYOUT_MIN_HALF_THICKNESS_UM))
        if not is_2d:  # fit the field's depth
            room = min(nuc_um[i, 0], extent[0] - nuc_um[i, 0])
            thick[i] = max(min(thick[i], room), _LAYOUT_MIN_HALF_THICKNESS_UM)
    # Another cell's Golgi stays outside this nucleus (unless it is above or below it).
    for i in range(n):
        d = gol_um - nuc_um[i]
        near = np.hypot(d[:, 1], d[:, 2]) < 1.5 * axes[i, 0]
        near[i] = False
        if not is_2d:
            near &= np.abs(d[:, 0]) < thick[i] + 0.5
        for j in np.flatnonzero(near):
            edge = float(_edge_radius(axes[i, 0], axes[i, 1], angles[i], math.atan2(d[j, 1], d[j, 2])))
            limit = (float(np.hypot(d[j, 1], d[j, 2])) - 0.5 * _LAYOUT_GOLGI_CLEARANCE_UM) / edge
            scale[i] = max(s_min[i], min(scale[i], limit))
    # Neighbours overlap by at most ``nucleus_overlap`` of their reach (shrinking both alike).
    close = []
    for i in range(n):
        for j in range(i + 1, n):
            d = nuc_um[j] - nuc_um[i]
            planar = float(np.hypot(d[1], d[2]))
            if planar >= axes[i, 0] + axes[j, 0] or (not is_2d and abs(d[0]) >= thick[i] + thick[j]):
                continue
            direction = math.atan2(d[1], d[2])
            e_i = float(_edge_radius(axes[i, 0], axes[i, 1], angles[i], direction))
            e_j = float(_edge_radius(axes[j, 0], axes[j, 1], angles[j], direction))
            close.append((i, j, planar / (1.0 - cfg.nucleus_overlap), e_i, e_j))
    for _sweep in range(4):
        for i, j, limit, e_i, e_j in close:
            reach = scale[i] * e_i + scale[j] * e_j
            if reach > limit:
                scale[i] = max(s_min[i], scale[i] * limit / reach)
                scale[j] = max(s_min[j], scale[j] * limit / reach)
    return scale, thick, on_top


def _draw_nucleus_shape(
    cfg: SimConfig, rng: np.random.Generator, shapes_n: tuple[np.ndarray, ...]
) -> tuple[Optional[np.ndarray], float, float, float, float, float]:
    """One nucleus' shape before it is placed: ``(mask, a, b, c, angle, tilt)``.

    A real mask (from ``shapes_n``, randomly transformed; its fitted ellipse gives the semi-axes ``a ≥ b``,
    the in-plane angle and the half-thickness ``c``; no tilt) or an analytic ellipsoid of the configured
    size with jitter, orientation and a small tilt (mask ``None``). In 2D the caller sets ``c`` to infinity.
    """
    if shapes_n:
        mask = _transform_shape(rng, shapes_n[rng.integers(len(shapes_n))], cfg.shapes_voxel_size)
        a, b, angle, c = _mask_ellipse(mask, cfg.shapes_voxel_size)
        return mask, a, b, c, angle, 0.0
    major0, minor0, thick0 = (s / 2.0 for s in cfg.nucleus_size_um)
    jitter = rng.uniform(1.0 - cfg.size_jitter, 1.0 + cfg.size_jitter, 3)
    a, b, c = major0 * jitter[0], minor0 * jitter[1], thick0 * jitter[2]
    if b > a:
        a, b = b, a
    angle = rng.uniform(0.0, np.pi)
    tilt = 0.0 if cfg.is_2d else float(np.clip(rng.normal(0.0, math.radians(5.0)), -0.2, 0.2))
    return None, a, b, c, angle, tilt


def _finish_nucleus(cfg: SimConfig, rng: np.random.Generator, centre: np.ndarray, semi: tuple, angle: float,
                    tilt: float, mask: Optional[np.ndarray]) -> "_Nucleus":
    """A placed nucleus with its brightness (``dim_fraction`` of them dim), surface ripples and spots."""
    if rng.uniform() < cfg.dim_fraction:
        brightness = rng.uniform(0.2, 0.4)
    else:
        brightness = float(np.clip(rng.lognormal(0.0, 0.2), 0.6, 1.6))
    rotation = _rotation(angle, tilt)
    harmonics = np.stack([np.arange(2, 5), rng.normal(0.0, 0.045, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
    spots, spot_gain, nucleoli = _sample_nuclear_spots(rng, centre, rotation, semi, cfg.is_2d)
    return _Nucleus(centre, semi, angle, rotation, brightness, harmonics, spots, spot_gain, nucleoli, mask)


def _sample_nuclear_spots(
    rng: np.random.Generator, centre: np.ndarray, rotation: np.ndarray, semi: tuple, is_2d: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bright chromocentres and darker nucleoli inside a nucleus (mouse nuclei show both)."""
    a, b, c = semi
    c_eff = 0.0 if is_2d else c

    def points(k: int, reach: float) -> np.ndarray:
        local = rng.uniform(-1.0, 1.0, (k, 3))
        local /= np.maximum(1.0, np.linalg.norm(local, axis=1, keepdims=True))
        local *= reach * np.array([a, b, c_eff])
        return centre + local @ rotation

    n_spots = int(rng.integers(3, 11))
    spots = np.zeros((n_spots, 4))
    spots[:, :3] = points(n_spots, 0.7)
    spots[:, 3] = rng.uniform(0.35, 0.75, n_spots)
    gain = rng.uniform(0.35, 0.9, n_spots)
    n_nucleoli = int(rng.integers(0, 3))
    nucleoli = np.zeros((n_nucleoli, 4))
    nucleoli[:, :3] = points(n_nucleoli, 0.45)
    nucleoli[:, 3] = rng.uniform(0.9, 1.5, n_nucleoli)
    return spots, gain, nucleoli


def _sample_golgi(
    cfg: SimConfig,
    rng: np.random.Generator,
    index: int,
    nuclei: list[_Nucleus],
    layout: _Layout,
    placed: list[Optional[_Golgi]],
    shapes_g: tuple[np.ndarray, ...],
) -> Optional[_Golgi]:
    """The Golgi of nucleus ``index``: beside it (or on top of it), closer to it than to any other nucleus.

    Up to 40 draws of direction and distance; the first whose Golgi lies over no other nucleus, is clearly
    closest to its own and keeps 3 µm from the Golgi already ``placed`` is kept. ``None`` if none fits.
    """
    nucleus = nuclei[index]
    is_2d = cfg.is_2d
    a, b, c = nucleus.semi_axes
    c_z = 0.0 if is_2d else c
    others = np.arange(layout.n) != index
    other_golgi = np.array([g.centre for g in placed if g is not None]).reshape(-1, 3)
    preferred = None if cfg.polarity_direction is None else np.asarray(cfg.polarity_direction)
    if cfg.golgi_gap_um is not None:
        gap = float(cfg.golgi_gap_um)
    else:
        gap = 2.0 if shapes_g else 0.8
    for _attempt in range(40):
        v, steep = _golgi_direction(cfg, rng, preferred)
        planar_norm = float(np.hypot(v[1], v[2]))
        direction = math.atan2(v[1], v[2]) if planar_norm > 1e-9 else rng.uniform(0.0, 2.0 * np.pi)
        edge = float(_edge_radius(a, b, nucleus.angle, direction))
        if steep:
            # On top of the nucleus (apical or basal), set off from its middle.
            planar_dist = edge * rng.uniform(0.0, 0.6)
            dz = 0.0 if is_2d else math.copysign(c_z + rng.uniform(0.3, 0.9), v[0])
        else:
            if rng.uniform() < 0.12:  # the long tail of real pair lengths: a Golgi well away from its nucleus
                offset = gap + rng.uniform(1.5, 5.0)
            else:
                offset = float(np.clip(rng.normal(gap, 1.0), gap - 2.3, gap + 2.2))
            planar_dist = max(1.5, edge + offset)
            dz = 0.0 if is_2d else v[0] * c_z + rng.normal(0.0, 0.5)
        planar_dist = min(planar_dist, MAX_PAIR_LENGTH_UM - 1.5)
        centre = nucleus.centre + np.array([dz, planar_dist * math.sin(direction), planar_dist * math.cos(direction)])
        # Belongs to exactly one nucleus: not over another one, and clearly closest to its own.
        own = float(np.linalg.norm(centre - nucleus.centre))
        if others.any():
            if layout.rho(centre[1:])[others].min() < 1.15:
                continue
            if 0.9 * np.linalg.norm(layout.centres[others] - centre, axis=1).min() < own:
                continue
        if len(other_golgi) and np.min(np.linalg.norm(other_golgi - centre, axis=1)) < 3.0:
            continue
        brightness = nucleus.brightness * rng.uniform(0.8, 1.2)
        if shapes_g:
            mask = _transform_shape(rng, shapes_g[rng.integers(len(shapes_g))], cfg.shapes_voxel_size)
            return _Golgi(centre, np.zeros((0, 4)), np.zeros(0), 1.0, brightness, mask)
        spheres, weights, flat = _golgi_spheres(rng, nucleus.centre, centre, direction, steep, is_2d)
        return _Golgi(centre, spheres, weights, flat, brightness)
    return None


def _golgi_direction(
    cfg: SimConfig, rng: np.random.Generator, preferred: Optional[np.ndarray]
) -> tuple[np.ndarray, bool]:
    """Unit direction ``(z, y, x)`` from a nucleus to its Golgi, and whether it is steep (Golgi on top).

    Around ``preferred`` (von Mises–Fisher, ``cfg.polarity_concentration``) when given; otherwise uniform in
    the plane with a small z component, steep for a share ``cfg.golgi_over_nucleus_fraction``.
    """
    is_2d = cfg.is_2d
    if preferred is not None:
        v = _sample_vmf(rng, preferred, cfg.polarity_concentration)
        if is_2d:
            v[0] = 0.0
            v = _unit(v) if np.linalg.norm(v) > 1e-6 else np.array([0.0, 1.0, 0.0])
        steep = abs(v[0]) > 0.87 and not is_2d
    else:
        theta = rng.uniform(0.0, 2.0 * np.pi)
        steep = rng.uniform() < cfg.golgi_over_nucleus_fraction
        if steep:
            vz = rng.uniform(0.87, 1.0) * rng.choice([-1.0, 1.0])
        else:
            vz = float(np.clip(rng.normal(0.0, 0.12), -0.5, 0.5))
        planar = math.sqrt(max(0.0, 1.0 - vz * vz))
        v = np.array([0.0 if is_2d else vz, planar * math.sin(theta), planar * math.cos(theta)])
    return v, steep


def _golgi_spheres(
    rng: np.random.Generator, nucleus_centre: np.ndarray, centre: np.ndarray, direction: float, steep: bool, is_2d: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """A cluster of 3–12 small blobs or a beaded ribbon, curving around the nucleus (a crescent).

    A few faint vesicles (0–5 sub-micron dots) scatter around either form, as in real Golgi stains.
    """
    radial = np.array([0.0, math.sin(direction), math.cos(direction)])
    tangent = np.array([0.0, math.cos(direction), -math.sin(direction)])
    radius_arc = max(2.0, float(np.hypot(*(centre - nucleus_centre)[1:])))
    z_spread = 0.0 if is_2d else 0.35
    if rng.uniform() < 0.6 or steep:
        k = int(rng.integers(3, 13))
        spread = rng.uniform(0.8, 1.2) * (1.5 + 0.4 * k) * (0.6 if steep else 1.0)
        along = rng.uniform(-spread / 2.0, spread / 2.0, k)
        radial_jitter = rng.normal(0.0, 0.55, k)
        radii = rng.uniform(0.35, 0.85, k)
        weights = rng.uniform(0.6, 1.0, k)
    else:
        length = rng.uniform(3.5, 9.0)
        spread = length
        k = max(4, int(length / 0.3))
        along = np.linspace(-length / 2.0, length / 2.0, k)
        wobble = rng.normal(0.0, 1.0, 4)
        radial_jitter = 0.35 * (wobble[0] * np.sin(along / length * np.pi * 2 + wobble[1]))
        base = rng.uniform(0.5, 0.85)
        radii = base * (0.8 + 0.2 * np.cos(along * 1.7 + wobble[2]))
        weights = 0.75 + 0.25 * np.cos(along * 2.3 + wobble[3])
    n_vesicles = int(rng.integers(0, 6))
    if n_vesicles:
        along = np.concatenate([along, rng.uniform(-spread / 2.0 - 1.0, spread / 2.0 + 1.0, n_vesicles)])
        radial_jitter = np.concatenate([radial_jitter, rng.normal(0.0, 1.2, n_vesicles)])
        radii = np.concatenate([radii, rng.uniform(0.22, 0.35, n_vesicles)])
        weights = np.concatenate([weights, rng.uniform(0.35, 0.7, n_vesicles)])
        k += n_vesicles
    # Curve around the nucleus: points on a circle about its centre, not on a straight line.
    bend = along / radius_arc if not steep else np.zeros_like(along)
    offsets = (
        radial[None, :] * ((np.cos(bend) - 1.0) * radius_arc + radial_jitter)[:, None]
        + tangent[None, :] * (np.sin(bend) * radius_arc if not steep else along)[:, None]
    )
    offsets[:, 0] += rng.normal(0.0, z_spread, k) if z_spread else 0.0
    spheres = np.zeros((k, 4))
    spheres[:, :3] = centre + offsets
    spheres[:, 3] = radii
    return spheres, weights, float(rng.uniform(0.7, 0.95))


def _sample_vessel(rng: np.random.Generator, field: _Field) -> tuple[np.ndarray, float, float]:
    """A smooth random curve near the cell layer: centre-line points every 2 µm, radius, brightness."""
    is_2d = field.is_2d
    length = rng.uniform(60.0, 220.0)
    n = max(2, int(length / 2.0))
    start = rng.uniform(field.lo_yx, field.hi_yx)
    heading = rng.uniform(0.0, 2.0 * np.pi)
    # Persistent random walk of the heading plus a gentle meander: smooth, vessel-like curves.
    meander = 0.25 * np.sin(np.arange(n) * 2.0 / rng.uniform(15.0, 40.0) + rng.uniform(0, 2 * np.pi))
    headings = heading + np.cumsum(rng.normal(0.0, 0.05, n)) + meander
    steps = 2.0 * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    yx = start + np.cumsum(steps, axis=0) - steps[0]
    z_offset = np.cumsum(rng.normal(0.0, 0.25, n)) + rng.normal(0.0, 1.5)
    z = np.array([0.0 if is_2d else field.layer_z(p[0], p[1]) for p in yx]) + (0.0 if is_2d else z_offset)
    points = np.column_stack([z, yx])
    return points, float(rng.uniform(1.0, 3.0)), float(rng.uniform(0.12, 0.3))
