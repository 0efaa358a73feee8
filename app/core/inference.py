"""Learned prediction (3DCellPol / 3DCtrDet): a whole image in, polarity vectors out.

Pipeline for one volume (:meth:`Predictor.predict`):

1. **Channels.** The nucleus and Golgi channels of the :class:`~app.core.volume.Volume`, in the order the
   model expects (``ModelSpec.channel_roles``).
2. **Resampling** to the voxel size the model was trained at, then **normalisation** with the model's
   percentiles computed on the *whole* image: what :func:`app.core.preprocess.resample` and
   :func:`~app.core.preprocess.normalize` (the functions training uses) compute, done in torch on the
   predictor's device (:func:`prepare_on_device`), so on a GPU the image goes up once and stays there
   until the heatmaps come back. The reference code scaled each window on its own (relative thresholds
   per window); here one intensity scale holds for the whole image.
3. **Overlapping windows** on a product grid (:func:`plan_windows`). Along every axis neighbouring windows
   overlap by at least ``d_max + 2 × context`` µm, so any nucleus–Golgi pair short enough to be paired
   fits, with ``context`` µm to spare on each side, inside at least one window. Windows are batched, run
   under ``torch.inference_mode`` with the fast memory layout (``channels_last_3d``) and mixed precision
   where it pays (CPU bf16 only where the CPU has native bf16; CUDA fp16/bf16).
4. **Stitching.** Heatmaps are blended into full-size arrays with a raised-cosine ramp across every
   overlap (the ramps of two neighbours sum to one), so window borders leave no seams. The blending
   weights are separable, so their sum is three 1D arrays rather than a third full-size volume.
   **Embeddings are never blended:** a scalar embedding is only comparable to others *from the same window*
   (the pull/push loss only constrains pairs within one training patch), so the raw embedding output of
   each window is kept (float16, the part inside the image) until pairing.
5. **Peaks** on the stitched heatmaps (:func:`find_peaks`): local maxima above an *absolute* threshold per
   class, thinned greedily (highest first) so no two peaks of a class are closer than a minimum distance
   *in µm* (an ellipsoid in voxels on anisotropic data) unless a valley deeper than the model's
   ``peak_valley_*`` fraction of the lower peak separates them, then refined to sub-voxel precision by a
   log-Gaussian fit in the 3×3×3 neighbourhood (exact for Gaussian peaks; a plain weighted centroid over
   3×3×3 would pull the estimate towards the voxel centre).
6. **Pairing** (:func:`match_pairs`). A candidate edge joins a nucleus and a Golgi at most ``d_max`` µm
   apart. Each edge is judged in *one* window: the window holding both ends deepest inside (measured in µm
   from its inner faces; faces on the image border do not count, as no other window sees more there). Both
   embeddings are read from that window's raw output (mean over the 3×3×3 neighbourhood of the peak
   voxel). The edge is admissible if ``|Δe| < Δ``. All nuclei and Golgi are then paired one-to-one in a
   *global* assignment that maximises ``Σ (1 − |Δe|/Δ)`` over the chosen edges (a maximum-weight
   matching: it prefers one confident pair over two doubtful ones, where a "pair as many as possible"
   cost would force chains of marginal pairs), with a tiny distance tie-break. With the model's
   ``pairing_distance_weight`` w > 0 the edge cost is ``(1 − w)·|Δe|/Δ + w·d/d_max`` instead (the
   embeddings still veto): calibration picks w, because a small network's embeddings may separate a cell
   from its neighbours less well than distance does (the first starter model: TPR/FDR at τL = 0 on
   held-out retina volumes 0.56/0.51 with w = 0, 0.79/0.31 with w = 1, same peaks). A ``pairing_height_weight``
   v > 0 blends in the peaks' strength, ``(1 − v)·cost + v·(1 − √(h_n·h_g))``: most wrong pairs of the
   shipped starter joined a right nucleus to a faint Golgi-channel peak (a vessel, a speck) nearer than the
   right Golgi. A ``pairing_ridge_weight`` ρ > 0 adds ``ρ · ridge`` to the cost, ``ridge`` from
   :func:`ridge_scores`: how far the Golgi peak sits on a tube of the heatmap (a vessel) rather than a
   compact hill: in the stage-8 starter's wrong pairs on held-out retina volumes the wrong Golgi-channel
   peak was as tall and as near as the right Golgi but the more tube-like of the two in 76 of 111. Every
   cell thus yields one
   vector however many windows saw it. ``ctrdet`` models (no embeddings) are paired by distance with
   :func:`app.core.classic.pair_by_distance`.

   Judging each edge in its best window needs only ``overlap ≥ d_max`` (one window then holds any
   segment of length ≤ ``d_max``); owning each *nucleus* by one window would need ``overlap ≥ 2·d_max``
   to guarantee its Golgi is in the same window, about a third more network work on a CPU.

7. **Score** of a vector: ``sqrt(h_n · h_g) × (1 − |Δe|/Δ)``, the geometric mean of the two (stitched)
   peak heights times a linear pairing confidence (1 for identical embeddings, 0 at the push margin Δ). For
   ``ctrdet`` the pairing factor is 1. Positions are mapped back to the *input* voxel grid
   (:meth:`~app.core.preprocess.Resampling.to_input`).

Ensembles (several model files): every member runs on the same window grid; their stitched heatmaps are
averaged for detection, and an edge's pairing cost is the **mean over members of** ``|Δe_m| / Δ_m`` (each
member's embeddings read from its own raw window output, normalised by its own push margin), admissible
when that mean is below 1. A mean rather than a majority vote keeps a graded confidence and lets a
member that is sure outweigh one that is unsure. Decoding parameters (thresholds, minimum distances,
``d_max``) are the members' means unless ``decoding`` is given.

Memory: besides the input, the normalised image (float32, 2 channels), the two stitched heatmaps (float32),
the raw embedding windows (float16) and one batch of network activations. The window size and batch are
chosen from a memory budget (about 1.3 GB of activations on a CPU), so a 64×768×768 stack stays well below
3 GB.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.core.fileutil import sha256_file
from app.core.errors import CancelledError, CellPolError, ChannelError
from app.core.jobs import CancelToken, ProgressCallback
from app.core.modelfile import DecodingSpec, ModelSpec, load_model, model_paths
from app.core.network import cpu_bf16_is_fast, preferred_memory_format, required_multiple
from app.core.pairs import PairSet
from app.core.preprocess import Resampling, percentile_range, percentile_stride, resampling_for
from app.core.volume import Volume

PathLike = Union[str, Path]

#: Context (µm) a pair should keep from a window's inner faces; the overlap is ``d_max + 2 × context``.
DEFAULT_CONTEXT_UM = 3.0
#: Largest default window along z and in-plane (voxels at the model's voxel size). Larger windows waste less
#: compute on overlaps: on the 64×768×768 benchmark, 9 windows of 20×368×368 took 22 s of network time
#: against 28.5 s for 25 windows of 20×240×240 (benchmarks/predict_speed.py, 2-core CPU).
DEFAULT_MAX_WINDOW_Z = 96
DEFAULT_MAX_WINDOW_YX = 512
#: Activation memory per voxel ≈ this × the full-resolution width × bytes per value (measured: a 16-filter
#: network on one 64×216×216 window peaks at about 1.4 GB RSS in fp32 on a CPU, ~375 bytes per voxel).
_ACTIVATION_VALUES_PER_CHANNEL = 6
#: Activation memory allowed for one batch of windows.
CPU_ACTIVATION_BUDGET = 1.3e9
MPS_ACTIVATION_BUDGET = 1.5e9
CUDA_FREE_MEMORY_FRACTION = 0.4
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 8, "mps": 2}
#: Relative weight of distance in the pairing tie-break.
_DISTANCE_TIE_BREAK = 0.01

ProgressLike = Optional[ProgressCallback]
CancelLike = Union[CancelToken, Callable[[], bool], None]


# ----------------------------------------------------------------------------------------------
# Device
# ----------------------------------------------------------------------------------------------
def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """The torch device for ``name``: ``"auto"`` (CUDA, else Apple MPS, else CPU), ``"cpu"``, ``"cuda"``
    (optionally ``"cuda:N"``) or ``"mps"``.

    Raises
    ------
    CellPolError
        If the requested GPU is not present, or ``name`` is not a device.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CellPolError("no CUDA GPU found; use --device cpu")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CellPolError(
                f"no CUDA GPU number {device.index} (found {torch.cuda.device_count()}); use --device cuda"
            )
        return device
    if name == "mps":
        if not _mps_available():
            raise CellPolError("no Apple GPU (MPS) found; use --device cpu")
        return torch.device("mps")
    raise CellPolError(f"Unknown device {name!r}; use auto, cpu, cuda or mps.")


