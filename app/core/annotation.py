"""Manual annotation of polarity vectors: the model behind the desktop app's annotation tools.

Everything here is plain Python and numpy (no Qt, no files), so it is unit-tested on its own and any front
end (the Qt app, a script, a future napari plugin) drives it the same way.

:class:`AnnotationModel`
    The pairs being edited, the selection, a half-placed pair (a nucleus waiting for its Golgi) and one
    undo stack of :class:`Command` objects that covers every edit on every slice. Views subscribe to its
    :class:`~app.core.signals.Signal` attributes (``changed``, ``selection_changed``, ``pending_changed``,
    ``edited``, ``history_changed``) and never mutate it except through its methods.
:func:`vector_angles`
    Length, azimuth and elevation of each vector, in µm and degrees.

The tools around the model have their own modules: :mod:`app.core.autosave` (where annotations are saved,
autosave and recovery), :mod:`app.core.positions` (snapping a click to an intensity peak) and
:mod:`app.core.comparison` (the pairs scored against a reference, for the evaluation colours). Their names
are re-exported here, so ``from app.core.annotation import Autosaver`` keeps working. Projects (folders of
images and their annotations) are :mod:`app.core.project`; file formats, the legacy ones included, are
:mod:`app.core.pairs`.

Conventions: positions are voxel coordinates ``(z, y, x)``, 0-based floats, as in
:class:`~app.core.pairs.PairSet`; distances are in µm through the voxel size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from app.core.autosave import (
    Autosaver,
    autosave_path_for,
    discard_autosave,
    find_recovery,
    load_autosave,
    vectors_path_for,
)
from app.core.batch import image_stem
from app.core.comparison import (
    BORDER,
    SHOWN_LEVELS,
    ReferenceComparison,
    check_reference,
    compare_with_reference,
)
from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.positions import Point, as_point, snap_to_peak
from app.core.signals import Signal
from app.core.volume import parse_voxel_size

__all__ = [
    # the model
    "NUCLEUS", "GOLGI", "ENDS", "Point", "Pair", "vector_angles", "Signal",
    "Command", "AddPairs", "RemovePairs", "UpdatePairs", "ReplaceAll", "UndoStack", "AnnotationModel",
    # re-exported: they moved to app.core.autosave, app.core.positions and app.core.comparison (image_stem is
    # app.core.batch's), and callers import them from here
    "vectors_path_for", "autosave_path_for", "find_recovery", "load_autosave", "discard_autosave", "Autosaver",
    "image_stem", "snap_to_peak", "BORDER", "SHOWN_LEVELS", "ReferenceComparison", "check_reference",
    "compare_with_reference",
]

NUCLEUS = "nucleus"
GOLGI = "golgi"
ENDS = (NUCLEUS, GOLGI)

#: Sources whose pairs become ``corrected`` when the user edits them.
_CORRECTABLE_SOURCES = ("predicted",)


# ------------------------------------------------------------------------------------------
# Pairs
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Pair:
    """One nucleus→Golgi vector being annotated (positions in voxels ``(z, y, x)``).

    ``score`` is NaN for pairs without one (manual pairs); two pairs with NaN scores compare equal.
    """

    id: int
    nucleus: Point
    golgi: Point
    score: float = math.nan
    source: str = "manual"

    def _key(self) -> tuple:
        score = None if math.isnan(self.score) else self.score
        return (self.id, self.nucleus, self.golgi, score, self.source)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pair):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def end(self, which: str) -> Point:
        return self.nucleus if which == NUCLEUS else self.golgi

    def with_end(self, which: str, position: Point) -> "Pair":
        return dataclasses.replace(self, **{which: as_point(position)})


def _check_end(which: str) -> None:
    if which not in ENDS:
        raise CellPolError(f"Unknown pair end {which!r}: use 'nucleus' or 'golgi'.")


def vector_angles(pairs: PairSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Length (µm), azimuth and elevation (degrees) of each vector, computed in µm.

    Azimuth is measured in the image plane from +x, counter-clockwise *as the image is displayed*
    (rows grow downwards, as in ImageJ's angle measurements), in ``[0, 360)``. Elevation is the angle
    above the image plane towards increasing z (deeper slices), in ``[-90, 90]``. A zero-length vector
    has azimuth and elevation NaN.

    Raises
    ------
    CellPolError
        If the set has no voxel size.
    """
    vectors = pairs.vectors_um
    dz, dy, dx = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    length = np.linalg.norm(vectors, axis=1)
    with np.errstate(invalid="ignore"):
        azimuth = np.degrees(np.arctan2(-dy, dx)) % 360.0
        elevation = np.degrees(np.arctan2(dz, np.hypot(dx, dy)))
    zero = length == 0
    azimuth[zero] = np.nan
    elevation[zero] = np.nan
    return length, azimuth, elevation


