"""The one way the UI runs long jobs: in a worker thread, results and errors back on the main thread.

A thin layer over superqt's thread workers (``QRunnable`` on the global thread pool): jobs stay plain
functions or generators in ``app.core``/``app.training``; the UI connects to ``returned``, ``errored``,
``yielded`` and ``finished``.

Jobs of the :mod:`app.core.jobs` protocol (generators of :class:`~app.core.jobs.JobEvent`) start with
:func:`start_job`, which returns a :class:`JobHandle`: its signals arrive on the main thread, and it cancels and
pauses the job through the job's own tokens. The window shows every handle in its Jobs dock
(:mod:`app.ui.jobs_dock`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Optional

from PySide6 import QtCore
from PySide6.QtCore import Signal
from superqt.utils import WorkerBase, create_worker

from app.core.errors import CancelledError
from app.core.jobs import CancelToken, JobEvent, PauseToken, Progress, Result


_FROZEN: set[str] = set()


def freeze_heap(reason: str) -> None:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``), once per ``reason``.

    Call it after a big, permanent import (the window's libraries, torch). A full collection scans every object:
    with torch loaded that is about 230,000 objects and 0.1 s, and it struck while a thousand predicted vectors
    arrived, on the GUI thread (benchmarks/ui_stall.py). Frozen objects are the libraries' own, alive until the
    app ends anyway; later objects are collected as before. No collection runs first (it would be the very pause
    this avoids): what little garbage exists at that moment stays.
    """
    if reason not in _FROZEN:
        _FROZEN.add(reason)
        gc.freeze()


class MainThreadCollector(QtCore.QObject):
    """Python's cyclic garbage collection, run only on the GUI thread (:func:`install_main_thread_collector`).

    Automatic collection starts in whichever thread happens to allocate. Started in a job's worker thread, it can
    reach dead Qt objects whose deletion needs the GUI thread, while the GUI thread, deleting a widget, waits for
    the worker: a deadlock (PySide6; seen once in the test suite, a QMenu being deleted). So automatic collection
    is switched off and a timer on the GUI thread collects instead, generation by generation, whenever the
    allocation counts pass the thresholds Python would have used. Garbage made in worker threads is collected
    too, a moment later, on the GUI thread.
    """

    def __init__(self, interval_ms: int = 250, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self._timer.start()

    def check(self) -> None:
        """Collect the generations whose counts passed their thresholds (called by the timer)."""
        counts = gc.get_count()
        generation = -1
        for level in range(3):
            if counts[level] > self.thresholds[level]:
                generation = level
            else:
                break
        if generation >= 0:
            gc.collect(generation)

    def stop(self) -> None:
        """Stop the timer and give collection back to Python (as it was before)."""
        self._timer.stop()
        if self._was_enabled:
            gc.enable()
        global _COLLECTOR
        if _COLLECTOR is self:
            _COLLECTOR = None
        self.deleteLater()


_COLLECTOR: Optional[MainThreadCollector] = None


def install_main_thread_collector(app: QtCore.QCoreApplication) -> MainThreadCollector:
    """Collect garbage only on the GUI thread from now until ``app`` quits (:class:`MainThreadCollector`).

    Call it on the GUI thread, once the application exists; a second call returns the collector already running.
    """
    global _COLLECTOR
    if QtCore.QThread.currentThread() != app.thread():
        raise RuntimeError("install_main_thread_collector must be called on the GUI thread.")
    if _COLLECTOR is None:
        _COLLECTOR = MainThreadCollector(parent=app)
        app.aboutToQuit.connect(_COLLECTOR.stop)
    return _COLLECTOR


def run_in_thread(
    function: Callable[..., Any],
    *args: Any,
    on_result: Optional[Callable[[Any], None]] = None,
    on_error: Optional[Callable[[BaseException], None]] = None,
    on_yield: Optional[Callable[[Any], None]] = None,
    on_finished: Optional[Callable[[], None]] = None,
    **kwargs: Any,
) -> WorkerBase:
    """Start ``function(*args, **kwargs)`` in a worker thread and return the worker.

    Callbacks run on the main (GUI) thread. A generator function reports each ``yield`` to ``on_yield``.
    """
    worker = create_worker(function, *args, _start_thread=False, **kwargs)
    if on_result is not None:
        worker.returned.connect(on_result)
    if on_error is not None:
        worker.errored.connect(on_error)
    if on_yield is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yield)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


