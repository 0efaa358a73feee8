"""Streaming prediction (app.core.inference.streaming): an image read and predicted tile by tile gives the
pairs of the in-memory path, reads only tile-sized regions, and a cancelled run writes no CSV but resumes.

The :class:`OracleNet` of test_inference makes heatmaps of the input and embeddings with a random offset per
window, so tiles that decoded or compared embeddings across windows (or across tiles) would fail here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.batch import ReadOptions, predict_batch
from app.core.errors import CancelledError
from app.core.imageio import open_lazy
from app.core.inference import streaming
from app.core.inference.streaming import plan_tiles, resample_region, source_box
from app.core.jobs import CancelToken, Progress
from app.core.jobs import run as run_job
from app.core.pairs import read_pairs
from app.core.preprocess import resample, resampling_for
from tests.test_inference import oracle_predictor, render

INPUT_VOXEL = (1.0, 0.4, 0.4)
MODEL_VOXEL = (1.0, 0.5, 0.5)
SHAPE = (8, 110, 120)
CORE = (8, 30, 32)  # model voxels: 3 × 3 tiles over the 88 × 96 model grid (borders y 29, 59; x 32, 64)


def _cells(seed: int = 3):
    """Cells (nucleus, Golgi, amplitude) in input voxels, ≥ 10 µm apart, one straddling the y = 29 core
    border of the model grid (input row 36.4) and one straddling the x = 64 border (input column 80.1)."""
    rng = np.random.default_rng(seed)
    cells = [((4.0, 34.0, 50.0), (4.0, 41.0, 52.0), 1.0),   # nucleus in core row 0, Golgi in core row 1
             ((3.0, 90.0, 71.0), (4.0, 91.0, 84.0), 0.9)]   # nucleus in core column 1, Golgi in column 2
    while len(cells) < 14:
        n = np.array([rng.uniform(2, 6), rng.uniform(8, SHAPE[1] - 8), rng.uniform(8, SHAPE[2] - 8)])
        if any(np.linalg.norm((n - np.array(c[0])) * np.array(INPUT_VOXEL)) < 10.0 for c in cells):
            continue
        angle = rng.uniform(0, 2 * np.pi)
        g = n + np.array([0.0, 3.0 * np.sin(angle), 3.0 * np.cos(angle)]) / np.array(INPUT_VOXEL)
        cells.append((tuple(n), tuple(g), float(rng.uniform(0.6, 1.0))))
    return cells


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The rendered volume, and the same as a (C, Z, Y, X) uint16 .npy read lazily."""
    volume = render(SHAPE, INPUT_VOXEL, _cells())
    data = np.round(volume.data * 4000 + 100).astype(np.uint16)
    path = tmp_path_factory.mktemp("stream") / "stack.npy"
    np.save(path, data)
    from app.core.volume import Volume

    return Volume(data, INPUT_VOXEL, ("nuclei", "golgi")), path


def _pairs_match(a, b, tolerance=0.5):
    """Every pair of ``a`` has one pair of ``b`` with both ends within ``tolerance`` voxels, and the counts agree."""
    assert len(a) == len(b)
    for n, g in zip(a.nuclei, a.golgi):
        d = np.maximum(np.abs(b.nuclei - n).max(axis=1), np.abs(b.golgi - g).max(axis=1))
        assert d.min() <= tolerance, (n, g, d.min())


def test_resampled_regions_equal_the_whole_image_resampled():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(9, 41, 37)).astype(np.uint16)
    whole, mapping = resample(data, (0.8, 0.3, 0.45), (1.0, 0.5, 0.5))
    assert mapping == resampling_for(data.shape, (0.8, 0.3, 0.45), (1.0, 0.5, 0.5))
    for box in [(slice(0, 7), slice(0, 25), slice(0, 33)), (slice(2, 5), slice(9, 20), slice(30, 33)),
                (slice(6, 7), slice(24, 25), slice(0, 1))]:
        src = source_box(mapping, box)
        block = data[src]
        got = resample_region(block, mapping, box, [s.start for s in src]).numpy()
        np.testing.assert_allclose(got, whole[box], rtol=1e-5, atol=1e-2)
        assert block.shape[1] <= (box[1].stop - box[1].start) * 0.5 / 0.3 + 2
    # Strided voxels (what the statistics sample) are the same voxels of the whole resampled image.
    box = (slice(2, 5), np.arange(0, 25, 3), np.arange(1, 33, 4))
    src = source_box(mapping, box)
    got = resample_region(data[src], mapping, box, [s.start for s in src]).numpy()
    np.testing.assert_allclose(got, whole[2:5][:, box[1]][:, :, box[2]], rtol=1e-5, atol=1e-2)


