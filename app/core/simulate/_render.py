"""Rendering the scene into the two channels: each object into its own bounding box, at sub-voxel accuracy.

Objects combine by maximum (two solid objects never share a voxel); specks and fragments add. The ground
truth is each object's occupancy-weighted centroid as rendered, where an annotator would click.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from app.core.simulate._config import MAX_PAIR_LENGTH_UM, SimConfig
from app.core.simulate._optics import _upsample_matrix
from app.core.simulate._scene import _Golgi, _Nucleus, _Scene
from app.core.simulate._shapes import SHAPES_VOXEL_SIZE_3DNGMIC


# ----------------------------------------------------------------------------------------------
# Rendering into local boxes
# ----------------------------------------------------------------------------------------------
class _Canvas:
    """The two float32 channels plus helpers for rendering objects into local bounding boxes."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        voxel: tuple[float, float, float],
        is_2d: bool,
        shapes_voxel: tuple[float, float, float] = SHAPES_VOXEL_SIZE_3DNGMIC,
    ) -> None:
        self.shape = shape
        self.shapes_voxel = shapes_voxel
        self.voxel = np.asarray(voxel, dtype=np.float64)
        self.is_2d = is_2d
        self.nuclei = np.zeros(shape, dtype=np.float32)
        self.golgi = np.zeros(shape, dtype=np.float32)

    def box(self, lo_um: np.ndarray, hi_um: np.ndarray):
        """Voxel index ranges whose centres lie within ``[lo, hi]`` µm, clipped; ``None`` if empty."""
        lo = np.maximum(np.ceil(np.asarray(lo_um) / self.voxel - 0.5), 0).astype(int)
        hi = np.minimum(np.floor(np.asarray(hi_um) / self.voxel - 0.5), np.asarray(self.shape) - 1).astype(int)
        if self.is_2d:
            lo[0], hi[0] = 0, 0
        if np.any(hi < lo):
            return None
        slices = tuple(slice(int(l), int(h) + 1) for l, h in zip(lo, hi))
        coords = (
            ((np.arange(lo[0], hi[0] + 1) + 0.5) * self.voxel[0]).astype(np.float32).reshape(-1, 1, 1),
            ((np.arange(lo[1], hi[1] + 1) + 0.5) * self.voxel[1]).astype(np.float32).reshape(1, -1, 1),
            ((np.arange(lo[2], hi[2] + 1) + 0.5) * self.voxel[2]).astype(np.float32).reshape(1, 1, -1),
        )
        return slices, coords

    def centroid(self, slices: tuple[slice, ...], occupancy: np.ndarray) -> Optional[np.ndarray]:
        """Occupancy-weighted centroid in voxels (z, y, x) of an object rendered at ``slices``."""
        total = float(occupancy.sum(dtype=np.float64))
        if total <= 1e-6:
            return None
        out = np.zeros(3)
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            profile = occupancy.sum(axis=other, dtype=np.float64)
            index = np.arange(slices[axis].start, slices[axis].stop)
            out[axis] = float(profile @ index) / total
        return out


def _occupancy_from_distance(signed_um: np.ndarray, normal: tuple, voxel: np.ndarray) -> np.ndarray:
    """Partial-volume fraction of a voxel from the signed distance to a surface (negative inside).

    A box voxel crossed by a plane with unit normal n spans ``Σ|n_i| v_i`` along n, so the fraction ramps
    linearly over that width: sub-voxel accurate masks whose centroids do not depend on the voxel size.
    """
    vz, vy, vx = (float(v) for v in voxel)
    width = np.abs(normal[0]) * vz + np.abs(normal[1]) * vy + np.abs(normal[2]) * vx
    width = np.maximum(width, 0.5 * min(vy, vx))
    return np.clip(0.5 - signed_um / width, 0.0, 1.0).astype(np.float32, copy=False)


