"""The Qt-free annotation model: commands, undo/redo, selection, dragging, snapping, autosave, recovery."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from app.core.annotation import (
    GOLGI,
    NUCLEUS,
    AnnotationModel,
    Autosaver,
    Signal,
    autosave_path_for,
    discard_autosave,
    check_reference,
    compare_with_reference,
    find_recovery,
    image_stem,
    load_autosave,
    snap_to_peak,
    vector_angles,
    vectors_path_for,
)
from app.core import annotation, autosave, batch, comparison, positions, signals
from app.core.errors import CellPolError
from app.core.pairs import (
    PairSet,
    read_3dngmic_vectors,
    read_legacy_csv,
    read_pairs,
    write_3dngmic_vectors,
    write_legacy_csv,
    write_pairs,
)
from conftest import REPO

VOXEL = (0.5, 0.25, 0.25)


class Recorder:
    """Collects what a Signal emits."""

    def __init__(self, signal: Signal) -> None:
        self.calls: list[tuple] = []
        signal.connect(lambda *args: self.calls.append(args))


def model_with_pairs(n: int = 3) -> AnnotationModel:
    model = AnnotationModel(VOXEL, image_shape=(10, 40, 40))
    for k in range(n):
        model.add_pair((1, 5 + k, 5), (2, 5 + k, 9))
    model.mark_saved()
    return model


def test_signal_connect_emit_disconnect():
    sig = Signal()
    got = []
    slot = sig.connect(lambda *a: got.append(a))
    sig.connect(slot)  # connecting twice calls once
    sig.emit(1, "x")
    sig.disconnect(slot)
    sig.emit(2)
    sig.disconnect(slot)  # unknown: no error
    assert got == [(1, "x")] and len(sig) == 0


def test_place_nucleus_then_golgi_is_one_undoable_command():
    model = AnnotationModel(VOXEL)
    changed, pending, edited = Recorder(model.changed), Recorder(model.pending_changed), Recorder(model.edited)
    assert model.place((3, 10, 12)) is None
    assert model.pending_nucleus == (3.0, 10.0, 12.0) and len(model) == 0
    assert pending.calls == [((3.0, 10.0, 12.0),)]
    pair_id = model.place((4, 11, 20))
    assert len(model) == 1 and model.pending_nucleus is None
    pair = model.get(pair_id)
    assert pair.nucleus == (3.0, 10.0, 12.0) and pair.golgi == (4.0, 11.0, 20.0) and pair.source == "manual"
    assert model.selection == (pair_id,)  # the new pair is selected
    assert len(model.undo_stack) == 1 and model.undo_stack.undo_text == "place pair"
    assert changed.calls[-1] == ("add", (pair_id,)) and len(edited.calls) == 2  # nucleus, then the pair
    assert model.undo() and len(model) == 0 and model.selection == ()
    assert model.pending_nucleus is None  # undo removes the whole pair
    assert model.redo() and model.get(pair_id) == pair  # same id, same positions
    assert not model.redo()


def test_undo_cancels_a_half_placed_pair_first():
    model = model_with_pairs(1)
    model.place_nucleus((1, 1, 1))
    assert model.can_undo
    assert model.undo() and model.pending_nucleus is None and len(model) == 1
    assert model.undo() and len(model) == 0
    assert not model.undo()
    with pytest.raises(CellPolError, match="nucleus first"):
        model.place_golgi((1, 2, 3))


def test_move_point_marks_predictions_corrected_and_undoes():
    model = AnnotationModel(VOXEL)
    model.set_pairset(PairSet([[1, 2, 3]], [[1, 2, 8]], voxel_size=VOXEL, scores=[0.9], sources="predicted"))
    pair_id = model.ids[0]
    assert not model.is_dirty
    model.move_point(pair_id, GOLGI, (2, 4, 9))
    moved = model.get(pair_id)
    assert moved.golgi == (2.0, 4.0, 9.0) and moved.source == "corrected" and moved.score == 0.9
    assert model.is_dirty
    model.undo()
    assert model.get(pair_id).golgi == (1.0, 2.0, 8.0) and model.get(pair_id).source == "predicted"
    assert not model.is_dirty  # back at the loaded state
    with pytest.raises(CellPolError):
        model.move_point(pair_id, "tail", (0, 0, 0))


def test_drag_previews_then_commits_one_move():
    model = model_with_pairs(1)
    pair_id = model.ids[0]
    changed, edited = Recorder(model.changed), Recorder(model.edited)
    model.begin_drag(pair_id, NUCLEUS)
    for y in (6, 7, 8):
        model.drag_to((1, y, 5))
    assert model.get(pair_id).nucleus == (1.0, 8.0, 5.0)
    assert len(changed.calls) == 3 and edited.calls == []  # live preview, nothing recorded yet
    model.end_drag()
    assert len(model.undo_stack) == 2 and edited.calls == [()]
    model.undo()
    assert model.get(pair_id).nucleus == (1.0, 5.0, 5.0)
    model.redo()
    assert model.get(pair_id).nucleus == (1.0, 8.0, 5.0)
    # A cancelled drag (or one that returns to its start) records nothing.
    model.begin_drag(pair_id, GOLGI)
    model.drag_to((3, 3, 3))
    model.cancel_drag()
    assert model.get(pair_id).golgi == (2.0, 5.0, 9.0) and len(model.undo_stack) == 2
    model.begin_drag(pair_id, GOLGI)
    model.drag_to((3, 3, 3))
    model.end_drag((2, 5, 9))
    assert len(model.undo_stack) == 2 and not model.dragging


def test_delete_restores_rows_on_undo():
    model = model_with_pairs(4)
    ids = model.ids
    model.select([ids[1], ids[3]])
    assert model.remove_selected() == 2
    assert model.ids == [ids[0], ids[2]] and model.selection == ()
    assert model.undo_stack.undo_text == "delete 2 pairs"
    model.undo()
    assert model.ids == ids
    assert model.remove_pairs([999]) == 0


def test_repair_swaps_golgi_of_two_selected_pairs():
    model = model_with_pairs(2)
    a, b = model.ids
    ga, gb = model.get(a).golgi, model.get(b).golgi
    model.select([a])
    with pytest.raises(CellPolError, match="exactly two"):
        model.repair_selected()
    model.select([b], add=True)
    model.repair_selected()
    assert model.get(a).golgi == gb and model.get(b).golgi == ga
    model.undo()
    assert model.get(a).golgi == ga and model.get(b).golgi == gb
    with pytest.raises(CellPolError):
        model.swap_golgi(a, a)


def test_new_edit_drops_redo_history_and_dirty_tracking():
    model = model_with_pairs(2)
    history = Recorder(model.history_changed)
    model.remove_pairs([model.ids[0]])
    model.undo()
    assert model.can_redo and not model.is_dirty
    model.add_pair((0, 0, 0), (0, 1, 1))
    assert not model.can_redo and model.is_dirty
    model.mark_saved()
    assert not model.is_dirty
    model.undo()
    assert model.is_dirty  # undone past the save point
    assert history.calls


def test_replace_all_and_import_are_undoable_and_renumber_ids():
    model = model_with_pairs(2)
    before = model.pairs
    incoming = PairSet([[0, 1, 1], [0, 2, 2]], [[0, 1, 5], [0, 2, 6]], voxel_size=VOXEL, ids=[0, 1])
    model.replace_all(incoming, text="import")
    assert len(model) == 2 and set(model.ids).isdisjoint({p.id for p in before})
    model.undo()
    assert model.pairs == before
    new_ids = model.add_pairs(incoming)
    assert len(model) == 4 and len(set(model.ids)) == 4 and len(new_ids) == 2
    model.undo()
    assert model.pairs == before


def test_selection_and_nearest():
    model = model_with_pairs(3)
    sel = Recorder(model.selection_changed)
    a, b, c = model.ids
    model.select([c, a])
    model.toggle_selection(a)
    model.toggle_selection(b)
    assert model.selection == (c, b)
    model.select_all()
    model.clear_selection()
    assert sel.calls[-1] == ((),)
    # Golgi of pair b is at (2, 6, 9): nearest within 1 µm.
    assert model.nearest((2, 6, 9.5), max_distance_um=1.0)[:2] == (b, GOLGI)
    assert model.nearest((9, 30, 30), max_distance_um=1.0) is None
    # In-plane only (an XY view ignores z).
    assert model.nearest((9, 5, 5), max_distance_um=0.5, axes=(1, 2))[:2] == (a, NUCLEUS)


def test_pairset_round_trip_keeps_ids_scores_sources(tmp_path):
    model = model_with_pairs(2)
    model.set_sources([model.ids[0]], "corrected")
    pairs = model.to_pairset()
    assert pairs.voxel_size == VOXEL and pairs.meta["image_shape_zyx"] == [10, 40, 40]
    path = write_pairs(tmp_path / "a.vectors.csv", pairs)
    again = AnnotationModel()
    again.set_pairset(read_pairs(path))
    assert again.pairs == model.pairs
    assert again.voxel_size == VOXEL and again.image_shape == (10, 40, 40)
    # New ids never collide with loaded ones.
    assert again.add_pair((0, 0, 0), (1, 1, 1)) == max(model.ids) + 1


def test_vector_angles_in_um():
    # +x: azimuth 0; -y (up on screen): 90; +z only: elevation 90; zero length: NaN.
    pairs = PairSet(np.zeros((4, 3)), [[0, 0, 4], [0, -4, 0], [2, 0, 0], [0, 0, 0]], voxel_size=(0.5, 0.25, 0.25))
    length, azimuth, elevation = vector_angles(pairs)
    np.testing.assert_allclose(length, [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(azimuth[:3], [0.0, 90.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(elevation[:3], [0.0, 0.0, 90.0], atol=1e-9)
    assert math.isnan(azimuth[3]) and math.isnan(elevation[3])
    # Anisotropy: one voxel in z (0.5 µm) and two in x (0.5 µm) is 45°.
    _, _, elev = vector_angles(PairSet([[0, 0, 0]], [[1, 0, 2]], voxel_size=(0.5, 0.25, 0.25)))
    assert elev[0] == pytest.approx(45.0)


def blob(shape, centre, sigma_vox, amplitude=1000.0):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma_vox))
    return (amplitude * np.exp(-0.5 * d2)).astype(np.uint16)


def test_snap_to_peak_within_radius():
    rng = np.random.default_rng(0)
    image = blob((20, 60, 60), (8, 30, 34), (2, 4, 4)) + rng.integers(0, 40, (20, 60, 60)).astype(np.uint16)
    # 1.5 µm away in x (6 voxels at 0.25 µm): found within 2 µm.
    assert snap_to_peak(image, (8, 30, 28), VOXEL, radius_um=2.0) == (8.0, 30.0, 34.0)
    # Outside the radius the best in-radius voxel lies towards the peak, not at it.
    z, y, x = snap_to_peak(image, (8, 30, 20), VOXEL, radius_um=1.0)
    assert 23 <= x <= 24 and y == 30
    # Radius 0: unchanged.
    assert snap_to_peak(image, (8, 30, 28.4), VOXEL, radius_um=0) == (8.0, 30.0, 28.4)
    # A click on a projection has no depth: the free axis is searched entirely.
    assert snap_to_peak(image, (0, 30, 33), VOXEL, radius_um=1.0, free_axis=0)[0] == 8.0
    # Without snapping, a projection click still gets its depth from the peak along the ray.
    assert snap_to_peak(image, (0, 30.2, 33.6), VOXEL, radius_um=0, free_axis=0) == (8.0, 30.0, 34.0)
    # A flat neighbourhood keeps the click.
    assert snap_to_peak(np.zeros((5, 5, 5)), (2, 2, 2), VOXEL, 1.0) == (2.0, 2.0, 2.0)
    with pytest.raises(CellPolError):
        snap_to_peak(image[0], (0, 0), VOXEL, 1.0)


def test_snap_uses_um_on_anisotropic_voxels():
    image = blob((30, 30, 30), (15, 15, 15), (1, 1, 1))
    # z voxels are 2 µm: a click 2 z-voxels (4 µm) away is out of a 3 µm radius...
    z, _, _ = snap_to_peak(image, (13, 15, 15), (2.0, 0.25, 0.25), radius_um=3.0, sigma_um=0.3)
    assert z == 14.0
    # ...but 2 x-voxels (0.5 µm) away is well inside.
    assert snap_to_peak(image, (15, 15, 13), (2.0, 0.25, 0.25), radius_um=3.0, sigma_um=0.3) == (15.0, 15.0, 15.0)


def test_paths():
    assert image_stem("/d/cells.ome.tif") == "cells" and image_stem("x.npy") == "x"
    assert vectors_path_for("/d/cells.tif").as_posix() == "/d/cells.vectors.csv"
    assert vectors_path_for("/d/cells.tif", "/p/annotations").as_posix() == "/p/annotations/cells.vectors.csv"
    assert autosave_path_for("/d/cells.vectors.csv").name == "cells.vectors.autosave.csv"
    assert autosave_path_for("/d/other.csv").name == "other.autosave.csv"


def test_autosave_after_every_edit_and_recovery(tmp_path):
    saved = tmp_path / "img.vectors.csv"
    model = AnnotationModel(VOXEL, image_shape=(10, 40, 40))
    saver = Autosaver(model, autosave_path_for(saved), provenance=lambda: {"image": "img.tif"})
    written = Recorder(saver.saved)
    model.place_nucleus((1, 2, 3))
    pairs, pending = load_autosave(saver.path)
    assert len(pairs) == 0 and pending == (1.0, 2.0, 3.0)  # a half-placed pair survives too
    model.place_golgi((1, 2, 9))
    model.add_pair((2, 3, 4), (2, 3, 8))
    model.move_point(model.ids[0], NUCLEUS, (1, 2, 4))
    assert saver.count == len(written.calls) == 4
    pairs, pending = load_autosave(saver.path)
    assert pending is None and pairs.meta["image"] == "img.tif" and pairs.meta["autosave"] is True
    restored = AnnotationModel()
    restored.set_pairset(pairs)
    assert restored.pairs == model.pairs
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    # No saved file yet: the autosave is offered. A newer saved file wins.
    assert find_recovery(saved) == saver.path
    write_pairs(saved, model.to_pairset())
    assert find_recovery(saved) is None
    model.remove_pairs([model.ids[0]])
    os.utime(saver.path, ns=(saved.stat().st_mtime_ns + 10**9,) * 2)
    assert find_recovery(saved) == saver.path
    discard_autosave(saved)
    assert find_recovery(saved) is None and not saver.path.with_suffix(".json").exists()
    saver.detach()
    model.add_pair((0, 0, 0), (1, 1, 1))
    assert saver.count == 5


def test_autosave_failure_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = AnnotationModel(VOXEL)
    saver = Autosaver(model, blocker / "sub" / "a.vectors.autosave.csv")
    failures = Recorder(saver.failed)
    model.add_pair((0, 0, 0), (1, 1, 1))
    assert len(failures.calls) == 1 and "Autosave" in failures.calls[0][0]
    assert len(model) == 1


def test_kill_9_loses_nothing_already_placed(tmp_path):
    autosave = tmp_path / "img.vectors.autosave.csv"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from app.core.annotation import AnnotationModel, Autosaver
        model = AnnotationModel({VOXEL!r})
        Autosaver(model, {str(autosave)!r})
        model.place((1, 2, 3)); model.place((1, 2, 9))
        model.place((4, 5, 6)); model.place((4, 8, 6))
        model.move_point(0, "golgi", (1, 3, 10))
        model.place((7, 7, 7))          # a nucleus waiting for its Golgi
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL
    pairs, pending = load_autosave(autosave)
    assert len(pairs) == 2 and pending == (7.0, 7.0, 7.0)
    np.testing.assert_allclose(pairs.golgi[0], (1, 3, 10))
    np.testing.assert_allclose(pairs.nuclei[1], (4, 5, 6))


def test_legacy_and_3dngmic_exports_round_trip(tmp_path):
    pairs = PairSet([[1, 2.5, 3], [4, 5, 6]], [[1, 7, 8.25], [5, 9, 10]], voxel_size=VOXEL)
    for one_based in (False, True):
        path = write_legacy_csv(tmp_path / f"legacy{one_based}.csv", pairs, one_based=one_based)
        back = read_legacy_csv(path, one_based=one_based)
        np.testing.assert_allclose(back.nuclei, pairs.nuclei)
        np.testing.assert_allclose(back.golgi, pairs.golgi)
    path = write_3dngmic_vectors(tmp_path / "0.npy", pairs)
    back = read_3dngmic_vectors(path)
    np.testing.assert_allclose(back.nuclei, pairs.nuclei)
    np.testing.assert_allclose(back.golgi, pairs.golgi)
    assert len(read_3dngmic_vectors(write_3dngmic_vectors(tmp_path / "e.npy", PairSet.empty()))) == 0


def test_compare_with_reference_labels_tp_fp_fn_and_border():
    reference = PairSet([[5, 10, 10], [5, 50, 50], [5, 90, 90]], [[5, 10, 20], [5, 50, 60], [5, 90, 100]],
                        voxel_size=(1.0, 0.5, 0.5))
    pred = PairSet([[5, 11, 10], [5, 50, 50], [5, 140, 140]], [[5, 10, 21], [5, 80, 80], [5, 140, 150]],
                   voxel_size=(1.0, 0.5, 0.5), ids=[7, 8, 9])
    every = compare_with_reference(reference, pred, border_margin_um=0.0)
    assert every.labels == {7: "TP", 8: "FP", 9: "FP"}  # pair 8's Golgi is 21 µm off
    assert every.fn_rows.tolist() == [1, 2]
    assert every.score.tp[5] == 1 and every.score.fp[5] == 2 and every.score.fn[5] == 2
    # The paper's 7 µm border (14 voxels at 0.5 µm) on a 10×200×200 image leaves out the pairs at y or x = 10.
    paper = compare_with_reference(reference, pred, image_shape=(10, 200, 200))
    assert paper.labels == {7: "border", 8: "FP", 9: "FP"} and paper.fn_rows.tolist() == [1, 2]
    assert (paper.score.n_gt, paper.score.n_pred) == (2, 2)  # the colours agree with the counts


def test_check_reference_refuses_another_image():
    reference = PairSet([[2, 10, 10]], [[2, 10, 20]], voxel_size=(1.0, 0.5, 0.5), meta={"image_shape_zyx": [5, 40, 40]})
    assert check_reference(reference, (1.0, 0.5, 0.5), (5, 40, 40)).voxel_size == (1.0, 0.5, 0.5)
    assert check_reference(reference.with_voxel_size((1, 1, 1)).subset([0]), (1, 1, 1), (5, 40, 40))
    with pytest.raises(CellPolError, match="voxel size of 1 × 0.5 × 0.5 µm .* this image has 2 × 0.5 × 0.5"):
        check_reference(reference, (2.0, 0.5, 0.5), (5, 40, 40))
    with pytest.raises(CellPolError, match="image of 5×40×40 voxels .* this image is 5×30×40"):
        check_reference(reference, (1.0, 0.5, 0.5), (5, 30, 40))
    no_meta = PairSet([[2, 10, 10]], [[2, 10, 50]])  # a legacy file: no voxel size, no shape
    assert check_reference(no_meta, (1.0, 0.5, 0.5), (5, 60, 60)).voxel_size == (1.0, 0.5, 0.5)
    with pytest.raises(CellPolError, match="1 reference point.* outside"):
        check_reference(no_meta, (1.0, 0.5, 0.5), (5, 40, 40))


@pytest.mark.parametrize("module, names", [
    (autosave, ("vectors_path_for", "autosave_path_for", "find_recovery", "load_autosave", "discard_autosave",
                "Autosaver")),
    (comparison, ("BORDER", "SHOWN_LEVELS", "ReferenceComparison", "check_reference", "compare_with_reference")),
    (positions, ("snap_to_peak",)),
    (signals, ("Signal",)),
    (batch, ("image_stem",)),
])
def test_names_that_moved_out_are_still_imported_from_app_core_annotation(module, names):
    """Autosave, snapping and the reference comparison have their own modules; callers' imports keep working."""
    for name in names:
        assert getattr(annotation, name) is getattr(module, name), name
        assert name in annotation.__all__, name
