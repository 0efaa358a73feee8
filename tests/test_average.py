"""Weight averaging (app.training.average): the weighted mean of every tensor, kept spec, refused mixtures."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.core.errors import CellPolError
from app.core.modelfile import DecodingSpec, ModelSpec, load_model, save_model
from app.core.network import NetworkConfig, build_network
from app.training.average import average_models, average_modules


def saved_model(tmp_path, name: str, seed: int, base_filters: int = 4, threshold: float = 0.4):
    torch.manual_seed(seed)
    spec = ModelSpec(network=NetworkConfig(base_filters=base_filters, levels=3), voxel_size=(1.0, 0.5, 0.5),
                     decoding=DecodingSpec(peak_threshold_nucleus=threshold), provenance={"stage": name})
    net = build_network(spec.network)
    net.train()
    with torch.no_grad():  # batch-norm statistics that differ between the models
        net(torch.rand(2, 2, 8, 16, 16) * (seed + 1))
    net.eval()
    return save_model(tmp_path / name, net, spec)


def test_weighted_mean_of_every_tensor_and_first_models_spec(tmp_path):
    a = saved_model(tmp_path, "a", 1, threshold=0.3)
    b = saved_model(tmp_path, "b", 2, threshold=0.7)
    out = average_models([a, b], [0.7, 0.3], tmp_path / "soup")
    (ma, _), (mb, _), (mo, spec) = load_model(a), load_model(b), load_model(out)
    sa, sb, so = ma.state_dict(), mb.state_dict(), mo.state_dict()
    floats = [k for k in sa if torch.is_floating_point(sa[k])]
    assert any("running_var" in k for k in floats)  # batch-norm statistics are averaged too
    for key in floats:
        assert torch.allclose(so[key], 0.7 * sa[key] + 0.3 * sb[key], atol=1e-6), key
        if not torch.equal(sa[key], sb[key]):
            assert not torch.allclose(so[key], sa[key])
    assert spec.decoding.peak_threshold_nucleus == pytest.approx(0.3)  # the first member's decoding
    assert spec.provenance["stage"] == "a"
    assert spec.provenance["weight_average"] == {"members": ["a.json", "b.json"], "weights": [0.7, 0.3],
                                                 "decoding_from": "a.json"}
    with torch.no_grad():
        x = torch.rand(1, 2, 8, 16, 16)
        assert torch.isfinite(mo(x)["heatmap_nucleus"]).all()


def test_weights_are_normalised_and_decoding_member_chosen(tmp_path):
    a, b = saved_model(tmp_path, "a", 1, threshold=0.3), saved_model(tmp_path, "b", 2, threshold=0.7)
    out = average_models([a, b], [1, 1], tmp_path / "half", decoding_from=1)
    (ma, _), (mb, _), (mo, spec) = load_model(a), load_model(b), load_model(out)
    key = next(k for k, v in ma.state_dict().items() if v.dim() == 5)  # a convolution's weights
    assert torch.allclose(mo.state_dict()[key], (ma.state_dict()[key] + mb.state_dict()[key]) / 2, atol=1e-6)
    assert spec.decoding.peak_threshold_nucleus == pytest.approx(0.7)
    assert spec.provenance["weight_average"]["weights"] == [0.5, 0.5]


def test_refuses_other_architectures_and_bad_weights(tmp_path):
    a, wide = saved_model(tmp_path, "a", 1), saved_model(tmp_path, "wide", 2, base_filters=8)
    with pytest.raises(CellPolError, match="another architecture"):
        average_models([a, wide], [0.5, 0.5], tmp_path / "x")
    net = load_model(a)[0]
    with pytest.raises(CellPolError, match="at least two"):
        average_modules([net], [1.0])
    with pytest.raises(CellPolError, match="≥ 0"):
        average_modules([net, net], [1.0, -0.5])
    other = build_network(dataclasses.replace(load_model(wide)[1].network))
    with pytest.raises(CellPolError, match="not one architecture"):
        average_modules([net, other], [0.5, 0.5])
    assert not (tmp_path / "x.json").exists()
