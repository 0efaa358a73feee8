"""The Evaluate panel, driven through its real widgets and the real job runner (app.ui.workers.start_job): two
prediction sets scored against one ground truth give two curves in each of the six plots, the per-level table,
exports, the mistakes list that opens the cell, a set that cannot be scored, and cancelling.

The data are made by hand, so every number is known: the set "perfect" is the ground truth itself; the set
"partial" finds, in image a, two cells exactly, one 5 µm off (a TP until τ_g < 5 µm, i.e. τL 0..2), and puts one
vector where there is no cell; in image b it finds two of the four cells exactly.
"""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
import tifffile  # noqa: E402
from PySide6 import QtCore  # noqa: E402

from app.core.pairs import PairSet, write_pairs  # noqa: E402
from app.core.project import Project  # noqa: E402
from app.ui.evaluate_panel import PROJECT_RESULTS_LABEL, EvaluatePanel  # noqa: E402
from app.ui.workers import start_job  # noqa: E402

Qt = QtCore.Qt
SHAPE = (8, 100, 100)  # (Z, Y, X); the 7 µm border keeps 7 < y, x < 93
GOLGI_OFFSET = np.array([0, 3, 0])
GT = {
    "a": [[4, 20, 20], [4, 50, 50], [4, 80, 30], [4, 30, 80]],
    "b": [[4, 25, 25], [4, 50, 70], [4, 75, 40], [4, 40, 45]],
}
PARTIAL = {  # nuclei and scores; "a" row 1 is the false positive, row 3 the cell 5 µm off
    "a": ([[4, 20, 20], [4, 65, 15], [4, 50, 50], [4, 80, 35]], [0.9, 0.8, 0.9, 0.6]),
    "b": ([[4, 25, 25], [4, 50, 70]], [0.9, 0.9]),
}
TITLES = ("TPR", "FDR", "Cosine similarity (signed, µm)", "Vector error (µm)", "Nucleus distance ND (µm)",
          "Golgi distance GD (µm)")


def write_set(folder, stem, nuclei, scores=None):
    folder.mkdir(parents=True, exist_ok=True)
    nuclei = np.asarray(nuclei, float)
    predicted = scores is not None
    pairs = PairSet(nuclei, nuclei + GOLGI_OFFSET, voxel_size=(1.0, 1.0, 1.0), scores=scores,
                    sources="predicted" if predicted else "manual", meta={"image_shape_zyx": list(SHAPE)})
    write_pairs(folder / (f"{stem}.pred.vectors.csv" if predicted else f"{stem}.vectors.csv"), pairs)


@pytest.fixture
def data(tmp_path):
    folders = {name: tmp_path / name for name in ("gt", "perfect", "partial", "images", "nothing")}
    for stem, nuclei in GT.items():
        write_set(folders["gt"], stem, nuclei)
        write_set(folders["perfect"], stem, nuclei, scores=[0.99] * len(nuclei))
        write_set(folders["partial"], stem, *PARTIAL[stem])
        folders["images"].mkdir(exist_ok=True)
        tifffile.imwrite(folders["images"] / f"{stem}.tif", np.zeros(SHAPE, np.uint8))
    folders["nothing"].mkdir()
    return folders


class Recorder:
    def __init__(self):
        self.opened = []
        self.handles = []
        self.gate = None  # a threading.Event the job waits on after its first event, when set

    def start_job(self, title, factory, can_pause=False):
        gate = self.gate

        def gated(cancel, pause):
            job = factory(cancel, pause)
            yield next(job)
            if gate is not None:
                gate.wait(10)
            return (yield from job)

        handle = start_job(title, gated, can_pause=can_pause)
        self.handles.append(handle)
        return handle

    def open_at(self, image, position):
        self.opened.append((image, position))


def make_panel(qtbot, recorder, data, *sets):
    """The panel on the test's ground truth and images, with the prediction sets ``sets`` (names in ``data``)."""
    panel = EvaluatePanel(recorder.start_job, recorder.open_at)
    qtbot.addWidget(panel)
    panel.set_ground_truth(data["gt"])
    panel.set_images_folder(data["images"])
    for name in sets:
        panel.add_prediction_set(data[name])
    return panel


def evaluated(qtbot, data, *sets):
    """``(recorder, panel)`` once the sets have been evaluated."""
    recorder = Recorder()
    panel = make_panel(qtbot, recorder, data, *sets)
    panel.show()
    run(qtbot, panel)
    return recorder, panel


def run(qtbot, panel, click=True):
    if click:
        qtbot.mouseClick(panel.findChild(type(panel.run_button), "cellpol.evaluate.run"), Qt.MouseButton.LeftButton)
    else:
        panel.evaluate()
    qtbot.waitUntil(lambda: panel.handle is None, timeout=20000)


def cell(table, row, header):
    columns = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    return table.item(row, columns.index(header)).text()


