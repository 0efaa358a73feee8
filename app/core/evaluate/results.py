"""What scoring gives: :class:`ImageScore` (one image at the 14 levels), :class:`EvaluationResult` (several images),
their rows for the CSV tables, and :func:`aggregate`, which combines images as the paper does (rules 7 and 8 in
:mod:`app.core.evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.evaluate.protocol import MAF_LEVELS, N_LEVELS, PER_TP_METRICS

#: Status of an image whose ground truth has no prediction file (its pairs are all FN).
NO_PREDICTION = "no prediction file"


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
        NaN where undefined (see :mod:`app.core.evaluate`, rule 5).
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


def _quiet_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over ``axis`` skipping NaN; NaN (without a warning) where nothing is left."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
