"""Training targets (Gaussian heatmaps, neighbourhood labels) and the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.training.losses import (
    LossConfig,
    compute_loss,
    foreground_ratio,
    heatmap_weights,
    pull_push_loss,
    weighted_heatmap_mse,
)
from app.training.targets import make_targets, pairs_for_patch, sigma_voxels

VOXEL = (1.0, 0.5, 0.5)  # z, y, x µm


def one(nucleus, golgi, shape=(12, 40, 40), voxel=VOXEL, **kwargs):
    return make_targets((np.array([nucleus], float), np.array([golgi], float)), shape, voxel, **kwargs)


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def test_peak_is_exactly_one_at_an_integer_centroid():
    t = one([5, 20, 21], [6, 10, 10])
    heat = t["heatmap_nucleus"]
    assert heat.dtype == np.float32 and heat.shape == (12, 40, 40)
    assert heat[5, 20, 21] == 1.0
    assert np.unravel_index(np.argmax(heat), heat.shape) == (5, 20, 21)
    assert t["heatmap_golgi"][6, 10, 10] == 1.0
    assert (heat == 1.0).sum() == 1  # no 2×2×2 plateau


def test_sub_voxel_centroid_without_half_voxel_offset():
    centre = np.array([5.3, 20.5, 17.25])
    heat = one(centre, [6, 10, 10])["heatmap_nucleus"].astype(np.float64)
    # symmetric about 20.5 in y: the two neighbours are equal
    assert heat[5, 20, 17] == pytest.approx(heat[5, 21, 17], rel=1e-6)
    # log of a Gaussian is a parabola: three samples per axis give back the exact centroid
    peak = np.array(np.unravel_index(np.argmax(heat), heat.shape))
    for axis in range(3):
        idx = [slice(p, p + 1) for p in peak]
        idx[axis] = slice(peak[axis] - 1, peak[axis] + 2)
        lm, l0, lp = np.log(heat[tuple(idx)].ravel())
        offset = 0.5 * (lm - lp) / (lm - 2 * l0 + lp)
        assert peak[axis] + offset == pytest.approx(centre[axis], abs=1e-4)
    assert heat.max() < 1.0


def test_anisotropic_sigma_follows_microns():
    voxel = (2.0, 0.5, 0.5)
    sigma_um = 1.0
    assert sigma_voxels(sigma_um, voxel) == pytest.approx([0.5, 2.0, 2.0])
    heat = one([6, 20, 20], [6, 5, 5], voxel=voxel, sigma_um=(sigma_um, 1.0))["heatmap_nucleus"]
    expected = math.exp(-0.5 * (2.0 / sigma_um) ** 2)  # 2 µm away
    assert heat[7, 20, 20] == pytest.approx(expected, rel=1e-5)  # 1 slice = 2 µm
    assert heat[6, 24, 20] == pytest.approx(expected, rel=1e-5)  # 4 rows = 2 µm
    assert heat[6, 20, 16] == pytest.approx(expected, rel=1e-5)
    # truncated at 3 σ: 4 slices (8 µm) away nothing remains
    assert heat[10, 20, 20] == 0.0 and heat[6, 20, 32] == 0.0


def test_sigma_options_and_golgi_default_is_narrower():
    t = one([6, 20, 20], [6, 20, 20])
    assert t["heatmap_golgi"].sum() < t["heatmap_nucleus"].sum()
    same = one([6, 20, 20], [6, 20, 20], sigma_um={"golgi": 2.0})
    np.testing.assert_array_equal(same["heatmap_golgi"], same["heatmap_nucleus"])
    with pytest.raises(CellPolError):
        one([6, 20, 20], [6, 20, 20], sigma_um=(1.0, -1.0))


def test_overlap_is_voxelwise_max_and_labels_follow_the_dominant_kernel():
    nuclei = np.array([[6, 18, 20], [6, 23, 20]], float)
    golgi = np.array([[6, 5, 5], [6, 35, 35]], float)
    both = make_targets((nuclei, golgi), (12, 40, 40), VOXEL)
    first = make_targets((nuclei[:1], golgi[:1]), (12, 40, 40), VOXEL)["heatmap_nucleus"]
    second = make_targets((nuclei[1:], golgi[1:]), (12, 40, 40), VOXEL)["heatmap_nucleus"]
    np.testing.assert_array_equal(both["heatmap_nucleus"], np.maximum(first, second))

    labels = both["labels_nucleus"]
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    # neighbourhood = own kernel > 0.5 and the larger one: split at the midpoint (row 20.5)
    assert labels[6, 20, 20] == 1 and labels[6, 21, 20] == 2
    np.testing.assert_array_equal(labels > 0, both["heatmap_nucleus"] > 0.5)
    assert np.all(first[labels == 1] >= second[labels == 1])
    # nucleus and Golgi of one pair share the label
    assert both["labels_golgi"][6, 5, 5] == 1 and both["labels_golgi"][6, 35, 35] == 2


def test_isolated_neighbourhood_is_the_half_maximum_ball():
    t = one([6, 20, 20], [6, 5, 5])
    labels, heat = t["labels_nucleus"], t["heatmap_nucleus"]
    z, y, x = np.nonzero(labels == 1)
    radius_um = 2.0 * math.sqrt(2 * math.log(2))  # where exp(-d²/2σ²) = 0.5
    d = np.sqrt(((z - 6) * 1.0) ** 2 + ((y - 20) * 0.5) ** 2 + ((x - 20) * 0.5) ** 2)
    assert d.max() < radius_um
    assert np.all(heat[labels == 1] > 0.5) and np.all(heat[labels == 0] <= 0.5)


def test_pairs_cut_by_the_border_keep_their_visible_half():
    # nucleus inside, Golgi far outside: the nucleus keeps its peak and label 1
    t = one([5, 20, 20], [5, 20, 80])
    assert t["heatmap_nucleus"][5, 20, 20] == 1.0
    assert (t["labels_nucleus"] == 1).sum() > 0
    assert t["heatmap_golgi"].max() == 0.0 and t["labels_golgi"].max() == 0
    # Golgi centroid just outside (x = -1): its kernel tail and neighbourhood voxels inside remain
    t = one([5, 20, 20], [5, 20, -1.0])
    assert t["heatmap_golgi"][5, 20, 0] == pytest.approx(math.exp(-0.5 * 0.5**2), rel=1e-5)
    # σ = 2 voxels in x: voxels 0 and 1 (0.5σ and 1σ away) are above half maximum, voxel 2 (1.5σ) is not
    assert t["labels_golgi"][5, 20, 0] == 1 and t["labels_golgi"][5, 20, 1] == 1
    assert t["labels_golgi"][5, 20, 2] == 0
    # labels are row index + 1 even when an earlier pair is entirely outside
    nuclei = np.array([[5, -50, 20], [5, 20, 20]], float)
    t = make_targets((nuclei, nuclei + 1), (12, 40, 40), VOXEL)
    assert set(np.unique(t["labels_nucleus"])) == {0, 2}


def test_pairset_input_2d_shapes_and_errors():
    pairs = PairSet(np.array([[0, 10, 12.5]]), np.array([[0, 14, 14]]), voxel_size=(1.0, 0.5, 0.5))
    t2 = make_targets(pairs, (32, 32))
    assert t2["heatmap_nucleus"].shape == (32, 32) and t2["labels_golgi"].dtype == np.int32
    assert t2["heatmap_golgi"][14, 14] == 1.0
    t3 = make_targets(pairs, (1, 32, 32))
    np.testing.assert_array_equal(t3["heatmap_nucleus"][0], t2["heatmap_nucleus"])
    # in a single plane a z offset is ignored
    shifted = PairSet(pairs.nuclei + [3, 0, 0], pairs.golgi, voxel_size=pairs.voxel_size)
    np.testing.assert_array_equal(make_targets(shifted, (1, 32, 32))["heatmap_nucleus"], t3["heatmap_nucleus"])
    empty = make_targets(PairSet.empty(voxel_size=VOXEL), (4, 8, 8))
    assert empty["heatmap_nucleus"].max() == 0 and empty["labels_golgi"].max() == 0
    with pytest.raises(CellPolError, match="voxel size"):
        make_targets(PairSet(pairs.nuclei, pairs.golgi), (32, 32))


def test_pairs_for_patch_keeps_pairs_with_one_end_inside():
    pairs = PairSet(
        np.array([[5, 10, 10], [5, 10, 90], [5, 50, 50], [5, 200, 200]], float),
        np.array([[5, 12, 12], [5, 50, 73], [5, 55, 200], [5, 210, 210]], float),
        voxel_size=VOXEL,
    )
    local = pairs_for_patch(pairs, origin=(0, 40, 40), patch_shape=(12, 32, 32))
    # pair 0 is 30 voxels away (> 3σ = 12 voxels); pair 1 has its Golgi 2 voxels beyond the box (3σ = 6
    # voxels for the Golgi); pair 2 has its nucleus inside and its Golgi far outside
    assert list(local.ids) == [1, 2]
    np.testing.assert_allclose(local.nuclei[1], [5, 10, 10])
    np.testing.assert_allclose(local.golgi[0], [5, 10, 33])
    t = make_targets(local, (12, 32, 32))
    assert t["labels_golgi"].max() == 1 and t["labels_nucleus"].max() == 2


# --------------------------------------------------------------------------------------------
# heatmap loss
# --------------------------------------------------------------------------------------------
def test_heatmap_weights_from_foreground_ratio():
    target = torch.zeros(2, 1, 4, 10, 10)
    target[0, 0, 1, 2, 2] = 1.0
    target[0, 0, 1, 2, 3] = 0.5
    target[1, 0, 2, 5, 5] = 0.05  # below the foreground threshold
    n_total = target.numel()
    ratio = (n_total - 2) / 2
    assert float(foreground_ratio(target)) == pytest.approx(ratio)
    w = heatmap_weights(target)
    assert float(w[0, 0, 1, 2, 2]) == pytest.approx(ratio)
    assert float(w[0, 0, 1, 2, 3]) == pytest.approx(1 + (ratio - 1) * 0.5)
    assert float(w[0, 0, 0, 0, 0]) == 1.0
    assert float(foreground_ratio(target, max_ratio=50.0)) == 50.0
    assert torch.all(heatmap_weights(torch.zeros(1, 1, 2, 2, 2)) == 1.0)  # no foreground: plain MSE

    prediction = torch.full_like(target, 0.25, requires_grad=True)
    loss = weighted_heatmap_mse(prediction, target)
    expected = (w * (0.25 - target) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert prediction.grad is not None and float(prediction.grad.abs().sum()) > 0
    assert float(weighted_heatmap_mse(target.clone(), target)) == 0.0


def test_hard_negatives_weigh_confident_false_peaks():
    target = torch.zeros(1, 1, 4, 10, 10)
    target[0, 0, 1, 2, 2] = 1.0
    ratio = float(foreground_ratio(target))
    prediction = torch.zeros_like(target)
    prediction[0, 0, 1, 2, 2] = 0.9   # the true peak
    prediction[0, 0, 3, 7, 7] = 0.6   # a confident false peak (a vessel)
    prediction[0, 0, 0, 0, 0] = 0.05  # background the network nearly has right
    plain = heatmap_weights(target, prediction=prediction)  # λ = 0: unchanged
    assert torch.equal(plain, heatmap_weights(target))
    w = heatmap_weights(target, prediction=prediction, negative_weight=0.5)
    assert float(w[0, 0, 3, 7, 7]) == pytest.approx(1 + 0.5 * (ratio - 1) * 0.6)
    assert float(w[0, 0, 0, 0, 0]) == pytest.approx(1 + 0.5 * (ratio - 1) * 0.05)
    assert float(w[0, 0, 1, 2, 2]) == pytest.approx(ratio)  # foreground keeps its weight
    assert float(w[0, 0, 2, 5, 5]) == 1.0  # predicted background stays at 1
    # The false peak's share of the loss grows; the gradient still flows only through the prediction.
    p = prediction.clone().requires_grad_(True)
    hard = weighted_heatmap_mse(p, target, negative_weight=0.5)
    hard.backward()
    assert float(hard.detach()) > float(weighted_heatmap_mse(prediction, target))
    assert float(p.grad[0, 0, 3, 7, 7]) > 0
    with pytest.raises(CellPolError):
        LossConfig(negative_weight=-1.0)
    # A run without the optional terms fingerprints as before they existed (its checkpoints still resume).
    assert "negative_weight" not in LossConfig().fingerprint()
    assert LossConfig(negative_weight=0.5).fingerprint()["negative_weight"] == 0.5


# --------------------------------------------------------------------------------------------
# embedding loss
# --------------------------------------------------------------------------------------------
def reference_pull_push(emb_n, emb_g, lab_n, lab_g, delta=2.0):
    """Straightforward per-sample loops (the definition), to check the vectorised version."""
    pulls, pushes = [], []
    for b in range(emb_n.shape[0]):
        means, variances = [], []
        for k in sorted(set(lab_n[b].unique().tolist()) | set(lab_g[b].unique().tolist()) - {0}):
            if k == 0:
                continue
            values = torch.cat([emb_n[b][lab_n[b] == k], emb_g[b][lab_g[b] == k]])
            means.append(values.mean())
            variances.append(((values - values.mean()) ** 2).mean())
        if means:
            pulls.append(torch.stack(variances).mean())
        if len(means) >= 2:
            terms = [torch.relu(delta - (means[i] - means[j]).abs())
                     for i in range(len(means)) for j in range(len(means)) if i != j]
            pushes.append(torch.stack(terms).mean())
    pull = torch.stack(pulls).mean() if pulls else torch.tensor(0.0)
    push = torch.stack(pushes).mean() if pushes else torch.tensor(0.0)
    return pull, push


def random_labels(generator, shape, n_pairs):
    labels = torch.zeros(shape, dtype=torch.int32)
    for k in range(1, n_pairs + 1):
        z, y, x = (int(torch.randint(0, s - 2, (1,), generator=generator)) for s in shape)
        labels[z:z + 2, y:y + 2, x:x + 2] = k
    return labels


def test_pull_zero_for_constant_embeddings_and_push_zero_beyond_delta():
    lab_n = torch.zeros(1, 1, 4, 8, 8, dtype=torch.int32)
    lab_g = torch.zeros_like(lab_n)
    lab_n[0, 0, 1, 1:3, 1:3] = 1
    lab_g[0, 0, 2, 1:3, 4:6] = 1
    lab_n[0, 0, 1, 5:7, 1:3] = 2
    lab_g[0, 0, 2, 5:7, 5:7] = 2
    emb = 2.5 * lab_n.float() + torch.randn(lab_n.shape) * (lab_n == 0)  # background is ignored
    emb_g = 2.5 * lab_g.float() + 100 * (lab_g == 0)
    pull, push = pull_push_loss(emb, emb_g, lab_n, lab_g)
    assert float(pull) == 0.0 and float(push) == 0.0  # means 2.5 and 5.0: |Δ| ≥ 2
    # means 0.5 apart: each ordered pair costs Δ − 0.5
    pull, push = pull_push_loss(0.5 * lab_n.float(), 0.5 * lab_g.float(), lab_n, lab_g)
    assert float(pull) == 0.0 and float(push) == pytest.approx(1.5)
    # pull = variance of the pooled nucleus + Golgi values of a pair
    emb_n = torch.where(lab_n == 1, torch.tensor(1.0), 10.0 * lab_n.float())
    emb_g2 = torch.where(lab_g == 1, torch.tensor(3.0), 10.0 * lab_g.float())
    pull, push = pull_push_loss(emb_n, emb_g2, lab_n, lab_g)
    assert float(pull) == pytest.approx((1.0 + 0.0) / 2)  # pair 1: values {1,3} equally → var 1; pair 2: 0
    assert float(push) == 0.0


def test_push_radius_pushes_only_near_pairs():
    # Three pairs on a line (x = 1, 5 and 30 voxels of 0.5 µm): 0 and 1 are 2 µm apart, 2 is far away.
    lab_n = torch.zeros(1, 1, 2, 4, 34, dtype=torch.int32)
    for k, x in enumerate((1, 5, 30), start=1):
        lab_n[0, 0, 0, 1:3, x:x + 2] = k
    lab_g = lab_n.clone()
    emb = torch.zeros(lab_n.shape)
    emb[lab_n == 3] = 0.5  # far pair: 0.5 from both near ones
    emb[lab_n == 2] = 1.0  # near pairs 1.0 apart
    voxel = (1.0, 0.5, 0.5)
    _, push_all = pull_push_loss(emb, emb, lab_n, lab_g)
    assert float(push_all) == pytest.approx((2 * 1.0 + 4 * 1.5) / 6)  # every ordered pair
    _, push_near = pull_push_loss(emb, emb, lab_n, lab_g, push_radius_um=5.0, voxel_size=voxel)
    assert float(push_near) == pytest.approx(1.0)  # only 1↔2 (2 µm apart) count: Δ − 1 = 1
    _, push_none = pull_push_loss(emb, emb, lab_n, lab_g, push_radius_um=1.0, voxel_size=voxel)
    assert float(push_none) == 0.0
    # The radius goes through compute_loss with the model's voxel size, and refuses to guess without it.
    outputs = {"heatmap_nucleus": torch.zeros(lab_n.shape), "heatmap_golgi": torch.zeros(lab_n.shape),
               "embedding_nucleus": emb, "embedding_golgi": emb}
    targets = {"heatmap_nucleus": torch.zeros(lab_n.shape), "heatmap_golgi": torch.zeros(lab_n.shape),
               "labels_nucleus": lab_n, "labels_golgi": lab_g}
    parts = compute_loss(outputs, targets, LossConfig(push_radius_um=5.0), voxel)
    assert float(parts["push"]) == pytest.approx(1.0)
    with pytest.raises(CellPolError):
        compute_loss(outputs, targets, LossConfig(push_radius_um=5.0))


def test_batch_of_three_with_0_1_and_several_pairs_matches_the_definition():
    gen = torch.Generator().manual_seed(3)
    shape = (4, 12, 12)
    lab_n = torch.stack([random_labels(gen, shape, n) for n in (0, 1, 5)])[:, None]
    lab_g = torch.stack([random_labels(gen, shape, n) for n in (0, 1, 5)])[:, None]
    lab_g[2][lab_g[2] == 3] = 9  # a gap in the labels and a Golgi-only pair 9; pair 3 nucleus-only
    emb_n = torch.randn(3, 1, *shape, generator=gen, requires_grad=True)
    emb_g = torch.randn(3, 1, *shape, generator=gen, requires_grad=True)
    pull, push = pull_push_loss(emb_n, emb_g, lab_n, lab_g)
    (pull + push).backward()
    pull, push = pull.detach(), push.detach()
    with torch.no_grad():
        ref_pull, ref_push = reference_pull_push(emb_n[:, 0], emb_g[:, 0], lab_n[:, 0], lab_g[:, 0])
    assert float(pull) == pytest.approx(float(ref_pull), rel=1e-5)
    assert float(push) == pytest.approx(float(ref_push), rel=1e-5)
    assert float(push) > 0
    # the empty sample gets no gradient; the others do
    assert float(emb_n.grad[0].abs().sum()) == 0.0
    assert float(emb_n.grad[2].abs().sum()) > 0
    # the same numbers through compute_loss, labels without a channel axis this time
    outputs = {"heatmap_nucleus": torch.rand(3, 1, *shape), "heatmap_golgi": torch.rand(3, 1, *shape),
               "embedding_nucleus": emb_n.detach(), "embedding_golgi": emb_g.detach()}
    targets = {"heatmap_nucleus": torch.zeros(3, *shape), "heatmap_golgi": torch.zeros(3, *shape),
               "labels_nucleus": lab_n[:, 0], "labels_golgi": lab_g[:, 0]}
    parts = compute_loss(outputs, targets, LossConfig(pull_weight=2.0))
    assert float(parts["pull"]) == pytest.approx(float(ref_pull), rel=1e-5)
    assert float(parts["total"]) == pytest.approx(
        float(parts["heatmap_nucleus"] + parts["heatmap_golgi"] + 2 * parts["pull"] + parts["push"]), rel=1e-6
    )


def test_samples_without_pairs_give_zero_embedding_loss_with_a_graph():
    emb = torch.randn(2, 1, 2, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 1, 2, 4, 4, dtype=torch.int32)
    pull, push = pull_push_loss(emb, emb, labels, labels)
    assert pull.item() == 0.0 and push.item() == 0.0
    (pull + push).backward()  # does not raise
    labels[1, 0, 0, 0, 0] = 4  # one pair only: pull defined (0), push undefined → 0
    pull, push = pull_push_loss(emb, emb, labels, labels)
    assert pull.item() == 0.0 and push.item() == 0.0


def test_ctrdet_outputs_use_only_the_heatmap_term():
    target = torch.zeros(1, 1, 2, 8, 8)
    target[0, 0, 1, 4, 4] = 1.0
    outputs = {"heatmap_nucleus": torch.full_like(target, 0.1), "heatmap_golgi": torch.full_like(target, 0.2)}
    parts = compute_loss(outputs, {"heatmap_nucleus": target, "heatmap_golgi": target})
    assert float(parts["pull"]) == 0.0 and float(parts["push"]) == 0.0
    assert float(parts["total"]) == pytest.approx(float(parts["heatmap"]))
    ratio = (target.numel() - 1) / 1
    weights = 1 + (ratio - 1) * target
    assert float(parts["heatmap_nucleus"]) == pytest.approx(float((weights * (0.1 - target) ** 2).mean()), rel=1e-6)
    with pytest.raises(CellPolError, match="labels_nucleus"):
        compute_loss({**outputs, "embedding_nucleus": target, "embedding_golgi": target},
                     {"heatmap_nucleus": target, "heatmap_golgi": target})
