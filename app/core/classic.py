"""The classic peer: Otsu threshold → connected components → centroids → Hungarian pairing.

This is the paper's "Otsu" comparison method. It needs no training and is a useful sanity check on
any data: if it finds the cells, the image and channels are set up right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.filters import threshold_otsu

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.volume import Volume

#: Cost given to nucleus–Golgi combinations farther apart than ``d_max`` so they are never chosen.
_FORBIDDEN = 1e9


@dataclass(frozen=True)
class ClassicParams:
    """Parameters of the classic peer (physical units, so they hold at any voxel size).

    Attributes
    ----------
    d_max_um : float
        Longest admissible nucleus→Golgi distance (the paper's 14 µm).
    smooth_sigma_um : float
        Gaussian smoothing before thresholding, to keep shot noise from splitting objects.
    min_nucleus_volume_um3, min_golgi_volume_um3 : float
        Components smaller than this are noise, not objects.
    """

    d_max_um: float = 14.0
    smooth_sigma_um: float = 0.4
    min_nucleus_volume_um3: float = 20.0
    min_golgi_volume_um3: float = 0.5


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, any real dtype)."""
    values = np.asarray(values)
    if values.size == 0 or float(values.min()) == float(values.max()):
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(values, nbins=bins))


def detect_objects(
    channel: np.ndarray,
    voxel_size: tuple[float, float, float],
    smooth_sigma_um: float,
    min_volume_um3: float,
) -> np.ndarray:
    """Centroids ``(N, 3)`` (voxels, z y x) of the Otsu foreground components of one channel."""
    image = channel.astype(np.float32, copy=False)
    voxel = np.asarray(voxel_size, dtype=float)
    is_2d = image.shape[0] == 1
    if smooth_sigma_um > 0:
        sigma = smooth_sigma_um / voxel
        if is_2d:
            sigma[0] = 0.0
        image = ndimage.gaussian_filter(image, sigma=sigma)
    foreground = image > otsu_threshold(image)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros((0, 3))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    voxel_volume = float(np.prod(voxel[1:])) if is_2d else float(np.prod(voxel))
    keep = np.flatnonzero(sizes * voxel_volume >= min_volume_um3) + 1
    if keep.size == 0:
        return np.zeros((0, 3))
    centroids = ndimage.center_of_mass(foreground, labels, keep)
    return np.asarray(centroids, dtype=np.float64).reshape(-1, 3)


def pair_by_distance(
    nuclei: np.ndarray, golgi: np.ndarray, voxel_size: tuple[float, float, float], d_max_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairing minimising total µm distance, pairs farther than ``d_max_um`` refused.

    Returns the row indices into ``nuclei`` and ``golgi`` of the accepted pairs.
    """
    if len(nuclei) == 0 or len(golgi) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    scale = np.asarray(voxel_size, dtype=float)
    distance = np.linalg.norm((nuclei[:, None, :] - golgi[None, :, :]) * scale, axis=2)
    cost = np.where(distance <= d_max_um, distance, _FORBIDDEN)
    rows, cols = linear_sum_assignment(cost)
    accepted = distance[rows, cols] <= d_max_um
    return rows[accepted], cols[accepted]


def predict_classic(volume: Volume, params: Optional[ClassicParams] = None) -> PairSet:
    """Detect and pair nuclei and Golgi in ``volume`` with the classic pipeline.

    Raises
    ------
    CellPolError
        If the volume has no nucleus or Golgi channel set.
    """
    params = params or ClassicParams()
    if volume.nucleus_channel is None or volume.golgi_channel is None:
        raise CellPolError(
            f"Classic prediction needs a nucleus and a Golgi channel; this image has {volume.n_channels} "
            "channel(s). Choose the nucleus and the Golgi channel.",
            settings={"nucleus_channel": None, "golgi_channel": None},
        )
    nuclei = detect_objects(volume.nucleus, volume.voxel_size, params.smooth_sigma_um, params.min_nucleus_volume_um3)
    golgi = detect_objects(volume.golgi, volume.voxel_size, params.smooth_sigma_um, params.min_golgi_volume_um3)
    rows, cols = pair_by_distance(nuclei, golgi, volume.voxel_size, params.d_max_um)
    meta = {
        "method": "classic",
        "parameters": asdict(params),
        "detected_nuclei": int(len(nuclei)),
        "detected_golgi": int(len(golgi)),
        "image_shape_zyx": list(volume.spatial_shape),
    }
    return PairSet(nuclei[rows], golgi[cols], voxel_size=volume.voxel_size, sources="predicted", meta=meta)
