"""Learned prediction: windows, stitching, peaks, cross-window pairing, ensembles, CLI.

Most tests bypass training with :class:`OracleNet`, a stand-in network whose heatmaps *are* its input
channels (so the image is drawn as Gaussians at known centroids) and whose embeddings encode each cell's
brightness plus a large random offset drawn afresh for every window. Embeddings are therefore comparable
only within one window, as with a real network: any decoding that compares or blends embeddings across
windows, or decodes windows independently, fails these tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.cli import EXIT_OK, EXIT_USAGE, main
from app.core.errors import CancelledError, CellPolError
from app.core.inference import (
    Predictor,
    find_peaks,
    match_pairs,
    plan_axis,
    plan_windows,
    prepare_on_device,
    refine_peaks,
    ridge_scores,
    select_device,
)
from app.core.jobs import CancelToken
from app.core.modelfile import DecodingSpec, ModelSpec, NormalizationSpec, save_model
from app.core.network import NetworkConfig, build_network
from app.core.pairs import read_pairs
from app.core.volume import Volume

SIGMA_UM = {"nucleus": 2.0, "golgi": 1.0}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
class OracleNet(nn.Module):
    """Heatmaps = the (normalised) input; embedding = 10 × local max of the input + a per-window offset."""

    def __init__(self, with_embeddings: bool = True, offset_scale: float = 50.0, seed: int = 0) -> None:
        super().__init__()
        self.with_embeddings = with_embeddings
        self.offset_scale = offset_scale
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        x = x.float()
        out = {"heatmap_nucleus": x[:, 0:1].clamp(0, 1), "heatmap_golgi": x[:, 1:2].clamp(0, 1)}
        if self.with_embeddings:
            offset = self.offset_scale * torch.randn(x.shape[0], 1, 1, 1, 1, generator=self.generator)
            local_max = F.max_pool3d(x, kernel_size=5, stride=1, padding=2)
            out["embedding_nucleus"] = 10.0 * local_max[:, 0:1] + offset
            out["embedding_golgi"] = 10.0 * local_max[:, 1:2] + offset
        return out


def oracle_spec(voxel_size, architecture="cellpol", **decoding) -> ModelSpec:
    params = dict(peak_threshold_nucleus=0.3, peak_threshold_golgi=0.3, min_distance_nucleus_um=3.0,
                  min_distance_golgi_um=1.5, embedding_delta=2.0, max_pair_distance_um=14.0)
    params.update(decoding)
    return ModelSpec(
        network=NetworkConfig(architecture=architecture, levels=1, base_filters=4),
        voxel_size=voxel_size,
        normalization=NormalizationSpec(low_percentile=0.0, high_percentile=100.0, clip=False),
        decoding=DecodingSpec(**params),
        name="oracle",
    )


def render(shape, voxel_size, cells) -> Volume:
    """A float32 volume with a Gaussian nucleus and Golgi per cell ``(nucleus_zyx, golgi_zyx, amplitude)``
    (``None`` leaves that object out)."""
    grid = np.indices(shape, dtype=np.float64)
    data = np.zeros((2,) + tuple(shape), dtype=np.float64)
    for nucleus, golgi, amplitude in cells:
        for channel, (centre, sigma) in enumerate(((nucleus, SIGMA_UM["nucleus"]), (golgi, SIGMA_UM["golgi"]))):
            if centre is None:  # a lone object
                continue
            d2 = sum(((grid[a] - centre[a]) * voxel_size[a]) ** 2 for a in range(3))
            data[channel] = np.maximum(data[channel], amplitude * np.exp(-d2 / (2 * sigma**2)))
    return Volume(data.astype(np.float32), voxel_size, ("nuclei", "golgi"))


def oracle_predictor(model_voxel, window=None, context_um=1.0, architecture="cellpol", seed=0, **decoding):
    net = OracleNet(with_embeddings=architecture == "cellpol", seed=seed)
    spec = oracle_spec(model_voxel, architecture, **decoding)
    return Predictor.from_modules([(net, spec)], "cpu", window=window, context_um=context_um), net


def match_to_truth(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each true point the distance (voxels) to the nearest found point."""
    if len(found) == 0:
        return np.full(len(truth), np.inf)
    return np.min(np.linalg.norm(truth[:, None, :] - found[None, :, :], axis=2), axis=1)


