"""Positions in an image: one checked ``(z, y, x)`` point, and snapping a click to an intensity peak.

Positions are voxel coordinates ``(z, y, x)``, 0-based floats, as in :class:`~app.core.pairs.PairSet`;
distances are in µm through the voxel size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.volume import parse_voxel_size

#: A position in voxels, ``(z, y, x)``.
Point = tuple[float, float, float]


def as_point(values: Sequence[float]) -> Point:
    """``values`` as a :data:`Point` of three Python floats.

    Raises
    ------
    CellPolError
        If ``values`` is not three finite numbers.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise CellPolError(f"A position must be three finite numbers (z, y, x), got {values!r}.")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def snap_to_peak(
    image: np.ndarray,
    position: Sequence[float],
    voxel_size: Sequence[float],
    radius_um: float,
    *,
    free_axis: Optional[int] = None,
    sigma_um: Optional[float] = None,
) -> Point:
    """The local intensity peak of ``image`` within ``radius_um`` of ``position``.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        One channel (the nucleus channel for a nucleus, the Golgi channel for a Golgi).
    position : (z, y, x)
        Where the user clicked, in voxels.
    voxel_size : (z, y, x)
        Voxel size in µm.
    radius_um : float
        Search radius (an ellipsoid in voxels on anisotropic data). ``0`` returns ``position``.
    free_axis : int, optional
        Search this whole axis (a click on a maximum-intensity projection has no depth: the peak along the
        projection ray gives it).
    sigma_um : float, optional
        Gaussian smoothing before taking the maximum, so shot noise does not win (default
        ``max(radius_um / 3, 0.3)``).

    Returns
    -------
    (z, y, x)
        Voxel coordinates of the peak (whole voxels), the clicked position when the neighbourhood is flat.

    Raises
    ------
    CellPolError
        If ``image`` is not 3D or ``position`` is not three finite numbers.
    """
    # Deliberately lazy: scipy.ndimage takes ~0.25 s to import and the app imports this module at start-up
    # (through app.ui.state); it is loaded at the first snap.
    from scipy import ndimage

    image = np.asarray(image)
    if image.ndim != 3:
        raise CellPolError(f"snap_to_peak needs a (Z, Y, X) image, got shape {image.shape}.")
    pos = np.asarray(as_point(position))
    shape = np.asarray(image.shape)
    pos = np.clip(pos, 0, shape - 1)
    if radius_um <= 0:
        if free_axis is None:
            return as_point(pos)
        fixed = [a for a in range(3) if a != free_axis]
        pos[fixed] = np.round(pos[fixed])  # the peak along the ray through the clicked voxel
    scale = np.asarray(parse_voxel_size(voxel_size), dtype=np.float64)
    sigma = float(sigma_um) if sigma_um is not None else max(radius_um / 3.0, 0.3)
    sigma_vox = sigma / scale
    reach = np.ceil(max(radius_um, 0.0) / scale).astype(int)
    pad = np.ceil(3 * sigma_vox).astype(int)
    lo = np.maximum(np.round(pos).astype(int) - reach - pad, 0)
    hi = np.minimum(np.round(pos).astype(int) + reach + pad + 1, shape)
    if free_axis is not None:
        lo[free_axis], hi[free_axis] = 0, shape[free_axis]
    crop = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    smooth = ndimage.gaussian_filter(crop, sigma_vox, mode="nearest")
    grids = np.meshgrid(*[np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij")
    distance2 = np.zeros(crop.shape, dtype=np.float64)
    for axis in range(3):
        if axis != free_axis:
            distance2 += ((grids[axis] - pos[axis]) * scale[axis]) ** 2
    inside = distance2 <= max(radius_um, 0.0) ** 2 + 1e-9
    if not inside.any():
        return as_point(pos)
    values = np.where(inside, smooth, -np.inf)
    peak = values.max()
    if not np.isfinite(peak) or peak <= smooth[inside].min():
        return as_point(pos)  # flat: nothing to snap to
    # Ties: the candidate closest to the click.
    candidates = np.argwhere(values == peak)
    best = candidates[np.argmin(distance2[tuple(candidates.T)])]
    return as_point(best + lo)
