"""The starter-training script's weight transfer: a 3DCtrDet started from a CellPol model."""

from __future__ import annotations

import dataclasses

import torch

from app.core.modelfile import ModelSpec, load_model, save_model
from app.core.network import NetworkConfig, build_network
from app.training.starter import transfer_weights


def test_ctrdet_from_cellpol_keeps_backbone_and_heatmap_heads(tmp_path):
    torch.manual_seed(0)
    config = NetworkConfig(levels=2, base_filters=4, pool_factors=((1, 2, 2),))
    source = build_network(config)
    save_model(tmp_path / "cellpol", source, ModelSpec(network=config, voxel_size=(1.0, 0.5, 0.5), name="src"))
    target_config = dataclasses.replace(config, architecture="ctrdet")
    path = transfer_weights(tmp_path / "cellpol.json", target_config, tmp_path / "ctr_init")
    model, spec = load_model(path)
    assert spec.network.architecture == "ctrdet" and path.name == "ctr_init.json"
    own = source.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, own[key])
    assert not any("embedding" in key for key in model.state_dict())
    x = torch.rand(1, 2, 4, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x)["heatmap_golgi"], source.eval()(x)["heatmap_golgi"])
