"""Learned prediction (3DCellPol / 3DCtrDet): a whole image in, polarity vectors out.

Pipeline for one volume (:meth:`Predictor.predict`):

1. **Channels.** The nucleus and Golgi channels of the :class:`~app.core.volume.Volume`, in the order the
   model expects (``ModelSpec.channel_roles``).
2. **Resampling** to the voxel size the model was trained at, then **normalisation** with the model's
   percentiles computed on the *whole* image: what :func:`app.core.preprocess.resample` and
   :func:`~app.core.preprocess.normalize` (the functions training uses) compute, done in torch on the
   predictor's device (:func:`prepare_on_device`), so on a GPU the image goes up once and stays there
   until the heatmaps come back. The reference code scaled each window on its own (relative thresholds
   per window); here one intensity scale holds for the whole image.
3. **Overlapping windows** on a product grid (:func:`plan_windows`). Along every axis neighbouring windows
   overlap by at least ``d_max + 2 × context`` µm, so any nucleus–Golgi pair short enough to be paired
   fits, with ``context`` µm to spare on each side, inside at least one window. Windows are batched, run
   under ``torch.inference_mode`` with the fast memory layout (``channels_last_3d``) and mixed precision
   where it pays (:func:`app.core.device.autocast_dtype`: CPU bf16 only where the CPU has native bf16;
   CUDA fp16/bf16).
4. **Stitching.** Heatmaps are blended into full-size arrays with a raised-cosine ramp across every
   overlap (the ramps of two neighbours sum to one), so window borders leave no seams. The blending
   weights are separable, so their sum is three 1D arrays rather than a third full-size volume.
   **Embeddings are never blended:** a scalar embedding is only comparable to others *from the same window*
   (the pull/push loss only constrains pairs within one training patch), so the raw embedding output of
   each window is kept (float16, the part inside the image) until pairing.
5. **Peaks** on the stitched heatmaps (:func:`find_peaks`): local maxima above an *absolute* threshold per
   class, thinned greedily (highest first) so no two peaks of a class are closer than a minimum distance
   *in µm* (an ellipsoid in voxels on anisotropic data) unless a valley deeper than the model's
   ``peak_valley_*`` fraction of the lower peak separates them, then refined to sub-voxel precision by a
   log-Gaussian fit in the 3×3×3 neighbourhood (exact for Gaussian peaks; a plain weighted centroid over
   3×3×3 would pull the estimate towards the voxel centre).
6. **Pairing** (:func:`match_pairs`). A candidate edge joins a nucleus and a Golgi at most ``d_max`` µm
   apart, is judged in the one window holding both ends deepest inside, and costs what the pairing rule
   says (:mod:`app.core.inference.pairing`, where it is written once, with the reasons for each of its
   terms); all nuclei and Golgi are then paired one-to-one in a *global* maximum-weight matching. Every
   cell thus yields one vector however many windows saw it. ``ctrdet`` models (no embeddings) are paired
   by distance with :func:`app.core.classic.pair_by_distance`.
7. **Score** of a vector: ``sqrt(h_n · h_g) × (1 − |Δe|/Δ)``, the geometric mean of the two (stitched)
   peak heights times a linear pairing confidence (1 for identical embeddings, 0 at the push margin Δ). For
   ``ctrdet`` the pairing factor is 1. Positions are mapped back to the *input* voxel grid
   (:meth:`~app.core.preprocess.Resampling.to_input`).

Ensembles (several model files): every member runs on the same window grid; their stitched heatmaps are
averaged for detection, and an edge's embedding cost is the **mean over members of** ``|Δe_m| / Δ_m`` (each
member's embeddings read from its own raw window output, normalised by its own push margin), admissible
when that mean is below 1. A mean rather than a majority vote keeps a graded confidence and lets a
member that is sure outweigh one that is unsure. Decoding parameters (thresholds, minimum distances,
``d_max``) are the members' means unless ``decoding`` is given.

Memory: besides the input, the normalised image (float32, 2 channels), the two stitched heatmaps (float32),
the raw embedding windows (float16) and one batch of network activations. The window size and batch are
chosen from a memory budget (about 1.3 GB of activations on a CPU), so a 64×768×768 stack stays well below
3 GB.

Modules
-------
:mod:`~app.core.inference.windows`
    The window grid (:func:`plan_axis`, :func:`plan_windows`, :class:`WindowGrid`): step 3, and the
    blending weights of step 4.
:mod:`~app.core.inference.peaks`
    Local maxima on the host and on the device, thinning, valleys, ridge scores, :func:`refine_peaks`,
    :func:`find_peaks`: step 5.
:mod:`~app.core.inference.pairing`
    The pairing rule (:func:`pairing_cost` and its parts), :func:`candidate_edges`, embeddings read per
    window, :func:`match_pairs`: steps 6 and 7.
:mod:`~app.core.inference.staging`
    :func:`prepare_on_device` (step 2), :func:`fuse_batchnorm`, the out-of-memory messages.
:mod:`~app.core.inference.predictor`
    :class:`Predictor` (the pipeline), :class:`Member`, :class:`Prediction`, :class:`NetworkOutput`.
:mod:`~app.core.inference.streaming`
    Images too big for memory, read and predicted tile by tile (:func:`predict_lazy_job`,
    :meth:`Predictor.predict_lazy`; batch prediction switches to it above a memory budget).
:mod:`~app.core.inference.models`
    The shipped starter models (:func:`models_dir`, :func:`starter_models`, :func:`find_starter_model`,
    :class:`StarterPredictor`).

Device choice (:func:`select_device`) and mixed precision live in :mod:`app.core.device`, shared with
training. Every name callers use is importable from ``app.core.inference`` itself.
"""