def _render_spheres(
    canvas: _Canvas, spheres: np.ndarray, flat: float = 1.0, weights: Optional[np.ndarray] = None, pad: float = 0.0
):
    """Render a set of (optionally z-flattened) spheres into one box.

    Returns ``(slices, occupancy, intensity)`` with occupancy = max over spheres and intensity =
    max over spheres of weight × occupancy (× projected thickness in 2D), or ``None`` if not visible.
    """
    if len(spheres) == 0:
        return None
    centres = spheres[:, :3]
    radii = spheres[:, 3]
    z_radii = radii * flat
    reach = np.stack([z_radii, radii, radii], axis=1) + canvas.voxel
    got = canvas.box((centres - reach).min(axis=0) - pad, (centres + reach).max(axis=0) + pad)
    if got is None:
        return None
    slices, (zc, yc, xc) = got
    voxel = canvas.voxel
    occupancy = None
    intensity = None
    weights = np.ones(len(spheres)) if weights is None else np.asarray(weights)
    inv_flat = 1.0 / float(flat)
    for k in range(len(spheres)):
        cz, cy, cx, radius = (float(x) for x in spheres[k, :4])
        # Distance in a space where the blob is a sphere; its gradient maps it back to µm.
        dz = (zc - cz) * inv_flat if not canvas.is_2d else np.zeros((1, 1, 1), dtype=np.float32)
        dy = yc - cy
        dx = xc - cx
        dist = np.sqrt(dz * dz + dy * dy + dx * dx)
        inv = 1.0 / np.maximum(dist, np.float32(1e-6))
        gz, gy, gx = dz * (inv * inv_flat), dy * inv, dx * inv
        grad = np.maximum(np.sqrt(gz * gz + gy * gy + gx * gx), np.float32(1e-3))
        inv_grad = 1.0 / grad
        occ = _occupancy_from_distance((dist - radius) * inv_grad, (gz * inv_grad, gy * inv_grad, gx * inv_grad), voxel)
        value = occ * np.float32(weights[k])
        if canvas.is_2d:
            value = value * (0.35 + 0.65 * np.sqrt(np.clip(1.0 - np.square(dist * (1.0 / radius)), 0.0, 1.0)))
        if occupancy is None:
            occupancy, intensity = occ, value.astype(np.float32, copy=False)
        else:
            occupancy = np.maximum(occupancy, occ)
            intensity = np.maximum(intensity, value)
    return slices, occupancy, intensity


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (a chromatin-like texture)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndi.gaussian_filter(noise, [s if n > 1 else 0 for s, n in zip(sigma_vox, shape)], truncate=2.5)
    std = float(smooth.std())
    return smooth / std if std > 1e-6 else smooth


def _render_nucleus(canvas: _Canvas, nucleus: _Nucleus, rng: np.random.Generator, subvoxel: bool = False):
    """Textured ellipsoid (or real shape) with a brighter rim, chromocentres and nucleoli.

    ``subvoxel``: a real shape is placed to a fraction of a voxel (see :func:`_render_mask_object`).
    """
    if nucleus.shape_mask is not None:
        rendered = _render_mask_object(canvas, nucleus.shape_mask, nucleus.centre, rng, rim=0.3, texture=0.28,
                                       subvoxel=subvoxel)
    else:
        rendered = _render_ellipsoid(canvas, nucleus, rng)
    if rendered is None:
        return None
    slices, occupancy, intensity = rendered
    intensity = _add_spots(canvas, intensity, slices, nucleus.spots, nucleus.spot_gain, nucleus.nucleoli, occupancy)
    np.maximum(intensity, 0.0, out=intensity)
    intensity *= np.float32(nucleus.brightness)
    return slices, occupancy, intensity.astype(np.float32, copy=False)


