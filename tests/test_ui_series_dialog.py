"""Opening a multi-series file in the window: the series dialog lists the series and the clicked one opens."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtWidgets

from app.ui.series_dialog import SeriesDialog
from test_imageio_formats import stack, write_lif

pytestmark = pytest.mark.gui


@pytest.fixture
def lif_path(tmp_path):
    return write_lif(tmp_path / "experiment.lif", [
        ("Position 1", stack(1, (2, 4, 32, 40), np.uint8), (2.0, 0.5, 0.5), ["DAPI", "GM130"]),
        ("Position 2", stack(2, (2, 3, 24, 16), np.uint16), (1.0, 0.25, 0.25), ["Hoechst", "Giantin"]),
    ])


def answer_with(qtbot, monkeypatch, row, button):
    """Make the dialog's exec show it, click ``row`` and then ``button``, and record what it listed."""
    seen = {}

    def exec_(dialog):
        qtbot.addWidget(dialog)
        dialog.show()
        qtbot.waitExposed(dialog)
        table = dialog.table
        seen["rows"] = [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]
        cell = table.visualItemRect(table.item(row, 1)).center()
        qtbot.mouseClick(table.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=cell)
        qtbot.mouseClick(dialog.buttons.button(button), QtCore.Qt.MouseButton.LeftButton)
        return dialog.result()

    monkeypatch.setattr(SeriesDialog, "exec", exec_)
    return seen


def test_series_dialog_opens_the_clicked_series(qtbot, window, lif_path, monkeypatch):
    window.document.interactive = True  # the series dialog is asked (its exec is answered by clicks above)
    seen = answer_with(qtbot, monkeypatch, 1, QtWidgets.QDialogButtonBox.StandardButton.Open)
    assert window.open_path(lif_path)
    assert seen["rows"] == [["0", "Position 1", "2×4×32×40", "2×0.5×0.5", "DAPI, GM130"],
                            ["1", "Position 2", "2×3×24×16", "1×0.25×0.25", "Hoechst, Giantin"]]
    volume = window.state.volume
    assert volume.data.shape == (2, 3, 24, 16)
    assert volume.voxel_size == pytest.approx((1.0, 0.25, 0.25))
    np.testing.assert_array_equal(volume.data, stack(2, (2, 3, 24, 16), np.uint16))


def test_series_dialog_cancel_opens_nothing(qtbot, window, lif_path, monkeypatch):
    window.document.interactive = True
    answer_with(qtbot, monkeypatch, 0, QtWidgets.QDialogButtonBox.StandardButton.Cancel)
    assert not window.open_path(lif_path)
    assert window.state.volume is None or window.document.image_path != lif_path


def test_single_series_file_opens_without_dialog(qtbot, window, image_path, monkeypatch):
    monkeypatch.setattr(SeriesDialog, "exec", lambda dialog: pytest.fail("no dialog for a one-series file"))
    window.document.interactive = True
    assert window.open_path(image_path)


def test_each_series_keeps_its_own_annotations(qtbot, window, lif_path):
    """Two series of one file never share a vectors file: series 0 keeps <stem>.vectors.csv, series 1 gets
    <stem>_s1.vectors.csv, and what is saved on one does not appear on the other."""
    assert window.document.open_path(lif_path, series=1)
    assert window.document.vectors_path == lif_path.with_name("experiment_s1.vectors.csv")
    window.model.add_pair((1.0, 10.0, 8.0), (1.0, 12.0, 10.0))
    assert window.document.save()
    assert window.document.open_path(lif_path, series=0)
    assert window.document.vectors_path == lif_path.with_name("experiment.vectors.csv")
    assert len(window.model.pairs) == 0
    assert window.document.open_path(lif_path, series=1)
    assert len(window.model.pairs) == 1
