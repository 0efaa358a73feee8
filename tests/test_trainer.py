"""The training job: patches, a falling loss, checkpoints and resume after an interruption."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.modelfile import ModelSpec, load_model
from app.core.network import NetworkConfig
from app.training.data import PatchSampler, synthetic_pool
from app.training.trainer import TrainConfig, train

VOXEL = (1.0, 0.5, 0.5)
PATCH = (8, 32, 32)


@pytest.fixture(scope="module")
def sampler():
    pool = synthetic_pool(2, VOXEL, seed=5, field_um=(10.0, 40.0, 40.0))
    assert all(p.image.shape[0] == 2 and len(p.pairs) > 0 for p in pool)
    return PatchSampler(pool, PATCH)


def tiny_spec():
    network = NetworkConfig(levels=2, base_filters=4, pool_factors=((2, 2, 2),))
    return ModelSpec(network=network, voxel_size=VOXEL)


def test_patches_carry_their_pairs(sampler):
    rng = np.random.default_rng(0)
    for _ in range(5):
        image, pairs = sampler.sample(rng)
        assert image.shape == (2,) + PATCH and image.dtype == np.float32
        assert pairs.voxel_size == VOXEL
    # A patch centred on a nucleus shows it: the nucleus channel is bright at that pair's nucleus.
    sampler_fg = PatchSampler(sampler.volumes, PATCH, foreground_fraction=1.0)
    from app.training.data import AugmentConfig

    sampler_fg.augment = AugmentConfig(0, 0, 0, 0, 0, 0, 0)
    image, pairs = sampler_fg.sample(np.random.default_rng(1))
    inside = [p for p in np.round(pairs.nuclei).astype(int) if np.all((p >= 0) & (p < PATCH))]
    assert inside, "a foreground patch contains at least one nucleus"
    values = [image[0][tuple(p)] for p in inside]
    assert max(values) > float(np.median(image[0])) + 0.2


def test_loss_falls_and_training_resumes(sampler, tmp_path):
    config = TrainConfig(steps=6, batch_size=2, learning_rate=3e-3, warmup_steps=1, checkpoint_every=3, seed=1)
    events = list(train(tiny_spec(), sampler, config, tmp_path / "ck"))
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events if e.kind == "checkpoint"] == [3, 6]
    assert events[-1].kind == "done" and (tmp_path / "ck" / "last.json").exists()

    # Interrupted after step 3: only the first checkpoint exists; a new run resumes at step 4.
    config2 = TrainConfig(steps=6, batch_size=2, learning_rate=3e-3, warmup_steps=1, checkpoint_every=3, seed=1)
    run = train(tiny_spec(), sampler, config2, tmp_path / "ck2")
    for event in run:
        if event.kind == "checkpoint":
            break
    run.close()
    resumed = [e.step for e in train(tiny_spec(), sampler, config2, tmp_path / "ck2") if e.kind == "step"]
    assert resumed == [4, 5, 6]
    model, spec = load_model(tmp_path / "ck2" / "last.json")
    assert spec.voxel_size == VOXEL


class FixedPatch:
    """Always the same patch: a network that learns at all must fit it within a few dozen steps."""

    def __init__(self, sampler):
        self.patch = sampler.sample(np.random.default_rng(3))

    def sample(self, rng):
        return self.patch


def test_heatmap_loss_falls_when_fitting_one_patch(sampler, tmp_path):
    config = TrainConfig(steps=25, batch_size=1, learning_rate=1e-2, warmup_steps=1, checkpoint_every=100, seed=2)
    losses = [e.losses for e in train(tiny_spec(), FixedPatch(sampler), config, tmp_path / "ck") if e.kind == "step"]
    first = np.mean([loss["heatmap"] for loss in losses[:3]])
    last = np.mean([loss["heatmap"] for loss in losses[-3:]])
    assert last < 0.7 * first, (first, last)
