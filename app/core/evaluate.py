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
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from app.core.errors import CellPolError
from app.core.fileutil import atomic_path, atomic_write_text, ensure_folder
from app.core.jobs import (CancelToken, Job, JobWarning, Progress, ProgressCallback, Result, check_cancel,
                           progress_to_callback)
from app.core.jobs import run as run_job
from app.core.pairs import (
    PREDICTION_SUFFIX,
    VECTORS_SUFFIX,
    PairSet,
    read_pairs,
    read_sidecar,
    vectors_content,
    vectors_stem,
)
from app.core.volume import parse_voxel_size

__all__ = [
    "MAF_LEVELS",
    "N_LEVELS",
    "PROTOCOLS",
    "PER_TP_METRICS",
    "CAPPED_COST",
    "Protocol",
    "ImageScore",
    "EvaluationResult",
    "thresholds",
    "border_margin_voxels",
    "inside_border",
    "hungarian_match",
    "match_within_radius",
    "points_outside_image",
    "score_pairs",
    "aggregate",
    "evaluate_folders",
    "format_table",
    "write_evaluation",
]

#: Maximum-allowed-fraction levels, τL = 0 (MAF 0.75, loosest) … 13 (MAF 0.10, strictest).
MAF_LEVELS: np.ndarray = np.round(0.75 - 0.05 * np.arange(14), 2)
MAF_LEVELS.setflags(write=False)
N_LEVELS = len(MAF_LEVELS)

#: Cost given to assignment entries above the cut-off (the paper's value).
CAPPED_COST = 2000.0

#: Per-TP metrics, in the order they appear in tables.
PER_TP_METRICS = ("cos", "cos_paper", "error", "nd", "gd")

#: Absorbs floating-point noise when a distance equals a threshold (µm).
_TIE_TOLERANCE_UM = 1e-9

#: A point lies outside the image beyond this many voxels past the centre of the first or last voxel.
OUTSIDE_TOLERANCE_VOXELS = 0.5

#: Status of an image whose ground truth has no prediction file (its pairs are all FN).
NO_PREDICTION = "no prediction file"

#: Components of the candidate graph up to this many rows × columns are solved densely
#: (:func:`scipy.optimize.linear_sum_assignment`); larger ones with the sparse LAPJVsp solver.
_DENSE_COMPONENT_ENTRIES = 1_000_000

#: Points per k-d tree query in :func:`match_within_radius` (bounds its working memory).
_QUERY_CHUNK = 65_536

#: Warnings :func:`format_table` prints before summarising the rest as a count.
MAX_TABLE_WARNINGS = 20


@dataclass(frozen=True)
class Protocol:
    """Threshold factors of one scoring protocol.

    Parameters
    ----------
    name : str
        ``"3d"`` or ``"2d"``.
    nucleus_factor, golgi_factor : float
        ``τ_n = nucleus_factor · MAF`` and ``τ_g = golgi_factor · MAF`` (µm).
    cost_cutoff_um : float
        Assignment costs (``dN + dG``) above this are replaced by :data:`CAPPED_COST`.
    """

    name: str
    nucleus_factor: float
    golgi_factor: float
    cost_cutoff_um: float

    @property
    def tau_nucleus(self) -> np.ndarray:
        """τ_n per level (µm), shape ``(14,)``."""
        return np.round(self.nucleus_factor * MAF_LEVELS, 10)

    @property
    def tau_golgi(self) -> np.ndarray:
        """τ_g per level (µm), shape ``(14,)``."""
        return np.round(self.golgi_factor * MAF_LEVELS, 10)


PROTOCOLS: dict[str, Protocol] = {
    "3d": Protocol("3d", 16.0, 8.0, 10.0),
    "2d": Protocol("2d", 22.0, 14.0, 20.0),
}


def thresholds(protocol: str = "3d") -> tuple[np.ndarray, np.ndarray]:
    """``(τ_n, τ_g)`` in µm for each of the 14 levels of ``protocol`` (``"3d"`` or ``"2d"``)."""
    return _protocol(protocol).tau_nucleus, _protocol(protocol).tau_golgi


def _protocol(name: str) -> Protocol:
    key = str(name).lower()
    if key not in PROTOCOLS:
        raise CellPolError(f"Unknown scoring protocol {name!r}: use '3d', '2d' or 'auto'.")
    return PROTOCOLS[key]


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
@dataclass
class ImageScore:
    """Scores of one image at the 14 levels.

    Attributes
    ----------
    name : str
        Image name (file stem in :func:`evaluate_folders`).
    protocol : str
        ``"3d"`` or ``"2d"``; ``protocol_reason`` says how it was chosen.
    voxel_size : tuple of float
        ``(z, y, x)`` µm used for every distance.
    image_shape : tuple of int or None
        ``(Z, Y, X)`` (Z may be ``None`` when only ``(Y, X)`` was known); ``None`` if unknown.
    border_margin_voxels : int or None
        In-plane margin applied, or ``None`` when the border margin was 0.
    n_gt, n_pred : int
        Pairs scored (after border exclusion).
    n_gt_excluded, n_pred_excluded : int
        Pairs left out by border exclusion.
    tau_nucleus, tau_golgi : ndarray, shape (14,)
        Thresholds per level (µm).
    tp, fp, fn : ndarray of int, shape (14,)
    tpr, fdr, fnr : ndarray of float, shape (14,)
        NaN where undefined (see module docstring).
    mean, std : dict of str to ndarray, shape (14,)
        Per-level mean and sample std of each metric in :data:`PER_TP_METRICS` over the TPs.
    matches : dict of str to ndarray, shape (M,)
        One entry per Hungarian assignment (``M = min(n_gt, n_pred)``): ``gt_index``/``pred_index``
        (rows of the *input* sets), ``gt_id``/``pred_id``, ``cost`` (as assigned, i.e. capped), and the
        per-TP metrics ``cos``, ``cos_paper``, ``error``, ``nd``, ``gd``.
    tp_mask : ndarray of bool, shape (14, M)
        Whether each match is a TP at each level.
    warnings : list of str
        Things the user should know (no prediction file, no pairs left, ...).
    status : str
        ``"scored"``, or :data:`NO_PREDICTION` when the ground truth had no prediction file (scored
        against an empty prediction: every ground-truth pair is a FN).
    """

    name: str
    protocol: str
    protocol_reason: str
    voxel_size: tuple[float, float, float]
    image_shape: Optional[tuple[Optional[int], int, int]]
    border_margin_voxels: Optional[int]
    n_gt: int
    n_pred: int
    n_gt_excluded: int
    n_pred_excluded: int
    tau_nucleus: np.ndarray
    tau_golgi: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tpr: np.ndarray
    fdr: np.ndarray
    fnr: np.ndarray
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    matches: dict[str, np.ndarray]
    tp_mask: np.ndarray
    warnings: list[str] = field(default_factory=list)
    status: str = "scored"

    @property
    def border_excluded(self) -> bool:
        """Whether border exclusion was applied."""
        return self.border_margin_voxels is not None

    def per_level_rows(self) -> list[dict[str, Any]]:
        """One dict per level (the rows of ``evaluation_per_image.csv``)."""
        rows = []
        for level in range(N_LEVELS):
            row: dict[str, Any] = {"image": self.name, "status": self.status}
            row.update(_level_header(level, self.tau_nucleus, self.tau_golgi))
            row.update(n_gt=self.n_gt, n_pred=self.n_pred)
            row.update(_counts_and_metrics(self, level))
            rows.append(row)
        return rows

    def per_tp_rows(self) -> list[dict[str, Any]]:
        """One dict per (level, TP) (the rows of ``evaluation_per_tp.csv``)."""
        rows = []
        for level in range(N_LEVELS):
            header = _level_header(level, self.tau_nucleus, self.tau_golgi)
            for k in np.flatnonzero(self.tp_mask[level]):
                row: dict[str, Any] = {"image": self.name}
                row.update(header)
                for key in ("gt_index", "pred_index", "gt_id", "pred_id"):
                    row[key] = int(self.matches[key][k])
                for key in PER_TP_METRICS:
                    row[_metric_column(key)] = float(self.matches[key][k])
                rows.append(row)
        return rows


