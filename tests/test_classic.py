"""The classic peer on hand-made volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.classic import ClassicParams, detect_objects, pair_by_distance, predict_classic
from app.core.errors import CellPolError
from app.core.volume import Volume


def ball(shape, centre, radius_vox):
    zz, yy, xx = np.indices(shape)
    d = ((zz - centre[0]) / radius_vox[0]) ** 2 + ((yy - centre[1]) / radius_vox[1]) ** 2 + (
        (xx - centre[2]) / radius_vox[2]
    ) ** 2
    return (d <= 1).astype(np.float32)


def two_cell_volume(voxel=(0.5, 0.25, 0.25)):
    shape = (20, 120, 120)
    nuclei = np.zeros(shape, np.float32)
    golgi = np.zeros(shape, np.float32)
    # Nuclei: radius 4 µm in y/x, 2 µm in z; Golgi 1 µm, placed 6 µm (24 vox) to the right / below.
    centres_n = [(10, 30, 30), (10, 80, 80)]
    centres_g = [(10, 30, 54), (10, 104, 80)]
    for c in centres_n:
        nuclei += ball(shape, c, (4, 16, 16))
    for c in centres_g:
        golgi += ball(shape, c, (2, 4, 4))
    rng = np.random.default_rng(0)
    data = np.stack([nuclei * 1000 + 100, golgi * 800 + 100]) + rng.normal(0, 10, (2,) + shape)
    return Volume(data.astype(np.float32), voxel), centres_n, centres_g


def test_detects_and_pairs_two_cells():
    volume, centres_n, centres_g = two_cell_volume()
    pairs = predict_classic(volume)
    assert len(pairs) == 2
    order = np.argsort(pairs.nuclei[:, 1])
    np.testing.assert_allclose(pairs.nuclei[order], centres_n, atol=0.5)
    np.testing.assert_allclose(pairs.golgi[order], centres_g, atol=0.5)
    np.testing.assert_allclose(pairs.lengths_um, 6.0, atol=0.2)
    assert pairs.meta["method"] == "classic" and list(pairs.sources) == ["predicted"] * 2


def test_pairs_beyond_d_max_are_refused():
    voxel = (1.0, 1.0, 1.0)
    nuclei = np.array([[0, 0, 0], [0, 0, 100]], float)
    golgi = np.array([[0, 0, 13.9], [0, 0, 130]], float)
    rows, cols = pair_by_distance(nuclei, golgi, voxel, d_max_um=14.0)
    assert list(zip(rows, cols)) == [(0, 0)]


def test_hungarian_beats_greedy():
    # Greedy nearest-first would pair N0-G0 (distance 1) and leave N1 with G1 at 20 > d_max.
    voxel = (1.0, 1.0, 1.0)
    nuclei = np.array([[0, 0, 0], [0, 0, 2]], float)
    golgi = np.array([[0, 0, 1], [0, 0, -10]], float)
    rows, cols = pair_by_distance(nuclei, golgi, voxel, d_max_um=14.0)
    assert sorted(zip(rows, cols)) == [(0, 1), (1, 0)]


def test_small_specks_are_ignored():
    volume, _, _ = two_cell_volume()
    data = volume.data.copy()
    data[1, 5, 5, 5] = 5000  # a bright single-voxel speck in the Golgi channel
    pairs = predict_classic(Volume(data, volume.voxel_size), ClassicParams(smooth_sigma_um=0))
    assert len(pairs) == 2


def test_needs_both_channels():
    volume = Volume(np.zeros((1, 4, 16, 16), np.float32), (1, 1, 1))
    with pytest.raises(CellPolError, match="nucleus and a Golgi channel"):
        predict_classic(volume)


def test_blank_volume_gives_no_pairs():
    volume = Volume(np.zeros((2, 4, 16, 16), np.uint16), (1, 1, 1))
    assert len(predict_classic(volume)) == 0
    assert detect_objects(np.zeros((4, 16, 16)), (1, 1, 1), 0.4, 1.0).shape == (0, 3)