# ------------------------------------------------------------------------------------------
# Jobs: a generator of JobEvents (app.core.jobs) with its tokens, driven in a worker thread
# ------------------------------------------------------------------------------------------
JobFactory = Callable[[CancelToken, PauseToken], Iterator[JobEvent]]

#: Handles of jobs that have not ended: the handle (and so its worker) lives until ``ended`` even when nobody
#: else keeps a reference.
_LIVE: set["JobHandle"] = set()


@dataclass
class _Outcome:
    """How the job ended, handed back as the worker's return value (never as an exception: see ``_drive``)."""

    value: Any = None
    error: Optional[BaseException] = None


def _drive(factory: JobFactory, cancel: CancelToken, pause: PauseToken) -> Generator[JobEvent, None, _Outcome]:
    """Run ``factory(cancel, pause)`` in the worker thread, passing its events on.

    Every exception is caught here and returned: superqt's ``GeneratorWorker`` treats a ``RuntimeError``
    raised by the generator as "the worker was deleted" and then emits neither ``errored`` nor ``finished``
    (so a CUDA out-of-memory error, a RuntimeError, would leave the job running forever in the UI).
    """
    try:
        value = yield from factory(cancel, pause)
        return _Outcome(value=value)
    except Exception as exc:  # noqa: BLE001 - handed to the main thread, which tells user errors from bugs
        return _Outcome(error=exc)