def tiny_model(tmp_path, name, seed, voxel_size=(1.0, 0.5, 0.5), architecture="cellpol", **config):
    torch.manual_seed(seed)
    cfg = NetworkConfig(architecture=architecture, levels=2, base_filters=4, **config)
    net = build_network(cfg).eval()
    spec = ModelSpec(
        network=cfg, voxel_size=voxel_size, name=name,
        decoding=DecodingSpec(peak_threshold_nucleus=0.05, peak_threshold_golgi=0.05,
                              min_distance_nucleus_um=1.0, min_distance_golgi_um=1.0, embedding_delta=2.0,
                              max_pair_distance_um=5.0),
    )
    return save_model(tmp_path / name, net, spec)


# ----------------------------------------------------------------------------------------------
# (a) decoding: peaks, sub-voxel positions, anisotropy
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


def tube_and_blob(shape, voxel, angle_deg=30.0, tube_centre=(3.0, 10.0, 10.0), blob_centre=(3.0, 10.0, 30.0)):
    """Golgi heatmap (float32) with a tube (σ 1 µm, a vessel) through ``tube_centre`` at ``angle_deg`` in-plane,
    0.9 high with a 1.0 bump at the centre, and a compact Gaussian Golgi (σ 1 µm, 1.0) at ``blob_centre``
    (both µm); returns the heatmap and both centres in voxels."""
    grid = np.indices(shape, dtype=np.float64) * np.asarray(voxel)[:, None, None, None]
    t, b = np.asarray(tube_centre), np.asarray(blob_centre)
    direction = np.array([0.0, np.sin(np.radians(angle_deg)), np.cos(np.radians(angle_deg))])
    rel = grid - t[:, None, None, None]
    along = np.tensordot(direction, rel, axes=1)
    across2 = (rel**2).sum(axis=0) - along**2
    tube = (0.9 + 0.1 * np.exp(-(along**2) / (2 * 3.0**2))) * np.exp(-across2 / 2.0)
    blob = np.exp(-((grid - b[:, None, None, None]) ** 2).sum(axis=0) / 2.0)
    return np.maximum(tube, blob).astype(np.float32), t / np.asarray(voxel), b / np.asarray(voxel)


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


@pytest.mark.parametrize(
    "dtype, shape, voxel",
    [
        (np.uint16, (9, 40, 50), (0.3, 0.7, 0.45)),  # z down, y/x up; values above 32767 (int16 view)
        (np.float32, (6, 31, 27), (1.0, 0.5, 0.5)),  # already at the model's voxel size: no resampling
        (np.uint32, (1, 45, 38), (1.0, 0.33, 0.33)),  # a 2D image; a dtype torch does not take directly
        (np.uint8, (12, 20, 24), (0.8, 0.9, 0.6)),
        (np.dtype(">u2"), (5, 22, 26), (0.5, 0.4, 0.4)),  # big-endian, as some TIFF writers store it
    ],
)
def test_prepare_on_device_equals_the_training_preprocessing(dtype, shape, voxel):
    from app.core.preprocess import normalize, resample

    rng = np.random.default_rng(3)
    top = {np.uint16: 65535, np.uint32: 100_000, np.uint8: 255}.get(np.dtype(dtype).type, 1.0)
    data = (rng.random((2,) + shape) * top).astype(dtype)
    data[1] = data[1].max() if dtype != np.float32 else data[1]  # uint types: a flat Golgi channel → zeros
    norms = [(1.0, 99.8, True), (0.0, 100.0, False)]
    prepared, mapping = prepare_on_device(data, voxel, (1.0, 0.5, 0.5), norms, torch.device("cpu"))
    expected, expected_mapping = resample(data, voxel, (1.0, 0.5, 0.5))
    assert mapping == expected_mapping
    for low, high, clip in norms:
        got = prepared[(low, high, clip)]
        assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
        want = normalize(expected, low, high, clip)
        np.testing.assert_allclose(got.numpy(), want, atol=2e-4 * max(1.0, float(np.abs(want).max())))


def test_device_percentiles_equal_the_numpy_ones():
    from app.core.inference import _percentile_range_torch
    from app.core.preprocess import percentile_range

    rng = np.random.default_rng(4)
    for size in (1000, 9_000_001):  # the second is sampled with a stride
        channel = rng.gamma(2.0, 100.0, size).astype(np.float32)
        got = _percentile_range_torch(torch.from_numpy(channel), 1.0, 99.8)
        assert got == pytest.approx(percentile_range(channel, 1.0, 99.8), rel=1e-6)


