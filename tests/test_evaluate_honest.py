"""Evaluation never scores silently wrong: file naming, missing predictions, image sizes, points outside
the image, warnings that reach the user, and matching that scales without a dense cost matrix."""

from __future__ import annotations

import csv
import math
import sys
import time
import tracemalloc

import numpy as np
import pytest
import tifffile
from scipy.spatial.distance import cdist

from app.cli import flag_hint
from app.core import evaluate
from app.core.errors import CellPolError
from app.core.evaluate import (
    CAPPED_COST,
    NO_PREDICTION,
    evaluate_folders,
    format_table,
    hungarian_match,
    match_within_radius,
    points_outside_image,
    score_pairs,
    write_evaluation,
)
from app.core.pairs import PairSet, write_pairs
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import evaluate_scale  # noqa: E402  (the benchmark's cell layout, one generator for both)

ISO = (1.0, 1.0, 1.0)
SHAPE = (40, 200, 200)


def pairs(nuclei, golgi, voxel_size=ISO, **kwargs) -> PairSet:
    return PairSet(np.asarray(nuclei, float), np.asarray(golgi, float), voxel_size=voxel_size, **kwargs)


def write_set(path, nuclei, golgi, shape=SHAPE, voxel_size=ISO, sources=None):
    meta = {"image_shape_zyx": list(shape)} if shape is not None else {}
    write_pairs(path, pairs(nuclei, golgi, voxel_size=voxel_size, meta=meta, sources=sources))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


ONE_N, ONE_G = [[5, 50, 50]], [[5, 52, 50]]
FAR_N, FAR_G = [[5, 150, 150]], [[5, 152, 150]]


# ------------------------------------------------------------------------------------------
# 1. File names: ground truth <stem>.vectors.csv; predictions <stem>.pred.vectors.csv (or the old name)
# ------------------------------------------------------------------------------------------
def test_prediction_file_wins_over_the_old_name_and_says_so(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G)
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G)  # a perfect prediction (new name)
    write_set(pred_dir / "a.vectors.csv", FAR_N, FAR_G)  # a stale one under the old name
    result = evaluate_folders(gt_dir, pred_dir)
    assert [s.name for s in result.images] == ["a"] and result.skipped == []
    np.testing.assert_array_equal(result.tp, 1)
    assert any("a.pred.vectors.csv and a.vectors.csv" in w and "scored a.pred.vectors.csv" in w
               for w in result.warnings)


def test_old_prediction_names_are_still_read(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G)
    write_set(pred_dir / "a.vectors.csv", ONE_N, ONE_G, sources="predicted")
    result = evaluate_folders(gt_dir, pred_dir)
    np.testing.assert_array_equal(result.tp, 1)
    assert result.missing == []


def test_predictions_and_autosaves_are_never_ground_truth(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G)
    write_set(gt_dir / "b.pred.vectors.csv", ONE_N, ONE_G)  # a prediction left in the GT folder
    write_set(gt_dir / "c.vectors.autosave.csv", ONE_N, ONE_G)  # work in progress
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G)
    result = evaluate_folders(gt_dir, pred_dir)
    assert [s.name for s in result.images] == ["a"]  # not "b.pred", not "c"
    assert result.missing == []


def test_one_folder_can_hold_ground_truth_and_predictions(tmp_path):
    write_set(tmp_path / "a.vectors.csv", ONE_N, ONE_G)
    write_set(tmp_path / "a.pred.vectors.csv", ONE_N, [[5, 53, 50]])  # Golgi 1 µm off
    result = evaluate_folders(tmp_path, tmp_path)
    assert [s.name for s in result.images] == ["a"]
    assert result.tp[0] == 1 and result.tp[13] == 0  # scored against its prediction, not itself


