"""The one way the UI runs long jobs: in a worker thread, results and errors back on the main thread.

A thin layer over superqt's thread workers (``QRunnable`` on the global thread pool): jobs stay plain
functions or generators in ``app.core``/``app.training``; the UI connects to ``returned``, ``errored``,
``yielded`` and ``finished``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from superqt.utils import WorkerBase, create_worker


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
