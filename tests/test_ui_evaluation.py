"""Analysis ▸ Compare with reference…: the paper's scores at τL = 0 and 5 in the Comparison dock, TP/FP/FN (and
border) colours on the slice views, live updates while editing, and clear refusals of a reference made for
another image."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore, QtWidgets  # noqa: E402

from app.core.pairs import PairSet, write_pairs  # noqa: E402
from app.ui.display import EVALUATION_COLOURS  # noqa: E402
from test_ui_annotation import (  # noqa: E402
    GOLGI_A,
    GOLGI_B,
    NUCLEUS_A,
    NUCLEUS_B,
    VOXEL,
    key,
    open_image,
)

Qt = QtCore.Qt
SHAPE = (12, 90, 100)
# In the image but within the paper's 7 µm (14 voxels at 0.5 µm) of its edge: left out of the scoring.
NEAR_EDGE_N, NEAR_EDGE_G = (2, 84, 50), (2, 86, 56)


def drawn_colours(view) -> set:
    view.flush_overlay()  # the views draw a display frame after the edit
    return {colour for (colour, _width), item in view._line_items.items()
            if item.xData is not None and len(item.xData)}


def reference_file(tmp_path, name="truth.vectors.csv", voxel=VOXEL, shape=SHAPE):
    # Pair A exactly, a cell the annotation missed (an FN), and one near the edge (left out).
    reference = PairSet([NUCLEUS_A, (4, 40, 70), (3, 5, 5)], [GOLGI_A, (4, 45, 78), (3, 5, 12)], voxel_size=voxel)
    return write_pairs(tmp_path / name, reference, provenance={"image_shape_zyx": list(shape)})


def compare(window, monkeypatch, path) -> bool:
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    before = len(window.document.errors)
    window.actions["reference"].trigger()  # Analysis ▸ Compare with reference…
    return len(window.document.errors) == before


def test_compare_with_reference_scores_and_colours(qtbot, window, image_path, tmp_path, monkeypatch):
    open_image(qtbot, window, image_path)
    model, panel = window.model, window.evaluation_panel
    a = model.add_pair(NUCLEUS_A, GOLGI_A)
    b = model.add_pair(NUCLEUS_B, GOLGI_B)       # no such cell in the reference: FP
    edge = model.add_pair(NEAR_EDGE_N, NEAR_EDGE_G)
    assert not window.evaluation_dock.isVisible()

    assert compare(window, monkeypatch, reference_file(tmp_path))
    assert window.evaluation_dock.isVisible() and "truth.vectors.csv" in panel.title.text()
    assert [panel.cell(5, c) for c in ("TP", "FP", "FN", "TPR", "FDR")] == ["1", "1", "1", "0.500", "0.500"]
    assert panel.cell(0, "τN / τG µm") == "12 / 6" and panel.cell(5, "τN / τG µm") == "8 / 4"
    assert "1 reference and 1 of these pairs left out" in panel.notes.text()
    assert window.state.labels == {a: "TP", b: "FP", edge: "border"}
    model.clear_selection()  # a selected pair is drawn white
    window.state.set_mip(True)  # every pair on the XY view
    assert drawn_colours(window.ortho.xy) >= {EVALUATION_COLOURS[k] for k in ("TP", "FP", "FN", "border")}
    assert window.actions["evaluation_colours"].isChecked()

    # Live: deleting the FP through the table and the Delete key updates the numbers; undo brings them back.
    table = window.annotation_panel.table
    table.selectRow(window.annotation_panel.row_of_id(b))
    assert model.selection == (b,)
    key(qtbot, window, Qt.Key.Key_Delete)
    assert panel.cell(5, "FP") == "0" and panel.cell(5, "FDR") == "0.000"
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert panel.cell(5, "FP") == "1"

    # The level and border margin are the user's; E switches back to colours by source.
    panel.border.setValue(0.0)
    assert window.state.labels[edge] == "FP" and panel.cell(5, "FP") == "2"
    panel.level.setCurrentIndex(0)
    assert window.document.comparison.level == 0 and panel.table.item(0, 0).font().bold()
    key(qtbot, window, Qt.Key.Key_E)
    assert window.state.colour_mode == "source"
    assert EVALUATION_COLOURS["FP"] not in drawn_colours(window.ortho.xy)
    window.actions["clear_reference"].trigger()
    assert window.state.reference is None and panel.cell(5, "TP") == ""


@pytest.mark.parametrize("voxel, shape, message", [
    ((2.0, 0.5, 0.5), SHAPE, "voxel size of 2 × 0.5 × 0.5 µm"),
    (VOXEL, (12, 90, 120), "image of 12×90×120 voxels"),
])
def test_reference_for_another_image_is_refused(qtbot, window, image_path, tmp_path, monkeypatch,
                                                voxel, shape, message):
    open_image(qtbot, window, image_path)
    window.model.add_pair(NUCLEUS_A, GOLGI_A)
    assert not compare(window, monkeypatch, reference_file(tmp_path, voxel=voxel, shape=shape))
    assert message in window.document.errors[-1]
    assert window.state.reference is None and window.state.colour_mode == "source"
    assert window.evaluation_panel.cell(5, "TP") == ""
