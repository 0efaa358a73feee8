"""End-to-end CLI: synth → predict (classic) → evaluate, resumable batches and bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.cli import EXIT_FAILED_ITEMS, EXIT_OK, EXIT_USAGE, main
from app.core.pairs import read_pairs
from conftest import REPO

SHAPE = ["16", "128", "128"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--n", "2", "--shape", *SHAPE, "--seed", "3"]) == EXIT_OK
    return out


def test_synth_writes_images_and_ground_truth(synth_dir):
    tifs = sorted(synth_dir.glob("*.tif"))
    csvs = sorted(synth_dir.glob("*.vectors.csv"))
    assert len(tifs) == 2 and len(csvs) == 2
    with tifffile.TiffFile(tifs[0]) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZCYX"
        assert tif.series[0].shape == (16, 2, 128, 128)
    gt = read_pairs(csvs[0])
    assert len(gt) > 0 and gt.voxel_size is not None


def test_predict_evaluate_round_trip(synth_dir, tmp_path, capsys):
    preds = tmp_path / "preds"
    assert main(["predict", str(synth_dir), "--out", str(preds), "--method", "classic"]) == EXIT_OK
    outputs = sorted(preds.glob("*.vectors.csv"))
    # Predictions have a name of their own: <stem>.pred.vectors.csv, never taken for annotations.
    assert [p.name for p in outputs] == [p.name.replace(".vectors.csv", ".pred.vectors.csv")
                                         for p in sorted(synth_dir.glob("*.vectors.csv"))]
    pred = read_pairs(outputs[0])
    assert pred.meta["method"] == "classic" and pred.meta["image_shape_zyx"] == [16, 128, 128]
    with open(preds / "predict_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["ok", "ok"] and int(rows[0]["vectors"]) == len(pred)

    capsys.readouterr()
    assert main(["evaluate", "--gt", str(synth_dir), "--pred", str(preds), "--out", str(tmp_path / "ev")]) == EXIT_OK
    table = capsys.readouterr().out
    assert "TPR" in table and "FDR" in table
    assert (tmp_path / "ev" / "evaluation_curves.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "evaluation_summary.csv").exists()


def test_batch_resumes_and_survives_a_bad_file(synth_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for tif in sorted(synth_dir.glob("*.tif")):
        (inputs / tif.name).write_bytes(tif.read_bytes())
    good = sorted(inputs.glob("*.tif"))
    (inputs / "corrupt.tif").write_bytes(good[0].read_bytes()[:1000])  # truncated TIFF
    preds = tmp_path / "preds"
    status = main(["predict", str(inputs), "--out", str(preds), "--method", "classic"])
    assert status == EXIT_FAILED_ITEMS
    err = capsys.readouterr().err
    assert "corrupt.tif" in err and "Traceback" not in err
    assert len(list(preds.glob("*.vectors.csv"))) == 2
    # Second run: outputs exist → skipped; the bad file still fails.
    status = main(["predict", str(good[0]), str(good[1]), "--out", str(preds), "--method", "classic"])
    assert status == EXIT_OK
    with open(preds / "predict_summary.csv") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["skipped", "skipped"]
    assert main(["predict", str(good[0]), "--out", str(preds), "--method", "classic", "--overwrite"]) == EXIT_OK


def test_bad_channel_and_missing_voxel_size(synth_dir, tmp_path, capsys):
    image = sorted(synth_dir.glob("*.tif"))[0]
    status = main(["predict", str(image), "--out", str(tmp_path / "p"), "--method", "classic", "--golgi-channel", "5"])
    assert status == EXIT_FAILED_ITEMS
    assert "does not exist" in capsys.readouterr().err
    # An uncalibrated plain TIFF: refused without a voxel size, accepted with one.
    volume = tifffile.imread(image)  # (Z, C, Y, X)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, volume)
    status = main(["predict", str(plain), "--out", str(tmp_path / "q"), "--method", "classic", "--axes", "ZCYX"])
    assert status == EXIT_FAILED_ITEMS and "--voxel-size" in capsys.readouterr().err
    status = main(["predict", str(plain), "--out", str(tmp_path / "q"), "--method", "classic", "--axes", "ZCYX",
                   "--voxel-size", "0.5", "0.333", "0.333"])
    assert status == EXIT_OK


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "/nonexistent/folder", "--out", "x"], "nonexistent"),
        (["synth", "--out", "x", "--n", "0"], "--n"),
        (["synth", "--out", "x", "--n", "1", "--preset", "nope"], "preset"),
        (["evaluate", "--gt", "/nonexistent", "--pred", "/nonexistent"], "nonexistent"),
        (["import-legacy", "/nonexistent.csv", "--out", "x.csv"], "no such file"),
        (["predict", "x.tif", "--out", "o", "--voxel-size", "0", "1", "1"], "positive"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellpol: error:") and message in err and "Traceback" not in err


def test_import_legacy(shared_data, tmp_path):
    out = tmp_path / "Crop1.vectors.csv"
    assert main(["import-legacy", str(shared_data / "retina3d_vectors" / "Crop1.csv"), "--out", str(out),
                 "--voxel-size", "0.27", "0.333", "0.333"]) == EXIT_OK
    pairs = read_pairs(out)
    assert len(pairs) == 71 and pairs.voxel_size == (0.27, 0.333, 0.333)
    np.testing.assert_allclose(pairs.nuclei[0], [15, 483, 608])


def test_console_script_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "app", "--version"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "cellpol" in result.stdout
    script = Path(sys.executable).parent / "cellpol"
    result = subprocess.run([str(script), "info", "/nonexistent.tif"], capture_output=True, text=True)
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr and "nonexistent" in result.stderr


def test_predict_uses_the_bundled_starters_for_stacks_and_planes(synth_dir, tmp_path, capsys):
    """`cellpol predict` with no method or model: the shipped 3D starter for stacks, the 2D one for planes."""
    from app.core.inference import find_starter_model

    if find_starter_model(spatial_dims=3) is None or find_starter_model(spatial_dims=2) is None:
        pytest.fail("resources/models must ship a 3D and a 2D starter model")
    inputs = tmp_path / "in"
    inputs.mkdir()
    stack = sorted(synth_dir.glob("*.tif"))[0]
    (inputs / "stack.tif").write_bytes(stack.read_bytes())
    assert main(["synth", "--out", str(tmp_path / "flat"), "--n", "1", "--shape", "1", "160", "160",
                 "--seed", "4"]) == EXIT_OK
    (inputs / "plane.tif").write_bytes(next((tmp_path / "flat").glob("*.tif")).read_bytes())
    preds = tmp_path / "preds"
    assert main(["predict", str(inputs), "--out", str(preds), "--device", "cpu"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "Method: cellpol" in err and "(3D images)" in err and "(2D images)" in err
    for name, shape in (("stack", [16, 128, 128]), ("plane", [1, 160, 160])):
        pairs = read_pairs(preds / f"{name}.pred.vectors.csv")
        assert pairs.meta["method"] == "cellpol" and pairs.meta["image_shape_zyx"] == shape
        assert {m["images"] for m in pairs.meta["models"]} == {"2D", "3D"}
        assert pairs.voxel_size is not None and len(pairs) > 0


def test_predict_tta_averages_mirror_images_and_says_so(synth_dir, tmp_path, capsys):
    """`cellpol predict --tta`: the network runs on the mirror images too, the sidecar records it."""
    from app.core.inference.predictor import TTA_DESCRIPTION

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "stack.tif").write_bytes(sorted(synth_dir.glob("*.tif"))[0].read_bytes())
    runs = {}
    for name, extra in (("plain", []), ("tta", ["--tta"])):
        assert main(["predict", str(inputs), "--out", str(tmp_path / name), "--device", "cpu", *extra]) == EXIT_OK
        runs[name] = read_pairs(tmp_path / name / "stack.pred.vectors.csv")
    assert runs["tta"].meta["test_time_augmentation"] == TTA_DESCRIPTION
    assert runs["plain"].meta["test_time_augmentation"] is None
    assert len(runs["tta"]) > 0
    plain, tta = runs["plain"], runs["tta"]
    assert len(plain) != len(tta) or not np.allclose(plain.nuclei, tta.nuclei)  # other network outputs
    assert main(["predict", str(inputs), "--out", str(tmp_path / "classic"), "--method", "classic", "--tta"]) == EXIT_OK
    assert "--tta applies to the learned model only" in capsys.readouterr().err


def test_info_lists_the_series_of_a_one_series_file(tmp_path, capsys):
    from app.core.imageio import write_imagej_tiff
    from app.core.volume import Volume

    path = write_imagej_tiff(tmp_path / "one.tif", Volume(np.zeros((2, 3, 8, 8), np.uint16), (1.0, 0.5, 0.5),
                                                          ("DAPI", "GM130")))
    assert main(["info", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{path}: 1 series:" in out and "2×3×8×8 (C×Z×Y×X)  voxel 1×0.5×0.5 µm  channels DAPI, GM130" in out


@pytest.mark.parametrize("value", ["x", "-1", "1.5"])
def test_series_option_refuses_what_is_not_a_series(value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "a.tif", "--out", "o", "--series", value])
    assert stop.value.code == EXIT_USAGE
    assert "expected a series number from 0 or all" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "a.tif", "--series", "all"])  # info describes one series
