"""Reviewing predictions in the window (Analysis ▸ Review predictions…): least confident first, Y accepts, X
rejects, dragging an end corrects, Ctrl+Z undoes any of them; the project panel counts what is reviewed; U jumps
across the project to the prediction the model is least sure of; accepted and corrected vectors are saved as
annotations and training uses them (and not the unreviewed ones)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore, QtWidgets  # noqa: E402

from app.core.imageio import write_imagej_tiff  # noqa: E402
from app.core.pairs import PairSet, read_pairs, write_pairs  # noqa: E402
from app.core.project import Project  # noqa: E402
from test_ui_annotation import GOLGI_A, GOLGI_B, NUCLEUS_A, NUCLEUS_B, VOXEL, cell_volume, drag, key  # noqa: E402

Qt = QtCore.Qt
# image a: three predictions (the 0.4 one is the least confident); image b: two, one at 0.2
A_PREDICTIONS = [(NUCLEUS_A, GOLGI_A, 0.9), (NUCLEUS_B, GOLGI_B, 0.4), ((5, 70, 20), (5, 75, 26), 0.7)]
B_PREDICTIONS = [(NUCLEUS_A, GOLGI_A, 0.8), (NUCLEUS_B, GOLGI_B, 0.2)]


def predictions(rows) -> PairSet:
    return PairSet(np.array([r[0] for r in rows], float), np.array([r[1] for r in rows], float), voxel_size=VOXEL,
                   scores=np.array([r[2] for r in rows]), sources=np.array(["predicted"] * len(rows), dtype=object),
                   meta={"method": "test", "image_shape_zyx": [12, 90, 100]})


@pytest.fixture
def project(tmp_path):
    project = Project.create(tmp_path / "study", name="Study")
    for name, rows in (("a.tif", A_PREDICTIONS), ("b.tif", B_PREDICTIONS)):
        image = write_imagej_tiff(project.folder("images") / name, cell_volume())
        write_pairs(project.predictions_path(image), predictions(rows))
    return project


def button(panel, action) -> QtWidgets.QToolButton:
    found = [b for b in panel.findChildren(QtWidgets.QToolButton) if b.defaultAction() is action]
    assert found, action.objectName()
    return found[0]


def selected(window):
    ids = window.model.selection
    assert len(ids) == 1
    return window.model.get(ids[0])


def reviewed_cell(window, row) -> str:
    panel = window.project_panel
    from app.ui.project_panel import COLUMNS

    return panel.table.item(row, COLUMNS.index("Reviewed")).text()


def open_a(qtbot, window, project):
    assert window.open_path(project.root)
    assert window.open_project_image(project.images()[0])
    qtbot.wait(30)
    QtWidgets.QApplication.processEvents()
    assert reviewed_cell(window, 0) == "0 / 3" and reviewed_cell(window, 1) == "0 / 2"
    window.actions["review"].trigger()
    panel = window.review_panel
    assert window.review_dock.isVisible() and panel.objectName() == "cellpol.review"
    return panel


def test_review_accept_reject_correct_and_undo(qtbot, window, project):
    panel = open_a(qtbot, window, project)
    window.state.set_snap(on=False)
    model = window.model
    button(panel, window.actions["review_start"]).click()
    # the predictions are up for review, least confident first, and the least confident is selected
    assert len(model) == 3 and {p.source for p in model} == {"predicted"}
    assert [round(model.get(i).score, 2) for i in panel.queue()] == [0.4, 0.7, 0.9]
    rows = panel.queue_model.rowCount
    qtbot.waitUntil(lambda: rows() == 3)  # the list follows after the event loop turns
    assert panel.queue_model.index(0, 0).data() == "0.400"
    assert panel.table.selectionModel().selectedRows()[0].row() == 0
    for row, score in ((2, 0.9), (0, 0.4)):  # a click in the list goes to that prediction
        rect = panel.table.visualRect(panel.queue_model.index(row, 1))
        qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        assert selected(window).score == pytest.approx(score)
    assert selected(window).score == pytest.approx(0.4)
    assert window.state.cursor == pytest.approx(NUCLEUS_B)  # the views went to it

    key(qtbot, window, Qt.Key.Key_Y)  # accept
    accepted = [p for p in model if p.score == pytest.approx(0.4)][0]
    assert accepted.source == "corrected"
    assert selected(window).score == pytest.approx(0.7)
    key(qtbot, window, Qt.Key.Key_X)  # reject
    assert len(model) == 2 and all(p.score != pytest.approx(0.7) for p in model)
    assert selected(window).score == pytest.approx(0.9)
    # correct the last one by dragging its Golgi in the XY view
    window.state.set_cursor(GOLGI_A)
    qtbot.wait(50)  # the markers are redrawn
    assert window.ortho.xy.hit_test_voxel(GOLGI_A) is not None
    drag(qtbot, window.ortho.xy, GOLGI_A, (5, 50, 44))
    corrected = [p for p in model if p.score == pytest.approx(0.9)][0]
    assert corrected.source == "corrected" and corrected.golgi == pytest.approx((5, 50, 44), abs=0.6)
    qtbot.waitUntil(lambda: rows() == 0)
    assert panel.progress.value() == 3 and "2 accepted or corrected · 1 rejected · 0 left" in panel.counts.text()
    assert reviewed_cell(window, 0) == "3 / 3"

    # one undo stack: the correction, then the rejection come back
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert [p for p in model if p.score == pytest.approx(0.9)][0].source == "predicted"
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(model) == 3
    qtbot.waitUntil(lambda: rows() == 2)
    assert reviewed_cell(window, 0) == "1 / 3"

    # saved: the accepted vector is an annotation; training uses it and leaves the unreviewed ones out
    assert window.save()
    saved = read_pairs(project.vectors_path(project.images()[0]))
    assert sorted(saved.sources) == ["corrected", "predicted", "predicted"]
    from app.training.dataset import AnnotatedFile, load_annotated

    warnings: list[str] = []
    loaded = load_annotated(AnnotatedFile(project.images()[0], project.vectors_path(project.images()[0])),
                            warnings=warnings)
    assert list(loaded.pairs.sources) == ["corrected"]
    assert any("2 prediction(s) not reviewed" in w for w in warnings)
    window.refresh_project()
    assert reviewed_cell(window, 0) == "1 / 3"


def test_next_most_uncertain_jumps_across_the_project(qtbot, window, project):
    panel = open_a(qtbot, window, project)
    button(panel, window.actions["review_start"]).click()
    window.project_panel.table.setFocus()  # the keys work while a table has the focus
    qtbot.keyClick(window.project_panel.table, Qt.Key.Key_Y)  # accept a's 0.4: a's least certain left is 0.7
    key(qtbot, window, Qt.Key.Key_U)
    images = project.images()
    assert window.document.image_path == images[1]
    pair = selected(window)
    assert pair.score == pytest.approx(0.2) and pair.source == "predicted"
    assert pair.nucleus == pytest.approx(NUCLEUS_B)
    # a's review was saved on the way (nothing lost), and the panel counts it
    saved = read_pairs(project.vectors_path(images[0]))
    assert sorted(saved.sources) == ["corrected", "predicted", "predicted"]
    assert reviewed_cell(window, 0) == "1 / 3" and reviewed_cell(window, 1) == "0 / 2"
    key(qtbot, window, Qt.Key.Key_X)  # reject the 0.2: next U goes back to a's 0.7
    key(qtbot, window, Qt.Key.Key_U)
    assert window.document.image_path == images[0] and selected(window).score == pytest.approx(0.7)
    assert read_pairs(project.vectors_path(images[1])).meta["review"]["predictions"] == 2


def test_review_without_predictions_says_what_to_do(qtbot, window, tmp_path):
    path = write_imagej_tiff(tmp_path / "lone.tif", cell_volume())
    assert window.open_path(path)
    window.actions["review"].trigger()
    assert window.review_panel.start() is None
    assert "predict it first" in window.review_panel.last_message
    assert not window.actions["accept"].isEnabled()


def test_score_threshold_is_saved_with_the_predictions_and_rejects_below(qtbot, window, project):
    panel = open_a(qtbot, window, project)
    button(panel, window.actions["review_start"]).click()
    predict = window.show_predict_panel()
    predict.set_threshold(0.75)  # hides the 0.4 and the 0.7
    assert window.state.score_threshold == pytest.approx(0.75) and window.model.is_dirty
    assert window.save()
    assert read_pairs(project.vectors_path(project.images()[0])).meta["score_threshold"] == pytest.approx(0.75)
    # reopened: the slider comes back where it was
    assert window.open_project_image(project.images()[1])
    assert window.state.score_threshold == 0.0 and predict.threshold == 0.0
    assert window.open_project_image(project.images()[0])
    assert predict.threshold == pytest.approx(0.75) and not window.model.is_dirty
    # one step rejects what the slider hides; Ctrl+Z brings it back
    window.show_review_panel()
    button(window.review_panel, window.actions["reject_below"]).click()
    assert sorted(round(p.score, 2) for p in window.model) == [0.9]
    window.undo()
    assert len(window.model) == 3
