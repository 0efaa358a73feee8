"""Batch prediction: many images in, one ``<stem>.pred.vectors.csv`` (+ sidecar) per image out.

Predictions have a name of their own, so they never pass for annotations (``<stem>.vectors.csv``), and
a file that holds annotations is never written over, even when overwriting is asked for. Every input
gets its own output: images whose names would give the same output name (``a/x.tif`` and ``b/x.tif``,
``x.tif`` and ``x.ome.tif``) are told apart by a stable rule (:func:`plan_outputs`).

A bad file is reported and skipped while the rest of the batch goes on. An image whose output exists,
is complete (its CSV agrees with its sidecar) and was made from the same image (path and size recorded
in the sidecar) is skipped unless ``overwrite`` is set, so an interrupted batch resumes. The summary CSV
is rewritten after every image, so it lists every image done even when the batch stops early (a kill,
a full disk).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from app.core.errors import CancelledError, CellPolError, OutputError
from app.core.fileutil import atomic_write_text, clean_stale_temporaries, ensure_folder
from app.core.imageio import IMAGE_SUFFIXES, read_volume
from app.core.jobs import CancelToken, ItemDone, Job, Result, check_cancel
from app.core.pairs import HUMAN_SOURCES, PairSet, prediction_name, read_pairs, vectors_content, write_pairs
from app.core.volume import Volume

#: What batch prediction calls per image: a volume in, pairs out. An object whose ``job(volume, cancel)`` is a
#: job (:mod:`app.core.jobs`) returning the pairs is driven as one, so its progress inside an image reaches
#: the caller and a cancel stops it mid-image.
PairPredictor = Callable[[Volume], PairSet]

SUMMARY_NAME = "predict_summary.csv"
#: Errors after which no later image of the batch could be written either: the batch stops.
_FOLDER_WIDE_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES,
                       errno.EPERM}


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.ome.tif`` → ``a``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):  # ".ome.tif" before ".tif"
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass(frozen=True)
class SeriesItem:
    """One series (scene) of a multi-series file (LIF, CZI, ND2, OME-TIFF, OME-Zarr) as an image of a batch.

    Its output is named ``<stem>_s<index>-<series name>`` so each series of a file gets its own; it reads as
    its file's path (``os.fspath``), and ``str()`` names the series too (summary, messages).
    """

    path: Path
    index: int
    name: str = ""

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return f"{self.path} [series {self.index}{': ' + self.name if self.name else ''}]"

    @property
    def suffix(self) -> str:
        """``_s<index>-<name>``, the name reduced to letters, digits, ``.``, ``_`` and ``-`` (at most 40)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("._-")[:40]
        return f"_s{self.index}" + (f"-{safe}" if safe else "")