def test_embeddings_are_read_as_the_mean_of_the_neighbourhood_inside_the_window():
    from app.core.inference import _read_embedding

    window = np.arange(4 * 5 * 6, dtype=np.float16).reshape(4, 5, 6)
    local = np.array([[2, 2, 3], [0, 0, 0], [3, 4, 5]])
    expected = [window[1:4, 1:4, 2:5].mean(), window[0:2, 0:2, 0:2].mean(), window[2:4, 3:5, 4:6].mean()]
    np.testing.assert_allclose(_read_embedding(window, local), expected, rtol=1e-6)


def test_device_local_maxima_equal_the_host_search():
    from scipy import ndimage

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


def test_decoding_with_maxima_found_on_the_device_is_the_same(monkeypatch):
    # On a GPU the local maxima come back with the heatmaps; forced here on the CPU, decoding must not change,
    # including for a threshold below their floor (then searched on the host as before).
    import app.core.inference as inference

    voxel = (1.0, 0.5, 0.5)
    cells = [(np.array([4.0, 10.0 + 14 * k, 20.0 + 9 * k]), np.array([4.0, 14.0 + 14 * k, 24.0 + 9 * k]), 0.9)
             for k in range(4)]
    volume = render((8, 70, 80), voxel, cells)
    predictor, _ = oracle_predictor(voxel)
    plain = predictor.run_network(volume)
    assert plain.maxima is None
    monkeypatch.setattr(inference, "_maxima_on", lambda staging: True)
    staged = predictor.run_network(volume)
    assert staged.maxima is not None and len(staged.maxima[0].coords) >= 4
    for decoding in (None, dataclasses.replace(predictor.decoding, peak_threshold_golgi=0.01)):
        a, b = predictor.decode(plain, decoding), predictor.decode(staged, decoding)
        assert len(a) == len(b) == 4
        np.testing.assert_array_equal(a.nuclei, b.nuclei)
        np.testing.assert_array_equal(a.golgi, b.golgi)


def test_dense_and_sparse_maxima_agree_and_peaks_are_capped(monkeypatch):
    import app.core.inference as inference
    from scipy import ndimage

    rng = np.random.default_rng(0)
    heat = ndimage.gaussian_filter(rng.random((12, 40, 40)), 1.0).astype(np.float32)
    results = []
    for fraction in (0.0, 1.0):  # every voxel counts as "dense", then never
        monkeypatch.setattr(inference, "_DENSE_FRACTION", fraction)
        results.append(find_peaks(heat, 0.0, 1.0, (1.0, 0.5, 0.5))[1])
    assert len(results[0]) > 20 and np.array_equal(results[0], results[1])
    positions, _, heights = find_peaks(heat, 0.0, 1.0, (1.0, 0.5, 0.5), max_peaks=7)
    assert len(positions) == 7 and np.all(np.diff(heights) <= 0)


def test_refine_peaks_border_and_flat_plane():
    heat = np.zeros((1, 10, 10), dtype=np.float32)  # a single plane: z is never refined
    heat[0, 4, 5] = 1.0
    heat[0, 4, 6] = 0.5
    heat[0, 3, 5] = heat[0, 5, 5] = 0.3
    out = refine_peaks(heat, np.array([[0, 4, 5]]))
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(4.0) and 5.0 < out[0, 2] < 5.5


@pytest.mark.parametrize(
    "input_voxel, model_voxel",
    [((0.5, 0.3, 0.3), (0.8, 0.45, 0.6)),  # model coarser (downsampling, different per axis)
     ((1.0, 0.6, 0.6), (0.5, 0.4, 0.45))],  # model finer (upsampling)
)
def test_positions_come_back_in_input_voxels_after_resampling(input_voxel, model_voxel):
    shape = (20, 70, 66) if input_voxel[0] < 1 else (12, 40, 40)
    extent = np.asarray(shape) * np.asarray(input_voxel)
    rng = np.random.default_rng(1)
    cells = []
    for k, amp in enumerate((1.0, 0.8)):
        nucleus_um = np.array([extent[0] / 2, extent[1] * (0.3 + 0.4 * k), extent[2] * 0.35])
        nucleus_um += rng.uniform(-0.3, 0.3, 3)
        golgi_um = nucleus_um + np.array([0.5, 0.0, 4.5])
        cells.append((nucleus_um / input_voxel, golgi_um / input_voxel, amp))
    volume = render(shape, input_voxel, cells)
    predictor, _ = oracle_predictor(model_voxel)
    pairs = predictor(volume)
    assert len(pairs) == 2
    truth_n = np.array([c[0] for c in cells])
    truth_g = np.array([c[1] for c in cells])
    # Linear resampling of a sampled Gaussian moves its peak by a small fraction of a voxel.
    assert np.max(match_to_truth(pairs.nuclei, truth_n)) < 0.25
    assert np.max(match_to_truth(pairs.golgi, truth_g)) < 0.25
    assert pairs.voxel_size == volume.voxel_size
    assert list(pairs.sources) == ["predicted", "predicted"]
    assert pairs.meta["image_shape_zyx"] == list(shape)


