"""The CellPol / CtrDet network: shapes, configuration, pooling, fast CPU paths, and that it learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.core.network import (
    NetworkConfig,
    NetworkConfigError,
    build_network,
    count_parameters,
    default_in_plane_levels,
    default_pool_factors,
    preferred_memory_format,
    required_multiple,
)
from app.training.losses import compute_loss
from app.training.targets import make_targets


def tiny(**overrides) -> NetworkConfig:
    settings = dict(base_filters=4, levels=3)
    settings.update(overrides)
    return NetworkConfig(**settings)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("architecture", ["cellpol", "ctrdet"])
def test_3d_outputs_shapes_and_ranges(architecture):
    net = build_network(tiny(architecture=architecture)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 2, 16, 32, 32))
    expected = {"heatmap_nucleus", "heatmap_golgi"}
    if architecture == "cellpol":
        expected |= {"embedding_nucleus", "embedding_golgi"}
    assert set(out) == expected
    for name, tensor in out.items():
        assert tensor.shape == (2, 1, 16, 32, 32), name
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()
    for name in ("heatmap_nucleus", "heatmap_golgi"):
        assert out[name].min() >= 0 and out[name].max() <= 1
    if architecture == "cellpol":
        # linear embedding: not squashed into [0, 1]
        assert out["embedding_nucleus"].std() > 0


@pytest.mark.parametrize("architecture", ["cellpol", "ctrdet"])
def test_2d_network(architecture):
    config = tiny(spatial_dims=2, architecture=architecture)
    assert config.pool_factors == ((2, 2), (2, 2))
    assert required_multiple(config) == (1, 4, 4)
    net = build_network(config).eval()
    assert all(not isinstance(m, torch.nn.Conv3d) for m in net.modules())
    with torch.no_grad():
        out = net(torch.rand(1, 2, 24, 32))
    assert set(out) == set(config.output_keys)
    assert all(t.shape == (1, 1, 24, 32) for t in out.values())


def test_default_config_size_and_json_round_trip():
    config = NetworkConfig()
    n_params = count_parameters(build_network(config))
    assert 1_000_000 <= n_params <= 3_000_000
    text = json.dumps(config.to_dict())
    assert NetworkConfig.from_dict(json.loads(text)) == config
    custom = NetworkConfig(levels=3, pool_factors=[(1, 2, 2), [2, 2, 2]], in_plane_levels=1, norm="group",
                           max_filters=24, dropout=0.1, head_filters=8, architecture="ctrdet")
    assert NetworkConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    assert custom.filters == (16, 24, 24)


@pytest.mark.parametrize(
    "bad",
    [
        {"norm": "layer"},
        {"architecture": "unet"},
        {"levels": 0},
        {"levels": 3, "pool_factors": [[2, 2, 2]]},
        {"pool_factors": [[2, 2], [2, 2], [2, 2]]},
        {"pool_factors": [[2, 0, 2], [2, 2, 2], [2, 2, 2]]},
        {"dropout": 1.5},
        {"base_filters": 2.5},
        {"spatial_dims": 4},
        {"spatial_dims": 2, "in_plane_levels": 1},
        {"in_plane_levels": 9},
        {"colour": "blue"},
    ],
)
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(NetworkConfigError):
        NetworkConfig.from_dict({**NetworkConfig().to_dict(), **bad})


def test_default_pooling_from_voxel_size():
    # z twice the pixel size: keep z at the first level, then pool it once the in-plane step caught up
    assert default_pool_factors((1.0, 0.5, 0.5), 4) == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    # isotropic or finer z (the authors' 0.27 µm z vs 0.666 µm pixels): pool everything
    assert default_pool_factors((0.5, 0.5, 0.5), 4) == ((2, 2, 2),) * 3
    assert default_pool_factors((0.27, 0.666, 0.666), 4) == ((2, 2, 2),) * 3
    # strongly anisotropic: z is never pooled in 3 steps, and the first levels convolve in-plane
    assert default_pool_factors((2.0, 0.3, 0.3), 4) == ((1, 2, 2),) * 3
    assert default_in_plane_levels((2.0, 0.3, 0.3), 4) == 2
    assert default_in_plane_levels((1.0, 0.5, 0.5), 4) == 0
    config = NetworkConfig.for_voxel_size((1.0, 0.5, 0.5), base_filters=4)
    assert config.pool_factors == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert required_multiple(config) == (4, 8, 8)


def test_anisotropic_pooling_shapes():
    config = tiny(pool_factors=[(1, 2, 2), (2, 2, 2)])
    assert required_multiple(config) == (2, 4, 4)
    net = build_network(config).eval()
    seen = []
    net.encoders[-1].register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape[2:])))
    with torch.no_grad():
        out = net(torch.rand(1, 2, 6, 16, 20))
    assert seen == [(3, 4, 5)]  # z pooled once, y and x twice
    assert out["heatmap_golgi"].shape == (1, 1, 6, 16, 20)
    with pytest.raises(ValueError, match="multiple"):
        net(torch.rand(1, 2, 5, 16, 20))
    with pytest.raises(ValueError, match="channels"):
        net(torch.rand(1, 3, 6, 16, 20))


def test_in_plane_levels_kernels_and_slice_independence():
    config = tiny(pool_factors=[(1, 2, 2), (2, 2, 2)], in_plane_levels=1)
    net = build_network(config)
    first = net.encoders[0][0][0]
    assert first.kernel_size == (1, 3, 3)
    assert net.encoders[1][0][0].kernel_size == (3, 3, 3)
    assert net.decoders[-1][0][0].kernel_size == (1, 3, 3)  # full-resolution decoder block
    assert net.branch_golgi.block[0].kernel_size == (1, 3, 3)

    # All levels in-plane and no z pooling: each output slice sees only its own input slice.
    flat = tiny(pool_factors=[(1, 2, 2), (1, 2, 2)], in_plane_levels=3)
    flat_net = build_network(flat).eval()
    x = torch.rand(1, 2, 5, 16, 16)
    y = x.clone()
    y[:, :, 2] = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        a, b = flat_net(x), flat_net(y)
    for name in a:
        diff = (a[name] - b[name]).abs().amax(dim=(0, 1, 3, 4))
        assert diff[2] > 0
        assert torch.all(diff[[0, 1, 3, 4]] == 0)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norm_choices_train_and_eval(norm):
    net = build_network(tiny(norm=norm, dropout=0.2))
    out = net(torch.rand(2, 2, 8, 16, 16))
    out["heatmap_nucleus"].mean().backward()
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 8, 16, 16))["embedding_golgi"].shape == (1, 1, 8, 16, 16)


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_channels_last_and_bf16_close_to_fp32(spatial_dims):
    config = tiny(spatial_dims=spatial_dims)
    net = build_network(config).eval()
    shape = (1, 2, 8, 16, 16) if spatial_dims == 3 else (1, 2, 16, 16)
    x = torch.rand(shape)
    with torch.inference_mode():
        ref = net(x)
        fmt = preferred_memory_format(config)
        net_cl = net.to(memory_format=fmt)
        x_cl = x.contiguous(memory_format=fmt)
        cl = net_cl(x_cl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net_cl(x_cl)
    for name in ref:
        assert cl[name].dtype == torch.float32 and mixed[name].dtype == torch.float32
        torch.testing.assert_close(cl[name], ref[name], atol=1e-5, rtol=1e-4)
        scale = float(ref[name].abs().max()) + 1e-6
        assert float((mixed[name] - ref[name]).abs().max()) < 0.05 * scale + 0.01, name


def test_a_few_adam_steps_reduce_the_loss():
    net = build_network(tiny())
    shape = (8, 24, 24)
    voxel = (1.0, 0.5, 0.5)
    nuclei = np.array([[3.0, 6.0, 6.0], [4.0, 16.0, 15.0]])
    golgi = np.array([[4.0, 8.0, 9.0], [3.5, 19.0, 12.0]])
    target_np = make_targets((nuclei, golgi), shape, voxel)
    # a synthetic image whose channels show the objects: channel 0 nuclei, channel 1 Golgi
    image = np.stack([target_np["heatmap_nucleus"], target_np["heatmap_golgi"]])[None]
    x = torch.from_numpy(image) + 0.05 * torch.rand(1, 2, *shape)
    targets = {k: torch.from_numpy(v)[None] for k, v in target_np.items()}
    optimiser = torch.optim.Adam(net.parameters(), lr=5e-3)
    history = []
    for _ in range(15):
        optimiser.zero_grad()
        parts = compute_loss(net(x), targets)
        parts["total"].backward()
        optimiser.step()
        history.append({k: float(v.detach()) for k, v in parts.items()})
    first, last = history[0], history[-1]
    assert all(np.isfinite(h["total"]) for h in history)
    assert last["total"] < 0.5 * first["total"], history
    # not only the push term: the heatmaps themselves get closer to the targets
    assert last["heatmap"] < 0.85 * first["heatmap"], history
