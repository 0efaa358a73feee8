"""Vox2Vox: SSIM, the networks, the training job (loss, resume), generation (determinism, files) and errors.

Tiny sizes (16×64×64 at 1×0.5×0.5 µm, a few steps on the CPU) keep the whole file to seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main
from app.core.errors import CellPolError, FileFormatError
from app.core.simulate import synthesize_dataset
from app.training import vox2vox
from app.training.vox2vox import (
    UNetGenerator,
    Vox2VoxConfig,
    Vox2VoxOptions,
    generate,
    load_generator,
    ssim3d,
    train_vox2vox,
)

VOXEL = (1.0, 0.5, 0.5)
PATCH = (16, 64, 64)


def test_the_package_offers_every_name_the_module_did():
    names = ["CHECKPOINT_FORMAT", "DEFAULT_PATCH_FIELD_UM", "EVAL_COLUMNS", "FORMAT_NAME", "FORMAT_VERSION",
             "GENERATED_PREFIX", "GOLGI_BOX_UM", "GeneratorSpec", "HISTORY_KEPT", "L1_WEIGHT", "LAST", "LOG_COLUMNS",
             "LOSS_KEYS", "LayoutParams", "MAX_VOLUME_SHAPE", "MaskedVolume", "NGMIC_FOLDERS", "NUCLEUS_BOX_UM",
             "PatchDiscriminator", "PathLike", "PauseToken", "SSIM_SIGMA", "ShapeLibrary", "TrainEvent",
             "UNetGenerator", "Vox2VoxConfig", "Vox2VoxOptions", "check_shape", "evaluate_generator", "generate",
             "generate_job", "load_generator", "masked_volume", "output_paths", "pause_point", "run_generator",
             "save_generator", "ssim3d", "train_vox2vox"]
    assert [name for name in names if not hasattr(vox2vox, name)] == []
    assert vox2vox.__all__ == ["Vox2VoxConfig", "UNetGenerator", "PatchDiscriminator", "GeneratorSpec",
                               "Vox2VoxOptions", "train_vox2vox", "generate", "generate_job", "save_generator",
                               "load_generator", "ssim3d", "evaluate_generator", "run_generator", "output_paths",
                               "L1_WEIGHT"]
    from app.training.vox2vox import files, networks, training

    assert vox2vox.UNetGenerator is networks.UNetGenerator and vox2vox.load_generator is files.load_generator
    assert vox2vox.train_vox2vox is training.train_vox2vox


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim")
    synthesize_dataset(folder, 3, shape=PATCH, voxel_size=VOXEL, seed=11)
    return folder


def options(images, out, **changes):
    settings = dict(images=images, out=out, steps=8, eval_every=4, patch_shape=PATCH, device="cpu", seed=0,
                    learning_rate=1e-3, base_filters=8)
    settings.update(changes)
    return Vox2VoxOptions(**settings)


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "g"
    events = list(train_vox2vox(options(images, out, checkpoint_every=4)))
    return out, events


# --- SSIM -----------------------------------------------------------------------------------------
def test_ssim_of_identical_volumes_is_one_and_of_noise_is_low():
    rng = np.random.default_rng(0)
    grid = np.indices((16, 32, 32)).astype(float)
    structure = 0.5 + 0.4 * np.sin(grid[1] / 3) * np.cos(grid[2] / 4)
    volume = np.stack([structure, structure[:, ::-1]])
    assert ssim3d(volume, volume) == pytest.approx([1.0, 1.0])
    noise = rng.uniform(0, 1, volume.shape)
    assert max(ssim3d(volume, noise)) < 0.2
    assert 0.2 < ssim3d(volume, np.clip(volume + rng.normal(0, 0.1, volume.shape), 0, 1))[0] < 0.95
    thin = volume[:, :2]  # fewer slices than the window: slice-wise 2D SSIM
    assert ssim3d(thin, thin) == pytest.approx([1.0, 1.0])
    with pytest.raises(CellPolError, match="same shape"):
        ssim3d(volume, volume[:, 1:])


# --- networks ---------------------------------------------------------------------------------------
def test_strides_follow_the_voxel_size_and_shapes_are_checked():
    config = Vox2VoxConfig.for_voxel_size(VOXEL, levels=4)
    assert config.strides == ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert config.multiple == (8, 16, 16)
    assert Vox2VoxConfig.for_voxel_size((0.5, 0.5, 0.5), levels=3).multiple == (8, 8, 8)
    assert vox2vox.check_shape((16, 64, 64), config.multiple) == (16, 64, 64)
    with pytest.raises(CellPolError, match=r"multiple of \(8, 16, 16\).*e\.g\. \(8, 64, 64\)"):
        vox2vox.check_shape((10, 64, 64), config.multiple)
    with pytest.raises(CellPolError, match="strides"):
        Vox2VoxConfig(strides=((3, 2, 2),))


def test_generator_maps_masks_to_an_image_and_dropout_is_a_choice():
    torch.manual_seed(0)
    config = Vox2VoxConfig.for_voxel_size(VOXEL, levels=3, base_filters=4)
    generator = UNetGenerator(config).eval()
    masks = np.zeros((2, 8, 32, 32), np.float32)
    masks[0, 2:6, 8:20, 8:20] = 1
    out = vox2vox.run_generator(generator, masks)
    assert out.shape == masks.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert np.array_equal(out, vox2vox.run_generator(generator, masks))  # no dropout: deterministic
    odd = vox2vox.run_generator(generator, masks[:, :7, :30, :29])  # padded to the strides, cropped back
    assert odd.shape == (2, 7, 30, 29)
    generator.generation_dropout = True
    torch.manual_seed(1)
    first = vox2vox.run_generator(generator, masks)
    torch.manual_seed(2)
    assert not np.array_equal(first, vox2vox.run_generator(generator, masks))
    torch.manual_seed(1)
    assert np.array_equal(first, vox2vox.run_generator(generator, masks))


# --- training ---------------------------------------------------------------------------------------
def test_training_lowers_the_loss_reports_ssim_and_writes_a_generator(trained):
    out, events = trained
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 9))
    l1 = [e.losses["g_l1"] for e in steps]
    assert np.mean(l1[-3:]) < 0.8 * np.mean(l1[:3])
    evaluations = [e for e in events if e.kind == "epoch"]
    assert [e.step for e in evaluations] == [4, 8]
    assert all(-1.0 <= e.metrics["ssim"] <= 1.0 for e in evaluations)
    done = events[-1]
    assert done.kind == "done" and done.metrics["ssim"] == evaluations[-1].metrics["ssim"]
    assert any("held-out" in e.message for e in events if e.kind == "info")
    generator, spec, library = load_generator(done.path)
    assert spec.patch_shape == PATCH and spec.voxel_size == VOXEL and spec.config.base_filters == 8
    assert len(library.nuclei) >= 3 and len(library.golgi) >= 3
    assert spec.provenance["final_ssim"]["ssim"] == pytest.approx(done.metrics["ssim"])
    document = json.loads(done.path.read_text())
    assert document["format"] == "cellpol-vox2vox" and document["shapes"]["nuclei"] == len(library.nuclei)


def test_training_reports_its_stages_in_order(trained):
    _, events = trained
    assert [e.kind for e in events] == ["info"] * 4 + (["step"] * 4 + ["epoch", "checkpoint"]) * 2 + ["done"]
    assert [e.message.split(" ")[0] for e in events[:4]] == ["Training", "SSIM:", "Layout", "Generator:"]
    assert [(e.step, e.epoch) for e in events if e.kind == "epoch"] == [(4, 1), (8, 2)]
    assert all(e.path.name == "last.ckpt.safetensors" for e in events if e.kind == "checkpoint")


def test_a_run_started_again_after_its_last_step_writes_the_generator_without_training(images, trained, tmp_path):
    import shutil

    reference, events = trained
    shutil.copytree(reference.with_name("g.checkpoints"), tmp_path / "g.checkpoints")
    again = list(train_vox2vox(options(images, tmp_path / "g", checkpoint_every=4)))
    assert [e.kind for e in again] == ["info"] * 5 + ["done"]
    assert "Resuming from the checkpoint at step 8" in again[4].message
    # The final SSIM is the checkpoint's last evaluation (kept to 5 decimals), not a new one.
    assert again[-1].metrics == {k: round(v, 5) for k, v in events[-1].metrics.items()}
    resumed, _, _ = load_generator(tmp_path / "g.json")
    finished, _, _ = load_generator(reference.with_suffix(".json"))
    for (name, a), b in zip(resumed.state_dict().items(), finished.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_killed_run_resumes_at_its_checkpoint_with_the_same_result(images, trained, tmp_path):
    reference, _ = trained
    run = train_vox2vox(options(images, tmp_path / "g", checkpoint_every=4))
    for event in run:
        if event.kind == "checkpoint":
            break
    run.close()  # as if killed right after the step-4 checkpoint
    assert not (tmp_path / "g.json").exists()
    events = list(train_vox2vox(options(images, tmp_path / "g", checkpoint_every=4)))
    assert any("Resuming from the checkpoint at step 4" in e.message for e in events if e.kind == "info")
    assert [e.step for e in events if e.kind == "step"] == [5, 6, 7, 8]
    resumed, _, _ = load_generator(tmp_path / "g.json")
    uninterrupted, _, _ = load_generator(reference.with_suffix(".json"))
    for (name, a), b in zip(resumed.state_dict().items(), uninterrupted.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(CellPolError, match="already exists"):
        list(train_vox2vox(options(images, tmp_path / "g")))
    (tmp_path / "g.json").unlink()
    with pytest.raises(CellPolError, match="different Vox2Vox run.*seed"):
        list(train_vox2vox(options(images, tmp_path / "g", seed=5)))


def test_bad_training_input_is_a_clear_error(images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CellPolError, match="No training images"):
        list(train_vox2vox(options(empty, tmp_path / "g")))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "a.tif").write_bytes((images / "synth_0000.tif").read_bytes())
    with pytest.raises(CellPolError, match="no vectors file"):
        list(train_vox2vox(options(lonely, tmp_path / "g")))
    with pytest.raises(CellPolError, match=r"multiple of \(8, 16, 16\)"):
        list(train_vox2vox(options(images, tmp_path / "g", patch_shape=(12, 64, 64))))
    with pytest.raises(CellPolError, match="Golgi channel 5 does not exist"):
        list(train_vox2vox(options(images, tmp_path / "g", golgi_channel=5)))
    with pytest.raises(CellPolError, match="steps must be"):
        list(train_vox2vox(options(images, tmp_path / "g", steps=0)))


# --- generation -------------------------------------------------------------------------------------
def test_generation_is_deterministic_under_a_seed_and_writes_both_layouts(trained, tmp_path):
    out, _ = trained
    model = out.with_suffix(".json")
    first = generate(model, 2, tmp_path / "a", seed=7, device="cpu")
    generate(model, 2, tmp_path / "b", seed=7, device="cpu")
    generate(model, 2, tmp_path / "c", seed=8, device="cpu")
    for sub in ("inputs/0.npy", "outputs/0.npy", "vectors/1.npy", "heatmaps/1.npy", "gen_0001.vectors.csv"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes(), sub
    assert not np.array_equal(np.load(tmp_path / "a/inputs/0.npy"), np.load(tmp_path / "c/inputs/0.npy"))

    from app.core.imageio import read_volume
    from app.core.pairs import read_3dngmic_vectors, read_pairs
    from app.training import dataset

    volume = read_volume(first[0])
    assert volume.voxel_size == VOXEL and (volume.nucleus_channel, volume.golgi_channel) == (0, 1)
    z, y, x = volume.spatial_shape
    masks_ngmic = np.load(tmp_path / "a/inputs/0.npy")
    image_ngmic = np.load(tmp_path / "a/outputs/0.npy")
    assert masks_ngmic.shape == image_ngmic.shape == (y, x, z, 2) and masks_ngmic.dtype == np.uint8
    assert set(np.unique(masks_ngmic)) <= {0, 255}
    assert np.array_equal(image_ngmic[..., 1], np.transpose(volume.data[0], (1, 2, 0)))  # channel 1 = nucleus
    pairs = read_pairs(tmp_path / "a/gen_0000.vectors.csv")
    legacy = read_3dngmic_vectors(tmp_path / "a/vectors/0.npy")
    assert len(pairs) >= 1  # the CSV keeps 4 decimals, the .npy all
    assert np.allclose(legacy.nuclei, pairs.nuclei, atol=1e-3) and np.allclose(legacy.golgi, pairs.golgi, atol=1e-3)
    for row in np.round(pairs.golgi).astype(int):  # the Golgi mask (channel 0 in 3DNGMic) lies at each Golgi
        assert masks_ngmic[row[1], row[2], row[0], 0] == 255
    heat = np.load(tmp_path / "a/heatmaps/0.npy")
    zc, yc, xc = np.round(pairs.nuclei[0]).astype(int)
    assert heat[yc, xc, zc, 1] > 0.9
    # What `cellpol train --synthetic-dir` does with the folder:
    files = dataset.match_files(tmp_path / "a", None, "synthetic")
    assert [f.image.name for f in files] == ["gen_0000.tif", "gen_0001.tif"]
    assert len(dataset.load_annotated(files[0]).pairs) == len(pairs)


def test_bad_generation_input_is_a_clear_error(trained, tmp_path):
    out, _ = trained
    model = out.with_suffix(".json")
    with pytest.raises(CellPolError, match="whole number ≥ 1"):
        generate(model, 0, tmp_path)
    with pytest.raises(CellPolError, match="multiple of"):
        generate(model, 1, tmp_path, shape=(10, 64, 64))
    with pytest.raises(FileFormatError, match="Model file not found"):
        generate(tmp_path / "missing.json", 1, tmp_path)
    detector = tmp_path / "detector.json"
    detector.write_text(json.dumps({"format": "cellpol-model", "version": 1}))
    with pytest.raises(FileFormatError, match="not a Vox2Vox generator"):
        generate(detector, 1, tmp_path)


def test_cli(images, trained, tmp_path, capsys):
    out, _ = trained
    assert main(["vox2vox", "generate", "--model", str(out.with_suffix(".json")), "--n", "1", "--out",
                 str(tmp_path / "gen"), "--seed", "3", "--dropout"]) == 0
    assert (tmp_path / "gen" / "gen_0000.vectors.csv").is_file()
    assert main(["vox2vox", "train", "--images", str(images), "--out", str(tmp_path / "g"), "--steps", "2",
                 "--patch", "16", "64", "64", "--device", "cpu", "--base-filters", "4", "--eval-every", "2"]) == 0
    printed = capsys.readouterr()
    assert "SSIM between the held-out real volumes" in printed.out and (tmp_path / "g.json").is_file()
    assert main(["vox2vox", "generate", "--model", str(tmp_path / "nothing.json"), "--n", "1", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cellpol: error: Model file not found")
    assert main(["vox2vox", "train", "--images", str(images), "--out", str(tmp_path / "g2"), "--golgi-channel", "0",
                 "--nucleus-channel", "0"]) == 2
    assert "must differ" in capsys.readouterr().err


def test_cancel_saves_a_checkpoint_and_pause_waits(images, tmp_path):
    from app.core.errors import CancelledError
    from app.core.jobs import CancelToken
    from app.training.trainer import PauseToken, read_checkpoint_state

    cancel = CancelToken()
    with pytest.raises(CancelledError):
        for event in train_vox2vox(options(images, tmp_path / "g", steps=6, base_filters=4), cancel=cancel):
            if event.kind == "step" and event.step == 2:
                cancel.cancel()
    assert read_checkpoint_state(tmp_path / "g.checkpoints")["step"] == 2

    pause = PauseToken()
    pause.pause()
    kinds = []
    for event in train_vox2vox(options(images, tmp_path / "g", steps=6, base_filters=4), pause=pause):
        kinds.append(event.kind)
        if event.kind == "paused":
            assert event.step == 2 and event.path.is_file()
            pause.resume()
    assert kinds.index("paused") < kinds.index("resumed") < kinds.index("step") and kinds[-1] == "done"
