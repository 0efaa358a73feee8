"""Growing a trained network wider (app.training.widen): same outputs, new filters that train, refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.core.errors import CellPolError
from app.core.modelfile import DecodingSpec, ModelSpec, load_model, save_model
from app.core.network import NetworkConfig, build_network
from app.training.widen import widen_model, widen_module


def trained_like(config: NetworkConfig, seed: int = 0):
    """A network with non-trivial batch-norm statistics, as a trained one has."""
    torch.manual_seed(seed)
    net = build_network(config)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 2, 8, 16, 16) * 3 + 0.5)
    net.eval()
    return net


@pytest.mark.parametrize("widths", [dict(base_filters=6), dict(base_filters=6, head_filters=10),
                                    dict(base_filters=8, max_filters=20)])
def test_wider_network_computes_what_the_narrow_one_did(widths):
    config = NetworkConfig(base_filters=4, levels=3, pool_factors=((1, 2, 2), (2, 2, 2)))
    narrow = trained_like(config)
    wide = widen_module(narrow, dataclasses.replace(config, **widths), seed=3)
    assert sum(p.numel() for p in wide.parameters()) > 1.5 * sum(p.numel() for p in narrow.parameters())
    x = torch.rand(2, 2, 8, 16, 16) * 2
    for mode in ("eval", "train"):  # train: batch statistics of the batch, old channels unaffected
        narrow.train(mode == "train")
        wide.train(mode == "train")
        with torch.no_grad():
            a, b = narrow(x), wide(x)
        assert set(a) == set(b)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), (mode, key)
    # The new filters are not dead: one step of gradient reaches the zero weights that join them to old ones.
    wide.train()
    out = wide(x)
    (out["heatmap_nucleus"].mean() + out["embedding_golgi"].pow(2).mean()).backward()
    first_decoder = wide.decoders[-1][0][0].weight  # reads cat(upsampled, skip), full resolution
    old_out = narrow.decoders[-1][0][0].weight.shape[0]
    new_upsampled = slice(narrow.config.filters[0], wide.config.filters[0])
    assert first_decoder.grad[:old_out, new_upsampled].abs().sum() > 0
    head = wide.branch_nucleus.heatmap[-1].weight
    assert head.grad[:, narrow.config.branch_filters:].abs().sum() > 0


def test_same_width_copies_and_narrower_or_other_networks_are_refused():
    config = NetworkConfig(base_filters=4, levels=3)
    net = trained_like(config)
    same = widen_module(net, config)
    for key, value in net.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    with pytest.raises(CellPolError, match="narrower"):
        widen_module(net, dataclasses.replace(config, base_filters=3))
    with pytest.raises(CellPolError, match="levels"):
        widen_module(net, dataclasses.replace(config, base_filters=6, levels=4))
    with pytest.raises(CellPolError, match="norm"):
        widen_module(net, dataclasses.replace(config, base_filters=6, norm="instance"))


def test_widened_model_file_keeps_the_spec_and_records_its_origin(tmp_path):
    config = NetworkConfig(base_filters=4, levels=3)
    spec = ModelSpec(network=config, voxel_size=(1.0, 0.5, 0.5), decoding=DecodingSpec(peak_threshold_nucleus=0.35),
                     provenance={"stage": "s1"}, name="small")
    source = save_model(tmp_path / "small", trained_like(config), spec)
    out = widen_model(source, tmp_path / "wide", {"base_filters": 6}, seed=1)
    model, wide_spec = load_model(out)
    assert wide_spec.network.base_filters == 6 and wide_spec.network.levels == 3
    assert wide_spec.decoding.peak_threshold_nucleus == pytest.approx(0.35)
    assert wide_spec.provenance["stage"] == "s1"
    assert wide_spec.provenance["widened_from"]["base_filters"] == 4
    with pytest.raises(CellPolError, match="Unknown width"):
        widen_model(source, tmp_path / "bad", {"levels": 5})


def test_starter_grows_an_earlier_model_when_asked_for_more_filters(monkeypatch, tmp_path):
    import app.training.starter as starter

    config = NetworkConfig.for_voxel_size(starter.MODEL_VOXEL_SIZE, base_filters=4)
    spec = ModelSpec(network=config, voxel_size=starter.MODEL_VOXEL_SIZE, decoding=DecodingSpec(), name="small")
    source = save_model(tmp_path / "small", trained_like(config), spec)
    seen = {}

    def fake_training(args, spec, sampler, config, checkpoints, init_path, new_pool):
        seen["init"] = load_model(init_path)[1]
        seen["spec"] = spec
        raise SystemExit(0)

    monkeypatch.setattr(starter, "run_training", fake_training)
    monkeypatch.setattr(starter, "synthetic_pool", lambda *a, **k: [])
    monkeypatch.setattr(starter, "PatchSampler", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        starter.main(["--out", str(tmp_path / "wide"), "--init", str(source), "--base-filters", "6", "--steps", "5"])
    assert seen["init"].network.base_filters == 6 and seen["spec"].network.base_filters == 6
    assert "widened from 4 to 6" in seen["spec"].provenance["continued_from"]["transferred"]
    with pytest.raises(SystemExit) as refused:  # narrower: a usage error, not a traceback
        starter.main(["--out", str(tmp_path / "narrow"), "--init", str(source), "--base-filters", "2"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as refused:  # grow and become a 3DCtrDet at once: one step at a time
        starter.main(["--out", str(tmp_path / "ctr"), "--init", str(source), "--base-filters", "6",
                      "--architecture", "ctrdet"])
    assert refused.value.code == 2
