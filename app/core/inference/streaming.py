"""Streaming prediction: an image too big for memory, read and predicted tile by tile.

:func:`predict_lazy_job` predicts a :class:`~app.core.imageio.LazyImage` (or the :class:`LazyVolume` that
:func:`open_for_prediction` makes of a file) without ever holding it whole. The pairs are those of the
in-memory path (:meth:`Predictor.job <app.core.inference.predictor.Predictor.job>`) to within the small
differences of where the network's windows fall; the CSV is the same.

How it works
------------
1. **Statistics.** Each channel's normalisation percentiles come from a strided subsample of the image at
   the model's voxel size, read region by region (:func:`estimate_percentiles`): up to
   :data:`STATS_PLANES` model-grid planes evenly spread in z (every plane where there are fewer), each
   resampled tile by tile from the two input planes it needs, keeping every ``s``-th row and column with
   ``s`` chosen so that about :data:`~app.core.preprocess._PERCENTILE_SAMPLE` voxels per channel are
   sampled. An image of at most that many model voxels is sampled whole, so its statistics are exactly
   those of the in-memory path.
2. **Tiles.** The model grid is cut into *cores* that partition it (in y and x; in z too where a slab
   would not fit), each grown by a *halo* of ``d_max + 2 × context`` µm (the network windows' overlap) on
   every side that has a neighbour (:func:`plan_tiles`). A tile's *extent* (core + halo) is read from the
   lazy image one channel at a time (only the input voxels its linear resampling needs), resampled to the
   model grid exactly as the whole image would be (:func:`resample_region`: the voxel-centre mapping of
   :class:`~app.core.preprocess.Resampling` and ``F.interpolate``'s edge handling), normalised with the
   global statistics and run through the network windows like a small image.
3. **Ownership.** Peaks are found on the tile's stitched heatmaps; a peak belongs to the tile whose core
   holds its (integer) voxel, so a peak on a core border belongs to exactly one tile. The halo makes the
   heatmap, the peak thinning and the ridge scores at an owned peak what the whole image would give.
4. **Edges, then one matching.** For each owned nucleus the tile lists its candidate edges to every Golgi
   of the extent within ``d_max`` (a Golgi that far from the core lies at least ``2 × context`` inside the
   extent) and their embedding cost, read in the tile window holding both ends deepest (the pairing rule
   of :mod:`~app.core.inference.pairing`). Only these small *tile records* (peaks and edges) are kept; the
   heatmaps, embeddings and the tile's pixels are released. At the end each edge's Golgi is resolved to
   the Golgi owned by its own tile (same voxel, ±1 voxel), and all pairs are matched in one global
   maximum-weight matching, exactly the in-memory rule: every cell yields one vector, also where it
   straddles a tile border.

Memory is bounded by the tile size (:data:`DEFAULT_TILE_BYTES` of tile data plus the network's activation
budget), not by the image. With ``record_dir`` each finished tile's record is written there atomically, so
a prediction that is stopped (a cancel, a kill) resumes at the next tile; the folder is removed when the
prediction is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from app.core.errors import CellPolError, ChannelError, MissingVoxelSizeError
from app.core.fileutil import atomic_path, atomic_write_json
from app.core.inference.refine import LazyChannel, refine_golgi
from app.core.inference.pairing import (
    PairingRun,
    _find_edges,
    _read_embedding_costs,
    match_pairs,
    pair_by_distance_only,
    pairing_cost,
    pairing_description,
    vector_scores,
)
from app.core.inference.peaks import MAX_PEAKS, Peaks, ridge_scores
from app.core.jobs import CancelToken, Job, Note, Progress, Result, check_cancel
from app.core.pairs import PairSet
from app.core.preprocess import _PERCENTILE_SAMPLE, Resampling, linear_sources, resampling_for

#: Estimated in-memory footprint (bytes, :func:`in_memory_bytes`) above which :func:`open_for_prediction` streams an
#: image. The whole-image peak RSS is about this estimate + 0.9 GB (64×768×768×2 at 0.27×0.666 µm: 0.84 GB
#: estimated, 1.73 GB measured), so streaming starts where the in-memory path would pass about 3 GB.
STREAMING_MEMORY_BUDGET = 2.0e9
#: Memory (bytes) for one tile's data: its input pixels, resampled and normalised copy, heatmaps and
#: embeddings (the network's activations come on top: the predictor's activation budget).
DEFAULT_TILE_BYTES = 1.0e9
#: Model-grid planes the normalisation statistics are sampled from (all planes where there are fewer).
STATS_PLANES = 12
#: Smallest tile core side (model voxels) in y and x.
MIN_CORE = 64


# ----------------------------------------------------------------------------------------------
# What is streamed
# ----------------------------------------------------------------------------------------------
@dataclass
class LazyVolume:
    """An image file opened for streaming prediction: a :class:`~app.core.imageio.LazyImage` with the channel
    roles and voxel size decided, shaped like a :class:`~app.core.volume.Volume` where batch prediction
    looks (``spatial_shape``, ``nucleus_channel``, ``golgi_channel``, ``metadata``, ``describe``).

    Attributes
    ----------
    image : LazyImage
    voxel_size : tuple of float
        ``(z, y, x)`` µm.
    nucleus_channel, golgi_channel : int
    metadata : dict
        ``voxel_size_source`` and ``streaming`` (the estimate that chose this path).
    record_dir : Path, optional
        Where tile records are kept for resuming (:func:`predict_lazy_job`).
    """

    image: Any
    voxel_size: tuple[float, float, float]
    nucleus_channel: int
    golgi_channel: int
    metadata: dict[str, Any] = field(default_factory=dict)
    record_dir: Optional[Path] = None
    #: Close ``image`` when its prediction ends (it was opened for it: :func:`open_for_prediction`).
    close_after: bool = False

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.spatial_shape[0] == 1

    @property
    def n_channels(self) -> int:
        return int(self.image.shape[0])

    def describe(self) -> str:
        z, y, x = self.spatial_shape
        vz, vy, vx = self.voxel_size
        return (f"{'2D' if self.is_2d else '3D'} {self.n_channels}ch {z}×{y}×{x} {np.dtype(self.image.dtype)} voxel "
                f"{vz:g}×{vy:g}×{vx:g} µm (nucleus={self.nucleus_channel}, golgi={self.golgi_channel}), read "
                "tile by tile")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.image.close()


def in_memory_bytes(shape_czyx: Sequence[int], itemsize: int, voxel_size: Sequence[float],
                    model_voxel_size: Sequence[float], members: int = 1) -> float:
    """Estimated peak memory (bytes) of predicting an image whole (:meth:`Predictor.job`), activations aside.

    The whole image as read, its two prediction channels as float32 (staging converts them before
    resampling), and at the model's voxel size the normalised copy, the stitched heatmaps and the raw
    embedding windows (float16, about 1.5× for the windows' overlap) of each member.
    """
    c, z, y, x = (int(n) for n in shape_czyx)
    model = resampling_for((z, y, x), voxel_size, model_voxel_size).out_shape
    model_voxels = float(np.prod(model))
    return c * z * y * x * itemsize + 2 * z * y * x * 4.0 + model_voxels * (2 * 4 + 2 * 4 + members * 2 * 2 * 1.5)


def open_for_prediction(image: Any, read_options: Any, predictor: Any, budget_bytes: Optional[float] = None,
                        target: Optional[os.PathLike | str] = None) -> Any:
    """What batch prediction predicts for ``image``: a :class:`~app.core.volume.Volume` read whole, or a
    :class:`LazyVolume` (streamed tile by tile) where predicting it whole would need more than
    ``budget_bytes`` (:func:`in_memory_bytes`; default :data:`STREAMING_MEMORY_BUDGET`).

    Parameters
    ----------
    image : path or SeriesItem
    read_options : ReadOptions
        :class:`app.core.batch.ReadOptions`: voxel size, axes and channel roles given by the user.
    predictor : Predictor or StarterPredictor
        Its model's voxel size enters the estimate.
    budget_bytes : float, optional
    target : path, optional
        The output CSV: a streamed prediction keeps its tile records in ``.<target name>.tiles`` beside it
        (resumed by the next run, removed once complete).

    Returns
    -------
    Volume or LazyVolume

    Raises
    ------
    CellPolError
        What :func:`~app.core.imageio.read_volume` raises for the file (it reads every image the lazy path
        cannot, and words every error).
    """
    from app.core.imageio import open_lazy

    budget = STREAMING_MEMORY_BUDGET if budget_bytes is None else float(budget_bytes)
    series = int(getattr(image, "index", 0))
    if getattr(read_options, "extra", None):
        return read_options.read(image)  # reader options only read_volume knows
    try:
        lazy = open_lazy(Path(image), series=series, axes=read_options.axes, voxel_size=read_options.voxel_size)
    except CellPolError:
        return read_options.read(image)  # the same error, worded by the whole-image reader
    try:
        model_voxel = _model_voxel_size(predictor, lazy.shape[1] == 1)
        if lazy.voxel_size is None or model_voxel is None or lazy.lazy_note.startswith("none"):
            lazy.close()
            return read_options.read(image)
        estimate = in_memory_bytes(lazy.shape, np.dtype(lazy.dtype).itemsize, lazy.voxel_size, model_voxel,
                                   _member_count(predictor))
        if estimate <= budget:
            lazy.close()
            return read_options.read(image)
        nucleus, golgi, sources = _lazy_roles(Path(image), series, lazy, read_options)
    except BaseException:
        lazy.close()
        raise
    metadata = {
        "voxel_size_source": "user" if read_options.voxel_size is not None else "file",
        "channel_roles_source": sources,
        "format": lazy.format,
        "streaming": {"estimated_in_memory_bytes": round(estimate), "budget_bytes": round(budget)},
    }
    records = Path(target).parent / f".{Path(target).name}.tiles" if target is not None else None
    return LazyVolume(lazy, tuple(lazy.voxel_size), nucleus, golgi, metadata, records,  # type: ignore[arg-type]
                      close_after=True)


def _model_voxel_size(predictor: Any, is_2d: bool) -> Optional[tuple[float, float, float]]:
    if hasattr(predictor, "voxel_size"):
        return tuple(predictor.voxel_size)
    paths = getattr(predictor, "paths", None)  # StarterPredictor: the model that fits
    if paths:
        from app.core.modelfile import load_spec

        path = paths.get(2 if is_2d else 3)
        return tuple(load_spec(path).voxel_size) if path is not None else None
    return None


def _member_count(predictor: Any) -> int:
    return len(getattr(predictor, "members", [None]))


def _lazy_roles(path: Path, series: int, lazy: Any, read_options: Any) -> tuple[int, int, dict]:
    """The nucleus and Golgi channels as :func:`~app.core.imageio.read_volume` decides them (user, roles stored
    in the file, channel names, first free channels)."""
    from app.core.imageio.readers import _open_image
    from app.core.imageio.reading import _channel_roles

    with contextlib.ExitStack() as stack:
        stored = dict(getattr(_open_image(path, series, stack), "stored_roles", {}) or {})
    requested = {"nucleus": read_options.nucleus_channel, "golgi": read_options.golgi_channel}
    nucleus, golgi, sources = _channel_roles(int(lazy.shape[0]), lazy.channel_names, requested, stored, path)
    if nucleus is None or golgi is None:
        raise ChannelError(f"Need both a nucleus and a Golgi channel; {path} has {lazy.shape[0]} channel(s).",
                           settings={"nucleus_channel": None, "golgi_channel": None})
    return int(nucleus), int(golgi), sources


def as_lazy_volume(image: Any, nucleus_channel: int = 0, golgi_channel: int = 1,
                   voxel_size: Optional[Sequence[float]] = None) -> LazyVolume:
    """A :class:`LazyVolume` of an open :class:`~app.core.imageio.LazyImage` (or anything with ``shape``,
    ``dtype``, ``voxel_size`` and ``read_region``) with the channel roles given.

    Raises
    ------
    MissingVoxelSizeError
        Neither ``voxel_size`` nor the image gives one.
    ChannelError
        A role names a channel the image does not have, or both roles name one channel.
    """
    voxel = voxel_size if voxel_size is not None else getattr(image, "voxel_size", None)
    if voxel is None:
        raise MissingVoxelSizeError("The image has no voxel size; give one (Z Y X in µm).")
    n = int(image.shape[0])
    for label, index in (("Nucleus", nucleus_channel), ("Golgi", golgi_channel)):
        if not 0 <= int(index) < n:
            raise ChannelError(f"{label} channel {index} does not exist: the image has {n} channel(s).")
    if int(nucleus_channel) == int(golgi_channel):
        raise ChannelError(f"Nucleus and Golgi channel are both {nucleus_channel}; they must differ.")
    return LazyVolume(image, tuple(float(v) for v in voxel), int(nucleus_channel),  # type: ignore[arg-type]
                      int(golgi_channel), {"voxel_size_source": "user" if voxel_size is not None else "file"})


# ----------------------------------------------------------------------------------------------
# Tiles
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One tile of the model grid: its *core* (the region it owns; the cores partition the grid) and its
    *extent* (the core grown by the halo, clipped to the grid), as ``(z, y, x)`` slices."""

    index: int
    core: tuple[slice, slice, slice]
    extent: tuple[slice, slice, slice]

    @property
    def extent_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.extent)  # type: ignore[return-value]

    @property
    def origin(self) -> np.ndarray:
        return np.array([s.start for s in self.extent], dtype=np.int64)

    def owns(self, voxels: np.ndarray) -> np.ndarray:
        """Which of the ``(N, 3)`` global model-grid voxels lie in the core."""
        voxels = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        lo = np.array([s.start for s in self.core])
        hi = np.array([s.stop for s in self.core])
        return np.all((voxels >= lo) & (voxels < hi), axis=1)


