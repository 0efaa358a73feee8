"""The one image type used everywhere: :class:`Volume`.

Arrays are always ``(C, Z, Y, X)``; a 2D image has ``Z == 1``. Voxel size is in µm as ``(z, y, x)``.
Readers return a ``Volume``; nothing downstream guesses axes or units again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import ChannelError, CellPolError

#: Roles a channel can play. ``other`` = present but not used for polarity (e.g. VE-cadherin).
ROLES = ("nucleus", "golgi", "other")

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32)


#: Smallest plausible voxel size in µm along any axis: finer than 10 nm is beyond light microscopy (a value
#: in mm or m looks like this).
MIN_VOXEL_SIZE_UM = 0.01
#: Largest plausible pixel size in µm in y and x: a pixel larger than a whole cell (a value in nm looks like
#: this).
MAX_VOXEL_SIZE_YX_UM = 50.0
#: Largest plausible z step in µm. Steps above :data:`LARGE_Z_STEP_UM` are accepted with a warning.
MAX_VOXEL_SIZE_Z_UM = 100.0
#: A z step above this is larger than a cell: possible (a coarse survey stack) but 3D vectors are then coarse.
LARGE_Z_STEP_UM = 50.0


class ImplausibleInputWarning(UserWarning):
    """An input is possible but unusual enough that the result may be wrong (e.g. a z step above 50 µm).

    Readers also list the message in ``Volume.metadata["warnings"]`` so that an app can show it.
    """


def implausible_voxel_size(voxel_size: Sequence[float]) -> str:
    """Why a voxel size ``(z, y, x)`` in µm cannot be a light-microscopy voxel size, or ``""`` if it can.

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Positive, finite values in µm.

    Returns
    -------
    str
        ``""`` when every axis is within :data:`MIN_VOXEL_SIZE_UM` … :data:`MAX_VOXEL_SIZE_YX_UM` (y, x) or
        :data:`MAX_VOXEL_SIZE_Z_UM` (z); otherwise what is wrong, naming the axes, e.g.
        ``"implausibly large: y = 200 µm and x = 200 µm are above 50 µm (more than a whole cell)"``.
    """
    small = [f"{axis} = {value:g} µm" for axis, value in zip("zyx", voxel_size) if value < MIN_VOXEL_SIZE_UM]
    large_yx = [f"{axis} = {value:g} µm" for axis, value in zip("yx", voxel_size[1:]) if value > MAX_VOXEL_SIZE_YX_UM]
    reasons = []
    if small:
        verb = "is" if len(small) == 1 else "are"
        reasons.append(f"{_and(small)} {verb} below {MIN_VOXEL_SIZE_UM:g} µm (10 nm), finer than light "
                       "microscopy resolves")
    if large_yx:
        verb = "is" if len(large_yx) == 1 else "are"
        reasons.append(f"{_and(large_yx)} {verb} above {MAX_VOXEL_SIZE_YX_UM:g} µm (more than a whole cell)")
    large_z = voxel_size[0] > MAX_VOXEL_SIZE_Z_UM
    if large_z:
        reasons.append(f"z = {voxel_size[0]:g} µm is above {MAX_VOXEL_SIZE_Z_UM:g} µm (several cells deep)")
    if not reasons:
        return ""
    kind = "implausible" if small and (large_yx or large_z) else "implausibly small" if small else "implausibly large"
    return f"{kind}: " + "; ".join(reasons)


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def large_z_step_warning(voxel_size: Sequence[float]) -> str:
    """A warning for a plausible but very coarse z step (above :data:`LARGE_Z_STEP_UM`), or ``""``."""
    z = voxel_size[0]
    if LARGE_Z_STEP_UM < z <= MAX_VOXEL_SIZE_Z_UM:
        return (f"the z step of {z:g} µm is larger than a cell (above {LARGE_Z_STEP_UM:g} µm), so each cell "
                "is seen in one slice at most and the z part of its vector is coarse; check that the voxel size "
                "is z y x in µm")
    return ""


def _unit_hint(voxel_size: Sequence[float]) -> str:
    """What the numbers would be in µm if they were typed in nm (too large) or mm (too small)."""
    too_small = [v for v in voxel_size if v < MIN_VOXEL_SIZE_UM]
    too_large = [v for v, limit in zip(voxel_size, (MAX_VOXEL_SIZE_Z_UM,) + (MAX_VOXEL_SIZE_YX_UM,) * 2) if v > limit]
    hints = []
    if too_large:
        hints.append(f"If it was given in nm, give µm instead ({too_large[0]:g} nm = {too_large[0] / 1000:g} µm).")
    if too_small:
        hints.append(f"If it was given in mm, give µm instead ({too_small[0]:g} mm = {too_small[0] * 1000:g} µm).")
    return " ".join(hints)


def parse_voxel_size(values: Optional[Sequence[float]]) -> Optional[tuple[float, float, float]]:
    """Validate a voxel size ``(z, y, x)`` in µm; ``None`` passes through.

    Parameters
    ----------
    values : sequence of 3 float or None
        ``(z, y, x)`` in µm.

    Returns
    -------
    tuple of 3 float or None

    Raises
    ------
    CellPolError
        If there are not three finite, positive numbers, or if they are implausible for light microscopy
        (:func:`implausible_voxel_size`: below 0.01 µm, above 50 µm in y or x, above 100 µm in z), which
        almost always means nm or mm were given instead of µm.
    """
    if values is None:
        return None
    try:
        vs = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise CellPolError(f"Voxel size must be three numbers Z Y X in µm, got {values!r}.") from None
    if len(vs) != 3:
        raise CellPolError(f"Voxel size must be three numbers Z Y X in µm, got {len(vs)} values.")
    if not all(math.isfinite(v) and v > 0 for v in vs):
        raise CellPolError(f"Voxel size must be positive and finite (µm), got {vs}.")
    problem = implausible_voxel_size(vs)
    if problem:
        shown = f"{vs[0]:g} × {vs[1]:g} × {vs[2]:g} µm (z, y, x)"
        raise CellPolError(f"Voxel size {shown} is {problem}. {_unit_hint(vs)}")
    return vs  # type: ignore[return-value]


@dataclass(frozen=True)
class Volume:
    """A multi-channel 3D (or 2D) image with its physical calibration.

    Parameters
    ----------
    data : ndarray
        Image array of shape ``(C, Z, Y, X)``. Never modified in place by this package.
    voxel_size : tuple of float
        ``(z, y, x)`` in µm. For 2D images (``Z == 1``) the z entry is kept but has no meaning.
    channel_names : tuple of str
        One name per channel.
    nucleus_channel, golgi_channel : int or None
        Index of the channel holding nuclei / Golgi (or the second object), ``None`` if unknown.
    source : str, optional
        Path the volume was read from.
    metadata : dict
        Free-form reader information (original axes, units, scene, ...).
    """

    data: np.ndarray
    voxel_size: tuple[float, float, float]
    channel_names: tuple[str, ...] = ()
    nucleus_channel: Optional[int] = 0
    golgi_channel: Optional[int] = 1
    source: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
            object.__setattr__(self, "data", data)
        if data.ndim != 4:
            raise CellPolError(f"A Volume needs a (C, Z, Y, X) array, got {data.ndim} dimensions {data.shape}.")
        if min(data.shape) < 1:
            raise CellPolError(f"Image is empty: shape {data.shape}.")
        vs = parse_voxel_size(self.voxel_size)
        object.__setattr__(self, "voxel_size", vs)
        names = tuple(self.channel_names) if self.channel_names else tuple(f"C{i}" for i in range(data.shape[0]))
        if len(names) != data.shape[0]:
            raise CellPolError(f"{len(names)} channel names for {data.shape[0]} channels.")
        object.__setattr__(self, "channel_names", names)
        for role in ("nucleus_channel", "golgi_channel"):
            idx = getattr(self, role)
            if idx is not None and not 0 <= idx < data.shape[0]:
                # A default role pointing past the last channel just means "unknown" (e.g. 1-channel files).
                object.__setattr__(self, role, None)
        if self.nucleus_channel is not None and self.nucleus_channel == self.golgi_channel:
            raise ChannelError("The nucleus and Golgi channels must be different channels.")

    # --- shape helpers -------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.data.shape[1] == 1

    @property
    def extent_um(self) -> tuple[float, float, float]:
        """Physical size ``(z, y, x)`` in µm."""
        return tuple(n * s for n, s in zip(self.spatial_shape, self.voxel_size))  # type: ignore[return-value]

    def channel(self, index: int) -> np.ndarray:
        """Return channel ``index`` as a ``(Z, Y, X)`` view."""
        self._check_channel(index)
        return self.data[index]

    def _check_channel(self, index: int, what: str = "Channel") -> None:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_channels:
            names = ", ".join(f"{i}={n}" for i, n in enumerate(self.channel_names))
            where = f" in {self.source}" if self.source else ""
            raise ChannelError(
                f"{what} {index} does not exist{where}: the image has {self.n_channels} channel(s) ({names})."
            )

    @property
    def nucleus(self) -> np.ndarray:
        """The nucleus channel ``(Z, Y, X)``."""
        if self.nucleus_channel is None:
            raise ChannelError("No nucleus channel is set for this image; choose one.")
        return self.data[self.nucleus_channel]

    @property
    def golgi(self) -> np.ndarray:
        """The Golgi channel ``(Z, Y, X)``."""
        if self.golgi_channel is None:
            raise ChannelError("No Golgi channel is set for this image; choose one.")
        return self.data[self.golgi_channel]

    def with_roles(self, nucleus_channel: Optional[int] = None, golgi_channel: Optional[int] = None) -> "Volume":
        """Return a copy with the channel roles set (``None`` keeps the current one), validated."""
        n = self.nucleus_channel if nucleus_channel is None else nucleus_channel
        g = self.golgi_channel if golgi_channel is None else golgi_channel
        if n is None or g is None:
            raise ChannelError(
                f"Need both a nucleus and a Golgi channel; the image has {self.n_channels} channel(s)."
            )
        self._check_channel(n, "Nucleus channel")
        self._check_channel(g, "Golgi channel")
        if n == g:
            raise ChannelError(f"Nucleus and Golgi channel are both {n}; they must differ.")
        return dataclasses.replace(self, nucleus_channel=int(n), golgi_channel=int(g))

    def with_voxel_size(self, voxel_size: Sequence[float]) -> "Volume":
        return dataclasses.replace(self, voxel_size=parse_voxel_size(voxel_size))

    def describe(self) -> str:
        """One line for logs and status bars."""
        z, y, x = self.spatial_shape
        vz, vy, vx = self.voxel_size
        kind = "2D" if self.is_2d else "3D"
        return (
            f"{kind} {self.n_channels}ch {z}×{y}×{x} {self.data.dtype} voxel {vz:g}×{vy:g}×{vx:g} µm "
            f"(nucleus={self.nucleus_channel}, golgi={self.golgi_channel})"
        )
