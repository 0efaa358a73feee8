"""Staging (app.core.inference.staging): preparation on the device, BatchNorm folding, out-of-memory messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from app.core.inference import Predictor, prepare_on_device
from app.core.modelfile import ModelSpec
from app.core.network import NetworkConfig, build_network

# ----------------------------------------------------------------------------------------------
# preparation on the device
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# out of memory
# ----------------------------------------------------------------------------------------------
def test_running_out_of_gpu_memory_suggests_the_cpu():
    from app.core.inference import _out_of_memory

    message = str(_out_of_memory("running the network on 8 windows of 64×256×256 voxels at a time",
                                 [torch.device("cuda", 0)], "a smaller window or batch size"))
    assert "GPU" in message and "(cuda:0" in message and "run on the CPU" in message
    assert "computer with more memory" not in message