# ------------------------------------------------------------------------------------------
# Commands and the undo stack
# ------------------------------------------------------------------------------------------
class Command:
    """One undoable edit. ``do`` and ``undo`` must be exact inverses; ``text`` names it in menus."""

    text = "edit"

    def do(self, model: "AnnotationModel") -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def undo(self, model: "AnnotationModel") -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class AddPairs(Command):
    """Add pairs (at the end of the list, or at ``indices`` when restoring)."""

    pairs: list[Pair]
    text: str = "add pair"

    def do(self, model: "AnnotationModel") -> None:
        model._insert([(None, p) for p in self.pairs])

    def undo(self, model: "AnnotationModel") -> None:
        model._remove([p.id for p in self.pairs])


@dataclass
class RemovePairs(Command):
    """Delete pairs; undo puts them back at their old rows."""

    pairs: list[tuple[int, Pair]]  # (row, pair), rows ascending
    text: str = "delete pair"

    def do(self, model: "AnnotationModel") -> None:
        model._remove([p.id for _, p in self.pairs])

    def undo(self, model: "AnnotationModel") -> None:
        model._insert(list(self.pairs))


@dataclass
class UpdatePairs(Command):
    """Replace pairs by new versions with the same ids (moves, re-pairing, source changes)."""

    before: list[Pair]
    after: list[Pair]
    text: str = "move"

    def do(self, model: "AnnotationModel") -> None:
        model._update(self.after)

    def undo(self, model: "AnnotationModel") -> None:
        model._update(self.before)


@dataclass
class ReplaceAll(Command):
    """Replace every pair (import, clear all)."""

    before: list[Pair]
    after: list[Pair]
    text: str = "replace all"

    def do(self, model: "AnnotationModel") -> None:
        model._reset(self.after)

    def undo(self, model: "AnnotationModel") -> None:
        model._reset(self.before)


