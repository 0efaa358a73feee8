"""Training losses: foreground-weighted heatmap MSE and the pull/push embedding loss.

Heatmap term (per class, summed over the two classes)
    ``mean(w · (ĥ − h)²)`` with the weight map ``w = 1 + (r − 1) · h``, where
    ``r = n_background / n_foreground`` is counted **per batch and per class** on the target
    (foreground = ``h > fg_threshold``, 0.1) and clamped to ``[1, max_ratio]``. Background voxels weigh 1 and
    a peak weighs ``r``, so foreground and background carry about equal total weight whatever the object
    density: the data-derived w_f/w_b of the paper (the reference code hard-coded 5 + 800·h and 5 + 200·h).
    A batch without foreground falls back to ``r = 1`` (plain MSE).

    Optional hard negatives (``negative_weight`` λ > 0, default 0): background voxels (``h ≤ fg_threshold``)
    weigh ``1 + λ · (r − 1) · ĥ`` instead of 1, with ĥ the (detached) prediction, so a confident false peak
    (a vessel or speck the network calls a centroid) costs about as much as a missed one, while background
    the network already calls background keeps weight ~1 (the idea of the focal losses of CenterNet).

Embedding term (cellpol only), with Δ = 2
    For each sample and each pair label k present in it, the nucleus-embedding values on the nucleus
    neighbourhood of k and the Golgi-embedding values on the Golgi neighbourhood of k are pooled; ē_k is
    their mean.

    - pull = mean over the sample's pairs of the variance ``mean((e − ē_k)²)``;
    - push = mean over ordered pairs k ≠ j of ``max(0, Δ − |ē_k − ē_j|)``.

    With ``push_radius_um`` R > 0 (default 0: all pairs, the paper's), push only counts pairs k, j whose
    centroids (over both neighbourhoods) lie within R of each other, averaged over those: a scalar
    embedding then needs to tell apart only cells that pairing could confuse (within d_max), a colouring
    of neighbours rather than one line holding every cell of the patch Δ apart.

    Each is averaged over the samples where it is defined (pull: ≥ 1 pair; push: ≥ 2 pairs); when no sample
    qualifies the term is 0. Any batch size and any number of labels (gaps allowed) are handled, in one
    vectorised pass (no per-pair Python loop; the reference code hard-coded batch 2 and 39 pairs).

Total = heatmap + pull_weight · pull + push_weight · push (weights 1: the paper's α = β = 1).
All arithmetic is float32, also when the network ran under bf16 autocast.

Hard negatives (``negative_weight``) and a local push (``push_radius_um``) are there for experiments and
off by default; a "stray" term was tried and removed. What each did: ``benchmarks/RESULTS.md``, "Loss
experiments".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

from app.core.errors import CellPolError

CLASSES = ("nucleus", "golgi")


#: Loss settings added after the first release (their defaults leave them off).
_OPTIONAL_TERMS = ("negative_weight", "push_radius_um")


@dataclass(frozen=True)
class LossConfig:
    """Loss settings (stored in the training provenance)."""

    delta: float = 2.0
    fg_threshold: float = 0.1
    max_ratio: float = 1000.0
    pull_weight: float = 1.0
    push_weight: float = 1.0
    negative_weight: float = 0.0
    push_radius_um: float = 0.0

    def __post_init__(self) -> None:
        if not self.delta > 0:
            raise CellPolError(f"The embedding margin Δ must be positive, got {self.delta}.")
        if not 0 <= self.fg_threshold < 1:
            raise CellPolError(f"fg_threshold must be in [0, 1), got {self.fg_threshold}.")
        if not self.max_ratio >= 1:
            raise CellPolError(f"max_ratio must be ≥ 1, got {self.max_ratio}.")
        if self.pull_weight < 0 or self.push_weight < 0 or self.negative_weight < 0 or self.push_radius_um < 0:
            raise CellPolError("Loss weights and the push radius must not be negative.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """:meth:`to_dict` without the optional terms left off, so a checkpoint written before they existed
        still resumes."""
        defaults = {f.name: f.default for f in fields(self) if f.name in _OPTIONAL_TERMS}
        return {k: v for k, v in asdict(self).items() if k not in defaults or v != defaults[k]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LossConfig":
        return cls(**dict(data))


def foreground_ratio(target: torch.Tensor, fg_threshold: float = 0.1, max_ratio: float = 1000.0) -> torch.Tensor:
    """``n_background / n_foreground`` of a target batch, clamped to ``[1, max_ratio]`` (1 without foreground)."""
    foreground = (target > fg_threshold).sum().to(torch.float32)
    background = target.numel() - foreground
    ratio = torch.where(foreground > 0, background / foreground.clamp_min(1.0), torch.ones_like(foreground))
    return ratio.clamp(1.0, max_ratio)


def heatmap_weights(target: torch.Tensor, fg_threshold: float = 0.1, max_ratio: float = 1000.0,
                    prediction: torch.Tensor | None = None, negative_weight: float = 0.0) -> torch.Tensor:
    """Voxel weights ``1 + (r − 1) · target`` with ``r`` from :func:`foreground_ratio` (no gradient).

    With ``prediction`` and ``negative_weight`` λ > 0, background voxels (``target ≤ fg_threshold``) weigh
    ``1 + λ · (r − 1) · prediction`` instead (hard negatives).
    """
    target = target.detach().to(torch.float32)
    ratio = foreground_ratio(target, fg_threshold, max_ratio)
    weights = 1.0 + (ratio - 1.0) * target
    if prediction is not None and negative_weight > 0:
        confident = prediction.detach().to(torch.float32).reshape(target.shape).clamp(0.0, 1.0)
        hard = 1.0 + negative_weight * (ratio - 1.0) * confident
        weights = torch.where(target <= fg_threshold, hard, weights)
    return weights


def weighted_heatmap_mse(
    prediction: torch.Tensor, target: torch.Tensor, fg_threshold: float = 0.1, max_ratio: float = 1000.0,
    negative_weight: float = 0.0,
) -> torch.Tensor:
    """Foreground-weighted MSE of one class over a batch (any shape; prediction and target alike)."""
    target = target.to(torch.float32).reshape(prediction.shape)
    weights = heatmap_weights(target, fg_threshold, max_ratio, prediction, negative_weight)
    return (weights * (prediction.to(torch.float32) - target) ** 2).mean()


def pull_push_loss(
    embedding_nucleus: torch.Tensor,
    embedding_golgi: torch.Tensor,
    labels_nucleus: torch.Tensor,
    labels_golgi: torch.Tensor,
    delta: float = 2.0,
    push_radius_um: float = 0.0,
    voxel_size: tuple[float, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull and push terms of the embedding loss, each averaged over the samples where it is defined.

    Parameters
    ----------
    embedding_nucleus, embedding_golgi : Tensor
        ``(B, 1, *spatial)`` or ``(B, *spatial)`` predicted embeddings.
    labels_nucleus, labels_golgi : Tensor
        Integer labels of the same spatial shape: 0 = background, k > 0 = pair k (shared by both classes).
    delta : float
        Push margin Δ.
    push_radius_um : float
        > 0: push only pairs whose centroids are within this distance (needs ``voxel_size``).
    voxel_size : tuple of float, optional
        Voxel size (µm) of the spatial axes, ``(z, y, x)`` or ``(y, x)``.

    Returns
    -------
    pull, push : Tensor
        Scalars (float32), differentiable with respect to the embeddings.
    """
    batch = embedding_nucleus.shape[0]
    emb = torch.cat(
        [embedding_nucleus.reshape(batch, -1), embedding_golgi.reshape(batch, -1)], dim=1
    ).to(torch.float32)
    labels = torch.cat([labels_nucleus.reshape(batch, -1), labels_golgi.reshape(batch, -1)], dim=1).long()
    if labels.shape != emb.shape:
        raise ValueError(f"Labels {tuple(labels.shape)} do not match embeddings {tuple(emb.shape)} in size.")
    zero = emb.sum() * 0.0  # keeps the graph connected when a term is empty

    in_pair = labels > 0
    sample = torch.arange(batch, device=emb.device).unsqueeze(1).expand_as(labels)[in_pair]
    values = emb[in_pair]
    if values.numel() == 0:
        return zero, zero
    # One segment per (sample, label) present: compact ids via unique, then segment sums by index_add.
    key = sample * (int(labels.max()) + 1) + labels[in_pair]
    unique_keys, segment = torch.unique(key, return_inverse=True)
    n_segments = unique_keys.numel()
    segment_sample = torch.div(unique_keys, int(labels.max()) + 1, rounding_mode="floor")
    counts = torch.zeros(n_segments, device=emb.device).index_add_(0, segment, torch.ones_like(values))
    means = torch.zeros(n_segments, device=emb.device).index_add_(0, segment, values) / counts
    sq_dev = (values - means[segment]) ** 2
    variances = torch.zeros(n_segments, device=emb.device).index_add_(0, segment, sq_dev) / counts

    pairs_per_sample = torch.bincount(segment_sample, minlength=batch).to(torch.float32)
    pull_per_sample = torch.zeros(batch, device=emb.device).index_add_(0, segment_sample, variances)
    has_pairs = pairs_per_sample > 0
    pull = (pull_per_sample[has_pairs] / pairs_per_sample[has_pairs]).mean()

    # Push: ordered pairs of segments of the same sample (the diagonal is excluded), near ones only when
    # a radius is set.
    same_sample = segment_sample.unsqueeze(0) == segment_sample.unsqueeze(1)
    same_sample.fill_diagonal_(False)
    if push_radius_um > 0:
        spatial = tuple(embedding_nucleus.shape[-len(voxel_size):]) if voxel_size else ()
        n_voxels = math.prod(spatial)
        if not voxel_size or 2 * n_voxels != labels.shape[1]:
            raise CellPolError("A push radius needs the voxel size of the embeddings' spatial axes.")
        flat = torch.arange(labels.shape[1], device=emb.device).unsqueeze(0).expand_as(labels)[in_pair] % n_voxels
        coords = torch.stack(torch.unravel_index(flat, spatial), dim=1).to(torch.float32)
        coords = coords * torch.tensor(voxel_size, dtype=torch.float32, device=emb.device)
        centroid = torch.zeros(n_segments, coords.shape[1], device=emb.device).index_add_(0, segment, coords)
        centroid = centroid / counts.unsqueeze(1)
        same_sample &= torch.cdist(centroid, centroid) <= push_radius_um
    hinge = torch.relu(delta - (means.unsqueeze(0) - means.unsqueeze(1)).abs()) * same_sample
    push_sum = torch.zeros(batch, device=emb.device).index_add_(0, segment_sample, hinge.sum(dim=1))
    n_ordered = torch.zeros(batch, device=emb.device).index_add_(0, segment_sample, same_sample.sum(dim=1).to(torch.float32))
    has_two = n_ordered > 0
    push = (push_sum[has_two] / n_ordered[has_two]).mean() if bool(has_two.any()) else zero
    return pull, push


