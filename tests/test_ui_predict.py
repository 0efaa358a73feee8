"""The prediction panel, driven through its real widgets: predict the open image with the starter models, filter
by score, predict a folder with a damaged file in it, cancel inside an image, read the model card.

Jobs start through ``app.ui.workers.start_job`` (a worker thread) where it exists, else through a synchronous
stand-in with the same signals, so the panel is tested against the job protocol either way.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")
from PySide6 import QtCore  # noqa: E402

import app.ui.workers as workers  # noqa: E402
from app.core.errors import CancelledError  # noqa: E402
from app.core.imageio import read_volume  # noqa: E402
from app.core.jobs import CancelToken, PauseToken, Progress, run  # noqa: E402
from app.core.simulate import synthesize_dataset  # noqa: E402
from app.ui import predict_panel as predict_module  # noqa: E402
from app.ui.predict_panel import PredictPanel  # noqa: E402

Qt = QtCore.Qt
COLUMN = {"image": 0, "vectors": 1, "length": 2, "seconds": 3, "status": 4, "error": 5}


class _StandInHandle(QtCore.QObject):
    """What ``workers.start_job`` returns, run synchronously on the main thread (one event-loop turn later, so
    the caller connects its slots first)."""

    event = QtCore.Signal(object)
    succeeded = QtCore.Signal(object)
    failed = QtCore.Signal(object)
    cancelled = QtCore.Signal()
    ended = QtCore.Signal()

    def __init__(self, factory, parent=None):
        super().__init__(parent)
        self._factory = factory
        self._cancel = CancelToken()
        self._pause = PauseToken()

    def cancel(self):
        self._cancel.cancel()

    def pause(self):
        self._pause.pause()

    def resume(self):
        self._pause.resume()

    def _run(self):
        try:
            value = run(self._factory(self._cancel, self._pause), self.event.emit)
        except CancelledError:
            self.cancelled.emit()
        except Exception as exc:  # noqa: BLE001 - relayed, as the real worker does
            self.failed.emit(exc)
        else:
            self.succeeded.emit(value)
        self.ended.emit()


def _stand_in_start_job(title, factory, *, can_pause=False, parent=None):
    handle = _StandInHandle(factory, parent)
    QtCore.QTimer.singleShot(0, handle._run)
    return handle


start_job = getattr(workers, "start_job", _stand_in_start_job)


class Recorder:
    def __init__(self):
        self.pairs = []
        self.opened = []
        self.handles = []

    def start_job(self, title, factory, can_pause=False):
        handle = start_job(title, factory, can_pause=can_pause)
        self.handles.append(handle)
        return handle


@pytest.fixture
def stacks(tmp_path):
    return synthesize_dataset(tmp_path / "images", 3, shape=(16, 96, 96), seed=1)


def make_panel(qtbot, recorder, volume=None, **options):
    panel = PredictPanel(recorder.start_job, lambda: volume, lambda: "cpu", recorder.pairs.append,
                         open_image=lambda image, output: recorder.opened.append((image, output)),
                         predictor_options=options)
    qtbot.addWidget(panel)
    return panel


def finish(qtbot, panel, timeout=20000):
    """Wait until the panel's current job has ended (the panel lets go of its handle then)."""
    qtbot.waitUntil(lambda: panel.handle is None, timeout=timeout)


