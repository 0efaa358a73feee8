"""Decoding calibration: re-decoding the network output, and choosing thresholds that exclude false cells."""

from __future__ import annotations

import itertools

import numpy as np

from app.core.pairs import PairSet
from app.core.volume import Volume
from app.training.calibrate import calibrate_decoding
from test_inference import oracle_predictor, render, tube_and_blob

VOXEL = (1.0, 0.5, 0.5)


def um(z, y, x):
    return np.array([z, y / VOXEL[1], x / VOXEL[2]])


def scene(seed):
    rng = np.random.default_rng(seed)
    true_cells, false_cells = [], []
    for row in range(2):
        for col in range(3):
            y, x = 12 + 22 * row + rng.uniform(-2, 2), 12 + 22 * col + rng.uniform(-2, 2)
            cell = (um(4, y, x), um(4, y + 5, x + 3), 0.9)
            (false_cells if (row + col + seed) % 3 == 0 else true_cells).append(cell)
    # The false cells are faint (0.35): a threshold of 0.3 finds them, 0.4 and above does not.
    false_cells = [(n, g, 0.35) for n, g, _ in false_cells]
    volume = render((9, 120, 160), VOXEL, true_cells + false_cells)
    gt = PairSet([c[0] for c in true_cells], [c[1] for c in true_cells], voxel_size=VOXEL)
    return volume, gt


def test_decode_of_network_output_equals_predict():
    predictor, _ = oracle_predictor(VOXEL, window=(9, 64, 64))
    volume, _ = scene(0)
    direct = predictor(volume)
    again = predictor.decode(predictor.run_network(volume))
    np.testing.assert_allclose(again.nuclei, direct.nuclei)
    np.testing.assert_allclose(again.golgi, direct.golgi)


def test_calibration_raises_the_threshold_above_the_false_cells():
    predictor, _ = oracle_predictor(VOXEL, window=(9, 64, 64))  # thresholds 0.3: false cells detected
    validation = [scene(0), scene(1)]
    before = predictor(validation[0][0])
    assert len(before) == 6  # 4 true + 2 false
    best, table = calibrate_decoding(predictor, validation, thresholds=(0.3, 0.5), min_distance_nucleus_um=(3.0,),
                                     min_distance_golgi_um=(1.5,))
    settings = [tuple(sorted((k, v) for k, v in row.items() if k not in ("tpr", "fdr", "j"))) for row in table]
    assert len(settings) == len(set(settings))  # no setting scored twice, across both rounds
    from app.training.calibrate import PAIRING_DISTANCE_WEIGHTS, PAIRING_HEIGHT_WEIGHTS

    from app.training.calibrate import PAIRING_RIDGE_WEIGHTS, RIDGE_RADII_UM

    tried = {(row["pairing_distance_weight"], row["pairing_height_weight"]) for row in table}
    assert tried == set(itertools.product(PAIRING_DISTANCE_WEIGHTS, PAIRING_HEIGHT_WEIGHTS))
    tried = {(row["pairing_ridge_weight"], row["ridge_radius_um"]) for row in table}
    assert tried == set(itertools.product(PAIRING_RIDGE_WEIGHTS, RIDGE_RADII_UM))
    assert {(row["peak_threshold_nucleus"], row["peak_threshold_golgi"]) for row in table} >= {(0.3, 0.5), (0.5, 0.3), (0.5, 0.5)}
    assert best.peak_threshold_nucleus == 0.5 or best.peak_threshold_golgi == 0.5
    assert max(row["j"] for row in table) == 1.0 and table[0]["j"] < 1.0
    after = predictor.decode(predictor.run_network(validation[0][0]), best)
    assert len(after) == 4


def crossed_scene():
    """Two cells whose embeddings (10 × brightness in the oracle) match the *other* cell's Golgi.

    Nucleus A (0.9) has its Golgi (0.8) 3 µm away; nucleus B (0.8) has its Golgi (0.9) 3 µm away; each
    nucleus is 10 µm from the other cell's Golgi, within d_max. By embedding alone the crossed pairs win
    (|Δe| = 0 against 1); by distance among admissible edges the true ones do.
    """
    na, ga, gb, nb = um(4, 10, 20), um(4, 13, 20), um(4, 20, 20), um(4, 23, 20)
    cells = [(na, None, 0.9), (None, ga, 0.8), (nb, None, 0.8), (None, gb, 0.9)]
    volume = render((9, 80, 80), VOXEL, cells)
    return volume, PairSet([na, nb], [ga, gb], voxel_size=VOXEL)