@dataclass(frozen=True)
class TilePlan:
    """The tiles of a model grid (:func:`plan_tiles`)."""

    shape: tuple[int, int, int]
    core: tuple[int, int, int]
    halo: tuple[int, int, int]
    tiles: tuple[Tile, ...]

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(int(math.ceil(n / c)) for n, c in zip(self.shape, self.core))  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.tiles)


def plan_tiles(shape: Sequence[int], core: Sequence[int], halo: Sequence[int]) -> TilePlan:
    """Cut a model grid of ``shape`` into tiles with cores of at most ``core`` voxels per axis (evenly
    sized) and ``halo`` voxels of context on every side that has a neighbour.

    Parameters
    ----------
    shape, core, halo : sequence of 3 int
        ``(z, y, x)`` in model voxels.

    Returns
    -------
    TilePlan
    """
    shape = tuple(int(n) for n in shape)
    core = tuple(max(1, min(int(c), n)) for c, n in zip(core, shape))
    bounds = []
    for n, c in zip(shape, core):
        count = int(math.ceil(n / c))
        bounds.append(np.round(np.linspace(0, n, count + 1)).astype(np.int64))
    halo = tuple(int(h) if len(b) > 2 else 0 for h, b in zip(halo, bounds))
    tiles = []
    for iz in range(len(bounds[0]) - 1):
        for iy in range(len(bounds[1]) - 1):
            for ix in range(len(bounds[2]) - 1):
                starts = [bounds[a][i] for a, i in enumerate((iz, iy, ix))]
                stops = [bounds[a][i + 1] for a, i in enumerate((iz, iy, ix))]
                core_sl = tuple(slice(int(a), int(b)) for a, b in zip(starts, stops))
                extent = tuple(slice(max(0, int(a) - h), min(n, int(b) + h))
                               for a, b, h, n in zip(starts, stops, halo, shape))
                tiles.append(Tile(len(tiles), core_sl, extent))  # type: ignore[arg-type]
    return TilePlan(shape, core, halo, tuple(tiles))  # type: ignore[arg-type]