def _render_ellipsoid(canvas: _Canvas, nucleus: _Nucleus, rng: np.random.Generator):
    """An analytic nucleus before its spots and brightness: a textured ellipsoid with a rippled outline and a
    brighter rim. Returns ``(slices, occupancy, intensity)``, or ``None`` if it is outside the canvas."""
    a, b, c = (float(x) for x in nucleus.semi_axes)
    rot = nucleus.rotation.tolist()  # python floats keep the box arithmetic in float32
    # Axis-aligned bounds of the rotated ellipse (+20 % for the outline harmonics, + 2 voxels).
    ca, sa = math.cos(nucleus.angle), math.sin(nucleus.angle)
    pad_xy = 2.0 * float(canvas.voxel[1:].max())
    half_x = 1.2 * math.hypot(a * ca, b * sa) + pad_xy
    half_y = 1.2 * math.hypot(a * sa, b * ca) + pad_xy
    bound_z = 0.0 if canvas.is_2d else c * 1.2 + (abs(rot[2][1]) + abs(rot[2][2])) * a + 2.0 * canvas.voxel[0]
    half = np.array([bound_z, half_y, half_x])
    got = canvas.box(nucleus.centre - half, nucleus.centre + half)
    if got is None:
        return None
    slices, (zc, yc, xc) = got
    cz, cy, cx = (float(x) for x in nucleus.centre)
    dz, dy, dx = zc - cz, yc - cy, xc - cx
    # Local coordinates along (major, minor, thickness), each scaled by its semi-axis.
    u = (rot[0][0] * dz + rot[0][1] * dy + rot[0][2] * dx) * (1.0 / a)
    v = (rot[1][0] * dz + rot[1][1] * dy + rot[1][2] * dx) * (1.0 / b)
    if canvas.is_2d:
        w = np.zeros((1, 1, 1), dtype=np.float32)
        inv_c = 0.0
    else:
        w = (rot[2][0] * dz + rot[2][1] * dy + rot[2][2] * dx) * (1.0 / c)
        inv_c = 1.0 / c
    r = np.sqrt(u * u + v * v + w * w)
    inv_r = 1.0 / np.maximum(r, np.float32(1e-6))
    # Smooth, irregular outline: a few low angular harmonics modulate the radius.
    phi = np.arctan2(v, u)
    modulation = np.ones_like(phi)
    for k, amp, phase in nucleus.harmonics.tolist():
        modulation += np.float32(amp) * np.cos(np.float32(k) * phi + np.float32(phase))
    r_eff = r / modulation
    # The gradient of r (local frame) gives the distance scale and the surface normal in world axes.
    gu, gv, gw = u * (inv_r / a), v * (inv_r / b), w * (inv_r * inv_c)
    grad = np.maximum(np.sqrt(gu * gu + gv * gv + gw * gw), np.float32(1e-6))
    inv_grad = 1.0 / grad
    normal = tuple((rot[0][i] * gu + rot[1][i] * gv + rot[2][i] * gw) * inv_grad for i in range(3))
    signed = (r_eff - 1.0) * inv_grad
    occupancy = _occupancy_from_distance(signed, normal, canvas.voxel)
    texture = _smooth_noise(rng, occupancy.shape, 0.5 / canvas.voxel)
    depth = np.maximum(-signed, 0.0)
    rim = 1.0 + 0.3 * np.exp(-np.square(depth * (1.0 / 0.7)))
    intensity = occupancy * (1.0 + 0.28 * texture) * rim
    if canvas.is_2d:
        intensity *= 0.35 + 0.65 * np.sqrt(np.clip(1.0 - r_eff * r_eff, 0.0, 1.0))
    return slices, occupancy, intensity


def _add_spots(canvas, intensity, slices, spots, gains, nucleoli, occupancy):
    """Add chromocentres (brighter) and nucleoli (darker), each only within its own small sub-box."""
    origin = np.array([s.start for s in slices])
    box_shape = np.asarray(intensity.shape)
    voxel = canvas.voxel
    for group, is_bright in ((spots, True), (nucleoli, False)):
        for k in range(len(group)):
            centre = group[k, :3]
            sigma = group[k, 3] / 1.2
            reach = 2.5 * sigma
            lo = np.ceil((centre - reach) / voxel - 0.5).astype(int) - origin
            hi = np.floor((centre + reach) / voxel - 0.5).astype(int) - origin + 1
            if canvas.is_2d:
                lo[0], hi[0] = 0, 1
            lo = np.maximum(lo, 0)
            hi = np.minimum(hi, box_shape)
            if np.any(hi <= lo):
                continue
            sub = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
            zc, yc, xc = (
                ((np.arange(lo[i], hi[i]) + origin[i] + 0.5) * voxel[i] - centre[i]).reshape(
                    [-1 if j == i else 1 for j in range(3)]
                )
                for i in range(3)
            )
            d2 = (yc * yc + xc * xc) if canvas.is_2d else (zc * zc + yc * yc + xc * xc)
            bump = np.exp(-d2 / (2.0 * sigma * sigma)).astype(np.float32)
            if is_bright:
                intensity[sub] += np.float32(gains[k]) * bump * occupancy[sub]
            else:
                intensity[sub] *= 1.0 - np.float32(0.35) * bump
    return intensity


