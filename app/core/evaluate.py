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
   and prediction alike. Needs the image size (Y, X); without it, exclusion is skipped and the score
   records that.
3. **Matching.** One global Hungarian assignment (:func:`scipy.optimize.linear_sum_assignment`) on
   ``cost = dN + dG`` (µm). Entries above the cut-off (10 µm in 3D, 20 µm in 2D) are set to 2000, as
   in the paper: such pairs can still be assigned, and still count as TP at a level whose thresholds
   they pass, because that test uses the true distances. The assignment is computed once and
   re-tested at every level.
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
   TP/FP/FN are summed.

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
from scipy.spatial.distance import cdist

from app.core.errors import CellPolError
from app.core.fileutil import atomic_path, atomic_write_text
from app.core.jobs import CancelToken, ProgressCallback, check_cancel
from app.core.pairs import PairSet, read_pairs
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

VECTORS_SUFFIX = ".vectors.csv"


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
        In-plane margin applied, or ``None`` when border exclusion was skipped.
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
        Things the user should know (border exclusion skipped, missing prediction, ...).
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

    @property
    def border_excluded(self) -> bool:
        """Whether border exclusion was applied."""
        return self.border_margin_voxels is not None

    def per_level_rows(self) -> list[dict[str, Any]]:
        """One dict per level (the rows of ``evaluation_per_image.csv``)."""
        rows = []
        for level in range(N_LEVELS):
            row: dict[str, Any] = {"image": self.name}
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

    @property
    def n_images(self) -> int:
        return len(self.images)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per level (the rows of ``evaluation_summary.csv``)."""
        rows = []
        for level in range(N_LEVELS):
            row = _level_header(level, self.tau_nucleus, self.tau_golgi)
            row["n_images"] = self.n_images
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


def _cosine_signed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise signed cosine; NaN where a vector has zero length."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.nan)
    return np.clip(cos, -1.0, 1.0)


def _cosine_paper(a_vox: np.ndarray, b_vox: np.ndarray) -> np.ndarray:
    """The paper's |cos|: raw voxel differences, norms and result rounded to 3 decimals.

    Summed in the paper's axis order (row, column, z) so that the rounding matches exactly.
    """
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
            "scoring needs distances in µm (CLI: --voxel-size Z Y X)."
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


def _resolve_shape(
    gt: PairSet, pred: PairSet, image_shape: Any
) -> Optional[tuple[Optional[int], int, int]]:
    if image_shape is not None:
        return _shape_from(image_shape, "image_shape")
    shape_gt = _shape_from(gt.meta.get("image_shape_zyx"), "The ground truth's image_shape_zyx")
    shape_pred = _shape_from(pred.meta.get("image_shape_zyx"), "The prediction's image_shape_zyx")
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
        ``(Z, Y, X)`` or ``(Y, X)`` (a ``(C, Z, Y, X)`` data shape is accepted too). Defaults to the
        sets' sidecar ``image_shape_zyx``. Without it, border exclusion is skipped (recorded in
        :attr:`ImageScore.warnings`).
    border_margin_um : float
        Border margin in µm (default 7, as the paper); 0 disables border exclusion.
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
        Unknown or mismatched voxel sizes, mismatched image sizes, unknown protocol.
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
    if not (isinstance(border_margin_um, (int, float)) and math.isfinite(border_margin_um) and border_margin_um >= 0):
        raise CellPolError(f"The border margin must be a non-negative number of µm, got {border_margin_um!r}.")
    if border_margin_um > 0:
        if shape is None:
            warnings.append("image size unknown: border exclusion skipped")
        else:
            margin = border_margin_voxels(border_margin_um, voxel[2])
            gt_index = gt_index[inside_border(gt, shape[1:], margin)]
            pred_index = pred_index[inside_border(pred, shape[1:], margin)]

    scale = np.asarray(voxel, dtype=np.float64)
    gt_n, gt_g = gt.nuclei[gt_index], gt.golgi[gt_index]
    pr_n, pr_g = pred.nuclei[pred_index], pred.golgi[pred_index]
    n_gt, n_pred = len(gt_index), len(pred_index)

    # One global assignment: rows = predictions, columns = ground truth, cost in µm.
    if n_gt and n_pred:
        cost = cdist(pr_n * scale, gt_n * scale) + cdist(pr_g * scale, gt_g * scale)
    else:
        cost = np.zeros((n_pred, n_gt))
    rows, cols, assigned_cost = hungarian_match(cost, chosen.cost_cutoff_um)

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
        Recorded on the result (used by :func:`evaluate_folders`).

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
    )


def _vector_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(VECTORS_SUFFIX) and not path.name.startswith("."):
            files[path.name[: -len(VECTORS_SUFFIX)]] = path
    return files


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    progress: Optional[ProgressCallback] = None,
    *,
    border_margin_um: float = 7.0,
    protocol: str = "auto",
    cancel: Optional[CancelToken] = None,
) -> EvaluationResult:
    """Score every ``<stem>.vectors.csv`` of ``pred_dir`` against the same stem in ``gt_dir``.

    Ground truth without a prediction is scored as all-FN (with a warning); predictions without
    ground truth are listed in :attr:`EvaluationResult.skipped`. Image sizes for border exclusion come
    from the sidecars' ``image_shape_zyx``.

    Parameters
    ----------
    gt_dir, pred_dir : path
        Folders of project vectors CSVs (with JSON sidecars).
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm overriding the sidecars'.
    progress : callable, optional
        ``progress(done, total, message)``.
    border_margin_um, protocol
        As for :func:`score_pairs`.
    cancel : CancelToken, optional
        Polled between images.

    Raises
    ------
    CellPolError
        Missing folders, no vectors files, no stem in common, unreadable files, mismatched voxel sizes
        (the message names the image).
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for what, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise CellPolError(f"The {what} folder {folder} does not exist (or is not a folder).")
    if gt_dir.resolve() == pred_dir.resolve():
        raise CellPolError(f"The ground-truth and prediction folders are the same ({gt_dir}).")
    gt_files, pred_files = _vector_files(gt_dir), _vector_files(pred_dir)
    if not gt_files:
        raise CellPolError(f"No ground-truth vectors (*{VECTORS_SUFFIX}) in {gt_dir}.")
    if not pred_files:
        raise CellPolError(f"No predicted vectors (*{VECTORS_SUFFIX}) in {pred_dir}.")
    common = sorted(set(gt_files) & set(pred_files))
    if not common:
        raise CellPolError(
            f"No file names in common between {gt_dir} and {pred_dir}: ground truth and prediction are "
            f"matched by name (<name>{VECTORS_SUFFIX})."
        )
    skipped = sorted(set(pred_files) - set(gt_files))
    folder_warnings = [f"{stem}: prediction without ground truth, skipped" for stem in skipped]
    stems = sorted(gt_files)
    scores: list[ImageScore] = []
    for done, stem in enumerate(stems):
        check_cancel(cancel)
        if progress is not None:
            progress(done, len(stems), f"Scoring {stem}")
        gt = read_pairs(gt_files[stem], voxel_size=voxel_size)
        if stem in pred_files:
            pred = read_pairs(pred_files[stem], voxel_size=voxel_size)
        else:
            pred = PairSet.empty(voxel_size=gt.voxel_size)
        try:
            score = score_pairs(
                gt, pred, border_margin_um=border_margin_um, protocol=protocol, voxel_size=voxel_size, name=stem
            )
        except CellPolError as exc:
            raise CellPolError(f"{stem}: {exc}") from None
        if stem not in pred_files:
            score.warnings.insert(0, "no prediction file: every ground-truth pair counts as FN")
        scores.append(score)
    if progress is not None:
        progress(len(stems), len(stems), "Scored")
    return aggregate(scores, skipped=skipped, warnings=folder_warnings)


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(result: EvaluationResult | ImageScore) -> str:
    """A fixed-width text table of the per-level metrics (aggregated, or of one image).

    Columns: level, MAF, τ_n, τ_g (µm), TP, FP, FN, TPR, FDR, mean signed cosine, mean vector error,
    ND and GD (µm). Undefined values print as "—".
    """
    if isinstance(result, EvaluationResult):
        title = f"{result.n_images} image(s), {result.protocol.upper()} protocol"
    else:
        title = f"{result.name}, {result.protocol.upper()} protocol"
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
    return "\n".join(lines) + "\n"


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
PER_IMAGE_COLUMNS = ["image"] + _LEVEL_COLUMNS + ["n_gt", "n_pred"] + _metric_columns()
SUMMARY_COLUMNS = _LEVEL_COLUMNS + ["n_images"] + _metric_columns()
PER_TP_COLUMNS = (
    ["image"] + _LEVEL_COLUMNS + ["gt_index", "pred_index", "gt_id", "pred_id"]
    + [_metric_column(k) for k in PER_TP_METRICS]
)