def choose_core(model_shape: Sequence[int], halo: Sequence[int], input_voxels_per_model_voxel: float,
                itemsize: int, tile_bytes: float, members: int = 1) -> tuple[int, int, int]:
    """Tile core ``(z, y, x)`` whose extent fits ``tile_bytes``: whole in z where a slab of at least
    :data:`MIN_CORE` ² in-plane fits, the largest square in-plane core that fits.

    The bytes per model voxel of an extent: the input pixels of one channel (``itemsize`` each) and their
    float32 copy resampled in z, the normalised image (2 × float32), the heatmaps (2 × float32) and the
    embedding windows (float16, ×1.5 for the overlap) of each member.
    """
    per_voxel = input_voxels_per_model_voxel * (itemsize + 4.0) + 16 + 8 + members * 6
    voxels = max(1.0, float(tile_bytes) / per_voxel)
    z_len, y_len, x_len = (int(n) for n in model_shape)
    hz, hy, hx = (int(h) for h in halo)
    z_core = z_len
    if z_len * (MIN_CORE + 2 * hy) * (MIN_CORE + 2 * hx) > voxels:
        z_core = max(1, int(voxels / ((MIN_CORE + 2 * hy) * (MIN_CORE + 2 * hx))) - 2 * hz)
    z_extent = min(z_len, z_core + (2 * hz if z_core < z_len else 0))
    side = int(math.sqrt(voxels / max(1, z_extent))) - 2 * max(hy, hx)
    side = max(MIN_CORE, side)
    return z_core, min(y_len, side), min(x_len, side)