# ----------------------------------------------------------------------------------------------
# windows and stitching
# ----------------------------------------------------------------------------------------------
def test_plan_axis_covers_with_overlap_and_multiple():
    for length, wmax, overlap, multiple in [(768, 216, 31, 8), (500, 128, 40, 16), (100, 64, 20, 1), (30, 64, 10, 8)]:
        window, starts = plan_axis(length, wmax, overlap, multiple)
        assert window % multiple == 0 and window <= max(wmax, multiple)
        assert starts[0] == 0
        if len(starts) > 1:
            assert starts[-1] + window == length
            assert np.all(window - np.diff(starts) >= overlap)
        else:
            assert window >= length
    with pytest.raises(CellPolError, match="larger window"):
        plan_axis(200, 32, 40, 8)


def test_blending_weights_sum_to_one_and_stitching_has_no_seams():
    grid = plan_windows((10, 100, 130), (8, 40, 48), (3, 12, 12), (1, 1, 1))
    assert len(grid) > 10
    for axis in range(3):
        weights, total = grid.axis_weights(axis)
        assert np.allclose(total, 1.0, atol=1e-5)

    # End to end: with an identity network the stitched heatmap equals the normalised input everywhere.
    voxel = (1.0, 0.5, 0.5)
    cells = [((4.0, 20.0, 30.0), (5.0, 20.0, 44.0), 1.0), ((6.0, 60.0, 95.0), (6.0, 70.0, 90.0), 0.7)]
    volume = render((10, 90, 130), voxel, cells)
    predictor, _ = oracle_predictor(voxel, window=(10, 64, 64))
    prediction = predictor.predict(volume, keep_heatmaps=True)
    assert prediction.pairs.meta["windows"] > 4
    expected = volume.data[0] / volume.data[0].max()
    assert np.allclose(prediction.heatmap_nucleus, np.clip(expected, 0, 1), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# (b) cross-window consistency: one vector per cell
# ----------------------------------------------------------------------------------------------
def test_an_image_too_large_for_the_device_is_staged_in_host_memory(monkeypatch):
    # The first staging place (the GPU, in real use) runs out of memory: the image is prepared on the next
    # (host memory) and the prediction is the same; with no place left, one clear error.
    import app.core.inference as inference

    voxel = (1.0, 0.5, 0.5)
    volume = render((8, 40, 60), voxel, [(np.array([4.0, 20.0, 20.0]), np.array([4.0, 26.0, 24.0]), 0.9)])
    predictor, _ = oracle_predictor(voxel)
    expected = predictor(volume)
    calls = []
    real_prepare = inference.Predictor._prepare

    def prepare(self, vol, where):
        calls.append(where)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 3.00 GiB")
        return real_prepare(self, vol, where)

    monkeypatch.setattr(inference.Predictor, "_prepare", prepare)
    monkeypatch.setattr(inference.Predictor, "_staging_devices", lambda self: [torch.device("cpu")] * 2)
    got = predictor(volume)
    assert len(calls) == 2 and len(got) == len(expected) == 1
    np.testing.assert_allclose(got.golgi, expected.golgi)
    calls.clear()
    monkeypatch.setattr(inference.Predictor, "_staging_devices", lambda self: [torch.device("cpu")])
    with pytest.raises(CellPolError, match="out of memory"):
        predictor(volume)
    # Anything else is not swallowed.
    def broken(self, vol, where):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(inference.Predictor, "_prepare", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        predictor(volume)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 40000000000000 bytes."),
        MemoryError(),
    ],
)
def test_running_out_of_memory_on_a_cpu_names_the_computers_memory(monkeypatch, error):
    # The old message, "out of memory: reduce --window or use CPU", told a CPU run to use the CPU.
    voxel = (1.0, 0.5, 0.5)
    volume = render((8, 40, 60), voxel, [(np.array([4.0, 20.0, 20.0]), np.array([4.0, 26.0, 24.0]), 0.9)])
    predictor, net = oracle_predictor(voxel)

    def forward(x):
        raise error

    monkeypatch.setattr(net, "forward", forward)
    with pytest.raises(CellPolError) as info:
        predictor(volume)
    message = str(info.value)
    assert message.startswith("out of memory: running the network on 1 window of ")
    assert "does not fit in the computer's memory (RAM)" in message and "--window" in message
    assert "GPU" not in message and "--device cpu" not in message and "use CPU" not in message


