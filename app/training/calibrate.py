"""Choosing decoding parameters on validation images, as the authors did: maximise TPR − FDR at τL = 5.

The network runs once per image (:meth:`Predictor.run_network`); every candidate setting only re-decodes
its output, so a search over dozens of settings costs little more than one prediction.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

import numpy as np

from app.core import evaluate
from app.core.errors import CellPolError
from app.core.modelfile import DecodingSpec
from app.core.pairs import PairSet
from app.core.volume import Volume

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Up to 9 µm: two touching flattened nuclei (about 16 × 8.5 µm) have centroids at least ~7 µm apart, and a
#: crowded layer calls for the larger values to stop one nucleus yielding two peaks.
MIN_DISTANCE_NUCLEUS_UM = (2.0, 3.0, 4.0, 5.0, 7.0, 9.0)
MIN_DISTANCE_GOLGI_UM = (1.0, 1.5, 2.0, 3.0, 5.0)
#: Pairing by embedding alone (0, the paper), by distance among embedding-admissible edges (1), or between.
PAIRING_DISTANCE_WEIGHTS = (0.0, 0.5, 1.0)
#: How much the peaks' strength counts in pairing (0: not at all).
PAIRING_HEIGHT_WEIGHTS = (0.0, 0.3, 0.6, 0.8)
#: How deep a valley keeps two close peaks of a class apart (fraction of the lower one; 0: minimum distance only).
PEAK_VALLEYS = (0.0, 0.3, 0.5, 0.7)
#: How much a tube-like Golgi peak (a vessel) counts against it in pairing (0: not at all), and how far from
#: the peak (µm) the heatmap is read to tell a tube from a compact Golgi.
PAIRING_RIDGE_WEIGHTS = (0.0, 0.1, 0.2, 0.3)
RIDGE_RADII_UM = (2.5, 3.5, 5.0)


def calibrate_decoding(predictor, validation: Sequence[tuple[Volume, PairSet]], level: int = 5,
                       thresholds: Sequence[float] = THRESHOLDS,
                       min_distance_nucleus_um: Sequence[float] = MIN_DISTANCE_NUCLEUS_UM,
                       min_distance_golgi_um: Sequence[float] = MIN_DISTANCE_GOLGI_UM,
                       pairing_distance_weights: Sequence[float] = PAIRING_DISTANCE_WEIGHTS,
                       pairing_height_weights: Sequence[float] = PAIRING_HEIGHT_WEIGHTS,
                       peak_valleys: Sequence[float] = PEAK_VALLEYS,
                       pairing_ridge_weights: Sequence[float] = PAIRING_RIDGE_WEIGHTS,
                       ridge_radii_um: Sequence[float] = RIDGE_RADII_UM,
                       rounds: int = 2, progress=None) -> tuple[DecodingSpec, list[dict]]:
    """Best :class:`DecodingSpec` on ``validation`` and the table of every setting tried.

    The pairing rule (:attr:`DecodingSpec.pairing_distance_weight` and ``pairing_height_weight``, jointly)
    is chosen first, at the current thresholds; then how much a tube-like Golgi peak counts against it
    (:attr:`DecodingSpec.pairing_ridge_weight` with ``ridge_radius_um``); then the thresholds jointly (at
    the current minimum distances); then the minimum distances at the best thresholds; then how deep a
    valley keeps two close peaks apart (:attr:`DecodingSpec.peak_valley_golgi`, ``_nucleus``). Up to
    ``rounds`` such passes run, stopping when one changes nothing (each choice is then made knowing the
    others); no setting is scored twice. The score is the mean over images of TPR − FDR at ``level``.
    """
    if not validation:
        raise CellPolError("Calibration needs at least one validation image with vectors.")
    outputs = []
    for k, (volume, _) in enumerate(validation):
        outputs.append(predictor.run_network(volume))
        if progress:
            progress(k + 1, len(validation), "validation images")
    table: list[dict] = []

    def score(decoding: DecodingSpec) -> float:
        scores = [evaluate.score_pairs(gt, predictor.decode(out, decoding), image_shape=volume.spatial_shape)
                  for out, (volume, gt) in zip(outputs, validation)]
        result = evaluate.aggregate(scores)
        # No detections at all: FDR is undefined (no false discoveries) and TPR is 0, so J = 0.
        tpr = float(np.nan_to_num(result.tpr[level]))
        fdr = float(np.nan_to_num(result.fdr[level]))
        j = tpr - fdr
        table.append({**dataclasses.asdict(decoding), "tpr": tpr, "fdr": fdr, "j": j})
        return j

    best = predictor.decoding
    best_j = score(best)
    tried = {best}
    grids = (
        ("pairing_distance_weight", "pairing_height_weight", pairing_distance_weights, pairing_height_weights),
        ("pairing_ridge_weight", "ridge_radius_um", pairing_ridge_weights, ridge_radii_um),
        ("peak_threshold_nucleus", "peak_threshold_golgi", thresholds, thresholds),
        ("min_distance_nucleus_um", "min_distance_golgi_um", min_distance_nucleus_um, min_distance_golgi_um),
        ("peak_valley_nucleus", "peak_valley_golgi", peak_valleys, peak_valleys),
    )
    for _ in range(rounds):
        before = best
        for name_a, name_b, values_a, values_b in grids:
            for a, b in itertools.product(values_a, values_b):
                candidate = dataclasses.replace(best, **{name_a: a, name_b: b})
                if candidate in tried:
                    continue
                tried.add(candidate)
                j = score(candidate)
                if j > best_j:
                    best, best_j = candidate, j
        if best == before:
            break
    return best, table


def best_row(table: list[dict]) -> Optional[dict]:
    return max(table, key=lambda row: row["j"]) if table else None