def test_messages_name_both_patterns(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.pred.vectors.csv", ONE_N, ONE_G)
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G)
    with pytest.raises(CellPolError, match=r"No ground-truth vectors \(\*\.vectors\.csv\).*\*\.pred\.vectors\.csv"):
        evaluate_folders(gt_dir, pred_dir)
    write_set(gt_dir / "b.vectors.csv", ONE_N, ONE_G)
    with pytest.raises(CellPolError, match=r"<name>\.vectors\.csv.*<name>\.pred\.vectors\.csv"):
        evaluate_folders(gt_dir, pred_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CellPolError, match=r"No predicted vectors \(\*\.pred\.vectors\.csv, or \*\.vectors\.csv"):
        evaluate_folders(gt_dir, empty)


def test_ground_truth_that_holds_predictions_is_flagged(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G, sources="predicted")  # swapped folders?
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G)
    result = evaluate_folders(gt_dir, pred_dir)
    assert any("holds a model's predictions" in w for w in result.warnings)


# ------------------------------------------------------------------------------------------
# 2. Ground truth without a prediction file: counted as FN and reported
# ------------------------------------------------------------------------------------------
@pytest.fixture
def with_missing(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G)
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G)
    write_set(gt_dir / "b.vectors.csv", ONE_N + FAR_N, ONE_G + FAR_G)  # no prediction
    return gt_dir, pred_dir


def test_missing_prediction_is_listed_counted_as_fn_and_reported(with_missing, tmp_path):
    result = evaluate_folders(*with_missing)
    assert result.missing == ["b"]
    a, b = result.images
    assert a.status == "scored" and b.status == NO_PREDICTION
    assert b.warnings == ["no prediction file: every ground-truth pair counts as FN"]  # said once
    np.testing.assert_array_equal(b.fn, 2)  # still misses: TPR is not inflated
    np.testing.assert_array_equal(result.fn, 2)
    np.testing.assert_allclose(result.tpr, 0.5)  # (1 + 0) / 2

    text = format_table(result)
    assert "2 image(s), 3D protocol; 1 without predictions" in text.splitlines()[0]
    assert "Images without predictions: 1 of 2 (b); their 2 ground-truth pair(s) count as misses (FN)." in text

    paths = write_evaluation(result, tmp_path / "out")
    per_image = read_csv(paths["per_image"])
    assert {r["image"]: r["status"] for r in per_image} == {"a": "scored", "b": NO_PREDICTION}
    summary = read_csv(paths["summary"])
    assert {r["n_images_without_prediction"] for r in summary} == {"1"}
    assert {r["n_images"] for r in summary} == {"2"}


