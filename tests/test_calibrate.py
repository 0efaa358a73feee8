"""Decoding calibration: re-decoding the network output, and choosing thresholds that exclude false cells."""

from __future__ import annotations

import numpy as np

from app.core.pairs import PairSet
from app.training.calibrate import calibrate_decoding
from test_inference import oracle_predictor, render

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
    assert len(table) == 1 + 4 + 1
    assert best.peak_threshold_nucleus == 0.5 or best.peak_threshold_golgi == 0.5
    assert max(row["j"] for row in table) == 1.0 and table[0]["j"] < 1.0
    after = predictor.decode(predictor.run_network(validation[0][0]), best)
    assert len(after) == 4
