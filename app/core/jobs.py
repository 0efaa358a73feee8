"""One shape for every long job: a generator of typed events, one cancel token, one pause token.

Predicting one stack or a batch, evaluating, synthesizing, training, Vox2Vox training and generation are
generators that yield :class:`JobEvent` objects and return their result::

    def job(settings, cancel=None, pause=None) -> Iterator[JobEvent]:
        for k, item in enumerate(items):
            check_cancel(cancel)                 # between events, never in the middle of a write
            ...                                  # no prints, no Qt; CellPolError for what a user can cause
            yield Progress(k + 1, len(items), f"Scored {item}")
        yield Result(value)                      # the last event, also the generator's return value
        return value

The command line drives them with a progress bar (:func:`run`, with ``on_event``), the window through one
worker thread that relays the events to the main thread (superqt's ``GeneratorWorker`` model: yielded /
errored / finished). Event kinds:

:class:`Progress`  ``done`` of ``total`` and a short message; :class:`ItemDone` is the progress of a batch that
                   also carries the finished item (one image's record, one written volume).
:class:`Note`      a line worth showing (what the job decided: the device, the split, a resume).
:class:`JobWarning` something the user should know about the result (a skipped file, an unusual input).
:class:`Metrics`   numbers measured along the way (losses, validation scores).
:class:`Result`    the job's result, last.

Training yields :class:`app.training.trainer.TrainEvent`, a :class:`JobEvent` with a ``kind`` of its own
(step, epoch, checkpoint, ...); its ``done`` / ``total`` are the steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Optional

from app.core.errors import CancelledError

ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str = "") -> None:
    """A progress callback that does nothing."""


# ------------------------------------------------------------------------------------------
# Events
# ------------------------------------------------------------------------------------------
class JobEvent:
    """Base of every event a job yields. ``done`` / ``total`` are its progress where it has one."""

    done: Optional[int] = None
    total: Optional[int] = None
    message: str = ""


@dataclass
class Progress(JobEvent):
    """``done`` of ``total`` units of work (images, windows, volumes) are finished."""

    done: int
    total: int
    message: str = ""


@dataclass
class ItemDone(Progress):
    """One item of a batch is finished (``done`` of ``total``); ``item`` is what it gave."""

    item: Any = None


@dataclass
class Note(JobEvent):
    """A line worth showing as the job goes (what it decided, where it resumed)."""

    message: str


@dataclass
class JobWarning(JobEvent):
    """Something the user should know about the result."""

    message: str


@dataclass
class Metrics(JobEvent):
    """Numbers measured along the way; ``step`` where they belong to one."""

    values: dict[str, Any] = field(default_factory=dict)
    step: Optional[int] = None
    message: str = ""


@dataclass
class Result(JobEvent):
    """The job's result: the last event (also the generator's return value)."""

    value: Any = None
    message: str = ""


Job = Generator[JobEvent, None, Any]


def run(job: Iterator[JobEvent], on_event: Optional[Callable[[JobEvent], None]] = None) -> Any:
    """Drive ``job`` to its end, handing every event to ``on_event``; return its result.

    The result is the generator's return value, else the value of its last :class:`Result` event.
    Exceptions (``CellPolError``, :class:`~app.core.errors.CancelledError`) propagate.
    """
    result: Any = None
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value if stop.value is not None else result
        if isinstance(event, Result):
            result = event.value
        if on_event is not None:
            on_event(event)


def progress_to_callback(progress: Optional[ProgressCallback]) -> Callable[[JobEvent], None]:
    """An ``on_event`` that reports :class:`Progress` events to an old-style ``progress(done, total, message)``."""
    def on_event(event: JobEvent) -> None:
        if progress is not None and isinstance(event, Progress):
            progress(event.done, event.total, event.message)

    return on_event


# ------------------------------------------------------------------------------------------
# Cancel and pause
# ------------------------------------------------------------------------------------------
class CancelToken:
    """Thread-safe flag a job polls between events."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("Cancelled by the user.")


def check_cancel(token: Optional[CancelToken]) -> None:
    """Raise :class:`CancelledError` if ``token`` was cancelled (``None`` never cancels)."""
    if token is not None:
        token.raise_if_cancelled()


class PauseToken:
    """Thread-safe pause switch a job polls where it can pause (the pause counterpart of :class:`CancelToken`)."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait(self, cancel: Optional[CancelToken] = None, poll_seconds: float = 0.1) -> None:
        """Block while paused; raise :class:`CancelledError` if ``cancel`` fires meanwhile."""
        while not self._running.wait(poll_seconds):
            check_cancel(cancel)