def _target(targets: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return targets[key]
    except KeyError:
        raise CellPolError(f"The training targets lack '{key}'.") from None


def compute_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    config: LossConfig | None = None,
    voxel_size: tuple[float, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """All loss components for one batch.

    ``outputs`` is the network's dict; ``targets`` holds ``heatmap_nucleus``, ``heatmap_golgi`` and (for
    cellpol) ``labels_nucleus``, ``labels_golgi`` as batched tensors (a channel axis of 1 is optional).
    Without ``embedding_*`` in ``outputs`` (the ctrdet architecture) only the heatmap term is computed.

    Returns
    -------
    dict
        ``heatmap_nucleus``, ``heatmap_golgi``, ``heatmap``, ``pull``, ``push`` and ``total`` (scalars;
        ``pull`` and ``push`` are 0 for ctrdet). Backpropagate ``total``.
    """
    cfg = config or LossConfig()
    parts: dict[str, torch.Tensor] = {}
    for name in CLASSES:
        parts[f"heatmap_{name}"] = weighted_heatmap_mse(
            outputs[f"heatmap_{name}"], _target(targets, f"heatmap_{name}"), cfg.fg_threshold, cfg.max_ratio,
            cfg.negative_weight,
        )
    parts["heatmap"] = parts["heatmap_nucleus"] + parts["heatmap_golgi"]
    if "embedding_nucleus" in outputs and "embedding_golgi" in outputs:
        pull, push = pull_push_loss(
            outputs["embedding_nucleus"],
            outputs["embedding_golgi"],
            _target(targets, "labels_nucleus"),
            _target(targets, "labels_golgi"),
            cfg.delta,
            cfg.push_radius_um,
            voxel_size,
        )
    else:
        pull = push = torch.zeros((), device=parts["heatmap"].device)
    parts["pull"] = pull
    parts["push"] = push
    parts["total"] = parts["heatmap"] + cfg.pull_weight * pull + cfg.push_weight * push
    return parts