# ----------------------------------------------------------------------------------------------
# Reading and resampling a region
# ----------------------------------------------------------------------------------------------
def _sources(mapping: Resampling, axis: int, selection: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~app.core.preprocess.linear_sources` of a slice or of an array of output voxels."""
    if isinstance(selection, slice):
        return linear_sources(mapping, axis, selection.start, selection.stop)
    selection = np.asarray(selection, dtype=np.int64)
    i0, i1, w = linear_sources(mapping, axis, int(selection.min()), int(selection.max()) + 1)
    pick = selection - int(selection.min())
    return i0[pick], i1[pick], w[pick]


def source_box(mapping: Resampling, box: Sequence[Any]) -> tuple[slice, slice, slice]:
    """The input voxels the linear resampling of model-grid ``box`` reads, as ``(z, y, x)`` slices.

    ``box`` holds one slice (or array of model-grid voxels) per axis.
    """
    out = []
    for axis, sel in enumerate(box):
        i0, i1, _ = _sources(mapping, axis, sel)
        out.append(slice(int(i0.min()), int(i1.max()) + 1))
    return tuple(out)  # type: ignore[return-value]


def resample_region(block: np.ndarray, mapping: Resampling, box: Sequence[Any],
                    block_origin: Sequence[int]) -> torch.Tensor:
    """Model-grid voxels ``box`` of a whole image resampled as :func:`~app.core.preprocess.resample` (and
    ``prepare_on_device``) would, computed from ``block``, the input voxels :func:`source_box` names.

    Parameters
    ----------
    block : ndarray, shape (Z, Y, X)
        Input pixels starting at ``block_origin``.
    mapping : Resampling
        The whole image's mapping to the model grid.
    box : sequence of 3 slice or array of int
        Model-grid region wanted (a slice per axis), or the model-grid voxels wanted along an axis.
    block_origin : sequence of 3 int

    Returns
    -------
    Tensor
        float32 ``(z, y, x)``, one entry per voxel of ``box``.
    """
    x: Optional[np.ndarray] = None
    for axis, sel in enumerate(box):
        i0, i1, w = _sources(mapping, axis, sel)
        i0, i1 = i0 - int(block_origin[axis]), i1 - int(block_origin[axis])
        if x is None:  # the first axis works from the stored pixels, one output plane at a time
            x = np.empty((len(i0),) + block.shape[1:], dtype=np.float32)
            for k, (a, b, t) in enumerate(zip(i0, i1, w)):
                x[k] = block[a]
                if t != 0.0 and b != a:
                    x[k] += np.float32(t) * (block[b].astype(np.float32) - x[k])
            continue
        if isinstance(sel, slice) and mapping.in_shape[axis] == mapping.out_shape[axis]:
            continue  # the identity along this axis (source_box read exactly the box)
        # numpy's take is several times faster here than torch's index_select along an inner axis
        low = np.take(x, i0, axis=axis)
        high = np.take(x, i1, axis=axis)
        shape = [1, 1, 1]
        shape[axis] = len(w)
        high -= low
        high *= w.astype(np.float32).reshape(shape)
        low += high
        x = low
        del high
    return torch.from_numpy(x)


def _read_model_box(image: Any, channel: int, mapping: Resampling, box: Sequence[Any]) -> torch.Tensor:
    """Channel ``channel`` of model-grid ``box``: only the input voxels it needs are read."""
    src = source_box(mapping, box)
    block = image.read_region(z=(src[0].start, src[0].stop), y=(src[1].start, src[1].stop),
                              x=(src[2].start, src[2].stop), c=(channel, channel + 1))[0]
    return resample_region(block, mapping, box, [s.start for s in src])


# ----------------------------------------------------------------------------------------------
# Normalisation statistics
# ----------------------------------------------------------------------------------------------
def stats_sampling(model_shape: Sequence[int], sample: int = _PERCENTILE_SAMPLE,
                   planes: int = STATS_PLANES) -> tuple[np.ndarray, int]:
    """Which model-grid planes and which in-plane stride the statistics sample (see the module docstring).

    Returns
    -------
    z_planes : ndarray of int
        All planes where the grid has at most ``sample`` voxels, else ``min(planes, Z)`` evenly spread.
    stride : int
        Every ``stride``-th row and column (1 where the grid is small).
    """
    z, y, x = (int(n) for n in model_shape)
    if z * y * x <= sample:
        return np.arange(z), 1
    count = min(z, int(planes))
    z_planes = np.unique(np.round(np.linspace(0, z - 1, count)).astype(np.int64))
    stride = max(1, int(round(math.sqrt(len(z_planes) * y * x / float(sample)))))
    return z_planes, stride


def estimate_percentiles(image: Any, channels: Sequence[int], mapping: Resampling, plan: TilePlan,
                         percentiles: Sequence[tuple[float, float]], cancel: Optional[CancelToken] = None
                         ) -> tuple[dict[tuple[float, float], list[tuple[float, float]]], dict[str, Any]]:
    """Per-channel percentile pairs of the resampled image from a strided subsample, read region by region.

    Each sampled model-grid plane (:func:`stats_sampling`) is read and resampled one tile core at a time
    (:func:`_read_model_box`), keeping the voxels whose global row and column are multiples of the stride.

    Parameters
    ----------
    image : LazyImage
    channels : sequence of int
        The image's channels, in the order the statistics are wanted (nucleus, Golgi).
    mapping : Resampling
    plan : TilePlan
        Its cores bound each read.
    percentiles : sequence of (low, high)
    cancel : CancelToken, optional

    Returns
    -------
    ranges : dict
        ``(low, high)`` → one ``(lo, hi)`` value pair per channel.
    info : dict
        The sampling (planes, stride, voxels per channel), for the provenance.
    """
    z_planes, stride = stats_sampling(mapping.out_shape)
    samples: list[list[np.ndarray]] = [[] for _ in channels]
    cores = {(t.core[1].start, t.core[1].stop, t.core[2].start, t.core[2].stop) for t in plan.tiles}
    for z in z_planes:
        for y0, y1, x0, x1 in sorted(cores):
            check_cancel(cancel)
            ys = np.arange(-(-y0 // stride) * stride, y1, stride)  # global rows and columns ≡ 0 mod stride
            xs = np.arange(-(-x0 // stride) * stride, x1, stride)
            if len(ys) == 0 or len(xs) == 0:
                continue
            box = (slice(int(z), int(z) + 1), ys, xs)  # only the sampled voxels are resampled
            for k, channel in enumerate(channels):
                samples[k].append(_read_model_box(image, channel, mapping, box).numpy().reshape(-1))
    ranges: dict[tuple[float, float], list[tuple[float, float]]] = {}
    flat = [np.concatenate(s) if s else np.zeros(1, np.float32) for s in samples]
    for low, high in percentiles:
        ranges[(low, high)] = [tuple(float(v) for v in np.percentile(f, (low, high))) for f in flat]  # type: ignore
    info = {"planes": [int(z) for z in z_planes], "stride_yx": int(stride), "voxels_per_channel": int(len(flat[0]))}
    return ranges, info


# ----------------------------------------------------------------------------------------------
# Tile records
# ----------------------------------------------------------------------------------------------
@dataclass
class TileRecord:
    """What a tile leaves for the final matching (global model-grid coordinates).

    Attributes
    ----------
    nuclei_pos, nuclei_vox, nuclei_h : ndarray
        Owned nucleus peaks: sub-voxel positions, voxels, heights.
    golgi_pos, golgi_vox, golgi_h, golgi_ridge : ndarray
        Owned Golgi peaks, with their ridge scores.
    edge_nucleus : ndarray of int
        Index into the owned nuclei of each candidate edge.
    edge_golgi_vox : ndarray of int, shape (E, 3)
        The Golgi voxel of each edge (resolved to an owned Golgi of some tile at the end).
    edge_cost : ndarray
        Each edge's embedding cost ``|Δe| / Δ`` (``inf`` where no window holds both ends).
    windows : int
    capped : bool
        Whether a class hit :data:`~app.core.inference.peaks.MAX_PEAKS` in this tile.
    """

    nuclei_pos: np.ndarray
    nuclei_vox: np.ndarray
    nuclei_h: np.ndarray
    golgi_pos: np.ndarray
    golgi_vox: np.ndarray
    golgi_h: np.ndarray
    golgi_ridge: np.ndarray
    edge_nucleus: np.ndarray
    edge_golgi_vox: np.ndarray
    edge_cost: np.ndarray
    windows: int = 0
    capped: bool = False

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz``."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **{k: np.asarray(v) for k, v in asdict(self).items()})

    @classmethod
    def load(cls, path: Path) -> "TileRecord":
        with np.load(path) as data:
            values = {k: data[k] for k in data.files}
        values["windows"] = int(values["windows"])
        values["capped"] = bool(values["capped"])
        return cls(**values)


def _tile_record(predictor: Any, tile: Tile, grid: Any, heat: tuple[np.ndarray, np.ndarray], embeddings: list,
                 maxima: Any) -> TileRecord:
    """Peaks of one tile's heatmaps, the owned ones kept, and the candidate edges of its owned nuclei."""
    from app.core.inference.predictor import NetworkOutput

    dec = predictor.decoding
    output = NetworkOutput(heat[0], heat[1], embeddings, grid, None, tile.extent_shape, (1.0, 1.0, 1.0), 1,
                           maxima=maxima)  # type: ignore[arg-type]
    nuclei, golgi = predictor.peaks(output, dec)
    origin = tile.origin
    own_n = tile.owns(nuclei.voxels + origin)
    own_g = tile.owns(golgi.voxels + origin)
    owned_n = Peaks(*(a[own_n] for a in nuclei))
    owned_g = Peaks(*(a[own_g] for a in golgi))
    ridge = (ridge_scores(heat[1], owned_g.voxels, owned_g.heights, dec.ridge_radius_um, predictor.voxel_size)
             if dec.pairing_ridge_weight > 0 else np.zeros(len(owned_g.positions)))
    edge_n = np.zeros(0, dtype=np.int64)
    edge_g = np.zeros((0, 3), dtype=np.int64)
    edge_cost = np.zeros(0)
    if predictor.architecture == "cellpol" and len(owned_n.positions) and len(golgi.positions):
        explicit = predictor._decoding_override is not None
        deltas = [dec.embedding_delta if explicit else m.spec.decoding.embedding_delta for m in predictor.members]
        run = PairingRun(grid, embeddings, deltas, owned_n, golgi, np.zeros(len(golgi.positions)), dec,
                         predictor.voxel_size)
        _find_edges(run)
        _read_embedding_costs(run)
        edge_n, edge_g, edge_cost = run.edge_nucleus, golgi.voxels[run.edge_golgi] + origin, run.edge_embedding_cost
    capped = max(len(nuclei.positions), len(golgi.positions)) >= MAX_PEAKS
    return TileRecord(owned_n.positions + origin, owned_n.voxels + origin, owned_n.heights,
                      owned_g.positions + origin, owned_g.voxels + origin, owned_g.heights, ridge,
                      edge_n.astype(np.int64), edge_g.astype(np.int64).reshape(-1, 3), edge_cost.astype(np.float64),
                      len(grid), capped)


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def _halo(predictor: Any, model_shape: Sequence[int]) -> tuple[int, int, int]:
    """The windows' overlap, ``d_max + 2 × context`` µm, in model voxels (0 along a one-voxel axis)."""
    reach_um = predictor.decoding.max_pair_distance_um + 2.0 * predictor.context_um
    return tuple(0 if n == 1 else int(math.ceil(reach_um / v - 1e-9))  # type: ignore[return-value]
                 for n, v in zip(model_shape, predictor.voxel_size))


def _record_key(volume: LazyVolume, predictor: Any, plan: TilePlan, ranges: dict) -> str:
    """What a tile record depends on: image, channels, models and settings, tiles, statistics."""
    image = volume.image
    path = getattr(image, "path", None)
    stat = {}
    if path is not None:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    described = {
        "image": str(path), "series": getattr(image, "series", 0), "stat": stat, "shape": list(image.shape),
        "voxel": list(volume.voxel_size), "channels": [volume.nucleus_channel, volume.golgi_channel],
        "models": [m.weights_sha256 or m.name for m in predictor.members], "provenance": predictor.provenance(),
        "core": list(plan.core), "halo": list(plan.halo), "ranges": {str(k): v for k, v in ranges.items()},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _open_records(record_dir: Optional[Path], key: str) -> Optional[Path]:
    """The record folder for ``key``; records of another prediction found there are removed."""
    if record_dir is None:
        return None
    record_dir = Path(record_dir)
    key_file = record_dir / "key.json"
    if record_dir.is_dir():
        try:
            same = json.loads(key_file.read_text(encoding="utf-8")).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(record_dir, ignore_errors=True)
    record_dir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        atomic_write_json(key_file, {"key": key, "what": "CellPol streaming prediction tile records (resume)"})
    return record_dir


def predict_lazy_job(predictor: Any, volume: LazyVolume, cancel: Optional[CancelToken] = None,
                     tile_bytes: Optional[float] = None, core: Optional[Sequence[int]] = None,
                     record_dir: Optional[os.PathLike | str] = None) -> Job:
    """Predict ``volume`` tile by tile (module docstring): a job like :meth:`Predictor.job`.

    It yields a :class:`~app.core.jobs.Note` naming the path and the tiles, :class:`~app.core.jobs.Progress`
    in windows over all tiles (after each batch of windows; cancel is checked before each batch and
    between tiles) and ends with :class:`~app.core.jobs.Result` holding a
    :class:`~app.core.inference.predictor.Prediction` (no heatmaps).

    Parameters
    ----------
    predictor : Predictor
    volume : LazyVolume
    cancel : CancelToken, optional
    tile_bytes : float, optional
        Memory for one tile's data (default :data:`DEFAULT_TILE_BYTES`); sets the core size.
    core : (int, int, int), optional
        Tile core ``(z, y, x)`` in model voxels (overrides ``tile_bytes``).
    record_dir : path, optional
        Keep each finished tile's record here (atomic ``.npz`` files) and reuse those of the same
        prediction, so a stopped run resumes; removed once the prediction is complete. Default:
        ``volume.record_dir``.

    Raises
    ------
    CellPolError
        Missing channel roles, a 2D/3D mismatch, a damaged region, or running out of memory.
    CancelledError
    """
    try:
        return (yield from _predict_lazy_steps(predictor, volume, cancel, tile_bytes, core, record_dir))
    finally:
        if volume.close_after:
            volume.close()


def _predict_lazy_steps(predictor: Any, volume: LazyVolume, cancel: Optional[CancelToken],
                        tile_bytes: Optional[float], core: Optional[Sequence[int]],
                        record_dir: Optional[os.PathLike | str]) -> Job:
    """:func:`predict_lazy_job`'s steps."""
    from app.core.inference.predictor import Prediction

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    image = volume.image
    _check_lazy(predictor, volume)
    in_shape = volume.spatial_shape
    mapping = resampling_for(in_shape, volume.voxel_size, predictor.voxel_size)
    model_shape = mapping.out_shape
    halo = _halo(predictor, model_shape)
    input_per_model = float(np.prod(in_shape)) / float(np.prod(model_shape))
    if core is None:
        core = choose_core(model_shape, halo, input_per_model, np.dtype(image.dtype).itemsize,
                           DEFAULT_TILE_BYTES if tile_bytes is None else float(tile_bytes), len(predictor.members))
    plan = plan_tiles(model_shape, core, halo)
    channels = (volume.nucleus_channel, volume.golgi_channel)
    norms = {}
    for m in predictor.members:
        n = m.spec.normalization
        norms.setdefault((n.low_percentile, n.high_percentile, n.clip), n)
    ranges, stats_info = estimate_percentiles(image, channels, mapping, plan,
                                              sorted({(lo, hi) for lo, hi, _ in norms}), cancel)
    timings["statistics"] = time.perf_counter() - t_start
    grids = [predictor.plan(t.extent_shape) for t in plan.tiles]
    total = sum(len(g) for g, _ in grids) * len(predictor.members)
    records_at = _open_records(Path(record_dir) if record_dir is not None else volume.record_dir,
                               _record_key(volume, predictor, plan, ranges))
    yield Note(f"Streaming prediction of {volume.describe()}: {len(plan)} tile(s) of at most "
               f"{'×'.join(map(str, plan.core))} model voxels + {'×'.join(map(str, plan.halo))} halo, "
               f"model grid {'×'.join(map(str, model_shape))}")
    records: list[TileRecord] = []
    done = 0
    yield Progress(0, total, "windows")
    for tile, (grid, batch) in zip(plan.tiles, grids):
        check_cancel(cancel)
        saved = records_at / f"tile_{tile.index:05d}.npz" if records_at is not None else None
        if saved is not None and saved.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                records.append(TileRecord.load(saved))
                done += len(grid) * len(predictor.members)
                yield Progress(done, total, f"windows (tile {tile.index + 1} of {len(plan)} resumed)")
                continue
        t0 = time.perf_counter()
        prepared = _prepare_tile(image, channels, mapping, tile, norms, ranges)
        timings["read_and_prepare"] = timings.get("read_and_prepare", 0.0) + time.perf_counter() - t0
        heat, maxima, embeddings = yield from predictor._network_on_prepared(
            prepared, grid, batch, cancel, timings, f"tile {tile.index + 1} of {volume.describe()}", done, total)
        del prepared
        done += len(grid) * len(predictor.members)
        t0 = time.perf_counter()
        record = _tile_record(predictor, tile, grid, heat, embeddings, maxima)
        del heat, embeddings, maxima
        if saved is not None:
            record.save(saved)
        records.append(record)
        timings["tile_decode"] = timings.get("tile_decode", 0.0) + time.perf_counter() - t0
    check_cancel(cancel)
    timings["network_total"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    pairs = _match(predictor, records, mapping, in_shape, volume.voxel_size, timings)
    timings["pairing"] = time.perf_counter() - t0
    radius = predictor.decoding.golgi_refine_radius_um
    if radius > 0 and len(pairs):  # as in memory, reading only a small box around each Golgi end
        t0 = time.perf_counter()
        pairs.golgi = refine_golgi(LazyChannel(volume.image, volume.golgi_channel), pairs.golgi,
                                   volume.voxel_size, radius)
        timings["golgi_refine"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    pairs.meta.update(_stream_meta(predictor, plan, grids, records, stats_info, timings, mapping))
    if records_at is not None:
        shutil.rmtree(records_at, ignore_errors=True)
    prediction = Prediction(pairs, mapping, predictor.voxel_size, None, None, timings)
    yield Result(prediction, f"{len(pairs)} vector(s)")
    return prediction


def _check_lazy(predictor: Any, volume: LazyVolume) -> None:
    name = predictor.members[0].name
    if predictor.spatial_dims == 2 and not volume.is_2d:
        raise CellPolError(f"Model '{name}' is a 2D model but the image is a 3D stack ({volume.spatial_shape[0]} "
                           "slices); use a 3D model, or predict single planes.")
    if predictor.spatial_dims == 3 and volume.is_2d and predictor.multiple[0] != 1:
        raise CellPolError(f"Model '{name}' is a 3D model that pools along z, so it cannot run on a single-plane "
                           "(2D) image; use a 2D model or the classic method.", settings={"method": "classic"})


def _prepare_tile(image: Any, channels: Sequence[int], mapping: Resampling, tile: Tile, norms: dict,
                  ranges: dict) -> dict[tuple, torch.Tensor]:
    """The tile's extent read (one channel at a time), resampled and normalised with the global statistics:
    one float32 ``(2, z, y, x)`` tensor per normalisation, as ``prepare_on_device`` makes for a whole image."""
    resampled = [_read_model_box(image, channel, mapping, tile.extent) for channel in channels]
    prepared = {}
    for low, high, clip in norms:
        out = torch.empty((2,) + tuple(resampled[0].shape), dtype=torch.float32)
        for k, x in enumerate(resampled):
            lo, hi = ranges[(low, high)][k]
            torch.sub(x, lo, out=out[k])
            out[k] *= 1.0 / (hi - lo) if hi > lo else 0.0
            if clip:
                out[k].clamp_(0.0, 1.5)
        prepared[(low, high, clip)] = out
    return prepared


def _match(predictor: Any, records: Sequence[TileRecord], mapping: Resampling, in_shape: Sequence[int],
           voxel_size: Sequence[float], timings: dict) -> PairSet:
    """All tiles' peaks and edges, matched once (the in-memory pairing rule), as a :class:`PairSet`."""
    from app.core.inference.predictor import _clip_points

    dec = predictor.decoding
    voxel = np.asarray(predictor.voxel_size, dtype=np.float64)

    def cat(name: str, points: bool = False) -> np.ndarray:
        joined = np.concatenate([getattr(r, name) for r in records]) if records else np.zeros(0)
        return joined.reshape(-1, 3) if points else joined

    n_pos, n_vox, n_h = cat("nuclei_pos", True), cat("nuclei_vox", True).astype(np.int64), cat("nuclei_h")
    g_pos, g_vox, g_h = cat("golgi_pos", True), cat("golgi_vox", True).astype(np.int64), cat("golgi_h")
    g_ridge = cat("golgi_ridge")
    # Highest first, as one whole-image peak search orders them.
    order_n = np.lexsort((n_vox[:, 2], n_vox[:, 1], n_vox[:, 0], -n_h)) if len(n_h) else np.zeros(0, np.int64)
    order_g = np.lexsort((g_vox[:, 2], g_vox[:, 1], g_vox[:, 0], -g_h)) if len(g_h) else np.zeros(0, np.int64)
    rank_n = np.empty(len(order_n), dtype=np.int64)
    rank_n[order_n] = np.arange(len(order_n))
    rank_g = np.empty(len(order_g), dtype=np.int64)
    rank_g[order_g] = np.arange(len(order_g))
    nuclei = Peaks(n_pos[order_n], n_vox[order_n], n_h[order_n])
    golgi = Peaks(g_pos[order_g], g_vox[order_g], g_h[order_g])
    ridge = g_ridge[order_g]
    unresolved = 0
    if predictor.architecture != "cellpol":
        pairing = pair_by_distance_only(nuclei, golgi, predictor.voxel_size, dec.max_pair_distance_um)
        rows, cols, confidence, meta = pairing.nucleus_index, pairing.golgi_index, pairing.confidence, pairing.meta
    else:
        offsets = np.cumsum([0] + [len(r.nuclei_h) for r in records])
        e_rows = np.concatenate([r.edge_nucleus + o for r, o in zip(records, offsets)]) if records else np.zeros(0)
        e_gvox = cat("edge_golgi_vox", True)
        e_emb = cat("edge_cost")
        e_rows = rank_n[e_rows.astype(np.int64)] if len(e_rows) else np.zeros(0, np.int64)
        # Each edge's Golgi is the one its owner tile found at that voxel (±1 voxel where the tiles' heatmaps
        # put the maximum one voxel apart).
        if len(e_gvox) and len(golgi.voxels):
            dist, idx = cKDTree(golgi.voxels).query(e_gvox, k=1, p=np.inf, distance_upper_bound=1.5)
            found = np.isfinite(dist)
        else:
            idx, found = np.zeros(len(e_gvox), np.int64), np.zeros(len(e_gvox), bool)
        unresolved = int((~found).sum())
        e_rows, e_cols, e_emb = e_rows[found], np.asarray(idx)[found].astype(np.int64), e_emb[found]
        if len(e_rows):  # the same edge may come from no two tiles (one owner per nucleus); keep the order stable
            order = np.lexsort((e_cols, e_rows))
            e_rows, e_cols, e_emb = e_rows[order], e_cols[order], e_emb[order]
        distance = np.linalg.norm((nuclei.positions[e_rows] - golgi.positions[e_cols]) * voxel, axis=1)
        cost = pairing_cost(e_emb, distance, nuclei.heights[e_rows], golgi.heights[e_cols], ridge[e_cols], dec)
        rows, cols, edge = match_pairs(len(nuclei.positions), len(golgi.positions), e_rows, e_cols, cost, distance,
                                       dec.max_pair_distance_um)
        confidence = 1.0 - e_emb[edge]
        meta = {"pairing": pairing_description(dec), "candidate_edges": int(len(e_rows)),
                "edges_without_common_window": int(np.isinf(e_emb).sum())}
    meta["edges_golgi_unresolved"] = unresolved
    nuclei_in = _clip_points(mapping.to_input(nuclei.positions[rows]) if len(rows) else np.zeros((0, 3)), in_shape)
    golgi_in = _clip_points(mapping.to_input(golgi.positions[cols]) if len(cols) else np.zeros((0, 3)), in_shape)
    scores = vector_scores(nuclei.heights[rows], golgi.heights[cols], confidence)
    meta["detected_nuclei"], meta["detected_golgi"] = int(len(nuclei.positions)), int(len(golgi.positions))
    return PairSet(nuclei_in, golgi_in, voxel_size=tuple(voxel_size), scores=scores, sources="predicted", meta=meta)


def _stream_meta(predictor: Any, plan: TilePlan, grids: list, records: Sequence[TileRecord], stats_info: dict,
                 timings: dict, mapping: Resampling) -> dict[str, Any]:
    """The provenance of a streamed prediction: what :meth:`Predictor.decode` records, and the tiles."""
    meta = predictor.provenance()
    largest = max(grids, key=lambda gb: int(np.prod(gb[0].window)))
    meta.update({
        "image_shape_zyx": list(mapping.in_shape),
        "model_grid_shape_zyx": list(mapping.out_shape),
        "windows": int(sum(len(g) for g, _ in grids)),
        "window_shape_zyx": list(largest[0].window),
        "window_overlap_zyx": list(largest[0].overlap),
        "batch_size": int(largest[1]),
        "peaks_capped": bool(any(r.capped for r in records)),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "streaming": {
            "path": "streaming (tile by tile)",
            "tiles": len(plan),
            "tile_core_zyx": list(plan.core),
            "tile_halo_zyx": list(plan.halo),
            "statistics_sample": stats_info,
        },
    })
    return meta
