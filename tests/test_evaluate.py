"""Tests for app.core.evaluate: the 3DCellPol scoring protocol, with hand-computed expectations."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from app.core.errors import CellPolError
from app.core.evaluate import (
    CAPPED_COST,
    MAF_LEVELS,
    N_LEVELS,
    aggregate,
    border_margin_voxels,
    evaluate_folders,
    format_table,
    hungarian_match,
    inside_border,
    score_pairs,
    thresholds,
    write_evaluation,
)
from app.core.pairs import PairSet, write_pairs

ISO = (1.0, 1.0, 1.0)
SHAPE = (40, 200, 200)  # (Z, Y, X): large enough that test pairs are well inside the border


def pairs(nuclei, golgi, voxel_size=ISO, **kwargs) -> PairSet:
    return PairSet(np.asarray(nuclei, float), np.asarray(golgi, float), voxel_size=voxel_size, **kwargs)


def levels_mask(first_false: int) -> np.ndarray:
    """[1]*first_false + [0]*(14 - first_false) as ints."""
    return (np.arange(N_LEVELS) < first_false).astype(int)


# ------------------------------------------------------------------------------------------
# Levels and thresholds
# ------------------------------------------------------------------------------------------
def test_levels_and_thresholds_match_the_paper_table():
    assert len(MAF_LEVELS) == 14
    assert MAF_LEVELS[0] == 0.75 and MAF_LEVELS[-1] == 0.10
    tau_n, tau_g = thresholds("3d")
    np.testing.assert_allclose(tau_n, [12.0, 11.2, 10.4, 9.6, 8.8, 8.0, 7.2, 6.4, 5.6, 4.8, 4.0, 3.2, 2.4, 1.6])
    np.testing.assert_allclose(tau_g, [6.0, 5.6, 5.2, 4.8, 4.4, 4.0, 3.6, 3.2, 2.8, 2.4, 2.0, 1.6, 1.2, 0.8])
    tau_n2, tau_g2 = thresholds("2d")
    np.testing.assert_allclose(tau_n2, 22 * MAF_LEVELS)
    np.testing.assert_allclose(tau_g2, 14 * MAF_LEVELS)
    with pytest.raises(CellPolError):
        thresholds("4d")


# ------------------------------------------------------------------------------------------
# Identity, shifts, anisotropy
# ------------------------------------------------------------------------------------------
def test_identical_sets_are_perfect_at_every_level():
    gt = pairs([[10, 50, 50], [12, 80, 90], [20, 120, 60]], [[11, 53, 52], [12, 84, 90], [18, 120, 66]],
               voxel_size=(0.27, 0.666, 0.666))
    score = score_pairs(gt, gt, image_shape=SHAPE)
    assert score.protocol == "3d" and score.border_margin_voxels == 10
    np.testing.assert_array_equal(score.tp, 3)
    np.testing.assert_array_equal(score.fp, 0)
    np.testing.assert_array_equal(score.fn, 0)
    np.testing.assert_array_equal(score.tpr, 1.0)
    np.testing.assert_array_equal(score.fdr, 0.0)
    np.testing.assert_array_equal(score.fnr, 0.0)
    np.testing.assert_allclose(score.mean["cos"], 1.0)
    np.testing.assert_allclose(score.mean["cos_paper"], 1.0)
    np.testing.assert_allclose(score.mean["error"], 0.0)
    np.testing.assert_allclose(score.mean["nd"], 0.0)
    np.testing.assert_allclose(score.mean["gd"], 0.0)
    np.testing.assert_allclose(score.std["error"], 0.0)


# Anisotropic voxel: z = 2 µm, y = x = 0.5 µm. GT vector 6 voxels in x = 3 µm.
ANISO = (2.0, 0.5, 0.5)
GT_N, GT_G = [10.0, 50.0, 50.0], [10.0, 50.0, 56.0]


@pytest.mark.parametrize(
    "shift_voxels",
    [(4.5, 0, 0), (0, 18, 0), (0, 0, -18)],  # all 9.0 µm; in voxels the z shift would be only 4.5
    ids=["z", "y", "x"],
)
def test_nucleus_shift_flips_exactly_where_tau_n_drops_below_it(shift_voxels):
    gt = pairs([GT_N], [GT_G], voxel_size=ANISO)
    pred = pairs([np.add(GT_N, shift_voxels)], [GT_G], voxel_size=ANISO)
    score = score_pairs(gt, pred, image_shape=SHAPE)
    # dN = 9.0 µm, dG = 0: TP while τ_n >= 9.0, i.e. 12, 11.2, 10.4, 9.6; not at 8.8 (level 4).
    np.testing.assert_allclose(score.matches["nd"], [9.0])
    np.testing.assert_array_equal(score.tp, levels_mask(4))
    np.testing.assert_array_equal(score.fn, 1 - levels_mask(4))
    np.testing.assert_array_equal(score.fp, 1 - levels_mask(4))
    np.testing.assert_array_equal(score.fdr, 1 - levels_mask(4))  # TP = 0 and FP > 0 → FDR = 1


@pytest.mark.parametrize("shift_voxels", [(2, 0, 0), (0, 0, 8)], ids=["z", "x"])
def test_golgi_shift_flips_exactly_where_tau_g_drops_below_it(shift_voxels):
    gt = pairs([GT_N], [GT_G], voxel_size=ANISO)
    pred = pairs([GT_N], [np.add(GT_G, shift_voxels)], voxel_size=ANISO)
    score = score_pairs(gt, pred, image_shape=SHAPE)
    # dG = 4.0 µm: TP while τ_g >= 4.0 (equality at level 5 counts: the test is <=), not at 3.6.
    np.testing.assert_allclose(score.matches["gd"], [4.0])
    np.testing.assert_array_equal(score.tp, levels_mask(6))
    np.testing.assert_array_equal(score.tpr, levels_mask(6))
    np.testing.assert_array_equal(score.fnr, 1 - levels_mask(6))


def test_per_tp_metrics_are_in_um_and_cos_paper_in_voxels():
    gt = pairs([GT_N], [GT_G], voxel_size=ANISO)
    pred = pairs([GT_N], [np.add(GT_G, (2, 0, 0))], voxel_size=ANISO)  # Golgi 2 slices up
    score = score_pairs(gt, pred, image_shape=SHAPE)
    # µm: v = (4, 0, 3), v_gt = (0, 0, 3) → cos = 3/5, error = 4, ND = 0, GD = 4.
    assert score.mean["cos"][0] == pytest.approx(0.6)
    assert score.mean["error"][0] == pytest.approx(4.0)
    assert score.mean["nd"][0] == pytest.approx(0.0)
    assert score.mean["gd"][0] == pytest.approx(4.0)
    # Paper: voxels v = (2, 0, 6), v_gt = (0, 0, 6): 36 / (round(√40, 3) · 6) = 0.94862 → 0.949.
    assert score.mean["cos_paper"][0] == pytest.approx(0.949, abs=1e-12)
    assert math.isnan(score.std["cos"][0])  # one TP: sample std undefined (pandas ddof=1)


def test_reversed_vector_signed_cos_is_minus_one_while_paper_cos_is_one():
    gt = pairs([GT_N], [[10.0, 50.0, 52.0]], voxel_size=ANISO)  # 1 µm along x
    pred = pairs([[10.0, 50.0, 52.0]], [GT_N], voxel_size=ANISO)
    score = score_pairs(gt, pred, image_shape=SHAPE)
    # dN = dG = 1 µm: TP while τ_g >= 1 (levels 0..12; 0.8 at level 13 fails).
    np.testing.assert_array_equal(score.tp, levels_mask(13))
    assert score.mean["cos"][0] == pytest.approx(-1.0)
    assert score.mean["cos_paper"][0] == pytest.approx(1.0)
    assert score.mean["error"][0] == pytest.approx(2.0)


def test_zero_length_vector_gives_nan_cosine_without_crashing():
    gt = pairs([GT_N], [GT_N], voxel_size=ANISO)
    score = score_pairs(gt, gt, image_shape=SHAPE)
    assert score.tp[0] == 1
    assert math.isnan(score.matches["cos"][0]) and math.isnan(score.matches["cos_paper"][0])
    assert math.isnan(score.mean["cos"][0])
    assert score.mean["error"][0] == 0.0


# ------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------
def test_swapped_prediction_order_is_still_matched():
    nuclei = [[10, 40, 40], [10, 80, 120], [15, 150, 60]]
    golgi = [[10, 42, 40], [11, 80, 124], [15, 153, 61]]
    gt = pairs(nuclei, golgi, ids=[100, 101, 102])
    pred = pairs(np.add(nuclei[::-1], 0.5), np.add(golgi[::-1], -0.25), ids=[7, 8, 9])
    score = score_pairs(gt, pred, image_shape=SHAPE)
    np.testing.assert_array_equal(score.tp[:10], 3)
    order = np.argsort(score.matches["gt_index"])
    np.testing.assert_array_equal(score.matches["gt_index"][order], [0, 1, 2])
    np.testing.assert_array_equal(score.matches["pred_index"][order], [2, 1, 0])
    np.testing.assert_array_equal(score.matches["gt_id"][order], [100, 101, 102])
    np.testing.assert_array_equal(score.matches["pred_id"][order], [9, 8, 7])


def test_hungarian_caps_costs_above_cutoff_to_2000():
    cost = np.array([[0.0, 8.0], [8.5, 15.2]])
    before = cost.copy()
    rows, cols, capped = hungarian_match(cost, 10.0)
    # Uncapped optimum is the diagonal (15.2 < 16.5); with 15.2 → 2000 the anti-diagonal wins.
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(sorted(capped), [8.0, 8.5])
    np.testing.assert_array_equal(cost, before)  # input not modified
    rows, cols, capped = hungarian_match(np.array([[12.0]]), 10.0)
    assert rows.tolist() == [0] and cols.tolist() == [0] and capped.tolist() == [CAPPED_COST]
    rows, cols, capped = hungarian_match(np.zeros((0, 3)), 10.0)
    assert rows.size == cols.size == capped.size == 0


def test_capped_pairs_can_still_be_true_positives():
    # dN = 5, dG = 5.5: cost 10.5 > 10 → 2000, but the only possible match, and its true distances
    # pass levels 0 (12, 6) and 1 (11.2, 5.6), not level 2 (τ_g = 5.2).
    gt = pairs([[10, 50, 50]], [[10, 50, 60]])
    pred = pairs([[10, 50, 55]], [[10, 50, 65.5]])
    score = score_pairs(gt, pred, image_shape=SHAPE)
    assert score.matches["cost"].tolist() == [CAPPED_COST]
    np.testing.assert_array_equal(score.tp, levels_mask(2))


def test_cap_changes_the_assignment_as_in_the_paper():
    # Rigid translations, so dN = dG = d and cost = 2d. GT a at the origin, b 4 µm away; prediction p
    # exactly on a, q at (3, -3) from a. Uncapped, p–a (0) + q–b (15.2) would win; the paper's cap turns
    # 15.2 into 2000, so p–b (8) + q–a (8.49) is chosen: p, a perfect hit, is not a TP at strict levels.
    offset_golgi = np.array([0.0, 0.0, 2.0])
    a, b = np.array([10.0, 60.0, 60.0]), np.array([10.0, 60.0, 64.0])
    p, q = a.copy(), a + [0.0, 3.0, -3.0]
    gt = pairs([a, b], [a + offset_golgi, b + offset_golgi])
    pred = pairs([p, q], [p + offset_golgi, q + offset_golgi])
    score = score_pairs(gt, pred, image_shape=SHAPE)
    matched = dict(zip(score.matches["pred_index"].tolist(), score.matches["gt_index"].tolist()))
    assert matched == {0: 1, 1: 0}
    # Distances 4.0 (p–b) and 4.243 (q–a): both TP while τ_g >= 4.243 (levels 0-4), p–b alone at
    # level 5 (τ_g = 4.0, equality), none after.
    np.testing.assert_array_equal(score.tp, [2, 2, 2, 2, 2, 1] + [0] * 8)


# ------------------------------------------------------------------------------------------
# Border exclusion
# ------------------------------------------------------------------------------------------
def test_border_margin_voxels():
    assert border_margin_voxels(7.0, 0.666) == 10  # the paper's int(7 / 0.666)
    assert border_margin_voxels(7.0, 0.5) == 14
    assert border_margin_voxels(7.0, 0.07) == 100  # not 99 through floating-point noise
    assert border_margin_voxels(0.0, 0.5) == 0
    with pytest.raises(CellPolError):
        border_margin_voxels(-1.0, 0.5)


def test_border_exclusion_is_strict_in_plane_only_and_needs_both_ends():
    voxel = (1.0, 0.3, 0.666)  # the margin follows voxel_x: int(7 / 0.666) = 10, Y = 100, X = 80
    shape = (5, 100, 80)
    rows = [  # (nucleus, golgi, kept?)
        ([2, 10.0, 40], [2, 12, 40], False),     # nucleus y == margin
        ([2, 10.01, 40], [2, 12, 40], True),
        ([2, 89.99, 40], [2, 85, 40], True),
        ([2, 90.0, 40], [2, 85, 40], False),     # nucleus y == Y - margin
        ([2, 50, 69.99], [2, 50, 65], True),
        ([2, 50, 65], [2, 50, 70.0], False),     # Golgi x == X - margin: the whole pair goes
        ([2, 50, 10.0], [2, 50, 15], False),     # nucleus x == margin
        ([0, 50, 30], [4.9, 50, 30], True),      # z at the very edges: never checked
        ([-3, 60, 30], [9, 60, 33], True),       # even outside the stack in z
    ]
    gt = pairs([r[0] for r in rows], [r[1] for r in rows], voxel_size=voxel)
    expected = np.array([r[2] for r in rows])
    np.testing.assert_array_equal(inside_border(gt, shape[1:], 10), expected)

    # Scoring refuses points outside the stack (the last two rows' z); within it, z is never checked.
    with pytest.raises(CellPolError, match="3 point"):
        score_pairs(gt, gt, image_shape=shape)
    gt, expected, shape = gt.subset(np.arange(8)), expected[:8], (10, 100, 80)
    score = score_pairs(gt, gt, image_shape=shape)
    assert score.border_margin_voxels == 10 and score.border_excluded
    assert score.n_gt == score.n_pred == expected.sum()
    assert score.n_gt_excluded == score.n_pred_excluded == (~expected).sum()
    assert sorted(score.matches["gt_index"].tolist()) == np.flatnonzero(expected).tolist()
    np.testing.assert_array_equal(score.tp, expected.sum())

    # A prediction at the border is dropped, not counted as FP; GT at the border is not a FN.
    pred = gt.subset(np.array([0, 1, 2]))
    score = score_pairs(gt, pred, image_shape=shape)
    assert score.n_pred == 2
    np.testing.assert_array_equal(score.fp, 0)
    np.testing.assert_array_equal(score.fn, expected.sum() - 2)


def test_border_exclusion_disabled_skipped_or_from_sidecar_shape():
    gt = pairs([[2, 5, 5], [2, 50, 50]], [[2, 6, 6], [2, 52, 50]], voxel_size=(1.0, 0.5, 0.5))
    off = score_pairs(gt, gt, image_shape=(5, 100, 100), border_margin_um=0)
    assert off.n_gt == 2 and off.border_margin_voxels is None
    # Unknown image size: border exclusion cannot be applied, so scoring stops (it used to skip it).
    with pytest.raises(CellPolError, match="Cannot apply the 7 µm border exclusion.*border margin of 0"):
        score_pairs(gt, gt)
    unknown = score_pairs(gt, gt, border_margin_um=0)
    assert unknown.n_gt == 2 and not unknown.border_excluded
    assert any("not checked against the image bounds" in w for w in unknown.warnings)
    gt.meta["image_shape_zyx"] = [5, 100, 100]
    from_sidecar = score_pairs(gt, gt)
    assert from_sidecar.border_margin_voxels == 14 and from_sidecar.n_gt == 1
    assert from_sidecar.image_shape == (5, 100, 100)
    # (Y, X) alone is enough for border exclusion.
    assert score_pairs(gt, gt, image_shape=(100, 100)).n_gt == 1
    with pytest.raises(CellPolError):
        score_pairs(gt, gt, border_margin_um=-2)


def test_mismatched_image_sizes_in_sidecars_are_an_error():
    gt = pairs([[2, 50, 50]], [[2, 52, 50]], meta={"image_shape_zyx": [5, 100, 100]})
    pred = pairs([[2, 50, 50]], [[2, 52, 50]], meta={"image_shape_zyx": [5, 100, 120]})
    with pytest.raises(CellPolError, match="different sizes"):
        score_pairs(gt, pred)


# ------------------------------------------------------------------------------------------
# Empty sets, voxel sizes, protocols
# ------------------------------------------------------------------------------------------
def test_empty_ground_truth():
    pred = pairs([[2, 50, 50], [2, 80, 80]], [[2, 52, 50], [2, 82, 80]])
    score = score_pairs(PairSet.empty(ISO), pred, image_shape=SHAPE)
    np.testing.assert_array_equal(score.tp, 0)
    np.testing.assert_array_equal(score.fp, 2)
    np.testing.assert_array_equal(score.fn, 0)
    assert np.all(np.isnan(score.tpr)) and np.all(np.isnan(score.fnr))
    np.testing.assert_array_equal(score.fdr, 1.0)
    assert np.all(np.isnan(score.mean["cos"]))


def test_empty_prediction_and_both_empty():
    gt = pairs([[2, 50, 50], [2, 80, 80]], [[2, 52, 50], [2, 82, 80]])
    score = score_pairs(gt, PairSet.empty(), image_shape=SHAPE)
    np.testing.assert_array_equal(score.tp, 0)
    np.testing.assert_array_equal(score.fn, 2)
    np.testing.assert_array_equal(score.tpr, 0.0)
    np.testing.assert_array_equal(score.fnr, 1.0)
    assert np.all(np.isnan(score.fdr))
    both = score_pairs(PairSet.empty(ISO), PairSet.empty(ISO), image_shape=SHAPE)
    np.testing.assert_array_equal(both.tp + both.fp + both.fn, 0)
    assert both.matches["cos"].size == 0 and both.per_tp_rows() == []


def test_voxel_size_rules():
    gt = pairs([[2, 50, 50]], [[2, 52, 50]], voxel_size=(0.5, 0.5, 0.5))
    other = pairs([[2, 50, 50]], [[2, 52, 50]], voxel_size=(1.0, 0.5, 0.5))
    with pytest.raises(CellPolError, match="different voxel sizes"):
        score_pairs(gt, other, image_shape=SHAPE)
    bare = pairs([[2, 50, 50]], [[2, 52, 50]], voxel_size=None)
    with pytest.raises(CellPolError, match="voxel size"):
        score_pairs(bare, bare, image_shape=SHAPE)
    assert score_pairs(gt, bare, image_shape=SHAPE).voxel_size == (0.5, 0.5, 0.5)
    assert score_pairs(bare, bare, image_shape=SHAPE, voxel_size=(2, 1, 1)).voxel_size == (2.0, 1.0, 1.0)


def test_2d_protocol_from_z1_with_its_own_thresholds():
    gt = pairs([[0, 50, 50]], [[0, 50, 60]])
    pred = pairs([[0, 50, 62.5]], [[0, 50, 60]])  # dN = 12.5 µm: beyond 3D's 12, within 2D's 16.5
    score = score_pairs(gt, pred, image_shape=(1, 200, 200))
    assert score.protocol == "2d" and score.protocol_reason == "image Z == 1"
    # 22 · MAF >= 12.5 for MAF 0.75, 0.70, 0.65, 0.60 → levels 0..3.
    np.testing.assert_array_equal(score.tp, levels_mask(4))
    # cost 12.5 is under the 2D cut-off (20), over the 3D one (10).
    assert score.matches["cost"].tolist() == [12.5]
    forced = score_pairs(gt, pred, image_shape=(1, 200, 200), protocol="3d")
    assert forced.protocol == "3d" and forced.matches["cost"].tolist() == [CAPPED_COST]
    np.testing.assert_array_equal(forced.tp, 0)
    # Unknown Z: every z == 0 → 2D; any z != 0 → 3D.
    assert score_pairs(gt, pred, border_margin_um=0).protocol == "2d"
    assert score_pairs(gt, pairs([[1, 50, 50]], [[1, 50, 60]]), border_margin_um=0).protocol == "3d"
    with pytest.raises(CellPolError):
        score_pairs(gt, pred, protocol="volumetric")


# ------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------
def two_image_scores():
    nuclei = [[10, 50, 50], [10, 100, 100]]
    golgi = [[10, 50, 54], [10, 103, 100]]
    gt = pairs(nuclei, golgi)
    perfect = score_pairs(gt.subset([0]), gt.subset([0]), image_shape=SHAPE, name="A")  # 1 GT, 1 TP
    # B: one hit with the Golgi 1 µm off (TP at levels 0..12), one far-away prediction (FP).
    pred_b = pairs([nuclei[0], [10, 150, 150]], [[10, 50, 55], [10, 150, 153]])
    partial = score_pairs(gt, pred_b, image_shape=SHAPE, name="B")
    return perfect, partial


def test_aggregate_sums_counts_and_averages_rates_and_means():
    perfect, partial = two_image_scores()
    np.testing.assert_array_equal(partial.tp, levels_mask(13))
    result = aggregate([perfect, partial])
    assert result.n_images == 2 and result.protocol == "3d"
    np.testing.assert_array_equal(result.tp, 1 + levels_mask(13))
    np.testing.assert_array_equal(result.fp, 2 - levels_mask(13))
    np.testing.assert_array_equal(result.fn, 2 - levels_mask(13))
    # Rates: mean of per-image rates, not pooled (pooled TPR would be 2/3 at level 0):
    # TPR (1 + 0.5) / 2, and (1 + 0) / 2 at level 13.
    np.testing.assert_allclose(result.tpr, np.where(levels_mask(13), 0.75, 0.5))
    np.testing.assert_allclose(result.fdr, np.where(levels_mask(13), 0.25, 0.5))
    np.testing.assert_allclose(result.fnr, np.where(levels_mask(13), 0.25, 0.5))
    # Metrics: mean of per-image means; B has no TP at level 13 and is skipped there.
    np.testing.assert_allclose(result.mean["error"], np.where(levels_mask(13), 0.5, 0.0))
    np.testing.assert_allclose(result.mean["gd"], np.where(levels_mask(13), 0.5, 0.0))
    np.testing.assert_allclose(result.mean["nd"], 0.0)
    # Each image has a single TP per level: sample std (ddof=1) is NaN, and so is their average.
    assert np.all(np.isnan(result.std["error"]))
    # B's TP: v = (0, 0, 5) vs v_gt = (0, 0, 4): same direction, cos = 1 (A: 1 too).
    np.testing.assert_allclose(result.mean["cos"], 1.0)


def test_aggregate_rejects_nothing_and_mixed_protocols():
    with pytest.raises(CellPolError):
        aggregate([])
    gt = pairs([[0, 50, 50]], [[0, 50, 60]])
    two_d = score_pairs(gt, gt, image_shape=(1, 200, 200))
    three_d = score_pairs(gt, gt, image_shape=(5, 200, 200))
    with pytest.raises(CellPolError, match="different protocols"):
        aggregate([two_d, three_d])


def test_format_table_lists_every_level():
    result = aggregate(list(two_image_scores()))
    text = format_table(result)
    lines = text.strip().splitlines()
    assert "TPR" in lines[2] and "FDR" in lines[2] and "GD" in lines[2]
    body = lines[4:]
    assert len(body) == 14
    first = body[0].split()
    assert first[:7] == ["0", "0.75", "12.0", "6.0", "2", "1", "1"]
    assert first[7:9] == ["0.750", "0.250"]
    assert body[13].split()[1:4] == ["0.10", "1.6", "0.8"]
    single = format_table(result.images[1]).splitlines()
    assert single[0].startswith("B, 3D protocol") and len(single) == 4 + 14
    assert single[4 + 13].split()[4:7] == ["0", "2", "2"]  # B at level 13: no TP, 2 FP, 2 FN


# ------------------------------------------------------------------------------------------
# Folders and files
# ------------------------------------------------------------------------------------------
def write_set(folder, stem, nuclei, golgi, voxel_size=ISO, shape=(40, 200, 200)):
    meta = {"image_shape_zyx": list(shape)} if shape is not None else {}
    write_pairs(folder / f"{stem}.vectors.csv", pairs(nuclei, golgi, voxel_size=voxel_size, meta=meta))


@pytest.fixture
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    # a: perfect. b: one border pair in GT (x = 5 < margin 7) that the sidecar shape excludes.
    write_set(gt_dir, "a", [[5, 50, 50], [5, 90, 90]], [[5, 52, 50], [6, 90, 93]])
    write_set(pred_dir, "a", [[5, 50, 50], [5, 90, 90]], [[5, 52, 50], [6, 90, 93]])
    write_set(gt_dir, "b", [[5, 60, 60], [5, 60, 5]], [[5, 63, 60], [5, 62, 5]])
    write_set(pred_dir, "b", [[5, 60, 61]], [[5, 63, 61]])
    write_set(gt_dir, "c", [[5, 70, 70]], [[5, 72, 70]])   # no prediction
    write_set(pred_dir, "d", [[5, 70, 70]], [[5, 72, 70]])  # no ground truth
    return gt_dir, pred_dir


def test_evaluate_folders_end_to_end(folders):
    gt_dir, pred_dir = folders
    calls = []
    result = evaluate_folders(gt_dir, pred_dir, progress=lambda d, t, m: calls.append((d, t)))
    assert [s.name for s in result.images] == ["a", "b", "c"]
    assert result.skipped == ["d"]
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    a, b, c = result.images
    np.testing.assert_array_equal(a.tp, 2)
    assert b.border_margin_voxels == 7 and b.n_gt == 1 and b.n_gt_excluded == 1
    # b: nucleus and Golgi both 1 µm off in x → TP while τ_g >= 1 (levels 0..12).
    np.testing.assert_array_equal(b.tp, levels_mask(13))
    np.testing.assert_array_equal(c.fn, 1)
    np.testing.assert_array_equal(c.tpr, 0.0)
    assert any("no prediction file" in w for w in c.warnings)
    assert any(w.startswith("c: no prediction file") for w in result.warnings)
    assert any(w.startswith("d: prediction without ground truth") for w in result.warnings)
    np.testing.assert_array_equal(result.tp, 3 * np.ones(14, int) - (1 - levels_mask(13)))
    np.testing.assert_array_equal(result.fn, 1 + (1 - levels_mask(13)))
    np.testing.assert_allclose(result.tpr[0], (1 + 1 + 0) / 3)


def test_evaluate_folders_errors(folders, tmp_path):
    gt_dir, pred_dir = folders
    with pytest.raises(CellPolError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", pred_dir)
    with pytest.raises(CellPolError, match="same"):
        evaluate_folders(gt_dir, gt_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CellPolError, match="No predicted vectors"):
        evaluate_folders(gt_dir, empty)
    other = tmp_path / "other"
    other.mkdir()
    write_set(other, "zzz", [[5, 70, 70]], [[5, 72, 70]])
    with pytest.raises(CellPolError, match="No file names in common"):
        evaluate_folders(gt_dir, other)
    # Different voxel size in one prediction: a clear error naming the image, unless overridden.
    write_set(pred_dir, "a", [[5, 50, 50]], [[5, 52, 50]], voxel_size=(2.0, 1.0, 1.0))
    with pytest.raises(CellPolError, match="^a: .*different voxel sizes"):
        evaluate_folders(gt_dir, pred_dir)
    assert evaluate_folders(gt_dir, pred_dir, voxel_size=(1, 1, 1)).images[0].voxel_size == (1.0, 1.0, 1.0)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_write_evaluation_creates_tables_and_a_real_png(folders, tmp_path):
    result = evaluate_folders(*folders)
    out = tmp_path / "report" / "nested"
    paths = write_evaluation(result, out)
    assert set(paths) == {"per_image", "summary", "per_tp", "curves", "warnings"}
    for path in paths.values():
        assert path.parent == out and path.is_file() and path.stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp files

    per_image = read_csv(paths["per_image"])
    assert len(per_image) == 3 * 14
    assert per_image[0]["image"] == "a" and per_image[0]["level"] == "0" and per_image[0]["maf"] == "0.75"
    c_row = [r for r in per_image if r["image"] == "c"][0]
    assert c_row["fdr"] == "" and c_row["tpr"] == "0" and c_row["cos_mean"] == ""  # NaN → empty cell

    summary = read_csv(paths["summary"])
    assert len(summary) == 14
    assert [int(r["tp"]) for r in summary] == result.tp.tolist()
    assert float(summary[0]["tau_nucleus_um"]) == 12.0 and float(summary[13]["tau_golgi_um"]) == 0.8
    assert {"cos_mean", "cos_paper_mean", "error_mean_um", "nd_mean_um", "gd_mean_um", "fnr"} <= set(summary[0])

    per_tp = read_csv(paths["per_tp"])
    assert len(per_tp) == int(result.tp.sum())
    assert {"image", "level", "gt_id", "pred_id", "cos", "cos_paper", "error_um", "nd_um", "gd_um"} <= set(per_tp[0])

    png = paths["curves"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(paths["curves"])
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 800
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20


def test_module_imports_no_matplotlib_or_qt():
    code = (
        "import sys, app.core.evaluate; "
        "bad = [m for m in ('matplotlib', 'PySide6', 'vtk', 'pyqtgraph') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
