"""Batch prediction: many images in, one ``<stem>.vectors.csv`` (+ sidecar) per image out.

A bad file is reported and skipped while the rest of the batch goes on. Images whose output
already exists are skipped unless ``overwrite`` is set, so an interrupted batch resumes.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.fileutil import atomic_write_text
from app.core.jobs import CancelToken, check_cancel
from app.core.pairs import PairSet, read_pairs, write_pairs
from app.core.volume import Volume

#: A predictor turns a volume into pairs; ``describe`` goes into each output's provenance.
Predictor = Callable[[Volume], PairSet]

SUMMARY_NAME = "predict_summary.csv"


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.ome.tif`` → ``a``)."""
    from app.core.imageio import IMAGE_SUFFIXES

    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):  # ".ome.tif" before ".tif"
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def output_path(image: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{image_stem(image)}.vectors.csv"


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


@dataclass
class ReadOptions:
    """How to read each image: channel roles, voxel size and axes given by the user (or None)."""

    voxel_size: Optional[Sequence[float]] = None
    axes: Optional[str] = None
    nucleus_channel: Optional[int] = None
    golgi_channel: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self, path: Path) -> Volume:
        from app.core.imageio import read_volume

        volume = read_volume(
            path,
            voxel_size=self.voxel_size,
            axes=self.axes,
            nucleus_channel=self.nucleus_channel,
            golgi_channel=self.golgi_channel,
            **self.extra,
        )
        # Validate roles now so a bad channel index is one clear message per image.
        return volume.with_roles(self.nucleus_channel, self.golgi_channel)


def predict_batch(
    images: Sequence[Path],
    out_dir: str | os.PathLike,
    predictor: Predictor,
    read_options: Optional[ReadOptions] = None,
    provenance: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    cancel: Optional[CancelToken] = None,
) -> Iterator[BatchRecord]:
    """Predict every image; yield one :class:`BatchRecord` per image as it finishes.

    Only :class:`CellPolError` (a problem with that image) and ``MemoryError`` mark an image as
    failed; anything else is a bug and propagates.
    """
    read_options = read_options or ReadOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        check_cancel(cancel)
        target = output_path(image, out_dir)
        if target.exists() and not overwrite:
            yield _record_existing(image, target)
            continue
        started = time.perf_counter()
        try:
            volume = read_options.read(image)
            pairs = predictor(volume)
        except CellPolError as exc:
            yield BatchRecord(image, None, "failed", seconds=time.perf_counter() - started, error=str(exc))
            continue
        except MemoryError:
            yield BatchRecord(image, None, "failed", seconds=time.perf_counter() - started,
                              error=f"{image}: out of memory. Try a smaller image or a machine with more memory.")
            continue
        info = {
            "image": str(Path(image).resolve()),
            "image_shape_zyx": list(volume.spatial_shape),
            "channels": {"nucleus": volume.nucleus_channel, "golgi": volume.golgi_channel},
            "voxel_size_source": volume.metadata.get("voxel_size_source", "file"),
        }
        info.update(provenance or {})
        write_pairs(target, pairs, provenance=info)
        yield _record_done(image, target, pairs, time.perf_counter() - started)


def _mean_length(pairs: PairSet) -> float:
    if len(pairs) == 0 or pairs.voxel_size is None:
        return math.nan
    return float(np.mean(pairs.lengths_um))


def _record_done(image: Path, target: Path, pairs: PairSet, seconds: float) -> BatchRecord:
    return BatchRecord(image, target, "ok", len(pairs), _mean_length(pairs), seconds)


def _record_existing(image: Path, target: Path) -> BatchRecord:
    try:
        pairs = read_pairs(target)
    except CellPolError as exc:
        return BatchRecord(image, target, "failed", error=f"existing output unreadable ({exc}); use --overwrite")
    return BatchRecord(image, target, "skipped", len(pairs), _mean_length(pairs))


def write_summary(records: Sequence[BatchRecord], path: str | os.PathLike) -> Path:
    """Write the batch summary CSV (image, vectors, mean length µm, seconds, status, error)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "vectors", "mean_length_um", "seconds", "status", "error"])
    for r in records:
        length = "" if math.isnan(r.mean_length_um) else f"{r.mean_length_um:.3f}"
        writer.writerow([str(r.image), r.n_vectors, length, f"{r.seconds:.2f}", r.status, r.error])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)
