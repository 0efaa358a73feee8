"""Peaks (app.core.inference.peaks): sub-voxel positions, distances in µm, valleys, ridges, device maxima."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from app.core.inference import find_peaks, refine_peaks, ridge_scores
from test_inference import match_to_truth, tube_and_blob

# ----------------------------------------------------------------------------------------------
# find_peaks: sub-voxel positions, anisotropy, valleys
# ----------------------------------------------------------------------------------------------
def test_find_peaks_subvoxel_on_anisotropic_grid():
    voxel = (1.0, 0.4, 0.4)
    truth = np.array([[8.3, 20.2, 30.7], [12.6, 40.45, 15.1], [5.0, 50.0, 50.0]])
    shape = (20, 60, 64)
    grid = np.indices(shape, dtype=np.float64)
    heat = np.zeros(shape)
    for c in truth:
        d2 = sum(((grid[a] - c[a]) * voxel[a]) ** 2 for a in range(3))
        heat = np.maximum(heat, 0.9 * np.exp(-d2 / (2 * 1.5**2)))
    positions, voxels, heights = find_peaks(heat.astype(np.float32), 0.4, 3.0, voxel)
    assert len(positions) == 3
    assert np.all(heights > 0.85) and np.all(np.diff(heights) <= 0)  # highest first
    assert np.max(match_to_truth(positions, truth)) < 0.02
    assert np.all(np.abs(positions - voxels) <= 0.5)


def test_min_distance_is_in_micrometres_not_voxels():
    # Voxel 1.0 µm in z, 0.25 µm in-plane. Two narrow peaks 2 µm apart are merged whether the gap is
    # along z (2 voxels) or x (8 voxels); 4 µm apart they are both kept. A min-distance of 3 *voxels*
    # would keep the pair 8 voxels apart in x.
    voxel = (1.0, 0.25, 0.25)
    shape = (16, 24, 64)
    grid = np.indices(shape, dtype=np.float64)

    def heat_with(points, heights):
        h = np.zeros(shape)
        for c, amp in zip(points, heights):
            d2 = sum(((grid[a] - c[a]) * voxel[a]) ** 2 for a in range(3))
            h = np.maximum(h, amp * np.exp(-d2 / (2 * 0.5**2)))
        return h.astype(np.float32)

    for gap_um in (2.0, 4.0):
        for axis in (0, 2):
            second = np.array([5.0, 12.0, 20.0])
            second[axis] += gap_um / voxel[axis]
            heat = heat_with([np.array([5.0, 12.0, 20.0]), second], [0.9, 0.8])
            positions, _, heights = find_peaks(heat, 0.4, 3.0, voxel)
            expected = 1 if gap_um < 3.0 else 2
            assert len(positions) == expected, (gap_um, axis, positions)
            assert heights[0] == pytest.approx(0.9, abs=1e-3)  # the higher peak wins


def test_valley_keeps_two_touching_objects_but_not_the_shoulder_of_one():
    # Two Golgi 4 µm apart (σ 1 µm: the heatmap between them falls to ~0.12 of the peaks) within a 5 µm
    # minimum distance: plain thinning keeps one, a valley ratio of 0.5 both. An elongated blob (two
    # centres 1.5 µm apart, σ 1.2 µm: a saddle at ~0.92 of the lower top) stays one peak either way.
    voxel = (1.0, 0.25, 0.25)
    shape = (10, 40, 80)
    grid = np.indices(shape, dtype=np.float64)

    def heat_with(points, heights, sigma):
        h = np.zeros(shape)
        for c, amp in zip(points, heights):
            d2 = sum(((grid[a] - c[a]) * voxel[a]) ** 2 for a in range(3))
            h = np.maximum(h, amp * np.exp(-d2 / (2 * sigma**2)))
        return h.astype(np.float32)

    first = np.array([5.0, 20.0, 30.0])
    two = heat_with([first, first + (0, 0, 4.0 / 0.25)], [0.9, 0.7], 1.0)
    assert len(find_peaks(two, 0.4, 5.0, voxel)[0]) == 1
    positions, _, heights = find_peaks(two, 0.4, 5.0, voxel, valley_ratio=0.5)
    assert len(positions) == 2 and heights == pytest.approx([0.9, 0.7], abs=1e-3)
    assert np.max(match_to_truth(positions, np.stack([first, first + (0, 0, 16.0)]))) < 0.05
    shoulder = heat_with([first, first + (0, 0, 1.5 / 0.25)], [0.9, 0.85], 1.2)
    assert len(find_peaks(shoulder, 0.4, 1.0, voxel)[0]) == 2  # two tops exist
    assert len(find_peaks(shoulder, 0.4, 5.0, voxel, valley_ratio=0.5)[0]) == 1
    # a row of three, 4 µm apart: the middle one is kept only if its valleys to *both* neighbours are deep
    three = heat_with([first, first + (0, 0, 32.0), first + (0, 0, 16.0)], [0.9, 0.8, 0.75], 1.0)
    assert len(find_peaks(three, 0.4, 5.0, voxel, valley_ratio=0.5)[0]) == 3
    assert len(find_peaks(three, 0.4, 5.0, voxel, valley_ratio=0.1)[0]) == 2


def test_refine_peaks_border_and_flat_plane():
    heat = np.zeros((1, 10, 10), dtype=np.float32)  # a single plane: z is never refined
    heat[0, 4, 5] = 1.0
    heat[0, 4, 6] = 0.5
    heat[0, 3, 5] = heat[0, 5, 5] = 0.3
    out = refine_peaks(heat, np.array([[0, 4, 5]]))
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(4.0) and 5.0 < out[0, 2] < 5.5


# ----------------------------------------------------------------------------------------------
# ridge scores
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("voxel", [(1.0, 0.5, 0.5), (0.5, 0.25, 0.25), (1.0, 0.4, 0.25)])
def test_ridge_scores_tell_a_tube_from_a_compact_peak_in_micrometres(voxel):
    shape = tuple(int(round(f / v)) for f, v in zip((7.0, 20.0, 40.0), voxel))
    heat, tube, blob = tube_and_blob(shape, voxel)
    voxels = np.rint(np.stack([tube, blob])).astype(np.int64)
    scores = ridge_scores(heat, voxels, heat[tuple(voxels.T)], 3.5, voxel)
    assert scores[0] > 0.8 and scores[1] < 0.05
    # A 2D (single-plane) heatmap reads the same, and no peaks give no scores.
    plane = voxels.copy()
    plane[:, 0] = 0
    flat = heat[voxels[0, 0]][None]
    np.testing.assert_allclose(ridge_scores(flat, plane, flat[tuple(plane.T)], 3.5, voxel), scores, atol=1e-6)
    assert ridge_scores(heat, np.zeros((0, 3), dtype=np.int64), np.zeros(0), 3.5, voxel).shape == (0,)


def test_ridge_scores_count_the_image_outside_as_empty():
    # A peak whose tube leaves the image within the radius on one side is not a ridge along that axis.
    heat, tube, _ = tube_and_blob((7, 40, 80), (1.0, 0.5, 0.5), angle_deg=0.0, tube_centre=(3.0, 10.0, 2.0))
    voxel = np.rint(tube).astype(np.int64)[None]
    assert ridge_scores(heat, voxel, heat[tuple(voxel.T)], 3.5, (1.0, 0.5, 0.5))[0] < 0.05
    assert ridge_scores(heat, voxel, heat[tuple(voxel.T)], 1.5, (1.0, 0.5, 0.5))[0] > 0.8


# ----------------------------------------------------------------------------------------------
# local maxima on the host and on the device
# ----------------------------------------------------------------------------------------------
def test_device_local_maxima_equal_the_host_search():
    from app.core.inference import _local_maxima, device_local_maxima

    rng = np.random.default_rng(5)
    heat = ndimage.gaussian_filter(rng.random((10, 48, 40)), 1.5).astype(np.float32)
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    heat[4, 10:13, 10:13] = 0.97  # a plateau: every voxel of it counts, as on the host
    heat[0, 0, 0] = 0.99  # a corner peak: outside the image does not count
    flat = heat[3:4]  # a single plane (2D)
    for h in (heat, flat):
        maxima = device_local_maxima(torch.from_numpy(h), floor=0.1)
        for threshold in (0.1, 0.3, 0.6):
            got = maxima.coords[maxima.values > threshold]
            want = _local_maxima(h, threshold)
            assert len(want) > 0 and np.array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])
    assert [0, 0, 0] in device_local_maxima(torch.from_numpy(heat)).coords.tolist()


def test_dense_and_sparse_maxima_agree_and_peaks_are_capped(monkeypatch):
    import app.core.inference.peaks as peaks_module

    rng = np.random.default_rng(0)
    heat = ndimage.gaussian_filter(rng.random((12, 40, 40)), 1.0).astype(np.float32)
    results = []
    for fraction in (0.0, 1.0):  # every voxel counts as "dense", then never
        monkeypatch.setattr(peaks_module, "_DENSE_FRACTION", fraction)
        results.append(find_peaks(heat, 0.0, 1.0, (1.0, 0.5, 0.5))[1])
    assert len(results[0]) > 20 and np.array_equal(results[0], results[1])
    positions, _, heights = find_peaks(heat, 0.0, 1.0, (1.0, 0.5, 0.5), max_peaks=7)
    assert len(positions) == 7 and np.all(np.diff(heights) <= 0)