# ----------------------------------------------------------------------------------------------
# Window grid
# ----------------------------------------------------------------------------------------------
def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_axis(length: int, max_window: int, overlap: int, multiple: int) -> tuple[int, np.ndarray]:
    """Window size and start offsets along one axis.

    The fewest windows of size ≤ ``max_window`` (a multiple of ``multiple``) whose neighbours overlap by at
    least ``overlap`` voxels, evenly spread, the first at 0 and the last ending at ``length``; their size is
    then shrunk to the smallest multiple that keeps that overlap. A ``length`` shorter than one window gives
    one window of ``length`` rounded up to ``multiple`` (the network pads the rest).
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
    """A :class:`WindowGrid` over ``shape`` (see :func:`plan_axis`, applied per axis)."""
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


# ----------------------------------------------------------------------------------------------
# Peaks
# ----------------------------------------------------------------------------------------------
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
        from scipy import ndimage

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
    that is ≥ its 26 neighbours (a 3×3×3 max-pool, whose padding never wins: outside does not count)."""
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
    from scipy.spatial import cKDTree

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


def find_peaks(
    heatmap: np.ndarray, threshold: float, min_distance_um: float, voxel_size: Sequence[float],
    max_peaks: int = MAX_PEAKS, valley_ratio: float = 0.0, maxima: Optional["LocalMaxima"] = None,
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


# ----------------------------------------------------------------------------------------------
# Pairing
# ----------------------------------------------------------------------------------------------
def candidate_edges(
    nuclei: np.ndarray, golgi: np.ndarray, voxel_size: Sequence[float], d_max_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (nucleus, Golgi) index pairs at most ``d_max_um`` apart, with their distances (µm)."""
    if len(nuclei) == 0 or len(golgi) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    from scipy.spatial import cKDTree

    scale = np.asarray(voxel_size, dtype=np.float64)
    tree_n, tree_g = cKDTree(nuclei * scale), cKDTree(golgi * scale)
    found = tree_n.sparse_distance_matrix(tree_g, float(d_max_um), output_type="ndarray")
    order = np.lexsort((found["j"], found["i"]))
    found = found[order]
    return found["i"].astype(np.int64), found["j"].astype(np.int64), found["v"].astype(np.float64)


def match_pairs(
    n_nuclei: int,
    n_golgi: int,
    rows: np.ndarray,
    cols: np.ndarray,
    cost: np.ndarray,
    distance_um: np.ndarray,
    d_max_um: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one pairing over candidate edges by maximum-weight matching.

    Parameters
    ----------
    rows, cols : ndarray of int
        Nucleus and Golgi index of each candidate edge.
    cost : ndarray
        Normalised embedding distance ``|Δe| / Δ`` of each edge; admissible where ``< 1``.
    distance_um : ndarray
        Length of each edge (µm); admissible where ``≤ d_max_um``.

    Returns
    -------
    nucleus_index, golgi_index, edge_index : ndarray of int
        The accepted pairs and the candidate edge each came from.

    Notes
    -----
    The weight of an edge is ``(1 − cost) × (1 − 0.01 × distance / d_max)``; the assignment maximises the
    summed weight, which equals minimising ``Σ cost`` with every detection left unpaired costing one half.
    It is solved with :func:`scipy.optimize.linear_sum_assignment` separately on each connected component
    of the candidate graph (the same optimum as one global problem, without an N×M dense matrix).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    cost, distance_um = np.asarray(cost, dtype=np.float64), np.asarray(distance_um, dtype=np.float64)
    ok = np.isfinite(cost) & (cost < 1.0) & (distance_um <= d_max_um)
    edges = np.flatnonzero(ok)
    empty = np.zeros(0, dtype=np.int64)
    if len(edges) == 0:
        return empty, empty, empty
    weight = (1.0 - cost[edges]) * (1.0 - _DISTANCE_TIE_BREAK * distance_um[edges] / max(d_max_um, 1e-12))
    graph = coo_matrix(
        (np.ones(len(edges)), (rows[edges], n_nuclei + cols[edges])), shape=(n_nuclei + n_golgi,) * 2
    )
    _, labels = connected_components(graph, directed=False)
    component = labels[rows[edges]]
    out_n, out_g, out_e = [], [], []
    for comp in np.unique(component):
        sel = edges[component == comp]
        w_sel = weight[component == comp]
        nuc, nuc_local = np.unique(rows[sel], return_inverse=True)
        gol, gol_local = np.unique(cols[sel], return_inverse=True)
        matrix = np.zeros((len(nuc), len(gol)))
        edge_of = np.full((len(nuc), len(gol)), -1, dtype=np.int64)
        matrix[nuc_local, gol_local] = w_sel
        edge_of[nuc_local, gol_local] = sel
        r, c = linear_sum_assignment(matrix, maximize=True)
        chosen = edge_of[r, c]
        good = chosen >= 0
        out_n.append(nuc[r[good]])
        out_g.append(gol[c[good]])
        out_e.append(chosen[good])
    order = np.argsort(np.concatenate(out_n), kind="stable")
    return (np.concatenate(out_n)[order], np.concatenate(out_g)[order], np.concatenate(out_e)[order])


def _read_embedding(window: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Mean of a ``(Z, Y, X)`` embedding window over the 3×3×3 neighbourhood (clipped) of each voxel."""
    local = np.asarray(local, dtype=np.int64).reshape(-1, 3)
    shape = np.asarray(window.shape)
    points = local[:, None, :] + _CUBE[None, :, :]  # (N, 27, 3)
    inside = np.all((points >= 0) & (points < shape), axis=2)
    points = np.clip(points, 0, shape - 1)
    values = window[points[..., 0], points[..., 1], points[..., 2]].astype(np.float64)
    return (values * inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)


#: The 27 offsets of a 3×3×3 neighbourhood, centre included.
_CUBE = np.stack(np.meshgrid(*(np.arange(-1, 2),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Predictor
# ----------------------------------------------------------------------------------------------
@dataclass
class Member:
    """One model of a predictor (an ensemble has several)."""

    module: nn.Module
    spec: ModelSpec
    path: Optional[Path] = None
    weights_path: Optional[Path] = None
    weights_sha256: Optional[str] = None

    @property
    def name(self) -> str:
        if self.spec.name:
            return self.spec.name
        return self.path.stem if self.path is not None else "model"


@dataclass
class Prediction:
    """Everything :meth:`Predictor.predict` computed for one volume."""

    pairs: PairSet
    resampling: Resampling
    model_voxel_size: tuple[float, float, float]
    heatmap_nucleus: Optional[np.ndarray] = None  # stitched, at the model's voxel size (Z, Y, X)
    heatmap_golgi: Optional[np.ndarray] = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class NetworkOutput:
    """The network stage of a prediction, before decoding (see :meth:`Predictor.run_network`).

    Decoding it again with other thresholds (:meth:`Predictor.decode`) costs no network time, which is
    how decoding parameters are calibrated.
    """

    heatmap_nucleus: np.ndarray  # stitched, at the model's voxel size (Z, Y, X)
    heatmap_golgi: np.ndarray
    embeddings: list  # per member: {window index: raw (2, z, y, x) float16 embeddings}
    grid: "WindowGrid"
    resampling: Resampling
    image_shape: tuple[int, int, int]
    image_voxel_size: tuple[float, float, float]
    batch: int
    timings: dict[str, float] = field(default_factory=dict)
    #: Local maxima of (nucleus, Golgi) found on the GPU before the heatmaps came back (None on a CPU).
    maxima: Optional[tuple[LocalMaxima, LocalMaxima]] = None


def fuse_batchnorm(module: nn.Module, copy: bool = True) -> nn.Module:
    """An eval-mode module with every BatchNorm that directly follows a convolution (inside an
    ``nn.Sequential``) folded into that convolution: the same outputs (to float rounding) without a
    separate normalisation pass over each activation, about 8 % faster on a CPU. With ``copy`` the folding
    happens on a deep copy and ``module`` keeps its layers (it is still switched to eval mode)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv_types = (nn.Conv2d, nn.Conv3d)
    bn_types = (nn.BatchNorm2d, nn.BatchNorm3d)

    def fusable(seq: nn.Sequential) -> list[int]:
        items = list(seq)
        return [i for i in range(len(items) - 1)
                if isinstance(items[i], conv_types) and isinstance(items[i + 1], bn_types)
                and items[i + 1].track_running_stats and items[i + 1].running_mean is not None]

    module.eval()
    if not any(isinstance(m, nn.Sequential) and fusable(m) for m in module.modules()):
        return module
    if copy:
        import copy as _copy

        module = _copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in fusable(seq):
            seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()
    return module


#: numpy dtypes copied to the device as they are (uint16: half the bytes of float32); others go through float32.
_TORCH_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.float32, np.float64)


def _percentile_range_torch(channel: torch.Tensor, low: float, high: float) -> tuple[float, float]:
    """:func:`~app.core.preprocess.percentile_range` of a tensor, computed where the tensor is."""
    flat = channel.reshape(-1)
    sample = flat[::percentile_stride(flat.numel())].double()
    q = torch.tensor([low / 100.0, high / 100.0], dtype=torch.float64, device=channel.device)
    lo, hi = torch.quantile(sample, q).tolist()
    return float(lo), float(hi)


def prepare_on_device(stacked: np.ndarray, voxel_size: Sequence[float], target_voxel_size: Sequence[float],
                      normalizations: Sequence[tuple[float, float, bool]], device: torch.device
                      ) -> tuple[dict[tuple, torch.Tensor], Resampling]:
    """:func:`~app.core.preprocess.resample` then :func:`~app.core.preprocess.normalize`, in torch on ``device``.

    The raw ``(C, Z, Y, X)`` data are copied to the device as they are (uint16: half the bytes of float32)
    and resampled there (trilinear: the same voxel-centre mapping and edge handling as the linear
    ``ndimage.zoom`` of ``resample``, equal up to float rounding); each ``(low, high, clip)`` of
    ``normalizations`` gives one normalised copy, its percentiles taken on the same strided sample as
    :func:`~app.core.preprocess.percentile_range`. On a GPU nothing of the image crosses back to the host
    before the network; on a CPU torch's threaded interpolation is several times faster than
    ``ndimage.zoom`` (3.2 s → 0.4 s for a 64×768×768×2 stack on 2 cores).
    """
    mapping = resampling_for(stacked.shape[1:], voxel_size, target_voxel_size)
    data = np.ascontiguousarray(stacked)
    x = None
    if data.dtype.type in _TORCH_DTYPES and data.dtype.isnative:  # (a big-endian TIFF's data is not)
        try:
            x = torch.from_numpy(data).to(device).float()
        except (RuntimeError, TypeError) as exc:  # a device without kernels for this integer type
            if _is_oom(exc):
                raise
            x = None
    if x is None:
        x = torch.from_numpy(data.astype(np.float32)).to(device)
    del data
    if not mapping.identity:
        x = F.interpolate(x[None], size=mapping.out_shape, mode="trilinear", align_corners=False)[0]
    prepared: dict[tuple, torch.Tensor] = {}
    for low, high, clip in normalizations:
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            # On a CPU numpy's selection is faster than torch's sort; on a GPU the sort is, and stays there.
            lo, hi = (percentile_range(x[c].numpy(), low, high) if x.device.type == "cpu"
                      else _percentile_range_torch(x[c], low, high))
            torch.sub(x[c], lo, out=out[c])
            out[c] *= 1.0 / (hi - lo) if hi > lo else 0.0
            if clip:
                out[c].clamp_(0.0, 1.5)
        prepared[(low, high, clip)] = out
    return prepared, mapping


def _maxima_on(staging: torch.device) -> bool:
    """Whether heatmaps staged on ``staging`` get their local maxima there (on a CPU numpy's sparse search
    is faster than a max-pool over the whole volume)."""
    return staging.type != "cpu"


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "can't allocate memory", "not enough memory")
    )


def _oom_device(exc: BaseException, default: torch.device) -> torch.device:
    """The device whose memory ran out, as far as the error tells (else ``default``, where it happened)."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "cpuallocator" in text or "can't allocate memory" in text:
        return torch.device("cpu")  # numpy's and torch's host allocations
    if "mps" in text:
        return torch.device("mps")
    if "cuda" in text and default.type != "cuda":
        return torch.device("cuda")
    return default


def _memory_name(device: torch.device) -> str:
    """Whose memory: the computer's (CPU) or the named GPU's."""
    if device.type == "cpu":
        return "the computer's memory (RAM)"
    if device.type == "cuda":
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
            total = torch.cuda.get_device_properties(index).total_memory
            return f"the memory of the GPU {name} ({device}, {total / 1e9:.0f} GB)"
        except Exception:  # noqa: BLE001 - only for the message
            return f"the GPU's memory ({device})"
    if device.type == "mps":
        return "the Apple GPU's memory (mps)"
    return f"the memory of {device}"


def _out_of_memory(what: str, devices: Sequence[torch.device], smaller: str) -> CellPolError:
    """One clear message for running out of the memory of ``devices`` (in the order tried) while doing
    ``what``; the advice fits the memory that ran out (no "use the CPU" on a CPU run).

    ``smaller`` is what to make smaller, e.g. ``"a smaller --window (Z Y X) or --batch-size"``.
    """
    names = list(dict.fromkeys(_memory_name(d) for d in devices))
    advice = [smaller]
    if all(d.type != "cpu" for d in devices):
        advice.append("run on the CPU (--device cpu), which uses the computer's memory")
    else:
        advice += ["close other programs", "use a computer with more memory"]
    advice_text = ", ".join(advice[:-1]) + ", or " + advice[-1]
    return CellPolError(f"out of memory: {what} does not fit in {' nor in '.join(names)}. Use {advice_text}.")


def _check_cancel(cancel: CancelLike) -> None:
    if cancel is None:
        return
    if isinstance(cancel, CancelToken):
        cancel.raise_if_cancelled()
    elif callable(cancel) and cancel():
        raise CancelledError("Cancelled by the user.")


def _mean_decoding(specs: Sequence[DecodingSpec]) -> DecodingSpec:
    if len(specs) == 1:
        return specs[0]
    values = {k: float(np.mean([getattr(s, k) for s in specs])) for k in asdict(specs[0])}
    return DecodingSpec(**values)


class Predictor:
    """Predict polarity vectors with one model or an ensemble (a :data:`app.core.batch.Predictor`).

    Build it with :meth:`from_files` (model ``.json`` files) or :meth:`from_modules` (in-memory networks,
    e.g. fresh from training), then call it on a :class:`~app.core.volume.Volume`.

    Parameters
    ----------
    members : sequence of Member
        The models; several make an ensemble (same voxel size, architecture kind and dimensionality).
    device : torch.device
    window : (int, int, int), optional
        Largest window ``(z, y, x)`` in voxels at the model's voxel size. Default: the whole stack in z up
        to 96 slices, and in-plane the largest size (≤ 512) whose batch fits the memory budget. A window too
        small for the required overlap along an axis that needs tiling is enlarged along that axis.
    batch_size : int, optional
        Windows per network call (default: 4 on CPU, 8 on CUDA, capped by the memory budget).
    context_um : float
        Extra context a pair keeps from inner window faces; the overlap is ``d_max + 2 × context_um``.
    decoding : DecodingSpec, optional
        Overrides the models' decoding parameters (thresholds, minimum distances, Δ, d_max).
    amp : bool
        Mixed precision where it is fast (CPU bf16 only on CPUs with native bf16; CUDA fp16/bf16).
    """

    def __init__(
        self,
        members: Sequence[Member],
        device: Union[str, torch.device] = "auto",
        window: Optional[Sequence[int]] = None,
        batch_size: Optional[int] = None,
        context_um: float = DEFAULT_CONTEXT_UM,
        decoding: Optional[DecodingSpec] = None,
        amp: bool = True,
    ) -> None:
        if not members:
            raise CellPolError("No model given.")
        self.members = list(members)
        self.device = device if isinstance(device, torch.device) else select_device(device)
        _check_compatible(self.members)
        first = self.members[0].spec
        self.config = first.network
        self.voxel_size: tuple[float, float, float] = first.voxel_size
        self.architecture = first.network.architecture
        self.spatial_dims = first.network.spatial_dims
        self.multiple = tuple(
            int(np.lcm.reduce([required_multiple(m.spec.network)[a] for m in self.members])) for a in range(3)
        )
        self._decoding_override = decoding
        self.decoding = decoding if decoding is not None else _mean_decoding([m.spec.decoding for m in self.members])
        if window is not None:
            if len(window) != 3 or any(int(w) < 1 for w in window):
                raise CellPolError(f"window must be three positive sizes Z Y X, got {window!r}.")
        self.window = tuple(int(w) for w in window) if window is not None else None
        if batch_size is not None and int(batch_size) < 1:
            raise CellPolError(f"batch size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size) if batch_size is not None else None
        if not (math.isfinite(context_um) and context_um >= 0):
            raise CellPolError(f"context must be a non-negative number of µm, got {context_um!r}.")
        self.context_um = float(context_um)
        self.amp = bool(amp)
        self.autocast_dtype = self._choose_autocast()
        self.memory_format = (
            preferred_memory_format(self.config) if self.device.type in ("cpu", "cuda") else torch.contiguous_format
        )
        for member in self.members:
            member.module = fuse_batchnorm(member.module, copy=member.path is None)
            member.module.to(self.device)
            if self.memory_format != torch.contiguous_format:
                member.module.to(memory_format=self.memory_format)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_files(cls, paths: Sequence[PathLike] | PathLike, device: Union[str, torch.device] = "auto",
                   **options: Any) -> "Predictor":
        """Load one model (or several: an ensemble) from ``.json`` model files.

        Raises
        ------
        CellPolError
            Missing or damaged files (:class:`~app.core.errors.FileFormatError`), members that do not fit
            together, or a device that is not there.
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise CellPolError("No model file given.")
        torch_device = select_device(device)
        members = []
        for path in paths:
            module, spec = load_model(path, "cpu")
            json_path, weights_path = model_paths(path)
            if not weights_path.is_file():
                import json

                named = json.loads(json_path.read_text(encoding="utf-8")).get("weights", "")
                weights_path = json_path.parent / str(named)
            checksum = sha256_file(weights_path)
            members.append(Member(module, spec, json_path.resolve(), weights_path.resolve(), checksum))
        return cls(members, torch_device, **options)

    @classmethod
    def from_modules(cls, models: Sequence[tuple[nn.Module, ModelSpec]], device: Union[str, torch.device] = "auto",
                     **options: Any) -> "Predictor":
        """A predictor from in-memory ``(module, spec)`` pairs (no files; provenance has no paths).

        The modules are switched to eval mode and moved to the device; BatchNorm folding works on a copy.
        """
        return cls([Member(module, spec) for module, spec in models], select_device(device), **options)

    # --- information -----------------------------------------------------------------------
    def _choose_autocast(self) -> Optional[torch.dtype]:
        if not self.amp:
            return None
        if self.device.type == "cpu":
            return torch.bfloat16 if cpu_bf16_is_fast() else None
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description of the models and settings (goes into every output sidecar)."""
        models = []
        for m in self.members:
            models.append({
                "name": m.name,
                "path": str(m.path) if m.path else None,
                "weights": str(m.weights_path) if m.weights_path else None,
                "weights_sha256": m.weights_sha256,
                "voxel_size_zyx_um": list(m.spec.voxel_size),
                "architecture": m.spec.network.architecture,
                "normalization": asdict(m.spec.normalization),
                "decoding": asdict(m.spec.decoding),
            })
        return {
            "method": "cellpol",
            "architecture": self.architecture,
            "models": models,
            "ensemble_size": len(self.members),
            "model_voxel_size_zyx_um": list(self.voxel_size),
            "decoding": asdict(self.decoding),
            "device": str(self.device),
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "window_max_zyx": list(self.window) if self.window else "auto",
            "batch_size": self.batch_size or "auto",
            "context_um": self.context_um,
            "probability": "sqrt(h_nucleus * h_golgi) * (1 - |delta_e| / delta)",
        }

    # --- planning --------------------------------------------------------------------------
    def _activation_budget(self) -> float:
        if self.device.type == "cuda":
            try:
                free, _ = torch.cuda.mem_get_info(self.device)
            except RuntimeError:
                free = 4e9
            return CUDA_FREE_MEMORY_FRACTION * float(free)
        if self.device.type == "mps":
            return MPS_ACTIVATION_BUDGET
        return CPU_ACTIVATION_BUDGET

    def _bytes_per_voxel(self) -> float:
        width = max(max(m.spec.network.filters[0], m.spec.network.branch_filters) for m in self.members)
        value_bytes = 2 if self.autocast_dtype is not None else 4
        return _ACTIVATION_VALUES_PER_CHANNEL * width * value_bytes

    def plan(self, shape: Sequence[int]) -> tuple[WindowGrid, int]:
        """The window grid and batch size for an image of ``shape`` (model voxels ``(Z, Y, X)``)."""
        shape = tuple(int(s) for s in shape)
        reach_um = self.decoding.max_pair_distance_um + 2.0 * self.context_um
        overlap = [0 if n == 1 else int(math.ceil(reach_um / v - 1e-9)) for n, v in zip(shape, self.voxel_size)]
        multiple = self.multiple
        budget_voxels = max(1.0, self._activation_budget() / self._bytes_per_voxel())

        def smallest_tiling_window(axis: int) -> int:
            # A tiled axis needs a stride of at least half the overlap (and one pooling multiple).
            step = max(multiple[axis], int(math.ceil(overlap[axis] / 2)))
            return _round_up(overlap[axis] + step, multiple[axis])

        if self.window is not None:
            max_window = list(self.window)
        else:
            wz = min(_round_up(shape[0], multiple[0]), _round_up(DEFAULT_MAX_WINDOW_Z, multiple[0]))
            if shape[0] > wz:
                wz = max(wz, smallest_tiling_window(0))
            side = min(DEFAULT_MAX_WINDOW_YX, int(math.sqrt(budget_voxels / wz)))
            max_window = [wz, side, side]
        for axis in range(3):
            max_window[axis] = max(max_window[axis], multiple[axis])
            if shape[axis] > max_window[axis]:
                max_window[axis] = max(max_window[axis], smallest_tiling_window(axis))
        grid = plan_windows(shape, max_window, overlap, multiple)
        if self.batch_size is not None:
            batch = self.batch_size
        else:
            fits = int(budget_voxels // float(np.prod(grid.window)))
            batch = max(1, min(DEFAULT_BATCH_SIZE.get(self.device.type, 2), fits))
        return grid, max(1, min(batch, len(grid)))

    # --- running ---------------------------------------------------------------------------
    def __call__(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> PairSet:
        """Polarity vectors of ``volume`` (input voxel coordinates; ``sources = "predicted"``)."""
        return self.predict(volume, progress=progress, cancel=cancel).pairs

    def _check_volume(self, volume: Volume) -> None:
        if volume.nucleus_channel is None or volume.golgi_channel is None:
            raise ChannelError(
                f"Prediction needs a nucleus and a Golgi channel; this image has {volume.n_channels} channel(s). "
                "Choose them with --nucleus-channel and --golgi-channel."
            )
        name = self.members[0].name
        if self.spatial_dims == 2 and not volume.is_2d:
            raise CellPolError(
                f"Model '{name}' is a 2D model but the image is a 3D stack ({volume.spatial_shape[0]} slices); "
                "use a 3D model, or predict single planes."
            )
        if self.spatial_dims == 3 and volume.is_2d and self.multiple[0] != 1:
            raise CellPolError(
                f"Model '{name}' is a 3D model that pools along z, so it cannot run on a single-plane (2D) "
                "image; use a 2D model or --method classic."
            )

    def _prepare(self, volume: Volume, where: torch.device) -> tuple[dict[tuple, torch.Tensor], Resampling]:
        """Resampled and normalised ``(2, Z, Y, X)`` input per distinct normalisation (channel 0 nucleus),
        as float32 tensors on ``where`` (:func:`prepare_on_device`)."""
        norms = {}
        for m in self.members:
            norm = m.spec.normalization
            norms.setdefault((norm.low_percentile, norm.high_percentile, norm.clip), norm)
        return prepare_on_device(np.stack([volume.nucleus, volume.golgi]), volume.voxel_size, self.voxel_size,
                                 list(norms), where)

    def _staging_devices(self) -> list[torch.device]:
        """Where the whole prepared image and the stitched heatmaps may live, in order of preference: the
        predictor's device, then host memory (windows then travel to the device one batch at a time)."""
        return list(dict.fromkeys([self.device, torch.device("cpu")]))

    def _prepare_staged(self, volume: Volume) -> tuple[dict[tuple, torch.Tensor], Resampling]:
        """:meth:`_prepare` on the first of :meth:`_staging_devices` with room for the image."""
        failed: list[torch.device] = []
        for where in self._staging_devices():
            try:
                return self._prepare(volume, where)
            except (MemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                failed.append(_oom_device(exc, where))
                if where.type == "cuda":
                    torch.cuda.empty_cache()
        raise _out_of_memory(f"preparing the image ({volume.describe()}) for the network", failed,
                             "a smaller image (crop it)")

    def _run_member(self, member: Member, image: torch.Tensor, grid: WindowGrid, batch: int,
                    heat_sum: tuple[torch.Tensor, torch.Tensor], weights: list[list[torch.Tensor]],
                    progress: ProgressLike, cancel: CancelLike, done: int, total: int,
                    timings: dict[str, float]) -> tuple[dict[int, np.ndarray], int]:
        """Run one member over every window; add its weighted heatmaps to ``heat_sum``; return its raw
        embedding windows (float16 ``(2, z, y, x)``, the part inside the image) keyed by window index."""
        roles = member.spec.channel_roles
        order = [0 if role == "nucleus" else 1 for role in roles]
        channels = image[order] if order != [0, 1] else image  # on the staging device (see run_network)
        embeddings: dict[int, np.ndarray] = {}
        module = member.module
        indices = list(range(len(grid)))
        use_autocast = self.autocast_dtype is not None
        for first in range(0, len(indices), batch):
            _check_cancel(cancel)
            chunk = indices[first:first + batch]
            t0 = time.perf_counter()
            tensor = torch.zeros((len(chunk), channels.shape[0]) + grid.window, dtype=torch.float32,
                                 device=channels.device)
            for b, index in enumerate(chunk):
                sl = grid.valid_slices(index)
                extent = tuple(s.stop - s.start for s in sl)
                tensor[(b, slice(None)) + tuple(slice(0, e) for e in extent)] = channels[(slice(None),) + sl]
            if self.spatial_dims == 2:
                tensor = tensor[:, :, 0]
            tensor = tensor.to(self.device).contiguous(memory_format=self.memory_format)
            t1 = time.perf_counter()
            try:
                autocast = (
                    torch.autocast(self.device.type, dtype=self.autocast_dtype) if use_autocast
                    else contextlib.nullcontext()
                )
                with torch.inference_mode(), autocast:
                    out = module(tensor)
                out = {k: v.float().to(channels.device) for k, v in out.items()}  # to where the stitching is
                if self.spatial_dims == 2:
                    out = {k: v[:, :, None] for k, v in out.items()}  # (B, 1, 1, Y, X) like 3D
            except Exception as exc:  # noqa: BLE001 - only memory errors are translated
                if _is_oom(exc):
                    raise _out_of_memory(
                        f"running the network on {len(chunk)} window{'s' if len(chunk) != 1 else ''} of "
                        f"{'×'.join(map(str, grid.window))} voxels at a time",
                        [_oom_device(exc, self.device)],
                        "a smaller --window (Z Y X) or --batch-size",
                    ) from None
                raise
            del tensor
            t2 = time.perf_counter()
            for b, index in enumerate(chunk):
                sl = grid.valid_slices(index)
                extent = tuple(s.stop - s.start for s in sl)
                local = tuple(slice(0, e) for e in extent)
                gz, gy, gx = grid.index_to_grid(index)
                w3 = weights[0][gz][:, None, None] * weights[1][gy][None, :, None] * weights[2][gx][None, None, :]
                for key, target in zip(("heatmap_nucleus", "heatmap_golgi"), heat_sum):
                    target[sl] += out[key][b, 0][local] * w3
                if self.architecture == "cellpol":
                    e = torch.stack([out[k][b, 0][local] for k in ("embedding_nucleus", "embedding_golgi")])
                    embeddings[index] = e.to(torch.float16).cpu().numpy()
            del out
            t3 = time.perf_counter()
            timings["windows_in"] = timings.get("windows_in", 0.0) + (t1 - t0)
            timings["network"] = timings.get("network", 0.0) + (t2 - t1)
            timings["stitch"] = timings.get("stitch", 0.0) + (t3 - t2)
            done += len(chunk)
            if progress is not None:
                progress(done, total, "windows")
        return embeddings, done

    def predict(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None,
                keep_heatmaps: bool = False) -> Prediction:
        """Run the whole pipeline (module docstring) on ``volume``.

        Parameters
        ----------
        progress : callable, optional
            ``progress(done, total, "windows")`` after each batch of windows (all members counted).
        cancel : CancelToken or callable, optional
            Checked between batches; raises :class:`~app.core.errors.CancelledError`.
        keep_heatmaps : bool
            Return the stitched heatmaps (model voxel size) in the :class:`Prediction`.

        Raises
        ------
        CellPolError
            Missing channel roles, a 2D/3D mismatch, or running out of memory.
        """
        output = self.run_network(volume, progress, cancel)
        pairs = self.decode(output)
        return Prediction(
            pairs, output.resampling, self.voxel_size,
            output.heatmap_nucleus if keep_heatmaps else None,
            output.heatmap_golgi if keep_heatmaps else None, output.timings,
        )

    def run_network(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> NetworkOutput:
        """Preprocess, run every member over the windows and stitch the heatmaps (no decoding)."""
        self._check_volume(volume)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        prepared, mapping = self._prepare_staged(volume)
        staging = next(iter(prepared.values())).device
        shape = mapping.out_shape
        timings["preprocess"] = time.perf_counter() - t_start
        grid, batch = self.plan(shape)
        weights, totals = zip(*(grid.axis_weights(a) for a in range(3)))
        weights = [[torch.from_numpy(w.astype(np.float32)).to(staging) for w in axis] for axis in weights]
        try:
            heat_sum = tuple(torch.zeros(shape, dtype=torch.float32, device=staging) for _ in range(2))
            member_embeddings = []
            total, done = len(grid) * len(self.members), 0
            if progress is not None:
                progress(0, total, "windows")
            for member in self.members:
                norm = member.spec.normalization
                image = prepared[(norm.low_percentile, norm.high_percentile, norm.clip)]
                emb, done = self._run_member(member, image, grid, batch, heat_sum, list(weights), progress,
                                             cancel, done, total, timings)
                member_embeddings.append(emb)
            del prepared
            t0 = time.perf_counter()
            plane = torch.from_numpy((totals[1][:, None] * totals[2][None, :]).astype(np.float32)).to(staging)
            for z in range(shape[0]):
                scale = float(1.0 / (totals[0][z] * len(self.members)))
                for h in heat_sum:
                    h[z] /= plane
                    h[z] *= scale
            # On a GPU the local maxima are found there (a max-pool) rather than on the host afterwards.
            maxima = tuple(device_local_maxima(h) for h in heat_sum) if _maxima_on(staging) else None
            heat_np = tuple(h.cpu().numpy() for h in heat_sum)
            del heat_sum
            timings["stitch"] = timings.get("stitch", 0.0) + time.perf_counter() - t0
        except MemoryError:
            raise _out_of_memory(f"stitching the network's output for the image ({volume.describe()})",
                                 [torch.device("cpu")], "a smaller image (crop it)") from None
        except RuntimeError as exc:
            if _is_oom(exc):
                raise _out_of_memory(f"stitching the network's output for the image ({volume.describe()})",
                                     [_oom_device(exc, staging)], "a smaller image (crop it)") from None
            raise
        _check_cancel(cancel)
        timings["network_total"] = time.perf_counter() - t_start
        return NetworkOutput(heat_np[0], heat_np[1], member_embeddings, grid, mapping,
                             tuple(volume.spatial_shape), tuple(volume.voxel_size), batch, timings, maxima)

    def decode(self, output: NetworkOutput, decoding: Optional[DecodingSpec] = None) -> PairSet:
        """Peaks, pairing and mapping back to the input's voxels, with ``decoding`` (default: the model's)."""
        timings = dict(output.timings)
        t_start = time.perf_counter()
        dec = decoding if decoding is not None else self.decoding
        grid, mapping = output.grid, output.resampling
        (pos_n, vox_n, h_n), (pos_g, vox_g, h_g) = self.peaks(output, dec)
        timings["peaks"] = time.perf_counter() - t_start

        t0 = time.perf_counter()
        explicit_delta = decoding is not None or self._decoding_override is not None
        ridge = (ridge_scores(output.heatmap_golgi, vox_g, h_g, dec.ridge_radius_um, self.voxel_size)
                 if dec.pairing_ridge_weight > 0 else np.zeros(len(pos_g)))
        rows, cols, dist, pair_conf, extra = self._pair(grid, output.embeddings, pos_n, vox_n, pos_g, vox_g,
                                                        dec, explicit_delta, h_n, h_g, ridge)
        timings["pairing"] = time.perf_counter() - t0

        nuclei_in = _clip_points(mapping.to_input(pos_n[rows]) if len(rows) else np.zeros((0, 3)), output.image_shape)
        golgi_in = _clip_points(mapping.to_input(pos_g[cols]) if len(cols) else np.zeros((0, 3)), output.image_shape)
        heights = np.sqrt(np.clip(h_n[rows], 0, 1) * np.clip(h_g[cols], 0, 1)) if len(rows) else np.zeros(0)
        scores = np.clip(heights * pair_conf, 0.0, 1.0)
        timings["total"] = timings.get("network_total", 0.0) + time.perf_counter() - t_start
        output.timings.update({k: timings[k] for k in ("peaks", "pairing", "total")})
        meta = self.provenance()
        if decoding is not None:
            meta["decoding"] = asdict(dec)
        meta.update({
            "image_shape_zyx": list(output.image_shape),
            "model_grid_shape_zyx": list(mapping.out_shape),
            "windows": len(grid),
            "window_shape_zyx": list(grid.window),
            "window_overlap_zyx": list(grid.overlap),
            "batch_size": output.batch,
            "detected_nuclei": int(len(pos_n)),
            "detected_golgi": int(len(pos_g)),
            "peaks_capped": bool(max(len(pos_n), len(pos_g)) >= MAX_PEAKS),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            **extra,
        })
        return PairSet(nuclei_in, golgi_in, voxel_size=output.image_voxel_size, scores=scores, sources="predicted",
                       meta=meta)

    def peaks(self, output: NetworkOutput, decoding: Optional[DecodingSpec] = None
              ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every nucleus and every Golgi peak :meth:`decode` pairs from, before pairing.

        Returns ``(positions, voxels, heights)`` per class (nucleus, Golgi), in the model's grid
        (``output.resampling.to_input`` maps positions to the input's voxels), as :func:`find_peaks`.
        """
        dec = decoding if decoding is not None else self.decoding
        maxima = output.maxima or (None, None)
        return (find_peaks(output.heatmap_nucleus, dec.peak_threshold_nucleus, dec.min_distance_nucleus_um,
                           self.voxel_size, valley_ratio=dec.peak_valley_nucleus, maxima=maxima[0]),
                find_peaks(output.heatmap_golgi, dec.peak_threshold_golgi, dec.min_distance_golgi_um,
                           self.voxel_size, valley_ratio=dec.peak_valley_golgi, maxima=maxima[1]))

    def _pair(self, grid: WindowGrid, member_embeddings: list[dict[int, np.ndarray]],
              pos_n: np.ndarray, vox_n: np.ndarray, pos_g: np.ndarray, vox_g: np.ndarray,
              dec: DecodingSpec, explicit_delta: bool, h_n: np.ndarray, h_g: np.ndarray, ridge: np.ndarray):
        """Accepted pairs: nucleus rows, Golgi cols, distances, pairing confidence, and meta entries."""
        if self.architecture != "cellpol":
            from app.core.classic import pair_by_distance

            rows, cols = pair_by_distance(pos_n, pos_g, self.voxel_size, dec.max_pair_distance_um)
            dist = np.linalg.norm((pos_n[rows] - pos_g[cols]) * np.asarray(self.voxel_size), axis=1)
            return rows, cols, dist, np.ones(len(rows)), {"pairing": "distance (ctrdet)"}
        ei, ej, dist = candidate_edges(pos_n, pos_g, self.voxel_size, dec.max_pair_distance_um)
        window = grid.best_windows(pos_n[ei], pos_g[ej], self.voxel_size) if len(ei) else np.zeros(0, dtype=np.int64)
        cost = np.full(len(ei), np.inf)
        has_window = window >= 0
        if has_window.any():
            per_member = []
            for member, embeddings in zip(self.members, member_embeddings):
                own = member.spec.decoding.embedding_delta
                delta = dec.embedding_delta if explicit_delta else own
                per_member.append(self._edge_embedding_distance(
                    grid, embeddings, window, ei, ej, vox_n, vox_g, has_window) / delta)
            cost[has_window] = np.mean(per_member, axis=0)
        weight, height_weight = dec.pairing_distance_weight, dec.pairing_height_weight
        ridge_weight = dec.pairing_ridge_weight
        mixed = cost
        if weight > 0 or height_weight > 0 or ridge_weight > 0:
            # The embeddings still veto (|Δe| ≥ Δ stays inadmissible); among the rest, distance, the
            # strength of both peaks and how tube-like the Golgi peak is count too.
            blend = (1.0 - weight) * np.minimum(cost, 1.0) + weight * dist / max(dec.max_pair_distance_um, 1e-12)
            if height_weight > 0:
                strength = np.sqrt(np.clip(h_n[ei], 0.0, 1.0) * np.clip(h_g[ej], 0.0, 1.0))
                blend = (1.0 - height_weight) * blend + height_weight * (1.0 - strength)
            if ridge_weight > 0:
                blend = blend + ridge_weight * ridge[ej]
            mixed = np.where(cost < 1.0, np.minimum(blend, 1.0 - 1e-9), np.inf)
        rows_i, cols_i, edge = match_pairs(len(pos_n), len(pos_g), ei, ej, mixed, dist, dec.max_pair_distance_um)
        extra = {
            "pairing": "embedding, max-weight matching" + (f", distance weight {weight:g}" if weight > 0 else "")
                       + (f", peak-height weight {height_weight:g}" if height_weight > 0 else "")
                       + (f", ridge weight {ridge_weight:g} at {dec.ridge_radius_um:g} µm"
                          if ridge_weight > 0 else ""),
            "candidate_edges": int(len(ei)),
            "edges_without_common_window": int((~has_window).sum()),
        }
        return rows_i, cols_i, dist[edge], 1.0 - cost[edge], extra

    @staticmethod
    def _edge_embedding_distance(grid: WindowGrid, embeddings: dict[int, np.ndarray], window: np.ndarray,
                                 ei: np.ndarray, ej: np.ndarray, vox_n: np.ndarray, vox_g: np.ndarray,
                                 has_window: np.ndarray) -> np.ndarray:
        """``|e_n − e_g|`` of each edge with a window, both read from that window's raw output."""
        sel = np.flatnonzero(has_window)
        out = np.empty(len(sel))
        win = window[sel]
        for w in np.unique(win):
            rows = np.flatnonzero(win == w)
            edges = sel[rows]
            stored = embeddings[int(w)]
            origin = np.asarray(grid.origin(int(w)))
            limit = np.asarray(stored.shape[1:]) - 1
            local_n = np.clip(vox_n[ei[edges]] - origin, 0, limit)
            local_g = np.clip(vox_g[ej[edges]] - origin, 0, limit)
            e_n = _read_embedding(stored[0], local_n)
            e_g = _read_embedding(stored[1], local_g)
            out[rows] = np.abs(e_n - e_g)
        return out


def _clip_points(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Keep mapped positions inside the image (half a voxel of rounding at the faces)."""
    if len(points) == 0:
        return np.zeros((0, 3))
    upper = np.asarray(shape, dtype=np.float64) - 1.0
    return np.clip(points, 0.0, upper)


def _check_compatible(members: Sequence[Member]) -> None:
    first = members[0]
    for other in members[1:]:
        a, b = first.spec, other.spec
        problems = []
        if not np.allclose(a.voxel_size, b.voxel_size, rtol=1e-6, atol=0):
            problems.append(f"voxel size {list(a.voxel_size)} vs {list(b.voxel_size)} µm")
        if a.network.architecture != b.network.architecture:
            problems.append(f"architecture {a.network.architecture} vs {b.network.architecture}")
        if a.network.spatial_dims != b.network.spatial_dims:
            problems.append(f"{a.network.spatial_dims}D vs {b.network.spatial_dims}D")
        if problems:
            raise CellPolError(
                f"Models '{first.name}' and '{other.name}' cannot form an ensemble: different "
                + "; ".join(problems) + ". Ensemble members must be trained at the same voxel size with the same "
                "kind of network."
            )


# ----------------------------------------------------------------------------------------------
# Starter model
# ----------------------------------------------------------------------------------------------
def models_dir() -> Path:
    """The folder holding the shipped models (``resources/models``)."""
    return Path(__file__).resolve().parents[2] / "resources" / "models"


#: Names that win when a models folder holds several models of one dimensionality.
_STARTER_NAMES = ("starter", "cellpol_starter", "starter_2d", "cellpol_starter_2d")


def starter_models(folder: Optional[PathLike] = None) -> dict[int, Path]:
    """The shipped starter model ``.json`` per dimensionality (``{3: …, 2: …}``, missing ones left out).

    Among the models in ``folder`` (default :func:`models_dir`) of one dimensionality, one named
    ``starter`` or ``cellpol_starter[_2d]`` wins, else the first by name. Files that cannot be read are
    skipped (the error surfaces when such a model is named explicitly). One pass over the folder.
    """
    from app.core.modelfile import load_spec

    folder = Path(folder) if folder is not None else models_dir()
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            dims = load_spec(path).network.spatial_dims
        except CellPolError:
            continue
        if dims not in found or (path.stem in _STARTER_NAMES and found[dims].stem not in _STARTER_NAMES):
            found[dims] = path
    return found


def find_starter_model(folder: Optional[PathLike] = None, spatial_dims: Optional[int] = 3) -> Optional[Path]:
    """The shipped starter model's ``.json`` for ``spatial_dims``-D images (``None``: any, 3D first), or None."""
    found = starter_models(folder)
    if spatial_dims is None:
        return found.get(3) or found.get(2)
    return found.get(spatial_dims)


class StarterPredictor:
    """The bundled starter models, the 3D one for stacks and the 2D one for single planes, chosen per image.

    Each :class:`Predictor` is built when first needed; ``options`` go to every one of them.

    Raises
    ------
    CellPolError
        No starter model at all (at construction), or none for an image's dimensionality (when called).
    """

    def __init__(self, device: Union[str, torch.device] = "auto", folder: Optional[PathLike] = None,
                 **options: Any) -> None:
        found = starter_models(folder)
        self.paths = {dims: found.get(dims) for dims in (3, 2)}
        if not any(self.paths.values()):
            raise CellPolError("No starter model is installed (resources/models): pass --model PATH or use "
                               "--method classic.")
        self.device = select_device(device)
        self.options = options
        self._predictors: dict[int, Predictor] = {}

    def for_volume(self, volume: Volume) -> "Predictor":
        """The predictor that fits ``volume`` (2D or 3D)."""
        dims = 2 if volume.is_2d else 3
        if dims not in self._predictors:
            path = self.paths[dims]
            if path is None:
                raise CellPolError(f"No {dims}D starter model is installed, and this image is "
                                   f"{'a single plane' if dims == 2 else 'a 3D stack'}: pass a {dims}D model "
                                   "with --model PATH or use --method classic.")
            self._predictors[dims] = Predictor.from_files([path], self.device, **self.options)
        return self._predictors[dims]

    def __call__(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> PairSet:
        return self.for_volume(volume)(volume, progress=progress, cancel=cancel)

    def predict(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> "Prediction":
        return self.for_volume(volume).predict(volume, progress=progress, cancel=cancel)

    def provenance(self) -> dict[str, Any]:
        """Both starter models, each labelled with the images it serves (2D or 3D)."""
        models = []
        for dims, path in self.paths.items():
            if path is not None:
                models.append({"name": path.stem, "path": str(path.resolve()), "images": f"{dims}D",
                               "weights_sha256": sha256_file(model_paths(path)[1])})
        return {"method": "cellpol", "models": models, "device": str(self.device),
                "note": "the bundled starter models: 3D stacks use the 3D one, single planes the 2D one"}
