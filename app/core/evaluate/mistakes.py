"""The false positives and misses of an evaluation at one level τL, with their positions, to go and look at them.

:func:`evaluate_job` keeps, per image, which rows of the input files were matched and at which levels each match is
a TP; this module re-reads the vectors files the evaluation scored (found by the same rules, so the names agree)
to give the rows that were not: a **false positive** is a predicted pair that was scored (inside the border
margin) and is not a TP at the level, a **miss** a ground-truth pair that was scored and is not a TP at the level.
Pairs the border exclusion left out are neither (rule 2 in :mod:`app.core.evaluate`), decided by
:func:`~app.core.evaluate.scoring.inside_border` with the image size and margin each :class:`ImageScore` records.

:func:`read_mistakes` reads the files once (:class:`Mistakes`, then :meth:`Mistakes.at` for any level);
:func:`find_mistakes` is both in one call; :func:`find_image` the image a mistake is in.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from app.core.errors import CellPolError
from app.core.evaluate.folders import _checked_folders, _files_to_score, _images_by_stem
from app.core.evaluate.protocol import N_LEVELS
from app.core.evaluate.results import NO_PREDICTION, EvaluationResult, ImageScore
from app.core.evaluate.scoring import inside_border
from app.core.pairs import PairSet, read_pairs

#: :attr:`Mistake.kind` of a predicted pair that is not a TP.
FALSE_POSITIVE = "false positive"
#: :attr:`Mistake.kind` of a ground-truth pair that is not a TP.
MISS = "miss"


@dataclass(frozen=True)
class Mistake:
    """One false positive or miss at a level.

    Attributes
    ----------
    image : str
        The image's stem (:attr:`ImageScore.name`).
    kind : str
        :data:`FALSE_POSITIVE` or :data:`MISS`.
    nucleus, golgi : tuple of float
        ``(z, y, x)`` in voxels, 0-based.
    score : float
        The prediction's confidence; NaN for misses (and for predictions without one).
    row : int
        Row of the pair in its file (the prediction file for a false positive, the ground truth for a miss;
        0 = the first pair): the ``pred_index`` / ``gt_index`` of :attr:`ImageScore.matches`.
    pair_id : int
        The pair's id in its file.
    file : Path
        The vectors file it comes from.
    """

    image: str
    kind: str
    nucleus: tuple[float, float, float]
    golgi: tuple[float, float, float]
    score: float
    row: int
    pair_id: int
    file: Path


@dataclass
class _ImageFiles:
    """One scored image: its score, its pairs as read, and which rows the evaluation kept."""

    score: ImageScore
    gt: PairSet
    pred: PairSet
    gt_path: Path
    pred_path: Optional[Path]
    gt_kept: np.ndarray
    pred_kept: np.ndarray


class Mistakes:
    """The files of an evaluation, read once; :meth:`at` gives the false positives and misses at a level.

    Made by :func:`read_mistakes`.
    """

    def __init__(self, images: list[_ImageFiles]) -> None:
        self._images = images

    def at(self, level: int) -> list[Mistake]:
        """The false positives and misses at level ``level`` (τL, 0..13).

        Sorted: the false positives first, by score descending (the most confident wrong first; without a score
        last), then the misses, each by image and row.

        Raises
        ------
        CellPolError
            A level outside 0..13.
        """
        level = _checked_level(level)
        false_positives: list[Mistake] = []
        misses: list[Mistake] = []
        for image in self._images:
            tp = image.score.tp_mask[level]
            matched_pred = set(image.score.matches["pred_index"][tp].tolist())
            matched_gt = set(image.score.matches["gt_index"][tp].tolist())
            if image.pred_path is not None:
                false_positives += [_mistake(image.score.name, FALSE_POSITIVE, image.pred, row, image.pred_path)
                                    for row in image.pred_kept.tolist() if row not in matched_pred]
            misses += [_mistake(image.score.name, MISS, image.gt, row, image.gt_path)
                       for row in image.gt_kept.tolist() if row not in matched_gt]
        false_positives.sort(key=lambda m: (math.isnan(m.score), -m.score if not math.isnan(m.score) else 0.0,
                                            m.image, m.row))
        misses.sort(key=lambda m: (m.image, m.row))
        return false_positives + misses


def read_mistakes(result: EvaluationResult, gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> Mistakes:
    """Read the vectors files ``result`` scored (the ones :func:`~app.core.evaluate.evaluate_job` picks in
    ``gt_dir`` and ``pred_dir``), to list its false positives and misses at any level.

    Call it with the folders ``result`` was made from, before the files change.

    Raises
    ------
    CellPolError
        A folder or file gone or unreadable, or files that no longer hold the pairs the evaluation scored (the
        message names the image).
    """
    gt_path, pred_path = _checked_folders(gt_dir, pred_dir)
    gt_files, pred_files, _, _ = _files_to_score(gt_path, pred_path)
    images = []
    for score in result.images:
        gt_file = gt_files.get(score.name)
        pred_file = None if score.status == NO_PREDICTION else pred_files.get(score.name)
        if gt_file is None or (pred_file is None and score.status != NO_PREDICTION):
            raise CellPolError(f"{score.name}: its vectors files are no longer in {gt_path} and {pred_path}; "
                               "evaluate again.")
        try:
            gt = read_pairs(gt_file)
            pred = read_pairs(pred_file) if pred_file is not None else PairSet.empty()
        except CellPolError as exc:
            raise CellPolError(f"{score.name}: {exc}") from None
        gt_kept, pred_kept = _kept_rows(score, gt), _kept_rows(score, pred)
        if len(gt_kept) != score.n_gt or len(pred_kept) != score.n_pred:
            raise CellPolError(
                f"{score.name}: the vectors files have changed since the evaluation ({len(gt_kept)} ground-truth and "
                f"{len(pred_kept)} predicted pairs scored now, {score.n_gt} and {score.n_pred} then); evaluate again."
            )
        images.append(_ImageFiles(score, gt, pred, gt_file, pred_file, gt_kept, pred_kept))
    return Mistakes(images)


def find_mistakes(result: EvaluationResult, level: int, gt_dir: str | os.PathLike,
             pred_dir: str | os.PathLike) -> list[Mistake]:
    """The false positives and misses of ``result`` at level ``level`` (τL, 0..13), sorted as :meth:`Mistakes.at`.

    ``gt_dir`` and ``pred_dir`` are the folders ``result`` was made from (:func:`read_mistakes`).

    Examples
    --------
    >>> import tempfile
    >>> from app.core.evaluate import evaluate_folders
    >>> from app.core.pairs import PairSet, write_pairs
    >>> gt_dir, pred_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> meta = {"image_shape_zyx": [10, 100, 100]}
    >>> gt = PairSet([[5, 30, 30], [5, 60, 60]], [[5, 33, 30], [5, 63, 60]], voxel_size=(1, 1, 1), meta=meta)
    >>> pred = PairSet([[5, 30, 30], [5, 70, 40]], [[5, 33, 30], [5, 73, 40]], voxel_size=(1, 1, 1),
    ...                scores=[0.9, 0.8], sources="predicted", meta=meta)
    >>> _ = write_pairs(f"{gt_dir}/a.vectors.csv", gt), write_pairs(f"{pred_dir}/a.pred.vectors.csv", pred)
    >>> result = evaluate_folders(gt_dir, pred_dir)
    >>> [(m.kind, m.row, m.nucleus) for m in find_mistakes(result, 0, gt_dir, pred_dir)]
    [('false positive', 1, (5.0, 70.0, 40.0)), ('miss', 1, (5.0, 60.0, 60.0))]
    """
    return read_mistakes(result, gt_dir, pred_dir).at(level)


def find_image(stem: str, images_dir: Optional[str | os.PathLike]) -> Optional[Path]:
    """The image named ``stem`` in ``images_dir`` (by the rule :func:`~app.core.evaluate.evaluate_job` matches
    images to vectors with), or ``None``: no folder, no such image, or several images of that name."""
    if images_dir is None or not Path(images_dir).is_dir():
        return None
    candidates = _images_by_stem(Path(images_dir)).get(stem, [])
    return candidates[0] if len(candidates) == 1 else None


def _checked_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) < N_LEVELS:
        raise CellPolError(f"The level τL must be an integer from 0 to {N_LEVELS - 1}, got {level!r}.")
    return int(level)


def _kept_rows(score: ImageScore, pairs: PairSet) -> np.ndarray:
    """The rows of ``pairs`` that the border exclusion of ``score`` kept (all when it applied none)."""
    rows = np.arange(len(pairs))
    if score.border_margin_voxels is None or score.image_shape is None:
        return rows
    return rows[inside_border(pairs, score.image_shape[1:], score.border_margin_voxels)]


def _mistake(image: str, kind: str, pairs: PairSet, row: int, path: Path) -> Mistake:
    score = float(pairs.scores[row]) if kind == FALSE_POSITIVE else math.nan
    return Mistake(image=image, kind=kind, nucleus=tuple(float(v) for v in pairs.nuclei[row]),  # type: ignore[arg-type]
                   golgi=tuple(float(v) for v in pairs.golgi[row]),  # type: ignore[arg-type]
                   score=score, row=int(row), pair_id=int(pairs.ids[row]), file=path)