def test_two_prediction_sets_give_two_curves_per_plot_and_the_known_rates(qtbot, data):
    recorder = Recorder()
    panel = make_panel(qtbot, recorder, data)
    assert panel.objectName() == "cellpol.evaluate"
    assert panel.add_prediction_set(data["perfect"]) == "perfect"
    assert panel.add_prediction_set(data["partial"]) == "partial"
    run(qtbot, panel)

    assert list(panel.results) == ["perfect", "partial"]
    assert tuple(panel.plots) == TITLES and all(len(panel.curves[t]) == 2 for t in TITLES)
    assert all(len(panel.plots[t].listDataItems()) == 2 for t in TITLES)
    perfect, partial = panel.results["perfect"], panel.results["partial"]
    np.testing.assert_allclose(perfect.tpr, 1.0)
    np.testing.assert_allclose(perfect.fdr, 0.0)
    np.testing.assert_allclose(partial.tpr[:3], (0.75 + 0.5) / 2)  # a: 3 of 4, b: 2 of 4
    np.testing.assert_allclose(partial.tpr[3:], 0.5)  # the cell 5 µm off no longer counts
    np.testing.assert_allclose(partial.fdr[0], (0.25 + 0.0) / 2)
    assert "perfect" in panel.legend.text and "partial" in panel.legend.text
    x, y = panel.curves["TPR"][1].getData()  # what is drawn is what was scored
    np.testing.assert_array_equal(x, np.arange(14))
    np.testing.assert_allclose(y, partial.tpr)

    table = panel.findChild(type(panel.table), "cellpol.evaluate.table")
    assert table.rowCount() == 14 and cell(table, 0, "TPR") == "1.000"
    panel.table_set.setCurrentText("partial")
    assert table.rowCount() == 14
    assert cell(table, 0, "TPR") == "0.625" and cell(table, 0, "FP") == "1" and cell(table, 13, "TPR") == "0.500"
    assert "perfect: 2 image(s), TPR 1.000" in panel.status.text()
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_exports_write_png_svg_and_a_csv_of_both_sets(qtbot, data, tmp_path):
    recorder = Recorder()
    panel = make_panel(qtbot, recorder, data, "perfect")
    panel.add_prediction_set(data["partial"], "my model")
    panel.resize(1200, 800)
    panel.show()
    run(qtbot, panel, click=False)

    png = panel.export_png(tmp_path / "out" / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    svg = panel.export_svg(tmp_path / "out" / "curves.svg").read_text()
    assert "<svg" in svg and "Golgi distance GD" in svg
    with open(panel.export_csv(tmp_path / "out" / "levels.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 28 and list(rows[0])[0] == "set"
    assert [r["set"] for r in rows] == ["perfect"] * 14 + ["my model"] * 14
    assert [int(r["level"]) for r in rows] == list(range(14)) * 2
    assert float(rows[14]["tpr"]) == pytest.approx(0.625) and float(rows[0]["tpr"]) == pytest.approx(1.0)


def test_mistakes_list_opens_the_cell_on_double_click_and_enter(qtbot, data):
    recorder, panel = evaluated(qtbot, data, "perfect", "partial")
    mistakes = panel.findChild(type(panel.mistakes_table), "cellpol.evaluate.mistakes")
    # τL 0: the perfect set has none; partial: its false positive, then a's row 3 and b's rows 2, 3 missed.
    assert mistakes.rowCount() == 4
    assert [(cell(mistakes, r, "Set"), cell(mistakes, r, "Image"), cell(mistakes, r, "Kind")) for r in range(4)] == [
        ("partial", "a", "false positive"), ("partial", "a", "miss"), ("partial", "b", "miss"),
        ("partial", "b", "miss")]
    assert cell(mistakes, 0, "Score") == "0.800" and cell(mistakes, 1, "Score") == ""

    rect = mistakes.visualRect(mistakes.model().index(0, 1))
    qtbot.mouseClick(mistakes.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(mistakes.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert recorder.opened == [(data["images"] / "a.tif", (4.0, 65.0, 15.0))]

    mistakes.setCurrentCell(3, 0)
    qtbot.keyClick(mistakes, Qt.Key.Key_Return)
    assert recorder.opened[-1] == (data["images"] / "b.tif", (4.0, 40.0, 45.0))

    panel.set_images_folder(None)  # without the images: the stem
    panel.open_mistake(2)
    assert recorder.opened[-1] == ("b", (4.0, 75.0, 40.0))

    panel.set_level(3)  # the cell 5 µm off is now a false positive and a miss
    assert mistakes.rowCount() == 6
    assert panel.mistakes_count.text() == "2 false positive(s), 4 miss(es) at τL 3"
    assert cell(mistakes, 1, "Score") == "0.600" and cell(mistakes, 1, "Nucleus x, y, z") == "35.0, 80.0, 4.0"


def test_a_set_without_predictions_is_reported_and_the_other_still_plots(qtbot, data):
    _, panel = evaluated(qtbot, data, "nothing", "partial")
    assert list(panel.results) == ["partial"]
    assert all(len(panel.curves[t]) == 1 for t in TITLES)
    assert panel.outcomes["nothing"].result is None
    text = panel.status.text()
    assert "Scored 1 of 2 set(s)" in text and "nothing: not scored: No predicted vectors" in text
    assert "Traceback" not in text
    assert panel.table_set.count() == 1 and panel.table.rowCount() == 14


def test_missing_inputs_and_a_missing_ground_truth_are_messages(qtbot, data, tmp_path):
    recorder = Recorder()
    panel = EvaluatePanel(recorder.start_job, recorder.open_at)
    qtbot.addWidget(panel)
    assert panel.evaluate() is None and "ground-truth" in panel.status.text()
    panel.set_ground_truth(tmp_path / "no such folder")
    assert panel.evaluate() is None and "prediction set" in panel.status.text()
    panel.add_prediction_set(data["partial"])
    run(qtbot, panel)
    assert panel.results == {} and "does not exist" in panel.status.text()
    assert not panel.add_project_button.isEnabled()
    assert panel.add_project_predictions() is None and "Open a project" in panel.status.text()


def test_cancelling_stops_the_job_and_keeps_the_previous_results(qtbot, data):
    recorder, panel = evaluated(qtbot, data, "perfect", "partial")
    before = dict(panel.results)

    recorder.gate = threading.Event()
    panel.add_prediction_set(data["perfect"], "again")
    handle = panel.evaluate()
    qtbot.waitUntil(lambda: handle.last_progress is not None, timeout=10000)  # the job is under way, held
    assert panel.cancel_button.isEnabled() and not panel.run_button.isEnabled()
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    recorder.gate.set()
    qtbot.waitUntil(lambda: panel.handle is None, timeout=10000)

    assert handle.status == "cancelled"
    assert panel.results == before and all(len(panel.curves[t]) == 2 for t in TITLES)
    assert panel.status.text().startswith("Cancelled")
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_project_defaults_and_project_predictions(qtbot, data, tmp_path):
    project = Project.create(tmp_path / "project")
    for stem, nuclei in GT.items():
        write_set(project.folder("annotations"), stem, nuclei)
        write_set(project.folder("results"), stem, *PARTIAL[stem])
    recorder = Recorder()
    panel = EvaluatePanel(recorder.start_job, recorder.open_at, get_project=lambda: project)
    qtbot.addWidget(panel)
    assert panel.gt_edit.text() == str(project.folder("annotations"))
    assert panel.images_folder == project.folder("images")
    assert panel.add_project_predictions() == PROJECT_RESULTS_LABEL
    assert panel.add_prediction_set(data["partial"]) == "partial"
    assert panel.add_prediction_set(data["partial"]) == "partial (2)"
    run(qtbot, panel)
    assert list(panel.results) == [PROJECT_RESULTS_LABEL, "partial", "partial (2)"]
    np.testing.assert_allclose(panel.results[PROJECT_RESULTS_LABEL].tpr[0], 0.625)
    assert all(len(panel.curves[t]) == 3 for t in TITLES)


def test_evaluate_from_the_window_opens_the_cell_of_a_mistake(qtbot, tmp_path, window):
    """Analysis ▸ Evaluate… in the window: the project's annotations against its results; a false positive in
    the list opens its image at that cell (the window's open_at)."""
    project = Project.create(tmp_path / "study")
    for stem, nuclei in GT.items():
        tifffile.imwrite(project.folder("images") / f"{stem}.tif", np.zeros(SHAPE, np.uint16), imagej=True,
                         resolution=(1.0, 1.0), metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
        write_set(project.folder("annotations"), stem, nuclei)
        write_set(project.folder("results"), stem, *PARTIAL[stem])
    assert window.open_path(project.root)
    window.actions["evaluate"].trigger()
    panel = window.evaluate_panel
    assert window.actions["evaluate"].objectName() == "cellpol.analysis.evaluate"
    assert window.evaluate_dock.isVisible() and panel.objectName() == "cellpol.evaluate"
    assert panel.gt_edit.text() == str(project.folder("annotations"))
    panel.add_project_predictions()
    panel.evaluate()
    qtbot.waitUntil(lambda: not panel.busy, timeout=20000)
    result = panel.results[PROJECT_RESULTS_LABEL]
    assert result.tp[0] == 5 and result.fp[0] == 1
    _label, false_positive = panel.mistakes_at(0)[0]
    assert false_positive.kind == "false positive" and false_positive.image == "a"
    panel.open_mistake(0)
    assert window.document.image_path == project.folder("images") / "a.tif"
    assert window.state.cursor == pytest.approx((4, 65, 15))
