"""Annotated (or predicted) pairs compared with reference vectors, for the app's evaluation colours.

:func:`check_reference` refuses a reference made for another image (voxel size, shape, points outside);
:func:`compare_with_reference` scores the pairs with the paper's protocol
(:func:`app.core.evaluate.score_pairs`) and labels each pair TP, FP or :data:`BORDER`, with the reference
rows left unmatched (FN), so the colours in the views always agree with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.volume import parse_voxel_size

if TYPE_CHECKING:
    from app.core.evaluate import ImageScore

#: Label of the pairs the paper's border exclusion leaves out (neither TP nor FP).
BORDER = "border"
#: The levels shown in the app: τL = 0 (MAF 0.75, the loosest) and τL = 5 (MAF 0.50).
SHOWN_LEVELS = (0, 5)


@dataclass
class ReferenceComparison:
    """The pairs scored against a reference with the paper's protocol (:func:`app.core.evaluate.score_pairs`).

    Attributes
    ----------
    score : ImageScore
        TP, FP, FN, TPR, FDR... at the 14 levels.
    level : int
        The level the labels are for.
    labels : dict of int to str
        Pair id → ``"TP"``, ``"FP"`` or :data:`BORDER` (left out by the border margin).
    fn_rows : ndarray of int
        Rows of the reference no pair matched at ``level`` (border pairs excluded).
    """

    score: ImageScore
    level: int
    labels: dict[int, str]
    fn_rows: np.ndarray


def check_reference(reference: PairSet, voxel_size: Sequence[float], image_shape: Sequence[int]) -> PairSet:
    """``reference`` with the image's voxel size, after checking it was made for an image like this one.

    Raises
    ------
    CellPolError
        The reference's own voxel size (from its sidecar) or image shape differs from the image's, or some of
        its points lie outside the image: one message saying which, so nothing is scored on the wrong grid.
    """
    voxel = parse_voxel_size(voxel_size)
    shape = tuple(int(s) for s in image_shape)
    if reference.voxel_size is not None and not np.allclose(reference.voxel_size, voxel, rtol=1e-4, atol=0):
        raise CellPolError(
            f"The reference vectors were made at a voxel size of {_um(reference.voxel_size)} µm (z × y × x) but this "
            f"image has {_um(voxel)} µm. Compare vectors made at the same calibration, or correct the image's voxel "
            "size (File ▸ Set voxel size…).")
    made_on = reference.meta.get("image_shape_zyx")
    if made_on is not None:
        try:
            made_on = tuple(int(s) for s in made_on)
        except (TypeError, ValueError):
            made_on = None
    if made_on is not None and made_on != shape:
        raise CellPolError(
            f"The reference vectors were made on an image of {_voxels(made_on)} voxels (z × y × x); this image is "
            f"{_voxels(shape)}. Open the image they belong to.")
    if len(reference):
        points = np.concatenate([reference.nuclei, reference.golgi])
        outside = np.any((points < -0.5) | (points > np.asarray(shape) - 0.5), axis=1)
        if outside.any():
            raise CellPolError(
                f"{int(outside.sum())} reference point(s) lie outside this image ({_voxels(shape)} voxels, z × y × x): "
                "were the reference vectors made for another image, or with other units (0-based voxels)?")
    return reference.with_voxel_size(voxel)


def _um(values: Sequence[float]) -> str:
    return " × ".join(f"{v:g}" for v in values)


def _voxels(values: Sequence[int]) -> str:
    return "×".join(str(v) for v in values)


def compare_with_reference(reference: PairSet, pairs: PairSet, image_shape: Optional[Sequence[int]] = None,
                           level: int = 5, border_margin_um: float = 7.0) -> ReferenceComparison:
    """Score ``pairs`` against ``reference`` (the paper's protocol) and label each pair for the views.

    The scoring is :func:`app.core.evaluate.score_pairs` itself (Hungarian matching, thresholds per level,
    border exclusion of ``border_margin_um``, 7 µm as the paper; 0 keeps every pair); the labels are its TPs at
    ``level``, so the colours always agree with the numbers.

    Parameters
    ----------
    reference : PairSet
        The reference (ground-truth) vectors (see :func:`check_reference`).
    pairs : PairSet
        The vectors being scored; their ids key the labels.
    image_shape : (Z, Y, X), optional
        Needed for the border exclusion (default: the sets' sidecar ``image_shape_zyx``).
    level : int
        The level (0–13) the labels are for.
    border_margin_um : float
        Pairs this close to the image's XY border are left out and labelled :data:`BORDER`; 0 keeps every pair.

    Returns
    -------
    ReferenceComparison
    """
    # Deliberately lazy: app.core.evaluate brings scipy.optimize and scipy.sparse (~0.4 s), and the app imports
    # this module at start-up (through app.ui.document); it is loaded when the first comparison is made.
    from app.core.evaluate import inside_border, score_pairs

    score = score_pairs(reference, pairs, image_shape=image_shape, border_margin_um=border_margin_um)
    tp_mask = score.tp_mask[level] if score.tp_mask.size else np.zeros(0, dtype=bool)
    tp_pred = set(score.matches["pred_index"][tp_mask].tolist())
    tp_gt = set(score.matches["gt_index"][tp_mask].tolist())
    if score.border_margin_voxels is not None:
        shape_yx = score.image_shape[1:]
        pred_inside = inside_border(pairs, shape_yx, score.border_margin_voxels)
        gt_inside = inside_border(reference, shape_yx, score.border_margin_voxels)
    else:
        pred_inside = np.ones(len(pairs), dtype=bool)
        gt_inside = np.ones(len(reference), dtype=bool)
    labels = {int(pairs.ids[i]): (BORDER if not pred_inside[i] else "TP" if i in tp_pred else "FP")
              for i in range(len(pairs))}
    fn_rows = np.array([i for i in range(len(reference)) if gt_inside[i] and i not in tp_gt], dtype=np.int64)
    return ReferenceComparison(score, int(level), labels, fn_rows)
