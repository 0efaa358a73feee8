"""Golgi ends refined on the image (app.core.inference.refine) and the decoding setting that asks for it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.core.errors import CellPolError
from app.core.inference.refine import refine_golgi
from app.core.modelfile import DecodingSpec

VOXEL = (0.4, 0.2, 0.2)


def blobs(shape, centres_vox, sigma_vox=(1.0, 2.0, 2.0), amplitude=1000.0, background=100.0):
    grid = np.indices(shape, dtype=np.float64)
    out = np.full(shape, background)
    for c in centres_vox:
        out += amplitude * np.exp(-0.5 * sum(((grid[a] - c[a]) / sigma_vox[a]) ** 2 for a in range(3)))
    return out.astype(np.uint16)


def test_a_fragmented_golgi_end_moves_to_the_centre_of_its_pieces():
    pieces = [(10, 20, 20), (10, 20, 30), (10, 28, 25)]  # three mini-stacks 1–2 µm apart
    image = blobs((20, 50, 50), pieces)
    centre = np.mean(pieces, axis=0)
    start = np.array([[10.0, 20.5, 20.5]])  # the network put it on one piece
    moved = refine_golgi(image, start, VOXEL, radius_um=2.5)
    assert np.linalg.norm((moved[0] - centre) * VOXEL) < 0.3
    assert np.linalg.norm((start[0] - centre) * VOXEL) > 0.9
    # 0 switches it off; a flat neighbourhood leaves a point where it is; never beyond the radius
    np.testing.assert_array_equal(refine_golgi(image, start, VOXEL, 0.0), start)
    flat = np.full((20, 50, 50), 300, np.uint16)
    np.testing.assert_allclose(refine_golgi(flat, start, VOXEL, 2.5), start)
    far = refine_golgi(blobs((20, 50, 50), [(10, 20, 44)]), np.array([[10.0, 20.0, 36.0]]), VOXEL, 1.0)
    assert np.linalg.norm((far[0] - [10, 20, 36]) * VOXEL) <= 1.0 + 1e-9
    assert refine_golgi(image, np.zeros((0, 3)), VOXEL, 2.5).shape == (0, 3)


def test_decoding_carries_the_refinement_radius_and_the_predictor_applies_it():
    from test_inference import OracleNet, oracle_spec, render  # noqa: E402 - shared test helpers

    from app.core.inference import Predictor

    assert DecodingSpec().golgi_refine_radius_um == 0.0
    with pytest.raises(CellPolError):
        DecodingSpec(golgi_refine_radius_um=-1.0)
    voxel = (1.0, 0.5, 0.5)
    volume = render((12, 48, 48), voxel, [((6, 24, 16), (6, 24, 30), 1.0)])
    # a second, dimmer Golgi piece 1.5 µm away: the heatmap peak stays on the bright one, refinement moves
    extra = render((12, 48, 48), voxel, [(None, (6, 27, 30), 0.8)])
    volume.data[1] = np.maximum(volume.data[1], extra.data[1])
    spec = oracle_spec(voxel)
    plain = Predictor.from_modules([(OracleNet(), spec)], "cpu", amp=False)(volume)
    spec = dataclasses.replace(spec, decoding=dataclasses.replace(spec.decoding, golgi_refine_radius_um=2.5))
    refined = Predictor.from_modules([(OracleNet(), spec)], "cpu", amp=False)(volume)
    assert len(plain) == len(refined) == 1
    np.testing.assert_allclose(refined.nuclei, plain.nuclei)
    assert refined.golgi[0, 1] > plain.golgi[0, 1] + 0.5  # pulled towards the second piece


def test_streamed_prediction_refines_golgi_ends_as_the_in_memory_one(tmp_path):
    """A large image predicted tile by tile gets the same Golgi refinement, reading only small boxes."""
    from test_streaming import CORE, INPUT_VOXEL, MODEL_VOXEL, SHAPE, _cells, _pairs_match  # noqa: E402

    from app.core.imageio import open_lazy
    from test_inference import oracle_predictor, render  # noqa: E402

    volume = render(SHAPE, INPUT_VOXEL, _cells())
    data = np.round(volume.data * 4000 + 100).astype(np.uint16)
    path = tmp_path / "stack.npy"
    np.save(path, data)
    from app.core.volume import Volume

    volume = Volume(data, INPUT_VOXEL, ("nuclei", "golgi"))
    plain_predictor, _ = oracle_predictor(MODEL_VOXEL)
    predictor, _ = oracle_predictor(MODEL_VOXEL, golgi_refine_radius_um=2.0)
    whole, plain = predictor(volume), plain_predictor(volume)
    assert not np.allclose(whole.golgi, plain.golgi)  # the refinement moved them (off the model grid's peaks)
    with open_lazy(path, axes="CZYX", voxel_size=INPUT_VOXEL) as image:
        streamed = predictor.predict_lazy(image, core=CORE).pairs
    _pairs_match(streamed, whole, tolerance=0.05)
