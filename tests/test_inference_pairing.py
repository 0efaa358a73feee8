"""Pairing (app.core.inference.pairing): the pairing rule, embeddings read per window, matching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.core.inference import edge_weight, embedding_cost, match_pairs, pairing_cost, peak_strength, vector_scores
from app.core.modelfile import DecodingSpec
from test_inference import oracle_predictor, render

# ----------------------------------------------------------------------------------------------
# embeddings and matching
# ----------------------------------------------------------------------------------------------
def test_embeddings_are_read_as_the_mean_of_the_neighbourhood_inside_the_window():
    from app.core.inference import _read_embedding

    window = np.arange(4 * 5 * 6, dtype=np.float16).reshape(4, 5, 6)
    local = np.array([[2, 2, 3], [0, 0, 0], [3, 4, 5]])
    expected = [window[1:4, 1:4, 2:5].mean(), window[0:2, 0:2, 0:2].mean(), window[2:4, 3:5, 4:6].mean()]
    np.testing.assert_allclose(_read_embedding(window, local), expected, rtol=1e-6)


def test_match_pairs_limits_and_preference():
    # Two nuclei, two Golgi: edges (cost = |Δe|/Δ): n0-g0 0.05, n0-g1 0.95, n1-g0 0.90.
    rows, cols = np.array([0, 0, 1]), np.array([0, 1, 0])
    n, g, e = match_pairs(2, 2, rows, cols, np.array([0.05, 0.95, 0.90]), np.array([5.0, 5.0, 5.0]), 14.0)
    # One confident pair beats two doubtful ones.
    assert list(zip(n, g)) == [(0, 0)] and list(e) == [0]
    # |Δe| = Δ exactly, or d > d_max: rejected even when it is the only candidate.
    assert len(match_pairs(1, 1, [0], [0], np.array([1.0]), np.array([3.0]), 14.0)[0]) == 0
    assert len(match_pairs(1, 1, [0], [0], np.array([0.0]), np.array([14.01]), 14.0)[0]) == 0
    assert len(match_pairs(1, 1, [0], [0], np.array([0.0]), np.array([14.0]), 14.0)[0]) == 1
    # Equal embedding costs: the shorter vector wins the tie.
    n, g, _ = match_pairs(1, 2, [0, 0], [0, 1], np.array([0.2, 0.2]), np.array([9.0, 4.0]), 14.0)
    assert list(g) == [1]


def test_embeddings_pair_correctly_when_the_nearest_golgi_is_the_other_cells():
    voxel = (1.0, 0.5, 0.5)
    # Along x (µm): nucleus A at 10, Golgi B at 12, Golgi A at 16, nucleus B at 18. Each nucleus is 2 µm
    # from the *other* cell's Golgi and 6 µm from its own; pairing by distance would swap them.
    um = lambda z, y, x: np.array([z, y / 0.5, x / 0.5])  # noqa: E731
    cell_a = (um(4, 10, 10), um(4, 10, 16), 1.0)
    cell_b = (um(4, 11, 18), um(4, 11, 12), 0.6)
    # Far away: a Golgi 16 µm from its nucleus (beyond d_max = 14 µm) and a pair whose embeddings differ
    # by 3 ≥ Δ = 2 (brightness 0.75 vs 0.45).
    too_far = (um(4, 30, 8), um(4, 30, 24), 0.8)
    mismatched_n = (um(4, 30, 60), None, 0.75)
    mismatched_g = (None, um(4, 30, 66), 0.45)
    volume = render((9, 80, 160), voxel, [cell_a, cell_b, too_far, mismatched_n, mismatched_g])

    predictor, _ = oracle_predictor(voxel, window=(9, 64, 64))
    pairs = predictor(volume)
    assert pairs.meta["windows"] > 1 and pairs.meta["detected_nuclei"] == 4 and pairs.meta["detected_golgi"] == 4
    assert len(pairs) == 2
    order = np.argsort(pairs.nuclei[:, 2])
    assert np.allclose(pairs.nuclei[order], [cell_a[0], cell_b[0]], atol=0.1)
    assert np.allclose(pairs.golgi[order], [cell_a[1], cell_b[1]], atol=0.1)

    # peaks(): every peak decode paired from, the unpaired ones too, at the input's voxels.
    output = predictor.run_network(volume)
    (pos_n, _, h_n), (pos_g, _, h_g) = predictor.peaks(output)
    expected_n = [cell_a[0], cell_b[0], too_far[0], mismatched_n[0]]
    expected_g = [cell_a[1], cell_b[1], too_far[1], mismatched_g[1]]
    for found, heights, expected in ((pos_n, h_n, expected_n), (pos_g, h_g, expected_g)):
        found = output.resampling.to_input(found)
        assert len(found) == len(heights) == 4 and np.all(heights > 0)
        for point in expected:
            assert np.min(np.linalg.norm(found - point, axis=1)) < 0.1
    # A decoding given explicitly is the one used: a Golgi threshold above the faintest peak drops it.
    stricter = dataclasses.replace(predictor.decoding, peak_threshold_golgi=float(h_g.min()) + 1e-3)
    kept = predictor.peaks(output, stricter)[1][2]
    assert len(kept) == 3 and np.all(kept > h_g.min()) and len(predictor.peaks(output)[1][0]) == 4

    # The embedding-free architecture pairs by distance, and so swaps the two Golgi here.
    ctr, _ = oracle_predictor(voxel, window=(9, 64, 64), architecture="ctrdet")
    by_distance = ctr(volume)
    order = np.argsort(by_distance.nuclei[:, 2])
    assert np.allclose(by_distance.golgi[order][:2], [cell_b[1], cell_a[1]], atol=0.1)


# ----------------------------------------------------------------------------------------------
# the pairing rule
# ----------------------------------------------------------------------------------------------
def test_embedding_cost_is_the_members_mean_of_their_own_normalised_distances():
    has_window = np.array([True, False, True])
    member_a, member_b = np.array([1.0, 3.0]), np.array([0.5, 0.5])  # |Δe| of the two edges with a window
    cost = embedding_cost([member_a, member_b], [2.0, 1.0], has_window)
    np.testing.assert_allclose(cost, [(0.5 + 0.5) / 2, np.inf, (1.5 + 0.5) / 2])


def test_pairing_cost_blends_distance_strength_and_ridge_and_lets_the_embeddings_veto():
    embedding = np.array([0.2, 0.9, 1.0, np.inf, 0.99])
    distance = np.array([4.0, 2.0, 1.0, 1.0, 10.0])
    h_n = np.array([1.0, 0.64, 1.0, 1.0, 0.0])
    h_g = np.array([0.81, 1.0, 1.0, 1.0, 1.0])
    ridge = np.array([0.0, 1.0, 0.0, 0.0, 1.0])
    # All weights 0 (the paper): the embedding cost itself.
    plain = DecodingSpec(max_pair_distance_um=10.0)
    assert pairing_cost(embedding, distance, h_n, h_g, ridge, plain) is embedding
    weighted = dataclasses.replace(plain, pairing_distance_weight=0.5, pairing_height_weight=0.2,
                                   pairing_ridge_weight=0.3)
    cost = pairing_cost(embedding, distance, h_n, h_g, ridge, weighted)
    # (1 − w)·|Δe|/Δ + w·d/d_max, then (1 − v)·that + v·(1 − √(h_n·h_g)), then + ρ·ridge:
    assert cost[0] == pytest.approx(0.8 * (0.5 * 0.2 + 0.5 * 0.4) + 0.2 * (1 - 0.9))
    assert cost[1] == pytest.approx(0.8 * (0.5 * 0.9 + 0.5 * 0.2) + 0.2 * (1 - 0.8) + 0.3)
    assert np.isinf(cost[2]) and np.isinf(cost[3])  # |Δe| ≥ Δ, or no window: vetoed
    assert cost[4] == 1.0 - 1e-9  # above 1 but admissible by its embeddings: capped, still pairable
    assert len(match_pairs(1, 1, [0], [0], cost[4:], distance[4:], 10.0)[0]) == 1


def test_edge_weight_and_vector_scores():
    # The weight match_pairs maximises: (1 − cost)·(1 − 0.01·d/d_max).
    np.testing.assert_allclose(edge_weight(np.array([0.2, 0.0]), np.array([7.0, 14.0]), 14.0),
                               [0.8 * (1 - 0.005), 0.99])
    # A vector's score: √(h_n·h_g) × (1 − |Δe|/Δ), heights clipped to [0, 1].
    np.testing.assert_allclose(vector_scores(np.array([0.81, 1.5, 0.5]), np.array([1.0, 0.25, -0.1]),
                                             np.array([0.5, 1.0, 1.0])), [0.45, 0.5, 0.0])
    np.testing.assert_allclose(peak_strength(np.array([0.64]), np.array([0.25])), [0.4])
