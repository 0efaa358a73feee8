"""The preview window: shows a volume's projection and its vectors; bad files give one message."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
from PySide6 import QtWidgets  # noqa: E402

from app.core.imageio import write_imagej_tiff  # noqa: E402
from app.core.pairs import PairSet  # noqa: E402
from app.core.volume import Volume  # noqa: E402
from app.ui.main_window import MainWindow, composite_mip  # noqa: E402


def small_volume():
    data = np.zeros((2, 4, 64, 64), np.uint16)
    data[0, :, 10:30, 10:30] = 1000  # nucleus block
    data[1, :, 40:44, 40:44] = 800  # Golgi block
    return Volume(data, (1.0, 0.5, 0.5))


def test_composite_mip_colours():
    rgb = composite_mip(small_volume())
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[20, 20, 1] > 200 and rgb[20, 20, 0] < 60  # nucleus green
    assert rgb[42, 42, 0] > 200 and rgb[42, 42, 2] > 200  # Golgi magenta
    assert rgb[2, 60].max() == 0


def test_window_shows_volume_and_vectors(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    pairs = PairSet([[1, 20, 20]], [[1, 42, 42]], voxel_size=(1.0, 0.5, 0.5))
    window.set_data(small_volume(), pairs)
    window.show()
    qtbot.waitExposed(window)
    image = window.image_label.pixmap().toImage()
    assert image.width() == 64
    # The white vector is drawn between the nucleus and the Golgi.
    colour = image.pixelColor(31, 31)
    assert min(colour.red(), colour.green(), colour.blue()) > 200
    assert "1 vectors" in window.statusBar().currentMessage()


def test_open_action_reads_file_and_reports_bad_ones(qtbot, tmp_path, monkeypatch):
    window = MainWindow()
    qtbot.addWidget(window)
    good = write_imagej_tiff(tmp_path / "good.tif", small_volume())
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    warnings = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "warning", lambda *a, **k: warnings.append(a[2]))
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(good), ""))
    window.open_action.trigger()
    assert window.volume is not None and window.volume.spatial_shape == (4, 64, 64)
    assert warnings == []
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    window.open_action.trigger()
    assert len(warnings) == 1 and "bad.tif" in warnings[0]
