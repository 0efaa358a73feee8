"""The scoring protocol: the 14 levels, their thresholds per protocol (3D, 2D), the capped cost, the border
margin, and which protocol applies to an image (rules 2, 4 and the cut-off of rule 3 in :mod:`app.core.evaluate`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from app.core.errors import CellPolError
from app.core.pairs import PairSet

#: Maximum-allowed-fraction levels, τL = 0 (MAF 0.75, loosest) … 13 (MAF 0.10, strictest).
MAF_LEVELS: np.ndarray = np.round(0.75 - 0.05 * np.arange(14), 2)
MAF_LEVELS.setflags(write=False)
N_LEVELS = len(MAF_LEVELS)

#: Cost given to assignment entries above the cut-off (the paper's value).
CAPPED_COST = 2000.0

#: Per-TP metrics, in the order they appear in tables.
PER_TP_METRICS = ("cos", "cos_paper", "error", "nd", "gd")

#: Absorbs floating-point noise when a distance equals a threshold (µm).
_TIE_TOLERANCE_UM = 1e-9


@dataclass(frozen=True)
class Protocol:
    """Threshold factors of one scoring protocol.

    Parameters
    ----------
    name : str
        ``"3d"`` or ``"2d"``.
    nucleus_factor, golgi_factor : float
        ``τ_n = nucleus_factor · MAF`` and ``τ_g = golgi_factor · MAF`` (µm).
    cost_cutoff_um : float
        Assignment costs (``dN + dG``) above this are replaced by :data:`CAPPED_COST`.
    """

    name: str
    nucleus_factor: float
    golgi_factor: float
    cost_cutoff_um: float

    @property
    def tau_nucleus(self) -> np.ndarray:
        """τ_n per level (µm), shape ``(14,)``."""
        return np.round(self.nucleus_factor * MAF_LEVELS, 10)

    @property
    def tau_golgi(self) -> np.ndarray:
        """τ_g per level (µm), shape ``(14,)``."""
        return np.round(self.golgi_factor * MAF_LEVELS, 10)


PROTOCOLS: dict[str, Protocol] = {
    "3d": Protocol("3d", 16.0, 8.0, 10.0),
    "2d": Protocol("2d", 22.0, 14.0, 20.0),
}


def thresholds(protocol: str = "3d") -> tuple[np.ndarray, np.ndarray]:
    """``(τ_n, τ_g)`` in µm for each of the 14 levels of ``protocol`` (``"3d"`` or ``"2d"``)."""
    return _protocol(protocol).tau_nucleus, _protocol(protocol).tau_golgi


def _protocol(name: str) -> Protocol:
    key = str(name).lower()
    if key not in PROTOCOLS:
        raise CellPolError(f"Unknown scoring protocol {name!r}: use '3d', '2d' or 'auto'.")
    return PROTOCOLS[key]


def border_margin_voxels(border_margin_um: float, voxel_x_um: float) -> int:
    """In-plane border margin in voxels: ``int(border_margin_um / voxel_x_um)`` (paper: 10).

    A tiny tolerance keeps e.g. 7 / 0.07 from flooring to 99 through rounding noise.
    """
    if border_margin_um < 0 or not math.isfinite(border_margin_um):
        raise CellPolError(f"The border margin must be a non-negative number of µm, got {border_margin_um}.")
    return int(math.floor(border_margin_um / voxel_x_um + 1e-9))


def _check_border_margin(border_margin_um: Any) -> None:
    if not (isinstance(border_margin_um, (int, float)) and math.isfinite(border_margin_um) and border_margin_um >= 0):
        raise CellPolError(f"The border margin must be a non-negative number of µm, got {border_margin_um!r}.")


def _choose_protocol(
    protocol: str, shape: Optional[tuple[Optional[int], int, int]], gt: PairSet, pred: PairSet
) -> tuple[Protocol, str]:
    key = str(protocol).lower()
    if key != "auto":
        return _protocol(key), "given"
    if shape is not None and shape[0] is not None:
        return (PROTOCOLS["2d"], "image Z == 1") if shape[0] == 1 else (PROTOCOLS["3d"], "image Z > 1")
    z = np.concatenate([gt.nuclei[:, 0], gt.golgi[:, 0], pred.nuclei[:, 0], pred.golgi[:, 0]])
    if z.size and np.all(z == 0):
        return PROTOCOLS["2d"], "image size unknown; every z coordinate is 0"
    return PROTOCOLS["3d"], "image size unknown; default"
