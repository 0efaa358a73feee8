"""Project folders (Qt-free): layout, project file, remembered voxel sizes, per-image status, navigation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from app.core.annotation import AnnotationModel, Autosaver, autosave_path_for
from app.core.errors import CellPolError, FileFormatError
from app.core.imageio import write_imagej_tiff
from app.core.pairs import PairSet, write_pairs
from app.core.project import NOT_STARTED, SAVED, UNREADABLE, UNSAVED, Project
from app.core.volume import Volume

VOXEL = (1.0, 0.5, 0.5)


def test_project_folder(tmp_path):
    project = Project.create(tmp_path / "proj", name="Retina")
    for kind in ("images", "annotations", "models", "results"):
        assert (tmp_path / "proj" / kind).is_dir()
    image = project.folder("images") / "a.tif"
    image.write_bytes(b"")
    assert project.vectors_path(image) == project.folder("annotations") / "a.vectors.csv"
    assert project.vectors_path(image, series=2) == project.folder("annotations") / "a_s2.vectors.csv"
    assert project.predictions_path(image) == project.folder("results") / "a.pred.vectors.csv"
    # A project of an earlier version: its predictions under the annotations' name are still found.
    older = project.folder("results") / "a.vectors.csv"
    older.write_text("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n")
    assert project.predictions_path(image) == older
    (project.folder("results") / "a.pred.vectors.csv").write_text(older.read_text())
    assert project.predictions_path(image) == project.folder("results") / "a.pred.vectors.csv"
    project.remember_voxel_size(image, (0.3, 0.1, 0.1))
    again = Project.open(tmp_path / "proj" / "cellpol-project.json")
    assert again.name == "Retina" and again.voxel_size_for(image) == (0.3, 0.1, 0.1)
    assert again.voxel_size_for(tmp_path / "elsewhere.tif") is None
    assert Project.create(tmp_path / "proj").name == "Retina"  # an existing project is opened
    with pytest.raises(FileFormatError):
        Project.open(tmp_path)
    with pytest.raises(CellPolError):
        project.folder("nope")


def test_project_file_keeps_unknown_keys_and_is_written_atomically(tmp_path):
    project = Project.create(tmp_path / "p")
    data = json.loads(project.file.read_text())
    assert data["format"] == "cellpol-project" and data["version"] == 1
    data["written_by_a_newer_version"] = {"x": 1}
    project.file.write_text(json.dumps(data))
    opened = Project.open(project.root)
    opened.remember_last_image(opened.folder("images") / "b.npy")
    saved = json.loads(project.file.read_text())
    assert saved["written_by_a_newer_version"] == {"x": 1}
    assert saved["settings"]["last_image"] == "images/b.npy"
    assert [p.name for p in project.root.iterdir() if p.name.endswith(".tmp")] == []


def _volume(shape=(4, 30, 40)) -> Volume:
    return Volume(np.zeros((2,) + shape, np.uint8), VOXEL, channel_names=("nuclei", "golgi"))


def test_image_status_reports_shape_pairs_predictions_and_state(tmp_path):
    project = Project.create(tmp_path / "p")
    images = project.folder("images")
    a = write_imagej_tiff(images / "a.tif", _volume())
    b = write_imagej_tiff(images / "b.tif", _volume((3, 20, 20)))
    c = images / "c.npy"
    np.save(c, np.zeros((8, 8, 4, 2), np.uint8))  # no axes or voxel size in the file
    project.remember_voxel_size(c, (0.8, 0.3, 0.3))
    (images / "notes.txt").write_text("not an image")

    pairs = PairSet([[1, 5, 5], [1, 9, 9], [2, 3, 3]], [[1, 5, 9], [1, 9, 14], [2, 3, 8]], voxel_size=VOXEL,
                    sources=np.array(["manual", "predicted", "corrected"], dtype=object))
    write_pairs(project.vectors_path(a), pairs)
    write_pairs(project.predictions_path(b), pairs.subset([1]))

    statuses = {s.name: s for s in project.statuses()}
    assert list(statuses) == ["a.tif", "b.tif", "c.npy"]
    sa, sb, sc = statuses["a.tif"], statuses["b.tif"], statuses["c.npy"]
    assert sa.shape == (4, 30, 40) and sa.voxel_size == VOXEL
    assert (sa.n_pairs, sa.n_manual, sa.state, sa.has_predictions) == (3, 2, SAVED, False)
    assert (sb.n_pairs, sb.state, sb.has_predictions) == (0, NOT_STARTED, True)
    assert sc.shape is None and "axes" in sc.problem and sc.voxel_size == (0.8, 0.3, 0.3)

    # Unsaved work in an autosave (newer than the saved file) is what the image holds now.
    model = AnnotationModel(VOXEL)
    model.set_pairset(pairs)
    saver = Autosaver(model, autosave_path_for(project.vectors_path(a)))
    model.add_pair((3, 3, 3), (3, 3, 9))
    later = project.vectors_path(a).stat().st_mtime_ns + 10_000_000
    os.utime(saver.path, ns=(later, later))
    status = project.image_status(a)
    assert (status.n_pairs, status.n_manual, status.state) == (4, 3, UNSAVED)

    project.vectors_path(b).write_text("not,a,vectors,file\n")
    broken = project.image_status(b, read_header=False)
    assert broken.state == UNREADABLE and "missing column" in broken.problem and broken.shape is None


def test_neighbour_walks_the_image_list(tmp_path):
    project = Project.create(tmp_path / "p")
    assert project.neighbour(None, 1) is None  # no images
    for name in ("img10.npy", "img2.npy", "img1.npy"):
        np.save(project.folder("images") / name, np.zeros((4, 4, 2, 2), np.uint8))
    names = [p.name for p in project.images()]
    assert names == ["img1.npy", "img2.npy", "img10.npy"]  # natural order
    first, second, third = project.images()
    assert project.neighbour(first, 1) == second and project.neighbour(third, -1) == second
    assert project.neighbour(third, 1) is None and project.neighbour(first, -1) is None
    assert project.neighbour(None, 1) == first and project.neighbour(tmp_path / "other.tif", -1) == third
    project.remember_last_image(second)
    assert Project.open(project.root).last_image == second


def test_image_groups_are_kept_in_the_project_file(tmp_path):
    from app.core.errors import FileFormatError

    project = Project.create(tmp_path / "p")
    image = project.folder("images") / "a.tif"
    assert project.group_of(image) == ""
    project.set_group(image, " control ")
    reopened = Project.open(project.root)
    assert reopened.group_of(image) == "control"
    assert reopened.groups == {"images/a.tif": "control"}
    reopened.set_group(image, "")
    assert Project.open(project.root).groups == {}
    data = json.loads(project.file.read_text())
    data["groups"] = {"images/a.tif": 3}
    project.file.write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match="groups"):
        Project.open(project.root)
