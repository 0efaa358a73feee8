"""Learned prediction, the predictor (app.core.inference.predictor): the pipeline end to end, staging, memory,
cross-window pairing, ensembles, cancelling, CLI. Also the helpers the other test_inference_*.py files use.

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
from app.core.inference import Predictor
from app.core.jobs import CancelToken
from app.core.modelfile import DecodingSpec, ModelSpec, NormalizationSpec, save_model
from app.core.network import NetworkConfig, build_network
from app.core.pairs import read_pairs
from app.core.volume import Volume

SIGMA_UM = {"nucleus": 2.0, "golgi": 1.0}


# ----------------------------------------------------------------------------------------------
# Helpers (also used by the other test_inference_*.py files and test_calibrate.py)
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


# ----------------------------------------------------------------------------------------------
# the pipeline: positions, device maxima, staging and memory
# ----------------------------------------------------------------------------------------------
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


def test_decoding_with_maxima_found_on_the_device_is_the_same(monkeypatch):
    # On a GPU the local maxima come back with the heatmaps; forced here on the CPU, decoding must not change,
    # including for a threshold below their floor (then searched on the host as before).
    import app.core.inference.predictor as predictor_module

    voxel = (1.0, 0.5, 0.5)
    cells = [(np.array([4.0, 10.0 + 14 * k, 20.0 + 9 * k]), np.array([4.0, 14.0 + 14 * k, 24.0 + 9 * k]), 0.9)
             for k in range(4)]
    volume = render((8, 70, 80), voxel, cells)
    predictor, _ = oracle_predictor(voxel)
    plain = predictor.run_network(volume)
    assert plain.maxima is None
    monkeypatch.setattr(predictor_module, "_maxima_on", lambda staging: True)
    staged = predictor.run_network(volume)
    assert staged.maxima is not None and len(staged.maxima[0].coords) >= 4
    for decoding in (None, dataclasses.replace(predictor.decoding, peak_threshold_golgi=0.01)):
        a, b = predictor.decode(plain, decoding), predictor.decode(staged, decoding)
        assert len(a) == len(b) == 4
        np.testing.assert_array_equal(a.nuclei, b.nuclei)
        np.testing.assert_array_equal(a.golgi, b.golgi)


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
    assert "does not fit in the computer's memory (RAM)" in message and "smaller window or batch size" in message
    assert "GPU" not in message and "run on the CPU" not in message and "use CPU" not in message
    assert info.value.settings == {"window": None, "batch_size": None}  # no "device": it ran on the CPU


# ----------------------------------------------------------------------------------------------
# cross-window consistency: one vector per cell
# ----------------------------------------------------------------------------------------------
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
# real (tiny, untrained) networks end to end; ensembles; cancelling
# ----------------------------------------------------------------------------------------------
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


def test_cancel_with_a_token_or_a_callable(tmp_path):
    token = CancelToken()
    token.cancel()
    predictor = Predictor.from_files([tiny_model(tmp_path, "m", seed=1)], device="cpu")
    with pytest.raises(CancelledError):
        predictor(_random_volume(), cancel=token)
    # A callable counts too: True once cancelled, polled before every batch of windows and at the end.
    polls = []

    def cancelled() -> bool:
        polls.append(1)
        return True

    with pytest.raises(CancelledError, match="Cancelled by the user"):
        predictor(_random_volume(), cancel=cancelled)
    assert len(polls) == 1  # before the first batch
    polls.clear()
    pairs = predictor(_random_volume(), cancel=lambda: bool(polls.append(1)))
    assert len(polls) >= 2 and len(pairs) == len(predictor(_random_volume()))


# ----------------------------------------------------------------------------------------------
# CLI
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
        assert "No CUDA GPU found; choose the CPU as the device. (command line: --device cpu)" in err
        assert "Traceback" not in err


def test_test_time_augmentation_averages_the_mirrored_outputs():
    """With ``tta`` every window runs four times (as is, mirrored in y, x, both) and the outputs, mirrored
    back, are averaged: a network that favours the right-hand side of its window stops doing so."""

    class RightLeaning(OracleNet):
        def forward(self, x):
            out = super().forward(x)
            ramp = torch.linspace(0.0, 1.0, x.shape[-1])
            return {k: (v * ramp if k.startswith("heatmap") else v) for k, v in out.items()}

    rng = np.random.default_rng(0)
    data = rng.random((2, 4, 24, 24)).astype(np.float32) + 0.5
    data = data + data[..., ::-1]  # mirror-symmetric in x
    volume = Volume(data, (1.0, 0.5, 0.5), ("nuclei", "golgi"))
    outputs, calls = [], []
    for tta in (False, True):
        net = RightLeaning()
        predictor = Predictor.from_modules([(net, oracle_spec((1.0, 0.5, 0.5)))], "cpu", amp=False, tta=tta)
        outputs.append(predictor.run_network(volume).heatmap_nucleus)
        calls.append(net.calls)
        assert predictor.provenance()["test_time_augmentation"] == ("mirrored in y, x and both, averaged" if tta
                                                                    else None)
    plain, averaged = outputs
    assert calls[1] == 4 * calls[0]
    assert plain[:, :, -1].mean() > plain[:, :, 0].mean() + 0.3  # leans right without it
    np.testing.assert_allclose(averaged, averaged[:, :, ::-1], atol=1e-5)  # mirror-symmetric with it
    np.testing.assert_allclose(averaged.mean(), plain.mean(), rtol=0.05)


def test_windows_reaching_past_the_image_are_filled_by_mirroring_it_not_with_zeros():
    """A stack thinner than the network window is grown by reflecting it at its border (zeros gave the
    starter false cells on the slices next to them), repeatedly when the window is more than twice as long."""
    from app.core.inference.predictor import mirror_pad

    rng = np.random.default_rng(1)
    part = rng.random((2, 3, 4, 5)).astype(np.float32) + 1.0
    grown = mirror_pad(torch.from_numpy(part), (6, 4, 9)).numpy()
    np.testing.assert_array_equal(grown, np.pad(part, ((0, 0), (0, 3), (0, 0), (0, 4)), mode="reflect"))
    long = mirror_pad(torch.arange(3.0).reshape(1, 1, 1, 3), (1, 1, 8)).numpy().ravel()
    np.testing.assert_array_equal(long, [0, 1, 2, 1, 0, 1, 2, 1])
    assert mirror_pad(torch.ones(1, 1, 1, 1), (3, 1, 2)).min() == 1.0  # one voxel: repeated
    # Through the predictor: every window it feeds the network holds no zero from padding.
    seen = []

    class Spy(OracleNet):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    volume = Volume(part * 100, (1.0, 0.5, 0.5), ("nuclei", "golgi"))
    spec = oracle_spec((1.0, 0.5, 0.5))
    spec = dataclasses.replace(spec, network=dataclasses.replace(spec.network, levels=3, pool_factors=((2, 2, 2), (2, 2, 2))))
    Predictor.from_modules([(Spy(), spec)], "cpu", amp=False).run_network(volume)
    assert seen and all(x.shape[2] > part.shape[1] for x in seen)  # the window is thicker than the stack
    normalised_min = min(float(x.min()) for x in seen)
    assert all(float((x == 0).float().mean()) < 0.1 for x in seen) and normalised_min >= 0.0
