"""Resampling keeps coordinates exact; normalisation is per channel and robust."""

from __future__ import annotations

import numpy as np

from app.core.preprocess import normalize, resample


def test_resample_maps_a_bright_voxel_to_the_predicted_coordinate():
    data = np.zeros((1, 20, 40, 40), np.float32)
    data[0, 10, 20, 13] = 1.0
    out, mapping = resample(data, (1.0, 0.5, 0.5), (0.5, 1.0, 1.0))
    assert out.shape == (1, 40, 20, 20) and mapping.scale == (2.0, 0.5, 0.5)
    expected = mapping.to_output(np.array([[10, 20, 13]]))[0]
    com = np.array(np.unravel_index(np.argmax(out[0]), out.shape[1:]))
    # The weighted centroid of the blurred spot is where the mapping says.
    zz, yy, xx = np.indices(out.shape[1:])
    weights = out[0] / out[0].sum()
    centroid = [float((g * weights).sum()) for g in (zz, yy, xx)]
    np.testing.assert_allclose(centroid, expected, atol=0.3)
    assert np.all(np.abs(com - expected) <= 1.0)
    np.testing.assert_allclose(mapping.to_input(mapping.to_output([[3.0, 4.0, 5.0]])), [[3, 4, 5]])


def test_resample_2d_keeps_one_plane_and_identity_is_a_no_op():
    data = np.random.default_rng(0).random((2, 1, 30, 30)).astype(np.float32)
    out, mapping = resample(data, (1.0, 0.4, 0.4), (0.8, 0.8, 0.8))
    assert out.shape == (2, 1, 15, 15)
    same, identity = resample(data, (1.0, 0.4, 0.4), (1.0, 0.4, 0.4))
    assert identity.identity and np.array_equal(same, data)


def test_normalize_per_channel_percentiles():
    rng = np.random.default_rng(1)
    data = np.stack([rng.normal(100, 10, (4, 32, 32)), rng.normal(5000, 500, (4, 32, 32))]).astype(np.uint16)
    data[1, 0, 0, 0] = 65535  # a dirt speck
    out = normalize(data)
    assert out.dtype == np.float32 and out.shape == data.shape
    for c in range(2):
        assert 0.0 <= out[c].min() and out[c].max() <= 1.5
        assert abs(float(np.median(out[c])) - 0.5) < 0.15
    assert data[1, 0, 0, 0] == 65535  # input untouched
    flat = normalize(np.ones((1, 2, 4, 4), np.float32))
    assert np.all(flat == 0)
