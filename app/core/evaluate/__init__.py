"""Scoring predicted polarity vectors against ground truth (the 3DCellPol protocol).

This reproduces the evaluation of the 3DCellPol paper (``cellpol-spec.md`` §4) so that numbers stay
comparable, with two deliberate, documented differences in the per-TP cosine (see below).

Protocol
--------
1. **Units.** Every distance is in µm: voxel differences ``(z, y, x)`` are scaled by the voxel size
   before taking norms. Ground truth and prediction must share one voxel size.
2. **Border exclusion.** ``margin = int(border_margin_um / voxel_x)`` voxels (paper: int(7 / 0.666) =
   10) in the two in-plane axes (y, x) only; z is not checked. A pair is kept only if *both* its
   nucleus and its Golgi satisfy ``margin < coord < dim - margin`` strictly. Applied to ground truth
   and prediction alike. Needs the image size (Y, X): from the caller, the images, or the sidecars'
   ``image_shape_zyx``; without it scoring stops with one error (a border margin of 0 keeps every
   pair) rather than silently scoring border pairs the paper leaves out.
3. **Matching.** One global Hungarian assignment on ``cost = dN + dG`` (µm). Entries above the
   cut-off (10 µm in 3D, 20 µm in 2D) are set to 2000, as in the paper: such pairs can still be
   assigned, and still count as TP at a level whose thresholds they pass, because that test uses the
   true distances. The assignment is computed once and re-tested at every level. It is solved on the
   pairs that can matter (:func:`match_within_radius`): pairs within the cut-off, found with a k-d
   tree, split into connected components, each solved with
   :func:`scipy.optimize.linear_sum_assignment`; what is left is paired in index order at the capped
   cost. This is an optimum of the dense capped matrix (the same matches among the kept entries where
   that optimum is unique), in memory proportional to the pairs within the cut-off. Among the capped
   entries, all of equal cost 2000, any choice is optimal: the dense solver's came from its scan order,
   and this one can differ from it only there (on cell-like test data the TP counts are the same at
   every level; tests/test_evaluate_honest.py).
4. **Levels.** ``MAF = 0.75, 0.70, ..., 0.10`` (14 levels, τL = 0..13). A matched pair is a TP at a
   level iff ``dN <= τ_n`` and ``dG <= τ_g`` with ``τ_n = 16·MAF`` µm and ``τ_g = 8·MAF`` µm (2D:
   ``22·MAF`` and ``14·MAF``). A tolerance of 1e-9 µm absorbs floating-point noise at exact ties.
5. **Counts and rates.** ``FP = #pred - TP``, ``FN = #GT - TP``, ``TPR = TP / #GT``,
   ``FDR = FP / (FP + TP)`` (what the paper calls "FPR"; it is 1 when TP = 0 and FP > 0),
   ``FNR = FN / #GT``. Where the paper's code would divide by zero we define: TPR = FNR = NaN when
   there is no ground truth, FDR = NaN when there is no prediction. Aggregates skip NaN.
6. **Per-TP metrics.** ``cos``: cosine similarity between ``v = G - N`` and ``v_gt``, **signed and in
   µm** (our fix: the paper's absolute value hides reversed vectors, and raw voxel differences distort
   angles in anisotropic images). ``cos_paper``: the paper's exact variant, ``|cos|`` of raw voxel
   differences with norms and result rounded to 3 decimals, kept for comparison with published
   numbers. ``error``: ``‖v - v_gt‖`` in µm. ``nd``/``gd``: nucleus/Golgi distance in µm.
   Cosine is NaN where a vector has zero length.
7. **Per image and level**: mean and sample standard deviation (``ddof=1``, as the paper's pandas
   ``std``; NaN with fewer than two TPs) of each per-TP metric.
8. **Across images**: TPR/FDR/FNR and the per-image means and stds are averaged (NaN skipped);
   TP/FP/FN are summed. An image whose prediction file is missing counts: all its ground truth is FN
   (TPR 0), and the result lists it (:attr:`EvaluationResult.missing`).

Checks
------
Points outside the image (a coordinate below -0.5 or above ``dim - 0.5`` voxels, the outer edges of
the first and last voxel, as training and the app refuse them) are refused with one error whenever
the image size is known: such vectors were made for another image or in other units.

Files (:func:`evaluate_folders`)
--------------------------------
Ground truth: ``<stem>.vectors.csv``. Predictions: ``<stem>.pred.vectors.csv``, or, as older versions
wrote them, ``<stem>.vectors.csv`` (the ``.pred`` file wins when both exist). Autosaves are never
read. Images (optional, for their size): ``<stem>.tif`` etc., the stem rule of
:func:`app.core.batch.image_stem`.

Everything here is pure numpy/scipy; matplotlib (Agg, no pyplot) is imported only to draw the curves.

Modules
-------
:mod:`~app.core.evaluate.protocol` the levels, thresholds and protocols; :mod:`~app.core.evaluate.matching` the
assignment; :mod:`~app.core.evaluate.scoring` one image (:func:`score_pairs`); :mod:`~app.core.evaluate.results`
the scores and :func:`aggregate`; :mod:`~app.core.evaluate.folders` folders of files (:func:`evaluate_job`);
:mod:`~app.core.evaluate.report` tables, CSV files and curves; :mod:`~app.core.evaluate.mistakes` the false positives
and misses at a level, with their positions. Everything public is importable from here.
"""

