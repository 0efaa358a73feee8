"""The main window driven through its real widgets: clicks on the slice views, keyboard shortcuts, the table.

Every test asserts a behaviour a user relies on: a click places a snapped nucleus then its Golgi, Ctrl+Z /
Ctrl+Shift+Z undo and redo across slices, dragging a marker moves it, Delete removes, Save then reopen gives
the same pairs, an unsaved session is recovered, files without a voxel size ask for one.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402

from app.core.annotation import autosave_path_for  # noqa: E402
from app.core.pairs import PairSet, read_pairs  # noqa: E402
from app.core.project import Project  # noqa: E402
from app.core.volume import Volume  # noqa: E402
from app.ui.actions import ACTIONS, MENUS, TOOLBAR, MenuSpec, create_actions  # noqa: E402
from app.ui.dialogs import VoxelSizeDialog  # noqa: E402
from app.ui.main_window import MainWindow  # noqa: E402

SELECTED_PEN_WIDTH = 2.5

Qt = QtCore.Qt
VOXEL = (1.0, 0.5, 0.5)
# Two cells: a nucleus blob and a Golgi spot beside it, at different depths.
NUCLEUS_A, GOLGI_A = (5, 30, 24), (5, 30, 44)
NUCLEUS_B, GOLGI_B = (8, 60, 60), (3, 60, 76)


def blob(shape, centre, sigma, amplitude):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return amplitude * np.exp(-0.5 * sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma)))


def cell_volume() -> Volume:
    shape = (12, 90, 100)
    nuclei = blob(shape, NUCLEUS_A, (1.5, 5, 5), 3000) + blob(shape, NUCLEUS_B, (1.5, 5, 5), 3000)
    golgi = blob(shape, GOLGI_A, (1, 1.5, 1.5), 2500) + blob(shape, GOLGI_B, (1, 1.5, 1.5), 2500)
    data = np.stack([nuclei, golgi]).astype(np.uint16) + 100
    return Volume(data, VOXEL, channel_names=("nuclei", "golgi"))


def make_window(qtbot, settings, enable_3d=False) -> MainWindow:
    window = MainWindow(settings=settings, enable_3d=enable_3d)
    window.document.interactive = False  # any unexpected dialog would block; answer without it
    window.ask_on_close = False
    qtbot.addWidget(window)
    window.resize(1200, 850)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    return window


def open_image(qtbot, window, path) -> None:
    """Open ``path`` and let the views take their final size (as they have before a user can click)."""
    assert window.open_path(path)
    qtbot.wait(30)
    QtWidgets.QApplication.processEvents()


def drag(qtbot, view, start_voxel, end_voxel) -> None:
    """Press at one voxel of a slice view, move in steps and release at another (a real mouse drag)."""
    viewport = view.graphics.viewport()
    start, end = view.viewport_pos(start_voxel), view.viewport_pos(end_voxel)
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for t in np.linspace(0.1, 1.0, 8):
        point = QtCore.QPoint(int(start.x() + t * (end.x() - start.x())), int(start.y() + t * (end.y() - start.y())))
        move = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(point),
                                 QtCore.QPointF(viewport.mapToGlobal(point)), Qt.MouseButton.NoButton,
                                 Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
        QtWidgets.QApplication.sendEvent(viewport, move)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def click(qtbot, view, voxel, modifiers=Qt.KeyboardModifier.NoModifier, button=Qt.MouseButton.LeftButton):
    qtbot.mouseClick(view.graphics.viewport(), button, modifiers, view.viewport_pos(voxel))


def key(qtbot, window, key_code, modifiers=Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(window, key_code, modifiers)


def table_rows(window) -> int:
    return window.annotation_panel.table.model().rowCount()


def test_place_pair_by_clicking_then_undo_and_redo(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    model, xy = window.model, window.ortho.xy
    window.state.set_cursor(NUCLEUS_A)  # show the slice of cell A
    key(qtbot, window, Qt.Key.Key_P)  # place mode
    assert window.state.place_mode and "PLACE" in window.mode_label.text()
    # Click 1.5 µm (3 voxels) off the nucleus centre: it snaps to the nucleus channel's peak.
    click(qtbot, xy, (NUCLEUS_A[0], NUCLEUS_A[1] + 3, NUCLEUS_A[2] - 2))
    assert model.pending_nucleus == NUCLEUS_A and len(model) == 0
    xy.flush_overlay()  # the views draw a display frame after the edit
    assert xy.pending_marker.data.size == 1  # the half-placed pair is drawn
    assert window.actions["undo"].isEnabled()  # undo would cancel it
    click(qtbot, xy, (GOLGI_A[0], GOLGI_A[1] + 2, GOLGI_A[2] + 1))
    assert len(model) == 1
    pair = model.pairs[0]
    assert pair.nucleus == NUCLEUS_A and pair.golgi == GOLGI_A and pair.source == "manual"
    assert table_rows(window) == 1
    length = window.annotation_panel.proxy.index(0, 3).data()
    assert float(length) == pytest.approx(10.0, abs=0.05)  # 20 voxels × 0.5 µm
    assert window.isWindowModified()
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(model) == 0 and table_rows(window) == 0
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert model.pairs == [pair] and table_rows(window) == 1


def test_golgi_placed_on_another_view_and_slice_one_undo_stack(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    model = window.model
    window.state.set_place_mode(True)
    window.state.set_snap(on=False)
    window.state.set_cursor(NUCLEUS_B)
    click(qtbot, window.ortho.xy, NUCLEUS_B)                  # nucleus on XY at z = 8
    window.state.set_cursor((GOLGI_B[0], GOLGI_B[1], NUCLEUS_B[2]))
    click(qtbot, window.ortho.xz, GOLGI_B)                    # Golgi on XZ (y = 60), at z = 3
    assert len(model) == 1
    pair = model.pairs[0]
    assert pair.nucleus == pytest.approx(NUCLEUS_B, abs=0.3)
    assert pair.golgi == pytest.approx(GOLGI_B, abs=0.3)
    # A second pair on yet another slice; undo takes them back in order, whatever slice is shown.
    window.state.set_cursor(NUCLEUS_A)
    click(qtbot, window.ortho.xy, NUCLEUS_A)
    click(qtbot, window.ortho.xy, GOLGI_A)
    assert len(model) == 2
    window.state.set_cursor((0, 0, 0))
    window.undo()
    assert model.pairs == [pair]
    window.undo()
    assert len(model) == 0 and not window.actions["undo"].isEnabled()
    window.redo()
    window.redo()
    assert len(model) == 2 and window.actions["undo"].text() == "&Undo place pair"


def test_drag_a_golgi_marker_moves_it_and_undo_restores(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    model, xy = window.model, window.ortho.xy
    window.state.set_snap(on=False)
    model.add_pair(NUCLEUS_A, (5, 30, 34))
    window.state.set_cursor(NUCLEUS_A)
    drag(qtbot, xy, (5, 30, 34), (5, 40, 40))
    moved = model.pairs[0]
    assert moved.golgi == pytest.approx((5, 40, 40), abs=0.6)
    assert moved.nucleus == NUCLEUS_A
    assert model.undo_stack.undo_text == "move golgi" and len(model.undo_stack) == 2
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert model.pairs[0].golgi == (5.0, 30.0, 34.0)


def click_row(qtbot, window, pair_id):
    table = window.annotation_panel.table
    rect = table.visualRect(window.annotation_panel.proxy.index(window.annotation_panel.row_of_id(pair_id), 3))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())


def test_table_selection_delete_and_undo(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    model = window.model
    ids = [model.add_pair(NUCLEUS_A, GOLGI_A), model.add_pair(NUCLEUS_B, GOLGI_B)]
    table = window.annotation_panel.table
    click_row(qtbot, window, ids[0])
    assert model.selection == (ids[0],) and window.state.cursor == NUCLEUS_A
    click_row(qtbot, window, ids[1])
    assert model.selection == (ids[1],)
    assert window.state.cursor == NUCLEUS_B  # the views jump to the selected pair
    assert window.ortho.xy.state.slice_index(0) == NUCLEUS_B[0]
    window.ortho.xy.flush_overlay()  # the views draw a display frame after the edit
    assert SELECTED_PEN_WIDTH in [p.widthF() for p in window.ortho.xy.markers.data["pen"] if p is not None]
    key(qtbot, window, Qt.Key.Key_Delete)
    assert model.ids == [ids[0]] and table_rows(window) == 1
    key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert model.ids == ids
    # Selecting in a view selects the table row.
    window.state.set_place_mode(False)
    window.state.set_cursor(NUCLEUS_A)
    click(qtbot, window.ortho.xy, NUCLEUS_A)
    assert model.selection == (ids[0],)
    selected = table.selectionModel().selectedRows()
    assert [window.annotation_panel.proxy.data(i, QtCore.Qt.ItemDataRole.UserRole + 2) for i in selected] == [ids[0]]
    # D deletes the pair under the mouse.
    window.state.set_hover(0, GOLGI_A)
    key(qtbot, window, Qt.Key.Key_D)
    assert model.ids == [ids[1]]


def test_save_then_reopen_gives_the_same_pairs(qtbot, settings, image_path):
    first = make_window(qtbot, settings)
    open_image(qtbot, first, image_path)
    first.state.set_place_mode(True)
    first.state.set_cursor(NUCLEUS_A)
    click(qtbot, first.ortho.xy, NUCLEUS_A)
    click(qtbot, first.ortho.xy, GOLGI_A)
    first.model.add_pair(NUCLEUS_B, GOLGI_B)
    saved_pairs = first.model.pairs
    autosave = autosave_path_for(image_path.with_name("cells.vectors.csv"))
    assert autosave.exists()  # every edit autosaved
    click(qtbot, first.ortho.xy, NUCLEUS_B)  # a nucleus without its Golgi yet: saving says it is not kept
    assert first.model.pending_nucleus is not None
    key(qtbot, first, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert "waiting for its Golgi is not saved" in first.statusBar().currentMessage()
    vectors = image_path.with_name("cells.vectors.csv")
    assert vectors.exists() and not autosave.exists() and not first.isWindowModified()
    on_disk = read_pairs(vectors)
    assert on_disk.voxel_size == VOXEL and on_disk.meta["image"].endswith("cells.tif")
    first.annotation_panel.radius.setValue(3.5)  # a preference, remembered with the window layout
    first.close()
    second = make_window(qtbot, settings)
    assert second.state.snap_radius_um == 3.5
    open_image(qtbot, second, image_path)
    assert second.model.pairs == saved_pairs and table_rows(second) == 2
    assert str(image_path.resolve()) in second.document.recent_files()
    second._fill_recent_menu()
    assert [a.text() for a in second.recent_menu.actions()] == [str(image_path.resolve())]
    second.close()


def test_unsaved_work_is_recovered_on_the_next_open(qtbot, settings, image_path):
    first = make_window(qtbot, settings)
    open_image(qtbot, first, image_path)
    first.model.add_pair(NUCLEUS_A, GOLGI_A)
    first.state.set_place_mode(True)
    first.state.set_cursor(NUCLEUS_B)
    click(qtbot, first.ortho.xy, NUCLEUS_B)  # a nucleus waiting for its Golgi
    expected = first.model.pairs, first.model.pending_nucleus
    first.release()  # as if the process died: nothing saved, the autosave stays
    first.hide()
    second = make_window(qtbot, settings)
    asked = []
    second.document.ask_recover = lambda path: asked.append(path) or True
    open_image(qtbot, second, image_path)
    assert len(asked) == 1
    assert (second.model.pairs, second.model.pending_nucleus) == expected
    assert second.isWindowModified()  # recovered work is not yet saved
    second.close()


def test_missing_voxel_size_asks_once_and_is_remembered(qtbot, window, tmp_path):
    path = tmp_path / "patch.npy"  # a 3DNGMic patch: (row, column, Z, channel), no calibration
    np.save(path, np.zeros((128, 128, 64, 2), np.uint8))
    asked = []

    def answer(info, ask_axes):
        asked.append((info["path"], ask_axes))
        return (0.8, 0.4, 0.4), ("YXZC" if ask_axes else None), True

    window.document.ask_voxel_size = answer
    assert window.open_path(path)
    assert window.state.volume.voxel_size == (0.8, 0.4, 0.4) and window.state.shape == (64, 128, 128)
    assert asked == [(str(path), False)]
    assert window.open_path(path) and len(asked) == 1  # remembered for this file
    # An array whose axes cannot be guessed: the same dialog asks for the axis order too.
    odd = tmp_path / "odd.npy"
    np.save(odd, np.moveaxis(cell_volume().data, (0, 1), (3, 2)))  # (Y, X, Z, C)
    assert window.open_path(odd)
    assert asked[-1] == (str(odd), True) and window.state.shape == (12, 90, 100)
    # Cancelled: nothing opened, the previous image stays.
    window.document.ask_voxel_size = lambda info, ask_axes: None
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((128, 128, 64, 2), np.uint8))
    assert not window.open_path(other) and window.document.image_path == odd


def test_bad_file_gives_one_message(window, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    assert not window.open_path(bad)
    assert len(window.document.errors) == 1 and "bad.tif" in window.document.errors[0]
    assert window.state.volume is None


def test_mip_toggle_status_bar_and_anisotropy(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    xy, xz = window.ortho.xy, window.ortho.xz
    # Anisotropy: the XZ image spans X·vx by Z·vz µm (12 slices of 1 µm, 100 columns of 0.5 µm).
    rect = xz.image.mapRectToView(xz.image.boundingRect())
    assert rect.width() == pytest.approx(50.0) and rect.height() == pytest.approx(12.0)
    window.state.set_cursor((0, 45, 50))
    slice_image = xy.current_rgb()
    key(qtbot, window, Qt.Key.Key_M)
    assert window.state.mip
    mip_image = xy.current_rgb()
    assert mip_image[30, 24].sum() > slice_image[30, 24].sum()  # cell A is visible in the projection
    assert "MIP" in xy.title.text()
    # Hovering shows voxel, µm and intensities.
    pos = xy.viewport_pos((0, 30, 24))
    qtbot.mouseMove(xy.graphics.viewport(), pos)
    qtbot.wait(20)
    text = window.position_label.text()
    assert "x 24 y 30" in text and "12.00, 15.00" in text and "nuclei" in text and "golgi" in text


def wheel(view, pixel_delta=(0, 0), angle_delta=(0, 0), modifiers=Qt.KeyboardModifier.NoModifier):
    viewport = view.graphics.viewport()
    position = QtCore.QPointF(viewport.width() / 2, viewport.height() / 2)
    phase = Qt.ScrollPhase.ScrollUpdate if pixel_delta != (0, 0) else Qt.ScrollPhase.NoScrollPhase
    event = QtGui.QWheelEvent(position, QtCore.QPointF(viewport.mapToGlobal(position.toPoint())),
                              QtCore.QPoint(*pixel_delta), QtCore.QPoint(*angle_delta), Qt.MouseButton.NoButton,
                              modifiers, phase, False)
    QtWidgets.QApplication.sendEvent(viewport, event)


def test_mouse_wheel_zooms_trackpad_scroll_pans_shift_wheel_changes_slice(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    xy = window.ortho.xy
    (x0, x1), (y0, y1) = xy.viewbox.viewRange()
    wheel(xy, angle_delta=(0, 120))                    # mouse wheel: zoom in
    (a0, a1), _ = xy.viewbox.viewRange()
    assert (a1 - a0) < 0.9 * (x1 - x0)
    width = a1 - a0
    wheel(xy, pixel_delta=(40, 0), angle_delta=(40, 0))  # two-finger scroll: pan, no zoom
    (b0, b1), _ = xy.viewbox.viewRange()
    assert (b1 - b0) == pytest.approx(width, rel=1e-6) and b0 < a0
    wheel(xy, pixel_delta=(0, 30), angle_delta=(0, 30), modifiers=Qt.KeyboardModifier.ControlModifier)
    (c0, c1), _ = xy.viewbox.viewRange()
    assert (c1 - c0) < width                           # Ctrl + scroll (a pinch on Windows/Linux): zoom
    # macOS trackpad pinch arrives as a native zoom gesture, not a wheel event.
    viewport = xy.graphics.viewport()
    centre = QtCore.QPointF(viewport.width() / 2, viewport.height() / 2)
    pinch = QtGui.QNativeGestureEvent(Qt.NativeGestureType.ZoomNativeGesture,
                                      QtGui.QPointingDevice.primaryPointingDevice(), 2, centre, centre,
                                      QtCore.QPointF(viewport.mapToGlobal(centre.toPoint())), 0.25,
                                      QtCore.QPointF(0, 0))
    QtWidgets.QApplication.sendEvent(viewport, pinch)
    (d0, d1), _ = xy.viewbox.viewRange()
    assert (d1 - d0) == pytest.approx((c1 - c0) / 1.25, rel=0.02)
    z = window.state.slice_index(0)
    wheel(xy, angle_delta=(0, 120), modifiers=Qt.KeyboardModifier.ShiftModifier)
    assert window.state.slice_index(0) == z + 1
    window.step_slice(-1)
    assert window.state.slice_index(0) == z


def test_channel_controls_change_the_composite(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    xy = window.ortho.xy
    window.state.set_cursor(NUCLEUS_A)
    before = xy.current_rgb()[30, 24].astype(int)
    assert before[1] > 150  # nuclei are green
    row = window.channel_controls.rows[0]
    row.visible.setChecked(False)
    assert xy.current_rgb()[30, 24][1] < 60
    key(qtbot, window, Qt.Key.Key_1)  # the shortcut shows it again
    assert row.visible.isChecked() and xy.current_rgb()[30, 24][1] > 150
    low, high = window.state.displays[0].low, window.state.displays[0].high
    row.contrast.setValue((low, low + (high - low) * 4))
    dimmer = xy.current_rgb()[30, 24].astype(int)
    assert dimmer[1] < before[1]
    row.gamma.setValue(0.4)
    assert xy.current_rgb()[30, 24][1] > dimmer[1]
    row.set_colour((255, 0, 0))
    assert xy.current_rgb()[30, 24][0] > 100


def test_import_and_export_every_format(qtbot, window, image_path, tmp_path):
    open_image(qtbot, window, image_path)
    model, document = window.model, window.document
    model.add_pair(NUCLEUS_A, GOLGI_A)
    model.add_pair(NUCLEUS_B, GOLGI_B)
    expected = model.to_pairset()
    outputs = {"project": tmp_path / "out.vectors.csv", "legacy": tmp_path / "out.legacy.csv",
               "3dngmic": tmp_path / "out.npy"}
    for fmt, path in outputs.items():
        assert document.export_vectors(path, fmt)
    for fmt, path in outputs.items():
        model.replace_all(PairSet.empty(VOXEL))
        document.ask_legacy_base = lambda: False  # the tool's own files are 0-based
        assert document.import_vectors(path, None if fmt != "legacy" else "legacy"), fmt
        np.testing.assert_allclose(model.to_pairset().nuclei, expected.nuclei)
        np.testing.assert_allclose(model.to_pairset().golgi, expected.golgi)
    # An import is one undoable step.
    model.undo()
    assert len(model) == 0
    # A header-less CSV is recognised as the legacy format without being told.
    model.replace_all(PairSet.empty(VOXEL))
    asked = []
    document.ask_legacy_base = lambda: asked.append(1) or False
    assert document.import_vectors(outputs["legacy"]) and asked == [1] and len(model) == 2


def test_help_shortcuts_lists_the_actions(qtbot, window):
    rows = window.shortcut_rows()
    keys = {r[0] for r in rows}
    for expected in ("Ctrl+Z", "Ctrl+Shift+Z, Ctrl+Y", "P", "A", "G", "D", "L", "M", "S", "Esc"):
        assert expected in keys, expected
    dialog = window.show_shortcuts()
    qtbot.addWidget(dialog)
    keyed = {dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount()) if dialog.table.item(r, 0).text()}
    assert keyed == {r[1] for r in rows}
    assert any("Re-pair" in r[1] for r in rows)


def test_every_action_has_a_slot_and_menus_name_only_actions(qtbot):
    owner = QtWidgets.QWidget()
    qtbot.addWidget(owner)
    calls = []
    slots = {spec.name: (lambda *args, name=spec.name: calls.append(name)) for spec in ACTIONS}
    actions = create_actions(owner, slots)
    assert list(actions) == [spec.name for spec in ACTIONS]
    actions["repair"].trigger()
    assert calls == ["repair"]
    with pytest.raises(KeyError, match="next_pair"):  # a menu item that would do nothing
        create_actions(owner, {name: slot for name, slot in slots.items() if name != "next_pair"})
    with pytest.raises(KeyError, match="nxt_pair"):
        create_actions(owner, {**slots, "nxt_pair": print})

    def named(menu):
        for item in menu.items:
            yield from named(item) if isinstance(item, MenuSpec) else [item]

    shown = {name for menu in MENUS for name in named(menu)} | set(TOOLBAR)
    assert shown - {None} <= set(actions)


def test_keyboard_placement_repair_and_escape(qtbot, window, image_path):
    open_image(qtbot, window, image_path)
    model = window.model
    window.state.set_cursor(NUCLEUS_A)
    window.state.set_hover(0, (NUCLEUS_A[0], NUCLEUS_A[1] + 2, NUCLEUS_A[2]))
    key(qtbot, window, Qt.Key.Key_A)
    assert model.pending_nucleus == NUCLEUS_A
    key(qtbot, window, Qt.Key.Key_Escape)
    assert model.pending_nucleus is None
    key(qtbot, window, Qt.Key.Key_A)
    window.state.set_hover(0, GOLGI_A)
    key(qtbot, window, Qt.Key.Key_G)
    a = model.ids[0]
    b = model.add_pair(NUCLEUS_B, GOLGI_B)
    model.select([a, b])
    key(qtbot, window, Qt.Key.Key_L)  # re-pair: exchange the Golgi
    assert model.get(a).golgi == GOLGI_B and model.get(b).golgi == GOLGI_A
    key(qtbot, window, Qt.Key.Key_N)  # next pair in table order
    assert len(model.selection) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # QDragEnterEvent's only constructor takes a QPoint
def test_drop_opens_an_image(qtbot, window, image_path):
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(image_path))])
    position = QtCore.QPointF(100, 100)
    enter = QtGui.QDragEnterEvent(position.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                  Qt.KeyboardModifier.NoModifier)
    window.dragEnterEvent(enter)
    assert enter.isAccepted()
    drop = QtGui.QDropEvent(position, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    window.dropEvent(drop)
    assert window.state.volume is not None and window.document.image_path == image_path


def test_signal_emits_do_not_exhaust_true():
    """PySide6 6.12's emit() drops a reference to True each call (see app/ui/__init__.py)."""
    class Emitter(QtCore.QObject):
        fired = QtCore.Signal()

    emitter = Emitter()
    before = sys.getrefcount(True)
    for _ in range(20_000):  # more than True's whole reference count on an unprotected 3.11
        emitter.fired.emit()
    assert sys.getrefcount(True) > 0
    if sys.version_info < (3, 12):
        assert before > 1 << 39