@dataclass
class EvaluationResult:
    """Scores of several images and their aggregate per level.

    Attributes
    ----------
    images : list of ImageScore
    protocol : str
        The protocol shared by all images.
    tau_nucleus, tau_golgi : ndarray, shape (14,)
    tp, fp, fn : ndarray of int, shape (14,)
        Summed over images.
    tpr, fdr, fnr : ndarray, shape (14,)
        Averaged over images (NaN skipped).
    mean, std : dict of str to ndarray, shape (14,)
        Averages over images of the per-image means and stds (NaN skipped), as the paper.
    skipped : list of str
        Predictions that had no ground truth (not scored).
    warnings : list of str
        All warnings of the images, prefixed by the image name, plus folder-level ones.
    missing : list of str
        Images with ground truth but no prediction file. They are scored (every ground-truth pair is a
        FN, TPR 0), so the rates are not inflated by leaving them out, and listed here so the user sees
        why.
    """

    images: list[ImageScore]
    protocol: str
    tau_nucleus: np.ndarray
    tau_golgi: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tpr: np.ndarray
    fdr: np.ndarray
    fnr: np.ndarray
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per level (the rows of ``evaluation_summary.csv``)."""
        rows = []
        for level in range(N_LEVELS):
            row = _level_header(level, self.tau_nucleus, self.tau_golgi)
            row["n_images"] = self.n_images
            row["n_images_without_prediction"] = len(self.missing)
            row.update(_counts_and_metrics(self, level))
            rows.append(row)
        return rows

    def per_image_rows(self) -> list[dict[str, Any]]:
        return [row for image in self.images for row in image.per_level_rows()]

    def per_tp_rows(self) -> list[dict[str, Any]]:
        return [row for image in self.images for row in image.per_tp_rows()]


def _metric_column(key: str) -> str:
    return f"{key}_um" if key in ("error", "nd", "gd") else key


def _level_header(level: int, tau_n: np.ndarray, tau_g: np.ndarray) -> dict[str, Any]:
    return {
        "level": level,
        "maf": float(MAF_LEVELS[level]),
        "tau_nucleus_um": float(tau_n[level]),
        "tau_golgi_um": float(tau_g[level]),
    }


def _counts_and_metrics(obj: ImageScore | EvaluationResult, level: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tp": int(obj.tp[level]),
        "fp": int(obj.fp[level]),
        "fn": int(obj.fn[level]),
        "tpr": float(obj.tpr[level]),
        "fdr": float(obj.fdr[level]),
        "fnr": float(obj.fnr[level]),
    }
    for key in PER_TP_METRICS:
        column = _metric_column(key)
        if column.endswith("_um"):
            base = column[: -len("_um")]
            row[f"{base}_mean_um"] = float(obj.mean[key][level])
            row[f"{base}_std_um"] = float(obj.std[key][level])
        else:
            row[f"{key}_mean"] = float(obj.mean[key][level])
            row[f"{key}_std"] = float(obj.std[key][level])
    return row


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
def border_margin_voxels(border_margin_um: float, voxel_x_um: float) -> int:
    """In-plane border margin in voxels: ``int(border_margin_um / voxel_x_um)`` (paper: 10).

    A tiny tolerance keeps e.g. 7 / 0.07 from flooring to 99 through rounding noise.
    """
    if border_margin_um < 0 or not math.isfinite(border_margin_um):
        raise CellPolError(f"The border margin must be a non-negative number of µm, got {border_margin_um}.")
    return int(math.floor(border_margin_um / voxel_x_um + 1e-9))


def inside_border(pairs: PairSet, shape_yx: Sequence[int], margin: int) -> np.ndarray:
    """Boolean mask of pairs whose nucleus *and* Golgi satisfy ``margin < coord < dim - margin``
    in y and x (strict; z is not checked, as in the paper)."""
    dim_y, dim_x = (float(d) for d in shape_yx)
    mask = np.ones(len(pairs), dtype=bool)
    for points in (pairs.nuclei, pairs.golgi):
        y, x = points[:, 1], points[:, 2]
        mask &= (y > margin) & (y < dim_y - margin) & (x > margin) & (x < dim_x - margin)
    return mask


def hungarian_match(cost_um: np.ndarray, cutoff_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One global assignment on ``cost_um`` with entries above ``cutoff_um`` set to 2000.

    Parameters
    ----------
    cost_um : ndarray, shape (n_rows, n_cols)
        ``dN + dG`` in µm. Not modified.
    cutoff_um : float
        Entries strictly greater than this become :data:`CAPPED_COST` (they may still be assigned).

    Returns
    -------
    rows, cols : ndarray of int, shape (min(n_rows, n_cols),)
        Assigned row and column indices.
    capped_cost : ndarray
        The assigned entries of the capped matrix.
    """
    cost = np.asarray(cost_um, dtype=np.float64)
    if cost.ndim != 2:
        raise CellPolError(f"A cost matrix must be 2D, got shape {cost.shape}.")
    if cost.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0)
    capped = np.where(cost > cutoff_um, CAPPED_COST, cost)
    rows, cols = linear_sum_assignment(capped)
    return rows.astype(np.int64), cols.astype(np.int64), capped[rows, cols]


def points_outside_image(pairs: PairSet, image_shape: Sequence[Optional[int]]) -> np.ndarray:
    """Boolean mask, shape ``(N, 2)``, of the nuclei (column 0) and Golgi (column 1) outside the image.

    A point is outside when a coordinate is below -0.5 or above ``dim - 0.5`` voxels (beyond the outer
    edge of the first or last voxel), the rule of training and of the app. ``image_shape`` is ``(Z, Y, X)``
    or ``(Y, X)``; a ``None`` Z leaves z unchecked.
    """
    dims = [None if d is None else float(d) for d in image_shape]
    if len(dims) == 2:
        dims = [None] + dims
    outside = np.zeros((len(pairs), 2), dtype=bool)
    for column, points in enumerate((pairs.nuclei, pairs.golgi)):
        for axis, dim in enumerate(dims):
            if dim is None:
                continue
            coord = points[:, axis]
            outside[:, column] |= (coord < -OUTSIDE_TOLERANCE_VOXELS) | (coord > dim - 1 + OUTSIDE_TOLERANCE_VOXELS)
    return outside


def _refuse_outside(pairs: PairSet, image_shape: Sequence[Optional[int]], label: str) -> None:
    """One :class:`CellPolError` if any point of ``pairs`` (described by ``label``) lies outside the image."""
    if not len(pairs):
        return
    outside = points_outside_image(pairs, image_shape)
    n_outside = int(outside.sum())
    if not n_outside:
        return
    row, column = (int(k) for k in np.argwhere(outside)[0])
    z, y, x = (pairs.nuclei if column == 0 else pairs.golgi)[row]
    raise CellPolError(
        f"{label}: {n_outside} point(s) (of {2 * len(pairs)} nuclei and Golgi) lie outside the image of "
        f"{_fmt_shape(image_shape)} voxels (z × y × x); e.g. pair {int(pairs.ids[row])} has its "
        f"{'nucleus' if column == 0 else 'Golgi'} at x={x:g}, y={y:g}, z={z:g}. Were these vectors made for "
        "another image, or with other units (coordinates are 0-based voxels)?"
    )