def plan_outputs(images: Sequence[Path], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """One distinct output per distinct input: ``[(image, output), ...]`` in input order.

    The same file given twice is predicted once. Names are compared without case (two names that differ
    only in case are one file on Windows and macOS). Where stems collide, each image of the collision is
    named by its whole file name (``x.ome.tif.pred.vectors.csv``); where that still collides (the same
    name in two folders), by its stem and the first 8 hex digits of the SHA-1 of its absolute path
    (``x-1a2b3c4d.pred.vectors.csv``). The rule depends only on the inputs, so a rerun finds its outputs.
    A :class:`SeriesItem` adds its :attr:`~SeriesItem.suffix` to the name.
    """
    unique: list[Any] = []
    seen: set[str] = set()
    for image in images:
        key = os.path.normcase(str(Path(image).resolve())) + _series_suffix(image)
        if key not in seen:
            seen.add(key)
            unique.append(image if isinstance(image, SeriesItem) else Path(image))
    names = [image_stem(image) + _series_suffix(image) for image in unique]
    for rule in (lambda image: Path(image).name + _series_suffix(image), _hashed_name):
        counts: dict[str, int] = {}
        for name in names:
            counts[name.lower()] = counts.get(name.lower(), 0) + 1
        clashing = {name for name, count in counts.items() if count > 1}
        if not clashing:
            break
        names = [rule(image) if name.lower() in clashing else name for image, name in zip(unique, names)]
    return [(image, Path(out_dir) / prediction_name(name)) for image, name in zip(unique, names)]


def _hashed_name(image: Path) -> str:
    digest = hashlib.sha1(str(Path(image).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{image_stem(image)}-{digest}{_series_suffix(image)}"


def _series_suffix(image: Any) -> str:
    return image.suffix if isinstance(image, SeriesItem) else ""


@dataclass
class BatchRecord:
    """What happened to one image of a batch."""

    image: Path
    output: Optional[Path]
    status: str  # "ok", "skipped" (output existed) or "failed"
    n_vectors: int = 0
    mean_length_um: float = math.nan
    seconds: float = 0.0
    error: str = ""
    #: The settings the error asks to change (:attr:`CellPolError.settings`).
    settings: dict[str, Any] = field(default_factory=dict)
    #: The ``errno`` of a write that failed (``None`` otherwise): a full disk or a read-only folder stops the batch.
    errno: Optional[int] = None
    #: How many times the image was tried (a cluster batch tries a failed image once more).
    attempts: int = 1

    @property
    def stops_batch(self) -> bool:
        """Whether no later image could be written either (full disk, read-only or forbidden folder)."""
        return self.errno in _FOLDER_WIDE_ERRORS


@dataclass
class ReadOptions:
    """How to read each image: channel roles, voxel size and axes given by the user (or None)."""

    voxel_size: Optional[Sequence[float]] = None
    axes: Optional[str] = None
    nucleus_channel: Optional[int] = None
    golgi_channel: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self, path: Path) -> Volume:
        series = {"scene": path.index} if isinstance(path, SeriesItem) else {}
        volume = read_volume(
            Path(path),
            voxel_size=self.voxel_size,
            axes=self.axes,
            nucleus_channel=self.nucleus_channel,
            golgi_channel=self.golgi_channel,
            **{**self.extra, **series},
        )
        # Validate roles now so a bad channel index is one clear message per image.
        return volume.with_roles(self.nucleus_channel, self.golgi_channel)


@dataclass(frozen=True)
class PredictorSpec:
    """How to make a batch's predictor, in plain values: what a cluster task receives instead of the model.

    Each worker of a cluster batch builds its predictor from this once and keeps it
    (:func:`app.core.cluster.predict_task`); the serial batch builds the same one, so both write the same files.

    Parameters
    ----------
    method : {"cellpol", "classic"}
        The learned model(s) or the classic Otsu peer.
    models : tuple of str
        Model ``.json`` files (several: an ensemble); empty: the bundled starter models (3D for stacks, 2D
        for single planes). Give absolute paths where workers start elsewhere.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps`` (:func:`app.core.device.select_device`), resolved where it is built.
    window : tuple of int, optional
        Largest sliding window ``(z, y, x)`` (:class:`app.core.inference.Predictor`).
    batch_size : int, optional
        Windows per network call.
    tta : bool
        Test-time augmentation: the network's outputs averaged over the image and its mirror images
        (:class:`app.core.inference.Predictor`, ``tta``; about 4× the network time).
    """

    method: str = "cellpol"
    models: tuple[str, ...] = ()
    device: str = "auto"
    window: Optional[tuple[int, int, int]] = None
    batch_size: Optional[int] = None
    tta: bool = False

    def build(self) -> tuple[PairPredictor, dict[str, Any]]:
        """The predictor and the provenance its outputs' sidecars carry.

        Raises
        ------
        CellPolError
            Missing or damaged model files, no starter model installed, a device that is not there.
        """
        if self.method == "classic":
            from dataclasses import asdict

            from app.core.classic import ClassicParams

            params = ClassicParams()
            return _ClassicPredictor(params), {"method": "classic", "parameters": asdict(params)}
        if self.method != "cellpol":
            raise CellPolError(f"Unknown method {self.method!r}; choose cellpol or classic.", settings={"method": None})
        from app.core.inference import Predictor, StarterPredictor

        options = {"window": self.window, "batch_size": self.batch_size, "tta": self.tta}
        if not self.models:
            predictor = StarterPredictor(self.device, **options)
        else:
            predictor = Predictor.from_files(list(self.models), self.device, **options)
        return predictor, predictor.provenance()


@dataclass(frozen=True)
class _ClassicPredictor:
    """The classic peer with fixed parameters, as a predictor (a plain object, so it can travel)."""

    params: Any

    def __call__(self, volume: Volume) -> PairSet:
        from app.core.classic import predict_classic

        return predict_classic(volume, self.params)


def describe_provenance(provenance: dict[str, Any]) -> str:
    """One line naming what predicts: ``Model: name (3D images), ... on cpu`` or ``Method: classic``."""
    if provenance.get("method") != "cellpol":
        return f"Method: {provenance.get('method', 'unknown')}"
    names = ", ".join(m["name"] + (f" ({m['images']} images)" if "images" in m else "")
                      for m in provenance.get("models", []))
    return f"Model: {names} on {provenance.get('device', '?')}"


def image_identity(image: Path) -> dict[str, Any]:
    """What a prediction's sidecar records of its image, for the resume check: absolute path and size."""
    series = {"series": image.index} if isinstance(image, SeriesItem) else {}
    image = Path(image)
    try:
        size = image.stat().st_size
    except OSError:
        size = None
    return {"image": str(image.resolve()), "image_size_bytes": size, **series}


def predict_batch(
    images: Sequence[Path],
    out_dir: str | os.PathLike,
    predictor: PairPredictor,
    read_options: Optional[ReadOptions] = None,
    provenance: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    cancel: Optional[CancelToken] = None,
    summary: Optional[str | os.PathLike] = SUMMARY_NAME,
) -> Job:
    """Predict every image: a job (:mod:`app.core.jobs`) whose :class:`~app.core.jobs.ItemDone` events carry
    one :class:`BatchRecord` per image as it finishes, and whose result is the list of records.

    Between images, and inside one where the predictor is a job, it yields
    :class:`~app.core.jobs.Progress` (``done`` / ``total`` of that image's own work, ``message`` naming it)
    and checks ``cancel``. Only :class:`CellPolError` (a problem with that image) and ``MemoryError`` mark
    an image as failed; anything else is a bug and propagates. A write that fails for a reason no later
    image escapes (full disk, read-only or forbidden folder) stops the batch with that
    :class:`~app.core.errors.OutputError`, after the summary of the images done.

    Parameters
    ----------
    summary : path, optional
        The summary CSV, relative to ``out_dir`` unless absolute; rewritten after every image. ``None``:
        none is written.
    """
    read_options = read_options or ReadOptions()
    out_dir = ensure_folder(out_dir)
    clean_stale_temporaries(out_dir)
    summary_path = (out_dir / summary) if summary is not None else None
    records: list[BatchRecord] = []
    plan = plan_outputs(images, out_dir)

    def finish(record: BatchRecord) -> ItemDone:
        records.append(record)
        if summary_path is not None:
            write_summary(records, summary_path)
        return ItemDone(len(records), len(plan), f"{record.status}: {Path(record.image).name}", item=record)

    for image, target in plan:
        check_cancel(cancel)
        record = yield from predict_image(image, target, predictor, read_options, provenance, overwrite, cancel)
        if record.stops_batch:
            yield from _stop_batch(records, record, len(plan), summary_path)
        yield finish(record)
    yield Result(records, f"{sum(r.status == 'ok' for r in records)} of {len(plan)} image(s) predicted")
    return records


def predict_image(
    image: Path,
    target: Path,
    predictor: PairPredictor,
    read_options: Optional[ReadOptions] = None,
    provenance: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    cancel: Optional[CancelToken] = None,
) -> Job:
    """Predict one image of a batch into ``target``: a job whose result is the image's :class:`BatchRecord`.

    What the serial batch (:func:`predict_batch`) and each task of a cluster batch
    (:func:`app.core.cluster.predict_task`) do per image, so both write the same files. An output that
    exists is kept (``skipped``) or refused as :func:`predict_batch` says; problems with the image
    (:class:`CellPolError`, ``MemoryError``) and a failed write become a ``failed`` record, never an
    exception (a write's ``errno`` is kept: :attr:`BatchRecord.stops_batch`).

    Parameters
    ----------
    image : path or SeriesItem
    target : path
        The ``<stem>.pred.vectors.csv`` to write (:func:`plan_outputs`).
    predictor : callable
        Volume in, pairs out; one with a ``job`` method is driven as a job (its progress passes on).
    read_options : ReadOptions, optional
    provenance : dict, optional
        Merged into the sidecar (the model, its settings).
    overwrite : bool
        Recompute an existing prediction.
    cancel : CancelToken, optional

    Returns
    -------
    BatchRecord

    Raises
    ------
    CancelledError
        ``cancel`` fired.
    """
    read_options = read_options or ReadOptions()
    started = time.perf_counter()
    if target.exists() or target.is_symlink():
        existing = _existing_output(image, target, overwrite)
        if existing is not None:
            return existing
    try:
        opener = getattr(predictor, "open_image", None)  # learned predictors stream images too big for memory
        volume = opener(image, read_options, target) if opener is not None else read_options.read(image)
        pairs = yield from _predict_one(predictor, volume, cancel)
    except CancelledError:
        raise
    except CellPolError as exc:
        return BatchRecord(image, None, "failed", seconds=time.perf_counter() - started, error=str(exc),
                           settings=exc.settings)
    except MemoryError:
        return BatchRecord(image, None, "failed", seconds=time.perf_counter() - started,
                           error=f"{image}: out of memory. Try a smaller image or a machine with more memory.")
    info = {
        **image_identity(image),
        "image_shape_zyx": list(volume.spatial_shape),
        "channels": {"nucleus": volume.nucleus_channel, "golgi": volume.golgi_channel},
        "voxel_size_source": volume.metadata.get("voxel_size_source", "file"),
    }
    info.update(provenance or {})
    try:
        write_pairs(target, pairs, provenance=info, content="prediction")
    except OutputError as exc:
        return BatchRecord(image, None, "failed", seconds=time.perf_counter() - started, error=str(exc),
                           errno=exc.errno)
    return _record_done(image, target, pairs, time.perf_counter() - started)


def _stop_batch(records: list[BatchRecord], record: BatchRecord, total: int, summary_path: Optional[Path]) -> Job:
    """A write failed for a reason no later image escapes: list it, keep the summary, stop with its error."""
    records.append(record)
    if summary_path is not None:
        try:
            write_summary(records, summary_path)
        except OutputError:
            pass  # the summary written after the previous image stands
    yield ItemDone(len(records), total, f"failed: {Path(record.image).name}", item=record)
    raise OutputError(record.error, record.errno)


def _predict_one(predictor: PairPredictor, volume: Volume, cancel: Optional[CancelToken]) -> Job:
    """The pairs of one volume; a predictor with a ``job`` method is driven as a job (its progress passes on)."""
    job = getattr(predictor, "job", None)
    if job is None:
        return predictor(volume)
    result = None
    for event in job(volume, cancel=cancel):
        if isinstance(event, Result):
            result = event.value
        else:
            yield event
    return result.pairs if hasattr(result, "pairs") else result


def _existing_output(image: Path, target: Path, overwrite: bool) -> Optional[BatchRecord]:
    """The record for an image whose output exists, or ``None`` when it is to be (re)computed."""
    try:
        pairs = read_pairs(target)
    except CellPolError as exc:
        if overwrite:
            return None
        return BatchRecord(image, target, "failed",
                           error=f"{target} exists but cannot be read ({exc}); overwrite it to recompute.",
                           settings={"overwrite": True})
    content = vectors_content(pairs.meta, pairs.sources)
    human = {str(s) for s in pairs.sources} & set(HUMAN_SOURCES)
    if content in ("annotation", "ground-truth", "autosave") or human:
        return BatchRecord(
            image, target, "failed",
            error=f"{target} holds {'annotations' if content != 'ground-truth' else 'ground truth'}, not "
                  "predictions, and is never written over: choose another output folder.")
    if overwrite:
        return None
    recorded, current = pairs.meta.get("image"), image_identity(image)
    recorded_size = pairs.meta.get("image_size_bytes")
    if recorded is None or content != "prediction":
        return BatchRecord(image, target, "failed",
                           error=f"{target} exists but does not say which image it was predicted from; "
                                 "overwrite it to recompute, or choose another output folder.",
                           settings={"overwrite": True})
    if (os.path.normcase(str(recorded)) != os.path.normcase(current["image"])
            or (recorded_size is not None and recorded_size != current["image_size_bytes"])):
        changed = "was predicted from" if os.path.normcase(str(recorded)) != os.path.normcase(current["image"]) \
            else "was predicted from an earlier version of"
        return BatchRecord(image, target, "failed",
                           error=f"{target} {changed} {recorded}, not this image ({image}); overwrite it to "
                                 "recompute, or choose another output folder.", settings={"overwrite": True})
    return BatchRecord(image, target, "skipped", len(pairs), _mean_length(pairs))


def _mean_length(pairs: PairSet) -> float:
    if len(pairs) == 0 or pairs.voxel_size is None:
        return math.nan
    return float(np.mean(pairs.lengths_um))


def _record_done(image: Path, target: Path, pairs: PairSet, seconds: float) -> BatchRecord:
    return BatchRecord(image, target, "ok", len(pairs), _mean_length(pairs), seconds)


SUMMARY_COLUMNS = ("image", "output", "vectors", "mean_length_um", "seconds", "status", "error")


def write_summary(records: Sequence[BatchRecord], path: str | os.PathLike) -> Path:
    """Write the batch summary CSV (image, output, vectors, mean length µm, seconds, status, error)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for r in records:
        length = "" if math.isnan(r.mean_length_um) else f"{r.mean_length_um:.3f}"
        writer.writerow([str(r.image), str(r.output) if r.output else "", r.n_vectors, length, f"{r.seconds:.2f}",
                         r.status, r.error])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)
