"""What every step-by-step training job shares: its events, the clock, pausing and cancelling.

:class:`TrainEvent` is the training jobs' event (a :class:`~app.core.jobs.JobEvent`: its ``done`` / ``total``
are steps). A job calls :func:`pause_point` before every step::

    clock = TrainingClock(elapsed_before)
    for step in range(start, total):
        yield from pause_point(step, total, pause, cancel, clock, save_if_needed)
        ...

Both :func:`app.training.trainer.train` (and so fine-tuning) and the Vox2Vox training do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from app.core.errors import CancelledError, CellPolError
from app.core.fileutil import clean_stale_temporaries, ensure_folder
from app.core.jobs import CancelToken, JobEvent, PauseToken, check_cancel

__all__ = ["PauseToken", "TrainEvent", "TrainingClock", "check_output", "pause_point"]


@dataclass
class TrainEvent(JobEvent):
    """What happened: ``kind`` is ``step``, ``epoch``, ``checkpoint``, ``paused``, ``resumed`` or ``done``.

    ``seconds`` is the training time so far (over resumes, without pauses). Jobs built on the trainer
    (:func:`app.training.finetune.run_training`) add kinds of their own (``info``, ``loading``, ...).
    """

    kind: str
    step: int
    total_steps: int
    losses: dict[str, float]
    learning_rate: float
    seconds: float
    path: Optional[Path] = None
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    best: bool = False
    message: str = ""
    data: Any = None

    @property
    def done(self) -> int:  # type: ignore[override]
        return self.step

    @property
    def total(self) -> int:  # type: ignore[override]
        return self.total_steps


class TrainingClock:
    """Seconds of training over resumes (``before``: from the checkpoint), paused time left out."""

    def __init__(self, before: float = 0.0) -> None:
        self._before = float(before)
        self._started = time.perf_counter()

    def seconds(self) -> float:
        return self._before + time.perf_counter() - self._started

    def leave_out(self, seconds: float) -> None:
        self._started += seconds


def pause_point(step: int, total: int, pause: Optional[PauseToken], cancel: Optional[CancelToken],
                clock: TrainingClock, save_if_needed: Callable[[int], Optional[Path]]) -> Iterator[TrainEvent]:
    """Before step ``step``: on cancel, save (``save_if_needed(step)``) and raise
    :class:`~app.core.errors.CancelledError`; on pause, save, yield ``paused``, wait, yield ``resumed``."""
    try:
        check_cancel(cancel)
        if pause is not None and pause.paused:
            path = save_if_needed(step)
            yield TrainEvent("paused", step, total, {}, 0.0, clock.seconds(), path, message="paused; checkpoint saved")
            waited = time.perf_counter()
            pause.wait(cancel)
            clock.leave_out(time.perf_counter() - waited)
            yield TrainEvent("resumed", step, total, {}, 0.0, clock.seconds())
    except CancelledError:
        save_if_needed(step)
        raise


def check_output(paths: Mapping[str, Path], overwrite: bool) -> None:
    """Before a training job does any work: refuse to replace its model (``paths["model"]``) unless asked,
    say at once when the output folder is read-only or misplaced, and remove the temporaries a killed run
    left beside the model and in ``paths["checkpoints"]``."""
    if paths["model"].exists() and not overwrite:
        raise CellPolError(f"{paths['model']} already exists; choose another output, or replace it.",
                           settings={"overwrite": True})
    ensure_folder(paths["model"].parent)
    for folder in (paths["model"].parent, paths["checkpoints"]):
        clean_stale_temporaries(folder)