def _fmt_shape(shape: Sequence[Optional[int]]) -> str:
    return "×".join("?" if d is None else str(int(d)) for d in shape)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distances, summed in the order :func:`scipy.spatial.distance.cdist` uses,
    so that a cost equal to the cut-off falls on the same side of it as in the dense matrix."""
    d = a - b
    return np.sqrt((d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2])


def match_within_radius(
    pred_nuclei_um: np.ndarray,
    pred_golgi_um: np.ndarray,
    gt_nuclei_um: np.ndarray,
    gt_golgi_um: np.ndarray,
    cutoff_um: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's capped Hungarian assignment without the dense cost matrix.

    Gives an optimum of :func:`hungarian_match` on ``cost = dN + dG`` (the same capped total, and the
    same matches among the entries the cap keeps wherever that optimum is unique, i.e. without exact
    ties), in time and memory proportional to the number of pairs within the cut-off instead of
    ``n_pred × n_gt``:

    1. Candidates: the prediction/ground-truth pairs with ``dN + dG <= cutoff_um`` (the entries the
       dense matrix keeps), found with a k-d tree on the 6-D points ``(nucleus, Golgi)``.
    2. They are matched to maximise ``Σ (2000 - cost)``, which is what minimising the capped total
       means. Their graph splits into connected components, each an independent assignment: solved
       with :func:`scipy.optimize.linear_sum_assignment` on the component's own capped matrix (or, for
       a component too large for that, the sparse LAPJVsp solver).
    3. The rows and columns left over are assigned to each other at the capped cost 2000, in index
       order, as the dense solver does for a block of equal entries (every choice gives the same
       capped total; a leftover pair still counts as TP at a level whose thresholds it passes).

    Parameters
    ----------
    pred_nuclei_um, pred_golgi_um : ndarray, shape (n_pred, 3)
        Predicted positions in µm (rows of the assignment).
    gt_nuclei_um, gt_golgi_um : ndarray, shape (n_gt, 3)
        Ground-truth positions in µm (columns).
    cutoff_um : float
        Costs strictly above this are capped to :data:`CAPPED_COST`.

    Returns
    -------
    rows, cols : ndarray of int, shape (min(n_pred, n_gt),)
        Assigned prediction and ground-truth indices, sorted by row.
    capped_cost : ndarray
        The capped cost of each assignment (``dN + dG``, or 2000).
    """
    pred_n, pred_g = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in (pred_nuclei_um, pred_golgi_um))
    gt_n, gt_g = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in (gt_nuclei_um, gt_golgi_um))
    n_rows, n_cols = len(pred_n), len(gt_n)
    n_assign = min(n_rows, n_cols)
    if n_assign == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0)

    # dN + dG <= cutoff implies sqrt(dN² + dG²) <= cutoff; the slack covers the tree's own rounding.
    reach = float(cutoff_um) * (1 + 1e-9) + 1e-9
    edge_row, edge_col = _pairs_within(np.hstack([pred_n, pred_g]), np.hstack([gt_n, gt_g]), reach)
    cost = _distances(pred_n[edge_row], gt_n[edge_col]) + _distances(pred_g[edge_row], gt_g[edge_col])
    kept = np.flatnonzero(cost <= cutoff_um)  # as cdist(N) + cdist(G) > cutoff: the same floats
    edge_row, edge_col, cost = edge_row[kept], edge_col[kept], cost[kept]
    del kept

    chosen = _max_weight_matching(edge_row, edge_col, cost)
    row_free = np.ones(n_rows, dtype=bool)
    col_free = np.ones(n_cols, dtype=bool)
    row_free[edge_row[chosen]] = False
    col_free[edge_col[chosen]] = False
    n_rest = n_assign - len(chosen)
    rows = np.concatenate([edge_row[chosen], np.flatnonzero(row_free)[:n_rest]])
    cols = np.concatenate([edge_col[chosen], np.flatnonzero(col_free)[:n_rest]])
    capped = np.concatenate([cost[chosen], np.full(n_rest, CAPPED_COST)])
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order], capped[order]


def _pairs_within(
    points: np.ndarray, others: np.ndarray, radius: float, chunk: int = _QUERY_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``‖points[i] - others[j]‖ <= radius``, in memory proportional to their number.

    Nearest-neighbour queries on a k-d tree of ``others`` (all cores for large sets), a chunk of points
    at a time; a point whose k nearest are all within reach is asked again with a larger k, so none is
    missed.
    """
    tree = cKDTree(others)
    found_rows, found_cols = [], []
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        todo = np.arange(len(block))
        k = 8
        while len(todo):
            k_used = min(k, tree.n)
            workers = -1 if len(todo) >= 16_384 else 1  # threads only pay off for many queries
            dist, index = tree.query(block[todo], k=k_used, distance_upper_bound=radius, workers=workers)
            dist, index = dist.reshape(len(todo), k_used), index.reshape(len(todo), k_used)
            hit = np.isfinite(dist)
            more = hit[:, -1] if k_used < tree.n else np.zeros(len(todo), dtype=bool)
            sub_row, sub_col = np.nonzero(hit & ~more[:, None])
            found_rows.append(start + todo[sub_row])
            found_cols.append(index[sub_row, sub_col].astype(np.int64))
            todo, k = todo[more], k * 4
    if not found_rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found_rows).astype(np.int64), np.concatenate(found_cols)


def _max_weight_matching(edge_row: np.ndarray, edge_col: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the edges of a matching that maximises ``Σ (2000 - cost)`` (all costs below 2000).

    This is the capped assignment restricted to these edges: every vertex left unmatched is a capped
    entry of the dense problem. Each connected component is solved on its own: a star (one row or one
    column) by its cheapest edge, others by :func:`scipy.optimize.linear_sum_assignment` on the
    component's capped matrix or, above :data:`_DENSE_COMPONENT_ENTRIES`, by the sparse solver.
    """
    n_edges = len(edge_row)
    if n_edges == 0:
        return np.zeros(0, dtype=np.int64)
    row_ids, local_row = np.unique(edge_row, return_inverse=True)
    col_ids, local_col = np.unique(edge_col, return_inverse=True)
    n_r, n_c = len(row_ids), len(col_ids)
    graph = coo_matrix((np.ones(n_edges, dtype=np.int8), (local_row, n_r + local_col)), shape=(n_r + n_c,) * 2)
    n_components, labels = connected_components(graph, directed=False)
    del graph
    component = labels[local_row]
    rows_in = np.bincount(labels[:n_r], minlength=n_components)
    cols_in = np.bincount(labels[n_r:], minlength=n_components)
    star = (rows_in == 1) | (cols_in == 1)

    picked = []
    # Stars: one edge at most can be matched; the cheapest (then the lowest indices) wins.
    edges = np.flatnonzero(star[component])
    if len(edges):
        edges = edges[np.lexsort((local_col[edges], local_row[edges], cost[edges], component[edges]))]
        first = np.ones(len(edges), dtype=bool)
        first[1:] = component[edges[1:]] != component[edges[:-1]]
        picked.append(edges[first])
    # The rest: one assignment per component.
    edges = np.flatnonzero(~star[component])
    if len(edges):
        edges = edges[np.argsort(component[edges], kind="stable")]
        for group in np.split(edges, np.flatnonzero(np.diff(component[edges])) + 1):
            picked.append(_solve_component(local_row[group], local_col[group], cost[group], group))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def _solve_component(row: np.ndarray, col: np.ndarray, cost: np.ndarray, edge_ids: np.ndarray) -> np.ndarray:
    """The matched ``edge_ids`` of one connected component (see :func:`_max_weight_matching`)."""
    rows, r = np.unique(row, return_inverse=True)
    cols, c = np.unique(col, return_inverse=True)
    n_r, n_c = len(rows), len(cols)
    if n_r * n_c <= _DENSE_COMPONENT_ENTRIES:
        capped = np.full((n_r, n_c), CAPPED_COST)
        capped[r, c] = cost
        edge_at = np.full((n_r, n_c), -1, dtype=np.int64)
        edge_at[r, c] = np.arange(len(cost))
        assigned = edge_at[linear_sum_assignment(capped)]
        return edge_ids[assigned[assigned >= 0]]
    # Sparse: a full matching on rows + a stand-in per column × columns + a stand-in per row. Leaving a
    # row or a column unmatched costs 1000 (half the cap, so a pair left out costs 2000, as capped);
    # stand-ins meet along the transposed edges. Weights are shifted by 1: LAPJVsp needs non-zero ones.
    n_e = len(cost)
    half = CAPPED_COST / 2
    src = np.concatenate([r, np.arange(n_r), n_r + np.arange(n_c), n_r + c])
    dst = np.concatenate([c, n_c + np.arange(n_r), np.arange(n_c), n_c + r])
    weight = np.concatenate([cost, np.full(n_r, half), np.full(n_c, half), np.zeros(n_e)]) + 1.0
    graph = csr_matrix((weight, (src, dst)), shape=(n_r + n_c, n_r + n_c))
    match_row, match_col = min_weight_full_bipartite_matching(graph)
    real = (match_row < n_r) & (match_col < n_c)
    lookup = csr_matrix((np.arange(1, n_e + 1), (r, c)), shape=(n_r, n_c))
    assigned = np.asarray(lookup[match_row[real], match_col[real]]).ravel() - 1
    return edge_ids[assigned]


def _cosine_signed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise signed cosine; NaN where a vector has zero length."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.nan)
    return np.clip(cos, -1.0, 1.0)


def _cosine_paper(a_vox: np.ndarray, b_vox: np.ndarray) -> np.ndarray:
    """The paper's |cos|: raw voxel differences, norms and result rounded to 3 decimals.

    Summed in the paper's axis order (row, column, z) so that the rounding matches exactly; the
    rounding is Python's ``round(x, 3)`` (see :func:`_round3`).
    """
    a, b = np.asarray(a_vox, dtype=np.float64)[:, [1, 2, 0]], np.asarray(b_vox, dtype=np.float64)[:, [1, 2, 0]]
    numerator = (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]) + a[:, 2] * b[:, 2]
    norm_a = np.sqrt((a[:, 0] * a[:, 0] + a[:, 1] * a[:, 1]) + a[:, 2] * a[:, 2])
    norm_b = np.sqrt((b[:, 0] * b[:, 0] + b[:, 1] * b[:, 1]) + b[:, 2] * b[:, 2])
    denominator = _round3(norm_a) * _round3(norm_b)
    out = np.full(len(a), np.nan)
    ok = denominator > 0
    out[ok] = np.abs(_round3(numerator[ok] / denominator[ok]))
    return out


