"""Model files: safetensors weights + JSON description; round trip, damage, and no pickle anywhere."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from app.core.errors import CellPolError, FileFormatError
from app.core.modelfile import (
    DecodingSpec,
    ModelSpec,
    NormalizationSpec,
    load_model,
    load_spec,
    model_paths,
    save_model,
)
from app.core.network import NetworkConfig, build_network


def make_spec(**network_overrides) -> ModelSpec:
    network = NetworkConfig(base_filters=4, levels=3, **network_overrides)
    return ModelSpec(
        network=network,
        voxel_size=(1.0, 0.5, 0.5),
        normalization=NormalizationSpec(low_percentile=1.0, high_percentile=99.8),
        decoding=DecodingSpec(peak_threshold_nucleus=0.35, min_distance_golgi_um=1.2, peak_valley_golgi=0.5),
        provenance={"epochs": 3, "data": ["a.tif", "b.tif"], "sigma_um": {"nucleus": 2.0, "golgi": 1.0}},
        name="tiny",
        description="test model",
    )


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(1)
    spec = make_spec()
    net = build_network(spec.network)
    # non-default BatchNorm statistics, so buffers must round-trip too
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 2, 8, 16, 16) * 3 + 1)
    net.eval()
    json_path = save_model(tmp_path / "tiny", net, spec)
    return json_path, net, spec


def outputs(net, x):
    with torch.no_grad():
        return net(x)


def test_round_trip_gives_identical_outputs_and_spec(saved, tmp_path):
    json_path, net, spec = saved
    assert json_path == tmp_path / "tiny.json"
    assert (tmp_path / "tiny.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]  # no temp files left
    document = json.loads(json_path.read_text())
    assert document["format"] == "cellpol-model" and document["version"] == 1
    assert document["input_channels"] == ["nucleus", "golgi"]
    assert document["voxel_size_zyx_um"] == [1.0, 0.5, 0.5]
    assert document["decoding"]["embedding_delta"] == 2.0
    assert document["decoding"]["max_pair_distance_um"] == 14.0
    assert document["normalization"]["high_percentile"] == 99.8

    x = torch.rand(1, 2, 8, 16, 16)
    expected = outputs(net, x)
    for path in (json_path, tmp_path / "tiny.safetensors", tmp_path / "tiny", str(json_path)):
        loaded, loaded_spec = load_model(path)
        assert loaded_spec == spec
        assert not loaded.training
        got = outputs(loaded, x)
        for name in expected:
            assert torch.equal(got[name], expected[name]), name
    assert load_spec(tmp_path / "tiny.safetensors") == spec


def test_model_paths_forms():
    assert model_paths("m/a.json") == model_paths("m/a.safetensors") == model_paths("m/a")
    json_path, weights = model_paths("m/model.v2")
    assert json_path.name == "model.v2.json" and weights.name == "model.v2.safetensors"


def test_ctrdet_2d_and_channels_last_modules_save(tmp_path):
    spec = ModelSpec(network=NetworkConfig(base_filters=4, levels=2, spatial_dims=2, architecture="ctrdet"),
                     voxel_size=(1.0, 0.3, 0.3))
    net = build_network(spec.network).to(memory_format=torch.channels_last).eval()
    path = save_model(tmp_path / "flat.safetensors", net, spec)
    assert path.name == "flat.json"
    loaded, _ = load_model(path)
    x = torch.rand(1, 2, 16, 16)
    assert set(outputs(loaded, x)) == {"heatmap_nucleus", "heatmap_golgi"}
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # the layouts differ (contiguous vs channels_last), so the arithmetic order may differ slightly
    torch.testing.assert_close(outputs(loaded, x)["heatmap_golgi"], outputs(net, x)["heatmap_golgi"])


def test_loading_never_unpickles(saved, monkeypatch):
    json_path, net, spec = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle must not be used to load a model")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    loaded, _ = load_model(json_path)
    x = torch.rand(1, 2, 8, 16, 16)
    assert torch.equal(outputs(loaded, x)["embedding_golgi"], outputs(net, x)["embedding_golgi"])
    # and the weights file is a plain safetensors file (8-byte header length + JSON header), not a pickle
    raw = json_path.with_suffix(".safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"]["format"] == "cellpol-model"


def edit_json(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_corrupt_json(saved):
    json_path, _, _ = saved
    json_path.write_text('{"format": "cellpol-model", "version": 1, ')
    with pytest.raises(FileFormatError, match="not valid JSON"):
        load_model(json_path)
    json_path.write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="JSON object"):
        load_spec(json_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="something-else"), "not a CellPol model"),
        (lambda d: d.update(version=99), "newer"),
        (lambda d: d.pop("architecture"), "architecture"),
        (lambda d: d["architecture"].update(norm="weird"), "norm"),
        (lambda d: d["architecture"].update(depth=3), "Unknown network setting"),
        (lambda d: d.update(voxel_size_zyx_um=[1, 2]), "Voxel size"),
        (lambda d: d.update(input_channels=["golgi", "golgi"]), "input_channels"),
        (lambda d: d.update(input_channels=7), "usable"),
        (lambda d: d["decoding"].update(peak_threshold_golgi=1.5), "peak_threshold_golgi"),
        (lambda d: d["decoding"].update(pairing_distance_weight=-0.5), "pairing_distance_weight"),
        (lambda d: d["decoding"].update(pairing_height_weight=1.5), "pairing_height_weight"),
        (lambda d: d["decoding"].update(peak_valley_nucleus=2.0), "peak_valley_nucleus"),
        (lambda d: d["decoding"].update(pairing_ridge_weight=1.5), "pairing_ridge_weight"),
        (lambda d: d["decoding"].update(ridge_radius_um=0), "ridge_radius_um"),
        (lambda d: d["normalization"].update(low_percentile=99.9), "low percentile"),
        (lambda d: d["decoding"].update(nms="yes"), "unknown setting"),
    ],
)
def test_invalid_descriptions_are_one_clear_error(saved, change, message):
    json_path, _, _ = saved
    edit_json(json_path, change)
    with pytest.raises(FileFormatError, match=message):
        load_model(json_path)


def test_files_written_before_the_pairing_weight_existed_pair_by_embedding(saved):
    json_path, _, _ = saved
    edit_json(json_path, lambda d: [d["decoding"].pop(k) for k in ("pairing_distance_weight", "pairing_height_weight")])
    decoding = load_spec(json_path).decoding
    assert decoding.pairing_distance_weight == 0.0 and decoding.pairing_height_weight == 0.0


def test_files_from_before_the_ridge_setting_pair_without_it(saved):
    json_path, _, _ = saved
    edit_json(json_path, lambda d: [d["decoding"].pop(k) for k in ("pairing_ridge_weight", "ridge_radius_um")])
    decoding = load_spec(json_path).decoding
    assert decoding.pairing_ridge_weight == 0.0 and decoding.ridge_radius_um == 3.5


def test_files_from_before_the_valley_setting_decode_with_plain_thinning(saved):
    json_path, _, _ = saved
    edit_json(json_path, lambda d: [d["decoding"].pop(k) for k in ("peak_valley_nucleus", "peak_valley_golgi")])
    decoding = load_spec(json_path).decoding
    assert decoding.peak_valley_nucleus == 0.0 and decoding.peak_valley_golgi == 0.0
    assert decoding.peak_threshold_nucleus == 0.35


def test_missing_files(saved, tmp_path):
    json_path, _, _ = saved
    with pytest.raises(FileFormatError, match="not found"):
        load_model(tmp_path / "nothing.json")
    json_path.with_suffix(".safetensors").unlink()
    with pytest.raises(FileFormatError, match="missing"):
        load_model(json_path)


def test_weights_recorded_in_the_json_are_found_after_a_rename(saved, tmp_path):
    json_path, _, _ = saved
    renamed = tmp_path / "renamed.json"
    json_path.rename(renamed)
    loaded, spec = load_model(renamed)  # weights still tiny.safetensors, as the JSON records
    assert spec.name == "tiny"


def test_truncated_or_foreign_weights(saved):
    json_path, _, _ = saved
    weights = json_path.with_suffix(".safetensors")
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match="damaged"):
        load_model(json_path)
    # without the checksum the safetensors reader itself must reject it, still as one clear error
    edit_json(json_path, lambda d: d.pop("weights_sha256"))
    with pytest.raises(FileFormatError, match="damaged or not a safetensors"):
        load_model(json_path)
    weights.write_bytes(b"\x80\x04\x95 this is a pickle, not weights")
    with pytest.raises(FileFormatError, match="damaged or not a safetensors"):
        load_model(json_path)


def test_incompatible_architecture(saved, tmp_path):
    json_path, _, _ = saved
    # the JSON now describes a wider network than the weights hold (checksum still matches the weights)
    edit_json(json_path, lambda d: d["architecture"].update(base_filters=8))
    with pytest.raises(FileFormatError, match="incompatible"):
        load_model(json_path)
    # weights of a ctrdet network under a cellpol description: embedding heads are missing
    other = make_spec(architecture="ctrdet")
    save_model(tmp_path / "ctrdet", build_network(other.network), other)
    (tmp_path / "ctrdet.safetensors").replace(tmp_path / "tiny.safetensors")
    edit_json(json_path, lambda d: (d["architecture"].update(base_filters=4), d.pop("weights_sha256")))
    with pytest.raises(FileFormatError, match="missing"):
        load_model(json_path)


def test_save_refuses_a_module_that_does_not_fit_the_spec(tmp_path):
    spec = make_spec()
    with pytest.raises(CellPolError):
        save_model(tmp_path / "bad", build_network(NetworkConfig(base_filters=8, levels=3)), spec)
    with pytest.raises(CellPolError):
        save_model(tmp_path / "bad", torch.nn.Linear(2, 2), spec)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_keeps_a_consistent_pair(saved, tmp_path):
    json_path, net, spec = saved
    torch.manual_seed(5)
    new_net = build_network(spec.network).eval()
    save_model(json_path, new_net, spec.with_decoding(max_pair_distance_um=12.0))
    loaded, loaded_spec = load_model(json_path)
    assert loaded_spec.decoding.max_pair_distance_um == 12.0
    x = torch.rand(1, 2, 8, 16, 16)
    assert torch.equal(outputs(loaded, x)["heatmap_nucleus"], outputs(new_net, x)["heatmap_nucleus"])
    with pytest.raises(CellPolError):
        spec.with_decoding(embedding_delta=-1.0)
