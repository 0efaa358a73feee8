"""The window grid (app.core.inference.windows): tiling with overlap, seamless blending."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.errors import CellPolError
from app.core.inference import plan_axis, plan_windows
from test_inference import oracle_predictor, render

# ----------------------------------------------------------------------------------------------
# tiling and blending
# ----------------------------------------------------------------------------------------------
def test_plan_axis_covers_with_overlap_and_multiple():
    for length, wmax, overlap, multiple in [(768, 216, 31, 8), (500, 128, 40, 16), (100, 64, 20, 1), (30, 64, 10, 8)]:
        window, starts = plan_axis(length, wmax, overlap, multiple)
        assert window % multiple == 0 and window <= max(wmax, multiple)
        assert starts[0] == 0
        if len(starts) > 1:
            assert starts[-1] + window == length
            assert np.all(window - np.diff(starts) >= overlap)
        else:
            assert window >= length
    with pytest.raises(CellPolError, match="larger window"):
        plan_axis(200, 32, 40, 8)


def test_blending_weights_sum_to_one_and_stitching_has_no_seams():
    grid = plan_windows((10, 100, 130), (8, 40, 48), (3, 12, 12), (1, 1, 1))
    assert len(grid) > 10
    for axis in range(3):
        weights, total = grid.axis_weights(axis)
        assert np.allclose(total, 1.0, atol=1e-5)

    # End to end: with an identity network the stitched heatmap equals the normalised input everywhere.
    voxel = (1.0, 0.5, 0.5)
    cells = [((4.0, 20.0, 30.0), (5.0, 20.0, 44.0), 1.0), ((6.0, 60.0, 95.0), (6.0, 70.0, 90.0), 0.7)]
    volume = render((10, 90, 130), voxel, cells)
    predictor, _ = oracle_predictor(voxel, window=(10, 64, 64))
    prediction = predictor.predict(volume, keep_heatmaps=True)
    assert prediction.pairs.meta["windows"] > 4
    expected = volume.data[0] / volume.data[0].max()
    assert np.allclose(prediction.heatmap_nucleus, np.clip(expected, 0, 1), atol=1e-5)
