"""Reviewing predictions (human in the loop): accept, reject or correct predicted vectors, least confident first.

A prediction under review lives in the image's annotations as a pair whose source is ``predicted``. The user

* **accepts** it: its source becomes ``corrected`` (a human vouched for it, so training uses it);
* **rejects** it: it is deleted;
* **corrects** it: drags an end, and :meth:`AnnotationModel.move_point` makes it ``corrected``.

Each of these is one step on the annotation model's undo stack, the same stack as manual annotation.
How many predictions were put up for review is recorded in the annotations' ``meta["review"]["predictions"]``
by the one command that adds them (:class:`AddForReview`), so undoing the import undoes the count, and
*reviewed = put up − still predicted* holds after any sequence of edits, undos and redos (a predicted pair
deleted with the Delete key counts as rejected, as it should). The meta travels in the sidecar, so the
project panel reads the counts from disk (:func:`review_counts`).

Across a project, :func:`most_uncertain` finds the prediction the model is least sure of among every image's
unreviewed predictions (active learning: the cells whose annotation teaches the model most). An image whose
predictions have not been put up for review yet counts with its ``results/`` predictions.

Plain Python (no Qt).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from app.core.annotation import AnnotationModel, Command, Pair, find_recovery
from app.core.errors import CellPolError
from app.core.pairs import PairSet, read_pairs

#: The annotations' meta key holding the review record (``{"predictions": n, "from": [names]}``).
REVIEW_KEY = "review"
#: The source of a prediction not reviewed yet, and of one a human accepted or corrected.
PREDICTED = "predicted"
ACCEPTED = "corrected"


# ------------------------------------------------------------------------------------------
# Counts
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReviewCounts:
    """How far the review of one image has come.

    Attributes
    ----------
    total : int
        Predictions put up for review (or, before any was, the predictions waiting in ``results/``).
    remaining : int
        Predictions not reviewed yet (source ``predicted``).
    accepted : int
        Pairs a human accepted or corrected (source ``corrected``).
    """

    total: int = 0
    remaining: int = 0
    accepted: int = 0

    @property
    def reviewed(self) -> int:
        return max(self.total - self.remaining, 0)

    @property
    def rejected(self) -> int:
        return max(self.reviewed - self.accepted, 0)

    def text(self) -> str:
        """``"12 / 40"`` (reviewed / total), or ``""`` when there is nothing to review."""
        return f"{self.reviewed} / {self.total}" if self.total else ""


def review_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The review record of annotations' ``meta`` (``{}`` when none; a malformed one counts as none)."""
    record = meta.get(REVIEW_KEY)
    return dict(record) if isinstance(record, dict) else {}


