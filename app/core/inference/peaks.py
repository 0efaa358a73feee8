"""Centroid peaks of a stitched heatmap (step 5 of :mod:`app.core.inference`).

Local maxima above an absolute threshold (on the host: :func:`_local_maxima`; on a GPU, before the heatmap
comes back: :func:`device_local_maxima`), thinned greedily so no two peaks of a class are closer than a
minimum distance in µm unless a valley separates them (:func:`_thin`, :func:`_valley`), refined to sub-voxel
precision (:func:`refine_peaks`); :func:`find_peaks` does all of it. :func:`ridge_scores` tells a peak on a
tube of the heatmap (a vessel) from a compact one, for pairing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch.nn import functional as F

#: Above this fraction of voxels over the threshold, local maxima come from a dense maximum filter.
_DENSE_FRACTION = 0.05
#: At most this many peaks per class are kept (the highest): beyond it the thresholds are far too low for
#: the image, and pairing would only slow to a crawl on meaningless detections.
MAX_PEAKS = 10_000

_NEIGHBOURS = np.array(
    [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)]
)


def _local_maxima(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """Integer ``(N, 3)`` positions above ``threshold`` that are ≥ all their 26 neighbours.

    Works on the above-threshold voxels only, so a sparse heatmap costs one comparison pass; where much of
    the volume is above the threshold (a threshold below the background) a dense 3×3×3 maximum filter is
    cheaper than listing every voxel.
    """
    mask = heatmap > threshold
    count = int(np.count_nonzero(mask))
    if count == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if count > _DENSE_FRACTION * heatmap.size:
        mask &= heatmap >= ndimage.maximum_filter(heatmap, size=3, mode="nearest")
        return np.argwhere(mask)
    coords = np.argwhere(mask)
    del mask
    shape = np.asarray(heatmap.shape)
    values = heatmap[tuple(coords.T)]
    keep = np.ones(len(coords), dtype=bool)
    for offset in _NEIGHBOURS:
        if not keep.any():
            break
        idx = np.flatnonzero(keep)
        nb = np.clip(coords[idx] + offset, 0, shape - 1)  # outside the image: compares with itself
        keep[idx] = heatmap[tuple(nb.T)] <= values[idx]
    return coords[keep]


@dataclass(frozen=True)
class LocalMaxima:
    """Every local maximum of a heatmap above ``floor``: what :func:`_local_maxima` finds at that threshold."""

    coords: np.ndarray  # (N, 3) int64 voxels
    values: np.ndarray  # (N,) heatmap values
    floor: float


#: Lowest peak threshold whose local maxima a GPU prediction finds on the GPU (lower ones: on the host).
DEVICE_MAXIMA_FLOOR = 0.05


def device_local_maxima(heatmap: torch.Tensor, floor: float = DEVICE_MAXIMA_FLOOR) -> LocalMaxima:
    """:func:`_local_maxima` computed where ``heatmap`` (a ``(Z, Y, X)`` tensor) is: a voxel above ``floor``
    that is ≥ its 26 neighbours (a 3×3×3 max-pool, whose padding never wins: outside does not count).

    Parameters
    ----------
    heatmap : Tensor, shape (Z, Y, X)
    floor : float
        Only voxels above it count; :func:`find_peaks` uses the result for any threshold at or above it.

    Returns
    -------
    LocalMaxima
        On the host.
    """
    neighbourhood = F.max_pool3d(heatmap[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    mask = (heatmap >= neighbourhood) & (heatmap > floor)
    del neighbourhood
    coords = torch.nonzero(mask)
    return LocalMaxima(coords.cpu().numpy().astype(np.int64), heatmap[mask].float().cpu().numpy(), float(floor))


def _thin(coords: np.ndarray, values: np.ndarray, min_distance_um: float, voxel_size: Sequence[float],
          heatmap: Optional[np.ndarray] = None, valley_ratio: float = 0.0) -> np.ndarray:
    """Indices of peaks kept by greedy thinning: highest first, dropping any closer than ``min_distance_um``.

    With ``valley_ratio`` r > 0 (and the ``heatmap``), a peak closer than that to a kept one is dropped only
    if the two lie on one hill: it survives when the heatmap along the straight segment to *every* kept
    peak within reach dips below r × its own height (two touching Golgi with a valley between them stay
    two; the shoulder of one elongated blob does not become a second peak). r = 0: plain thinning.
    """
    order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0], -values))  # deterministic ties
    if min_distance_um <= 0 or len(coords) < 2:
        return order
    points = coords * np.asarray(voxel_size, dtype=np.float64)
    tree = cKDTree(points)
    radius = float(min_distance_um) * (1.0 - 1e-9)  # exactly min_distance apart is allowed
    kept = []
    if valley_ratio <= 0 or heatmap is None:
        suppressed = np.zeros(len(coords), dtype=bool)
        for i in order:
            if suppressed[i]:
                continue
            kept.append(i)
            suppressed[tree.query_ball_point(points[i], radius)] = True
        return np.asarray(kept, dtype=np.int64)
    is_kept = np.zeros(len(coords), dtype=bool)
    limit = np.asarray(heatmap.shape) - 1
    for i in order:
        rivals = [k for k in tree.query_ball_point(points[i], radius) if is_kept[k]]
        if all(_valley(heatmap, coords[i], coords[k], limit) < valley_ratio * values[i] for k in rivals):
            kept.append(i)
            is_kept[i] = True
    return np.asarray(kept, dtype=np.int64)


def _valley(heatmap: np.ndarray, a: np.ndarray, b: np.ndarray, limit: np.ndarray) -> float:
    """Lowest heatmap value on the segment between voxels ``a`` and ``b`` (nearest voxels, 2 per voxel step)."""
    steps = max(2, 2 * int(np.abs(b - a).max()) + 1)
    line = np.clip(np.rint(a + np.linspace(0.0, 1.0, steps)[:, None] * (b - a)).astype(np.int64), 0, limit)
    return float(heatmap[tuple(line.T)].min())


#: In-plane axes (unit vectors ``(z, y, x)``) along which :func:`ridge_scores` looks for a ridge: 8, 22.5° apart.
RIDGE_AXES = np.stack([np.zeros(8), np.sin(np.arange(8) * np.pi / 8), np.cos(np.arange(8) * np.pi / 8)], axis=1)


def ridge_scores(heatmap: np.ndarray, voxels: np.ndarray, heights: np.ndarray, radius_um: float,
                 voxel_size: Sequence[float]) -> np.ndarray:
    """How far each peak lies on a ridge of ``heatmap`` rather than on a compact hill, in [0, 1].

    For every in-plane axis of :data:`RIDGE_AXES` the heatmap is read ``radius_um`` µm away on both sides
    of the peak voxel (nearest voxel; outside the image counts as 0); the lower of the two, as a fraction of
    the peak's height, is that axis' value and the score is the largest over the axes. A compact peak
    (a Golgi) scores near 0; a peak on a tube (a vessel in the Golgi channel) near 1, because the heatmap
    stays high along the tube on both sides. In-plane, so 2D images work alike and a cell layer's z
    neighbours do not count; a tube tilted out of the plane still reads as a ridge in it.

    Parameters
    ----------
    heatmap : ndarray, shape (Z, Y, X)
    voxels : ndarray of int, shape (N, 3)
        Peak voxels (as :func:`find_peaks` returns them).
    heights : ndarray, shape (N,)
        The heatmap at those voxels.
    radius_um : float
        How far from the peak to look (µm).
    voxel_size : sequence of float
        ``(z, y, x)`` µm of ``heatmap``.
    """
    voxels = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    if len(voxels) == 0:
        return np.zeros(0)
    limit = np.asarray(heatmap.shape) - 1
    offsets = RIDGE_AXES * float(radius_um) / np.asarray(voxel_size, dtype=np.float64)  # (A, 3) voxels
    sides = []
    for sign in (1.0, -1.0):
        points = np.rint(voxels[:, None, :] + sign * offsets[None, :, :]).astype(np.int64)  # (N, A, 3)
        inside = np.all((points >= 0) & (points <= limit), axis=2)
        points = np.clip(points, 0, limit)
        sides.append(np.where(inside, heatmap[points[..., 0], points[..., 1], points[..., 2]], 0.0))
    both = np.minimum(sides[0], sides[1]) / np.maximum(np.asarray(heights, dtype=np.float64), 1e-6)[:, None]
    return np.clip(both.max(axis=1), 0.0, 1.0)


def refine_peaks(heatmap: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sub-voxel positions ``(N, 3)`` of integer peaks by a log-Gaussian fit in the 3×3×3 neighbourhood.

    Along each axis the log heatmap, averaged over the 3×3 plane at offsets −1, 0, +1, is fitted by a
    parabola whose vertex is the offset (exact for an axis-aligned Gaussian), clipped to ±0.5 voxel. Axes
    where the peak touches the image border (or the image is one voxel thick) are not refined.

    Parameters
    ----------
    heatmap : ndarray, shape (Z, Y, X)
    coords : ndarray of int, shape (N, 3)
        Peak voxels.

    Returns
    -------
    ndarray of float64, shape (N, 3)
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    if len(coords) == 0:
        return np.zeros((0, 3))
    shape = np.asarray(heatmap.shape)
    grid = np.stack(np.meshgrid(*(np.arange(-1, 2),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)  # (27, 3)
    idx = np.clip(coords[:, None, :] + grid[None, :, :], 0, shape - 1)
    block = heatmap[idx[..., 0], idx[..., 1], idx[..., 2]].astype(np.float64).reshape(-1, 3, 3, 3)
    logs = np.log(np.maximum(block, 1e-12))
    out = coords.astype(np.float64)
    for axis in range(3):
        other = tuple(a for a in (1, 2, 3) if a != axis + 1)
        means = logs.mean(axis=other)  # (N, 3): offsets -1, 0, +1 along this axis
        minus, centre, plus = means[:, 0], means[:, 1], means[:, 2]
        curvature = plus + minus - 2.0 * centre
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(curvature < -1e-12, -(plus - minus) / (2.0 * curvature), 0.0)
        interior = (coords[:, axis] > 0) & (coords[:, axis] < shape[axis] - 1)
        out[:, axis] += np.where(interior, np.clip(delta, -0.5, 0.5), 0.0)
    return out


class Peaks(NamedTuple):
    """The peaks of one class: what :func:`find_peaks` returns, with names (a tuple all the same)."""

    positions: np.ndarray  # (N, 3) sub-voxel, voxels (z, y, x), highest peak first
    voxels: np.ndarray  # (N, 3) int64 peak voxels
    heights: np.ndarray  # (N,) heatmap values there


def find_peaks(
    heatmap: np.ndarray, threshold: float, min_distance_um: float, voxel_size: Sequence[float],
    max_peaks: int = MAX_PEAKS, valley_ratio: float = 0.0, maxima: Optional[LocalMaxima] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid peaks of a ``(Z, Y, X)`` heatmap.

    Parameters
    ----------
    heatmap : ndarray
        Stitched heatmap (values in [0, 1]).
    threshold : float
        Absolute threshold: only voxels with a value above it can be peaks.
    min_distance_um : float
        No two peaks closer than this (µm, so an ellipsoid in voxels on anisotropic data); the higher wins.
    voxel_size : sequence of float
        ``(z, y, x)`` µm of ``heatmap``.
    max_peaks : int
        Keep at most this many (the highest).
    valley_ratio : float
        0: plain minimum distance. r > 0: a nearer peak is kept where a valley deeper than r × its height
        separates it from the higher ones (:func:`_thin`).
    maxima : LocalMaxima, optional
        The heatmap's local maxima found beforehand (:func:`device_local_maxima`, on a GPU); used when
        ``threshold`` is at or above their floor, else they are searched here.

    Returns
    -------
    positions : ndarray, shape (N, 3)
        Sub-voxel positions (voxels ``(z, y, x)``), highest peak first.
    voxels : ndarray, shape (N, 3)
        The integer peak voxels.
    heights : ndarray, shape (N,)
        Heatmap values at those voxels.

    Examples
    --------
    Two blobs on one plane; the fainter one is kept because it lies farther than 3 µm from the brighter:

    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:20, 0:20]
    >>> heatmap = (np.exp(-((yy - 5) ** 2 + (xx - 6) ** 2) / 4.0)
    ...            + 0.8 * np.exp(-((yy - 14) ** 2 + (xx - 12) ** 2) / 4.0))[None].astype(np.float32)
    >>> positions, voxels, heights = find_peaks(heatmap, 0.3, 3.0, (1.0, 0.5, 0.5))
    >>> voxels.tolist(), heights.round(2).tolist()
    ([[0, 5, 6], [0, 14, 12]], [1.0, 0.8])
    >>> len(find_peaks(heatmap, 0.9, 3.0, (1.0, 0.5, 0.5))[0])   # above the fainter one's height
    1
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 3:
        raise ValueError(f"find_peaks expects a (Z, Y, X) heatmap, got shape {heatmap.shape}.")
    if maxima is not None and threshold >= maxima.floor:
        coords = maxima.coords[maxima.values > threshold]
    else:
        coords = _local_maxima(heatmap, float(threshold))
    values = heatmap[tuple(coords.T)].astype(np.float64) if len(coords) else np.zeros(0)
    if len(coords) > 20 * max_peaks:  # thinning keeps the highest anyway; skip hopeless candidates
        top = np.argpartition(-values, 20 * max_peaks)[: 20 * max_peaks]
        coords, values = coords[top], values[top]
    keep = _thin(coords, values, float(min_distance_um), voxel_size, heatmap, float(valley_ratio))[:max_peaks]
    coords, values = coords[keep], values[keep]
    return refine_peaks(heatmap, coords), coords, values
