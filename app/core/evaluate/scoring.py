"""Scoring one image: border exclusion, points outside the image, the assignment, TP at each level and the per-TP
metrics (:func:`score_pairs`; the rules are in :mod:`app.core.evaluate`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.evaluate.matching import match_within_radius
from app.core.evaluate.protocol import (
    N_LEVELS,
    PER_TP_METRICS,
    _TIE_TOLERANCE_UM,
    Protocol,
    _check_border_margin,
    _choose_protocol,
    border_margin_voxels,
)
from app.core.evaluate.results import ImageScore
from app.core.pairs import PairSet
from app.core.volume import parse_voxel_size

#: A point lies outside the image beyond this many voxels past the centre of the first or last voxel.
OUTSIDE_TOLERANCE_VOXELS = 0.5


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
    if name is None:
        name = _default_name(gt, pred)
    gt_index, pred_index, margin, warnings = _pairs_inside(gt, pred, shape, voxel, border_margin_um)
    n_gt, n_pred = len(gt_index), len(pred_index)
    matches = _match(gt, pred, gt_index, pred_index, voxel, chosen)
    tp_mask = _tp_mask(matches, chosen)
    counts = _counts_and_rates(tp_mask, n_gt, n_pred)
    warnings += _empty_set_warnings(n_gt, n_pred)
    mean, std = _per_level_statistics(matches, tp_mask)
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
        tau_nucleus=chosen.tau_nucleus,
        tau_golgi=chosen.tau_golgi,
        **counts,
        mean=mean,
        std=std,
        matches=matches,
        tp_mask=tp_mask,
        warnings=warnings,
    )


# --- the steps of score_pairs --------------------------------------------------------------------------------


def _default_name(gt: PairSet, pred: PairSet) -> str:
    """The image name the sets record (ground truth first), else ``"image"``."""
    name = str(gt.meta.get("image") or pred.meta.get("image") or "image")
    return Path(name).name or name


def _pairs_inside(
    gt: PairSet,
    pred: PairSet,
    shape: Optional[tuple[Optional[int], int, int]],
    voxel: tuple[float, float, float],
    border_margin_um: float,
) -> tuple[np.ndarray, np.ndarray, Optional[int], list[str]]:
    """The rows of ``gt`` and ``pred`` that the border exclusion keeps (in-plane only, strict, both ends of each
    pair), the margin in voxels (``None`` when the border margin is 0) and the warnings.

    Refuses points outside the image when its size is known, and a border margin without an image size.
    """
    gt_index = np.arange(len(gt))
    pred_index = np.arange(len(pred))
    margin: Optional[int] = None
    warnings: list[str] = []
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
    return gt_index, pred_index, margin, warnings


def _match(
    gt: PairSet,
    pred: PairSet,
    gt_index: np.ndarray,
    pred_index: np.ndarray,
    voxel: tuple[float, float, float],
    chosen: Protocol,
) -> dict[str, np.ndarray]:
    """One global assignment of the kept pairs (rows = predictions, columns = ground truth, cost in µm) and the
    per-match metrics, from the true distances, not the capped cost (:attr:`ImageScore.matches`)."""
    scale = np.asarray(voxel, dtype=np.float64)
    gt_n, gt_g = gt.nuclei[gt_index], gt.golgi[gt_index]
    pr_n, pr_g = pred.nuclei[pred_index], pred.golgi[pred_index]
    rows, cols, assigned_cost = match_within_radius(
        pr_n * scale, pr_g * scale, gt_n * scale, gt_g * scale, chosen.cost_cutoff_um
    )
    v_pred_vox = pr_g[rows] - pr_n[rows]
    v_gt_vox = gt_g[cols] - gt_n[cols]
    return {
        "gt_index": gt_index[cols],
        "pred_index": pred_index[rows],
        "gt_id": gt.ids[gt_index[cols]],
        "pred_id": pred.ids[pred_index[rows]],
        "cost": assigned_cost,
        "cos": _cosine_signed(v_pred_vox * scale, v_gt_vox * scale),
        "cos_paper": _cosine_paper(v_pred_vox, v_gt_vox),
        "error": np.linalg.norm((v_pred_vox - v_gt_vox) * scale, axis=1),
        "nd": np.linalg.norm((pr_n[rows] - gt_n[cols]) * scale, axis=1),
        "gd": np.linalg.norm((pr_g[rows] - gt_g[cols]) * scale, axis=1),
    }


def _tp_mask(matches: dict[str, np.ndarray], chosen: Protocol) -> np.ndarray:
    """Whether each match is a TP at each level, shape ``(14, M)``: ``dN <= τ_n`` and ``dG <= τ_g``."""
    nd, gd = matches["nd"], matches["gd"]
    tau_n, tau_g = chosen.tau_nucleus, chosen.tau_golgi
    return (nd[None, :] <= tau_n[:, None] + _TIE_TOLERANCE_UM) & (gd[None, :] <= tau_g[:, None] + _TIE_TOLERANCE_UM)


def _counts_and_rates(tp_mask: np.ndarray, n_gt: int, n_pred: int) -> dict[str, np.ndarray]:
    """``tp``, ``fp``, ``fn`` (int) and ``tpr``, ``fdr``, ``fnr`` (NaN where undefined) per level."""
    tp = tp_mask.sum(axis=1).astype(np.int64)
    fp = n_pred - tp
    fn = n_gt - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_gt if n_gt else np.full(N_LEVELS, np.nan)
        fnr = fn / n_gt if n_gt else np.full(N_LEVELS, np.nan)
        # FP / (FP + TP) = FP / #pred; it is 1 when TP = 0 and FP > 0, undefined without predictions.
        fdr = fp / n_pred if n_pred else np.full(N_LEVELS, np.nan)
    return {
        "tp": tp,
        "fp": np.asarray(fp, dtype=np.int64),
        "fn": np.asarray(fn, dtype=np.int64),
        "tpr": np.asarray(tpr, dtype=np.float64),
        "fdr": np.asarray(fdr, dtype=np.float64),
        "fnr": np.asarray(fnr, dtype=np.float64),
    }


def _empty_set_warnings(n_gt: int, n_pred: int) -> list[str]:
    """What the user should know when a set has no pairs left (some rates are then undefined)."""
    warnings = []
    if n_gt == 0:
        warnings.append("no ground-truth pairs (after border exclusion): TPR and FNR undefined")
    if n_pred == 0:
        warnings.append("no predicted pairs (after border exclusion): FDR undefined")
    return warnings


def _per_level_statistics(
    matches: dict[str, np.ndarray], tp_mask: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Mean and sample std of each per-TP metric over the TPs of each level."""
    mean = {key: np.full(N_LEVELS, np.nan) for key in PER_TP_METRICS}
    std = {key: np.full(N_LEVELS, np.nan) for key in PER_TP_METRICS}
    for level in range(N_LEVELS):
        for key in PER_TP_METRICS:
            mean[key][level], std[key][level] = _mean_std(matches[key][tp_mask[level]])
    return mean, std


# --- the building blocks -------------------------------------------------------------------------------------


def inside_border(pairs: PairSet, shape_yx: Sequence[int], margin: int) -> np.ndarray:
    """Boolean mask of pairs whose nucleus *and* Golgi satisfy ``margin < coord < dim - margin``
    in y and x (strict; z is not checked, as in the paper)."""
    dim_y, dim_x = (float(d) for d in shape_yx)
    mask = np.ones(len(pairs), dtype=bool)
    for points in (pairs.nuclei, pairs.golgi):
        y, x = points[:, 1], points[:, 2]
        mask &= (y > margin) & (y < dim_y - margin) & (x > margin) & (x < dim_x - margin)
    return mask


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
