"""The Train panel, driven through its real widgets and a real worker thread (app.ui.workers.start_job): a tiny
network trains a few steps on two simulated stacks of a project; the loss curve grows, pause and resume, cancel
and resume from the checkpoint in a new panel, the finished model in the Predict panel's chooser, the one message
of a training that cannot start, and "Retrain with my corrections" re-predicting the unreviewed images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtWidgets  # noqa: E402

from app.core.modelfile import load_spec  # noqa: E402
from app.core.pairs import read_pairs, write_pairs  # noqa: E402
from app.core.project import Project  # noqa: E402
from app.core.simulate import synthesize_dataset  # noqa: E402
from app.ui.predict_panel import project_models  # noqa: E402
from app.ui.train_panel import TrainPanel, checkpoint_step  # noqa: E402
from app.ui.workers import start_job  # noqa: E402

#: The smallest network and run that train in about a second per step on two CPU cores.
TINY = {"levels": 2, "base_filters": 4, "batch_size": 1, "patch_shape": [8, 32, 32], "validation_patches": 1,
        "model_voxel_size": [1.0, 0.5, 0.5], "calibrate": "never", "device": "cpu"}
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stacks")
    synthesize_dataset(folder, 3, shape=(8, 64, 64), voxel_size=(1.0, 0.5, 0.5), seed=3)
    return folder


def _project(root, stacks, annotated=2, total=2):
    project = Project.create(root)
    for k, image in enumerate(sorted(stacks.glob("synth_*.tif"))[:total]):
        target = project.folder("images") / image.name
        shutil.copy(image, target)
        if k < annotated:
            for suffix in (".csv", ".json"):  # the simulator's vectors stand for the user's annotations
                shutil.copy(image.with_name(image.name.replace(".tif", f".vectors{suffix}")),
                            project.vectors_path(target).with_suffix(suffix))
    return project


def _panel(qtbot, project, **callbacks):
    panel = TrainPanel(start_job, lambda: project, lambda: "cpu", **callbacks)
    qtbot.addWidget(panel)
    panel.extra_options = dict(TINY)
    panel.set_start_from("none")
    return panel


def _points(curve):
    x, _ = curve.getData()
    return 0 if x is None else len(x)


def _wait_end(qtbot, panel):
    qtbot.waitUntil(lambda: panel.handle is None, timeout=WAIT_MS)


def test_five_steps_draw_the_loss_curve_pause_resume_and_finish_into_the_project(qtbot, tmp_path, stacks):
    project = _project(tmp_path / "p", stacks)
    trained = []
    panel = _panel(qtbot, project, on_model_trained=trained.append)
    assert panel.images.rowCount() == 2 and panel.images.item(0, 3).text() == str(
        len(read_pairs(project.vectors_path(project.images()[0]))))
    panel.steps.setValue(5)
    panel.name.setText("tiny")
    panel.set_validation("one", project.images()[1])
    lengths = []
    handle = panel.start()
    handle.event.connect(lambda e: lengths.append(_points(panel.loss_curves["total"])))
    qtbot.waitUntil(lambda: len(panel._steps) > 0, timeout=WAIT_MS)
    panel.pause_button.click()
    qtbot.waitUntil(lambda: panel.status.text().startswith("Paused at step"), timeout=WAIT_MS)
    assert panel.resume_button.isEnabled() and not panel.pause_button.isEnabled()
    paused_at = len(panel._steps)
    qtbot.wait(600)
    assert len(panel._steps) == paused_at  # paused means no steps
    panel.resume_button.click()
    _wait_end(qtbot, panel)
    assert handle.status == "done", panel.status.text()
    x, y = panel.loss_curves["total"].getData()
    assert list(x) == [1, 2, 3, 4, 5] and len(y) == 5
    assert max(lengths) == 5 and 1 in lengths  # it grew step by step
    model = project.folder("models") / "tiny" / "tiny.json"
    assert model.is_file() and (model.parent / "tiny.validation.csv").is_file()
    assert trained == [model] and panel.default_model == model
    assert model in project_models(project.folder("models"))
    assert panel.table.rowCount() == 14 and "tiny" in panel.card.toPlainText()
    assert _points(panel.rate_curves["tpr0"]) >= 1  # the validation of the one epoch
    # and it predicts, as the Predict panel will run it
    from app.core.imageio import read_volume
    from app.ui.predict_panel import build_predictor

    image = next(project.folder("images").glob("*.tif"))
    prediction = build_predictor(model, "cpu").predict(read_volume(image))
    assert prediction.pairs.voxel_size is not None and np.all(np.isfinite(prediction.pairs.nuclei))


def test_cancel_then_resume_from_the_checkpoint_in_a_new_panel(qtbot, tmp_path, stacks):
    project = _project(tmp_path / "p", stacks)
    panel = _panel(qtbot, project)
    panel.extra_options.update(epoch_steps=2)
    panel.steps.setValue(6)
    panel.name.setText("stopped")
    panel.set_validation("none")
    handle = panel.start()
    qtbot.waitUntil(lambda: len(panel._steps) >= 3, timeout=WAIT_MS)
    panel.close()  # closing the panel cancels; the checkpoint stays
    _wait_end(qtbot, panel)
    assert handle.status == "cancelled"
    checkpoints = project.folder("models") / "stopped" / "stopped.checkpoints"
    step, total = checkpoint_step(checkpoints)
    assert 2 <= step < 6 and total == 6  # where it stopped, or the last epoch when cancelled in a validation

    again = _panel(qtbot, project)
    assert again.resume_run_button.isVisibleTo(again)
    assert again.resume_run_button.text() == f"Resume stopped (step {step} of 6)"
    again.resume_run_button.click()
    assert again._steps == list(range(1, step + 1))  # the curve so far, from the run's log
    _wait_end(qtbot, again)
    assert again.handle is None and (project.folder("models") / "stopped" / "stopped.json").is_file()
    assert again._steps == list(range(1, 7))
    assert not again.resume_run_button.isVisibleTo(again)  # finished: nothing left to resume
    spec = load_spec(project.folder("models") / "stopped" / "stopped.json")
    assert spec.provenance["validation_split"] == "training-image"  # validation "none": the training images


def test_the_estimate_times_steps_on_this_device(qtbot, tmp_path, stacks):
    panel = _panel(qtbot, _project(tmp_path / "p", stacks))
    assert "Press Estimate time" in panel.estimate_label.text()
    panel.steps.setValue(100)
    handle = panel.estimate()
    qtbot.waitUntil(lambda: panel.estimate_handle is None, timeout=WAIT_MS)
    assert handle.status == "done" and 0 < panel.seconds_per_step < 30
    text = panel.estimate_label.text()
    assert text.startswith("About ") and "on this CPU: 100 steps × " in text
    panel.steps.setValue(1000)  # the estimate follows the steps without timing again
    assert "1000 steps" in panel.estimate_label.text()


def test_a_training_that_cannot_start_says_so_once(qtbot, tmp_path, stacks, monkeypatch):
    for name in ("critical", "warning", "information"):
        monkeypatch.setattr(QtWidgets.QMessageBox, name, lambda *a, **k: pytest.fail("a dialog was shown"))
    project = _project(tmp_path / "p", stacks, annotated=0)
    panel = _panel(qtbot, project)
    assert panel.images.rowCount() == 0
    assert panel.start() is None
    assert "no annotated images" in panel.status.text()
    # a folder whose image has no vectors: the job's own message, in the status line
    folder = tmp_path / "loose"
    folder.mkdir()
    shutil.copy(project.images()[0], folder / "lonely.tif")
    panel.add_folder(folder)
    handle = panel.start()
    _wait_end(qtbot, panel)
    assert handle.status == "failed"
    assert panel.status.text().startswith("Training failed: 1 training image(s) have no vectors file")
    assert "lonely.tif" in panel.status.text()
    # no project at all
    alone = TrainPanel(start_job, lambda: None, lambda: "cpu")
    qtbot.addWidget(alone)
    assert alone.start() is None and "Open a project first" in alone.status.text()


def test_retrain_with_my_corrections_predicts_the_unreviewed_images_again(qtbot, tmp_path, stacks):
    project = _project(tmp_path / "p", stacks, annotated=2, total=3)
    unreviewed = project.images()[2]
    truth = read_pairs(stacks / "synth_0002.vectors.csv")
    write_pairs(project.predictions_path(unreviewed), truth)  # predictions waiting for review
    calls = []
    panel = _panel(qtbot, project, predict_images=lambda model, images: calls.append((model, images)))
    panel.steps.setValue(2)
    handle = panel.retrain_with_corrections()
    _wait_end(qtbot, panel)
    assert handle.status == "done", panel.status.text()
    assert len(calls) == 1
    model, images = calls[0]
    assert model.is_file() and model.parent.parent == project.folder("models")
    assert images == [unreviewed]
