"""Batches on a Dask cluster: one image (or one simulated volume) per task, on many processes or machines.

``cellpol predict FOLDER --workers N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes on
this computer; ``--scheduler tcp://host:8786`` sends the tasks to a running Dask cluster (a campus cluster
started with dask-jobqueue, say). Either way:

- **One image per task**, and each task does what the serial batch does per image
  (:func:`app.core.batch.predict_image`), so the outputs are the same files. A task gets plain values (the
  image's path, its output path, a :class:`~app.core.batch.PredictorSpec`, the read options); each worker
  process builds the predictor once and keeps it for the images that follow (:func:`predict_task`).
- **Torch threads per worker** are set so workers × threads do not exceed the cores: ``cores // N`` on a
  local cluster, and on a remote worker its CPUs divided by the tasks it runs at once (Dask's nanny starts
  workers with ``OMP_NUM_THREADS=1``, which would leave torch on one thread).
- **A failed image is tried once more** (a new task, perhaps on another worker), then reported in the
  summary like any failed image, while the others go on. A write that fails for a reason no later image
  escapes (full disk, read-only folder) stops the batch, as in the serial batch.
- **Progress**: one :class:`~app.core.jobs.ItemDone` per image as its task completes (in completion order);
  the summary CSV lists the images in input order and is rewritten after each.
- **Resume**: outputs already there are checked here, before any task is sent, and skipped as in the serial
  batch.
- **Cancel**: the cancel token (or closing the job, or Ctrl+C) cancels the tasks not yet done and closes a
  local cluster the job started. Outputs are written atomically, so a cancelled batch leaves whole files.

A remote cluster's workers must reach the images, the model files and the output folder **by the same
paths** as this computer (shared storage), and run the same version of CellPol Studio.

The same holds for synthetic data sets (:func:`synthesize_cluster_job`): one volume per task, each written by
:func:`app.core.simulate._dataset.synthesize_item`, the function the serial job calls, so the files are the same.

Dask is imported only when a cluster job runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from app.core.batch import (
    SUMMARY_NAME,
    BatchRecord,
    PredictorSpec,
    ReadOptions,
    _existing_output,
    _stop_batch,
    describe_provenance,
    plan_outputs,
    predict_image,
    write_summary,
)
from app.core.errors import CellPolError
from app.core.fileutil import clean_stale_temporaries, ensure_folder
from app.core.jobs import CancelToken, ItemDone, Job, JobEvent, JobWarning, Note, Result, check_cancel
from app.core.jobs import run as run_job

#: Seconds between looks at the cancel token while no task has finished.
POLL_SECONDS = 0.1
#: Seconds to wait for a remote scheduler to answer.
CONNECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class ClusterOptions:
    """Where a batch runs: a local cluster of ``workers`` processes, or the Dask scheduler at ``scheduler``.

    Parameters
    ----------
    workers : int, optional
        Start a :class:`distributed.LocalCluster` of this many worker processes (one task at a time each).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); its workers must see the files by the same
        paths.
    torch_threads : int, optional
        Torch threads per worker process. Default: the cores divided by ``workers`` locally; on a remote
        worker, its CPUs divided by the tasks it runs at once.
    retries : int
        How many more times a failed image is tried (default once).
    """

    workers: Optional[int] = None
    scheduler: Optional[str] = None
    torch_threads: Optional[int] = None
    retries: int = 1

    def check(self) -> None:
        """Raise :class:`CellPolError` for options that cannot work (both or neither place, no workers)."""
        if (self.workers is None) == (self.scheduler is None):
            raise CellPolError("Give either a number of local workers or the address of a Dask scheduler, "
                               "not both.", settings={"workers": None, "scheduler": None})
        if self.workers is not None and int(self.workers) < 1:
            raise CellPolError(f"The number of workers must be at least 1, got {self.workers}.",
                               settings={"workers": None})
        if self.torch_threads is not None and int(self.torch_threads) < 1:
            raise CellPolError(f"Threads per worker must be at least 1, got {self.torch_threads}.",
                               settings={"torch_threads": None})
        if int(self.retries) < 0:
            raise CellPolError(f"Retries must be 0 or more, got {self.retries}.")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class ClusterSession:
    """An open connection: the client, the torch threads to give each task (None: the worker decides), and
    a line saying where the batch runs."""

    client: Any
    torch_threads: Optional[int]
    description: str


@contextlib.contextmanager
def open_cluster(options: ClusterOptions) -> Iterator[ClusterSession]:
    """Start a local cluster, or connect to a running one; on leaving, close the client (and the local
    cluster it started, with its worker processes).

    The local cluster's workers are processes (torch work holds the GIL in places): :func:`start_local_cluster`.

    Raises
    ------
    CellPolError
        Options that cannot work, Dask not installed, a scheduler that does not answer, a local cluster that
        does not start.
    """
    options.check()
    try:
        from distributed import Client
    except ImportError as exc:
        raise CellPolError(f"Running on a cluster needs Dask's distributed scheduler ({exc}): install "
                           "dask[distributed].") from None
    with _quiet_dask_logs():
        cluster = None
        if options.scheduler is not None:
            try:
                client = Client(options.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise CellPolError(f"Cannot reach the Dask scheduler at {options.scheduler} ({exc}). Start the "
                                   "cluster first and give the address it prints (tcp://host:8786).",
                                   settings={"scheduler": None}) from None
            workers = len(client.scheduler_info().get("workers", {}))
            threads = options.torch_threads
            description = (f"Dask scheduler {options.scheduler}: {workers} worker(s) now"
                           + (f", {threads} torch thread(s) per task" if threads else ""))
        else:
            workers = int(options.workers)
            threads = options.torch_threads or max(1, available_cores() // workers)
            try:
                cluster = start_local_cluster(workers)
                client = Client(cluster)
            except (OSError, TimeoutError, RuntimeError) as exc:
                if cluster is not None:
                    cluster.close()
                raise CellPolError(f"Could not start a local Dask cluster of {workers} workers ({exc}).") from None
            description = (f"Local Dask cluster: {workers} worker process(es), {threads} torch thread(s) each "
                           f"({available_cores()} cores)")
        try:
            yield ClusterSession(client, threads, description)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def start_local_cluster(workers: int) -> Any:
    """A :class:`distributed.LocalCluster` of ``workers`` processes for torch work, one task at a time each.

    No memory limit (Dask would otherwise restart a worker that a large image brings near its share of memory,
    where the serial batch would have finished it); no dashboard, and its health server on a free local port
    rather than 8787; its logs and its workers' kept to errors; Ctrl+C is the command's, not the workers'
    (:func:`dask_setup`).
    """
    from distributed import LocalCluster

    return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR,
                        memory_limit=0, preload=[__name__])


def dask_setup(worker: Any) -> None:
    """Run by each local worker process as it starts (Dask's preload hook): Ctrl+C is left to ``cellpol``.

    The terminal sends Ctrl+C to every process of the command, the workers too; the command cancels the tasks
    and closes the cluster, so a worker needs no interrupt of its own (which would print its traceback)."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not this process's main thread: leave it
        pass


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Dask's own log lines (connections, workers starting and closing) out of the user's console; its errors
    still show."""
    logger = logging.getLogger("distributed")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


# ------------------------------------------------------------------------------------------
# What runs on a worker
# ------------------------------------------------------------------------------------------
_PREDICTORS: dict[PredictorSpec, tuple[Any, dict[str, Any]]] = {}
_PREDICTORS_LOCK = threading.Lock()


def worker_predictor(spec: PredictorSpec) -> tuple[Any, dict[str, Any]]:
    """The predictor and provenance of ``spec``, built once per process and kept (a worker's model cache)."""
    with _PREDICTORS_LOCK:
        if spec not in _PREDICTORS:
            _PREDICTORS[spec] = spec.build()
        return _PREDICTORS[spec]


def _use_torch_threads(spec: PredictorSpec, torch_threads: Optional[int]) -> None:
    """Give torch ``torch_threads`` threads in this worker (default: its CPUs over the tasks it runs at once)."""
    if spec.method != "cellpol":
        return
    import torch

    if torch_threads is None:
        try:
            from distributed import get_worker

            slots = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            slots = 1
        torch_threads = max(1, available_cores() // max(1, int(slots)))
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(int(torch_threads))


def probe_task(spec: PredictorSpec, torch_threads: Optional[int] = None) -> dict[str, Any]:
    """Build the predictor on a worker (it stays in that worker's cache): its provenance, or the error.

    Returns ``{"provenance": dict}`` or ``{"error": message, "settings": dict}``: a plain dict, since an
    exception with arguments of its own may not travel back whole.
    """
    _use_torch_threads(spec, torch_threads)
    try:
        return {"provenance": worker_predictor(spec)[1]}
    except CellPolError as exc:
        return {"error": str(exc), "settings": dict(exc.settings)}


def predict_task(image: Any, target: Path, spec: PredictorSpec, read_options: Optional[ReadOptions] = None,
                 overwrite: bool = False, torch_threads: Optional[int] = None, attempt: int = 1) -> BatchRecord:
    """One image of a cluster batch, on a worker: :func:`~app.core.batch.predict_image` with this worker's
    predictor for ``spec``. Plain arguments, importable by name, so Dask can send it anywhere.

    Returns
    -------
    BatchRecord
        Its ``attempts`` is ``attempt``; a predictor that cannot be built is a failed record, not an exception.
    """
    _use_torch_threads(spec, torch_threads)
    try:
        predictor, provenance = worker_predictor(spec)
    except CellPolError as exc:
        record = BatchRecord(image, None, "failed", error=str(exc), settings=exc.settings)
    else:
        record = run_job(predict_image(image, Path(target), predictor, read_options, provenance, overwrite))
    record.attempts = int(attempt)
    return record


# ------------------------------------------------------------------------------------------
# Sending tasks and collecting them
# ------------------------------------------------------------------------------------------
@dataclass
class _Task:
    """One item: the function a worker runs and its arguments (``attempt`` is added), and its name."""

    function: Callable[..., Any]
    args: tuple
    label: str


@dataclass
class _Outcome:
    """How an item ended: its index, its value or the error that stopped it, and the attempts it took."""

    index: int
    value: Any
    error: Optional[str]
    attempts: int


def _run_tasks(client: Any, tasks: Sequence[_Task], cancel: Optional[CancelToken], retries: int,
               failed: Callable[[Any], bool]) -> Iterator[Any]:
    """Submit every task; yield an :class:`_Outcome` per item as it completes, a :class:`Note` per retry.

    An item whose task raised, or whose value ``failed(value)`` says failed, is submitted again (``retries``
    times at most) before its last outcome is yielded. On leaving early (cancel, an error, the caller closing
    the generator) the tasks not yet done are cancelled.
    """
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:8]
    pending: dict[Any, tuple[int, int]] = {}
    completed = as_completed()

    def submit(index: int, attempt: int) -> None:
        task = tasks[index]
        future = client.submit(task.function, *task.args, attempt=attempt, pure=False,
                               key=f"cellpol-{run_id}-{index}-{_key_label(task.label)}-try{attempt}")
        pending[future] = (index, attempt)
        completed.add(future)

    for index in range(len(tasks)):
        submit(index, 1)
    try:
        while not completed.is_empty():
            check_cancel(cancel)
            finished = completed.next_batch(block=False)
            if not finished:
                time.sleep(POLL_SECONDS)
                continue
            for future in finished:
                index, attempt = pending.pop(future)
                value, error = _outcome_of(future)
                if (error is not None or failed(value)) and attempt <= retries:
                    reason = error if error is not None else getattr(value, "error", "failed")
                    yield Note(f"{tasks[index].label}: failed ({reason}); trying it once more")
                    submit(index, attempt + 1)
                    continue
                yield _Outcome(index, value, error, attempt)
    finally:
        if pending:
            client.cancel(list(pending))


def _outcome_of(future: Any) -> tuple[Any, Optional[str]]:
    """``(value, None)`` for a task that returned, ``(None, message)`` for one that raised or was lost."""
    if future.status == "finished":
        return future.result(), None
    if future.status == "error":
        exc = future.exception()
        return None, f"{type(exc).__name__}: {exc}"
    return None, f"the task was {future.status} (a worker lost?)"


# ------------------------------------------------------------------------------------------
# The jobs
# ------------------------------------------------------------------------------------------
def predict_batch_cluster(
    images: Sequence[Any],
    out_dir: str | os.PathLike,
    spec: PredictorSpec,
    cluster: ClusterOptions,
    read_options: Optional[ReadOptions] = None,
    overwrite: bool = False,
    cancel: Optional[CancelToken] = None,
    summary: Optional[str | os.PathLike] = SUMMARY_NAME,
) -> Job:
    """:func:`app.core.batch.predict_batch` on a Dask cluster: one task per image, the same outputs.

    A job (:mod:`app.core.jobs`): :class:`~app.core.jobs.Note` lines (where it runs, the model), one
    :class:`~app.core.jobs.ItemDone` per image as it finishes (images whose output exists first, then in the
    order tasks complete), and the records in input order as result. A failed image is tried
    ``cluster.retries`` more times before it is reported (its record's ``attempts`` says how many).

    Parameters
    ----------
    images : sequence of path or SeriesItem
    out_dir : path
        Output folder; a remote cluster's workers must reach it by the same path.
    spec : PredictorSpec
        What each worker builds once and predicts with.
    cluster : ClusterOptions
    read_options : ReadOptions, optional
    overwrite : bool
    cancel : CancelToken, optional
        Cancels the tasks not yet done and closes a local cluster the job started.
    summary : path, optional
        As in :func:`~app.core.batch.predict_batch`; listed in input order.

    Raises
    ------
    CellPolError
        The cluster cannot be started or reached, or no worker can build the predictor (one message, before
        any image is sent).
    OutputError
        A write failed for a reason no later image escapes (after the summary of the images done).
    """
    cluster.check()
    read_options = read_options or ReadOptions()
    out_dir = ensure_folder(out_dir)
    clean_stale_temporaries(out_dir)
    summary_path = (out_dir / summary) if summary is not None else None
    plan = plan_outputs(images, out_dir)
    records: dict[int, BatchRecord] = {}

    def in_order() -> list[BatchRecord]:
        return [records[index] for index in sorted(records)]

    def finish(index: int, record: BatchRecord) -> ItemDone:
        records[index] = record
        if summary_path is not None:
            write_summary(in_order(), summary_path)
        return ItemDone(len(records), len(plan), f"{record.status}: {Path(record.image).name}", item=record)

    todo = []
    for index, (image, target) in enumerate(plan):  # resume: what is done needs no task
        check_cancel(cancel)
        if target.exists() or target.is_symlink():
            existing = _existing_output(image, target, overwrite)
            if existing is not None:
                yield finish(index, existing)
                continue
        todo.append(index)
    if todo:
        with open_cluster(cluster) as session:
            yield Note(session.description)
            provenance = _probe(session, spec)
            yield Note(describe_provenance(provenance))
            tasks = [_Task(predict_task, (plan[i][0], plan[i][1], spec, read_options, overwrite,
                                          session.torch_threads), Path(plan[i][0]).name) for i in todo]
            outcomes = _run_tasks(session.client, tasks, cancel, cluster.retries,
                                  failed=lambda record: record.status == "failed")
            with contextlib.closing(outcomes):  # its tasks cancelled while the client is open, however this ends
                for outcome in outcomes:
                    if isinstance(outcome, JobEvent):
                        yield outcome
                        continue
                    index = todo[outcome.index]
                    record = outcome.value
                    if outcome.error is not None:
                        record = BatchRecord(plan[index][0], None, "failed",
                                             error=f"{plan[index][0]}: the task failed on a worker: {outcome.error}")
                    record.attempts = outcome.attempts
                    if record.status == "failed" and outcome.attempts > 1:
                        record.error = f"{record.error} (failed on all {outcome.attempts} attempts)"
                    if record.stops_batch:
                        yield from _stop_batch(in_order(), record, len(plan), summary_path)
                    yield finish(index, record)
    ordered = in_order()
    yield Result(ordered, f"{sum(r.status == 'ok' for r in ordered)} of {len(plan)} image(s) predicted")
    return ordered


def _probe(session: ClusterSession, spec: PredictorSpec) -> dict[str, Any]:
    """Build the predictor on one worker first: one clear error (a missing model, workers that cannot run
    CellPol Studio) instead of the same failure for every image. Returns its provenance."""
    future = session.client.submit(probe_task, spec, session.torch_threads, pure=False,
                                   key=f"cellpol-probe-{uuid.uuid4().hex[:8]}")
    try:
        answer = future.result()
    except Exception as exc:  # noqa: BLE001 - whatever a worker raised, say it in one line
        raise CellPolError(f"The cluster's workers cannot run CellPol Studio's prediction ({type(exc).__name__}: "
                           f"{exc}). They need the same version installed, and the model files and images at "
                           "the same paths.") from None
    if "error" in answer:
        raise CellPolError(f"On the cluster's workers: {answer['error']}", settings=answer.get("settings"))
    return answer["provenance"]


def _key_label(name: str) -> str:
    """A file name made safe for a Dask task key (no brackets, commas or quotes)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:60]


def synthesize_cluster_job(
    out_dir: str | os.PathLike,
    n: int,
    cluster: ClusterOptions,
    shape: tuple[int, int, int] = (64, 256, 256),
    voxel_size: Optional[Sequence[float]] = None,
    preset: str = "confocal",
    seed: int = 0,
    cancel: Optional[CancelToken] = None,
    start_index: int = 0,
    vary_samples: bool = False,
    **overrides: Any,
) -> Job:
    """:func:`app.core.simulate.synthesize_job` on a Dask cluster: one volume per task, the same files.

    Item ``k`` is written by :func:`app.core.simulate._dataset.synthesize_item` from its own seed, as in the serial
    job, so a cluster run writes what a serial run with the same options writes. A volume whose task fails is
    tried ``cluster.retries`` more times, then reported as a :class:`~app.core.jobs.JobWarning`; the others go
    on. The result is the TIFF paths written, in index order (fewer than ``n`` when some failed).

    Raises
    ------
    CellPolError
        Invalid options, volumes too large for this computer's memory (checked before anything is sent), a
        cluster that cannot be started or reached.
    """
    from app.core.simulate._dataset import synthesis_base, synthesize_item

    cluster.check()
    base = synthesis_base(n, shape, voxel_size, preset, **overrides)
    out = ensure_folder(out_dir)
    clean_stale_temporaries(out)
    indices = list(range(start_index, start_index + int(n)))
    tasks = [_Task(synthesize_item, (str(out), base, seed, k, vary_samples, tuple(overrides)), f"synth_{k:04d}")
             for k in indices]
    written: dict[int, Path] = {}
    failed = 0
    if tasks:
        with open_cluster(cluster) as session:
            yield Note(session.description)
            outcomes = _run_tasks(session.client, tasks, cancel, cluster.retries, failed=lambda value: False)
            with contextlib.closing(outcomes):
                for outcome in outcomes:
                    if isinstance(outcome, JobEvent):
                        yield outcome
                        continue
                    label = tasks[outcome.index].label
                    if outcome.error is not None:
                        failed += 1
                        yield JobWarning(f"{label} failed on all {outcome.attempts} attempts: {outcome.error}")
                        message = f"{label}: failed"
                        item = None
                    else:
                        item, n_pairs = outcome.value
                        written[outcome.index] = Path(item)
                        message = f"{label}: {n_pairs} pairs"
                    yield ItemDone(len(written) + failed, len(tasks), message, item=item)
    paths = [written[index] for index in sorted(written)]
    yield Result(paths, f"{len(paths)} volume(s) in {out}" + (f", {failed} failed" if failed else ""))
    return paths