def put_up(meta: Mapping[str, Any]) -> int:
    """How many predictions were put up for review according to ``meta``."""
    value = review_meta(meta).get("predictions", 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def counts_of(sources: Sequence[Any], meta: Mapping[str, Any]) -> ReviewCounts:
    """:class:`ReviewCounts` of annotations with these pair ``sources`` and ``meta``."""
    names = [str(s) for s in sources]
    remaining = names.count(PREDICTED)
    # predictions added before this record existed (e.g. imported by hand) still count as put up
    return ReviewCounts(max(put_up(meta), remaining), remaining, names.count(ACCEPTED))


def model_counts(model: AnnotationModel) -> ReviewCounts:
    return counts_of([p.source for p in model], model.meta)


# ------------------------------------------------------------------------------------------
# Editing (each one undoable step on the annotation model)
# ------------------------------------------------------------------------------------------
@dataclass
class AddForReview(Command):
    """Add predicted pairs and count them as put up for review, in one undoable step."""

    pairs: list[Pair]
    origin: str = ""
    text: str = "predictions to review"

    def _count(self, model: AnnotationModel, sign: int) -> None:
        record = review_meta(model.meta)
        record["predictions"] = max(put_up(model.meta) + sign * len(self.pairs), 0)
        origins = [o for o in record.get("from", []) if isinstance(o, str)]
        if self.origin and sign > 0 and self.origin not in origins:
            origins.append(self.origin)
        elif self.origin and sign < 0 and self.origin in origins and record["predictions"] == 0:
            origins.remove(self.origin)
        record["from"] = origins
        if record["predictions"] == 0 and not origins:
            model.meta.pop(REVIEW_KEY, None)
        else:
            model.meta[REVIEW_KEY] = record

    def do(self, model: AnnotationModel) -> None:
        model._insert([(None, p) for p in self.pairs])
        self._count(model, +1)

    def undo(self, model: AnnotationModel) -> None:
        model._remove([p.id for p in self.pairs])
        self._count(model, -1)


def add_for_review(model: AnnotationModel, predictions: PairSet, origin: str = "",
                   text: str = "predictions to review") -> list[int]:
    """Add ``predictions`` to ``model`` as pairs to review (source ``predicted``); one undoable step.

    ``origin`` (e.g. the predictions file's name or the model's) is recorded in the review meta. Returns the
    new pairs' ids.
    """
    pairs = [dataclasses.replace(p, source=PREDICTED) for p in model.fresh_pairs(predictions)]
    if pairs:
        model.execute(AddForReview(pairs, origin, text))
    return [p.id for p in pairs]


def is_under_review(model: AnnotationModel) -> bool:
    """Whether predictions of this image were ever put up for review (the record exists)."""
    return bool(review_meta(model.meta))


def accept(model: AnnotationModel, ids: Sequence[int]) -> int:
    """Accept predicted pairs (they become ``corrected``); one undoable step. Returns how many changed."""
    chosen = [int(i) for i in ids if int(i) in model and model.get(int(i)).source == PREDICTED]
    if chosen:
        model.set_sources(chosen, ACCEPTED, text="accept prediction" if len(chosen) == 1
                          else f"accept {len(chosen)} predictions")
    return len(chosen)


def reject(model: AnnotationModel, ids: Sequence[int]) -> int:
    """Reject predicted pairs (they are deleted); one undoable step. Returns how many."""
    chosen = [int(i) for i in ids if int(i) in model and model.get(int(i)).source == PREDICTED]
    if chosen:
        model.remove_pairs(chosen, text="reject prediction" if len(chosen) == 1
                           else f"reject {len(chosen)} predictions")
    return len(chosen)


def below(model: AnnotationModel, threshold: float) -> list[int]:
    """Ids of the predictions still to review whose score is below ``threshold`` (unscored ones are kept)."""
    return [p.id for p in model if p.source == PREDICTED and not math.isnan(p.score) and p.score < threshold]


def queue(model: AnnotationModel) -> list[int]:
    """Ids of the predictions still to review, least confident first (no score first, then by id)."""
    pending = [p for p in model if p.source == PREDICTED]
    return [p.id for p in sorted(pending, key=_uncertainty_key)]


def _uncertainty_key(pair: Pair) -> tuple[float, int]:
    return (-math.inf if math.isnan(pair.score) else pair.score, pair.id)


def next_in_queue(model: AnnotationModel, current: Optional[int], step: int = 1) -> Optional[int]:
    """The prediction ``step`` places after ``current`` in :func:`queue` (wrapping); the first when ``current``
    is not in it; ``None`` when nothing is left to review."""
    ids = queue(model)
    if not ids:
        return None
    if current not in ids:
        return ids[0] if step >= 0 else ids[-1]
    return ids[(ids.index(current) + step) % len(ids)]


# ------------------------------------------------------------------------------------------
# Across a project
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Uncertain:
    """The least confident unreviewed prediction of a project.

    ``put_up`` says whether it is already in the image's annotations (else it is in ``results/`` and must be
    put up for review first).
    """

    image: Path
    score: float
    nucleus: tuple[float, float, float]
    golgi: tuple[float, float, float]
    put_up: bool


def saved_annotations(vectors_path: str | os.PathLike) -> Optional[Path]:
    """The annotations file to read for an image: its autosave when newer, else the saved file, else ``None``."""
    recovery = find_recovery(vectors_path)
    if recovery is not None:
        return recovery
    path = Path(vectors_path)
    return path if path.is_file() else None


def image_candidates(annotations: Optional[PairSet], predictions_path: Optional[Path]) -> tuple[Optional[PairSet], bool]:
    """The unreviewed predictions of one image and whether they are already put up for review.

    Put up (annotations with a review record or predicted pairs): those predicted pairs. Else the image's
    predictions file, if any.
    """
    if annotations is not None:
        sources = [str(s) for s in annotations.sources]
        if put_up(annotations.meta) or PREDICTED in sources:
            return annotations.subset(np.array([s == PREDICTED for s in sources], dtype=bool)), True
    if predictions_path is not None and predictions_path.is_file():
        return read_pairs(predictions_path), False
    return None, False


def most_uncertain(project: Any, live: Optional[tuple[str | os.PathLike, AnnotationModel]] = None,
                   skip: Sequence[str | os.PathLike] = ()) -> Optional[Uncertain]:
    """The least confident unreviewed prediction over every image of ``project``.

    Parameters
    ----------
    project : app.core.project.Project
    live : (image path, AnnotationModel), optional
        The image open in the app: its model is used instead of the files on disk (it may hold unsaved edits).
    skip : paths
        Images to leave out.

    Files that cannot be read are passed over (the project panel shows why). Pairs without a score count as
    the least confident.
    """
    skipped = {Path(p).resolve() for p in skip}
    live_path = Path(live[0]).resolve() if live is not None else None
    best: Optional[Uncertain] = None
    for image in project.images():
        key = image.resolve()
        if key in skipped:
            continue
        if live is not None and key == live_path:
            model = live[1]
            candidates: Optional[PairSet] = model.to_pairset().subset(
                np.array([p.source == PREDICTED for p in model], dtype=bool)) if len(model) else None
            was_put_up = is_under_review(model) or candidates is not None and len(candidates) > 0
            if not was_put_up:
                candidates, was_put_up = image_candidates(None, project.predictions_path(image))
        else:
            try:
                source = saved_annotations(project.vectors_path(image))
                annotations = read_pairs(source) if source is not None else None
                candidates, was_put_up = image_candidates(annotations, project.predictions_path(image))
            except (CellPolError, OSError):
                continue
        if candidates is None or not len(candidates):
            continue
        scores = np.asarray(candidates.scores, dtype=float)
        order = np.where(np.isnan(scores), -np.inf, scores)
        k = int(np.argmin(order))
        if best is None or order[k] < (-math.inf if math.isnan(best.score) else best.score):
            best = Uncertain(image, float(scores[k]), tuple(float(v) for v in candidates.nuclei[k]),
                             tuple(float(v) for v in candidates.golgi[k]), was_put_up)
    return best


def find_pair(model: AnnotationModel, nucleus: Sequence[float], golgi: Sequence[float],
              tolerance: float = 1e-3) -> Optional[int]:
    """The id of the pair of ``model`` with these end positions (voxels), or ``None``."""
    n, g = np.asarray(nucleus, dtype=float), np.asarray(golgi, dtype=float)
    for pair in model:
        if np.allclose(pair.nucleus, n, atol=tolerance) and np.allclose(pair.golgi, g, atol=tolerance):
            return pair.id
    return None