def test_tiles_partition_the_grid_and_grow_by_the_halo_where_they_have_neighbours():
    plan = plan_tiles((8, 88, 96), CORE, (0, 32, 32))
    owner = np.zeros((8, 88, 96), dtype=np.int64)
    for tile in plan.tiles:
        owner[tile.core] += 1
        for axis in (1, 2):
            assert tile.extent[axis].start == max(0, tile.core[axis].start - 32)
            assert tile.extent[axis].stop == min(plan.shape[axis], tile.core[axis].stop + 32)
        assert tile.extent[0] == slice(0, 8)  # one tile in z: no halo there
    assert len(plan) == 9 and np.all(owner == 1)


def test_streamed_pairs_match_the_in_memory_prediction_with_tiny_tiles(stack):
    volume, path = stack
    predictor, _ = oracle_predictor(MODEL_VOXEL)
    whole = predictor(volume)
    assert len(whole) >= 12
    with open_lazy(path, axes="CZYX", voxel_size=INPUT_VOXEL) as image:
        streamed = predictor.predict_lazy(image, core=CORE).pairs
    _pairs_match(streamed, whole)
    _pairs_match(whole, streamed)
    assert streamed.meta["streaming"]["tiles"] == 9
    assert streamed.meta["streaming"]["statistics_sample"]["stride_yx"] == 1  # small: sampled whole
    # The cells straddling a tile border are found exactly once each.
    for nucleus, golgi, _ in _cells()[:2]:
        near = (np.abs(streamed.nuclei - np.array(nucleus)).max(axis=1) < 1.5) & \
               (np.abs(streamed.golgi - np.array(golgi)).max(axis=1) < 1.5)
        assert near.sum() == 1
    # Each Golgi and each nucleus is used once (no pair duplicated by two tiles).
    assert len(np.unique(np.round(streamed.golgi, 3), axis=0)) == len(streamed)
    assert len(np.unique(np.round(streamed.nuclei, 3), axis=0)) == len(streamed)


def test_statistics_from_a_strided_subsample_are_close_to_the_whole_images(stack, monkeypatch):
    volume, path = stack
    planes, stride = streaming.stats_sampling((8, 88, 96), sample=5000, planes=4)
    assert len(planes) == 4 and stride > 1
    mapping = resampling_for(SHAPE, INPUT_VOXEL, MODEL_VOXEL)
    plan = plan_tiles(mapping.out_shape, CORE, (0, 32, 32))
    whole, _ = resample(volume.data[:1], INPUT_VOXEL, MODEL_VOXEL)
    monkeypatch.setattr(streaming, "stats_sampling", lambda shape: (planes, stride))
    with open_lazy(path, axes="CZYX", voxel_size=INPUT_VOXEL) as image:
        ranges, info = streaming.estimate_percentiles(image, [0], mapping, plan, [(1.0, 99.8)])
    lo, hi = ranges[(1.0, 99.8)][0]
    true_lo, true_hi = np.percentile(whole[0], (1.0, 99.8))
    assert info["stride_yx"] == stride and info["planes"] == [int(p) for p in planes]
    assert abs(lo - true_lo) <= 0.02 * (true_hi - true_lo) and abs(hi - true_hi) <= 0.1 * (true_hi - true_lo)


class SpyImage:
    """A LazyImage stand-in that records every region read."""

    def __init__(self, image):
        self.image = image
        self.shape, self.dtype, self.voxel_size = image.shape, image.dtype, image.voxel_size
        self.reads = []

    def read_region(self, z=None, y=None, x=None, c=None):
        block = self.image.read_region(z=z, y=y, x=x, c=c)
        self.reads.append(block.shape)
        return block

    def read(self):  # pragma: no cover - must not be called
        raise AssertionError("the whole image was read")