def test_project_folder_keeps_annotations_and_voxel_sizes(qtbot, window, tmp_path):
    project = Project.create(tmp_path / "study", name="Retina study")
    image = project.folder("images") / "retina.npy"
    np.save(image, np.zeros((128, 128, 64, 2), np.uint8))
    assert window.open_path(project.root)
    assert window.document.project.name == "Retina study"
    window.document.ask_voxel_size = lambda info, ask_axes: ((0.3, 0.2, 0.2), None, True)
    assert window.open_path(image)
    assert window.document.vectors_path == project.folder("annotations") / "retina.vectors.csv"
    window.model.add_pair((10, 10, 10), (10, 10, 20))
    assert window.document.save()
    assert (project.folder("annotations") / "retina.vectors.csv").exists()
    assert Project.open(project.root).voxel_size_for(image) == (0.3, 0.2, 0.2)  # asked once, kept
    assert "Retina study" in window.windowTitle()


def test_voxel_size_dialog_validates_and_returns_values(qtbot):
    info = {"path": "/data/x.npy", "shape": (10, 20, 30), "axes": "???", "dtype": "uint8",
            "axes_problem": "cannot tell which axis is Z"}
    dialog = VoxelSizeDialog(info, initial=(0.5, 0.2, 0.2), ask_axes=True)
    qtbot.addWidget(dialog)
    assert dialog.voxel_size() == (0.5, 0.2, 0.2)
    dialog.spins[0].setValue(1.25)
    dialog.axes_edit.setText("zyx")
    assert dialog.voxel_size() == (1.25, 0.2, 0.2) and dialog.axes() == "ZYX"
    dialog.accept()
    assert dialog.result() == QtWidgets.QDialog.DialogCode.Accepted