def _round3(values: np.ndarray) -> np.ndarray:
    """Python's ``round(x, 3)`` element-wise, exactly.

    ``rint(x · 1000) / 1000`` is the same double (the one nearest to k / 1000) unless ``x · 1000`` lies
    within rounding noise of a half-integer, where its product may round across; those few values go
    through Python's ``round``.
    """
    values = np.asarray(values, dtype=np.float64)
    scaled = values * 1000.0
    out = np.rint(scaled) / 1000.0
    # Below 1e9 the product's rounding error (< 1.2e-7) cannot cross a half-integer 1e-6 away.
    doubtful = ~(np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) > 1e-6) | ~(np.abs(scaled) < 1e9)
    for k in np.flatnonzero(doubtful):
        out[k] = round(float(values[k]), 3) if math.isfinite(values[k]) else values[k]
    return out


def _quiet_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over ``axis`` skipping NaN; NaN (without a warning) where nothing is left."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1, NaN with fewer than two values), NaN skipped."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return mean, std


def _resolve_voxel_size(gt: PairSet, pred: PairSet, voxel_size: Optional[Sequence[float]]) -> tuple[float, float, float]:
    if voxel_size is not None:
        return parse_voxel_size(voxel_size)  # type: ignore[return-value]
    vg, vp = gt.voxel_size, pred.voxel_size
    if vg is not None and vp is not None and not np.allclose(vg, vp, rtol=1e-6, atol=0.0):
        raise CellPolError(
            f"Ground truth and prediction have different voxel sizes ({_fmt_voxel(vg)} vs {_fmt_voxel(vp)} µm, "
            "z y x). Score them at the same calibration, or give the voxel size explicitly."
        )
    resolved = vg if vg is not None else vp
    if resolved is None:
        raise CellPolError(
            "Neither the ground truth nor the prediction carries a voxel size, and none was given; "
            "scoring needs distances in µm: give the voxel size.", settings={"voxel_size": None}
        )
    return resolved


def _fmt_voxel(vs: Sequence[float]) -> str:
    return " × ".join(f"{v:g}" for v in vs)


def _shape_from(value: Any, what: str) -> Optional[tuple[Optional[int], int, int]]:
    """``(Z, Y, X)`` with Z possibly ``None`` from a 2- or 3-element shape; ``None`` passes through."""
    if value is None:
        return None
    try:
        dims = [int(v) for v in value]
    except (TypeError, ValueError):
        raise CellPolError(f"{what} must be a list of integers (Z, Y, X) or (Y, X), got {value!r}.") from None
    if len(dims) == 4:  # (C, Z, Y, X): a Volume's data shape
        dims = dims[1:]
    if len(dims) not in (2, 3) or any(d <= 0 for d in dims):
        raise CellPolError(f"{what} must be positive (Z, Y, X) or (Y, X), got {value!r}.")
    if len(dims) == 2:
        return (None, dims[0], dims[1])
    return (dims[0], dims[1], dims[2])


def _check_border_margin(border_margin_um: Any) -> None:
    if not (isinstance(border_margin_um, (int, float)) and math.isfinite(border_margin_um) and border_margin_um >= 0):
        raise CellPolError(f"The border margin must be a non-negative number of µm, got {border_margin_um!r}.")


def _resolve_shape(
    gt: PairSet, pred: PairSet, image_shape: Any
) -> Optional[tuple[Optional[int], int, int]]:
    if image_shape is not None:
        return _shape_from(image_shape, "image_shape")
    return _sidecar_shape(gt.meta, pred.meta)


def _sidecar_shape(gt_meta: dict[str, Any], pred_meta: dict[str, Any]) -> Optional[tuple[Optional[int], int, int]]:
    """The image size the sidecars record (ground truth first); an error if they disagree in Y × X."""
    shape_gt = _shape_from(gt_meta.get("image_shape_zyx"), "The ground truth's image_shape_zyx")
    shape_pred = _shape_from(pred_meta.get("image_shape_zyx"), "The prediction's image_shape_zyx")
    if shape_gt is not None and shape_pred is not None and shape_gt[1:] != shape_pred[1:]:
        raise CellPolError(
            f"Ground truth and prediction were made on images of different sizes "
            f"(Y×X {shape_gt[1]}×{shape_gt[2]} vs {shape_pred[1]}×{shape_pred[2]})."
        )
    return shape_gt if shape_gt is not None else shape_pred