def test_a_streamed_image_is_only_read_in_tile_sized_regions(stack):
    _, path = stack
    predictor, _ = oracle_predictor(MODEL_VOXEL, max_pair_distance_um=6.0)  # a halo of 8 µm: 16 voxels
    with open_lazy(path, axes="CZYX", voxel_size=INPUT_VOXEL) as image:
        spy = SpyImage(image)
        predictor.predict_lazy(spy, core=CORE)
    mapping = resampling_for(SHAPE, INPUT_VOXEL, MODEL_VOXEL)
    plan = plan_tiles(mapping.out_shape, CORE, streaming._halo(predictor, mapping.out_shape))
    largest = [max(len(range(*source_box(mapping, t.extent)[a].indices(10**9))) for t in plan.tiles)
               for a in range(3)]
    assert len(spy.reads) > 9
    for c, z, y, x in spy.reads:
        assert c == 1  # one channel at a time
        assert z <= largest[0] and y <= largest[1] and x <= largest[2]
        assert (y, x) != SHAPE[1:]  # never a whole plane, let alone the whole image
    whole_plane = SHAPE[1] * SHAPE[2]
    assert max(y * x for _, _, y, x in spy.reads) < 0.7 * whole_plane


def _force_streaming(monkeypatch):
    monkeypatch.setattr(streaming, "STREAMING_MEMORY_BUDGET", 0.0)
    monkeypatch.setattr(streaming, "choose_core", lambda *args, **kwargs: CORE)


def test_batch_streams_big_images_and_a_cancel_leaves_no_csv_but_resumable_tiles(stack, tmp_path, monkeypatch):
    _, path = stack
    _force_streaming(monkeypatch)
    predictor, net = oracle_predictor(MODEL_VOXEL)
    out = tmp_path / "out"
    options = ReadOptions(voxel_size=INPUT_VOXEL, axes="CZYX")
    token = CancelToken()
    events = []

    def stop_after_two_tiles(event):
        events.append(event)
        if isinstance(event, Progress) and event.message == "windows" and event.done >= 2 * event.total // 5:
            token.cancel()

    with pytest.raises(CancelledError):
        run_job(predict_batch([path], out, predictor, options, cancel=token), stop_after_two_tiles)
    assert not list(out.glob("*.pred.vectors.csv"))
    records = list(out.glob(".*.tiles/tile_*.npz"))
    assert 0 < len(records) < 9
    assert any("Streaming prediction" in getattr(e, "message", "") for e in events)

    calls_before = net.calls
    run_job(predict_batch([path], out, predictor, options))
    resumed_calls = net.calls - calls_before
    written = read_pairs(out / "stack.pred.vectors.csv")
    assert not list(out.glob(".*.tiles"))  # removed once complete
    assert written.meta["streaming"]["tiles"] == 9

    fresh, fresh_net = oracle_predictor(MODEL_VOXEL)
    with open_lazy(path, axes="CZYX", voxel_size=INPUT_VOXEL) as image:
        full = fresh.predict_lazy(image, core=written.meta["streaming"]["tile_core_zyx"]).pairs
    assert resumed_calls < fresh_net.calls  # the recorded tiles were not run again
    _pairs_match(written, full, tolerance=1e-3)


def test_small_images_are_still_read_whole(stack, tmp_path):
    _, path = stack
    predictor, _ = oracle_predictor(MODEL_VOXEL)
    opened = predictor.open_image(path, ReadOptions(voxel_size=INPUT_VOXEL, axes="CZYX"))
    assert not isinstance(opened, streaming.LazyVolume)
    assert isinstance(opened.data, np.ndarray)


def test_cli_predict_streams_a_big_image(stack, tmp_path, monkeypatch, capsys):
    from app.cli import EXIT_OK, main
    from app.core.modelfile import save_model
    from tests.test_inference import oracle_spec

    _, path = stack
    _force_streaming(monkeypatch)
    torch.manual_seed(0)
    from app.core.network import NetworkConfig, build_network

    config = NetworkConfig(levels=2, base_filters=4)
    spec = oracle_spec(MODEL_VOXEL)
    spec = type(spec)(**{**spec.__dict__, "network": config})
    model = save_model(tmp_path / "tiny", build_network(config).eval(), spec)
    code = main(["predict", str(path), "--model", str(model), "--out", str(tmp_path / "out"), "--axes", "CZYX",
                 "--voxel-size", *map(str, INPUT_VOXEL), "--device", "cpu"])
    assert code == EXIT_OK
    assert "Streaming prediction" in capsys.readouterr().err
    assert (tmp_path / "out" / "stack.pred.vectors.csv").is_file()