def test_running_out_of_gpu_memory_suggests_the_cpu():
    from app.core.inference import _out_of_memory

    message = str(_out_of_memory("running the network on 8 windows of 64×256×256 voxels at a time",
                                 [torch.device("cuda", 0)], "a smaller --window (Z Y X) or --batch-size"))
    assert "GPU" in message and "(cuda:0" in message and "--device cpu" in message
    assert "computer with more memory" not in message


def test_pairs_straddling_window_borders_are_found_exactly_once():
    voxel = (1.0, 0.5, 0.5)
    shape = (8, 40, 260)
    # Vectors 12.5 µm (25 voxels) long along x, alternately pointing right and left, nuclei spread over the
    # whole strip so that the vectors straddle window borders. Brightness (hence embedding) cycles through
    # three levels, so cells within d_max of each other differ by at least Δ.
    cells, amplitudes = [], [1.0, 0.55, 0.8]
    for k, x in enumerate((44.0, 74.0, 100.0, 130.0, 156.0, 186.0, 212.0)):
        direction = 1 if k % 2 == 0 else -1
        nucleus = np.array([3.6, 14.0 + 12 * (k % 2), x])
        cells.append((nucleus, nucleus + np.array([0.8, 0.0, 25.0 * direction]), amplitudes[k % 3]))
    truth_n = np.array([c[0] for c in cells])
    truth_g = np.array([c[1] for c in cells])
    volume = render(shape, voxel, cells)
    predictor, net = oracle_predictor(voxel, window=(8, 40, 64), context_um=1.0)

    # The test has teeth: windows overlap by less than two vectors' length, so for some cells the window
    # whose centre is nearest the nucleus does not contain the Golgi (a "nucleus owns its window" decoder
    # would read that Golgi's embedding from the wrong place).
    grid, _ = predictor.plan(shape)
    starts = grid.starts[2]
    nearest = np.argmin(np.abs(truth_n[:, 2:3] - (starts[None, :] + grid.window[2] / 2)), axis=1)
    golgi_x = truth_g[:, 2]
    assert len(grid) >= 6 and np.any((golgi_x < starts[nearest]) | (golgi_x > starts[nearest] + grid.window[2] - 1))

    pairs = predictor(volume)
    assert net.calls >= 2
    assert len(pairs) == len(cells)  # one vector per cell, however many windows saw it
    for n, g in zip(pairs.nuclei, pairs.golgi):  # each nucleus with its own Golgi
        k = int(np.argmin(np.linalg.norm(truth_n - n, axis=1)))
        assert np.linalg.norm(truth_n[k] - n) < 0.1
        assert np.linalg.norm(truth_g[k] - g) < 0.1
    assert np.all((pairs.scores > 0.5) & (pairs.scores <= 1.0))


