"""Axes: how a stored array becomes ``(C, Z, Y, X)`` (:class:`_AxesPlan`), from the file's own axes or from an axes
string the user gives (:func:`_plan_user_axes`, the one rule for such a string), and the layouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from app.core.errors import CellPolError, FileFormatError
from app.core.imageio.metadata import _RawImage

#: Axes of the authors' files, ``(row, column, Z, channel)``: channel 0 = Golgi, 1 = nucleus, 2 = vessels.
LEGACY_RGB_AXES = "YXZC"

#: Shape of a 3DNGMic ``.npy`` patch, ``(row, column, Z, channel)``.
NGMIC_PATCH_SHAPE = (128, 128, 64, 2)

#: Most channels an ``axes`` string given by the caller may produce. Nucleus, Golgi and a few other stains
#: fit; more means the string put C on a stack axis (e.g. 'CZYX' for a ZCYX file gives one channel per slice).
MAX_CHANNELS = 8

_LAYOUTS = {"legacy-rgb": LEGACY_RGB_AXES}
_USER_AXES_LETTERS = "ZCYXTSQ"
# Axis letters that mean "a stack of planes of unknown meaning": tifffile's Q (other) and I (sequence).
_TIFF_STACK_AXES = "QI"


@dataclass(frozen=True)
class _AxesPlan:
    """How to turn the stored array into ``(C, Z, Y, X)`` with views only (no copy)."""

    kept_shape: tuple[int, ...]  # stored shape without the dropped length-1 axes
    kept_axes: str  # the kept axes, renamed to letters of "CZYX"
    czyx_shape: tuple[int, int, int, int]
    roles: str = ""  # role of every stored axis: a letter of "CZYX", or "-" where dropped

    @property
    def is_2d(self) -> bool:
        return self.czyx_shape[1] == 1

    def apply(self, data: np.ndarray) -> np.ndarray:
        data = data.reshape(self.kept_shape)  # dropping length-1 axes never copies
        axes = self.kept_axes
        for letter in "ZC":
            if letter not in axes:
                data, axes = data[np.newaxis], letter + axes
        return data.transpose([axes.index(letter) for letter in "CZYX"])


def _plan_axes(shape: Sequence[int], axes: str, stack_axes: str, path: Path) -> _AxesPlan:
    """Map each stored axis to C, Z, Y or X, or drop it (length 1); refuse anything ambiguous."""
    shape = tuple(int(s) for s in shape)
    if "?" in axes:
        raise FileFormatError(
            f"{path}: a .npy array of shape {shape} has no axes information (only 3DNGMic patches of shape "
            f"{NGMIC_PATCH_SHAPE} are recognised). Give the axes, e.g. 'ZYX', 'CZYX' or 'YXZC'."
        )
    if len(axes) != len(shape):
        raise FileFormatError(
            f"{path}: axes '{axes}' has {len(axes)} letters but the image has {len(shape)} dimensions {shape}."
        )
    if len(shape) < 2:
        raise FileFormatError(f"{path}: a {len(shape)}-dimensional array {shape} is not an image.")
    for letter in set(axes) - set(stack_axes):
        if axes.count(letter) > 1:
            raise FileFormatError(f"{path}: axis '{letter}' appears more than once in '{axes}'.")
    sizes = dict(zip(axes, shape))
    if "Y" not in sizes or "X" not in sizes:
        raise FileFormatError(f"{path}: axes '{axes}' must include Y and X.")
    if sizes.get("T", 1) > 1:
        raise FileFormatError(
            f"{path}: this is a time series with {sizes['T']} time points (axes '{axes}', shape {shape}); "
            "save one time point as its own file. If the 'T' axis really holds z slices, give axes with Z there."
        )
    if sizes.get("C", 1) > 1 and sizes.get("S", 1) > 1:
        raise FileFormatError(
            f"{path}: images with both channels and colour samples (axes '{axes}', shape {shape}) are not supported."
        )
    channel_letter = "S" if sizes.get("S", 1) > 1 else "C"
    stacks = [i for i, (a, n) in enumerate(zip(axes, shape)) if a in stack_axes and n > 1]
    z_index = None
    if stacks:
        if len(stacks) > 1 or "Z" in sizes or channel_letter == "S":
            hint = (
                " For the authors' (row, column, Z, RGB) layout use layout='legacy-rgb'."
                if len(shape) == 4 and shape[-1] == 3
                else ""
            )
            unknown = "/".join(f"'{a}'" for a in sorted(set(axes) & set(stack_axes)))
            raise FileFormatError(
                f"{path}: cannot tell which axis is Z in axes '{axes}' of shape {shape} ({unknown} = unknown). "
                f"Give one letter per dimension, e.g. 'ZYXC' for a stack of colour images.{hint}"
            )
        z_index = stacks[0]
    kept_shape, kept_axes, roles = [], "", ""
    for i, (letter, size) in enumerate(zip(axes, shape)):
        if i == z_index:
            role = "Z"
        elif letter in "ZYX":
            role = letter
        elif letter == channel_letter:
            role = "C"
        elif size == 1:
            roles += "-"
            continue
        else:
            raise FileFormatError(
                f"{path}: axis '{letter}' of length {size} (axes '{axes}', shape {shape}) is not supported; "
                "only Z, C (or RGB samples), Y and X can be longer than 1."
            )
        kept_shape.append(size)
        kept_axes += role
        roles += role
    full = dict(zip(kept_axes, kept_shape))
    czyx = (full.get("C", 1), full.get("Z", 1), full["Y"], full["X"])
    if min(czyx) < 1:
        raise FileFormatError(f"{path}: the image is empty (shape {shape}).")
    return _AxesPlan(kept_shape=tuple(kept_shape), kept_axes=kept_axes, czyx_shape=czyx, roles=roles)


def _plan_user_axes(raw: _RawImage, axes: str, path: Path, notes: list[str]) -> _AxesPlan:
    """Plan the caller's ``axes`` for ``raw`` and check that the reading is plausible.

    This is the one rule for an axes string given by the user (CLI ``--axes``, the app's axes field, a
    batch's read options):

    - one letter per stored dimension; where the file names its own axes, the message says which;
    - at most :data:`MAX_CHANNELS` channels: more is refused, naming the axis lengths and the likely string
      (the file's own axes when they are plausible, else ``axes`` with C moved to a short axis);
    - where the file names its own axes and ``axes`` give another role to an axis longer than 1, a warning
      (appended to ``notes``) says how the two readings differ: the caller's wins, as documented.
    """
    file_axes = raw.axes if _names_own_axes(raw) else None
    file_plan: Optional[_AxesPlan] = None
    if file_axes is not None:
        try:
            file_plan = _plan_axes(raw.shape, file_axes, raw.stack_axes, path)
        except FileFormatError:
            file_plan = None
    if len(axes) != len(raw.shape) and file_axes is not None:
        advice = "; leave the axes out for this file" if file_plan is not None else ""
        raise FileFormatError(
            f"{path}: axes '{axes}' has {len(axes)} letters but the image has {len(raw.shape)} dimensions "
            f"{raw.shape}, which the file's own metadata names '{file_axes}'{advice}."
        )
    plan = _plan_axes(raw.shape, axes, "Q", path)
    if plan.czyx_shape[0] > MAX_CHANNELS:
        lengths = ", ".join(f"{letter}={size}" for letter, size in zip(axes, raw.shape))
        message = (
            f"{path}: axes '{axes}' read the stored shape {raw.shape} ({lengths}) as {_describe_plan(plan)}; "
            f"an image has at most {MAX_CHANNELS} channels here, so the channel axis is probably another one."
        )
        if file_plan is not None and file_plan.czyx_shape[0] <= MAX_CHANNELS:
            message += (
                f" The file's own metadata says '{file_axes}' ({_describe_plan(file_plan)}): leave the axes out "
                "to use it."
            )
        else:
            suggestion = _suggest_axes(raw.shape, axes, path)
            if suggestion is not None:
                message += f" Likely right: axes '{suggestion[0]}' ({_describe_plan(suggestion[1])})."
        raise FileFormatError(message)
    if file_plan is not None and _differs(plan, file_plan, raw.shape):
        notes.append(
            f"{path}: axes '{axes}' override the file's own axes '{file_axes}': the image is read as "
            f"{_describe_plan(plan)} instead of {_describe_plan(file_plan)}."
        )
    return plan


def _names_own_axes(raw: _RawImage) -> bool:
    """Whether the file's metadata names every stored axis (not a ``.npy`` array or a plain page stack)."""
    return "?" not in raw.axes and not set(raw.axes) & set(raw.stack_axes)


def _differs(plan: _AxesPlan, other: _AxesPlan, shape: Sequence[int]) -> bool:
    """Whether two plans of the same stored array give an axis longer than 1 a different role."""
    return any(a != b for a, b, n in zip(plan.roles, other.roles, shape) if n > 1)


def _describe_plan(plan: _AxesPlan) -> str:
    c, z, y, x = plan.czyx_shape
    return f"{c} channel{'s' if c != 1 else ''} × {z} slice{'s' if z != 1 else ''} of {y}×{x} pixels"


def _suggest_axes(shape: Sequence[int], axes: str, path: Path) -> Optional[tuple[str, _AxesPlan]]:
    """The caller's axes with the channel letter moved to a short axis (or a single-channel reading), if any
    such string gives a plausible image: the likely intended one."""
    channel_letter = "S" if "S" in axes and shape[axes.index("S")] > 1 else "C"
    c = axes.index(channel_letter)
    others = [i for i, letter in enumerate(axes) if i != c and letter not in "YX"]
    ranked = sorted((i for i in others if 2 <= shape[i] <= MAX_CHANNELS), key=lambda i: shape[i])
    ranked += [i for i in others if shape[i] == 1]  # a single-channel stack
    candidates = []
    for i in ranked:
        letters = list(axes)
        letters[c], letters[i] = letters[i], letters[c]
        candidates.append("".join(letters))
    if "Z" not in axes:
        candidates.append(axes.replace(channel_letter, "Z"))  # a single-channel stack
    for candidate in candidates:
        try:
            plan = _plan_axes(shape, candidate, "Q", path)
        except FileFormatError:
            continue
        if plan.czyx_shape[0] <= MAX_CHANNELS:
            return candidate, plan
    return None


def _resolve_axes_argument(axes: Optional[str], layout: Optional[str]) -> Optional[str]:
    """Validate the caller's ``axes``/``layout`` pair and return the axes string to use (or ``None``)."""
    if layout is not None:
        if layout not in _LAYOUTS:
            raise CellPolError(f"Unknown layout {layout!r}; known layouts: {', '.join(_LAYOUTS)}.")
        layout_axes = _LAYOUTS[layout]
        if axes is not None and axes.upper() != layout_axes:
            raise CellPolError(f"layout {layout!r} means axes '{layout_axes}'; it conflicts with axes '{axes}'.")
        return layout_axes
    if axes is None:
        return None
    if not isinstance(axes, str) or not axes:
        raise CellPolError(f"Axes must be a string of letters from {_USER_AXES_LETTERS}, got {axes!r}.")
    axes = axes.strip().upper()
    bad = sorted(set(axes) - set(_USER_AXES_LETTERS))
    if bad:
        raise CellPolError(
            f"Axes '{axes}' contains {', '.join(repr(b) for b in bad)}; use letters from {_USER_AXES_LETTERS} "
            "(Z, C = channel, Y = row, X = column, T = time, S = RGB sample, Q = other)."
        )
    return axes
