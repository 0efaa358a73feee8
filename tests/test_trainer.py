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


# ----------------------------------------------------------------------------------------------
# Pause, cancel, validation, best checkpoint, exact resume, determinism, 2D
# ----------------------------------------------------------------------------------------------
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from app.core.errors import CancelledError, CellPolError  # noqa: E402
from app.core.jobs import CancelToken  # noqa: E402
from app.core.modelfile import save_model  # noqa: E402
from app.training.data import AugmentConfig, PreparedVolume  # noqa: E402
from app.training.trainer import PauseToken, _loss_at, read_checkpoint_state  # noqa: E402
from conftest import REPO  # noqa: E402


def small_config(**changes):
    settings = dict(steps=6, batch_size=2, learning_rate=3e-3, warmup_steps=1, checkpoint_every=2, epoch_steps=3,
                    seed=1, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def weights(path):
    model, _ = load_model(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pause_saves_a_checkpoint_and_waits_for_resume(sampler, tmp_path):
    pause = PauseToken()
    pause.pause()
    run = train(tiny_spec(), sampler, small_config(steps=2), tmp_path / "ck", pause=pause)
    first = next(run)
    assert first.kind == "paused" and first.step == 0 and (tmp_path / "ck" / "last.json").exists()
    pause.resume()
    kinds = [e.kind for e in run]
    assert kinds[0] == "resumed" and kinds.count("step") == 2 and kinds[-1] == "done"


def test_cancel_while_paused_or_training_keeps_a_checkpoint(sampler, tmp_path):
    pause, cancel = PauseToken(), CancelToken()
    run = train(tiny_spec(), sampler, small_config(), tmp_path / "ck", cancel=cancel, pause=pause)
    for event in run:
        if event.kind == "step" and event.step == 3:
            break
    cancel.cancel()
    after = []
    with pytest.raises(CancelledError):
        for event in run:
            after.append(event.kind)
    assert "step" not in after  # no step once cancelled (the epoch's own events may still come)
    assert read_checkpoint_state(tmp_path / "ck")["step"] == 3  # saved on the way out, not lost
    resumed = [e.step for e in train(tiny_spec(), sampler, small_config(), tmp_path / "ck") if e.kind == "step"]
    assert resumed == [4, 5, 6]

    pause2, cancel2 = PauseToken(), CancelToken()
    pause2.pause()
    run = train(tiny_spec(), sampler, small_config(), tmp_path / "ck2", cancel=cancel2, pause=pause2)
    assert next(run).kind == "paused"
    cancel2.cancel()
    started = time.perf_counter()
    with pytest.raises(CancelledError):
        next(run)
    assert time.perf_counter() - started < 2.0


def test_resume_after_interruption_gives_the_same_weights(sampler, tmp_path):
    list(train(tiny_spec(), sampler, small_config(), tmp_path / "whole"))
    run = train(tiny_spec(), sampler, small_config(), tmp_path / "cut")
    for event in run:
        if event.kind == "step" and event.step == 5:  # killed after step 5: the checkpoint of step 4 survives
            break
    run.close()
    assert read_checkpoint_state(tmp_path / "cut")["step"] == 4
    # A save cut short leaves only a temporary file behind; it must not disturb the resume.
    (tmp_path / "cut" / ".last.ckpt.safetensors.abc.tmp").write_bytes(b"partial")
    steps = [e.step for e in train(tiny_spec(), sampler, small_config(), tmp_path / "cut") if e.kind == "step"]
    assert steps == [5, 6]
    a, b = weights(tmp_path / "whole" / "last.json"), weights(tmp_path / "cut" / "last.json")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run_other_seed_other_run(sampler, tmp_path):
    def losses(seed, name):
        return [e.losses["total"] for e in train(tiny_spec(), sampler, small_config(steps=3, seed=seed), tmp_path / name)
                if e.kind == "step"]

    assert losses(4, "a") == losses(4, "b")
    assert losses(4, "a2") != losses(5, "c")


def test_validation_events_choose_the_best_checkpoint(sampler, tmp_path):
    scores = iter([0.2, 0.6, 0.4])

    def validator(model, spec):
        return {"j5": next(scores), "val_loss": 1.0}

    events = list(train(tiny_spec(), sampler, small_config(steps=9, checkpoint_every=9), tmp_path / "ck",
                        validator=validator))
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.step for e in epochs] == [3, 6, 9] and [e.metrics["j5"] for e in epochs] == [0.2, 0.6, 0.4]
    assert [e.best for e in epochs] == [True, True, False]
    best = [e for e in events if e.kind == "checkpoint" and e.best]
    assert [e.step for e in best] == [3, 6]
    state = json.loads((tmp_path / "ck" / "best.state.json").read_text())
    assert state["step"] == 6 and state["metrics"]["j5"] == 0.6
    assert not all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "ck" / "best.json").values(),
                                                     weights(tmp_path / "ck" / "last.json").values()))
    # Epoch losses are the means of the epoch's steps.
    step_losses = [e.losses["total"] for e in events if e.kind == "step"]
    assert epochs[0].losses["total"] == pytest.approx(np.mean(step_losses[:3]))