# ----------------------------------------------------------------------------------------------
# (c) pairing by embedding; rejections
# ----------------------------------------------------------------------------------------------
def test_embeddings_pair_correctly_when_the_nearest_golgi_is_the_other_cells():
    voxel = (1.0, 0.5, 0.5)
    # Along x (µm): nucleus A at 10, Golgi B at 12, Golgi A at 16, nucleus B at 18. Each nucleus is 2 µm
    # from the *other* cell's Golgi and 6 µm from its own; pairing by distance would swap them.
    um = lambda z, y, x: np.array([z, y / 0.5, x / 0.5])  # noqa: E731
    cell_a = (um(4, 10, 10), um(4, 10, 16), 1.0)
    cell_b = (um(4, 11, 18), um(4, 11, 12), 0.6)
    # Far away: a Golgi 16 µm from its nucleus (beyond d_max = 14 µm) and a pair whose embeddings differ
    # by 3 ≥ Δ = 2 (brightness 0.75 vs 0.45).
    too_far = (um(4, 30, 8), um(4, 30, 24), 0.8)
    mismatched_n = (um(4, 30, 60), None, 0.75)
    mismatched_g = (None, um(4, 30, 66), 0.45)
    volume = render((9, 80, 160), voxel, [cell_a, cell_b, too_far, mismatched_n, mismatched_g])

    predictor, _ = oracle_predictor(voxel, window=(9, 64, 64))
    pairs = predictor(volume)
    assert pairs.meta["windows"] > 1 and pairs.meta["detected_nuclei"] == 4 and pairs.meta["detected_golgi"] == 4
    assert len(pairs) == 2
    order = np.argsort(pairs.nuclei[:, 2])
    assert np.allclose(pairs.nuclei[order], [cell_a[0], cell_b[0]], atol=0.1)
    assert np.allclose(pairs.golgi[order], [cell_a[1], cell_b[1]], atol=0.1)

    # peaks(): every peak decode paired from, the unpaired ones too, at the input's voxels.
    output = predictor.run_network(volume)
    (pos_n, _, h_n), (pos_g, _, h_g) = predictor.peaks(output)
    expected_n = [cell_a[0], cell_b[0], too_far[0], mismatched_n[0]]
    expected_g = [cell_a[1], cell_b[1], too_far[1], mismatched_g[1]]
    for found, heights, expected in ((pos_n, h_n, expected_n), (pos_g, h_g, expected_g)):
        found = output.resampling.to_input(found)
        assert len(found) == len(heights) == 4 and np.all(heights > 0)
        for point in expected:
            assert np.min(np.linalg.norm(found - point, axis=1)) < 0.1
    # A decoding given explicitly is the one used: a Golgi threshold above the faintest peak drops it.
    stricter = dataclasses.replace(predictor.decoding, peak_threshold_golgi=float(h_g.min()) + 1e-3)
    kept = predictor.peaks(output, stricter)[1][2]
    assert len(kept) == 3 and np.all(kept > h_g.min()) and len(predictor.peaks(output)[1][0]) == 4

    # The embedding-free architecture pairs by distance, and so swaps the two Golgi here.
    ctr, _ = oracle_predictor(voxel, window=(9, 64, 64), architecture="ctrdet")
    by_distance = ctr(volume)
    order = np.argsort(by_distance.nuclei[:, 2])
    assert np.allclose(by_distance.golgi[order][:2], [cell_b[1], cell_a[1]], atol=0.1)


def test_match_pairs_limits_and_preference():
    # Two nuclei, two Golgi: edges (cost = |Δe|/Δ): n0-g0 0.05, n0-g1 0.95, n1-g0 0.90.
    rows, cols = np.array([0, 0, 1]), np.array([0, 1, 0])
    n, g, e = match_pairs(2, 2, rows, cols, np.array([0.05, 0.95, 0.90]), np.array([5.0, 5.0, 5.0]), 14.0)
    # One confident pair beats two doubtful ones.
    assert list(zip(n, g)) == [(0, 0)] and list(e) == [0]
    # |Δe| = Δ exactly, or d > d_max: rejected even when it is the only candidate.
    assert len(match_pairs(1, 1, [0], [0], np.array([1.0]), np.array([3.0]), 14.0)[0]) == 0
    assert len(match_pairs(1, 1, [0], [0], np.array([0.0]), np.array([14.01]), 14.0)[0]) == 0
    assert len(match_pairs(1, 1, [0], [0], np.array([0.0]), np.array([14.0]), 14.0)[0]) == 1
    # Equal embedding costs: the shorter vector wins the tie.
    n, g, _ = match_pairs(1, 2, [0, 0], [0, 1], np.array([0.2, 0.2]), np.array([9.0, 4.0]), 14.0)
    assert list(g) == [1]


# ----------------------------------------------------------------------------------------------
# (d) real (tiny, untrained) networks end to end; ensembles
# ----------------------------------------------------------------------------------------------
def _random_volume(shape=(7, 44, 52), voxel=(0.8, 0.5, 0.5), seed=0):
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(0, 4000, size=(3,) + shape, dtype=np.uint16), voxel, ("a", "b", "c"),
                  nucleus_channel=2, golgi_channel=0)