def test_pairing_distance_weight_decides_crossed_cells_and_is_calibrated():
    import dataclasses

    predictor, _ = oracle_predictor(VOXEL, window=(9, 80, 80))
    volume, truth = crossed_scene()
    output = predictor.run_network(volume)

    def golgi_of(decoding):
        pairs = predictor.decode(output, decoding)
        assert len(pairs) == 2
        order = np.argsort(pairs.nuclei[:, 1])
        return pairs.golgi[order, 1] * VOXEL[1]  # Golgi y (µm) of nucleus A, then B

    by_embedding = golgi_of(predictor.decoding)
    np.testing.assert_allclose(by_embedding, [20, 13], atol=0.3)  # the paper's rule: crossed
    by_distance = golgi_of(dataclasses.replace(predictor.decoding, pairing_distance_weight=1.0))
    np.testing.assert_allclose(by_distance, [13, 20], atol=0.3)

    best, table = calibrate_decoding(predictor, [(volume, truth)], thresholds=(0.3,), min_distance_nucleus_um=(3.0,),
                                     min_distance_golgi_um=(1.5,))
    assert best.pairing_distance_weight == 1.0
    assert table[0]["j"] < 0 and max(row["j"] for row in table) == 1.0


def golgi_y_of_the_one_pair(predictor, output, decoding):
    """Golgi y (µm) of the single vector ``output`` decodes to with ``decoding``."""
    pairs = predictor.decode(output, decoding)
    assert len(pairs) == 1
    return pairs.golgi[0, 1] * VOXEL[1]


def test_pairing_height_weight_prefers_a_strong_golgi_to_a_faint_nearer_one():
    """A nucleus (1.0) with a faint Golgi-channel peak (0.82, a vessel or speck; its embedding still admits
    it) 2.5 µm on one side and its strong Golgi (1.0) 3.5 µm on the other: by distance the faint peak wins
    (costs 0.18 against 0.25), with the peaks' strength the strong one does (0.128 against 0.100 at w = 1,
    v = 0.6)."""
    import dataclasses

    predictor, _ = oracle_predictor(VOXEL, window=(9, 80, 80), pairing_distance_weight=1.0)
    nucleus, faint, strong = um(4, 20, 20), um(4, 17.5, 20), um(4, 23.5, 20)
    volume = render((9, 80, 80), VOXEL, [(nucleus, None, 1.0), (None, faint, 0.82), (None, strong, 1.0)])
    output = predictor.run_network(volume)

    assert abs(golgi_y_of_the_one_pair(predictor, output, predictor.decoding) - 17.5) < 0.3
    with_height = dataclasses.replace(predictor.decoding, pairing_height_weight=0.6)
    assert abs(golgi_y_of_the_one_pair(predictor, output, with_height) - 23.5) < 0.3
    assert "peak-height weight 0.6" in predictor.decode(output, with_height).meta["pairing"]


def test_pairing_ridge_weight_prefers_a_compact_golgi_to_a_nearer_vessel():
    """A nucleus (1.0) 3 µm from a vessel (a tube in the Golgi channel, 1.0 at its top) and 5 µm from its
    compact Golgi (1.0): by distance the vessel's peak wins; with the ridge weight the Golgi does, and the
    calibration finds that on a scene whose truth is the Golgi."""
    import dataclasses

    predictor, _ = oracle_predictor(VOXEL, window=(7, 80, 80), pairing_distance_weight=1.0)
    shape = (7, 60, 80)
    nucleus = um(3, 15, 20)
    vessel, _, golgi = tube_and_blob(shape, VOXEL, angle_deg=0.0, tube_centre=(3.0, 12.0, 20.0),
                                     blob_centre=(3.0, 20.0, 20.0))
    nuclei = render(shape, VOXEL, [(nucleus, None, 1.0)]).data[0]
    volume = Volume(np.stack([nuclei, vessel]), VOXEL, ("nuclei", "golgi"))
    output = predictor.run_network(volume)

    assert abs(golgi_y_of_the_one_pair(predictor, output, predictor.decoding) - 12.0) < 0.3
    with_ridge = dataclasses.replace(predictor.decoding, pairing_ridge_weight=0.2)
    assert abs(golgi_y_of_the_one_pair(predictor, output, with_ridge) - 20.0) < 0.3
    assert "ridge weight 0.2 at 3.5 µm" in predictor.decode(output, with_ridge).meta["pairing"]
    truth = PairSet([nucleus], [golgi], voxel_size=VOXEL)
    best, _ = calibrate_decoding(predictor, [(volume, truth)], thresholds=(0.3,), min_distance_nucleus_um=(3.0,),
                                 min_distance_golgi_um=(1.5,), pairing_distance_weights=(1.0,),
                                 pairing_height_weights=(0.0,))
    assert best.pairing_ridge_weight > 0