def _choose_protocol(
    protocol: str, shape: Optional[tuple[Optional[int], int, int]], gt: PairSet, pred: PairSet
) -> tuple[Protocol, str]:
    key = str(protocol).lower()
    if key != "auto":
        return _protocol(key), "given"
    if shape is not None and shape[0] is not None:
        return (PROTOCOLS["2d"], "image Z == 1") if shape[0] == 1 else (PROTOCOLS["3d"], "image Z > 1")
    z = np.concatenate([gt.nuclei[:, 0], gt.golgi[:, 0], pred.nuclei[:, 0], pred.golgi[:, 0]])
    if z.size and np.all(z == 0):
        return PROTOCOLS["2d"], "image size unknown; every z coordinate is 0"
    return PROTOCOLS["3d"], "image size unknown; default"


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
def score_pairs(
    gt: PairSet,
    pred: PairSet,
    image_shape: Optional[Sequence[int]] = None,
    border_margin_um: float = 7.0,
    protocol: str = "auto",
    *,
    voxel_size: Optional[Sequence[float]] = None,
    name: Optional[str] = None,
) -> ImageScore:
    """Score one image's predicted vectors against its ground truth at the 14 levels.

    Parameters
    ----------
    gt, pred : PairSet
        Ground-truth and predicted pairs in voxels ``(z, y, x)``. Not modified.
    image_shape : sequence of int, optional
        ``(Z, Y, X)`` or ``(Y, X)`` (a ``(C, Z, Y, X)`` data shape is accepted too); when given it is
        used as is. Defaults to the sets' sidecar ``image_shape_zyx``. Needed for border exclusion;
        when it is known, every point must lie inside the image (:func:`points_outside_image`).
    border_margin_um : float
        Border margin in µm (default 7, as the paper); 0 disables border exclusion and is the only
        way to score without knowing the image size.
    protocol : {"auto", "3d", "2d"}
        ``"auto"`` picks 2D when the image has ``Z == 1``. When Z is unknown it picks 2D only if
        every z coordinate is 0, else 3D; :attr:`ImageScore.protocol_reason` says which applied.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm overriding the sets' own.
    name : str, optional
        Image name for tables (default: the ground truth's ``meta["image"]`` or ``"image"``).

    Returns
    -------
    ImageScore

    Raises
    ------
    CellPolError
        Unknown or mismatched voxel sizes, mismatched image sizes, unknown protocol, points outside
        the image, or a border margin with no image size to apply it to.

    Examples
    --------
    Two cells annotated; the prediction finds the first (1 µm off) and puts a false vector elsewhere:

    >>> from app.core.pairs import PairSet
    >>> gt = PairSet([[5, 40, 40], [5, 80, 80]], [[5, 44, 40], [5, 80, 86]], voxel_size=(1.0, 0.5, 0.5))
    >>> pred = PairSet([[5, 42, 40], [5, 20, 100]], [[5, 46, 40], [5, 24, 100]], voxel_size=(1.0, 0.5, 0.5))
    >>> score = score_pairs(gt, pred, image_shape=(10, 120, 120))
    >>> int(score.tp[0]), int(score.fp[0]), int(score.fn[0])   # at τL = 0
    (1, 1, 1)
    >>> float(score.tpr[0]), float(score.fdr[0])
    (0.5, 0.5)
    """
    if not isinstance(gt, PairSet) or not isinstance(pred, PairSet):
        raise CellPolError("score_pairs expects two PairSet objects (ground truth, prediction).")
    voxel = _resolve_voxel_size(gt, pred, voxel_size)
    shape = _resolve_shape(gt, pred, image_shape)
    chosen, reason = _choose_protocol(protocol, shape, gt, pred)
    warnings: list[str] = []
    if name is None:
        name = str(gt.meta.get("image") or pred.meta.get("image") or "image")
        name = Path(name).name or name

    # Border exclusion (in-plane only, strict, both ends of both sets' pairs).
    gt_index = np.arange(len(gt))
    pred_index = np.arange(len(pred))
    margin: Optional[int] = None
    _check_border_margin(border_margin_um)
    if shape is None:
        if border_margin_um > 0:
            raise CellPolError(
                f"Cannot apply the {border_margin_um:g} µm border exclusion: the image size is unknown (the "
                "vectors' sidecars record no image_shape_zyx and no image shape was given). Give the image "
                "size (or the images), or a border margin of 0 to keep every pair.",
                settings={"images_dir": None, "border_margin_um": 0},
            )
        warnings.append("image size unknown: points not checked against the image bounds")
    else:
        _refuse_outside(gt, shape, "The ground-truth vectors")
        _refuse_outside(pred, shape, "The predicted vectors")
    if border_margin_um > 0:
        margin = border_margin_voxels(border_margin_um, voxel[2])
        gt_index = gt_index[inside_border(gt, shape[1:], margin)]
        pred_index = pred_index[inside_border(pred, shape[1:], margin)]

    scale = np.asarray(voxel, dtype=np.float64)
    gt_n, gt_g = gt.nuclei[gt_index], gt.golgi[gt_index]
    pr_n, pr_g = pred.nuclei[pred_index], pred.golgi[pred_index]
    n_gt, n_pred = len(gt_index), len(pred_index)

    # One global assignment: rows = predictions, columns = ground truth, cost in µm.
    rows, cols, assigned_cost = match_within_radius(
        pr_n * scale, pr_g * scale, gt_n * scale, gt_g * scale, chosen.cost_cutoff_um
    )

    # Per-match metrics (true distances, not the capped cost).
    v_pred_vox = pr_g[rows] - pr_n[rows]
    v_gt_vox = gt_g[cols] - gt_n[cols]
    nd = np.linalg.norm((pr_n[rows] - gt_n[cols]) * scale, axis=1)
    gd = np.linalg.norm((pr_g[rows] - gt_g[cols]) * scale, axis=1)
    matches = {
        "gt_index": gt_index[cols],
        "pred_index": pred_index[rows],
        "gt_id": gt.ids[gt_index[cols]],
        "pred_id": pred.ids[pred_index[rows]],
        "cost": assigned_cost,
        "cos": _cosine_signed(v_pred_vox * scale, v_gt_vox * scale),
        "cos_paper": _cosine_paper(v_pred_vox, v_gt_vox),
        "error": np.linalg.norm((v_pred_vox - v_gt_vox) * scale, axis=1),
        "nd": nd,
        "gd": gd,
    }

    tau_n, tau_g = chosen.tau_nucleus, chosen.tau_golgi
    tp_mask = (nd[None, :] <= tau_n[:, None] + _TIE_TOLERANCE_UM) & (gd[None, :] <= tau_g[:, None] + _TIE_TOLERANCE_UM)
    tp = tp_mask.sum(axis=1).astype(np.int64)
    fp = n_pred - tp
    fn = n_gt - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_gt if n_gt else np.full(N_LEVELS, np.nan)
        fnr = fn / n_gt if n_gt else np.full(N_LEVELS, np.nan)
        # FP / (FP + TP) = FP / #pred; it is 1 when TP = 0 and FP > 0, undefined without predictions.
        fdr = fp / n_pred if n_pred else np.full(N_LEVELS, np.nan)
    if n_gt == 0:
        warnings.append("no ground-truth pairs (after border exclusion): TPR and FNR undefined")
    if n_pred == 0:
        warnings.append("no predicted pairs (after border exclusion): FDR undefined")

    mean = {key: np.full(N_LEVELS, np.nan) for key in PER_TP_METRICS}
    std = {key: np.full(N_LEVELS, np.nan) for key in PER_TP_METRICS}
    for level in range(N_LEVELS):
        for key in PER_TP_METRICS:
            mean[key][level], std[key][level] = _mean_std(matches[key][tp_mask[level]])

    return ImageScore(
        name=name,
        protocol=chosen.name,
        protocol_reason=reason,
        voxel_size=tuple(voxel),  # type: ignore[arg-type]
        image_shape=shape,
        border_margin_voxels=margin,
        n_gt=n_gt,
        n_pred=n_pred,
        n_gt_excluded=len(gt) - n_gt,
        n_pred_excluded=len(pred) - n_pred,
        tau_nucleus=tau_n,
        tau_golgi=tau_g,
        tp=tp,
        fp=np.asarray(fp, dtype=np.int64),
        fn=np.asarray(fn, dtype=np.int64),
        tpr=np.asarray(tpr, dtype=np.float64),
        fdr=np.asarray(fdr, dtype=np.float64),
        fnr=np.asarray(fnr, dtype=np.float64),
        mean=mean,
        std=std,
        matches=matches,
        tp_mask=tp_mask,
        warnings=warnings,
    )


