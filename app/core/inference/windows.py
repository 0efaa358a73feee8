"""The overlapping window grid a prediction runs the network on (step 3 of :mod:`app.core.inference`).

Along every axis neighbouring windows overlap by at least a given number of voxels (the predictor asks for
``d_max + 2 × context`` µm), so any pair short enough to be paired fits inside one window; the heatmaps of
neighbours are blended with raised-cosine ramps (:meth:`WindowGrid.axis_weights`), and each candidate
edge is judged in the window holding both ends deepest inside (:meth:`WindowGrid.best_windows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from app.core.errors import CellPolError


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_axis(length: int, max_window: int, overlap: int, multiple: int) -> tuple[int, np.ndarray]:
    """Window size and start offsets along one axis.

    The fewest windows of size ≤ ``max_window`` (a multiple of ``multiple``) whose neighbours overlap by at
    least ``overlap`` voxels, evenly spread, the first at 0 and the last ending at ``length``; their size is
    then shrunk to the smallest multiple that keeps that overlap. A ``length`` shorter than one window gives
    one window of ``length`` rounded up to ``multiple`` (the network pads the rest).

    Parameters
    ----------
    length : int
        Image length along the axis (voxels).
    max_window : int
        Largest window allowed (rounded down to ``multiple``).
    overlap : int
        Least overlap of two neighbouring windows (voxels).
    multiple : int
        Window sizes are multiples of this (the network's pooling along the axis).

    Returns
    -------
    window : int
        The window size.
    starts : ndarray of int64
        Start offset of each window.

    Raises
    ------
    CellPolError
        If ``max_window`` is too small for ``overlap``.
    """
    length, overlap, multiple = int(length), max(0, int(overlap)), max(1, int(multiple))
    max_window = max(multiple, int(max_window) // multiple * multiple)
    if length <= max_window:
        return _round_up(length, multiple), np.zeros(1, dtype=np.int64)
    if overlap >= max_window - multiple + 1:
        raise CellPolError(
            f"A window of {max_window} voxels cannot overlap its neighbour by {overlap} voxels; use a larger window."
        )
    n = max(2, int(math.ceil((length - overlap) / (max_window - overlap))))
    while True:
        window = _round_up(int(math.ceil((length + (n - 1) * overlap) / n)), multiple)
        window = min(max(window, multiple), max_window)
        starts = np.floor(np.arange(n) * (length - window) / (n - 1) + 1e-9).astype(np.int64)
        starts[-1] = length - window
        if window <= max_window and np.all(window - np.diff(starts) >= overlap):
            return window, starts
        n += 1


@dataclass(frozen=True)
class WindowGrid:
    """Windows on a product grid over an image of ``shape`` (model voxels ``(Z, Y, X)``).

    Attributes
    ----------
    shape : tuple of int
        Image shape at the model's voxel size.
    window : tuple of int
        Network input size ``(z, y, x)`` (a multiple of the network's pooling).
    starts : tuple of ndarray
        Window start offsets per axis; window ``(i, j, k)`` covers ``starts[a][·] : starts[a][·] + window[a]``
        (clipped to the image; beyond it the input is zero-padded).
    overlap : tuple of int
        The minimum overlap asked for, per axis (voxels).
    """

    shape: tuple[int, int, int]
    window: tuple[int, int, int]
    starts: tuple[np.ndarray, np.ndarray, np.ndarray]
    overlap: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(len(s) for s in self.starts)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def index_to_grid(self, index: int) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.unravel_index(index, self.counts))  # type: ignore[return-value]

    def origin(self, index: int) -> tuple[int, int, int]:
        grid = self.index_to_grid(index)
        return tuple(int(self.starts[a][grid[a]]) for a in range(3))  # type: ignore[return-value]

    def valid_slices(self, index: int) -> tuple[slice, slice, slice]:
        """The part of window ``index`` inside the image, in image coordinates."""
        origin = self.origin(index)
        bounds = zip(origin, self.window, self.shape)
        return tuple(slice(o, min(o + w, n)) for o, w, n in bounds)  # type: ignore[return-value]

    def axis_weights(self, axis: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Blending weights along ``axis``: one 1D array per window (its part inside the image) and their sum.

        Inside an overlap the leaving window ramps down as cos² and the entering one up as sin² over the
        whole overlap, so the two sum to one and the result is continuous; faces on the image border get
        no ramp.
        """
        starts, window, length = self.starts[axis], self.window[axis], self.shape[axis]
        weights, total = [], np.zeros(length, dtype=np.float64)
        for i, start in enumerate(starts):
            stop = min(int(start) + window, length)
            t = np.arange(int(start), stop, dtype=np.float64)
            w = np.ones_like(t)
            if i > 0:
                ramp = int(starts[i - 1]) + window - int(start)
                if ramp > 0:
                    u = np.clip((t - start + 0.5) / ramp, 0.0, 1.0)
                    w = np.minimum(w, np.sin(0.5 * np.pi * u) ** 2)
            if i < len(starts) - 1:
                nxt = int(starts[i + 1])
                ramp = int(start) + window - nxt
                if ramp > 0:
                    u = np.clip((t - nxt + 0.5) / ramp, 0.0, 1.0)
                    w = np.minimum(w, np.cos(0.5 * np.pi * u) ** 2)
            w = np.maximum(w, 1e-6)  # every voxel keeps a positive total weight
            weights.append(w)
            total[int(start):stop] += w
        return weights, total

    def best_windows(self, points_a: np.ndarray, points_b: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
        """For each row, the window holding both ``points_a[i]`` and ``points_b[i]`` deepest inside.

        Depth is the distance in µm to the nearest *inner* face (faces on the image border are not
        counted), minimised over both points and all axes. Returns window indices, ``-1`` where no window
        contains both points.
        """
        n = len(points_a)
        grid_index = np.zeros((n, 3), dtype=np.int64)
        depth = np.full(n, np.inf)
        for axis in range(3):
            starts = self.starts[axis].astype(np.float64)
            window, length = self.window[axis], self.shape[axis]
            lo = starts[None, :] - 0.5
            hi = starts[None, :] + window - 0.5
            inner_lo = starts[None, :] > 0
            inner_hi = starts[None, :] + window < length
            axis_depth = np.full((n, len(starts)), np.inf)
            for p in (points_a[:, axis:axis + 1], points_b[:, axis:axis + 1]):
                inside = (p >= lo) & (p <= hi)
                d_lo = np.where(inner_lo, p - lo, np.inf)
                d_hi = np.where(inner_hi, hi - p, np.inf)
                d = np.minimum(d_lo, d_hi) * float(voxel_size[axis])
                axis_depth = np.minimum(axis_depth, np.where(inside, d, -np.inf))
            best = np.argmax(axis_depth, axis=1)
            grid_index[:, axis] = best
            depth = np.minimum(depth, axis_depth[np.arange(n), best])
        flat = np.ravel_multi_index(grid_index.T, self.counts) if n else np.zeros(0, dtype=np.int64)
        return np.where(depth >= 0, flat, -1).astype(np.int64)


def plan_windows(
    shape: Sequence[int], max_window: Sequence[int], overlap: Sequence[int], multiple: Sequence[int]
) -> WindowGrid:
    """A :class:`WindowGrid` over ``shape``: :func:`plan_axis` applied per axis.

    Parameters
    ----------
    shape, max_window, overlap, multiple : sequence of int
        Per axis ``(z, y, x)``: image length, largest window, least overlap, size multiple (voxels).

    Returns
    -------
    WindowGrid
    """
    windows, starts = [], []
    for length, wmax, ov, m in zip(shape, max_window, overlap, multiple):
        w, s = plan_axis(int(length), int(wmax), int(ov), int(m))
        windows.append(w)
        starts.append(s)
    return WindowGrid(
        tuple(int(s) for s in shape),  # type: ignore[arg-type]
        tuple(windows),  # type: ignore[arg-type]
        tuple(starts),  # type: ignore[arg-type]
        tuple(int(o) for o in overlap),  # type: ignore[arg-type]
    )