def _render_mask_object(
    canvas: _Canvas,
    mask: np.ndarray,
    centre_um: np.ndarray,
    rng: np.random.Generator,
    rim: float,
    texture: float,
    subvoxel: bool = False,
):
    """Resample a soft real-shape mask to the canvas voxel size and place its centroid at ``centre_um``.

    The placement is rounded to whole voxels unless ``subvoxel``, which shifts the resampled mask by the
    remaining fraction (linear interpolation, so its centroid lands on ``centre_um``).
    """
    voxel = canvas.voxel
    src = np.asarray(canvas.shapes_voxel, dtype=np.float64)
    if canvas.is_2d:
        factors = (1.0, src[1] / voxel[1], src[2] / voxel[2])
    else:
        factors = tuple(src / voxel)
    resampled = ndi.zoom(mask, factors, order=1, mode="grid-constant", grid_mode=True, prefilter=False)
    # Re-sharpen around the 0.5 level: the edge ramps over about one target voxel.
    occ = np.clip((resampled - 0.5) * 2.5 + 0.5, 0.0, 1.0).astype(np.float32)
    if canvas.is_2d:
        thickness = occ.sum(axis=0, keepdims=True)
        peak = float(thickness.max())
        if peak <= 0:
            return None
        occ = occ.max(axis=0, keepdims=True)
        profile = 0.35 + 0.65 * thickness / peak
    else:
        profile = None
    total = float(occ.sum())
    if total <= 0:
        return None
    local_centroid = np.array(ndi.center_of_mass(occ))
    target = centre_um / voxel - 0.5
    if canvas.is_2d:
        target[0] = 0.0
        local_centroid[0] = 0.0
    start = np.round(target - local_centroid).astype(int)
    if subvoxel:
        fraction = target - local_centroid - start
        pad = [(0, 0) if canvas.is_2d and axis == 0 else (1, 1) for axis in range(3)]
        occ = ndi.shift(np.pad(occ, pad), fraction, order=1, mode="constant", prefilter=False)
        if profile is not None:
            profile = ndi.shift(np.pad(profile, pad), fraction, order=1, mode="nearest", prefilter=False)
        start = start - np.array([p[0] for p in pad])
    stop = start + np.asarray(occ.shape)
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, np.asarray(canvas.shape))
    if np.any(hi <= lo):
        return None
    crop = tuple(slice(int(l - s), int(h - s)) for l, h, s in zip(lo, hi, start))
    slices = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    occupancy = np.ascontiguousarray(occ[crop])
    sigma = 0.5 / voxel
    tex = _smooth_noise(rng, occupancy.shape, sigma)
    blurred = ndi.gaussian_filter(occupancy, [0 if n == 1 else s for s, n in zip(0.7 / voxel, occupancy.shape)])
    rim_term = 1.0 + rim * 2.0 * np.clip(occupancy - blurred, 0.0, 1.0)
    intensity = occupancy * (1.0 + texture * tex) * rim_term
    if profile is not None:
        intensity = intensity * profile[crop]
    return slices, occupancy, np.clip(intensity, 0.0, None).astype(np.float32)


