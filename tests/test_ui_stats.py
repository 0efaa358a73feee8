"""The Statistics panel in the window (Analysis ▸ Statistics…): numbers and figures of the open image that follow
the edits and the score threshold, the selection, a reference point picked on the image and drawn there, the
project by group with the between-group tests, and Export writing the command's files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore, QtWidgets  # noqa: E402

from app.core.imageio import write_imagej_tiff  # noqa: E402
from app.core.pairs import PairSet, write_pairs  # noqa: E402
from app.core.project import Project  # noqa: E402
from test_ui_annotation import VOXEL, cell_volume, click  # noqa: E402

Qt = QtCore.Qt


def cells(n, direction_xy, rng, spread=0.2, score=None) -> PairSet:
    """n cells in a 12×90×100 image whose Golgi lie 4 µm from the nucleus along ``direction_xy`` (x, y-down)."""
    nuclei = np.column_stack([rng.uniform(2, 10, n), rng.uniform(15, 75, n), rng.uniform(15, 85, n)])
    angle = np.arctan2(direction_xy[1], direction_xy[0]) + rng.normal(0, spread, n)
    golgi = nuclei + np.column_stack([np.zeros(n), 8 * np.sin(angle), 8 * np.cos(angle)])  # 4 µm at 0.5 µm/voxel
    sources = np.array(["manual" if score is None else "predicted"] * n, dtype=object)
    scores = None if score is None else np.asarray(score, dtype=float)
    return PairSet(nuclei, golgi, voxel_size=VOXEL, scores=scores, sources=sources,
                   meta={"image_shape_zyx": [12, 90, 100]})


def wait_result(qtbot, panel, before=None):
    qtbot.waitUntil(lambda: panel.result is not None and panel.result is not before and panel._worker is None,
                    timeout=30000)
    return panel.result


def test_image_statistics_follow_edits_threshold_and_selection(qtbot, window, tmp_path):
    rng = np.random.default_rng(1)
    image = write_imagej_tiff(tmp_path / "cells.tif", cell_volume())
    assert window.open_path(image)
    window.model.add_pairs(cells(20, (1, 0), rng))  # polarised to the right
    window.model.add_pairs(cells(10, (0, 1), rng, score=np.linspace(0.05, 0.5, 10)))  # predictions, downwards
    window.actions["statistics"].trigger()
    panel = window.stats_panel
    assert window.stats_dock.isVisible() and panel.objectName() == "cellpol.stats"
    result = wait_result(qtbot, panel)
    assert len(result.table) == 30 and panel.summary.rowCount() == 1
    assert {"rose", "equal_area", "elevation"} <= set(result.pictures)
    assert not panel.pictures["rose"].pixmap().isNull()
    summary = result.summaries[0]
    assert summary.rayleigh_p < 1e-3  # mostly polarised

    # the score threshold hides predictions in the views, and they leave the statistics too
    window.show_predict_panel().set_threshold(0.3)
    result = wait_result(qtbot, panel, result)
    assert len(result.table) == 20 + int(np.sum(np.linspace(0.05, 0.5, 10) >= 0.3 - 1e-9))

    # the selection only
    window.model.clear_selection()
    panel.set_scope("selection")
    qtbot.waitUntil(lambda: "select some" in panel.error.lower(), timeout=10000)
    window.model.select(window.model.ids[:5])
    result = wait_result(qtbot, panel, result)
    assert len(result.table) == 5

    # an edit is followed
    panel.set_scope("image")
    result = wait_result(qtbot, panel, result)
    n = len(result.table)
    window.model.add_pair((5, 40, 40), (5, 40, 48))
    result = wait_result(qtbot, panel, result)
    assert len(result.table) == n + 1


def test_reference_point_picked_on_the_image_is_drawn_and_used(qtbot, window, tmp_path):
    rng = np.random.default_rng(2)
    image = write_imagej_tiff(tmp_path / "cells.tif", cell_volume())
    assert window.open_path(image)
    window.model.add_pairs(cells(15, (1, 0), rng))
    panel = window.show_stats_panel()
    first = wait_result(qtbot, panel)
    panel.set_reference("point")
    panel.pick_button.click()
    assert window.state.pick is not None
    qtbot.wait(30)
    click(qtbot, window.ortho.xy, (6, 45, 10))
    assert window.state.pick is None
    x, y, z = (spin.value() for spin in panel.xyz)
    assert (x, y) == pytest.approx((10, 45), abs=1.0)
    assert window.state.polarity_reference[0] == "point"
    window.ortho.xy.flush_overlay()
    assert len(window.ortho.xy.reference_marker.data) == 1  # the star is drawn
    result = wait_result(qtbot, panel, first)
    qtbot.waitUntil(lambda: panel._worker is None and not panel._timer.isActive(), timeout=30000)
    result = panel.result
    assert np.isfinite(result.table.reference_angle_deg).all()
    # cells to the right of a point at the left edge, pointing right: radial, small angles
    assert np.nanmedian(np.abs(result.table.reference_angle_xy_deg)) < 45
    panel.set_reference("axis", (0, 1, 0))
    window.ortho.xy.flush_overlay()
    assert window.ortho.xy.reference_arrow.xData is not None and len(window.ortho.xy.reference_arrow.xData) == 5


def test_project_by_group_tests_and_export(qtbot, window, tmp_path):
    rng = np.random.default_rng(3)
    project = Project.create(tmp_path / "study")
    for k in range(6):
        image = write_imagej_tiff(project.folder("images") / f"img{k}.tif", cell_volume())
        polarised = k < 3
        pairs = cells(25, (1, 0), rng, spread=0.3) if polarised else cells(25, (1, 0), rng, spread=3.0)
        write_pairs(project.vectors_path(image), pairs)
    assert window.open_path(project.root)
    panel = window.show_stats_panel()
    panel.set_scope("project")
    assert panel.groups.isVisible() and panel.groups.rowCount() == 6
    for row in range(6):  # typing the groups in the table tags the project's images
        panel.groups.item(row, 1).setText("flow" if row < 3 else "static")
    assert Project.open(project.root).group_of(project.images()[0]) == "flow"
    panel.schedule()
    result = wait_result(qtbot, panel)
    group_rows = [s for s in result.summaries if s.level == "group"]
    assert sorted(s.name for s in group_rows) == ["flow", "static"]
    assert len(result.tests) >= 1 and all(t.groups == ("flow", "static") or t.groups == ("static", "flow")
                                          for t in result.tests)
    assert "p =" in panel.tests.text()
    flow = next(s for s in group_rows if s.name == "flow")
    static = next(s for s in group_rows if s.name == "static")
    assert flow.polarity_index > static.polarity_index

    out = tmp_path / "export"
    handle = panel.export(out)
    qtbot.waitUntil(lambda: not handle.running, timeout=60000)
    assert handle.status == "done", handle.error
    for name in ("vectors.csv", "summary.csv", "tests.csv", "report.pdf"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert len((out / "vectors.csv").read_text().splitlines()) == 6 * 25 + 1


def test_no_vectors_says_so(qtbot, window, tmp_path):
    image = write_imagej_tiff(tmp_path / "cells.tif", cell_volume())
    assert window.open_path(image)
    panel = window.show_stats_panel()
    panel.update_now()
    qtbot.waitUntil(lambda: bool(panel.error), timeout=10000)
    assert "annotate or predict" in panel.error.lower()
    assert isinstance(panel.status, QtWidgets.QLabel)