def aggregate(scores: Sequence[ImageScore], skipped: Sequence[str] = (), warnings: Sequence[str] = ()) -> EvaluationResult:
    """Combine per-image scores as the paper does.

    TP/FP/FN are summed; TPR/FDR/FNR and the per-image means and stds of the per-TP metrics are
    averaged over images, skipping NaN (an image without TPs has no mean cosine).

    Parameters
    ----------
    scores : sequence of ImageScore
        All scored with the same protocol.
    skipped, warnings : sequence of str
        Recorded on the result (used by :func:`evaluate_folders`). :attr:`EvaluationResult.missing`
        lists the scores whose status is :data:`NO_PREDICTION`.

    Raises
    ------
    CellPolError
        No scores, or scores made with different protocols (their thresholds differ per level).
    """
    scores = list(scores)
    if not scores:
        raise CellPolError("There are no image scores to aggregate.")
    protocols = sorted({s.protocol for s in scores})
    if len(protocols) > 1:
        raise CellPolError(
            "The images were scored with different protocols (2D and 3D thresholds differ); "
            "evaluate 2D and 3D images separately."
        )
    all_warnings = [f"{s.name}: {w}" for s in scores for w in s.warnings] + list(warnings)
    return EvaluationResult(
        images=scores,
        protocol=protocols[0],
        tau_nucleus=scores[0].tau_nucleus.copy(),
        tau_golgi=scores[0].tau_golgi.copy(),
        tp=np.sum([s.tp for s in scores], axis=0).astype(np.int64),
        fp=np.sum([s.fp for s in scores], axis=0).astype(np.int64),
        fn=np.sum([s.fn for s in scores], axis=0).astype(np.int64),
        tpr=_quiet_mean(np.stack([s.tpr for s in scores])),
        fdr=_quiet_mean(np.stack([s.fdr for s in scores])),
        fnr=_quiet_mean(np.stack([s.fnr for s in scores])),
        mean={k: _quiet_mean(np.stack([s.mean[k] for s in scores])) for k in PER_TP_METRICS},
        std={k: _quiet_mean(np.stack([s.std[k] for s in scores])) for k in PER_TP_METRICS},
        skipped=list(skipped),
        warnings=all_warnings,
        missing=[s.name for s in scores if s.status == NO_PREDICTION],
    )


def _vector_files(folder: Path, kinds: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``{stem: {kind: path}}`` of the vectors files of ``folder`` whose kind (see
    :func:`app.core.pairs.vectors_stem`) is in ``kinds``."""
    files: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        stem, kind = vectors_stem(path.name)
        if stem is not None and kind in kinds and path.is_file():
            files.setdefault(stem, {})[kind] = path
    return files


def _prediction_files(pred_dir: Path, same_folder: bool) -> tuple[dict[str, Path], list[str]]:
    """``{stem: path}`` of the predictions: ``<stem>.pred.vectors.csv``, else (older versions)
    ``<stem>.vectors.csv`` unless the folder is also the ground truth's; notes on the choices made."""
    kinds = ("prediction",) if same_folder else ("prediction", "annotation")
    chosen, notes = {}, []
    for stem, by_kind in _vector_files(pred_dir, kinds).items():
        chosen[stem] = by_kind.get("prediction", by_kind.get("annotation"))
        if len(by_kind) == 2:
            notes.append(
                f"{stem}: both {by_kind['prediction'].name} and {by_kind['annotation'].name} are in {pred_dir}; "
                f"scored {by_kind['prediction'].name}"
            )
    return chosen, notes


#: What :func:`_image_size` returns: the size (or None), why it is unknown, warnings.
_ShapeResult = tuple[Optional[tuple[Optional[int], int, int]], str, list[str]]


def _images_by_stem(images_dir: Path) -> dict[str, list[Path]]:
    """``{stem: [image paths]}`` of the images in ``images_dir`` (those :func:`find_images` lists).

    Each image is listed under its stem (:func:`app.core.batch.image_stem`) and under its whole file
    name, the name batch prediction gives the outputs of images that share a stem (``x.tif`` and
    ``x.npy`` give ``x.tif.pred.vectors.csv`` and ``x.npy.pred.vectors.csv``).
    """
    from app.core.batch import image_stem
    from app.core.imageio import find_images

    by_stem: dict[str, list[Path]] = {}
    for path in find_images([images_dir]):
        by_stem.setdefault(image_stem(path), []).append(path)
        if path.name != image_stem(path):
            by_stem.setdefault(path.name, []).append(path)
    return by_stem


def _read_image_shape(path: Path, axes: Optional[str]) -> tuple[Optional[tuple[int, int, int]], str]:
    """``(Z, Y, X)`` of an image, from its header (or, when ``axes`` is given, by reading it as the batch
    prediction does); ``(None, why)`` when its axes are ambiguous."""
    from app.core.imageio import read_image_info, read_volume

    if axes is not None:
        volume = read_volume(path, voxel_size=(1.0, 1.0, 1.0), axes=axes)  # the voxel size is not used
        return tuple(int(d) for d in volume.spatial_shape), ""  # type: ignore[return-value]
    info = read_image_info(path)
    if info["czyx_shape"] is None:
        return None, f"cannot tell the axes of {path.name} (give the images' axis order)"
    return tuple(int(d) for d in info["czyx_shape"][1:]), ""  # type: ignore[return-value]


def _image_size(
    stem: str,
    gt_path: Path,
    pred_path: Optional[Path],
    images: Optional[dict[str, list[Path]]],
    images_dir: Optional[Path],
    axes: Optional[str],
) -> _ShapeResult:
    """The size of the image ``stem`` (its file's, else the sidecars'), why it is unknown, and warnings.

    Raises
    ------
    CellPolError
        Ground-truth and prediction sidecars disagree, or the image's size differs from the one the
        vectors were made on, or several images share the stem.
    """
    sidecar = _sidecar_shape(read_sidecar(gt_path), read_sidecar(pred_path) if pred_path is not None else {})
    notes: list[str] = []
    if images is None:
        why = "" if sidecar is not None else "no image_shape_zyx in the vectors' sidecars and no images folder given"
        return sidecar, why, notes
    candidates = images.get(stem, [])
    if len(candidates) > 1:
        raise CellPolError(
            f"Several images in {images_dir} are named {stem}: {', '.join(p.name for p in candidates)}; "
            f"name the vectors after the whole file name ({candidates[0].name}{VECTORS_SUFFIX}, as batch "
            "prediction does) or keep one image per name, so they are checked against the right image."
        )
    if not candidates:
        if sidecar is not None:
            notes.append(f"no image named {stem} in {images_dir}: used the image size the vectors record")
            return sidecar, "", notes
        return None, f"no image_shape_zyx in the vectors' sidecars and no image named {stem} in {images_dir}", notes
    image_path = candidates[0]
    shape, why = _read_image_shape(image_path, axes)
    if shape is None:
        if sidecar is not None:
            notes.append(f"{why}: used the image size the vectors record")
            return sidecar, "", notes
        return None, why, notes
    if sidecar is not None and (
        sidecar[1:] != shape[1:] or (sidecar[0] is not None and sidecar[0] != shape[0])
    ):
        raise CellPolError(
            f"The image {image_path} is {_fmt_shape(shape)} voxels (z × y × x) but the vectors were made on an "
            f"image of {_fmt_shape(sidecar)} (their sidecars' image_shape_zyx): is it the image they belong to?"
        )
    return shape, "", notes


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    progress: Optional[ProgressCallback] = None,
    *,
    border_margin_um: float = 7.0,
    protocol: str = "auto",
    cancel: Optional[CancelToken] = None,
    images_dir: Optional[str | os.PathLike] = None,
    image_axes: Optional[str] = None,
) -> EvaluationResult:
    """:func:`evaluate_job` run to its end: the :class:`EvaluationResult`; ``progress(done, total, message)``
    hears its progress."""
    return run_job(evaluate_job(gt_dir, pred_dir, voxel_size, border_margin_um=border_margin_um, protocol=protocol,
                                cancel=cancel, images_dir=images_dir, image_axes=image_axes),
                   progress_to_callback(progress))


