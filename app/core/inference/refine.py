"""Golgi centroids refined on the image itself, after pairing.

The network's heatmap places a Golgi at the model's voxel size (0.5 µm in x/y) and, for a fragmented or
ribbon-like Golgi, nearer its brightest piece than the centre of the whole object, which is what an annotator
clicks and what the paper's τL tolerance measures. :func:`refine_golgi` moves each predicted Golgi end to the
intensity-weighted centroid of the Golgi channel around it, at the input's own resolution: within
``radius_um`` of the current estimate, the voxels brighter than ``fraction`` of the way from the local
background (10th percentile) to the local maximum, weighted by how much brighter; twice, from the moved point.
A point whose neighbourhood is flat stays where it was; no point moves further than ``radius_um``.

Measured on the starter's matched Golgi ends (median x/y error, µm, heatmap → refined with radius 2.5 µm;
``benchmarks/accuracy.py`` prints it): see ``benchmarks/RESULTS.md``, "Golgi refinement". Nuclei are not
refined: they are large and touch their neighbours, and the same rule moved them further from the truth.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Share of the way from local background to local maximum above which a voxel counts (see module docstring).
REFINE_FRACTION = 0.5
REFINE_ITERATIONS = 2


def refine_golgi(channel: np.ndarray, positions: np.ndarray, voxel_size: Sequence[float], radius_um: float,
                 fraction: float = REFINE_FRACTION, iterations: int = REFINE_ITERATIONS) -> np.ndarray:
    """Each point of ``positions`` moved to the intensity centroid of ``channel`` around it.

    Parameters
    ----------
    channel : ndarray, shape (Z, Y, X), or a view of one channel of a lazy image
        The Golgi channel at the image's own resolution (any numeric dtype); anything with ``shape`` and
        3D slicing, e.g. :class:`LazyChannel`, which reads only the small boxes it is asked for.
    positions : ndarray, shape (N, 3)
        Voxel coordinates ``(z, y, x)`` in ``channel``.
    voxel_size : sequence of 3 float
        ``(z, y, x)`` µm.
    radius_um : float
        Neighbourhood radius; 0 returns ``positions`` unchanged.
    fraction, iterations : float, int
        See the module docstring.

    Returns
    -------
    ndarray, shape (N, 3)
        New positions (float64), within ``radius_um`` of the old ones and inside the image.
    """
    points = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if radius_um <= 0 or len(points) == 0:
        return points.copy()
    scale = np.asarray(voxel_size, dtype=np.float64)
    shape = np.asarray(channel.shape)
    reach = np.ceil(radius_um / scale).astype(int)
    out = points.copy()
    for i, start in enumerate(points):
        q = start.copy()
        for _ in range(iterations):
            centre = np.clip(np.round(q).astype(int), 0, shape - 1)
            lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, shape)
            box = np.asarray(channel[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float64)
            grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
            inside = np.linalg.norm((grid - q) * scale, axis=-1) <= radius_um
            values = box[inside]
            if values.size < 4:
                break
            background, top = np.percentile(values, 10), values.max()
            weights = np.clip(values - (background + fraction * (top - background)), 0.0, None)
            if weights.sum() <= 0:
                break
            q = (grid[inside] * weights[:, None]).sum(axis=0) / weights.sum()
        step = (q - start) * scale
        distance = float(np.linalg.norm(step))
        if distance > radius_um:  # never further than the radius from where the network put it
            q = start + step * (radius_um / distance) / scale
        out[i] = np.clip(q, 0, shape - 1)
    return out


class LazyChannel:
    """One channel of a :class:`~app.core.imageio.LazyImage` as a 3D array that reads only what is sliced."""

    def __init__(self, image, channel: int) -> None:
        self.image, self.channel = image, int(channel)
        self.shape = tuple(int(n) for n in image.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        z, y, x = key
        return self.image.read_region(z=(z.start, z.stop), y=(y.start, y.stop), x=(x.start, x.stop),
                                      c=(self.channel, self.channel + 1))[0]