def _render_capsule_chain(canvas: _Canvas, target: np.ndarray, points: np.ndarray, radius: float, brightness: float):
    """Render a tube (vessel) along a polyline as capsules, combined by maximum into ``target``."""
    voxel = canvas.voxel
    reach = np.array([0.0 if canvas.is_2d else radius, radius, radius]) + 2.0 * voxel
    for i in range(0, len(points) - 1, 2):
        a = points[i]
        b = points[min(i + 2, len(points) - 1)]
        got = canvas.box(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if got is None:
            continue
        slices, (zc, yc, xc) = got
        sz, sy, sx = (float(x) for x in (b - a))
        inv_len2 = 1.0 / max(sz * sz + sy * sy + sx * sx, 1e-9)
        pz = zc - float(a[0]) if not canvas.is_2d else np.zeros((1, 1, 1), dtype=np.float32)
        py = yc - float(a[1])
        px = xc - float(a[2])
        t = np.clip((pz * sz + py * sy + px * sx) * inv_len2, 0.0, 1.0)
        qz, qy, qx = pz - t * sz, py - t * sy, px - t * sx
        dist = np.sqrt(qz * qz + qy * qy + qx * qx)
        inv = 1.0 / np.maximum(dist, np.float32(1e-6))
        occ = _occupancy_from_distance(dist - radius, (qz * inv, qy * inv, qx * inv), voxel)
        rel = np.clip(dist * (1.0 / radius), 0.0, 1.0)
        if canvas.is_2d:
            wall = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - rel * rel, 0.0, 1.0))
        else:
            wall = 0.55 + 0.45 * rel * rel  # stained wall brighter than the lumen
        value = occ * wall * np.float32(brightness)
        np.maximum(target[slices], value, out=target[slices])


def _render_cytoplasm(cfg: SimConfig, scene: _Scene) -> Optional[np.ndarray]:
    """Faint, smooth Golgi-marker signal filling each cell around its nucleus and Golgi.

    Rendered as anisotropic Gaussians on a grid about 2 µm coarse (it has no fine detail) and
    interpolated back, so it costs a few tens of milliseconds for a whole volume.
    """
    if cfg.cytoplasm_level <= 0 or not scene.nuclei:
        return None
    shape = np.asarray(cfg.shape)
    voxel = np.asarray(cfg.voxel_size)
    factors = np.maximum(1, np.round(np.array([1.0, 2.0, 2.0]) / voxel)).astype(int)
    factors = np.minimum(factors, shape)
    coarse_shape = [int(math.ceil(n / f)) for n, f in zip(shape, factors)]
    axes_um = [((np.arange(c) + 0.5) * f * v) for c, f, v in zip(coarse_shape, factors, voxel)]
    zc = axes_um[0].reshape(-1, 1, 1)
    yc = axes_um[1].reshape(1, -1, 1)
    xc = axes_um[2].reshape(1, 1, -1)
    coarse = np.zeros(coarse_shape, dtype=np.float64)
    for nucleus, golgi in zip(scene.nuclei, scene.golgi):
        a, b, c = nucleus.semi_axes
        centre = nucleus.centre.copy()
        if golgi is not None:
            centre = centre + 0.35 * (golgi.centre - centre)
        ca, sa = math.cos(nucleus.angle), math.sin(nucleus.angle)
        dy, dx = yc - centre[1], xc - centre[2]
        along = (dy * sa + dx * ca) / (1.0 * a)
        across = (dy * ca - dx * sa) / (1.2 * b)
        planar = np.exp(-0.5 * (along * along + across * across))
        if cfg.is_2d:
            blob = planar
        else:
            blob = planar * np.exp(-0.5 * ((zc - centre[0]) / (0.9 * c)) ** 2)
        coarse += nucleus.brightness * blob
    coarse *= cfg.cytoplasm_level
    mz, my, mx = (_upsample_matrix(n, c, f) for n, c, f in zip(shape, coarse_shape, factors))
    out = np.tensordot(coarse.astype(np.float32), mx, axes=(2, 1))
    out = np.tensordot(my, out, axes=(1, 1))
    out = np.tensordot(mz, out, axes=(1, 1))
    return np.ascontiguousarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# The scene's objects and the ground truth
# ----------------------------------------------------------------------------------------------
@dataclass
class _GroundTruth:
    """The pairs one simulation records, and why the other cells were left out.

    Attributes
    ----------
    nuclei, golgi : list of ndarray
        Centroids ``(z, y, x)`` in voxels, one of each per recorded pair.
    dropped : dict
        Cells left out, by reason: ``nucleus_outside`` (centre outside the field, or nothing rendered),
        ``golgi_missing``, ``golgi_outside`` and ``too_long`` (longer than :data:`MAX_PAIR_LENGTH_UM`).
    layout_error_um : float, optional
        With a given layout: the largest distance (µm) of a rendered centroid from its point.
    """

    nuclei: list[np.ndarray] = field(default_factory=list)
    golgi: list[np.ndarray] = field(default_factory=list)
    dropped: dict[str, int] = field(
        default_factory=lambda: {"nucleus_outside": 0, "golgi_missing": 0, "golgi_outside": 0, "too_long": 0}
    )
    layout_error_um: Optional[float] = None


