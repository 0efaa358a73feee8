"""The shipped starter models (app.core.inference.models): 3D for stacks, 2D for single planes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.cli import EXIT_USAGE, main
from app.core.errors import CellPolError
from app.core.volume import Volume
from test_inference import tiny_model

# ----------------------------------------------------------------------------------------------
# finding them
# ----------------------------------------------------------------------------------------------
def test_find_starter_model_by_dimensionality(tmp_path):
    from app.core.inference import find_starter_model

    assert find_starter_model(tmp_path / "missing") is None
    three = tiny_model(tmp_path, "cellpol_starter", seed=0)
    assert find_starter_model(tmp_path) == three
    assert find_starter_model(tmp_path, spatial_dims=2) is None
    two = tiny_model(tmp_path, "a_plane_model", seed=1, spatial_dims=2)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")  # skipped, not fatal
    assert find_starter_model(tmp_path, spatial_dims=2) == two
    assert find_starter_model(tmp_path, spatial_dims=3) == three


def test_cli_cellpol_without_any_model(tmp_path, capsys, monkeypatch):
    import app.cli as cli

    monkeypatch.setattr(cli, "_starter_model_available", lambda: False)
    monkeypatch.setattr("app.core.inference.models.starter_models", lambda folder=None: {})
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((4, 2, 16, 16), dtype=np.uint16))
    status = main(["predict", str(image), "--out", str(tmp_path / "o"), "--method", "cellpol", "--axes", "ZCYX",
                   "--voxel-size", "1", "1", "1"])
    assert status == EXIT_USAGE
    assert ("No starter model is installed (resources/models): give a model file or use the classic method. "
            "(command line: --model PATH or --method classic)") in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the starter predictor
# ----------------------------------------------------------------------------------------------
def test_starter_predictor_picks_the_model_per_image(tmp_path):
    from app.core.inference import StarterPredictor

    tiny_model(tmp_path, "cellpol_starter", seed=0)
    predictor = StarterPredictor("cpu", folder=tmp_path)
    rng = np.random.default_rng(0)
    stack = Volume(rng.random((2, 8, 32, 32)).astype(np.float32), (1.0, 0.5, 0.5))
    plane = Volume(rng.random((2, 1, 32, 32)).astype(np.float32), (1.0, 0.5, 0.5))
    assert predictor.for_volume(stack).spatial_dims == 3
    predictor(stack)
    with pytest.raises(CellPolError, match="No 2D starter model is installed"):
        predictor(plane)
    tiny_model(tmp_path, "cellpol_starter_2d", seed=1, spatial_dims=2)
    predictor = StarterPredictor("cpu", folder=tmp_path)
    assert predictor.for_volume(plane).spatial_dims == 2
    assert isinstance(predictor(plane), type(predictor(stack)))
    names = {m["images"]: m["name"] for m in predictor.provenance()["models"]}
    assert names == {"3D": "cellpol_starter", "2D": "cellpol_starter_2d"}
    with pytest.raises(CellPolError, match="No starter model is installed"):
        StarterPredictor("cpu", folder=tmp_path / "empty")


def test_the_models_folder_is_the_repositorys_and_replacing_the_public_name_redirects_the_lookup(tmp_path,
                                                                                                 monkeypatch):
    import app
    from app.core.inference import find_starter_model, models_dir

    assert models_dir() == Path(app.__file__).resolve().parents[1] / "resources" / "models"
    three = tiny_model(tmp_path, "cellpol_starter", seed=0)
    monkeypatch.setattr("app.core.inference.models_dir", lambda: tmp_path)  # as test_train_cli.py does
    assert find_starter_model() == three and find_starter_model(spatial_dims=2) is None