# ------------------------------------------------------------------------------------------
# 3. Border exclusion needs the image size: from the sidecars or the images, else one clear error
# ------------------------------------------------------------------------------------------
@pytest.fixture
def bare_folders(tmp_path):
    """Vectors without image_shape_zyx (e.g. imported from the authors' CSV); pair 2 near the border."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    nuclei, golgi = [[5, 50, 50], [5, 50, 3]], [[5, 52, 50], [5, 52, 3]]
    for stem in ("a", "b"):
        write_set(gt_dir / f"{stem}.vectors.csv", nuclei, golgi, shape=None)
        write_set(pred_dir / f"{stem}.pred.vectors.csv", nuclei, golgi, shape=None)
    return gt_dir, pred_dir


def write_tif(path, shape_zyx, channels=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    z, y, x = shape_zyx
    tifffile.imwrite(path, np.zeros((z, channels, y, x), np.uint8), imagej=True, metadata={"axes": "ZCYX"})


def test_unknown_image_size_stops_the_run_with_one_message(bare_folders):
    with pytest.raises(CellPolError) as info:
        evaluate_folders(*bare_folders)
    message = str(info.value)
    assert message.startswith("Cannot apply the 7 µm border exclusion to 2 image(s) whose size is unknown: a (")
    assert "b (" in message and "folder of the images" in message and "border margin of 0" in message
    # The message names the settings; the command line adds its flags.
    assert info.value.settings == {"images_dir": None, "border_margin_um": 0}
    assert flag_hint(info.value) == " (command line: --images DIR or --border-margin 0)"
    assert "Traceback" not in message and "\n" not in message


def test_border_margin_zero_scores_without_the_size(bare_folders):
    result = evaluate_folders(*bare_folders, border_margin_um=0)
    assert all(s.n_gt == 2 and not s.border_excluded for s in result.images)
    assert any("not checked against the image bounds" in w for w in result.warnings)


def test_images_folder_gives_the_size(bare_folders, tmp_path):
    images = tmp_path / "images"
    write_tif(images / "a.tif", (10, 100, 100))
    write_tif(images / "b.ome.tif", (10, 100, 100))  # the stem rule of image_stem: "b", not "b.ome"
    (images / "b.vectors.csv").write_text("not an image")  # never taken for an image
    result = evaluate_folders(*bare_folders, images_dir=images)
    for score in result.images:
        assert score.image_shape == (10, 100, 100)
        assert score.border_margin_voxels == 7 and score.n_gt == 1 and score.n_gt_excluded == 1
    np.testing.assert_array_equal(result.tp, 2)


def test_images_folder_with_one_image_missing_names_it(bare_folders, tmp_path):
    images = tmp_path / "images"
    write_tif(images / "a.tif", (10, 100, 100))
    with pytest.raises(CellPolError, match=r"to 1 image\(s\).*: b \(.*no image named b in .*images"):
        evaluate_folders(*bare_folders, images_dir=images)
    with pytest.raises(CellPolError, match="images folder .* does not exist"):
        evaluate_folders(*bare_folders, images_dir=tmp_path / "nowhere")


def test_images_sharing_a_stem_are_told_apart_by_their_whole_name(tmp_path):
    gt_dir, pred_dir, images = tmp_path / "gt", tmp_path / "pred", tmp_path / "images"
    write_tif(images / "x.tif", (10, 100, 100))
    np.save(images / "x.npy", np.zeros((10, 60, 60), np.uint8))
    for name in ("x.tif", "x"):  # batch prediction names both outputs after the whole file name
        write_set(gt_dir / f"{name}.vectors.csv", ONE_N, ONE_G, shape=None)
        write_set(pred_dir / f"{name}.pred.vectors.csv", ONE_N, ONE_G, shape=None)
    with pytest.raises(CellPolError, match=r"^x: Several images .* are named x: x\.npy, x\.tif"):
        evaluate_folders(gt_dir, pred_dir, images_dir=images)
    for path in (gt_dir / "x.vectors.csv", pred_dir / "x.pred.vectors.csv"):
        path.unlink()
    result = evaluate_folders(gt_dir, pred_dir, images_dir=images)
    assert [(s.name, s.image_shape) for s in result.images] == [("x.tif", (10, 100, 100))]


def test_image_of_another_size_than_the_sidecar_is_refused(tmp_path):
    gt_dir, pred_dir, images = tmp_path / "gt", tmp_path / "pred", tmp_path / "images"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G, shape=(10, 100, 100))
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G, shape=(10, 100, 100))
    write_tif(images / "a.tif", (10, 100, 120))
    with pytest.raises(CellPolError, match=r"^a: The image .*a\.tif is 10×100×120 voxels .* made on an image of "
                                           r"10×100×100"):
        evaluate_folders(gt_dir, pred_dir, images_dir=images)


def test_image_axes_for_images_whose_header_does_not_tell(bare_folders, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("a", "b"):
        np.save(images / f"{stem}.npy", np.zeros((10, 100, 100), np.uint8))  # a .npy carries no axes
    with pytest.raises(CellPolError, match="cannot tell the axes of a.npy"):
        evaluate_folders(*bare_folders, images_dir=images)
    kept = evaluate_folders(*bare_folders, images_dir=images, border_margin_um=0)  # the reason is kept
    assert any(w.startswith("a: cannot tell the axes of a.npy") for w in kept.warnings)
    result = evaluate_folders(*bare_folders, images_dir=images, image_axes="ZYX")
    assert [s.image_shape for s in result.images] == [(10, 100, 100)] * 2


def test_score_pairs_refuses_a_border_margin_without_a_size():
    gt = pairs(ONE_N, ONE_G)
    with pytest.raises(CellPolError, match="border exclusion: the image size is unknown"):
        score_pairs(gt, gt)
    assert score_pairs(gt, gt, image_shape=SHAPE).border_excluded


# ------------------------------------------------------------------------------------------
# 4. Vectors outside the image are refused
# ------------------------------------------------------------------------------------------
def test_points_outside_the_image():
    shape = (10, 100, 80)
    ps = pairs([[0, 0, 0], [-0.5, 99.5, 79.5], [-0.51, 50, 50], [5, 50, 50], [5, 50, 50]],
               [[9, 99, 79], [9.5, 50, 50], [5, 50, 50], [5, 100.2, 50], [5, 50, 79.6]])
    np.testing.assert_array_equal(points_outside_image(ps, shape),
                                  [[False, False], [False, False], [True, False], [False, True], [False, True]])
    # Z unknown: z is not checked.
    assert not points_outside_image(ps, (None, 200, 200)).any()
    assert not points_outside_image(ps, (200, 200)).any()


def test_score_pairs_refuses_points_outside_the_image():
    gt = pairs(ONE_N + [[5, 50, 130]], ONE_G + [[5, 52, 131]])
    with pytest.raises(CellPolError, match=r"ground-truth vectors: 2 point\(s\) .* outside the image of 40×200×120"):
        score_pairs(gt, gt.subset([0]), image_shape=(40, 200, 120))
    with pytest.raises(CellPolError, match=r"predicted vectors: 2 point\(s\)"):
        score_pairs(gt.subset([0]), gt, image_shape=(40, 200, 120))
    assert score_pairs(gt, gt, image_shape=SHAPE).n_gt == 2


@pytest.mark.parametrize("which", ["gt", "pred"])
def test_evaluate_folders_names_the_file_with_points_outside(tmp_path, which):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    outside_n, outside_g = ONE_N + [[5, 50, 250]], ONE_G + [[5, 52, 250]]  # x = 250 on a 200-wide image
    write_set(gt_dir / "a.vectors.csv", *((outside_n, outside_g) if which == "gt" else (ONE_N, ONE_G)))
    write_set(pred_dir / "a.pred.vectors.csv", *((outside_n, outside_g) if which == "pred" else (ONE_N, ONE_G)))
    name = "a.vectors.csv" if which == "gt" else "a.pred.vectors.csv"
    with pytest.raises(CellPolError, match=rf"^a: The .*{name}: 2 point\(s\) .* outside the image of 40×200×200"):
        evaluate_folders(gt_dir, pred_dir)
    # Also with border margin 0: points outside are wrong whatever the margin.
    with pytest.raises(CellPolError, match="outside the image"):
        evaluate_folders(gt_dir, pred_dir, border_margin_um=0)


# ------------------------------------------------------------------------------------------
# 5. Every warning reaches the user: printed table and a file beside the tables
# ------------------------------------------------------------------------------------------
def test_table_ends_with_the_warnings_and_the_folder_keeps_them_all(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for k in range(25):  # 25 images whose predictions are empty: one warning each
        write_set(gt_dir / f"img{k:02d}.vectors.csv", ONE_N, ONE_G)
        empty = PairSet.empty(ISO, meta={"image_shape_zyx": list(SHAPE)})
        write_pairs(pred_dir / f"img{k:02d}.pred.vectors.csv", empty)
    write_set(pred_dir / "extra.pred.vectors.csv", ONE_N, ONE_G)  # no ground truth
    result = evaluate_folders(gt_dir, pred_dir)
    assert len(result.warnings) == 26
    lines = format_table(result).rstrip("\n").splitlines()
    assert "Predictions without ground truth (not scored): 1 (extra)." in lines
    start = lines.index("Warnings (26):")
    assert lines[start + 1] == "  - img00: no predicted pairs (after border exclusion): FDR undefined"
    assert len(lines[start + 1:]) == 21 and lines[-1].startswith("  … and 6 more")
    assert format_table(result, max_warnings=100).count("\n  - ") == 26

    paths = write_evaluation(result, tmp_path / "out")
    assert paths["warnings"].read_text(encoding="utf-8").splitlines() == result.warnings


def test_single_image_table_shows_its_warnings_and_a_clean_run_says_so(tmp_path):
    score = score_pairs(pairs(ONE_N, ONE_G), PairSet.empty(ISO), image_shape=SHAPE, name="x")
    assert format_table(score).rstrip().endswith("  - no predicted pairs (after border exclusion): FDR undefined")
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_set(gt_dir / "a.vectors.csv", ONE_N, ONE_G)
    write_set(pred_dir / "a.pred.vectors.csv", ONE_N, ONE_G)
    clean = evaluate_folders(gt_dir, pred_dir)
    assert clean.warnings == [] and "Warnings" not in format_table(clean)
    paths = write_evaluation(clean, tmp_path / "out")
    assert paths["warnings"].read_text(encoding="utf-8") == "No warnings.\n"


# ------------------------------------------------------------------------------------------
# 6. Matching within a radius: the dense optimum, without the dense matrix
# ------------------------------------------------------------------------------------------
def dense_match(pred_n, pred_g, gt_n, gt_g, cutoff):
    """The previous implementation: the full capped cost matrix and one linear_sum_assignment."""
    if len(pred_n) and len(gt_n):
        cost = cdist(pred_n, gt_n) + cdist(pred_g, gt_g)
    else:
        cost = np.zeros((len(pred_n), len(gt_n)))
    rows, cols, capped = hungarian_match(cost, cutoff)
    return rows, cols, capped, cost


def random_sets(seed, n_pred, n_gt, extent=60.0, noise=3.0):
    """Predictions near a random subset of the ground truth plus strays, in µm: many conflicts."""
    rng = np.random.default_rng(seed)
    gt_n = rng.uniform(0, extent, (n_gt, 3))
    gt_g = gt_n + rng.normal(0, 3, (n_gt, 3))
    near = rng.integers(0, n_gt, n_pred)
    pred_n = gt_n[near] + rng.normal(0, noise, (n_pred, 3))
    pred_g = gt_g[near] + rng.normal(0, noise, (n_pred, 3))
    strays = rng.random(n_pred) < 0.3
    pred_n[strays] = rng.uniform(0, extent, (strays.sum(), 3))
    pred_g[strays] = pred_n[strays] + rng.normal(0, 3, (strays.sum(), 3))
    return pred_n, pred_g, gt_n, gt_g


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dense_limit", [evaluate._DENSE_COMPONENT_ENTRIES, 0], ids=["dense-components", "sparse"])
def test_radius_matching_equals_the_dense_assignment(seed, dense_limit, monkeypatch):
    monkeypatch.setattr(evaluate.matching, "_DENSE_COMPONENT_ENTRIES", dense_limit)  # read where the solver lives
    n_pred, n_gt = [(40, 50), (60, 45), (80, 80), (25, 70)][seed % 4]
    pred_n, pred_g, gt_n, gt_g = random_sets(seed, n_pred, n_gt)
    rows_d, cols_d, capped_d, cost = dense_match(pred_n, pred_g, gt_n, gt_g, 10.0)
    rows, cols, capped = match_within_radius(pred_n, pred_g, gt_n, gt_g, 10.0)
    assert len(rows) == len(rows_d) == min(n_pred, n_gt)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)  # one-to-one
    # The same optimum of the capped problem ...
    assert capped.sum() == pytest.approx(capped_d.sum(), rel=1e-12, abs=1e-9)
    np.testing.assert_array_equal(capped, np.where(cost[rows, cols] > 10.0, CAPPED_COST, cost[rows, cols]))
    # ... and exactly the same matches wherever the cap keeps the cost (random data: no ties there).
    kept_dense = {(r, c) for r, c, v in zip(rows_d.tolist(), cols_d.tolist(), capped_d) if v < CAPPED_COST}
    kept = {(r, c) for r, c, v in zip(rows.tolist(), cols.tolist(), capped) if v < CAPPED_COST}
    assert kept == kept_dense and len(kept) > 10


@pytest.mark.parametrize("seed", range(4))
def test_radius_matching_equals_dense_without_capped_ties(seed):
    # Predictions within 1.5 µm of distinct ground truth: every capped entry fails every level, so the
    # whole assignment (not only its kept part) decides nothing that differs; matches are identical.
    rng = np.random.default_rng(100 + seed)
    gt_n = rng.uniform(0, 200, (60, 3))
    gt_g = gt_n + rng.normal(0, 3, (60, 3))
    pick = rng.permutation(60)[:45]
    pred_n = gt_n[pick] + rng.normal(0, 0.5, (45, 3))
    pred_g = gt_g[pick] + rng.normal(0, 0.5, (45, 3))
    rows_d, cols_d, capped_d, _ = dense_match(pred_n, pred_g, gt_n, gt_g, 10.0)
    rows, cols, capped = match_within_radius(pred_n, pred_g, gt_n, gt_g, 10.0)
    np.testing.assert_array_equal(rows, rows_d)
    np.testing.assert_array_equal(cols, cols_d)
    np.testing.assert_array_equal(capped, capped_d)


def test_capped_entries_are_assigned_as_the_dense_solver_does():
    # Every entry is capped (dN + dG > 10), all tied at 2000; p–A (dN 7, dG 5) would pass level 0. The
    # dense solver fills an all-capped block in index order, and so does the radius matching: p–A is
    # matched (a TP at level 0) when p comes first, not when q does, exactly as before.
    gt = pairs([[5, 50, 50], [5, 150, 150]], [[5, 52, 50], [5, 152, 150]])
    p = ([5, 50, 57], [5, 57, 50])
    q = ([5, 100, 20], [5, 102, 20])
    tp_first = []
    for order in ([p, q], [q, p]):
        pred = pairs([o[0] for o in order], [o[1] for o in order])
        rows_d, cols_d, capped_d, _ = dense_match(pred.nuclei, pred.golgi, gt.nuclei, gt.golgi, 10.0)
        rows, cols, capped = match_within_radius(pred.nuclei, pred.golgi, gt.nuclei, gt.golgi, 10.0)
        assert (rows.tolist(), cols.tolist(), capped.tolist()) == (rows_d.tolist(), cols_d.tolist(), capped_d.tolist())
        tp_first.append(int(score_pairs(gt, pred, image_shape=SHAPE, border_margin_um=0).tp[0]))
    assert tp_first == [1, 0]


def tp_counts(pred_n, pred_g, gt_n, gt_g, rows, cols, protocol="3d"):
    tau_n, tau_g = evaluate.thresholds(protocol)
    nd = np.linalg.norm(pred_n[rows] - gt_n[cols], axis=1)
    gd = np.linalg.norm(pred_g[rows] - gt_g[cols], axis=1)
    return ((nd[None] <= tau_n[:, None] + 1e-9) & (gd[None] <= tau_g[:, None] + 1e-9)).sum(axis=1)


@pytest.mark.parametrize("n", [60, 600, 2500])
def test_tp_counts_equal_the_dense_implementation_on_cell_data(n):
    # The protocol's numbers are unchanged on realistic data: cells 12 µm apart, 10 % missed, 10 % strays,
    # 1–1.5 µm noise (some matches capped, some leftovers), at every level.
    for seed in range(3):
        gt, pred, _ = cell_grid(n, seed=seed)
        scale = np.asarray(gt.voxel_size)
        sets = (pred.nuclei * scale, pred.golgi * scale, gt.nuclei * scale, gt.golgi * scale)
        rows_d, cols_d, capped_d, _ = dense_match(*sets, 10.0)
        rows, cols, capped = match_within_radius(*sets, 10.0)
        np.testing.assert_array_equal(tp_counts(*sets, rows, cols), tp_counts(*sets, rows_d, cols_d))
        assert capped.sum() == pytest.approx(capped_d.sum(), rel=1e-12)
        assert (capped_d == CAPPED_COST).sum() > 0  # leftovers were there to be filled


def test_radius_matching_handles_empty_and_unequal_sides():
    empty = np.zeros((0, 3))
    some = np.array([[0.0, 0, 0], [50, 50, 50]])
    for args in ((empty, empty, some, some), (some, some, empty, empty)):
        rows, cols, capped = match_within_radius(*args, 10.0)
        assert rows.size == cols.size == capped.size == 0
    rows, cols, capped = match_within_radius(some[:1], some[:1], some, some, 10.0)
    assert rows.tolist() == [0] and cols.tolist() == [0] and capped.tolist() == [0.0]
    # Far apart: still assigned at the capped cost, as the dense solver does.
    rows, cols, capped = match_within_radius(some[1:] + 100, some[1:] + 100, some, some, 10.0)
    assert len(rows) == 1 and capped.tolist() == [CAPPED_COST]


def cell_grid(n, seed, voxel=(1.0, 0.666, 0.666), spacing=12.0):
    """n cells on a jittered 12 µm grid; predictions: 90 % found with 1–1.5 µm noise, 10 % strays."""
    sets = evaluate_scale.cell_grid(n, seed, voxel, spacing)
    return (PairSet(sets["gt_n"], sets["gt_g"], voxel_size=voxel), PairSet(sets["pred_n"], sets["pred_g"],
                                                                           voxel_size=voxel), sets["shape"])


def test_two_hundred_thousand_pairs_a_side_score_fast_in_little_memory():
    gt, pred, shape = cell_grid(200_000, seed=1)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        score = score_pairs(gt, pred, image_shape=shape)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The dense matrix alone would be 200k × 200k × 8 B = 320 GB; this stays under 300 MB.
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert seconds < 30, f"{seconds:.1f} s"  # about 1 s on 2 cores
    assert len(score.matches["gt_index"]) == min(score.n_gt, score.n_pred)
    assert 0.85 < score.tpr[0] < 0.92 and score.tpr[5] > 0.85 and score.fdr[0] < 0.15


# ------------------------------------------------------------------------------------------
# The paper's rounded |cos|, now vectorised: identical to the loop it replaces
# ------------------------------------------------------------------------------------------
def cos_paper_loop(a_vox, b_vox):
    out = np.full(len(a_vox), np.nan)
    for k, (a, b) in enumerate(zip(a_vox[:, [1, 2, 0]], b_vox[:, [1, 2, 0]])):
        a_list, b_list = a.tolist(), b.tolist()
        numerator = sum(p * q for p, q in zip(a_list, b_list))
        denominator = round(math.sqrt(sum(p * p for p in a_list)), 3) * round(
            math.sqrt(sum(q * q for q in b_list)), 3
        )
        if denominator > 0:
            out[k] = abs(round(numerator / denominator, 3))
    return out


def test_cos_paper_is_the_papers_rounding_exactly():
    rng = np.random.default_rng(7)
    a = rng.normal(0, 6, (20000, 3))
    b = a + rng.normal(0, 2, (20000, 3))
    a[:2000] = np.round(a[:2000])  # integer voxel differences, as annotations have
    b[:2000] = np.round(b[:2000])
    b[2000:2100] = 0.0  # zero-length vectors: NaN
    a[2100:2200] = [[0.0, 0.0, 0.0005]] * 100  # norms exactly at a rounding half
    a[2200:2300] = [[0.0, 1.0005, 0.0]] * 100
    np.testing.assert_array_equal(evaluate._cosine_paper(a, b), cos_paper_loop(a, b))
    halves = np.array([0.0005, 1.0005, 2.675, 0.1235, -0.0015, 2e6 + 0.0005, 1e13 + 0.5])
    assert evaluate._round3(halves).tolist() == [round(v, 3) for v in halves.tolist()]  # Python's round
