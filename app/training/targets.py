"""Training targets: Gaussian centroid heatmaps and per-pair neighbourhood labels.

For each object (nucleus or Golgi of pair ``k``) a Gaussian kernel

    exp(-|(p - c) * voxel_size|² / (2 σ²))          (distances in µm)

is placed at its sub-voxel centroid ``c``. The width σ is given in µm per class (defaults: nucleus 2.0 µm,
Golgi 1.0 µm) and converted per axis through the voxel size, so on an anisotropic stack the kernel is round
in physical space. (The reference code used fixed voxel radii, flat in z, and a half-voxel-offset 2×2×2
peak plateau; both are fixed here: the peak value 1.0 sits exactly at the centroid and a centroid on a
voxel centre gives that voxel exactly 1.0.) The kernel is cut to 0 beyond ``truncate`` σ.

- Heatmap of a class: the voxel-wise **max** over its kernels.
- Labels of a class (int32): voxel gets ``k + 1`` (``k`` = row index of the pair) where pair ``k``'s kernel
  is the largest kernel there *and* exceeds ``mask_threshold`` (0.5); else 0. Nucleus and Golgi of one pair
  share the label, in separate volumes. Ties go to the lower pair index.

Pairs cut by the patch border (the choice made here, see also :func:`pairs_for_patch`): positions are in
patch coordinates and may lie outside the patch. Every object contributes the part of its kernel that falls
inside, and its label on those voxels, whatever happens to its partner; so a pair whose nucleus is inside
and Golgi outside still gets a nucleus peak and label (the reference code dropped such pairs entirely,
teaching the network that those nuclei are background). Labels are the input row index + 1 and are never
renumbered, so labels of pairs entirely outside are simply absent (the loss handles gaps).

2D: give ``patch_shape`` as ``(Y, X)`` (arrays are ``(Y, X)``; positions may be ``(N, 2)`` or ``(N, 3)``
with z ignored) or as ``(1, Y, X)`` (a single plane; z offsets are ignored).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.volume import parse_voxel_size

CLASSES = ("nucleus", "golgi")
DEFAULT_SIGMA_UM = {"nucleus": 2.0, "golgi": 1.0}
DEFAULT_TRUNCATE = 3.0
DEFAULT_MASK_THRESHOLD = 0.5

PairsLike = Union[PairSet, tuple[np.ndarray, np.ndarray]]
SigmaLike = Union[float, Sequence[float], Mapping[str, float], None]


def sigma_voxels(sigma_um: float, voxel_size: Sequence[float]) -> np.ndarray:
    """Per-axis kernel width in voxels ``(z, y, x)`` for a width of ``sigma_um`` µm."""
    return float(sigma_um) / np.asarray(voxel_size, dtype=np.float64)


def _sigmas(sigma_um: SigmaLike) -> dict[str, float]:
    if sigma_um is None:
        out = dict(DEFAULT_SIGMA_UM)
    elif isinstance(sigma_um, Mapping):
        unknown = set(sigma_um) - set(CLASSES)
        if unknown:
            raise CellPolError(f"sigma_um: unknown class(es) {sorted(unknown)}; use 'nucleus' and 'golgi'.")
        out = {**DEFAULT_SIGMA_UM, **{k: float(v) for k, v in sigma_um.items()}}
    elif isinstance(sigma_um, (int, float)):
        out = {c: float(sigma_um) for c in CLASSES}
    else:
        values = [float(v) for v in sigma_um]
        if len(values) != 2:
            raise CellPolError(f"sigma_um needs two values (nucleus, Golgi) in µm, got {len(values)}.")
        out = dict(zip(CLASSES, values))
    for name, value in out.items():
        if not (math.isfinite(value) and value > 0):
            raise CellPolError(f"The {name} kernel width must be a positive number of µm, got {value}.")
    return out


def _points(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise CellPolError(f"{what} positions must be (N, 3) (z, y, x) or (N, 2) (y, x); got shape {arr.shape}.")
    if arr.shape[1] == 2:
        arr = np.concatenate([np.zeros((len(arr), 1)), arr], axis=1)
    if not np.all(np.isfinite(arr)):
        raise CellPolError(f"{what} positions contain NaN or infinite values.")
    return arr


def _render_class(
    points: np.ndarray,
    shape: tuple[int, int, int],
    sigma_vox: np.ndarray,
    truncate: float,
    mask_threshold: float,
    ignore_z: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Max-merged heatmap and dominant-kernel labels of one class on a (Z, Y, X) canvas."""
    best = np.zeros(shape, dtype=np.float64)
    owner = np.full(shape, -1, dtype=np.int64)
    radius = truncate * sigma_vox
    floor_value = math.exp(-0.5 * truncate**2)  # cut-off on the radial (not the box) distance
    for index, centre in enumerate(points):
        axes = []
        for axis in range(3):
            if axis == 0 and ignore_z:
                axes.append((0, 1, np.ones(1)))
                continue
            lo = max(int(math.ceil(centre[axis] - radius[axis])), 0)
            hi = min(int(math.floor(centre[axis] + radius[axis])), shape[axis] - 1)
            if lo > hi:
                break
            coords = np.arange(lo, hi + 1, dtype=np.float64)
            axes.append((lo, hi + 1, np.exp(-0.5 * ((coords - centre[axis]) / sigma_vox[axis]) ** 2)))
        else:
            # A Gaussian is separable: the outer product of 1D profiles equals exp(-d²/2σ²) in µm.
            kernel = axes[0][2][:, None, None] * axes[1][2][None, :, None] * axes[2][2][None, None, :]
            kernel[kernel < floor_value] = 0.0
            region = tuple(slice(a[0], a[1]) for a in axes)
            current = best[region]
            wins = kernel > current
            current[wins] = kernel[wins]
            owner[region][wins] = index
    labels = np.where(best > mask_threshold, owner + 1, 0).astype(np.int32)
    return best.astype(np.float32), labels


