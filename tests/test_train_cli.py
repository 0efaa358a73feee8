"""Training on the user's images: a tiny model learns, the CLI runs end to end, bad input gets one clear message."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import torch
import pytest
import tifffile

from app.cli import EXIT_OK, EXIT_USAGE, main
from app.core.errors import CellPolError
from app.core.modelfile import ModelSpec, load_model, save_model
from app.core.network import NetworkConfig, build_network
from app.core.pairs import PairSet, read_pairs, write_pairs
from app.core.simulate import synthesize_dataset
from app.training import dataset, finetune
from app.training.data import AugmentConfig
from app.training.finetune import TrainingOptions, ValidationRun, choose_model_voxel_size, run_training

# Few distractors, so that a tiny network can learn the task within a CI budget.
CLEAN = dict(dim_fraction=0.0, vessels_per_10000um2=0.0, dirt_per_10000um2=0.0, fragments_per_cell=0.0,
             cytoplasm_level=0.0, golgi_over_nucleus_fraction=0.0)
SHAPE = (8, 128, 128)
VOXEL = (1.0, 0.5, 0.5)
# A coarse model grid keeps the tests small: 8×128×128 at 1×0.5×0.5 µm becomes 4×64×64.
MODEL_VOXEL = (2.0, 1.0, 1.0)
TINY_CLI = ["--init", "none", "--model-voxel-size", "2", "1", "1", "--base-filters", "4"]


def simulate_into(folder, n, seed, shape=SHAPE):
    synthesize_dataset(folder, n, shape=shape, voxel_size=VOXEL, seed=seed, **CLEAN)
    return folder


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return simulate_into(tmp_path_factory.mktemp("train"), 2, seed=3)


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    return simulate_into(tmp_path_factory.mktemp("val"), 2, seed=4)


def copy_images(source, target, names=None):
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if names is None or any(path.name.startswith(n) for n in names):
            shutil.copy(path, target / path.name)
    return target


def run(options, cancel=None):
    events = []
    gen = run_training(options, cancel=cancel)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


# ----------------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------------
def test_a_tiny_model_learns_on_simulated_volumes(train_dir, val_dir, tmp_path):
    options = TrainingOptions(
        images=train_dir, val_images=val_dir, out=tmp_path / "tiny", init=None, model_voxel_size=MODEL_VOXEL,
        levels=2, base_filters=8, steps=40, epoch_steps=20, batch_size=4, learning_rate=3e-3,
        embedding_weight=0.1, augment=AugmentConfig.off(), device="cpu", seed=0,
    )
    events, path = run(options)
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.step for e in epochs] == [20, 40]
    # The heatmap loss falls.
    heatmap = [e.losses["heatmap"] for e in events if e.kind == "step"]
    assert len(heatmap) == 40 and np.mean(heatmap[-10:]) < 0.6 * np.mean(heatmap[:5]), heatmap
    # Validation: an untrained network finds nothing (its heatmaps sit at sigmoid(−2) ≈ 0.12, below every
    # threshold tried); the trained one finds a good share of the held-out cells, few false ones.
    model, spec = load_model(path)
    items = [dataset.load_annotated(f) for f in dataset.match_files(val_dir)]
    untrained = ValidationRun(items, "cpu")(build_network(spec.network), spec)
    assert untrained["tpr0"] == 0.0
    done = events[-1]
    assert done.kind == "done" and done.path == path
    assert done.metrics["tpr0"] >= 0.3 and done.metrics["fdr0"] <= 0.5, done.metrics
    assert max(e.metrics["tpr0"] for e in epochs) >= 0.3
    # The calibrated decoding is stored in the model file, with the provenance of the run.
    calibration = next(e for e in events if e.kind == "calibration").metrics
    assert spec.decoding.peak_threshold_nucleus == calibration["peak_threshold_nucleus"]
    assert spec.provenance["validation_split"] == "explicit" and spec.provenance["steps"] == 40
    assert spec.provenance["calibration"]["best"]["j"] == pytest.approx(calibration["j"])
    assert spec.voxel_size == MODEL_VOXEL and spec.network.base_filters == 8


def test_the_job_reports_its_stages_in_order(train_dir, val_dir, tmp_path):
    """The order the CLI and the window follow: the images read, what was found, the trainer's steps, epochs
    and checkpoints, the choice of weights, the calibration and one ``done`` last."""
    options = TrainingOptions(images=train_dir, val_images=val_dir, out=tmp_path / "m", init=None,
                              model_voxel_size=MODEL_VOXEL, levels=2, base_filters=4, steps=4, epoch_steps=2,
                              batch_size=1, validation_patches=1, calibrate="always", device="cpu")
    events, path = run(options)
    kinds = [e.kind for e in events if not (e.kind == "checkpoint" and e.best)]  # a best epoch adds one
    assert kinds == (["loading"] * 4 + ["info"] * 3 + ["step", "step", "epoch", "checkpoint"] * 2
                     + ["info", "calibration", "done"])
    assert [(e.step, e.total_steps) for e in events[:4]] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    info = [e.message for e in events if e.kind == "info"]
    assert info[0].startswith("Training data: 2 image(s)") and info[1].startswith("Validating on 2 given")
    assert "from scratch" in info[2] and info[3].startswith("Keeping the last weights")
    best = [e for e in events if e.kind == "checkpoint" and e.best]
    assert best and best[0].step == 2 and events[events.index(best[0]) - 1].kind == "epoch"
    assert events[-1].path == path and {"tpr5", "fdr5", "j5"} <= set(events[-1].metrics)


def test_a_2d_network_trains_on_2d_images(tmp_path):
    images = simulate_into(tmp_path / "flat", 2, seed=5, shape=(1, 128, 128))
    options = TrainingOptions(images=images, out=tmp_path / "flat_model", init=None, model_voxel_size=(1, 1, 1),
                              levels=2, base_filters=8, steps=30, epoch_steps=30, learning_rate=3e-3,
                              embedding_weight=0.1, augment=AugmentConfig.off(), device="cpu")
    events, path = run(options)
    _, spec = load_model(path)
    assert spec.network.spatial_dims == 2 and spec.provenance["validation_split"] == "held-out"
    assert events[-1].metrics["tpr0"] > 0.0
    # A 3D model cannot be fine-tuned on 2D images.
    tiny3d = ModelSpec(network=NetworkConfig(levels=2, base_filters=4, pool_factors=((1, 2, 2),)), voxel_size=VOXEL)
    save_model(tmp_path / "m3d", build_network(tiny3d.network), tiny3d)
    with pytest.raises(CellPolError, match="3D model but the training images are 2D"):
        run(TrainingOptions(images=images, out=tmp_path / "x", init=tmp_path / "m3d.json"))


def test_the_starter_of_the_images_dimensionality_is_fine_tuned(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    for name, dims, pools in (("cellpol_starter", 3, ((1, 2, 2),)), ("cellpol_starter_2d", 2, None)):
        config = NetworkConfig(levels=2, base_filters=4, spatial_dims=dims,
                               **({"pool_factors": pools} if pools else {}))
        spec = ModelSpec(network=config, voxel_size=(1.0, 1.0, 1.0), name=name)
        save_model(models / name, build_network(config), spec)
    monkeypatch.setattr("app.core.inference.models_dir", lambda: models)
    images = simulate_into(tmp_path / "flat", 2, seed=6, shape=(1, 96, 96))
    events, path = run(TrainingOptions(images=images, out=tmp_path / "tuned", steps=2, epoch_steps=2, device="cpu",
                                       augment=AugmentConfig.off(), calibrate="never"))
    _, spec = load_model(path)
    assert spec.network.spatial_dims == 2 and spec.provenance["init"]["name"] == "cellpol_starter_2d"
    assert any("Fine-tuning cellpol_starter_2d.json" in e.message for e in events if e.kind == "info")
    # Fine-tuning defaults: a gentler rate and embedding weight than training from scratch.
    assert spec.provenance["train"]["learning_rate"] == finetune.FINETUNE_LEARNING_RATE
    assert spec.provenance["train"]["loss"]["pull_weight"] == finetune.FINETUNE_EMBEDDING_WEIGHT


def test_model_voxel_size_from_the_images():
    from app.core.volume import Volume

    def vol(voxel, z=4):
        return Volume(np.zeros((2, z, 4, 4), np.uint16), voxel)

    assert choose_model_voxel_size([vol((0.3, 0.2, 0.2)), vol((0.5, 0.4, 0.4)), vol((0.4, 0.3, 0.3))]) == (0.4, 0.3, 0.3)
    assert choose_model_voxel_size([vol((5.0, 0.1, 0.1))]) == (2.0, 0.25, 0.25)  # kept within the limits
    assert choose_model_voxel_size([vol((1.0, 0.6, 0.6), z=1)]) == (1.0, 0.6, 0.6)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def test_cli_one_image_with_a_dozen_pairs_then_predict(train_dir, tmp_path, capsys):
    one = copy_images(train_dir, tmp_path / "one", ["synth_0000"])
    assert 8 <= len(read_pairs(one / "synth_0000.vectors.csv")) <= 20
    out = tmp_path / "mine"
    status = main(["train", "--images", str(one), "--out", str(out), "--steps", "6", "--epoch-steps", "3",
                   *TINY_CLI])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    assert "validating on the training image itself" in captured.err  # said plainly
    assert "TPR" in captured.out and "level" in captured.out and "mine.json" in captured.out
    _, spec = load_model(out.with_suffix(".json"))
    assert spec.provenance["validation_split"] == "training-image"
    with open(tmp_path / "mine.log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6] and float(rows[0]["total"]) > 0
    with open(tmp_path / "mine.validation.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [3, 6]

    # The result is a model `cellpol predict --model` uses.
    preds = tmp_path / "preds"
    assert main(["predict", str(one), "--out", str(preds), "--model", str(out.with_suffix(".json"))]) == EXIT_OK
    assert read_pairs(preds / "synth_0000.pred.vectors.csv").meta["models"][0]["name"] == "mine"

    # An existing model is not overwritten by accident.
    capsys.readouterr()
    assert main(["train", "--images", str(one), "--out", str(out), "--steps", "6", *TINY_CLI]) == EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err


def test_cli_resumes_an_interrupted_run(train_dir, tmp_path, capsys):
    out = tmp_path / "resumed"
    argv = ["train", "--images", str(train_dir), "--out", str(out), "--steps", "8", "--epoch-steps", "4", *TINY_CLI]
    options = TrainingOptions(images=train_dir, out=out, steps=8, epoch_steps=4, init=None,
                              model_voxel_size=MODEL_VOXEL, base_filters=4)
    gen = run_training(options)
    for event in gen:
        if event.kind == "step" and event.step == 6:  # killed at step 6: the checkpoint of step 4 survives
            break
    gen.close()
    assert not out.with_suffix(".json").exists()
    assert main(argv) == EXIT_OK
    assert "Resuming from the checkpoint at step 4" in capsys.readouterr().err
    with open(tmp_path / "resumed.log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == list(range(1, 9))  # each step once
    # Other settings on the same checkpoints: refused, not silently mixed.
    shutil.move(out.with_suffix(".json"), tmp_path / "kept.json")
    assert main(argv[:6] + ["12"] + argv[7:]) == EXIT_USAGE
    assert "different training run" in capsys.readouterr().err


def test_cli_fine_tunes_a_given_model(train_dir, val_dir, tmp_path, capsys, monkeypatch):
    spec = ModelSpec(network=NetworkConfig.for_voxel_size(MODEL_VOXEL, levels=2, base_filters=4), voxel_size=MODEL_VOXEL,
                     name="tiny-init")
    save_model(tmp_path / "init", build_network(spec.network), spec)
    out = tmp_path / "tuned"
    monkeypatch.setattr(finetune, "SYNTHETIC_FIELD_UM", (8.0, 24.0, 24.0))  # small simulated volumes
    status = main(["train", "--images", str(train_dir), "--out", str(out), "--steps", "4", "--epoch-steps", "2",
                   "--init", str(tmp_path / "init.json"), "--seed", "2", "--synthetic", "1", "--synthetic-dir",
                   str(val_dir), "--synthetic-fraction", "0.25", "--augment", "noise=0", "rotate90=1",
                   "--init-share", "0.5"])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    assert "Fine-tuning init.json" in captured.err and "before:" in captured.out and "after:" in captured.out
    # One held-out image of ~15 pairs: too few to re-choose the init model's decoding, which is kept.
    assert "too few to re-choose the decoding" in captured.err
    _, tuned = load_model(out.with_suffix(".json"))
    assert tuned.network == spec.network and tuned.voxel_size == MODEL_VOXEL  # from the init model
    assert tuned.provenance["init"]["name"] == "tiny-init" and tuned.provenance["validation_split"] == "held-out"
    assert tuned.provenance["train"]["learning_rate"] == finetune.FINETUNE_LEARNING_RATE
    assert tuned.provenance["calibration"]["method"] == "kept from the initial model"
    assert tuned.decoding == spec.decoding
    # ... and too few to tell the best epoch: the last weights become the model.
    assert "Keeping the last weights" in captured.err and tuned.provenance["weights_from"] == "last"
    # The last weights averaged half and half with the initial model's (WiSE-FT, asked for).
    assert "Averaged the kept weights with those of init.json (0.5 : 0.5)" in captured.err
    assert tuned.provenance["weight_average"] == {"init_share": 0.5, "init": "init.json"}
    final = load_model(out.with_suffix(".json"))[0].state_dict()
    last = load_model(out.with_name("tuned.checkpoints") / "last.json")[0].state_dict()
    initial = load_model(tmp_path / "init.json")[0].state_dict()
    floats = [k for k in final if torch.is_floating_point(final[k])]
    assert all(torch.allclose(final[k], (last[k] + initial[k]) / 2, atol=1e-6) for k in floats)
    assert not all(torch.allclose(final[k], last[k]) for k in floats)
    assert main(["train", "--images", str(train_dir), "--out", str(out), "--steps", "2", "--init",
                 str(tmp_path / "init.json"), "--calibrate", "always", "--keep", "best", "--overwrite",
                 "--encoder-lr-scale", "0.25"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "Calibrated decoding" in err and "vessel (ridge) weight" in err and "Keeping the last weights" not in err
    assert "Averaged the kept weights" not in err
    again = load_model(out.with_suffix(".json"))
    assert again[1].provenance["calibration"]["method"].startswith("grid search")
    assert again[1].provenance["weights_from"] == "best" and "weight_average" not in again[1].provenance
    assert again[1].provenance["train"]["encoder_lr_scale"] == 0.25 and tuned.provenance["train"]["encoder_lr_scale"] == 1
    best = load_model(out.with_name("tuned.checkpoints") / "best.json")[0].state_dict()
    assert all(torch.equal(again[0].state_dict()[k], best[k]) for k in best)  # by default the kept weights as they are
    assert main(["train", "--images", str(train_dir), "--out", str(tmp_path / "z"), "--init-share", "1"]) == EXIT_USAGE
    assert "share of the weights must be in [0, 1)" in capsys.readouterr().err
    assert main(["train", "--images", str(train_dir), "--out", str(tmp_path / "z"), "--encoder-lr-scale", "2"]) == EXIT_USAGE
    assert "encoder's learning-rate scale must be between 0 and 1" in capsys.readouterr().err
    assert tuned.provenance["synthetic"]["volumes"] == 3 and tuned.provenance["synthetic"]["fraction"] == 0.25
    assert tuned.provenance["augment"]["noise"] == 0.0 and tuned.provenance["augment"]["rotate90"] == 1.0
    capsys.readouterr()
    assert main(["train", "--images", str(train_dir), "--out", str(tmp_path / "y"), "--augment", "noise"]) == EXIT_USAGE
    assert "NAME=PROBABILITY" in capsys.readouterr().err
    assert main(["train", "--images", str(train_dir), "--out", str(tmp_path / "y"), "--augment", "fog=1"]) == EXIT_USAGE
    assert "Unknown augmentation" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the file
# ----------------------------------------------------------------------------------------------
def _bad_image_without_vectors(folder):
    (folder / "synth_0001.vectors.csv").unlink()
    (folder / "synth_0001.vectors.json").unlink()
    return "synth_0001.tif", "no vectors file"


def _bad_vectors_without_image(folder):
    shutil.copy(folder / "synth_0000.vectors.csv", folder / "lonely.vectors.csv")
    return "lonely.vectors.csv", "no training image"


def _bad_vectors_outside(folder):
    pairs = read_pairs(folder / "synth_0001.vectors.csv")
    pairs.golgi[2] = [3.0, 40.0, 500.0]
    write_pairs(folder / "synth_0001.vectors.csv", pairs)
    return "synth_0001.vectors.csv", "outside the image"


def _bad_zero_pairs(folder):
    for csv_path in folder.glob("*.vectors.csv"):
        write_pairs(csv_path, PairSet.empty(VOXEL))
    return "synth_0000.vectors.csv", "no nucleus→Golgi pairs"


def _bad_channel(folder):
    return "synth_0000.tif", "does not exist", ["--golgi-channel", "4"]


def _bad_voxel_size(folder):
    image = folder / "synth_0001.tif"
    tifffile.imwrite(image, tifffile.imread(image))  # plain TIFF: calibration lost
    return "synth_0001.tif", "--voxel-size", ["--axes", "ZCYX"]


@pytest.mark.parametrize("spoil", [_bad_image_without_vectors, _bad_vectors_without_image, _bad_vectors_outside,
                                   _bad_zero_pairs, _bad_channel, _bad_voxel_size])
def test_bad_training_input_is_one_clear_message(spoil, train_dir, tmp_path, capsys):
    folder = copy_images(train_dir, tmp_path / "data")
    found = spoil(folder)
    name, message = found[0], found[1]
    extra = found[2] if len(found) > 2 else []
    status = main(["train", "--images", str(folder), "--out", str(tmp_path / "m"), "--steps", "2", *TINY_CLI, *extra])
    err = capsys.readouterr().err.strip()
    assert status == EXIT_USAGE
    assert err.startswith("cellpol: error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert name in err and message in err, err
    assert not (tmp_path / "m.json").exists()


def test_validation_is_split_by_whole_images(train_dir, val_dir, tmp_path):
    folder = copy_images(train_dir, tmp_path / "all")
    for k, path in enumerate(sorted(val_dir.glob("synth_*.tif"))):  # under other names: four distinct images
        for suffix in (".tif", ".vectors.csv", ".vectors.json"):
            shutil.copy(val_dir / (path.stem + suffix), folder / f"v{k}{suffix}")
    data = dataset.load_training_data(folder, seed=1)
    split = data.split
    assert split.mode == "held-out" and len(split.validation) == 1 and len(split.train) == 3
    assert not {i.name for i in split.train} & {i.name for i in split.validation}
    assert dataset.load_training_data(folder, seed=1).split.validation[0].name == split.validation[0].name
    with pytest.raises(CellPolError, match="both training and validation"):
        dataset.load_training_data(folder, val_images=folder / "v0.tif")
    # Pairs get the image's voxel size; a sidecar that disagrees is reported, not trusted.
    side = json.loads((folder / "v1.vectors.json").read_text())
    side["voxel_size_zyx_um"] = [2.0, 0.5, 0.5]
    (folder / "v1.vectors.json").write_text(json.dumps(side))
    warned = dataset.load_training_data(folder, seed=1)
    assert any("v1.vectors.csv" in w and "voxel size" in w for w in warned.warnings)
    assert all(i.pairs.voxel_size == VOXEL for i in warned.split.train + warned.split.validation)


def test_cli_trains_on_a_project(train_dir, tmp_path, capsys):
    from app.core.project import Project

    project = Project.create(tmp_path / "proj")
    images = project.folder("images")
    shutil.copy(train_dir / "synth_0000.tif", images / "a.tif")  # not annotated yet: left out
    plain = images / "b.tif"
    tifffile.imwrite(plain, tifffile.imread(train_dir / "synth_0001.tif"))  # no calibration in the file
    project.remember_voxel_size(plain, VOXEL)  # the voxel size the user typed once
    shutil.copy(train_dir / "synth_0001.vectors.csv", project.vectors_path(plain))
    out = tmp_path / "proj_model"
    status = main(["train", "--project", str(project.root), "--out", str(out), "--steps", "2", "--axes", "ZCYX",
                   *TINY_CLI])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    assert "1 image(s) of the project have no annotations yet" in captured.err
    _, spec = load_model(out.with_suffix(".json"))
    assert [i["name"] for i in spec.provenance["training_images"]] == ["b"]
    assert spec.provenance["training_images"][0]["voxel_size_zyx_um"] == list(VOXEL)
    assert main(["train", "--out", str(out), "--overwrite"]) == EXIT_USAGE
    assert "No training images given" in capsys.readouterr().err