from __future__ import annotations

from app.core.device import select_device
from app.core.inference.models import StarterPredictor, find_starter_model, models_dir, starter_models
from app.core.inference.pairing import (
    SCORE_FORMULA,
    Pairing,
    _read_embedding,
    candidate_edges,
    edge_weight,
    embedding_cost,
    match_pairs,
    pairing_cost,
    peak_strength,
    vector_scores,
)
from app.core.inference.peaks import (
    DEVICE_MAXIMA_FLOOR,
    MAX_PEAKS,
    RIDGE_AXES,
    LocalMaxima,
    Peaks,
    _local_maxima,
    device_local_maxima,
    find_peaks,
    refine_peaks,
    ridge_scores,
)
from app.core.inference.predictor import (
    CPU_ACTIVATION_BUDGET,
    CUDA_FREE_MEMORY_FRACTION,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONTEXT_UM,
    DEFAULT_MAX_WINDOW_YX,
    DEFAULT_MAX_WINDOW_Z,
    MPS_ACTIVATION_BUDGET,
    CancelLike,
    Member,
    NetworkOutput,
    PathLike,
    Prediction,
    Predictor,
    ProgressLike,
)
from app.core.inference.staging import _out_of_memory, _percentile_range_torch, fuse_batchnorm, prepare_on_device
from app.core.inference.streaming import LazyVolume, open_for_prediction, predict_lazy_job
from app.core.inference.windows import WindowGrid, plan_axis, plan_windows

__all__ = [
    # device (app.core.device)
    "select_device",
    # windows
    "WindowGrid", "plan_axis", "plan_windows",
    # peaks
    "DEVICE_MAXIMA_FLOOR", "MAX_PEAKS", "RIDGE_AXES", "LocalMaxima", "Peaks", "device_local_maxima", "find_peaks",
    "refine_peaks", "ridge_scores",
    # pairing
    "SCORE_FORMULA", "Pairing", "candidate_edges", "edge_weight", "embedding_cost", "match_pairs",
    "pairing_cost", "peak_strength", "vector_scores",
    # staging
    "fuse_batchnorm", "prepare_on_device",
    # predictor
    "CPU_ACTIVATION_BUDGET", "CUDA_FREE_MEMORY_FRACTION", "DEFAULT_BATCH_SIZE", "DEFAULT_CONTEXT_UM",
    "DEFAULT_MAX_WINDOW_YX", "DEFAULT_MAX_WINDOW_Z", "MPS_ACTIVATION_BUDGET", "CancelLike", "Member",
    "NetworkOutput", "PathLike", "Prediction", "Predictor", "ProgressLike",
    # streaming (images read tile by tile)
    "LazyVolume", "open_for_prediction", "predict_lazy_job",
    # models
    "StarterPredictor", "find_starter_model", "models_dir", "starter_models",
]
# Private names that tests import from here: _local_maxima, _out_of_memory, _percentile_range_torch,
# _read_embedding (re-exported above, not part of __all__).
