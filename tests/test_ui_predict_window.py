"""Predicting from the window: Analysis ▸ Predict… opens the Predict dock; "Predict this image" runs the model
in a worker (listed in the Jobs dock) and adds the vectors to the open image as predictions, one undo step."""

from __future__ import annotations

import numpy as np
from PySide6 import QtWidgets

from app.core.simulate import synthesize_dataset
from test_ui_annotation import open_image


def test_predict_this_image_from_the_window_adds_predicted_vectors(qtbot, tmp_path, window):
    synthesize_dataset(tmp_path / "stacks", 1, shape=(16, 128, 128), voxel_size=(1.0, 0.5, 0.5), seed=7)
    open_image(qtbot, window, tmp_path / "stacks" / "synth_0000.tif")
    before = len(window.model)
    window.actions["predict"].trigger()
    panel = window.predict_panel
    assert window.actions["predict"].objectName() == "cellpol.analysis.predict"
    assert panel is not None and window.predict_dock.isVisible()
    panel.findChild(QtWidgets.QPushButton, "cellpol.predict.image").click()
    qtbot.waitUntil(lambda: len(window.model) > before, timeout=60000)
    added = window.model.to_pairset().subset(slice(before, None))  # beside the image's own annotations
    assert len(added) > 0 and set(added.sources) == {"predicted"}
    assert np.all((added.scores >= 0) & (added.scores <= 1))
    assert window.jobs_dock.isVisible() and window.jobs_dock.running() == []
    # Coloured by score; the slider hides the predictions below it in the views (not the annotations).
    assert window.state.colour_mode == "score"
    scores = np.sort(added.scores)
    middle = float((scores[0] + scores[-1]) / 2)
    panel.set_threshold(middle)  # the slider steps in hundredths
    threshold = panel.threshold
    shown = [p for p in window.model.pairs if window.state.shows(p)]
    assert window.state.score_threshold == threshold and abs(threshold - middle) <= 0.005
    assert before <= len(shown) < len(window.model)
    assert all(p.score >= threshold for p in shown if p.source == "predicted")
    assert "hidden" in window.legend.text()
    panel.set_threshold(0.0)
    window.undo()  # one undo step takes the prediction back
    assert len(window.model) == before


def test_predict_project_lists_project_models_writes_results_and_review_counts(qtbot, tmp_path, window):
    import shutil

    from app.core.project import Project
    from app.ui.project_panel import COLUMNS

    project = Project.create(tmp_path / "study")
    synthesize_dataset(tmp_path / "stacks", 2, shape=(16, 96, 96), voxel_size=(1.0, 0.5, 0.5), seed=3)
    for name in ("synth_0000.tif", "synth_0001.tif"):
        shutil.copy(tmp_path / "stacks" / name, project.folder("images") / name)
    for suffix in (".json", ".safetensors"):  # a model of the project's own (a copy of the starter)
        shutil.copy(f"resources/models/cellpol_starter{suffix}", project.folder("models") / f"cellpol_starter{suffix}")
    assert window.open_path(project.root)
    panel = window.show_predict_panel()
    combo = panel.model_combo
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels[1] == "cellpol_starter (project)" and labels[-1] == "Choose file…"
    combo.setCurrentIndex(1)
    combo.activated.emit(1)
    assert panel.model == project.folder("models") / "cellpol_starter.json"
    button = panel.findChild(QtWidgets.QPushButton, "cellpol.predict.project")
    assert button.isEnabled()
    button.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=120000)
    assert [r.status for r in panel.last_records] == ["ok", "ok"]
    for image in project.images():
        assert project.predictions_path(image).is_file()
    table = window.project_panel.table
    column = COLUMNS.index("Reviewed")
    for row, record in enumerate(panel.last_records):
        assert table.item(row, COLUMNS.index("Predicted")).text() == "yes"
        assert table.item(row, column).text() == (f"0 / {record.n_vectors}" if record.n_vectors else "")
    # the second run skips what exists unless asked
    button.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=120000)
    assert [r.status for r in panel.last_records] == ["skipped", "skipped"]