def evaluate_job(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    *,
    border_margin_um: float = 7.0,
    protocol: str = "auto",
    cancel: Optional[CancelToken] = None,
    images_dir: Optional[str | os.PathLike] = None,
    image_axes: Optional[str] = None,
) -> Job:
    """Score the predictions of ``pred_dir`` against the ground truth of ``gt_dir``, matched by stem.

    Ground truth is ``<stem>.vectors.csv``; a prediction is ``<stem>.pred.vectors.csv`` or, as older
    versions wrote them, ``<stem>.vectors.csv`` (the ``.pred`` file wins when both exist, with a
    warning). Autosaves are never read. Both may live in one folder; then only ``.pred`` files are
    predictions. Ground truth without a prediction is scored as all-FN and listed in
    :attr:`EvaluationResult.missing`; predictions without ground truth are listed in
    :attr:`EvaluationResult.skipped`. Nothing is left only in memory: every such case is also a warning.

    The image size (for border exclusion and for refusing points outside the image) comes from the
    image ``<stem>.<tif|tiff|ome.tif|ome.tiff|npy|czi>`` in ``images_dir`` when given, else from the
    vectors' sidecars (``image_shape_zyx``). Every size is settled before any scoring, so a missing one
    stops the run at once with one message listing the images concerned.

    Parameters
    ----------
    gt_dir, pred_dir : path
        Folders of project vectors CSVs (with JSON sidecars). May be the same folder.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm overriding the sidecars'.
    A job (:mod:`app.core.jobs`): :class:`~app.core.jobs.Progress` before the first image and after each,
    a :class:`~app.core.jobs.JobWarning` for every warning of the result, then
    :class:`~app.core.jobs.Result` with the :class:`EvaluationResult` (also the return value).
    border_margin_um, protocol
        As for :func:`score_pairs`.
    cancel : CancelToken, optional
        Polled between images.
    images_dir : path, optional
        Folder of the images the vectors were made on. For each stem, the image whose name without its
        image suffix is the stem (the rule of :func:`app.core.batch.image_stem`, among the files
        :func:`app.core.imageio.find_images` lists; not recursive) gives the size; only its header is
        read. Its size must agree with the sidecars' where they record one. A stem without an image
        falls back to the sidecars (with a warning).
    image_axes : str, optional
        Axes of the images (as ``cellpol predict --axes``), for images whose header does not tell them
        (e.g. the authors' RGB layout ``"YXZC"``); each image is then read in full.

    Raises
    ------
    CellPolError
        Missing folders, no vectors files, no stem in common, unreadable files, mismatched voxel sizes
        or image sizes, points outside the image (the message names the image), or a border margin
        > 0 for images whose size is unknown.
    """
    _check_border_margin(border_margin_um)
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for what, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise CellPolError(f"The {what} folder {folder} does not exist (or is not a folder).")
    same_folder = gt_dir.resolve() == pred_dir.resolve()
    gt_files = {stem: kinds["annotation"] for stem, kinds in _vector_files(gt_dir, ("annotation",)).items()}
    pred_files, folder_warnings = _prediction_files(pred_dir, same_folder)
    if same_folder and not pred_files:
        raise CellPolError(
            f"The ground-truth and prediction folders are the same ({gt_dir}) and it holds no predictions "
            f"(*{PREDICTION_SUFFIX}); in one folder, <name>{VECTORS_SUFFIX} is the ground truth."
        )
    if not gt_files:
        raise CellPolError(
            f"No ground-truth vectors (*{VECTORS_SUFFIX}) in {gt_dir} (predictions, *{PREDICTION_SUFFIX}, and "
            "autosaves are not ground truth)."
        )
    if not pred_files:
        raise CellPolError(f"No predicted vectors (*{PREDICTION_SUFFIX}, or *{VECTORS_SUFFIX} from older versions) "
                           f"in {pred_dir}.")
    common = sorted(set(gt_files) & set(pred_files))
    if not common:
        raise CellPolError(
            f"No file names in common between {gt_dir} and {pred_dir}: ground truth <name>{VECTORS_SUFFIX} is "
            f"matched with the prediction <name>{PREDICTION_SUFFIX} (or <name>{VECTORS_SUFFIX})."
        )
    skipped = sorted(set(pred_files) - set(gt_files))
    folder_warnings += [f"{stem}: prediction without ground truth, skipped" for stem in skipped]
    stems = sorted(gt_files)

    # Image sizes first: a missing one stops the run before any work, with every image concerned named.
    images, images_path = None, None
    if images_dir is not None:
        images_path = Path(images_dir)
        if not images_path.is_dir():
            raise CellPolError(f"The images folder {images_path} does not exist (or is not a folder).")
        images = _images_by_stem(images_path)
    shapes: dict[str, Optional[tuple[Optional[int], int, int]]] = {}
    shape_notes: dict[str, list[str]] = {}
    unknown: list[str] = []
    for stem in stems:
        check_cancel(cancel)
        try:
            shape, why, notes = _image_size(stem, gt_files[stem], pred_files.get(stem), images, images_path,
                                            image_axes)
        except CellPolError as exc:
            raise CellPolError(f"{stem}: {exc}") from None
        if shape is None:
            unknown.append(f"{stem} ({why})")
            if images is not None:
                notes.append(why)
        shapes[stem], shape_notes[stem] = shape, notes
    if unknown and border_margin_um > 0:
        listed = "; ".join(unknown[:5]) + (f"; and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise CellPolError(
            f"Cannot apply the {border_margin_um:g} µm border exclusion to {len(unknown)} image(s) whose size is "
            f"unknown: {listed}. Give the folder of the images so their sizes can be read, or a border margin "
            "of 0 to keep every pair.", settings={"images_dir": None, "border_margin_um": 0}
        )

    scores: list[ImageScore] = []
    yield Progress(0, len(stems), "Scoring")
    for done, stem in enumerate(stems):
        check_cancel(cancel)
        shape = shapes[stem]
        try:
            gt = read_pairs(gt_files[stem], voxel_size=voxel_size)
            if stem in pred_files:
                pred = read_pairs(pred_files[stem], voxel_size=voxel_size)
            else:
                pred = PairSet.empty(voxel_size=gt.voxel_size)
            if shape is not None:
                _refuse_outside(gt, shape, f"The ground truth {gt_files[stem]}")
                if stem in pred_files:
                    _refuse_outside(pred, shape, f"The prediction {pred_files[stem]}")
            score = score_pairs(
                gt, pred, image_shape=shape, border_margin_um=border_margin_um, protocol=protocol,
                voxel_size=voxel_size, name=stem,
            )
        except CellPolError as exc:
            raise CellPolError(f"{stem}: {exc}") from None
        score.warnings[:0] = shape_notes[stem]
        if vectors_content(gt.meta, gt.sources) == "prediction":
            score.warnings.insert(0, f"the ground truth {gt_files[stem].name} holds a model's predictions "
                                     "(by its sidecar or sources): is this the right ground-truth folder?")
        if stem not in pred_files:  # says it all: no "no predicted pairs" besides
            score.status = NO_PREDICTION
            score.warnings[:] = [w for w in score.warnings if not w.startswith("no predicted pairs")]
            score.warnings.insert(0, "no prediction file: every ground-truth pair counts as FN")
        scores.append(score)
        yield Progress(done + 1, len(stems), f"Scored {stem}")
    result = aggregate(scores, skipped=skipped, warnings=folder_warnings)
    for warning in result.warnings:
        yield JobWarning(warning)
    yield Result(result, f"{len(stems)} image(s) scored")
    return result


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(result: EvaluationResult | ImageScore, max_warnings: int = MAX_TABLE_WARNINGS) -> str:
    """A fixed-width text table of the per-level metrics (aggregated, or of one image).

    Columns: level, MAF, τ_n, τ_g (µm), TP, FP, FN, TPR, FDR, mean signed cosine, mean vector error,
    ND and GD (µm). Undefined values print as "—". Below the table, when there is anything to say: the
    images without predictions (counted as FN), the predictions without ground truth, and the
    warnings (the first ``max_warnings``, then how many more; :func:`write_evaluation` saves them all).
    """
    if isinstance(result, EvaluationResult):
        title = f"{result.n_images} image(s), {result.protocol.upper()} protocol"
        if result.missing:
            title += f"; {len(result.missing)} without predictions (their ground truth counted as FN)"
    else:
        title = f"{result.name}, {result.protocol.upper()} protocol"
        if result.status == NO_PREDICTION:
            title += f"; {NO_PREDICTION} (its ground truth counted as FN)"
    columns = [
        ("level", 5), ("MAF", 5), ("τ_n", 6), ("τ_g", 6), ("TP", 6), ("FP", 6), ("FN", 6),
        ("TPR", 6), ("FDR", 6), ("cos", 6), ("error", 7), ("ND", 6), ("GD", 6),
    ]
    note = "(distances in µm; cos = mean signed cosine in µm space"
    note += "; TP/FP/FN summed, the rest averaged over images)" if isinstance(result, EvaluationResult) else ")"
    header = " ".join(name.rjust(width) for name, width in columns)
    lines = [title, note, header, "-" * len(header)]
    for level in range(N_LEVELS):
        cells = [
            str(level), f"{MAF_LEVELS[level]:.2f}", f"{result.tau_nucleus[level]:.1f}",
            f"{result.tau_golgi[level]:.1f}", str(int(result.tp[level])), str(int(result.fp[level])),
            str(int(result.fn[level])), _fmt(result.tpr[level], 3), _fmt(result.fdr[level], 3),
            _fmt(result.mean["cos"][level], 3), _fmt(result.mean["error"][level], 2),
            _fmt(result.mean["nd"][level], 2), _fmt(result.mean["gd"][level], 2),
        ]
        lines.append(" ".join(cell.rjust(width) for cell, (_, width) in zip(cells, columns)))
    lines += _report_lines(result, max_warnings)
    return "\n".join(lines) + "\n"


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _report_lines(result: EvaluationResult | ImageScore, max_warnings: int) -> list[str]:
    """What the table's numbers do not show: missing and skipped files, then the warnings."""
    lines: list[str] = []
    if isinstance(result, EvaluationResult):
        if result.missing:
            n_fn = sum(s.n_gt for s in result.images if s.status == NO_PREDICTION)
            lines.append(
                f"Images without predictions: {len(result.missing)} of {result.n_images} "
                f"({_name_list(result.missing)}); their {n_fn} ground-truth pair(s) count as misses (FN)."
            )
        if result.skipped:
            lines.append(
                f"Predictions without ground truth (not scored): {len(result.skipped)} ({_name_list(result.skipped)})."
            )
    warnings = result.warnings
    if warnings:
        shown = warnings[: max(int(max_warnings), 0)]
        lines.append(f"Warnings ({len(warnings)}):")
        lines += [f"  - {w}" for w in shown]
        if len(warnings) > len(shown):
            lines.append(f"  … and {len(warnings) - len(shown)} more (all in {WARNINGS_FILE} when written).")
    return [""] + lines if lines else []