def _check_output(pairs, volume):
    assert len(pairs) > 0
    upper = np.asarray(volume.spatial_shape) - 1
    for points in (pairs.nuclei, pairs.golgi):
        assert np.all(points >= 0) and np.all(points <= upper)
    assert np.all((pairs.scores >= 0) & (pairs.scores <= 1))
    assert np.all(pairs.lengths_um <= 5.0 + 1.0)  # d_max, plus resampling round-off
    assert set(pairs.sources) == {"predicted"}


def test_real_network_end_to_end_and_ensemble(tmp_path):
    a = tiny_model(tmp_path, "member_a", seed=1)
    b = tiny_model(tmp_path, "member_b", seed=2)
    volume = _random_volume()
    calls = []
    single = Predictor.from_files([a], device="cpu", window=(8, 32, 32), context_um=0.5)
    pairs = single(volume, progress=lambda done, total, what: calls.append((done, total, what)))
    _check_output(pairs, volume)
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] == pairs.meta["windows"] > 1
    assert all(what == "windows" for *_, what in calls)

    ensemble = Predictor.from_files([a, b], device="cpu", window=(8, 32, 32), context_um=0.5)
    joined = ensemble(volume)
    _check_output(joined, volume)
    info = ensemble.provenance()
    assert info["ensemble_size"] == 2 and [m["name"] for m in info["models"]] == ["member_a", "member_b"]
    weights = tmp_path / "member_b.safetensors"
    assert info["models"][1]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["device"] == "cpu" and info["decoding"]["embedding_delta"] == 2.0
    assert joined.meta["models"] == info["models"]


def test_ensemble_members_must_match(tmp_path):
    a = tiny_model(tmp_path, "a", seed=1)
    other_voxel = tiny_model(tmp_path, "b", seed=2, voxel_size=(0.5, 0.5, 0.5))
    other_kind = tiny_model(tmp_path, "c", seed=3, architecture="ctrdet")
    with pytest.raises(CellPolError, match="voxel size"):
        Predictor.from_files([a, other_voxel], device="cpu")
    with pytest.raises(CellPolError, match="architecture"):
        Predictor.from_files([a, other_kind], device="cpu")


def test_ctrdet_model_and_dimension_checks(tmp_path):
    volume = _random_volume()
    ctr = Predictor.from_files([tiny_model(tmp_path, "ctr", seed=4, architecture="ctrdet")], device="cpu")
    _check_output(ctr(volume), volume)

    flat = Volume(volume.data[:, :1], volume.voxel_size, nucleus_channel=2, golgi_channel=0)
    with pytest.raises(CellPolError, match="pools along z"):
        Predictor.from_files([tiny_model(tmp_path, "pool_z", seed=5)], device="cpu")(flat)
    # A 3D model that never pools z runs on a single plane.
    in_plane = tiny_model(tmp_path, "in_plane", seed=6, pool_factors=((1, 2, 2),))
    pairs = Predictor.from_files([in_plane], device="cpu")(flat)
    assert np.all(pairs.nuclei[:, 0] == 0)
    two_d = tiny_model(tmp_path, "two_d", seed=7, spatial_dims=2)
    _check_output(Predictor.from_files([two_d], device="cpu")(flat), flat)
    with pytest.raises(CellPolError, match="2D model"):
        Predictor.from_files([two_d], device="cpu")(volume)
    with pytest.raises(CellPolError, match="Golgi channel"):
        ctr(Volume(volume.data[:1], volume.voxel_size))