def test_out_of_gpu_memory_offers_the_cpu_and_runs_again_there(qtbot, tmp_path, monkeypatch, window):
    """A prediction that runs out of GPU memory says so once, offering the CPU; yes runs it again on the CPU."""
    from app.core.errors import CellPolError
    from app.core.jobs import Progress
    from app.core.pairs import PairSet
    from app.ui import predict_panel

    devices = []

    class Predictor:
        def __init__(self, device):
            self.device = device

        def job(self, volume, cancel=None):
            devices.append(self.device)
            yield Progress(0, 1, "predicting")
            if self.device != "cpu":
                raise CellPolError("out of memory: running the network does not fit in the GPU's memory. Use a "
                                   "smaller window, or run on the CPU.", settings={"device": "cpu"})
            return PairSet(np.array([[2.0, 10, 10]]), np.array([[2.0, 12, 14]]), scores=np.array([0.5]),
                           sources=np.array(["predicted"], dtype=object))

    monkeypatch.setattr(predict_panel, "build_predictor", lambda model, device, options=None: Predictor(device))
    synthesize_dataset(tmp_path / "stacks", 1, shape=(8, 64, 64), voxel_size=(1.0, 0.5, 0.5), seed=2)
    open_image(qtbot, window, tmp_path / "stacks" / "synth_0000.tif")
    window.device = "cuda:0"  # as if a GPU were chosen (none here)
    asked, shown = [], []
    monkeypatch.setattr(window.jobs_dock, "ask", lambda title, text: asked.append(text) or True)
    monkeypatch.setattr(window.jobs_dock, "show_message", lambda *a, **k: shown.append(a))
    before = len(window.model)
    window.show_predict_panel().predict_image()
    qtbot.waitUntil(lambda: len(window.model) == before + 1, timeout=20000)
    assert devices == ["cuda:0", "cpu"] and window.device == "cpu"
    assert len(asked) == 1 and "Run it again on the CPU?" in asked[0] and "out of memory" in asked[0]
    assert shown == []  # one message, not two


def test_a_trained_model_becomes_the_predict_panels_and_retraining_starts_from_it(qtbot, tmp_path, window):
    """What the window does when the Train panel finishes a model: the Predict panel lists it and uses it; the
    Train panel's "Retrain with my corrections" starts from the model chosen for prediction."""
    import shutil

    from app.core.project import Project

    project = Project.create(tmp_path / "study")
    run = project.folder("models") / "mine"
    run.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(f"resources/models/cellpol_starter{suffix}", run / f"cellpol_starter{suffix}")
    assert window.open_path(project.root)
    window.actions["train"].trigger()
    assert window.train_dock.isVisible() and window.train_panel.objectName() == "cellpol.train"
    window.use_trained_model(run / "cellpol_starter.json")
    panel = window.predict_panel
    assert panel.model == run / "cellpol_starter.json"
    assert panel.model_combo.currentText() == "cellpol_starter (project)"
    assert window.train_panel.default_model == run / "cellpol_starter.json"
    panel.set_model_file(None)  # back to the starters
    assert window.train_panel.default_model is None


def test_each_models_predictions_kept_apart_are_compared_in_the_evaluate_panel(qtbot, tmp_path, window):
    """Predict project with "Keep each model's predictions apart" writes results/<model>/; the Evaluate panel's
    project predictions then hold one set per model beside results/, ready to compare."""
    import shutil

    from app.core.project import Project

    project = Project.create(tmp_path / "study")
    synthesize_dataset(tmp_path / "stacks", 1, shape=(16, 96, 96), voxel_size=(1.0, 0.5, 0.5), seed=4)
    shutil.copy(tmp_path / "stacks" / "synth_0000.tif", project.folder("images") / "synth_0000.tif")
    for suffix in (".csv", ".json"):  # the simulator's truth as the annotations
        shutil.copy(tmp_path / "stacks" / f"synth_0000.vectors{suffix}",
                    project.folder("annotations") / f"synth_0000.vectors{suffix}")
    assert window.open_path(project.root)
    panel = window.show_predict_panel()
    panel.project_button.click()  # into results/
    qtbot.waitUntil(lambda: not panel.busy, timeout=120000)
    panel.apart_check.setChecked(True)
    panel.project_button.click()  # into results/starter/
    qtbot.waitUntil(lambda: not panel.busy, timeout=120000)
    assert (project.folder("results") / "starter" / "synth_0000.pred.vectors.csv").is_file()
    evaluate = window.show_evaluate_panel()
    evaluate.add_project_predictions()
    labels = [label for label, _folder in evaluate.prediction_sets()]
    assert labels == ["project results", "starter"]
    evaluate.evaluate()
    qtbot.waitUntil(lambda: not evaluate.busy, timeout=60000)
    assert set(evaluate.results) == {"project results", "starter"}
    assert all(len(curves) == 2 for curves in evaluate.curves.values())