def test_views_redraw_one_per_pass_after_an_edit(qtbot, window, image_path):
    """An edit does not redraw the markers in its own pass: the three views draw one after the other, one per
    pass of the event loop (a thousand predictions drawn in one pass stalled the window: ui_stall.py)."""
    open_image(qtbot, window, image_path)
    views = window.ortho.views
    qtbot.waitUntil(lambda: not any(v._overlay_pending for v in views))
    window.model.add_pair(NUCLEUS_A, GOLGI_A)
    window.model.add_pair(NUCLEUS_B, GOLGI_B)
    assert all(v._overlay_pending for v in views)  # nothing drawn yet, each view asked once
    window.ortho.redraws._next()
    assert [v._overlay_pending for v in views] == [False, True, True]
    assert len(window.ortho.xy.markers.data) > 0  # the XY view drew the new pairs
    assert window.ortho.redraws._timer.isActive()  # the next view in the next pass
    qtbot.waitUntil(lambda: not any(v._overlay_pending for v in views))


def test_every_action_and_panel_has_a_stable_id_listed_with_its_keys(qtbot, window):
    """Help ▸ Keyboard shortcuts lists every action (keys where it has any) and every panel, each with its
    stable id; ids are unique, in the one dotted scheme, and find the real objects."""
    import re

    from app.ui.actions import PANELS

    for show in (window.show_predict_panel, window.show_review_panel, window.show_evaluate_panel,
                 window.show_stats_panel, window.show_train_panel, window.show_synth_panel):
        show()
    dialog = window.show_shortcuts()
    qtbot.addWidget(dialog)
    table = dialog.table
    rows = [tuple(table.item(r, c).text() if table.item(r, c) else "" for c in range(4))
            for r in range(table.rowCount())]
    ids = [row[3] for row in rows]
    assert len(ids) == len(set(ids)) == len(window.actions) + len(PANELS)
    assert all(re.fullmatch(r"cellpol(\.[a-z0-9_]+){1,2}", i) for i in ids), ids
    by_id = {row[3]: row for row in rows}
    assert by_id["cellpol.review.accept"][0] == "Y" and by_id["cellpol.analysis.predict"][0] == "Ctrl+P"
    assert by_id["cellpol.review.start"][0] == ""  # listed although it has no key
    for action in window.actions.values():
        assert window.findChild(QtGui.QAction, action.objectName()) is action
    for panel_id, _title in PANELS:
        if panel_id == "cellpol.view3d" and window.viewer3d is None:
            continue
        assert window.findChild(QtWidgets.QWidget, panel_id) is not None, panel_id


def test_first_run_welcome_opens_the_demo_once(qtbot, window, monkeypatch):
    opened = []
    monkeypatch.setattr(window, "open_demo", lambda: opened.append("demo"))
    assert window.welcome_due()
    box = window.show_welcome()
    assert not window.welcome_due()  # shown once: the next start goes straight in
    demo = box.findChild(QtWidgets.QPushButton, "cellpol.welcome.demo")
    demo.click()
    qtbot.waitUntil(lambda: opened == ["demo"], timeout=3000)
