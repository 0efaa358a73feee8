"""Pause, cancel and the training clock, for step-by-step training jobs (generic helpers).

The Vox2Vox job uses them; :func:`app.training.trainer.train` does the same things inline and could use
them too. A job calls :func:`pause_point` before every step::

    clock = TrainingClock(elapsed_before)
    for step in range(start, total):
        yield from pause_point(step, total, pause, cancel, clock, save_if_needed)
        ...
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from app.core.errors import CancelledError
from app.core.jobs import CancelToken, check_cancel
from app.training.trainer import PauseToken, TrainEvent


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