def test_predict_open_image_gives_scored_predicted_vectors_and_threshold_filters(qtbot, stacks):
    recorder = Recorder()
    panel = make_panel(qtbot, recorder, read_volume(stacks[0]))
    assert panel.objectName() == "cellpol.predict"
    qtbot.mouseClick(panel.findChild(type(panel.image_button), "cellpol.predict.image"), Qt.MouseButton.LeftButton)
    assert not panel.image_button.isEnabled() and panel.cancel_button.isEnabled()
    finish(qtbot, panel)

    assert len(recorder.pairs) == 1
    pairs = recorder.pairs[0]
    assert len(pairs) >= 2
    assert np.all((pairs.scores >= 0) & (pairs.scores <= 1))
    assert set(pairs.sources) == {"predicted"}
    assert pairs.meta["score_threshold"] == 0.0
    assert panel.image_button.isEnabled() and not panel.cancel_button.isEnabled()

    # A threshold between the lowest and the highest score hides some vectors, live.
    slider = panel.findChild(type(panel.threshold_slider), "cellpol.predict.threshold")
    middle = float(np.round((pairs.scores.min() + pairs.scores.max()) / 2, 2))
    with qtbot.waitSignal(panel.threshold_changed) as signal:
        slider.setValue(int(round(middle * 100)))
    assert signal.args == [pytest.approx(middle)]
    shown = panel.visible(pairs)
    expected = int(np.sum(pairs.scores >= middle))
    assert 0 < len(shown) == expected < len(pairs)
    assert np.all(shown.scores >= middle)
    assert shown.meta["score_threshold"] == pytest.approx(middle)
    assert pairs.meta["score_threshold"] == pytest.approx(middle)  # recorded on the pairs handed out, to be saved
    assert panel.shown_label.text() == f"{expected} of {len(pairs)} vectors shown"
    slider.setValue(100)
    assert len(panel.visible(pairs)) == int(np.sum(pairs.scores >= 1.0))


def test_predict_folder_reports_each_image_and_the_damaged_one(qtbot, stacks, tmp_path):
    stacks[1].write_bytes(b"this is not a TIFF file at all" * 10)
    recorder = Recorder()
    panel = make_panel(qtbot, recorder)
    out_dir = tmp_path / "predictions"
    panel.predict_folder(stacks[0].parent, out_dir)
    finish(qtbot, panel)

    table = panel.table
    assert table.rowCount() == 3
    rows = {table.item(r, COLUMN["image"]).text(): r for r in range(3)}
    assert set(rows) == {"synth_0000.tif", "synth_0001.tif", "synth_0002.tif"}
    status = {name: table.item(r, COLUMN["status"]).text() for name, r in rows.items()}
    assert status == {"synth_0000.tif": "ok", "synth_0001.tif": "failed", "synth_0002.tif": "ok"}
    error = table.item(rows["synth_0001.tif"], COLUMN["error"]).text()
    assert "synth_0001" in error and len(error) > 20
    for name in ("synth_0000.tif", "synth_0002.tif"):
        assert int(table.item(rows[name], COLUMN["vectors"]).text()) >= 1
        assert float(table.item(rows[name], COLUMN["length"]).text()) > 0
        assert table.item(rows[name], COLUMN["error"]).text() == ""
    assert (out_dir / "synth_0000.pred.vectors.csv").is_file()
    assert not (out_dir / "synth_0001.pred.vectors.csv").exists()
    assert "2 predicted, 0 skipped, 1 failed" in panel.status.text()

    # Double-clicking a row opens that image with its predictions.
    panel.resize(700, 500)
    panel.show()
    qtbot.waitExposed(panel)
    item = table.item(rows["synth_0002.tif"], 0)
    centre = table.visualItemRect(item).center()
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert recorder.opened == [(stacks[2], out_dir / "synth_0002.pred.vectors.csv")]