def test_batchnorm_folding_keeps_outputs_and_leaves_the_callers_module_alone():
    torch.manual_seed(0)
    net = build_network(NetworkConfig(levels=2, base_filters=4)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    spec = ModelSpec(network=net.config, voxel_size=(1.0, 0.5, 0.5))
    predictor = Predictor.from_modules([(net, spec)], "cpu")
    fused = predictor.members[0].module
    assert fused is not net and not any(isinstance(m, nn.BatchNorm3d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    x = torch.randn(1, 2, 4, 16, 16)
    with torch.inference_mode():
        expected, got = net(x), fused(x.contiguous(memory_format=torch.channels_last_3d))
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-5)


def test_cancel_and_device_errors(tmp_path):
    token = CancelToken()
    token.cancel()
    predictor = Predictor.from_files([tiny_model(tmp_path, "m", seed=1)], device="cpu")
    with pytest.raises(CancelledError):
        predictor(_random_volume(), cancel=token)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(CellPolError, match="no CUDA GPU found; use --device cpu"):
            select_device("cuda")
    with pytest.raises(CellPolError, match="Unknown device"):
        select_device("tpu")


# ----------------------------------------------------------------------------------------------
# (e) CLI
# ----------------------------------------------------------------------------------------------
def test_cli_predict_with_model_file(tmp_path, capsys):
    model = tiny_model(tmp_path, "cli_model", seed=1)
    image = tmp_path / "img.npy"
    rng = np.random.default_rng(0)
    np.save(image, rng.integers(0, 4000, size=(6, 2, 40, 40), dtype=np.uint16))
    out = tmp_path / "out"
    args = ["predict", str(image), "--out", str(out), "--model", str(model), "--axes", "ZCYX",
            "--voxel-size", "1.0", "0.5", "0.5", "--nucleus-channel", "0", "--golgi-channel", "1"]
    assert main(args + ["--device", "cpu"]) == EXIT_OK
    pairs = read_pairs(out / "img.pred.vectors.csv")
    assert pairs.meta["method"] == "cellpol" and pairs.meta["models"][0]["name"] == "cli_model"
    assert pairs.meta["image_shape_zyx"] == [6, 40, 40]
    assert math.isclose(pairs.meta["decoding"]["max_pair_distance_um"], 5.0)

    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(args + ["--device", "cuda", "--overwrite"]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "no CUDA GPU found; use --device cpu" in err and "Traceback" not in err


def test_cli_cellpol_without_any_model(tmp_path, capsys, monkeypatch):
    import app.cli as cli

    monkeypatch.setattr(cli, "_starter_model_available", lambda: False)
    monkeypatch.setattr("app.core.inference.starter_models", lambda folder=None: {})
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((4, 2, 16, 16), dtype=np.uint16))
    status = main(["predict", str(image), "--out", str(tmp_path / "o"), "--method", "cellpol", "--axes", "ZCYX",
                   "--voxel-size", "1", "1", "1"])
    assert status == EXIT_USAGE
    assert "No starter model is installed (resources/models): pass --model PATH or use --method classic" \
        in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# (f) the bundled starter models: 3D for stacks, 2D for single planes
# ----------------------------------------------------------------------------------------------
def test_find_starter_model_by_dimensionality(tmp_path):
    from app.core.inference import find_starter_model

    assert find_starter_model(tmp_path / "missing") is None
    three = tiny_model(tmp_path, "cellpol_starter", seed=0)
    assert find_starter_model(tmp_path) == three
    assert find_starter_model(tmp_path, spatial_dims=2) is None
    two = tiny_model(tmp_path, "a_plane_model", seed=1, spatial_dims=2)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")  # skipped, not fatal
    assert find_starter_model(tmp_path, spatial_dims=2) == two
    assert find_starter_model(tmp_path, spatial_dims=3) == three


def test_starter_predictor_picks_the_model_per_image(tmp_path):
    from app.core.inference import StarterPredictor

    tiny_model(tmp_path, "cellpol_starter", seed=0)
    predictor = StarterPredictor("cpu", folder=tmp_path)
    rng = np.random.default_rng(0)
    stack = Volume(rng.random((2, 8, 32, 32)).astype(np.float32), (1.0, 0.5, 0.5))
    plane = Volume(rng.random((2, 1, 32, 32)).astype(np.float32), (1.0, 0.5, 0.5))
    assert predictor.for_volume(stack).spatial_dims == 3
    predictor(stack)
    with pytest.raises(CellPolError, match="No 2D starter model is installed"):
        predictor(plane)
    tiny_model(tmp_path, "cellpol_starter_2d", seed=1, spatial_dims=2)
    predictor = StarterPredictor("cpu", folder=tmp_path)
    assert predictor.for_volume(plane).spatial_dims == 2
    assert isinstance(predictor(plane), type(predictor(stack)))
    names = {m["images"]: m["name"] for m in predictor.provenance()["models"]}
    assert names == {"3D": "cellpol_starter", "2D": "cellpol_starter_2d"}
    with pytest.raises(CellPolError, match="No starter model is installed"):
        StarterPredictor("cpu", folder=tmp_path / "empty")
