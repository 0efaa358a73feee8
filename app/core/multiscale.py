"""An image larger than memory seen at several resolutions (:class:`MultiscaleImage`), as napari's multiscale
layers do: level 0 is the file at full resolution (read lazily, region by region), each next level halves y and
x (and z where z is finely sampled and long), down to the first level that fits a memory budget.

- The coarsest level is computed once by reading the file region by region (never whole) and averaging blocks,
  or taken from the file's own levels (OME-Zarr multiscales). It is held in memory and, optionally, cached in
  a sidecar ``.npy`` (atomic write, keyed by the file's path and series, invalidated when the file's size or
  modification time changes), so the second open is fast.
- The levels between are read on demand: the regions of the finest level that has a reader (level 0 or a
  level of the file), block-averaged. Recently read plane tiles stay in a small LRU cache.

No Qt here: the views ask :meth:`MultiscaleImage.plane` for what they show, on a worker thread for anything
not in memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError

#: The coarsest level must fit this many bytes (it is held in memory and drawn by the 3D view).
DEFAULT_BUDGET_BYTES = 256 * 2**20
#: Plane tiles kept by the LRU cache.
DEFAULT_TILE_CACHE_BYTES = 256 * 2**20
#: Tiles of the cache are this many voxels square (in the level's own voxels).
TILE = 256
#: Level-0 bytes read per region while computing the coarsest level.
BUILD_REGION_BYTES = 64 * 2**20
#: z is halved with y and x only while it is longer than this (thin stacks keep every slice).
MIN_Z_TO_HALVE = 32
#: Format version of the sidecar cache.
_CACHE_VERSION = 1

# The two in-plane axes of the plane looking along each axis, in (z, y, x) order.
PLANE_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


def available_memory_bytes() -> int:
    """Memory available to this process now (bytes): psutil's estimate, else ``/proc/meminfo``, else 4 GiB."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - any failure means "unknown": fall back
        pass
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def in_memory_bytes(shape: Sequence[int], dtype: Any) -> int:
    """What loading an image of ``shape`` whole would take: its own pixel type for uint8/uint16/float32, else
    float32 (``read_volume`` converts other types)."""
    dtype = np.dtype(dtype)
    itemsize = dtype.itemsize if dtype in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)) else 4
    return int(np.prod([int(n) for n in shape], dtype=np.int64)) * itemsize


def default_cache_dir() -> Path:
    """Where the coarse levels of large images are cached: ``$CELLPOL_CACHE_DIR``, else the user cache folder."""
    explicit = os.environ.get("CELLPOL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("LOCALAPPDATA") if os.name == "nt" else None) or str(Path.home() / ".cache")
    return Path(base) / "cellpol" / "multiscale"


def level_factors(shape_zyx: Sequence[int], voxel_size: Optional[Sequence[float]], bytes_per_voxel: int,
                  budget_bytes: int) -> list[tuple[int, int, int]]:
    """Downsampling factors ``(fz, fy, fx)`` of every level relative to level 0, until one fits ``budget_bytes``.

    Each level halves y and x; z is halved too while it is longer than :data:`MIN_Z_TO_HALVE` slices and its
    step is finer than the new in-plane step (so levels tend to isotropic voxels, as ome-zarr's do).

    Parameters
    ----------
    shape_zyx : 3 int
    voxel_size : 3 float or None
        ``(z, y, x)`` µm; ``None`` counts as isotropic.
    bytes_per_voxel : int
        All channels together.
    budget_bytes : int

    Returns
    -------
    list of (int, int, int)
        ``[(1, 1, 1), (1, 2, 2), ...]``; one entry when level 0 fits already.
    """
    factors = [(1, 1, 1)]
    while True:
        size = level_shape(shape_zyx, factors[-1])
        following = _halved(shape_zyx, factors[-1], voxel_size)
        if int(np.prod(size)) * bytes_per_voxel <= budget_bytes or following == factors[-1]:
            return factors
        factors.append(following)


def _halved(shape_zyx: Sequence[int], factors: Sequence[int],
            voxel_size: Optional[Sequence[float]]) -> tuple[int, int, int]:
    """The factors of the level after ``factors``: y and x halved (while longer than 1), z where it is long and
    finer than the new in-plane step."""
    vz, vy, vx = voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)
    fz, fy, fx = factors
    size = level_shape(shape_zyx, factors)
    new_y, new_x = (fy * 2 if size[1] > 1 else fy), (fx * 2 if size[2] > 1 else fx)
    halve_z = size[0] > MIN_Z_TO_HALVE and vz * fz < min(vy * new_y, vx * new_x)
    return (fz * 2 if halve_z else fz, new_y, new_x)