class UndoStack:
    """A linear history of :class:`Command` objects with a "clean" mark for the saved state."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = int(limit)
        self._done: list[Command] = []
        self._undone: list[Command] = []
        self._clean: Optional[int] = 0  # len(_done) at the last save; None = unreachable

    def push_done(self, command: Command) -> None:
        """Record a command that has just been executed; the redo history is dropped."""
        self._done.append(command)
        self._undone.clear()
        if self._clean is not None and self._clean > len(self._done) - 1:
            self._clean = None  # the saved state was in the dropped redo history
        if len(self._done) > self.limit:
            del self._done[0]
            if self._clean is not None:
                self._clean = self._clean - 1 if self._clean > 0 else None

    def pop_undo(self) -> Optional[Command]:
        if not self._done:
            return None
        command = self._done.pop()
        self._undone.append(command)
        return command

    def pop_redo(self) -> Optional[Command]:
        if not self._undone:
            return None
        command = self._undone.pop()
        self._done.append(command)
        return command

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()
        self._clean = 0

    def set_clean(self) -> None:
        self._clean = len(self._done)

    def set_dirty(self) -> None:
        """No state in the history is the saved one (e.g. after recovering an autosave)."""
        self._clean = None

    @property
    def is_clean(self) -> bool:
        return self._clean == len(self._done)

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def undo_text(self) -> str:
        return self._done[-1].text if self._done else ""

    @property
    def redo_text(self) -> str:
        return self._undone[-1].text if self._undone else ""

    def __len__(self) -> int:
        return len(self._done)


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------
class AnnotationModel:
    """Pairs being annotated on one image, with selection, a pending nucleus and undo/redo.

    Parameters
    ----------
    voxel_size : (z, y, x) µm, optional
        Needed for µm quantities (lengths, angles, snapping radius).
    image_shape : (Z, Y, X), optional
        Recorded in saved files (the evaluation's border exclusion uses it).

    Signals
    -------
    changed(kind, ids)
        The pairs changed: ``kind`` is ``"add"``, ``"remove"``, ``"update"`` or ``"reset"``.
        Also emitted while a point is dragged (before the move is committed).
    selection_changed(ids)
        The selected pair ids (a tuple) changed.
    pending_changed(position)
        A nucleus was placed and waits for its Golgi (``position``), or that was cancelled (``None``).
    edited()
        An edit was committed, undone or redone, or a nucleus placed or cancelled: the moment to autosave.
    history_changed()
        Undo/redo availability, texts or the clean state changed.
    """

    def __init__(self, voxel_size: Optional[Sequence[float]] = None,
                 image_shape: Optional[Sequence[int]] = None, undo_limit: int = 1000) -> None:
        self.voxel_size = parse_voxel_size(voxel_size)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
        self.meta: dict[str, Any] = {}
        self.undo_stack = UndoStack(undo_limit)
        self._pairs: list[Pair] = []
        self._rows: dict[int, int] = {}
        self._next_id = 0
        self._selection: tuple[int, ...] = ()
        self._pending: Optional[Point] = None
        self._drag: Optional[tuple[Pair, str]] = None
        self.changed = Signal()
        self.selection_changed = Signal()
        self.pending_changed = Signal()
        self.edited = Signal()
        self.history_changed = Signal()

    # --- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self):
        return iter(list(self._pairs))

    @property
    def pairs(self) -> list[Pair]:
        return list(self._pairs)

    @property
    def ids(self) -> list[int]:
        return [p.id for p in self._pairs]

    def get(self, pair_id: int) -> Pair:
        try:
            return self._pairs[self._rows[int(pair_id)]]
        except KeyError:
            raise CellPolError(f"No pair with id {pair_id}.") from None

    def __contains__(self, pair_id: object) -> bool:
        return pair_id in self._rows

    def row_of(self, pair_id: int) -> int:
        return self._rows[int(pair_id)]

    @property
    def pending_nucleus(self) -> Optional[Point]:
        return self._pending

    @property
    def selection(self) -> tuple[int, ...]:
        return self._selection

    @property
    def is_dirty(self) -> bool:
        """Whether there are edits since the last :meth:`mark_saved` (or load)."""
        return not self.undo_stack.is_clean

    @property
    def dragging(self) -> bool:
        return self._drag is not None

    def to_pairset(self) -> PairSet:
        """The pairs as a :class:`PairSet` (ids, scores and sources kept; ``meta`` copied)."""
        meta = dict(self.meta)
        if self.image_shape is not None:
            meta["image_shape_zyx"] = list(self.image_shape)
        if not self._pairs:
            return PairSet.empty(self.voxel_size, meta=meta)
        return PairSet(
            np.array([p.nucleus for p in self._pairs]),
            np.array([p.golgi for p in self._pairs]),
            voxel_size=self.voxel_size,
            scores=np.array([p.score for p in self._pairs]),
            ids=np.array([p.id for p in self._pairs]),
            sources=np.array([p.source for p in self._pairs], dtype=object),
            meta=meta,
        )

    def positions(self, which: str) -> np.ndarray:
        """``(N, 3)`` array of the nucleus or Golgi positions, in row order."""
        _check_end(which)
        if not self._pairs:
            return np.zeros((0, 3))
        return np.array([p.end(which) for p in self._pairs], dtype=np.float64)

    def nearest(self, position: Sequence[float], max_distance_um: float = math.inf,
                ends: Sequence[str] = ENDS, axes: Sequence[int] = (0, 1, 2)) -> Optional[tuple[int, str, float]]:
        """The pair end closest to ``position`` as ``(id, end, distance_um)``, or ``None``.

        ``axes`` restricts the distance to some axes (e.g. ``(1, 2)`` for "nearest in this XY view").
        """
        if not self._pairs:
            return None
        scale = np.asarray(self.voxel_size or (1.0, 1.0, 1.0))
        axes = list(axes)
        target = np.asarray(as_point(position))[axes] * scale[axes]
        best: Optional[tuple[int, str, float]] = None
        for which in ends:
            points = self.positions(which)[:, axes] * scale[axes]
            distances = np.linalg.norm(points - target, axis=1)
            k = int(np.argmin(distances))
            if distances[k] <= max_distance_um and (best is None or distances[k] < best[2]):
                best = (self._pairs[k].id, which, float(distances[k]))
        return best

    # --- loading ----------------------------------------------------------------------------
    def set_pairset(self, pairs: PairSet, *, pending: Optional[Sequence[float]] = None) -> None:
        """Load ``pairs`` as the starting state: history cleared, the state counts as saved."""
        self._drag = None
        if pairs.voxel_size is not None:
            self.voxel_size = pairs.voxel_size
        self.meta = {k: v for k, v in pairs.meta.items() if k not in ("pending_nucleus", "autosave", "content")}
        shape = pairs.meta.get("image_shape_zyx")
        if shape is not None and self.image_shape is None:
            self.image_shape = tuple(int(s) for s in shape)
        self._reset(self._pairs_from(pairs))
        self._next_id = max([p.id for p in self._pairs], default=-1) + 1
        self.undo_stack.clear()
        self._set_selection(())
        self._set_pending(as_point(pending) if pending is not None else None)
        self.history_changed.emit()

    def _pairs_from(self, pairs: PairSet) -> list[Pair]:
        return [
            Pair(int(pairs.ids[i]), as_point(pairs.nuclei[i]), as_point(pairs.golgi[i]),
                 float(pairs.scores[i]), str(pairs.sources[i]))
            for i in range(len(pairs))
        ]

    def mark_saved(self) -> None:
        """The current state is what is on disk now."""
        self.undo_stack.set_clean()
        self.history_changed.emit()

    def mark_unsaved(self) -> None:
        """The current state differs from the saved file (e.g. it was recovered from an autosave)."""
        self.undo_stack.set_dirty()
        self.history_changed.emit()

    # --- editing: the public, undoable operations ------------------------------------------
    def place(self, position: Sequence[float]) -> Optional[int]:
        """Place a nucleus, or, when one is pending, its Golgi. Returns the new pair's id when complete."""
        if self._pending is None:
            self.place_nucleus(position)
            return None
        return self.place_golgi(position)

    def place_nucleus(self, position: Sequence[float]) -> None:
        """Start a pair: the nucleus waits (not yet undoable) for :meth:`place_golgi`."""
        self._set_pending(as_point(position))
        self.edited.emit()

    def place_golgi(self, position: Sequence[float]) -> int:
        """Complete the pending pair; adding it is one undoable command. Returns its id."""
        if self._pending is None:
            raise CellPolError("Place a nucleus first, then its Golgi.")
        pair_id = self.add_pair(self._pending, position, text="place pair")
        return pair_id

    def cancel_pending(self) -> bool:
        """Forget a half-placed pair; returns whether there was one."""
        if self._pending is None:
            return False
        self._set_pending(None)
        self.edited.emit()
        return True

    def add_pair(self, nucleus: Sequence[float], golgi: Sequence[float], source: str = "manual",
                 score: float = math.nan, *, text: str = "add pair") -> int:
        pair = Pair(self._next_id, as_point(nucleus), as_point(golgi), float(score), str(source))
        self._next_id += 1
        had_pending, self._pending = self._pending is not None, None  # autosaved without it
        self._execute(AddPairs([pair], text=text))
        if had_pending:
            self.pending_changed.emit(None)
        self._set_selection((pair.id,))
        return pair.id

    def remove_pairs(self, ids: Iterable[int], text: Optional[str] = None) -> int:
        """Delete pairs (unknown ids are ignored); one undoable command. Returns how many."""
        rows = sorted({self._rows[int(i)] for i in ids if int(i) in self._rows})
        if not rows:
            return 0
        text = text or ("delete pair" if len(rows) == 1 else f"delete {len(rows)} pairs")
        self._execute(RemovePairs([(r, self._pairs[r]) for r in rows], text=text))
        return len(rows)

    def remove_selected(self) -> int:
        return self.remove_pairs(self._selection)

    def move_point(self, pair_id: int, which: str, position: Sequence[float],
                   *, start: Optional[Pair] = None) -> None:
        """Move one end of a pair; one undoable command. A predicted pair becomes ``corrected``."""
        _check_end(which)
        before = start if start is not None else self.get(pair_id)
        after = self._edited(before.with_end(which, position))
        if after == before:
            if start is not None:  # a drag that came back where it started
                self._update([before])
            return
        self._execute(UpdatePairs([before], [after], text=f"move {which}"))

    def swap_golgi(self, id_a: int, id_b: int) -> None:
        """Re-pair: exchange the Golgi of two pairs (one undoable command)."""
        a, b = self.get(id_a), self.get(id_b)
        if a.id == b.id:
            raise CellPolError("Re-pairing needs two different pairs.")
        after = [self._edited(dataclasses.replace(a, golgi=b.golgi)),
                 self._edited(dataclasses.replace(b, golgi=a.golgi))]
        self._execute(UpdatePairs([a, b], after, text="re-pair"))

    def repair_selected(self) -> None:
        """Re-pair the two selected pairs (:meth:`swap_golgi`)."""
        if len(self._selection) != 2:
            raise CellPolError("Select exactly two pairs to exchange their Golgi (re-pair).")
        self.swap_golgi(*self._selection)

    def set_sources(self, ids: Iterable[int], source: str, text: Optional[str] = None) -> None:
        """Change the source of pairs (e.g. accept predictions as ``corrected``); undoable."""
        before = [self.get(i) for i in ids]
        after = [dataclasses.replace(p, source=str(source)) for p in before]
        if before != after:
            self._execute(UpdatePairs(before, after, text=text or f"mark {source}"))

    def replace_all(self, pairs: PairSet | Sequence[Pair], text: str = "replace all") -> None:
        """Replace every pair by ``pairs`` (an import); one undoable command. Ids are renumbered."""
        incoming = self._pairs_from(pairs) if isinstance(pairs, PairSet) else list(pairs)
        fresh = []
        for p in incoming:
            fresh.append(dataclasses.replace(p, id=self._next_id))
            self._next_id += 1
        self._execute(ReplaceAll(list(self._pairs), fresh, text=text))

    def add_pairs(self, pairs: PairSet, text: str = "import pairs") -> list[int]:
        """Append the pairs of a :class:`PairSet` (new ids); one undoable command."""
        fresh = self.fresh_pairs(pairs)
        if fresh:
            self._execute(AddPairs(fresh, text=text))
        return [p.id for p in fresh]

    def fresh_pairs(self, pairs: PairSet) -> list[Pair]:
        """The pairs of ``pairs`` with new ids of this model (not added: give them to a command)."""
        fresh = []
        for p in self._pairs_from(pairs):
            fresh.append(dataclasses.replace(p, id=self._next_id))
            self._next_id += 1
        return fresh

    def execute(self, command: Command) -> None:
        """Do ``command`` and put it on the undo stack (for edits defined outside this module, e.g. review)."""
        self._execute(command)

    # --- dragging: live preview, one command at the end -------------------------------------
    def begin_drag(self, pair_id: int, which: str) -> None:
        _check_end(which)
        self._drag = (self.get(pair_id), which)

    def drag_to(self, position: Sequence[float]) -> None:
        """Show the dragged end at ``position`` (not recorded, not autosaved)."""
        if self._drag is None:
            raise CellPolError("No drag in progress.")
        start, which = self._drag
        self._update([self.get(start.id).with_end(which, position)])

    def end_drag(self, position: Optional[Sequence[float]] = None) -> None:
        """Commit the drag as one move (from where it started) and autosave."""
        if self._drag is None:
            return
        start, which = self._drag
        self._drag = None
        final = position if position is not None else self.get(start.id).end(which)
        self.move_point(start.id, which, final, start=start)

    def cancel_drag(self) -> None:
        if self._drag is None:
            return
        start, _ = self._drag
        self._drag = None
        self._update([start])

    # --- undo / redo -----------------------------------------------------------------------
    def undo(self) -> bool:
        """Undo the last edit. A half-placed pair is cancelled first (that is the last thing done)."""
        if self._drag is not None:
            self.cancel_drag()
            return True
        if self.cancel_pending():
            return True
        command = self.undo_stack.pop_undo()
        if command is None:
            return False
        command.undo(self)
        self._after_history_step()
        return True

    def redo(self) -> bool:
        if self._drag is not None:
            return False
        command = self.undo_stack.pop_redo()
        if command is None:
            return False
        if self._pending is not None:
            self._set_pending(None)
        command.do(self)
        self._after_history_step()
        return True

    @property
    def can_undo(self) -> bool:
        return self.undo_stack.can_undo or self._pending is not None

    @property
    def can_redo(self) -> bool:
        return self.undo_stack.can_redo

    def _after_history_step(self) -> None:
        self._set_selection(tuple(i for i in self._selection if i in self._rows))
        self.edited.emit()
        self.history_changed.emit()

    # --- selection --------------------------------------------------------------------------
    def select(self, ids: Iterable[int], add: bool = False) -> None:
        wanted = tuple(int(i) for i in ids if int(i) in self._rows)
        if add:
            wanted = self._selection + tuple(i for i in wanted if i not in self._selection)
        self._set_selection(wanted)

    def toggle_selection(self, pair_id: int) -> None:
        if pair_id in self._selection:
            self._set_selection(tuple(i for i in self._selection if i != pair_id))
        else:
            self.select([pair_id], add=True)

    def clear_selection(self) -> None:
        self._set_selection(())

    def select_all(self) -> None:
        self._set_selection(tuple(self.ids))

    def _set_selection(self, ids: tuple[int, ...]) -> None:
        ids = tuple(dict.fromkeys(ids))
        if ids != self._selection:
            self._selection = ids
            self.selection_changed.emit(ids)

    def _set_pending(self, position: Optional[Point]) -> None:
        if position != self._pending:
            self._pending = position
            self.pending_changed.emit(position)

    # --- internals: the only places that change the pair list -------------------------------
    def _execute(self, command: Command) -> None:
        command.do(self)
        self.undo_stack.push_done(command)
        self._set_selection(tuple(i for i in self._selection if i in self._rows))
        self.edited.emit()
        self.history_changed.emit()

    def _edited(self, pair: Pair) -> Pair:
        if pair.source in _CORRECTABLE_SOURCES:
            return dataclasses.replace(pair, source="corrected")
        return pair

    def _reindex(self) -> None:
        self._rows = {p.id: r for r, p in enumerate(self._pairs)}

    def _insert(self, items: list[tuple[Optional[int], Pair]]) -> None:
        new_ids = [pair.id for _, pair in items]
        clash = next((i for i in new_ids if i in self._rows), None)
        if clash is None and len(set(new_ids)) != len(new_ids):
            clash = next(i for i in new_ids if new_ids.count(i) > 1)
        if clash is not None:
            raise CellPolError(f"Pair id {clash} already exists.")
        for row, pair in items:  # rows ascending, so earlier inserts do not shift later ones
            if row is None:
                self._pairs.append(pair)
            else:
                self._pairs.insert(row, pair)
        self._reindex()  # once: a thousand predicted pairs are one edit, not a thousand re-indexings
        self.changed.emit("add", tuple(new_ids))

    def _remove(self, ids: list[int]) -> None:
        gone = set(ids)
        self._pairs = [p for p in self._pairs if p.id not in gone]
        self._reindex()
        self.changed.emit("remove", tuple(ids))

    def _update(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            self._pairs[self._rows[pair.id]] = pair
        self.changed.emit("update", tuple(p.id for p in pairs))

    def _reset(self, pairs: list[Pair]) -> None:
        self._pairs = list(pairs)
        self._reindex()
        self.changed.emit("reset", tuple(self._rows))
