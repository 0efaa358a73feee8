"""Reviewing predictions (app.core.review): accept / reject / correct on the annotation undo stack, the review
counts that survive undo and saving, the project-wide "most uncertain", and training leaving unreviewed
predictions out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.core import review
from app.core.annotation import AnnotationModel
from app.core.pairs import PairSet, read_pairs, write_pairs
from app.core.project import Project

VOXEL = (1.0, 0.5, 0.5)


def predictions(scores, offset=0.0) -> PairSet:
    n = len(scores)
    nuclei = np.array([[2.0, 10.0 + 8 * k + offset, 10.0] for k in range(n)])
    golgi = nuclei + [0.0, 3.0, 2.0]
    return PairSet(nuclei, golgi, voxel_size=VOXEL, scores=np.array(scores, dtype=float),
                   sources=np.array(["predicted"] * n, dtype=object), meta={"method": "test"})


def model_with(scores) -> tuple[AnnotationModel, list[int]]:
    model = AnnotationModel(VOXEL, (8, 64, 64))
    model.add_pair((1, 1, 1), (1, 2, 2))  # one manual pair, never part of the review
    ids = review.add_for_review(model, predictions(scores), origin="a.pred.vectors.csv")
    return model, ids


def test_queue_is_least_confident_first_and_unscored_before_all():
    model, ids = model_with([0.9, 0.2, math.nan, 0.5])
    assert review.queue(model) == [ids[2], ids[1], ids[3], ids[0]]
    assert review.next_in_queue(model, None) == ids[2]
    assert review.next_in_queue(model, ids[3]) == ids[0]
    assert review.next_in_queue(model, ids[0]) == ids[2]  # wraps
    assert review.next_in_queue(model, ids[2], -1) == ids[0]


def test_accept_reject_correct_and_undo_keep_counts_exact():
    model, ids = model_with([0.9, 0.2, 0.5, 0.7])
    counts = review.model_counts(model)
    assert (counts.total, counts.remaining, counts.reviewed) == (4, 4, 0)

    assert review.accept(model, [ids[1]]) == 1
    assert model.get(ids[1]).source == "corrected"
    assert review.reject(model, [ids[2]]) == 1
    assert ids[2] not in model
    model.move_point(ids[3], "golgi", (2.0, 40.0, 14.0))  # drag an end: a correction
    assert model.get(ids[3]).source == "corrected"
    counts = review.model_counts(model)
    assert (counts.total, counts.reviewed, counts.accepted, counts.rejected, counts.remaining) == (4, 3, 2, 1, 1)
    assert review.queue(model) == [ids[0]]
    assert model.undo_stack.undo_text == "move golgi"

    model.undo()
    model.undo()
    assert ids[2] in model and model.get(ids[2]).source == "predicted"
    model.undo()
    assert model.get(ids[1]).source == "predicted"
    assert review.model_counts(model).reviewed == 0
    model.undo()  # the import itself: the record goes with it
    assert len(model) == 1 and not review.is_under_review(model)
    model.redo()
    assert review.model_counts(model).total == 4


def test_accept_and_reject_leave_manual_pairs_alone():
    model, ids = model_with([0.4])
    manual = model.ids[0]
    assert review.accept(model, [manual]) == 0
    assert review.reject(model, [manual]) == 0
    assert manual in model and model.get(manual).source == "manual"


def test_review_record_survives_a_save_and_counts_from_disk(tmp_path):
    model, ids = model_with([0.9, 0.2, 0.5])
    review.reject(model, [ids[0]])
    path = write_pairs(tmp_path / "a.vectors.csv", model.to_pairset(), content="annotation")
    back = read_pairs(path)
    counts = review.counts_of(back.sources, back.meta)
    assert (counts.total, counts.reviewed, counts.remaining) == (3, 1, 2)
    assert counts.text() == "1 / 3"
    reopened = AnnotationModel(VOXEL)
    reopened.set_pairset(back)
    assert review.is_under_review(reopened)
    assert review.model_counts(reopened) == counts


def _project_with_predictions(tmp_path, per_image_scores) -> Project:
    project = Project.create(tmp_path / "proj")
    for k, scores in enumerate(per_image_scores):
        image = project.folder("images") / f"img{k}.npy"
        np.save(image, np.zeros((2, 8, 64, 64), dtype=np.uint8))
        write_pairs(project.predictions_path(image), predictions(scores, offset=k))
    return project


def test_most_uncertain_across_the_project_uses_live_edits_and_review_state(tmp_path):
    project = _project_with_predictions(tmp_path, [[0.8, 0.6], [0.9, 0.3, 0.7], [0.95]])
    images = project.images()
    found = review.most_uncertain(project)
    assert found.image == images[1] and found.score == pytest.approx(0.3) and not found.put_up

    # the user opens image 1, puts its predictions up for review and accepts the 0.3 one (unsaved): the live
    # model counts, so the next most uncertain is image 0's 0.6
    model = AnnotationModel(VOXEL)
    review.add_for_review(model, read_pairs(project.predictions_path(images[1])))
    lowest = review.queue(model)[0]
    assert model.get(lowest).score == pytest.approx(0.3)
    review.accept(model, [lowest])
    found = review.most_uncertain(project, live=(images[1], model))
    assert found.image == images[0] and found.score == pytest.approx(0.6)

    # saved annotations under review: their remaining predictions count, not the results file
    write_pairs(project.vectors_path(images[0]), PairSet.empty(VOXEL, meta={"review": {"predictions": 2}}),
                content="annotation")
    found = review.most_uncertain(project, live=(images[1], model))
    assert found.image == images[1] and found.score == pytest.approx(0.7) and found.put_up
    assert review.most_uncertain(project, live=(images[1], model), skip=[images[1]]).image == images[2]

    status = project.image_status(images[0], read_header=False)
    assert (status.review.total, status.review.reviewed) == (2, 2)
    status = project.image_status(images[2], read_header=False)
    assert (status.review.total, status.review.reviewed) == (1, 0)


def test_most_uncertain_is_none_when_everything_is_reviewed(tmp_path):
    project = Project.create(tmp_path / "empty")
    assert review.most_uncertain(project) is None


def test_training_leaves_unreviewed_predictions_out(tmp_path):
    from app.training.dataset import AnnotatedFile, load_annotated

    image = tmp_path / "img.npy"
    np.save(image, np.zeros((2, 8, 64, 64), dtype=np.uint8))
    model, ids = model_with([0.9, 0.2])
    review.accept(model, [ids[0]])
    vectors = write_pairs(tmp_path / "img.vectors.csv", model.to_pairset(), content="annotation")
    warnings: list[str] = []
    loaded = load_annotated(AnnotatedFile(image, vectors, VOXEL), voxel_size=VOXEL, axes="CZYX", warnings=warnings)
    assert sorted(str(s) for s in loaded.pairs.sources) == ["corrected", "manual"]
    assert any("not reviewed yet" in w for w in warnings)


def test_evaluation_points_out_unreviewed_predictions_in_the_ground_truth(tmp_path):
    from app.core.evaluate import evaluate_folders

    model, ids = model_with([0.9, 0.2])
    review.accept(model, [ids[0]])
    write_pairs(tmp_path / "gt" / "a.vectors.csv", model.to_pairset(), content="annotation")
    write_pairs(tmp_path / "pred" / "a.pred.vectors.csv", predictions([0.9, 0.2]))
    result = evaluate_folders(tmp_path / "gt", tmp_path / "pred", border_margin_um=0)
    assert any("1 prediction(s) not reviewed yet" in w for w in result.warnings)