def _render_distractors(canvas: _Canvas, scene: _Scene) -> None:
    """Vessels and specks into the Golgi channel (the brightest specks faintly into the nuclei too) and
    nuclear fragments into the nucleus channel. Vessels combine by maximum; specks and fragments add."""
    for points, radius, brightness in scene.vessels:
        _render_capsule_chain(canvas, canvas.golgi, points, radius, brightness)
    if len(scene.dirt):
        for row in scene.dirt:
            got = _render_spheres(canvas, row[None, :4])
            if got is not None:
                slices, _occ, value = got
                canvas.golgi[slices] += value * np.float32(row[4])
                canvas.nuclei[slices] += value * np.float32(0.3 * row[4] * (row[4] > 4.5))
    for spheres, brightness in scene.fragments:
        got = _render_spheres(canvas, spheres, flat=0.8)
        if got is not None:
            slices, _occ, value = got
            canvas.nuclei[slices] += value * np.float32(brightness)


def _render_random_cells(cfg: SimConfig, canvas: _Canvas, scene: _Scene, rng: np.random.Generator) -> _GroundTruth:
    """Render the cells of a random layout and record the pairs an annotator would click.

    A pair is recorded where the nucleus centre and the Golgi lie in the field, both are visible, and the
    rendered centroids are at most :data:`MAX_PAIR_LENGTH_UM` apart.
    """
    truth = _GroundTruth()
    voxel = np.asarray(cfg.voxel_size)
    extent = np.asarray(cfg.shape) * voxel  # field of view, µm
    for nucleus, golgi in zip(scene.nuclei, scene.golgi):
        nucleus_centroid = _paint_nucleus(canvas, nucleus, rng)
        golgi_centroid = None if golgi is None else _paint_golgi(canvas, golgi, rng)
        if not _in_field(nucleus.centre, extent) or nucleus_centroid is None:
            truth.dropped["nucleus_outside"] += 1
            continue
        if golgi is None or golgi_centroid is None:
            truth.dropped["golgi_missing"] += 1
            continue
        if not _in_field(golgi.centre, extent):
            truth.dropped["golgi_outside"] += 1
            continue
        length = float(np.linalg.norm((golgi_centroid - nucleus_centroid) * voxel))
        if not 0.0 < length <= MAX_PAIR_LENGTH_UM:
            truth.dropped["too_long"] += 1
            continue
        truth.nuclei.append(nucleus_centroid)
        truth.golgi.append(golgi_centroid)
    return truth


def _in_field(point_um: np.ndarray, extent: np.ndarray) -> bool:
    """Whether ``point_um`` (scene µm) lies in a field of view of ``extent`` µm."""
    return bool(np.all(point_um >= -1e-9) and np.all(point_um <= extent + 1e-9))