def test_mirror_averaging_box_reaches_the_predictor(qtbot, stacks, tmp_path):
    from app.core.inference.predictor import TTA_DESCRIPTION
    from app.core.pairs import read_pairs

    recorder = Recorder()
    panel = make_panel(qtbot, recorder, window=(16, 96, 96))
    box = panel.findChild(type(panel.tta_check), "cellpol.predict.tta")
    assert not box.isChecked() and panel.job_options() == {"window": (16, 96, 96)}
    panel.show()
    qtbot.waitExposed(panel)
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    assert box.isChecked() and panel.job_options() == {"window": (16, 96, 96), "tta": True}
    assert panel.predictor_options == {"window": (16, 96, 96)}  # the panel's own options are not altered
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(stacks[0], one / stacks[0].name)
    panel.predict_folder(one, tmp_path / "mirrored")
    finish(qtbot, panel)
    assert read_pairs(tmp_path / "mirrored" / "synth_0000.pred.vectors.csv").meta["test_time_augmentation"] \
        == TTA_DESCRIPTION
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    panel.predict_folder(one, tmp_path / "plain")
    finish(qtbot, panel)
    assert read_pairs(tmp_path / "plain" / "synth_0000.pred.vectors.csv").meta["test_time_augmentation"] is None


def test_cancel_inside_an_image_ends_cancelled_without_pairs(qtbot, tmp_path, monkeypatch):
    volume = read_volume(synthesize_dataset(tmp_path / "big", 1, shape=(16, 160, 160), seed=2)[0])
    real_build = predict_module.build_predictor
    progress_seen = []

    class Gated:
        """The real predictor, held after its first Progress until the cancel arrives (a worker thread would
        otherwise finish this tiny image before the main thread hears the first event)."""

        def __init__(self, inner):
            self.inner = inner

        def job(self, volume, cancel):
            steps = self.inner.job(volume, cancel)
            yield next(steps)
            deadline = time.monotonic() + 10
            while not cancel.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
            yield from steps

    monkeypatch.setattr(predict_module, "build_predictor",
                        lambda *args, **kwargs: Gated(real_build(*args, **kwargs)))
    recorder = Recorder()
    panel = make_panel(qtbot, recorder, volume, window=(16, 64, 64), batch_size=1)

    def on_event(event):
        if isinstance(event, Progress):
            progress_seen.append((event.done, event.total))
            if len(progress_seen) == 1:
                qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)

    handle = panel.predict_image()
    handle.event.connect(on_event)
    with qtbot.waitSignal(handle.cancelled, timeout=20000):
        pass
    qtbot.waitUntil(lambda: panel.handle is None)
    assert progress_seen and progress_seen[0][1] > 1  # several batches of windows were planned
    assert all(done < total for done, total in progress_seen)  # it stopped inside the image
    assert recorder.pairs == []
    assert panel.status.text() == "Cancelled."
    assert panel.image_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_model_card_and_chosen_model_file(qtbot, stacks, tmp_path):
    from app.core.inference import starter_models

    recorder = Recorder()
    panel = make_panel(qtbot, recorder, read_volume(stacks[0]))
    assert "Trained at voxel size: 1 × 0.5 × 0.5 µm" in panel.card.text()
    assert "Trained by: python -m app.training.starter" in panel.card.text()
    assert "Weights: averaged, 0.7 × stage10.json, 0.3 × stage8.json" in panel.card.text()  # the 3D starter's
    assert "2D images" in panel.card.text() and "3D images" in panel.card.text()

    starter = starter_models()[3]
    chosen = tmp_path / "mine" / "mine.json"
    chosen.parent.mkdir()
    shutil.copy(starter, chosen)
    shutil.copy(starter.with_suffix(".safetensors"), chosen.parent / f"{starter.stem}.safetensors")
    panel.set_model_file(chosen)
    assert panel.model == chosen and panel.model_combo.currentText() == "mine.json"
    assert "Calibration:" in panel.card.text() and "2D images" not in panel.card.text()
    panel.predict_image()
    finish(qtbot, panel)
    assert len(recorder.pairs) == 1 and len(recorder.pairs[0]) >= 1

    damaged = tmp_path / "bad.json"
    damaged.write_text("{ not json")
    panel.set_model_file(damaged)
    assert panel.card.text().startswith("Cannot use this model")
    panel.predict_image()
    finish(qtbot, panel)
    assert panel.status.text().startswith("Failed:") and "bad.json" in panel.status.text()
    assert len(recorder.pairs) == 1