def make_targets(
    pairs: PairsLike,
    patch_shape: Sequence[int],
    voxel_size: Optional[Sequence[float]] = None,
    sigma_um: SigmaLike = None,
    *,
    truncate: float = DEFAULT_TRUNCATE,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
) -> dict[str, np.ndarray]:
    """Heatmaps and neighbourhood labels for the pairs of one patch.

    Parameters
    ----------
    pairs : PairSet or (nuclei, golgi)
        Positions in **patch** voxel coordinates ``(z, y, x)``, row-aligned; may lie outside the patch.
    patch_shape : sequence of int
        ``(Z, Y, X)``, or ``(Y, X)`` for 2D.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm; defaults to ``pairs.voxel_size``. In 2D only y and x matter.
    sigma_um : float, (nucleus, golgi) or {"nucleus": .., "golgi": ..}, optional
        Kernel width σ in µm; default nucleus 2.0, Golgi 1.0.
    truncate : float
        Kernels are 0 beyond this many σ.
    mask_threshold : float
        A voxel is in a pair's neighbourhood where that pair's kernel is the largest and exceeds this.

    Returns
    -------
    dict
        ``heatmap_nucleus``, ``heatmap_golgi`` (float32, peak 1.0) and ``labels_nucleus``, ``labels_golgi``
        (int32, 0 = background, ``k + 1`` = pair ``k``), each of shape ``patch_shape``.
    """
    if isinstance(pairs, PairSet):
        nuclei, golgi = pairs.nuclei, pairs.golgi
        if voxel_size is None:
            voxel_size = pairs.voxel_size
    else:
        try:
            nuclei, golgi = pairs
        except (TypeError, ValueError):
            raise CellPolError("pairs must be a PairSet or a (nuclei, golgi) tuple of (N, 3) arrays.") from None
    nuclei, golgi = _points(nuclei, "Nucleus"), _points(golgi, "Golgi")
    if len(nuclei) != len(golgi):
        raise CellPolError(f"{len(nuclei)} nuclei but {len(golgi)} Golgi: pairs must be row-aligned.")
    if voxel_size is None:
        raise CellPolError("make_targets needs the voxel size (z, y, x) in µm to size the kernels.")
    voxel = np.asarray(parse_voxel_size(voxel_size), dtype=np.float64)

    shape_in = tuple(int(s) for s in patch_shape)
    if len(shape_in) not in (2, 3) or min(shape_in) < 1:
        raise CellPolError(f"patch_shape must be (Z, Y, X) or (Y, X) with positive sizes, got {tuple(patch_shape)}.")
    canvas = shape_in if len(shape_in) == 3 else (1,) + shape_in
    ignore_z = canvas[0] == 1
    if not (math.isfinite(truncate) and truncate > 0):
        raise CellPolError(f"truncate must be positive, got {truncate}.")
    if not 0.0 <= mask_threshold < 1.0:
        raise CellPolError(f"mask_threshold must be in [0, 1), got {mask_threshold}.")

    out: dict[str, np.ndarray] = {}
    for name, points in zip(CLASSES, (nuclei, golgi)):
        sig = sigma_voxels(_sigmas(sigma_um)[name], voxel)
        heat, labels = _render_class(points, canvas, sig, truncate, mask_threshold, ignore_z)
        out[f"heatmap_{name}"] = heat.reshape(shape_in)
        out[f"labels_{name}"] = labels.reshape(shape_in)
    return out


def pairs_for_patch(
    pairs: PairSet,
    origin: Sequence[int],
    patch_shape: Sequence[int],
    sigma_um: SigmaLike = None,
    *,
    truncate: float = DEFAULT_TRUNCATE,
) -> PairSet:
    """The pairs that can leave a mark on a patch, shifted to patch coordinates.

    A pair is kept when its nucleus or its Golgi kernel reaches into the box ``origin + patch_shape``
    (voxels ``(z, y, x)``), i.e. its centroid is within ``truncate`` σ of it; the partner outside is kept
    too, so the pair keeps one label. Needs ``pairs.voxel_size``.
    """
    if pairs.voxel_size is None:
        raise CellPolError("The vectors have no voxel size; it is needed to size the target kernels.")
    origin_arr = np.asarray(origin, dtype=np.float64)
    shape_arr = np.asarray(patch_shape, dtype=np.float64)
    if origin_arr.shape != (3,) or shape_arr.shape != (3,):
        raise CellPolError("origin and patch_shape must be (z, y, x).")
    sig = _sigmas(sigma_um)
    keep = np.zeros(len(pairs), dtype=bool)
    for name, points in zip(CLASSES, (pairs.nuclei, pairs.golgi)):
        margin = truncate * sigma_voxels(sig[name], pairs.voxel_size)
        local = points - origin_arr
        inside = np.all((local > -margin) & (local < shape_arr - 1 + margin), axis=1)
        keep |= inside
    subset = pairs.subset(keep)
    subset.nuclei = subset.nuclei - origin_arr
    subset.golgi = subset.golgi - origin_arr
    return subset