class JobHandle(QtCore.QObject):
    """A running job as the UI sees it (made by :func:`start_job`).

    Signals are emitted on the main thread, in this order: ``event`` for every event the job yields, then one
    of ``succeeded`` (the job's result: the generator's return value, else its last :class:`Result`'s
    value), ``failed`` (the exception: a :class:`CellPolError` is the user's to fix, anything else is a bug)
    or ``cancelled`` (the job raised :class:`CancelledError`), then ``ended``.

    Attributes
    ----------
    title : str
    started : float
        ``time.monotonic()`` when the job was started.
    can_pause : bool
        Whether the job polls its pause token (:meth:`pause` does nothing otherwise).
    status : str
        ``"running"``, ``"paused"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
    last_progress : Progress or None
        The latest progress (``done`` / ``total``) any event carried; a :class:`TrainEvent`'s steps too.
    result, error : object
        The result (after ``succeeded``) or the exception (after ``failed``).
    retry : callable or None
        Set by whoever started the job when it can be started again as it was (after a change of device, for
        example); it returns the new handle.
    """

    event = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    ended = Signal()

    def __init__(self, title: str, can_pause: bool = False, parent: Optional[QtCore.QObject] = None) -> None:
        super().__init__(parent)
        self.title = title
        self.can_pause = can_pause
        self.started = time.monotonic()
        self.finished_at: Optional[float] = None
        self.status = "running"
        self.last_progress: Optional[Progress] = None
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.cancel_token = CancelToken()
        self.pause_token = PauseToken()
        self._last_result: Any = None
        self._paused_since: Optional[float] = None
        self._paused_total = 0.0
        self._worker: Optional[WorkerBase] = None
        self.retry: Optional[Callable[[], Any]] = None
        self._ended = False

    # --- control (main thread) ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Not ended yet (running or paused)."""
        return self.status in ("running", "paused")

    def cancel(self) -> None:
        """Ask the job to stop at its next check (a paused job wakes up to stop)."""
        if self.running:
            self.cancel_token.cancel()

    def pause(self) -> None:
        """Pause at the job's next pause point (only where ``can_pause``)."""
        if self.can_pause and self.status == "running":
            self.pause_token.pause()
            self._paused_since = time.monotonic()
            self.status = "paused"

    def resume(self) -> None:
        if self.status == "paused":
            self.pause_token.resume()
            self._end_pause()
            self.status = "running"

    def _end_pause(self) -> None:
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None

    # --- time -----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds the job has been working (paused time left out)."""
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        paused = self._paused_total + (end - self._paused_since if self._paused_since is not None else 0.0)
        return max(0.0, end - self.started - paused)

    def remaining(self) -> Optional[float]:
        """Estimated seconds left, from the progress so far at the average pace (None before any progress)."""
        progress = self.last_progress
        if not self.running or progress is None or not progress.total or not progress.done:
            return None
        return self.elapsed() * max(0, progress.total - progress.done) / progress.done

    # --- from the worker (main thread) ------------------------------------------------------------
    def _on_yielded(self, event: Any) -> None:
        if isinstance(event, Result):
            self._last_result = event.value
        done, total = getattr(event, "done", None), getattr(event, "total", None)
        if done is not None and total is not None:
            # TrainEvent carries its steps as done/total properties; keep one Progress shape for the views.
            self.last_progress = event if type(event) is Progress else Progress(int(done), int(total),
                                                                                getattr(event, "message", ""))
        self.event.emit(event)

    def _on_returned(self, outcome: _Outcome) -> None:
        self._end_pause()
        self.finished_at = time.monotonic()
        if outcome.error is None:
            self.result = outcome.value if outcome.value is not None else self._last_result
            self.status = "done"
            self.succeeded.emit(self.result)
        elif isinstance(outcome.error, CancelledError):
            self.status = "cancelled"
            self.cancelled.emit()
        else:
            self.error = outcome.error
            self.status = "failed"
            self.failed.emit(outcome.error)

    def _on_finished(self) -> None:
        if self.running:  # the worker ended without an outcome (it should not): never leave a job "running"
            self._on_returned(_Outcome(error=RuntimeError("The job's worker thread ended unexpectedly.")))
        self._worker = None
        _LIVE.discard(self)
        self._ended = True
        self.ended.emit()

    def after_end(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once the job has ended (now, if it has): e.g. start it again."""
        if self._ended:
            callback()
        else:
            self.ended.connect(callback)


def start_job(title: str, factory: JobFactory, *, can_pause: bool = False,
              parent: Optional[QtCore.QObject] = None) -> JobHandle:
    """Start ``factory(cancel, pause)`` (a job generator, :mod:`app.core.jobs`) in a worker thread.

    Parameters
    ----------
    title : str
        What the Jobs dock calls it.
    factory : callable
        ``factory(cancel_token, pause_token)`` returns the job's generator; it is called in the worker thread.
    can_pause : bool
        The job polls the pause token (training); otherwise :meth:`JobHandle.pause` does nothing.
    parent : QObject, optional

    Returns
    -------
    JobHandle
        Connect to its signals right away: the first events arrive once control returns to the event loop.
    """
    handle = JobHandle(title, can_pause=can_pause, parent=parent)
    # Garbage is collected on the GUI thread only while jobs run (MainThreadCollector; run_app installs it at
    # start-up, this covers a window run without run_app): a collection that starts in the worker thread and
    # reaches a dead Qt object deadlocks with the GUI thread's own deletions.
    app = QtCore.QCoreApplication.instance()
    if app is not None:
        install_main_thread_collector(app)
    worker = create_worker(_drive, factory, handle.cancel_token, handle.pause_token, _start_thread=False)
    worker.yielded.connect(handle._on_yielded)
    worker.returned.connect(handle._on_returned)
    worker.finished.connect(handle._on_finished)
    handle._worker = worker
    _LIVE.add(handle)
    worker.start()
    return handle