def test_a_finished_run_started_again_only_says_done(sampler, tmp_path):
    scores = iter([0.2, 0.6])

    def validator(model, spec):
        return {"j5": next(scores), "val_loss": 1.0}

    first = list(train(tiny_spec(), sampler, small_config(), tmp_path / "ck", validator=validator))
    saved = (tmp_path / "ck" / "last.ckpt.safetensors").read_bytes()
    again = list(train(tiny_spec(), sampler, small_config(), tmp_path / "ck", validator=validator))
    assert [e.kind for e in again] == ["done"] and again[0].step == again[0].total_steps == 6
    # The last loss row and the best epoch come from the checkpoint, which is not written again.
    last_step = [e for e in first if e.kind == "step"][-1]
    assert again[0].losses == first[-1].losses == {"step": 6, **{k: round(v, 6) for k, v in last_step.losses.items()}}
    assert again[0].metrics["best"]["step"] == 6 and again[0].metrics == first[-1].metrics
    assert (tmp_path / "ck" / "last.ckpt.safetensors").read_bytes() == saved


def test_a_checkpoint_of_another_run_is_refused(sampler, tmp_path):
    list(train(tiny_spec(), sampler, small_config(steps=2), tmp_path / "ck", fingerprint={"data": ["a"]}))
    with pytest.raises(CellPolError, match="different training run.*data"):
        next(train(tiny_spec(), sampler, small_config(steps=4), tmp_path / "ck", fingerprint={"data": ["b"]}))


def test_a_damaged_checkpoint_is_one_clear_error(sampler, tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "last.ckpt.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CellPolError, match="damaged"):
        read_checkpoint_state(folder)
    with pytest.raises(CellPolError, match="damaged"):
        next(train(tiny_spec(), sampler, small_config(), folder))


def test_first_checkpoint_layout_still_resumes(sampler, tmp_path):
    # The layout written before the single-file checkpoint: model file + optimiser file + JSON state.
    from safetensors.torch import save_file

    from app.core.network import build_network

    folder = tmp_path / "old"
    folder.mkdir()
    torch.manual_seed(0)
    model = build_network(tiny_spec().network)
    save_model(folder / "last", model, tiny_spec())
    save_file({}, str(folder / "last.optimizer.safetensors"))
    (folder / "last.state.json").write_text(json.dumps({"step": 4, "losses": []}))
    steps = [e.step for e in train(tiny_spec(), sampler, small_config(), folder) if e.kind == "step"]
    assert steps == [5, 6]
    assert (folder / "last.ckpt.safetensors").exists()


def test_training_a_2d_network(tmp_path):
    from app.core.simulate import SimConfig, simulate
    from app.training.data import prepare

    volume, pairs = simulate(SimConfig(shape=(1, 96, 96), voxel_size=(1.0, 0.5, 0.5), seed=2))
    prepared = prepare(volume, pairs, (1.0, 0.5, 0.5))
    assert prepared.image.shape[1] == 1
    network = NetworkConfig(spatial_dims=2, levels=2, base_filters=4)
    spec = ModelSpec(network=network, voxel_size=(1.0, 0.5, 0.5))
    sampler2d = PatchSampler([prepared], (1, 32, 32))
    events = list(train(spec, sampler2d, small_config(steps=3, checkpoint_every=3), tmp_path / "ck"))
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3]
    assert all(np.isfinite(e.losses["total"]) and e.losses["heatmap"] > 0 for e in events if e.kind == "step")
    _, saved = load_model(tmp_path / "ck" / "last.json")
    assert saved.network.spatial_dims == 2
    with pytest.raises(CellPolError, match="multiple"):
        next(train(spec, PatchSampler([prepared], (2, 32, 32)), small_config(), tmp_path / "ck2"))
    with pytest.raises(CellPolError, match="multiple"):
        next(train(tiny_spec(), PatchSampler([prepared], (1, 30, 32)), small_config(), tmp_path / "ck3"))


def test_embedding_terms_ramp_in():
    config = small_config(embedding_warmup_steps=10)
    assert _loss_at(0, config).push_weight == 0.0 and _loss_at(5, config).pull_weight == pytest.approx(0.5)
    assert _loss_at(10, config) == config.loss and _loss_at(3, small_config()) == small_config().loss


