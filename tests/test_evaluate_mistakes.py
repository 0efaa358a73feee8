"""The false positives and misses of an evaluation at a level (app.core.evaluate.mistakes), on tiny hand-made vectors
files whose mistakes are known by construction."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest

from app.core.errors import CellPolError
from app.core.evaluate import (
    FALSE_POSITIVE,
    MISS,
    N_LEVELS,
    evaluate_folders,
    find_mistakes,
    read_mistakes,
)
from app.core.pairs import PairSet, write_pairs

ISO = (1.0, 1.0, 1.0)
SHAPE = [20, 200, 200]  # (Z, Y, X); the 7 µm border keeps 7 < y, x < 193


def write(folder, stem, nuclei, golgi, scores=None, predicted=False):
    folder.mkdir(parents=True, exist_ok=True)
    pairs = PairSet(np.asarray(nuclei, float), np.asarray(golgi, float), voxel_size=ISO, scores=scores,
                    sources="predicted" if predicted else "manual", meta={"image_shape_zyx": SHAPE})
    name = f"{stem}.pred.vectors.csv" if predicted else f"{stem}.vectors.csv"
    return write_pairs(folder / name, pairs)


@pytest.fixture
def folders(tmp_path):
    """Image "a": ground truth rows 0..3, prediction rows 0..4.

    gt 0 (10, 50, 50) ← pred 2, exact: a TP at every level.
    gt 1 (10, 100, 100) ← pred 0, nucleus and Golgi 5 µm off in x: a TP while τ_n >= 5 and τ_g >= 5, i.e. τL 0..2
         (τ_g = 6.0, 5.6, 5.2), then a false positive (pred 0) and a miss (gt 1).
    gt 2 (10, 150, 60): nothing near: a miss at every level.
    gt 3 (10, 3, 100): inside the image but within the border margin: neither.
    pred 1 (10, 60, 160) score 0.40 and pred 3 (10, 170, 170) score 0.95: false positives at every level.
    pred 4 (10, 100, 196): within the border margin: neither.
    """
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write(gt_dir, "a", [[10, 50, 50], [10, 100, 100], [10, 150, 60], [10, 3, 100]],
          [[10, 54, 50], [10, 104, 100], [10, 154, 60], [10, 5, 100]])
    write(pred_dir, "a", [[10, 100, 105], [10, 60, 160], [10, 50, 50], [10, 170, 170], [10, 100, 196]],
          [[10, 104, 105], [10, 64, 160], [10, 54, 50], [10, 174, 170], [10, 104, 196]],
          scores=[0.7, 0.40, 0.9, 0.95, 0.99], predicted=True)
    return gt_dir, pred_dir


def described(found):
    return [(m.image, m.kind, m.row) for m in found]


def test_false_positives_and_misses_are_the_known_ones_sorted_by_score_then_misses(folders):
    gt_dir, pred_dir = folders
    result = evaluate_folders(gt_dir, pred_dir)
    at_0 = find_mistakes(result, 0, gt_dir, pred_dir)
    assert described(at_0) == [("a", FALSE_POSITIVE, 3), ("a", FALSE_POSITIVE, 1), ("a", MISS, 2)]
    fp, _, miss = at_0
    assert fp.nucleus == (10.0, 170.0, 170.0) and fp.golgi == (10.0, 174.0, 170.0)
    assert fp.score == pytest.approx(0.95) and fp.file.name == "a.pred.vectors.csv"
    assert miss.nucleus == (10.0, 150.0, 60.0) and math.isnan(miss.score) and miss.file.name == "a.vectors.csv"

    at_3 = find_mistakes(result, 3, gt_dir, pred_dir)  # the 5 µm-off pair is no longer a TP
    assert described(at_3) == [("a", FALSE_POSITIVE, 3), ("a", FALSE_POSITIVE, 0), ("a", FALSE_POSITIVE, 1),
                               ("a", MISS, 1), ("a", MISS, 2)]
    assert at_3[1].score == pytest.approx(0.7) and at_3[1].nucleus == (10.0, 100.0, 105.0)


def test_counts_agree_with_the_evaluation_at_every_level(folders):
    gt_dir, pred_dir = folders
    result = evaluate_folders(gt_dir, pred_dir)
    found = read_mistakes(result, gt_dir, pred_dir)
    for level in range(N_LEVELS):
        at = found.at(level)
        assert sum(m.kind == FALSE_POSITIVE for m in at) == result.fp[level]
        assert sum(m.kind == MISS for m in at) == result.fn[level]


def test_border_excluded_pairs_are_neither_unless_the_margin_is_zero(folders):
    gt_dir, pred_dir = folders
    kept_all = evaluate_folders(gt_dir, pred_dir, border_margin_um=0)
    at_0 = described(find_mistakes(kept_all, 0, gt_dir, pred_dir))
    assert ("a", MISS, 3) in at_0 and ("a", FALSE_POSITIVE, 4) in at_0
    assert at_0[0] == ("a", FALSE_POSITIVE, 4)  # score 0.99: the most confident first
    with_border = described(find_mistakes(evaluate_folders(gt_dir, pred_dir), 0, gt_dir, pred_dir))
    assert ("a", MISS, 3) not in with_border and ("a", FALSE_POSITIVE, 4) not in with_border


def test_images_in_order_predictions_without_scores_last_and_missing_predictions_all_misses(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for stem in ("b", "a", "c"):
        write(gt_dir, stem, [[5, 40, 40], [5, 80, 80]], [[5, 43, 40], [5, 83, 80]])
    write(pred_dir, "b", [[5, 120, 120]], [[5, 123, 120]], scores=[0.2], predicted=True)
    write(pred_dir, "a", [[5, 40, 40], [5, 150, 150]], [[5, 43, 40], [5, 153, 150]], scores=[0.8, float("nan")],
          predicted=True)
    # "c" has no prediction file: both its pairs are misses.
    result = evaluate_folders(gt_dir, pred_dir)
    assert result.missing == ["c"]
    assert described(find_mistakes(result, 0, gt_dir, pred_dir)) == [
        ("b", FALSE_POSITIVE, 0), ("a", FALSE_POSITIVE, 1),  # score 0.2, then no score
        ("a", MISS, 1), ("b", MISS, 0), ("b", MISS, 1), ("c", MISS, 0), ("c", MISS, 1),
    ]


def test_same_folder_and_changed_files_and_bad_levels(tmp_path):
    folder = tmp_path / "both"
    write(folder, "a", [[5, 40, 40]], [[5, 43, 40]])
    write(folder, "a", [[5, 90, 90]], [[5, 93, 90]], scores=[0.5], predicted=True)
    result = evaluate_folders(folder, folder)
    assert described(find_mistakes(result, 0, folder, folder)) == [("a", FALSE_POSITIVE, 0), ("a", MISS, 0)]
    for level in (-1, 14, 1.5, True):
        with pytest.raises(CellPolError, match="level"):
            find_mistakes(result, level, folder, folder)
    write(folder, "a", [[5, 90, 90], [5, 60, 60]], [[5, 93, 90], [5, 63, 60]], scores=[0.5, 0.5], predicted=True)
    with pytest.raises(CellPolError, match="changed since the evaluation"):
        read_mistakes(result, folder, folder)


def test_docstring_example_runs():
    module = importlib.import_module("app.core.evaluate.mistakes")
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert outcome.attempted > 0 and outcome.failed == 0