def level_shape(shape_zyx: Sequence[int], factors: Sequence[int]) -> tuple[int, int, int]:
    """The ``(Z, Y, X)`` shape of a level: every level-0 voxel in one block; blocks at the far edges may be
    partial."""
    return tuple(-(-int(n) // int(f)) for n, f in zip(shape_zyx, factors))  # type: ignore[return-value]


def block_mean(block: np.ndarray, factors: Sequence[int], dtype: Any = None) -> np.ndarray:
    """Average ``(C, Z, Y, X)`` over blocks of ``factors`` ``(fz, fy, fx)`` starting at index 0; partial blocks at
    the far edges average the voxels they have. Integers are rounded back to ``dtype`` (default: the input's).

    Sums of strided views (``a[..., i::f]``), as :func:`app.ui.viewer3d.block_max` does: several times faster than
    ``np.add.reduceat`` or a reshape-and-reduce over small inner axes.
    """
    dtype = np.dtype(dtype if dtype is not None else block.dtype)
    factors = [int(f) for f in factors]
    if factors == [1, 1, 1]:
        return block.astype(dtype, copy=True)
    if block.dtype.kind in "ub" and block.dtype.itemsize <= 2 and int(np.prod(factors)) <= 65536:
        work_type: Any = np.uint32  # exact: at most 65536 values of at most 65535
    elif block.dtype.kind in "ui":
        work_type = np.int64 if block.dtype.kind == "i" or block.dtype.itemsize < 8 else np.float64
    else:
        work_type = np.float64
    result = block
    counts = np.ones((1, 1, 1, 1), np.float64)
    for axis, factor in zip((1, 2, 3), factors):
        n = result.shape[axis]
        if factor == 1 or n == 0:
            continue
        m = -(-n // factor)
        shape = list(result.shape)
        shape[axis] = m
        total = np.zeros(shape, work_type)
        count = np.zeros(m, np.float64)
        for i in range(min(factor, n)):
            part = result[(slice(None),) * axis + (slice(i, None, factor),)]
            k = part.shape[axis]
            np.add(total[(slice(None),) * axis + (slice(0, k),)], part,
                   out=total[(slice(None),) * axis + (slice(0, k),)], casting="unsafe")
            count[:k] += 1
        result = total
        view = [1, 1, 1, 1]
        view[axis] = m
        counts = counts * count.reshape(view)
    mean = result / counts
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        mean = np.clip(np.rint(mean), info.min, info.max)
    return mean.astype(dtype)


@dataclass
class Level:
    """One resolution level.

    Attributes
    ----------
    factors : (int, int, int)
        ``(fz, fy, fx)``: one voxel of this level covers ``fz × fy × fx`` level-0 voxels.
    shape : (int, int, int, int)
        ``(C, Z, Y, X)``.
    reader : object or None
        Something with ``read_region(z=, y=, x=, c=)`` (level 0, a level of the file); ``None`` otherwise.
    array : ndarray or None
        The level in memory (the coarsest level).
    """

    factors: tuple[int, int, int]
    shape: tuple[int, int, int, int]
    reader: Any = None
    array: Optional[np.ndarray] = None

    @property
    def source(self) -> str:
        return "memory" if self.array is not None else "file" if self.reader is not None else "computed"


class _TileCache:
    """Least recently used plane tiles, at most ``max_bytes`` in all (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._tiles: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Optional[np.ndarray]:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._tiles.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: tuple, tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._tiles.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._tiles[key] = tile
            self.bytes += tile.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._tiles.popitem(last=False)
                self.bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self.bytes = 0


class MultiscaleImage:
    """Several resolutions of one image larger than memory.

    Parameters
    ----------
    image : LazyImage
        Level 0 (:func:`app.core.imageio.lazy.open_lazy`). Closed by :meth:`close`.
    budget_bytes : int
        The coarsest level fits this.
    cache_dir : path or None
        Where to cache the coarsest level (``None``: no cache; :func:`default_cache_dir` is the usual choice).
    tile_cache_bytes : int
        The LRU cache of plane tiles read from the file.
    progress : callable, optional
        ``progress(done, total)`` while the coarsest level is computed (regions read).
    cancel : callable, optional
        ``cancel() -> bool``, checked between regions; when it says so, :class:`CellPolError` is raised.

    Attributes
    ----------
    levels : list of Level
        Finest (0) to coarsest.
    built_from_cache : bool
        The coarsest level came from the sidecar cache.
    """

    def __init__(self, image: Any, budget_bytes: int = DEFAULT_BUDGET_BYTES, cache_dir: Optional[os.PathLike] = None,
                 tile_cache_bytes: int = DEFAULT_TILE_CACHE_BYTES,
                 progress: Optional[Callable[[int, int], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None) -> None:
        self.image = image
        self.dtype = np.dtype(image.dtype)
        self.n_channels = int(image.shape[0])
        self.voxel_size = image.voxel_size
        self.budget_bytes = int(budget_bytes)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.tiles = _TileCache(tile_cache_bytes)
        self._read_lock = threading.RLock()  # readers of every format are not known to be thread-safe
        self.built_from_cache = False
        self.levels = self._plan_levels()
        coarsest = self.levels[-1]
        if coarsest.array is None and coarsest.reader is not None and \
                self._level_bytes(coarsest) <= self.budget_bytes:
            coarsest.array = self._read(coarsest, None)  # a level of the file that fits: read it whole
        elif coarsest.array is None:
            coarsest.array = self._cached_or_built(len(self.levels) - 1, progress, cancel)

    # --- levels -------------------------------------------------------------------------------
    def _level_bytes(self, level: Level) -> int:
        return int(np.prod(level.shape, dtype=np.int64)) * self.dtype.itemsize

    def _plan_levels(self) -> list[Level]:
        shape = tuple(int(n) for n in self.image.shape)
        levels = [Level((1, 1, 1), shape, reader=self.image)]
        for factors, reader in _file_levels(self.image):
            levels.append(Level(factors, tuple(reader.shape), reader=reader))
        if len(levels) > 1:
            # the file's own levels, then halving further from the coarsest of them while it is too large
            while self._level_bytes(levels[-1]) > self.budget_bytes:
                factors = _halved(shape[1:], levels[-1].factors, self.voxel_size)
                if factors == levels[-1].factors:
                    break
                source = next(level for level in reversed(levels) if level.reader is not None)
                relative = tuple(a // b for a, b in zip(factors, source.factors))
                levels.append(Level(factors, (self.n_channels,) + level_shape(source.shape[1:], relative)))
            return levels
        all_factors = level_factors(shape[1:], self.voxel_size, self.n_channels * self.dtype.itemsize,
                                    self.budget_bytes)
        for factors in all_factors[1:]:
            levels.append(Level(factors, (self.n_channels,) + level_shape(shape[1:], factors)))
        return levels

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def coarsest(self) -> int:
        return len(self.levels) - 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Level 0's ``(C, Z, Y, X)``."""
        return self.levels[0].shape

    def shape_at(self, level: int) -> tuple[int, int, int, int]:
        """``(C, Z, Y, X)`` of ``level``."""
        return self.levels[level].shape

    def scale_at(self, level: int) -> tuple[int, int, int]:
        """``(fz, fy, fx)``: level-0 voxels per voxel of ``level`` along z, y and x."""
        return self.levels[level].factors

    def level_for(self, pixels_per_voxel: Any, axes: Sequence[int] = (1, 2)) -> int:
        """The coarsest level that shows all the detail the screen can: along each of the view's ``axes`` its
        voxels span at most one screen pixel (or, where a level-0 voxel spans more already, it is not coarser
        than level 0 there).

        Parameters
        ----------
        pixels_per_voxel : float or 3 floats
            Screen pixels per level-0 voxel, one number for every axis or ``(z, y, x)`` (2 = zoomed in twice).
        axes : sequence of int
            The view's two in-plane axes in ``(z, y, x)`` (default y and x: the XY view).
        """
        ppv = np.broadcast_to(np.asarray(pixels_per_voxel, dtype=np.float64), (3,))
        if not np.all(np.isfinite(ppv[list(axes)])) or np.any(ppv[list(axes)] <= 0):
            return self.coarsest
        chosen = 0
        for index, level in enumerate(self.levels):
            if all(level.factors[a] * ppv[a] <= max(1.0, ppv[a]) * (1 + 1e-6) for a in axes):
                chosen = index
        return chosen

    def read_cost(self, axis: int, level: int, region0: tuple[tuple[int, int], tuple[int, int]]) -> int:
        """Bytes read from the file to show ``region0`` (level-0 voxels of the plane's two axes) at ``level``:
        0 for the level in memory. Rows count whole unless the format is chunked (Zarr), as TIFF strips and
        most formats store whole rows."""
        state = self.levels[level]
        if state.array is not None:
            return 0
        source = state if state.reader is not None else next(
            self.levels[i] for i in range(level - 1, -1, -1) if self.levels[i].reader is not None)
        extent = [float(state.factors[axis])] * 3  # depth: one voxel of the level
        for a, (lo, hi) in zip(PLANE_AXES[axis], region0):
            f = state.factors[a]
            extent[a] = float((-(-int(hi) // f) - int(lo) // f) * f)
        extent = [e / s for e, s in zip(extent, source.factors)]
        if getattr(self.image, "format", "") != "ome-zarr":
            extent[2] = float(source.shape[3])
        return int(np.prod(extent) * self.n_channels * self.dtype.itemsize)

    def choose_level(self, axis: int, pixels_per_voxel: Any, region0: tuple[tuple[int, int], tuple[int, int]],
                     max_read_bytes: int) -> int:
        """:meth:`level_for` the view, made coarser until showing ``region0`` reads at most ``max_read_bytes``
        (the coarsest level, in memory, reads nothing)."""
        level = self.level_for(pixels_per_voxel, PLANE_AXES[axis])
        while level < self.coarsest and self.read_cost(axis, level, region0) > max_read_bytes:
            level += 1
        return level

    # --- reading ------------------------------------------------------------------------------
    def _read(self, level: Level, box: Optional[Sequence[tuple[int, int]]]) -> np.ndarray:
        """``(C, Z, Y, X)`` of a box ``((z0, z1), (y0, y1), (x0, x1))`` of ``level`` (its own voxels)."""
        full = [(0, n) for n in level.shape[1:]]
        box = [(max(0, int(a)), min(n, int(b))) for (a, b), (_, n) in zip(box or full, full)]
        if level.array is not None:
            (z0, z1), (y0, y1), (x0, x1) = box
            return level.array[:, z0:z1, y0:y1, x0:x1]
        if level.reader is not None:
            (z0, z1), (y0, y1), (x0, x1) = box
            with self._read_lock:
                return level.reader.read_region(z=(z0, z1), y=(y0, y1), x=(x0, x1))
        # computed on demand from the coarsest finer level that can be read
        index = self.levels.index(level)
        source = next(self.levels[i] for i in range(index - 1, -1, -1) if self.levels[i].reader is not None)
        relative = tuple(a // b for a, b in zip(level.factors, source.factors))
        source_box = [(a * r, b * r) for (a, b), r in zip(box, relative)]
        return block_mean(self._read(source, source_box), relative, self.dtype)

    def read_level0(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        """A box of the full-resolution image, ``(C, Z, Y, X)`` (e.g. around a click, to snap it)."""
        return self._read(self.levels[0], (z, y, x))

    def plane(self, axis: int, index: int, level: int,
              region: Optional[tuple[tuple[int, int], tuple[int, int]]] = None) -> np.ndarray:
        """The plane looking along ``axis`` through level-0 slice ``index``, at ``level``.

        Parameters
        ----------
        axis : int
            0 (the plane is (y, x)), 1 ((z, x)) or 2 ((z, y)).
        index : int
            Level-0 index along ``axis`` (the level's slice is the one containing it).
        level : int
        region : ((a0, a1), (b0, b1)), optional
            The part of the plane, in the level's own voxels along the plane's two axes (:data:`PLANE_AXES`);
            ``None``: all of it. Clipped to the plane.

        Returns
        -------
        ndarray
            ``(C, a1 - a0, b1 - b0)`` in the image's pixel type (a new array or a read-only view of the level
            held in memory).
        """
        state = self.levels[level]
        depth_n = state.shape[1 + axis]
        k = int(np.clip(int(index) // state.factors[axis], 0, depth_n - 1))
        first, second = PLANE_AXES[axis]
        full = ((0, state.shape[1 + first]), (0, state.shape[1 + second]))
        if region is None:
            region = full
        (a0, a1), (b0, b1) = [(max(0, int(lo)), min(n, int(hi))) for (lo, hi), (_, n) in zip(region, full)]
        a1, b1 = max(a0, a1), max(b0, b1)
        if state.array is not None:
            box = [None, None, None]
            box[axis] = (k, k + 1)
            box[first], box[second] = (a0, a1), (b0, b1)
            block = self._read(state, box)
            return block.reshape(self.n_channels, a1 - a0, b1 - b0)
        out = np.empty((self.n_channels, a1 - a0, b1 - b0), self.dtype)
        tiles_a = range(a0 // TILE, -(-a1 // TILE)) if a1 > a0 else range(0)
        tiles_b = range(b0 // TILE, -(-b1 // TILE)) if b1 > b0 else range(0)
        missing = []
        found = {}
        for ta in tiles_a:
            for tb in tiles_b:
                key = (level, axis, k, ta, tb)
                tile = self.tiles.get(key)
                if tile is None:
                    missing.append((ta, tb))
                else:
                    found[(ta, tb)] = tile
        if missing:
            # one read for the bounding box of the missing tiles (a striped TIFF reads whole rows anyway)
            ta0, ta1 = min(t[0] for t in missing), max(t[0] for t in missing) + 1
            tb0, tb1 = min(t[1] for t in missing), max(t[1] for t in missing) + 1
            box = [None, None, None]
            box[axis] = (k, k + 1)
            box[first] = (ta0 * TILE, min(ta1 * TILE, full[0][1]))
            box[second] = (tb0 * TILE, min(tb1 * TILE, full[1][1]))
            block = self._read(state, box)
            block = block.reshape(self.n_channels, box[first][1] - box[first][0], box[second][1] - box[second][0])
            for ta, tb in missing:
                tile = np.ascontiguousarray(block[:, (ta - ta0) * TILE:(ta - ta0 + 1) * TILE,
                                                  (tb - tb0) * TILE:(tb - tb0 + 1) * TILE])
                tile.setflags(write=False)
                self.tiles.put((level, axis, k, ta, tb), tile)
                found[(ta, tb)] = tile
        for (ta, tb), tile in found.items():
            # the part of this tile inside the region, and where it goes
            ta_lo, tb_lo = ta * TILE, tb * TILE
            a_lo, a_hi = max(a0, ta_lo), min(a1, ta_lo + tile.shape[1])
            b_lo, b_hi = max(b0, tb_lo), min(b1, tb_lo + tile.shape[2])
            if a_hi > a_lo and b_hi > b_lo:
                out[:, a_lo - a0:a_hi - a0, b_lo - b0:b_hi - b0] = tile[:, a_lo - ta_lo:a_hi - ta_lo,
                                                                        b_lo - tb_lo:b_hi - tb_lo]
        return out

    def intensities_at(self, position: Sequence[float], wait: bool = True) -> Optional[np.ndarray]:
        """Every channel's full-resolution value at voxel ``(z, y, x)`` (read from the file).

        ``wait=False``: ``None`` instead of waiting while another thread reads the file (a slice view loading a
        region), so a caller on the GUI thread never blocks on a slow disk."""
        z, y, x = (int(round(v)) for v in position)
        if not self._read_lock.acquire(blocking=wait):
            return None
        try:
            return self.read_level0((z, z + 1), (y, y + 1), (x, x + 1)).reshape(-1)
        finally:
            self._read_lock.release()

    # --- the coarsest level -------------------------------------------------------------------
    def _cached_or_built(self, index: int, progress, cancel) -> np.ndarray:
        level = self.levels[index]
        cache = self._cache_paths()
        stamp = self._stamp(level)
        if cache is not None and stamp is not None:
            data_path, meta_path = cache
            try:
                meta = json.loads(meta_path.read_text())
                if meta == stamp:
                    array = np.load(data_path, mmap_mode=None, allow_pickle=False)
                    if tuple(array.shape) == tuple(level.shape) and array.dtype == self.dtype:
                        self.built_from_cache = True
                        return array
            except (OSError, ValueError, EOFError):
                pass  # no cache, or a damaged one: build again
        array = _collect(self._build_regions(index), progress, cancel)
        if cache is not None and stamp is not None:
            try:
                _write_cache(cache, array, stamp)
            except OSError:
                pass  # a cache that cannot be written only costs time on the next open
        return array

    def build_plan(self, index: Optional[int] = None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The regions (level-0 ``(z0, z1), (y0, y1)``, all x) read to compute level ``index`` (default the
        coarsest): whole blocks of that level, about :data:`BUILD_REGION_BYTES` each."""
        index = self.coarsest if index is None else index
        level = self.levels[index]
        source = next(self.levels[i] for i in range(index - 1, -1, -1) if self.levels[i].reader is not None)
        relative = tuple(a // b for a, b in zip(level.factors, source.factors))
        _, z_n, y_n, x_n = source.shape
        row_bytes = self.n_channels * x_n * self.dtype.itemsize * relative[0]
        rows = max(relative[1], (BUILD_REGION_BYTES // max(row_bytes, 1)) // relative[1] * relative[1])
        return [((z0, min(z0 + relative[0], z_n)), (y0, min(y0 + rows, y_n)))
                for z0 in range(0, z_n, relative[0]) for y0 in range(0, y_n, rows)]

    def _build_regions(self, index: int) -> Iterator[tuple[int, int, tuple, np.ndarray]]:
        level = self.levels[index]
        source = next(self.levels[i] for i in range(index - 1, -1, -1) if self.levels[i].reader is not None)
        relative = tuple(a // b for a, b in zip(level.factors, source.factors))
        plan = self.build_plan(index)
        for done, (z_range, y_range) in enumerate(plan):
            block = self._read(source, (z_range, y_range, (0, source.shape[3])))
            reduced = block_mean(block, relative, self.dtype)
            target = (z_range[0] // relative[0], y_range[0] // relative[1])
            yield done + 1, len(plan), target, reduced

    def _cache_paths(self) -> Optional[tuple[Path, Path]]:
        if self.cache_dir is None:
            return None
        path = Path(self.image.path).resolve()
        key = hashlib.sha1(f"{path}|{getattr(self.image, 'series', 0)}".encode()).hexdigest()[:20]
        stem = f"{path.name[:40]}-{key}"
        return self.cache_dir / f"{stem}.npy", self.cache_dir / f"{stem}.json"

    def _stamp(self, level: Level) -> Optional[dict]:
        try:
            stat = os.stat(self.image.path)
        except OSError:
            return None
        return {"version": _CACHE_VERSION, "path": str(Path(self.image.path).resolve()),
                "series": int(getattr(self.image, "series", 0)), "size": int(stat.st_size),
                "mtime_ns": int(stat.st_mtime_ns), "shape": list(level.shape), "factors": list(level.factors),
                "dtype": self.dtype.str}

    # --- life ---------------------------------------------------------------------------------
    def close(self) -> None:
        self.tiles.clear()
        for level in self.levels:
            if level.reader is not None and level.reader is not self.image and hasattr(level.reader, "close"):
                level.reader.close()
        self.image.close()

    def describe(self) -> str:
        parts = []
        for i, level in enumerate(self.levels):
            _, z, y, x = level.shape
            parts.append(f"{i}: {z}×{y}×{x} ({level.source})")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"MultiscaleImage({self.image!r}, levels=[{self.describe()}])"


def _collect(regions: Iterator, progress, cancel) -> np.ndarray:
    """Assemble a level from its computed regions."""
    out: Optional[np.ndarray] = None
    shape = None
    pieces = []
    for done, total, (z0, y0), block in regions:
        if cancel is not None and cancel():
            raise CellPolError("Opening cancelled while the overview of the large image was computed.")
        pieces.append(((z0, y0), block))
        if progress is not None:
            progress(done, total)
    if not pieces:
        raise CellPolError("The image is empty.")
    c = pieces[0][1].shape[0]
    z_n = max(z0 + b.shape[1] for (z0, _), b in pieces)
    y_n = max(y0 + b.shape[2] for (_, y0), b in pieces)
    x_n = pieces[0][1].shape[3]
    shape = (c, z_n, y_n, x_n)
    out = np.empty(shape, pieces[0][1].dtype)
    for (z0, y0), block in pieces:
        out[:, z0:z0 + block.shape[1], y0:y0 + block.shape[2]] = block
    return out


def _write_cache(paths: tuple[Path, Path], array: np.ndarray, stamp: dict) -> None:
    """The array then its stamp, each through a temporary file renamed into place (a crash leaves no half file
    that would be taken for a cache)."""
    data_path, meta_path = paths
    data_path.parent.mkdir(parents=True, exist_ok=True)
    for target, write in ((data_path, lambda handle: np.save(handle, array, allow_pickle=False)),
                          (meta_path, lambda handle: handle.write(json.dumps(stamp).encode()))):
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                write(stream)
            os.replace(temporary, target)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise


# --- the file's own levels (OME-Zarr) -------------------------------------------------------------
def _file_levels(image: Any) -> list[tuple[tuple[int, int, int], Any]]:
    """``[(factors, reader), ...]`` for levels 1… of an OME-Zarr image (its ``multiscales`` datasets);
    ``[]`` for other formats or when they cannot be read."""
    if getattr(image, "format", "") != "ome-zarr":
        return []
    import contextlib

    from app.core.imageio.microscope import _open_zarr

    found = []
    level = 1
    while True:
        stack = contextlib.ExitStack()
        try:
            raw = _open_zarr(Path(image.path), int(getattr(image, "series", 0)), stack, level=level)
        except Exception:  # noqa: BLE001 - no such level (or unreadable): the file's levels end here
            stack.close()
            return found
        try:
            reader = _LevelReader(image, raw, stack)
        except CellPolError:
            stack.close()
            return found
        factors = tuple(max(1, int(round(a / b))) for a, b in zip(image.shape[1:], reader.shape[1:]))
        if any(f & (f - 1) for f in factors):  # only halvings, as the views assume
            reader.close()
            return found
        found.append((factors, reader))
        level += 1


class _LevelReader:
    """Reads a level of an OME-Zarr image with the axes of its level 0 (the same stored axes, smaller)."""

    def __init__(self, base: Any, raw: Any, stack: Any) -> None:
        plan = base._plan
        if len(raw.shape) != len(plan.roles) or raw.region is None:
            raise CellPolError("the level's axes differ from level 0's")
        self._lazy = copy.copy(base)
        self._lazy._regions = raw.region()
        self._lazy._stored_shape = tuple(int(n) for n in raw.shape)
        self._lazy._whole = None
        sizes = {role: int(n) for role, n in zip(plan.roles, raw.shape) if role != "-"}
        self._lazy.shape = tuple(sizes.get(letter, 1) for letter in "CZYX")
        self._stack = stack
        self.shape = self._lazy.shape
        if self.shape[0] != base.shape[0]:
            raise CellPolError("the level has another number of channels")

    def read_region(self, z=None, y=None, x=None, c=None) -> np.ndarray:
        return self._lazy.read_region(z=z, y=y, x=x, c=c)

    def close(self) -> None:
        self._stack.close()
