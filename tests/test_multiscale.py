"""MultiscaleImage (app.core.multiscale): levels computed region by region (the whole image is never requested),
block averages, plane and region coordinates at every level, the choice of level for a zoom, the tile cache,
the sidecar cache (reused, and rebuilt when the file changes), and an OME-Zarr file's own levels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.core.imageio.lazy import open_lazy
from app.core.multiscale import (
    PLANE_AXES,
    MultiscaleImage,
    available_memory_bytes,
    block_mean,
    in_memory_bytes,
    level_factors,
    level_shape,
)

VOXEL = (1.0, 0.25, 0.25)


def write_tiff(path: Path, data: np.ndarray, voxel=VOXEL) -> Path:
    """An ImageJ hyperstack (ZCYX) of ``data`` given as (C, Z, Y, X)."""
    tifffile.imwrite(path, np.ascontiguousarray(data.transpose(1, 0, 2, 3)), imagej=True,
                     resolution=(1 / voxel[2], 1 / voxel[1]),
                     metadata={"axes": "ZCYX", "spacing": voxel[0], "unit": "um"})
    return path


def noise(shape=(2, 40, 150, 130), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)


class CountingImage:
    """A LazyImage whose reads are recorded (boxes as ((z0, z1), (y0, y1), (x0, x1)))."""

    def __init__(self, image):
        self._image = image
        self.boxes = []

    def __getattr__(self, name):
        return getattr(self._image, name)

    def read_region(self, z=None, y=None, x=None, c=None):
        block = self._image.read_region(z=z, y=y, x=x, c=c)
        self.boxes.append((tuple(z), tuple(y), tuple(x)))
        return block

    def close(self):
        self._image.close()


@pytest.fixture
def stack(tmp_path):
    data = noise()
    return write_tiff(tmp_path / "stack.tif", data), data


def open_counting(path) -> CountingImage:
    return CountingImage(open_lazy(path))


def test_level_factors_halve_until_the_budget():
    # 120 × 4096 × 4096 × 2 uint16 (8 GB), z 1 µm, y/x 0.2 µm: y/x halve; z halves once it is finer than y/x
    factors = level_factors((120, 4096, 4096), (1.0, 0.2, 0.2), 4, 256 * 2**20)
    assert factors[:4] == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)]
    last = level_shape((120, 4096, 4096), factors[-1])
    assert np.prod(last) * 4 <= 256 * 2**20
    assert np.prod(level_shape((120, 4096, 4096), factors[-2])) * 4 > 256 * 2**20  # the first that fits
    # thin stacks keep every slice; a small image has one level
    assert all(f[0] == 1 for f in level_factors((20, 4096, 4096), None, 4, 2**20))
    assert level_factors((10, 64, 64), VOXEL, 4, 2**20) == [(1, 1, 1)]


def test_block_mean_averages_whole_and_partial_blocks():
    data = np.arange(2 * 3 * 5 * 7, dtype=np.uint16).reshape(2, 3, 5, 7)
    result = block_mean(data, (2, 2, 3))
    assert result.shape == (2, 2, 3, 3) and result.dtype == np.uint16
    for c in range(2):
        for k in range(2):
            for j in range(3):
                for i in range(3):
                    block = data[c, 2 * k:2 * k + 2, 2 * j:2 * j + 2, 3 * i:3 * i + 3]
                    assert result[c, k, j, i] == np.rint(block.mean())
    floats = np.random.default_rng(1).random((1, 4, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(block_mean(floats, (2, 2, 2))[0, 0, 0, 0], floats[0, :2, :2, :2].mean(), rtol=1e-6)


def test_levels_are_built_region_by_region_never_whole(stack):
    path, data = stack
    image = open_counting(path)
    budget = 100_000
    multiscale = MultiscaleImage(image, budget_bytes=budget)
    assert multiscale.n_levels >= 3
    coarsest = multiscale.levels[-1]
    assert coarsest.array is not None and coarsest.array.nbytes <= budget
    assert image.boxes, "nothing was read"
    whole = ((0, 40), (0, 150), (0, 130))
    assert whole not in image.boxes
    assert len(image.boxes) == len(multiscale.build_plan()) > 1
    # every voxel read exactly once
    read = sum((z1 - z0) * (y1 - y0) * (x1 - x0) for (z0, z1), (y0, y1), (x0, x1) in image.boxes)
    assert read == 40 * 150 * 130
    np.testing.assert_array_equal(coarsest.array, block_mean(data, multiscale.scale_at(multiscale.coarsest)))


def test_planes_and_regions_at_every_level(stack):
    path, data = stack
    multiscale = MultiscaleImage(open_lazy(path), budget_bytes=100_000)
    for level in range(multiscale.n_levels):
        factors = multiscale.scale_at(level)
        expected = block_mean(data, factors)
        assert multiscale.shape_at(level) == expected.shape
        for axis in range(3):
            index = data.shape[1 + axis] - 3            # a level-0 index; the level's slice contains it
            k = index // factors[axis]
            whole = multiscale.plane(axis, index, level)
            np.testing.assert_array_equal(whole, np.take(expected, k, axis=1 + axis))
            first, second = PLANE_AXES[axis]
            n_a, n_b = expected.shape[1 + first], expected.shape[1 + second]
            region = ((n_a // 4, n_a // 2 + 1), (1, n_b - 1))
            part = multiscale.plane(axis, index, level, region)
            np.testing.assert_array_equal(part, whole[:, region[0][0]:region[0][1], region[1][0]:region[1][1]])


def test_level_for_a_zoom(stack):
    path, _ = stack
    multiscale = MultiscaleImage(open_lazy(path), budget_bytes=100_000)
    assert multiscale.level_for(1.0) == 0          # one screen pixel per voxel: full resolution
    assert multiscale.level_for(4.0) == 0          # zoomed in
    assert multiscale.level_for(0.5) == 1          # two voxels per pixel: halved
    assert multiscale.level_for(1e-3) == multiscale.coarsest
    # an XZ view with coarse z (a z voxel spans 4 pixels): z must not be averaged, x may be
    assert multiscale.level_for((4.0, 0.5, 0.5), axes=(0, 2)) == max(
        i for i, level in enumerate(multiscale.levels) if level.factors[0] == 1 and level.factors[2] <= 2)
    # a read larger than allowed falls back to a coarser level
    region = ((0, 40), (0, 150))
    assert multiscale.choose_level(2, 1.0, region, 10**12) == 0
    assert multiscale.choose_level(2, 1.0, region, 1) == multiscale.coarsest


def test_tile_cache_serves_repeated_planes_and_is_bounded(stack):
    path, _ = stack
    image = open_counting(path)
    multiscale = MultiscaleImage(image, budget_bytes=100_000, tile_cache_bytes=300_000)
    image.boxes.clear()
    first = multiscale.plane(0, 7, 0, ((10, 90), (5, 60)))
    assert len(image.boxes) == 1
    again = multiscale.plane(0, 7, 0, ((20, 80), (5, 50)))   # inside the tiles read: no new read
    assert len(image.boxes) == 1
    np.testing.assert_array_equal(again, first[:, 10:70, 0:45])
    for z in range(40):
        multiscale.plane(0, z, 0)
    assert multiscale.tiles.bytes <= 300_000


def test_cache_is_reused_and_invalidated_when_the_file_changes(tmp_path):
    data = noise(seed=4)
    path = write_tiff(tmp_path / "stack.tif", data)
    cache = tmp_path / "cache"
    first = MultiscaleImage(open_counting(path), budget_bytes=100_000, cache_dir=cache)
    assert not first.built_from_cache
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]   # no temporary files left
    image = open_counting(path)
    second = MultiscaleImage(image, budget_bytes=100_000, cache_dir=cache)
    assert second.built_from_cache and image.boxes == []                    # nothing read from the file
    np.testing.assert_array_equal(second.levels[-1].array, first.levels[-1].array)
    # the file changes: same size, new pixels, new modification time -> rebuilt
    changed = noise(seed=5)
    write_tiff(path, changed)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    image = open_counting(path)
    third = MultiscaleImage(image, budget_bytes=100_000, cache_dir=cache)
    assert not third.built_from_cache and image.boxes
    np.testing.assert_array_equal(third.levels[-1].array, block_mean(changed, third.scale_at(third.coarsest)))
    # a damaged cache is rebuilt, not trusted
    next(cache.glob("*.npy")).write_bytes(b"not an array")
    fourth = MultiscaleImage(open_lazy(path), budget_bytes=100_000, cache_dir=cache)
    assert not fourth.built_from_cache
    np.testing.assert_array_equal(fourth.levels[-1].array, third.levels[-1].array)


def test_ome_zarr_levels_come_from_the_file(tmp_path):
    pytest.importorskip("ome_zarr")
    from test_imageio_formats import write_ome_zarr

    data = noise((2, 8, 64, 48), seed=6)
    path = write_ome_zarr(tmp_path / "cells.ome.zarr", data, VOXEL, ["DAPI", "GM130"])
    import zarr

    level1 = np.asarray(zarr.open_group(str(path), mode="r")["s1"])
    multiscale = MultiscaleImage(open_lazy(path), budget_bytes=20_000)
    assert multiscale.levels[1].source in ("file", "memory")
    assert multiscale.scale_at(1) == (1, 2, 2)
    assert multiscale.shape_at(1) == level1.shape
    np.testing.assert_array_equal(multiscale.plane(0, 5, 1), level1[:, 5])
    # further levels, where the file's do not fit the budget, are averaged from its coarsest level
    assert multiscale.levels[-1].array.nbytes <= 20_000
    np.testing.assert_array_equal(multiscale.levels[-1].array,
                                  block_mean(level1, [a // b for a, b in zip(multiscale.scale_at(multiscale.coarsest),
                                                                             (1, 2, 2))]))


def test_memory_estimates():
    assert available_memory_bytes() > 0
    assert in_memory_bytes((2, 120, 4096, 4096), np.uint16) == 2 * 120 * 4096 * 4096 * 2
    assert in_memory_bytes((1, 2, 3, 4), np.int16) == 24 * 4   # read_volume converts it to float32


def test_intensities_and_level0_boxes(stack):
    path, data = stack
    multiscale = MultiscaleImage(open_lazy(path), budget_bytes=100_000)
    np.testing.assert_array_equal(multiscale.intensities_at((3, 40, 50)), data[:, 3, 40, 50])
    np.testing.assert_array_equal(multiscale.read_level0((2, 5), (10, 20), (0, 7)), data[:, 2:5, 10:20, 0:7])
    multiscale.close()