def test_sampler_weights_and_augmentation_settings(sampler):
    empty = PreparedVolume(np.zeros((2, 8, 32, 32), np.float32), sampler.volumes[0].pairs.subset(slice(0, 0)), "bg")
    only_first = PatchSampler([sampler.volumes[0], empty], PATCH, AugmentConfig.off(), weights=[1.0, 0.0])
    rng = np.random.default_rng(0)
    assert all(only_first.sample(rng)[0].max() > 0 for _ in range(5))
    only_empty = PatchSampler([sampler.volumes[0], empty], PATCH, AugmentConfig.off(), weights=[0.0, 1.0])
    assert all(only_empty.sample(rng)[0].max() == 0 for _ in range(5))
    with pytest.raises(CellPolError, match="between 0 and 1"):
        AugmentConfig(noise=1.5)
    with pytest.raises(CellPolError, match="weights"):
        PatchSampler(sampler.volumes, PATCH, weights=[1.0])


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_trainer import tiny_spec, small_config, PATCH, VOXEL
    from app.training.data import PatchSampler, synthetic_pool
    from app.training.trainer import train
    pool = synthetic_pool(2, VOXEL, seed=5, field_um=(10.0, 40.0, 40.0))
    for event in train(tiny_spec(), PatchSampler(pool, PATCH), small_config(steps=100000, checkpoint_every=2),
                       Path({folder!r})):
        if event.kind == "checkpoint":
            print("checkpoint", event.step, flush=True)
    """
)


def test_a_run_killed_with_sigkill_resumes(sampler, tmp_path):
    folder = tmp_path / "ck"
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), folder=str(folder))
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("checkpoint") and int(line.split()[1]) >= 4:
                break
        process.kill()  # SIGKILL: no clean-up of any kind
    finally:
        process.wait(timeout=30)
    state = read_checkpoint_state(folder)
    assert state["step"] >= 4
    steps = [e.step for e in train(tiny_spec(), sampler, small_config(steps=state["step"] + 2), folder)
             if e.kind == "step"]
    assert steps == [state["step"] + 1, state["step"] + 2]


def test_appearance_shift_changes_the_look_but_not_the_objects(sampler):
    """Appearance shifts (other microscopes' nuisances) alter intensities, keep pairs, stay off by default."""
    from app.training.data import appearance_shift

    assert AugmentConfig().appearance == 0.0 and AugmentConfig.off().appearance == 0.0
    rng = np.random.default_rng(3)
    crop = np.zeros((2, 8, 32, 32), np.float32)
    crop[0, 3:5, 10:16, 10:16] = 1.0  # a nucleus
    crop[1, 3:5, 20:23, 20:23] = 0.8  # a Golgi
    shifted = [appearance_shift(crop, rng) for _ in range(40)]
    assert all(s.shape == crop.shape and s.dtype == np.float32 and np.isfinite(s).all() for s in shifted)
    assert all(not np.shares_memory(s, crop) for s in shifted) and crop.max() == 1.0  # input untouched
    assert sum(not np.allclose(s, crop) for s in shifted) >= 35
    # Bleed-through happens in some draws: the Golgi channel brightens where only the nucleus is.
    assert any(s[1, 4, 12, 12] > 0.05 for s in shifted)
    # The objects stay where they were: each channel's brightest region is still its object on average.
    mean = np.mean(shifted, axis=0)
    assert mean[0, 3:5, 10:16, 10:16].mean() > 3 * mean[0, :, 25:, :5].mean()
    assert mean[1, 3:5, 20:23, 20:23].mean() > 3 * mean[1, :, :5, 25:].mean()
    # Through the sampler, pairs are untouched by it (same rng stream, with and without).
    on = PatchSampler(sampler.volumes, PATCH, AugmentConfig(appearance=1.0))
    off = PatchSampler(sampler.volumes, PATCH, AugmentConfig())
    (a, pa), (b, pb) = on.sample(np.random.default_rng(9)), off.sample(np.random.default_rng(9))
    assert np.allclose(pa.nuclei, pb.nuclei) and np.allclose(pa.golgi, pb.golgi) and not np.allclose(a, b)


def test_encoder_learning_rate_scale_trains_the_parts_apart(sampler, tmp_path):
    # A first run gives a model to fine-tune from; then 0 freezes the encoder's weights while the decoder
    # and heads move, 0.1 moves the encoder less than 1 does, and resuming keeps the parameter groups.
    list(train(tiny_spec(), sampler, small_config(steps=2), tmp_path / "init"))
    start = weights(tmp_path / "init" / "last.json")

    def tuned(scale, name):
        list(train(tiny_spec(), sampler, small_config(encoder_lr_scale=scale), tmp_path / name,
                   init=tmp_path / "init" / "last.json"))
        return weights(tmp_path / name / "last.json")

    def moved(after, encoder):
        keys = [k for k in start if k.startswith("encoders.") == encoder and start[k].is_floating_point()
                and "running" not in k]
        assert keys
        return sum(float((after[k] - start[k]).abs().sum()) for k in keys)

    frozen, slow, alike = tuned(0.0, "frozen"), tuned(0.1, "slow"), tuned(1.0, "alike")
    assert moved(frozen, encoder=True) == 0.0 and moved(frozen, encoder=False) > 0
    assert 0 < moved(slow, encoder=True) < 0.5 * moved(alike, encoder=True)
    with pytest.raises(CellPolError):
        small_config(encoder_lr_scale=1.5)