from __future__ import annotations

from app.core.evaluate.folders import evaluate_folders, evaluate_job
from app.core.evaluate.matching import _DENSE_COMPONENT_ENTRIES, hungarian_match, match_within_radius
from app.core.evaluate.mistakes import (
    FALSE_POSITIVE,
    MISS,
    Mistake,
    Mistakes,
    find_image,
    find_mistakes,
    read_mistakes,
)
from app.core.evaluate.protocol import (
    CAPPED_COST,
    MAF_LEVELS,
    N_LEVELS,
    PER_TP_METRICS,
    PROTOCOLS,
    Protocol,
    border_margin_voxels,
    thresholds,
)
from app.core.evaluate.report import (
    CURVES,
    MAX_TABLE_WARNINGS,
    PER_IMAGE_COLUMNS,
    PER_TP_COLUMNS,
    SUMMARY_COLUMNS,
    WARNINGS_FILE,
    curve_values,
    format_table,
    write_evaluation,
    write_set_summaries,
)
from app.core.evaluate.results import NO_PREDICTION, EvaluationResult, ImageScore, aggregate
from app.core.evaluate.scoring import (
    OUTSIDE_TOLERANCE_VOXELS,
    _cosine_paper,
    _round3,
    inside_border,
    points_outside_image,
    score_pairs,
)

__all__ = [
    # protocol
    "MAF_LEVELS", "N_LEVELS", "PROTOCOLS", "PER_TP_METRICS", "CAPPED_COST", "Protocol", "thresholds",
    "border_margin_voxels",
    # matching
    "hungarian_match", "match_within_radius",
    # scoring one image
    "OUTSIDE_TOLERANCE_VOXELS", "inside_border", "points_outside_image", "score_pairs",
    # results
    "NO_PREDICTION", "ImageScore", "EvaluationResult", "aggregate",
    # folders
    "evaluate_folders", "evaluate_job",
    # reporting
    "MAX_TABLE_WARNINGS", "PER_IMAGE_COLUMNS", "PER_TP_COLUMNS", "SUMMARY_COLUMNS", "WARNINGS_FILE", "format_table",
    "write_evaluation", "CURVES", "curve_values", "write_set_summaries",
    # mistakes at a level
    "FALSE_POSITIVE", "MISS", "Mistake", "Mistakes", "find_image", "find_mistakes", "read_mistakes",
]
# Private names that tests import from here: _DENSE_COMPONENT_ENTRIES (read it here; patch it in
# app.core.evaluate.matching, where the solver reads it), _cosine_paper, _round3 (re-exported above, not part of
# __all__).