def _paint_nucleus(canvas: _Canvas, nucleus: _Nucleus, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Render a nucleus into the nucleus channel; its centroid (voxels), or ``None`` if it is not visible."""
    rendered = _render_nucleus(canvas, nucleus, rng)
    if rendered is None:
        return None
    slices, occupancy, intensity = rendered
    # Nuclei cannot interpenetrate: where two touch, the brighter one is what you see.
    np.maximum(canvas.nuclei[slices], intensity, out=canvas.nuclei[slices])
    return canvas.centroid(slices, occupancy)


def _paint_golgi(canvas: _Canvas, golgi: _Golgi, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Render a Golgi into the Golgi channel; its centroid (voxels), or ``None`` if it is not visible."""
    if golgi.shape_mask is not None:
        rendered = _render_mask_object(canvas, golgi.shape_mask, golgi.centre, rng, 0.0, 0.25)
    else:
        rendered = _render_spheres(canvas, golgi.spheres, golgi.flat, golgi.weights)
    if rendered is None:
        return None
    slices, occupancy, intensity = rendered
    _composite_golgi(canvas, golgi, slices, intensity, rng)
    return canvas.centroid(slices, occupancy)


def _composite_golgi(canvas: _Canvas, golgi: _Golgi, slices, intensity: np.ndarray, rng: np.random.Generator) -> None:
    """Texture (blob Golgi only) and brighten a rendered Golgi, then combine it into the Golgi channel by maximum."""
    if golgi.shape_mask is None:
        tex = _smooth_noise(rng, intensity.shape, 0.4 / canvas.voxel)
        intensity = intensity * np.clip(1.0 + 0.2 * tex, 0.3, None)
    intensity *= np.float32(golgi.brightness)
    np.maximum(canvas.golgi[slices], intensity, out=canvas.golgi[slices])


def _render_centred(canvas: _Canvas, render, target_vox: np.ndarray, seed: int, tolerance_um: float = 0.002):
    """Render an object so that its occupancy-weighted centroid lies on ``target_vox``.

    ``render(offset_um, rng)`` renders the object moved by ``offset_um``; it is re-rendered with the moved
    offset (and a fresh generator from ``seed``, so its texture does not change) until the centroid is
    within ``tolerance_um`` or four tries are spent.

    Returns
    -------
    rendered : tuple or None
        ``(slices, occupancy, intensity)`` of the last try, ``None`` if the object is not visible.
    error_um : float
        Distance from the rendered centroid to the target (``inf`` when not visible).
    """
    offset = np.zeros(3)
    rendered, error = None, math.inf
    for _try in range(4):
        rendered = render(offset, np.random.default_rng(seed))
        if rendered is None:
            return None, math.inf
        centroid = canvas.centroid(rendered[0], rendered[1])
        if centroid is None:
            return None, math.inf
        miss = (target_vox - centroid) * canvas.voxel
        if canvas.is_2d:
            miss[0] = 0.0
        error = float(np.linalg.norm(miss))
        if error <= tolerance_um:
            break
        offset = offset + miss
    return rendered, error


def _render_layout_cells(
    cfg: SimConfig, canvas: _Canvas, scene: _Scene, rng: np.random.Generator
) -> _GroundTruth:
    """Render the cells of a given layout, each object centred on its point; the ground truth is the layout
    itself (voxels), with the largest distance (µm) of a rendered centroid from its point."""
    voxel = canvas.voxel
    nuclei_gt = [np.asarray(p, dtype=np.float64) / voxel for p in cfg.layout_um[0]]
    golgi_gt = [np.asarray(p, dtype=np.float64) / voxel for p in cfg.layout_um[1]]
    worst = 0.0

    def moved_nucleus(nucleus: _Nucleus, offset: np.ndarray) -> _Nucleus:
        spots, nucleoli = nucleus.spots.copy(), nucleus.nucleoli.copy()
        spots[:, :3] += offset
        nucleoli[:, :3] += offset
        return dataclasses.replace(nucleus, centre=nucleus.centre + offset, spots=spots, nucleoli=nucleoli)

    for nucleus, golgi, target_n, target_g in zip(scene.nuclei, scene.golgi, nuclei_gt, golgi_gt):
        def render_n(offset, gen, nucleus=nucleus):
            return _render_nucleus(canvas, moved_nucleus(nucleus, offset), gen, subvoxel=True)
        rendered, error = _render_centred(canvas, render_n, target_n, int(rng.integers(2**63)))
        worst = max(worst, error)
        if rendered is not None:
            slices, _occupancy, intensity = rendered
            np.maximum(canvas.nuclei[slices], intensity, out=canvas.nuclei[slices])

        if golgi.shape_mask is not None:
            def render_g(offset, gen, golgi=golgi):
                return _render_mask_object(canvas, golgi.shape_mask, golgi.centre + offset, gen, 0.0, 0.25,
                                           subvoxel=True)
        else:
            def render_g(offset, gen, golgi=golgi):
                spheres = golgi.spheres.copy()
                spheres[:, :3] += offset
                return _render_spheres(canvas, spheres, golgi.flat, golgi.weights)
        rendered, error = _render_centred(canvas, render_g, target_g, int(rng.integers(2**63)))
        worst = max(worst, error)
        if rendered is not None:
            _composite_golgi(canvas, golgi, rendered[0], rendered[2], rng)
    return _GroundTruth(nuclei_gt, golgi_gt, layout_error_um=worst)
