"""Where an image's annotations are saved, and the autosave that brings them back after a crash.

:func:`vectors_path_for`
    ``<stem>.vectors.csv`` next to the image (or in a project's ``annotations/`` folder).
:class:`Autosaver`
    Writes the pairs (and a half-placed nucleus) to ``<stem>.vectors.autosave.csv`` after every edit,
    atomically, so killing the process loses nothing already placed; :func:`find_recovery` and
    :func:`load_autosave` bring it back on the next start, :func:`discard_autosave` forgets it.

The model being saved is :class:`app.core.annotation.AnnotationModel`; file formats are :mod:`app.core.pairs`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from app.core.batch import image_stem
from app.core.fileutil import clean_stale_temporaries
from app.core.pairs import PairSet, read_pairs, sidecar_path, write_pairs
from app.core.positions import Point, as_point
from app.core.signals import Signal

if TYPE_CHECKING:  # for the type only: app.core.annotation re-exports this module, a run-time import would be a cycle
    from app.core.annotation import AnnotationModel


def vectors_path_for(image_path: str | os.PathLike, folder: Optional[str | os.PathLike] = None,
                     series: int = 0) -> Path:
    """``<folder or the image's folder>/<stem>.vectors.csv``; series ``N`` > 0 of a file with several (a LIF,
    CZI, ND2 or OME-Zarr) ``<stem>_s<N>.vectors.csv``, so two series of one file never share annotations."""
    image_path = Path(image_path)
    base = Path(folder) if folder is not None else image_path.parent
    suffix = f"_s{int(series)}" if series else ""
    return base / f"{image_stem(image_path)}{suffix}.vectors.csv"


def autosave_path_for(vectors_path: str | os.PathLike) -> Path:
    """``name.vectors.csv`` → ``name.vectors.autosave.csv`` (its sidecar is ``….autosave.json``)."""
    path = Path(vectors_path)
    name = path.name
    if name.lower().endswith(".vectors.csv"):
        return path.with_name(name[: -len(".vectors.csv")] + ".vectors.autosave.csv")
    return path.with_name(path.stem + ".autosave.csv")


def find_recovery(vectors_path: str | os.PathLike) -> Optional[Path]:
    """The autosave of ``vectors_path`` if it holds work newer than the saved file, else ``None``."""
    autosave = autosave_path_for(vectors_path)
    if not autosave.exists():
        return None
    saved = Path(vectors_path)
    if saved.exists() and saved.stat().st_mtime_ns >= autosave.stat().st_mtime_ns:
        return None
    return autosave


def load_autosave(path: str | os.PathLike) -> tuple[PairSet, Optional[Point]]:
    """Read an autosave: the pairs and the half-placed nucleus (or ``None``)."""
    pairs = read_pairs(path)
    pending = pairs.meta.get("pending_nucleus")
    return pairs, (as_point(pending) if pending is not None else None)


def discard_autosave(vectors_path: str | os.PathLike) -> None:
    """Delete the autosave (and its sidecar) of ``vectors_path``; missing files are fine."""
    autosave = autosave_path_for(vectors_path)
    for path in (autosave, sidecar_path(autosave)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class Autosaver:
    """Write the model to its autosave file after every edit (atomically, synchronously).

    A few hundred pairs take well under a millisecond to format, so there is nothing to debounce; a
    drag is written once, when it is committed. Write errors (a full disk, a read-only folder) do not
    interrupt editing: they are reported through ``failed(message)``.

    Parameters
    ----------
    model : AnnotationModel
        The model to save; its ``edited`` signal triggers each write.
    path : path-like
        The autosave CSV (see :func:`autosave_path_for`).
    provenance : callable, optional
        Returns extra sidecar entries (image path, shape, ...).

    Attributes
    ----------
    enabled : bool
        Edits are written only while this is true.
    saved : Signal
        ``saved(path)`` after each successful write.
    failed : Signal
        ``failed(message)`` when a write fails; ``last_error`` keeps the message until the next success.
    count : int
        Successful writes so far.
    """

    def __init__(self, model: AnnotationModel, path: str | os.PathLike,
                 provenance: Optional[Callable[[], dict[str, Any]]] = None) -> None:
        self.model = model
        self.path = Path(path)
        self.provenance = provenance
        self.enabled = True
        self.saved = Signal()   # (path)
        self.failed = Signal()  # (message)
        self.last_error: Optional[str] = None
        self.count = 0
        clean_stale_temporaries(self.path.parent)  # left by a session that was killed mid-write
        model.edited.connect(self._on_edited)

    def detach(self) -> None:
        """Stop following the model's edits."""
        self.model.edited.disconnect(self._on_edited)

    def _on_edited(self) -> None:
        if self.enabled:
            self.save_now()

    def save_now(self) -> Optional[Path]:
        """Write the autosave now; returns its path, or ``None`` when the write failed (see ``failed``)."""
        extra: dict[str, Any] = dict(self.provenance() if self.provenance else {})
        extra["autosave"] = True
        pending = self.model.pending_nucleus
        extra["pending_nucleus"] = list(pending) if pending is not None else None
        try:
            path = write_pairs(self.path, self.model.to_pairset(), provenance=extra, content="autosave")
        except OSError as exc:
            self.last_error = f"Autosave to {self.path} failed: {exc.strerror or exc}"
            self.failed.emit(self.last_error)
            return None
        self.last_error = None
        self.count += 1
        self.saved.emit(path)
        return path
