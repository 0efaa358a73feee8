"""Preprocessing shared by training and inference: resampling to a model's voxel size and
per-channel percentile normalisation. Training and prediction must prepare data identically, so
both call these functions and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

#: Percentiles are estimated on at most this many voxels per channel (strided sample): exact enough,
#: and keeps normalisation of a 1024² × 64 stack well under a second.
_PERCENTILE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class Resampling:
    """How an array was resampled: ``new = (old + 0.5) * scale - 0.5`` per axis (voxel centres)."""

    scale: tuple[float, float, float]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]

    def to_output(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` voxel coordinates ``(z, y, x)`` from the input grid to the resampled grid."""
        return (np.asarray(points, dtype=np.float64) + 0.5) * np.asarray(self.scale) - 0.5

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_output`."""
        return (np.asarray(points, dtype=np.float64) + 0.5) / np.asarray(self.scale) - 0.5

    @property
    def identity(self) -> bool:
        return self.in_shape == self.out_shape


def resampled_shape(shape: Sequence[int], voxel_size: Sequence[float], target_voxel_size: Sequence[float],
                    keep_z: bool = False) -> tuple[int, int, int]:
    """Shape ``(Z, Y, X)`` covering the same field of view at ``target_voxel_size``."""
    out = [max(1, int(round(n * v / t))) for n, v, t in zip(shape, voxel_size, target_voxel_size)]
    if keep_z:
        out[0] = int(shape[0])
    return tuple(out)  # type: ignore[return-value]


def resampling_for(shape: Sequence[int], voxel_size: Sequence[float], target_voxel_size: Sequence[float]
                   ) -> Resampling:
    """The :class:`Resampling` of a ``(Z, Y, X)`` grid to ``target_voxel_size`` (a single plane stays one)."""
    in_shape = tuple(int(n) for n in shape)
    out_shape = resampled_shape(in_shape, voxel_size, target_voxel_size, keep_z=in_shape[0] == 1)
    return Resampling(tuple(o / i for o, i in zip(out_shape, in_shape)), in_shape, out_shape)  # type: ignore[arg-type]


def linear_sources(mapping: Resampling, axis: int, start: int, stop: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the linear resampling of ``mapping`` reads output voxels ``start:stop`` along ``axis``.

    The voxel-centre rule of :class:`Resampling` with the edge handling of ``torch.nn.functional.interpolate``
    (``align_corners=False``) and of :func:`resample`'s ``mode="nearest"``: a source coordinate below 0
    reads voxel 0 and one past the last voxel reads the last. Output voxel ``k`` is
    ``(1 − w[k]) · in[i0[k]] + w[k] · in[i1[k]]``, so a region of the resampled image can be computed from
    the input voxels ``i0.min() … i1.max()`` alone (streaming prediction).

    Parameters
    ----------
    mapping : Resampling
    axis : int
        0, 1 or 2 (z, y, x).
    start, stop : int
        Output voxel range.

    Returns
    -------
    i0, i1 : ndarray of int64
        The two input voxels of each output voxel.
    w : ndarray of float64
        The weight of ``i1``.
    """
    n_in, n_out = int(mapping.in_shape[axis]), int(mapping.out_shape[axis])
    dst = np.arange(int(start), int(stop), dtype=np.float64)
    if n_in == n_out:
        index = dst.astype(np.int64)
        return index, index.copy(), np.zeros(len(index))
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = np.where(i1 > i0, src - i0, 0.0)
    return i0, i1, w


def resample(data: np.ndarray, voxel_size: Sequence[float], target_voxel_size: Sequence[float],
             order: int = 1) -> tuple[np.ndarray, Resampling]:
    """Resample ``(C, Z, Y, X)`` (or ``(Z, Y, X)``) data to ``target_voxel_size`` (linear by default).

    A 2D image (``Z == 1``) keeps one plane. Returns float32 data and the exact coordinate mapping
    (shapes are rounded to whole voxels, so the true scale is ``out_shape / in_shape``).
    """
    squeeze = data.ndim == 3
    stack = data[None] if squeeze else data
    mapping = resampling_for(stack.shape[1:], voxel_size, target_voxel_size)
    scale = mapping.scale
    if mapping.identity:
        out = stack.astype(np.float32, copy=False)
    else:
        out = np.stack(
            [ndimage.zoom(channel.astype(np.float32, copy=False), scale, order=order, mode="nearest",
                          grid_mode=True) for channel in stack]
        )
    return (out[0] if squeeze else out), mapping


def percentile_stride(size: int) -> int:
    """Stride of the sample (every n-th voxel, at most ~2 × :data:`_PERCENTILE_SAMPLE`) percentiles use."""
    return max(1, int(size) // _PERCENTILE_SAMPLE)


def percentile_range(channel: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` percentiles of one channel, estimated on a strided sample of large arrays."""
    flat = channel.reshape(-1)
    lo, hi = np.percentile(flat[::percentile_stride(flat.size)], (low, high))
    return float(lo), float(hi)


def normalize(data: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.8,
              clip: bool = True) -> np.ndarray:
    """Per-channel percentile normalisation of ``(C, ...)`` data to about [0, 1] (float32, new array).

    With ``clip``, values are limited to [0, 1.5]: a little headroom above the high percentile keeps
    the brightest structures distinct, while dirt specks thousands of times brighter cannot dominate.
    A flat channel becomes all zeros.
    """
    out = np.empty(data.shape, dtype=np.float32)
    for c in range(data.shape[0]):
        lo, hi = percentile_range(data[c], low_percentile, high_percentile)
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        np.subtract(data[c], lo, out=out[c], dtype=np.float32, casting="unsafe")
        out[c] *= scale
        if clip:
            np.clip(out[c], 0.0, 1.5, out=out[c])
    return out
