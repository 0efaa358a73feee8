"""The project panel, driven through its real widgets: the image list with status, double-click / Enter to
open, Next/Previous image shortcuts that save the current annotations first, live counts while annotating."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore  # noqa: E402

from app.core.imageio import write_imagej_tiff  # noqa: E402
from app.core.pairs import read_pairs  # noqa: E402
from app.core.project import Project  # noqa: E402
from test_ui_annotation import GOLGI_A, NUCLEUS_A, cell_volume, click, key  # noqa: E402

Qt = QtCore.Qt
COLUMN = {"image": 0, "shape": 1, "voxel": 2, "pairs": 3, "predicted": 4, "reviewed": 5, "status": 6}


@pytest.fixture
def project(tmp_path):
    project = Project.create(tmp_path / "study", name="Study")
    for name in ("a.tif", "b.tif", "c.tif"):
        write_imagej_tiff(project.folder("images") / name, cell_volume())
    (project.folder("results") / "b.vectors.csv").write_text("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n")
    return project


def cell(panel, row, column) -> str:
    return panel.table.item(row, COLUMN[column]).text()


def double_click_row(qtbot, panel, row) -> None:
    qtbot.waitUntil(lambda: panel.table.viewport().height() > 60)  # the dock has its final size
    centre = panel.table.visualItemRect(panel.table.item(row, 0)).center()
    # A real double click is press, release, then the double-click event (QTest's mouseDClick sends only the
    # second half, which item views ignore without the first press).
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseDClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=centre)


def test_project_panel_lists_images_and_opens_them(qtbot, window, project):
    panel = window.project_panel
    assert not window.project_dock.isVisible()
    assert window.open_path(project.root)
    assert window.project_dock.isVisible()
    assert [cell(panel, r, "image") for r in range(panel.table.rowCount())] == ["a.tif", "b.tif", "c.tif"]
    assert cell(panel, 0, "shape") == "12×90×100" and cell(panel, 0, "voxel") == "1 × 0.5 × 0.5"
    assert cell(panel, 1, "predicted") == "yes" and cell(panel, 0, "predicted") == ""
    assert cell(panel, 0, "status") == "—" and "3 images · 0 annotated" in panel.summary.text()

    double_click_row(qtbot, panel, 0)
    assert window.document.image_path.name == "a.tif"
    assert window.document.vectors_path == project.folder("annotations") / "a.vectors.csv"
    assert panel.table.item(0, 0).font().bold() and not panel.table.item(1, 0).font().bold()

    # Annotating updates the row live: one pair, not yet saved.
    window.state.set_place_mode(True)
    window.state.set_cursor(NUCLEUS_A)
    click(qtbot, window.ortho.xy, NUCLEUS_A)
    click(qtbot, window.ortho.xy, GOLGI_A)
    assert len(window.model) == 1
    assert cell(panel, 0, "pairs") == "1" and cell(panel, 0, "status") == "unsaved"

    # Next image: the annotations of a.tif are saved first, then b.tif opens.
    key(qtbot, window, Qt.Key.Key_PageDown, Qt.KeyboardModifier.ControlModifier)
    assert window.document.image_path.name == "b.tif" and len(window.model) == 0
    saved = read_pairs(project.vectors_path(project.folder("images") / "a.tif"))
    assert len(saved) == 1 and tuple(saved.nuclei[0]) == NUCLEUS_A
    assert cell(panel, 0, "status") == "saved" and cell(panel, 0, "pairs") == "1"
    assert panel.table.item(1, 0).font().bold()
    assert Project.open(project.root).last_image.name == "b.tif"  # remembered in the project file

    # Enter on a selected row opens it; the saved pair is back.
    panel.table.setFocus()
    panel.table.selectRow(0)
    key(qtbot, panel.table, Qt.Key.Key_Return)
    assert window.document.image_path.name == "a.tif" and len(window.model) == 1

    # Previous image at the first one stays put and says so.
    key(qtbot, window, Qt.Key.Key_PageUp, Qt.KeyboardModifier.ControlModifier)
    assert window.document.image_path.name == "a.tif"
    assert "first image" in window.statusBar().currentMessage()
    shortcuts = {text: keys for keys, text, _group in window.shortcut_rows()}
    assert "Next image" in shortcuts and "Previous image" in shortcuts


def test_failed_save_keeps_the_current_image_open(qtbot, window, project, monkeypatch):
    assert window.open_path(project.root)
    panel = window.project_panel
    double_click_row(qtbot, panel, 0)
    window.model.add_pair(NUCLEUS_A, GOLGI_A)
    monkeypatch.setattr(window.document, "save", lambda path=None: False)  # e.g. a read-only folder
    assert not window.step_image(1)
    assert window.document.image_path.name == "a.tif" and len(window.model) == 1
    assert panel.table.item(0, 0).font().bold()