def _csv_cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return ""
        text = f"{float(value):.6f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def _rows_to_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row[c]) for c in columns])
    return buffer.getvalue()


def _metric_columns() -> list[str]:
    cols = ["tp", "fp", "fn", "tpr", "fdr", "fnr"]
    for key in PER_TP_METRICS:
        column = _metric_column(key)
        if column.endswith("_um"):
            base = column[: -len("_um")]
            cols += [f"{base}_mean_um", f"{base}_std_um"]
        else:
            cols += [f"{key}_mean", f"{key}_std"]
    return cols


_LEVEL_COLUMNS = ["level", "maf", "tau_nucleus_um", "tau_golgi_um"]
PER_IMAGE_COLUMNS = ["image", "status"] + _LEVEL_COLUMNS + ["n_gt", "n_pred"] + _metric_columns()
SUMMARY_COLUMNS = _LEVEL_COLUMNS + ["n_images", "n_images_without_prediction"] + _metric_columns()
#: Written by :func:`write_evaluation`: every warning, one a line.
WARNINGS_FILE = "evaluation_warnings.txt"
PER_TP_COLUMNS = (
    ["image"] + _LEVEL_COLUMNS + ["gt_index", "pred_index", "gt_id", "pred_id"]
    + [_metric_column(k) for k in PER_TP_METRICS]
)


def write_evaluation(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the evaluation tables and curves into ``out_dir`` (created if needed), atomically.

    Files: ``evaluation_per_image.csv`` (image × level, with each image's ``status``: ``scored`` or
    ``no prediction file``), ``evaluation_summary.csv`` (aggregate per level, with
    ``n_images_without_prediction``), ``evaluation_per_tp.csv`` (one row per TP and level),
    ``evaluation_curves.png`` (TPR, FDR, cosine similarity, error norm, ND and GD vs level τL; shaded
    bands are ± the image-averaged standard deviation, thin grey lines the individual images) and
    ``evaluation_warnings.txt`` (every warning, one a line; "No warnings." when there are none, so a
    report from an earlier run in the same folder is never left behind). Undefined values are empty
    cells.

    Returns
    -------
    dict
        ``{"per_image", "summary", "per_tp", "curves", "warnings"}`` → path.
    """
    out = ensure_folder(out_dir)
    paths = {
        "per_image": out / "evaluation_per_image.csv",
        "summary": out / "evaluation_summary.csv",
        "per_tp": out / "evaluation_per_tp.csv",
        "curves": out / "evaluation_curves.png",
        "warnings": out / WARNINGS_FILE,
    }
    atomic_write_text(paths["per_image"], _rows_to_csv(result.per_image_rows(), PER_IMAGE_COLUMNS))
    atomic_write_text(paths["summary"], _rows_to_csv(result.summary_rows(), SUMMARY_COLUMNS))
    atomic_write_text(paths["per_tp"], _rows_to_csv(result.per_tp_rows(), PER_TP_COLUMNS))
    _write_curves(result, paths["curves"])
    atomic_write_text(paths["warnings"], "".join(f"{w}\n" for w in result.warnings) or "No warnings.\n")
    return paths


def _write_curves(result: EvaluationResult, path: Path) -> None:
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = np.arange(N_LEVELS)
    per_image = len(result.images) > 1
    panels = [
        ("TPR", result.tpr, None, (0.0, 1.02)),
        ("FDR", result.fdr, None, (0.0, 1.02)),
        ("Cosine similarity (signed, µm)", result.mean["cos"], result.std["cos"], (-1.02, 1.02)),
        ("Vector error (µm)", result.mean["error"], result.std["error"], None),
        ("Nucleus distance ND (µm)", result.mean["nd"], result.std["nd"], None),
        ("Golgi distance GD (µm)", result.mean["gd"], result.std["gd"], None),
    ]
    figure = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3, sharex=True)
    for ax, (title, values, spread, ylim) in zip(axes.ravel(), panels):
        if per_image and title in ("TPR", "FDR"):
            for image in result.images:  # thin grey lines: the spread between images
                ax.plot(levels, image.tpr if title == "TPR" else image.fdr, color="0.8", lw=0.8)
        ax.plot(levels, values, marker="o", ms=4, color="tab:blue")
        if spread is not None:
            low, high = values - spread, values + spread
            ax.fill_between(levels, low, high, color="tab:blue", alpha=0.15, lw=0)
        if title.startswith("Cosine"):
            ax.plot(levels, result.mean["cos_paper"], marker=".", ls="--", color="tab:orange",
                    label="paper |cos| (voxels)")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_title(title, fontsize=10)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(True, alpha=0.3)
        ax.set_xticks(levels)
    for ax in axes[1]:
        ax.set_xlabel("level τL (0 = MAF 0.75 … 13 = MAF 0.10)")
    figure.suptitle(
        f"3DCellPol scoring, {result.protocol.upper()} protocol, {result.n_images} image(s); "
        f"TP/FP/FN at τL 0: {int(result.tp[0])}/{int(result.fp[0])}/{int(result.fn[0])}",
        fontsize=11,
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
