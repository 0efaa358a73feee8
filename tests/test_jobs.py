"""The one job protocol (app.core.jobs): every long job is a generator of typed events with one cancel token.

For each job: the order of its events, cancel, pause where it can pause, and a user-caused error.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app.core import jobs
from app.core.batch import BatchRecord, predict_batch
from app.core.errors import CancelledError, CellPolError
from app.core.jobs import CancelToken, ItemDone, JobEvent, Note, PauseToken, Progress, Result
from app.core.pairs import PairSet
from app.core.simulate import synthesize_dataset

VOXEL = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stacks")
    synthesize_dataset(folder, 3, shape=(6, 48, 48), voxel_size=VOXEL, seed=2)
    return folder


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------------------------------
# The protocol itself
# ------------------------------------------------------------------------------------------
def test_run_returns_the_result_and_hands_over_every_event():
    def job():
        yield Note("starting")
        for k in range(3):
            yield Progress(k + 1, 3, f"step {k + 1}")
        yield Result("value")
        return "value"

    seen = []
    assert jobs.run(job(), seen.append) == "value"
    assert kinds(seen) == ["Note", "Progress", "Progress", "Progress", "Result"]
    assert all(isinstance(e, JobEvent) for e in seen)
    assert [(e.done, e.total) for e in seen if isinstance(e, Progress)] == [(1, 3), (2, 3), (3, 3)]

    def result_event_only():
        yield Result(42)

    assert jobs.run(result_event_only()) == 42


def test_pause_waits_and_cancel_ends_a_pause():
    pause, cancel = PauseToken(), CancelToken()
    pause.pause()
    assert pause.paused
    threading.Timer(0.2, cancel.cancel).start()
    with pytest.raises(CancelledError):
        pause.wait(cancel, poll_seconds=0.02)
    pause.resume()
    pause.wait(cancel=None)  # running: returns at once


# ------------------------------------------------------------------------------------------
# Batch prediction
# ------------------------------------------------------------------------------------------
class WindowedPredictor:
    """A predictor that is a job: progress per "window batch", then its pairs."""

    def __init__(self, cancel_after: int = 0, cancel: CancelToken | None = None):
        self.cancel_after, self.cancel, self.batches = cancel_after, cancel, 0

    def __call__(self, volume):
        return jobs.run(self.job(volume))

    def job(self, volume, cancel=None):
        for k in range(4):
            jobs.check_cancel(cancel)
            self.batches += 1
            if self.cancel is not None and self.batches == self.cancel_after:
                self.cancel.cancel()
            yield Progress(k + 1, 4, "windows")
        pairs = PairSet([[1, 5, 5]], [[1, 7, 8]], voxel_size=volume.voxel_size, sources="predicted")
        yield Result(pairs)
        return pairs


def test_batch_events_in_order_with_progress_inside_each_image(stacks, tmp_path):
    images = sorted(stacks.glob("*.tif"))
    events = list(predict_batch(images, tmp_path / "p", WindowedPredictor()))
    assert kinds(events) == (["Progress"] * 4 + ["ItemDone"]) * 3 + ["Result"]
    done = [e for e in events if isinstance(e, ItemDone)]
    assert [(e.done, e.total) for e in done] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(e.item, BatchRecord) and e.item.status == "ok" for e in done)
    assert events[-1].value == [e.item for e in done]


def test_batch_cancel_stops_inside_an_image_and_keeps_the_summary_of_those_done(stacks, tmp_path):
    images = sorted(stacks.glob("*.tif"))
    cancel = CancelToken()
    predictor = WindowedPredictor(cancel_after=6, cancel=cancel)  # during the second image
    seen = []
    with pytest.raises(CancelledError):
        jobs.run(predict_batch(images, tmp_path / "p", predictor, cancel=cancel), seen.append)
    assert predictor.batches == 6  # the second image stopped after its second window batch
    assert [e.item.image.name for e in seen if isinstance(e, ItemDone)] == [images[0].name]
    assert (tmp_path / "p" / "predict_summary.csv").read_text().count("\n") == 2  # header + the image done
    assert not (tmp_path / "p" / f"{images[1].stem}.pred.vectors.csv").exists()


def test_batch_user_error_fails_that_image_and_goes_on(stacks, tmp_path):
    images = sorted(stacks.glob("*.tif"))
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    records = jobs.run(predict_batch([images[0], bad, images[1]], tmp_path / "p", WindowedPredictor()))
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert "broken.tif" in records[1].error


def test_a_plain_function_still_predicts(stacks, tmp_path):
    def plain(volume):
        return PairSet(np.zeros((0, 3)), np.zeros((0, 3)), voxel_size=volume.voxel_size, sources="predicted")

    records = jobs.run(predict_batch(sorted(stacks.glob("*.tif"))[:1], tmp_path / "p", plain))
    assert [r.status for r in records] == ["ok"]


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------
def test_evaluation_events_cancel_and_error(stacks, tmp_path):
    from app.core.evaluate import EvaluationResult, evaluate_job
    from app.core.jobs import JobWarning

    preds = tmp_path / "preds"
    preds.mkdir()
    for gt in sorted(stacks.glob("*.vectors.csv"))[:2]:  # the third image has no prediction: one warning
        (preds / gt.name.replace(".vectors.csv", ".pred.vectors.csv")).write_bytes(gt.read_bytes())
        (preds / gt.name.replace(".vectors.csv", ".pred.vectors.json")).write_bytes(
            gt.with_suffix(".json").read_bytes())
    events = list(evaluate_job(stacks, preds, border_margin_um=0))
    names = kinds(events)
    assert names[:4] == ["Progress"] * 4 and names[-1] == "Result" and set(names[4:-1]) == {"JobWarning"}
    assert [(e.done, e.total) for e in events[:4]] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    result = events[-1].value
    assert isinstance(result, EvaluationResult) and result.missing == ["synth_0002"]
    assert [e.message for e in events if isinstance(e, JobWarning)] == result.warnings

    cancel = CancelToken()
    job = evaluate_job(stacks, preds, border_margin_um=0, cancel=cancel)
    next(job), next(job)  # started, first image scored
    cancel.cancel()
    with pytest.raises(CancelledError):
        next(job)

    with pytest.raises(CellPolError, match="does not exist"):
        list(evaluate_job(tmp_path / "nowhere", preds))


# ------------------------------------------------------------------------------------------
# Vox2Vox generation (training: tests/test_vox2vox.py and test_trainer.py drive the same protocol)
# ------------------------------------------------------------------------------------------
def test_generation_events_cancel_and_error(tmp_path):
    from app.training.vox2vox import Vox2VoxOptions, generate_job, train_vox2vox

    images = tmp_path / "images"
    synthesize_dataset(images, 2, shape=(16, 64, 64), voxel_size=VOXEL, seed=11)
    jobs.run(train_vox2vox(Vox2VoxOptions(images=images, out=tmp_path / "g", steps=2, eval_every=2,
                                          patch_shape=(16, 64, 64), device="cpu", base_filters=4)))
    events = list(generate_job(tmp_path / "g.json", 2, tmp_path / "gen", device="cpu"))
    assert kinds(events) == ["ItemDone", "ItemDone", "Result"]
    assert [e.item.name for e in events[:2]] == ["gen_0000.tif", "gen_0001.tif"] and events[-1].value == [
        e.item for e in events[:2]]
    cancel = CancelToken()
    job = generate_job(tmp_path / "g.json", 3, tmp_path / "gen2", device="cpu", cancel=cancel)
    next(job)
    cancel.cancel()
    with pytest.raises(CancelledError):
        next(job)
    assert len(list((tmp_path / "gen2").glob("gen_*.tif"))) == 1
    with pytest.raises(CellPolError, match="not found"):
        list(generate_job(tmp_path / "nothing.json", 1, tmp_path / "gen3", device="cpu"))


# ------------------------------------------------------------------------------------------
# Synthesis
# ------------------------------------------------------------------------------------------
def test_synthesis_events_cancel_and_error(tmp_path):
    from app.core.simulate import synthesize_job

    events = list(synthesize_job(tmp_path / "a", 2, shape=(4, 32, 32), voxel_size=VOXEL, seed=1))
    assert kinds(events) == ["ItemDone", "ItemDone", "Result"]
    assert [(e.done, e.total, e.item.name) for e in events[:2]] == [(1, 2, "synth_0000.tif"), (2, 2, "synth_0001.tif")]
    cancel = CancelToken()
    job = synthesize_job(tmp_path / "b", 3, shape=(4, 32, 32), voxel_size=VOXEL, cancel=cancel)
    next(job)
    cancel.cancel()
    with pytest.raises(CancelledError):
        next(job)
    assert sorted(p.name for p in (tmp_path / "b").glob("*.tif")) == ["synth_0000.tif"]
    with pytest.raises(CellPolError, match="Unknown simulation option"):
        list(synthesize_job(tmp_path / "c", 1, shape=(4, 32, 32), no_such_option=1))


# ------------------------------------------------------------------------------------------
# Prediction of one stack
# ------------------------------------------------------------------------------------------
def test_prediction_of_one_stack_reports_windows_and_cancels_inside_the_image(tmp_path):
    from app.core.imageio import read_volume
    from app.core.inference import Prediction, StarterPredictor

    synthesize_dataset(tmp_path / "big", 1, shape=(16, 160, 160), voxel_size=VOXEL, seed=4)
    image = tmp_path / "big" / "synth_0000.tif"
    volume = read_volume(image)
    predictor = StarterPredictor("cpu", window=(16, 64, 64), batch_size=1)  # several batches of windows
    events = list(predictor.job(volume))
    progress = [e for e in events if isinstance(e, Progress)]
    assert kinds(events)[-1] == "Result" and isinstance(events[-1].value, Prediction)
    assert progress[0].done == 0 and progress[-1].done == progress[-1].total > 2
    assert [e.done for e in progress] == list(range(progress[-1].total + 1))
    # The same pairs as the plain call.
    np.testing.assert_allclose(events[-1].value.pairs.nuclei, predictor(volume).nuclei, rtol=0, atol=1e-4)

    cancel = CancelToken()
    job = predictor.job(volume, cancel)
    next(job), next(job)  # started, first batch of windows done
    cancel.cancel()
    with pytest.raises(CancelledError):
        next(job)

    # In a batch, the windows' progress of each image comes through.
    events = list(predict_batch([image], tmp_path / "p", predictor))
    assert kinds(events) == ["Progress"] * len(progress) + ["ItemDone", "Result"]


# ------------------------------------------------------------------------------------------
# Training (its order, cancel, pause and errors: test_trainer.py, test_train_cli.py, test_vox2vox.py)
# ------------------------------------------------------------------------------------------
def test_training_speaks_the_same_protocol():
    from app.training import jobcontrol, trainer, vox2vox

    assert trainer.PauseToken is jobs.PauseToken and jobcontrol.PauseToken is jobs.PauseToken
    event = trainer.TrainEvent("step", 3, 10, {"total": 1.0}, 1e-3, 0.5)
    assert isinstance(event, JobEvent) and (event.done, event.total) == (3, 10)
    assert vox2vox.pause_point is trainer.pause_point  # one pause implementation for both training jobs