def write_evaluation(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the evaluation tables and curves into ``out_dir`` (created if needed), atomically.

    Files: ``evaluation_per_image.csv`` (image × level), ``evaluation_summary.csv`` (aggregate per
    level), ``evaluation_per_tp.csv`` (one row per TP and level) and ``evaluation_curves.png`` (TPR,
    FDR, cosine similarity, error norm, ND and GD vs level τL; shaded bands are ± the image-averaged
    standard deviation, thin grey lines the individual images). Undefined values are empty cells.

    Returns
    -------
    dict
        ``{"per_image", "summary", "per_tp", "curves"}`` → path.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CellPolError(f"{out} exists and is not a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CellPolError(f"Cannot create the folder {out} ({exc.strerror}).") from None
    paths = {
        "per_image": out / "evaluation_per_image.csv",
        "summary": out / "evaluation_summary.csv",
        "per_tp": out / "evaluation_per_tp.csv",
        "curves": out / "evaluation_curves.png",
    }
    atomic_write_text(paths["per_image"], _rows_to_csv(result.per_image_rows(), PER_IMAGE_COLUMNS))
    atomic_write_text(paths["summary"], _rows_to_csv(result.summary_rows(), SUMMARY_COLUMNS))
    atomic_write_text(paths["per_tp"], _rows_to_csv(result.per_tp_rows(), PER_TP_COLUMNS))
    _write_curves(result, paths["curves"])
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
