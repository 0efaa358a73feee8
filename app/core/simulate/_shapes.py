"""Real object shapes for the simulator: the 3DNGMic nucleus and Golgi masks.

The masks are GPL-licensed data: they are loaded at run time from the user's folder
(``SimConfig.shapes_dir``) and never bundled with the application.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from app.core.errors import CellPolError

#: Voxel size ``(z, y, x)`` µm of the 3DNGMic object masks. Their data were resampled to
#: 0.666 µm in x/y (reference §5.1, §6.3: a 16 µm box is 24 voxels); z stayed at 0.27 µm.
SHAPES_VOXEL_SIZE_3DNGMIC = (0.27, 0.666, 0.666)

NUCLEUS_SHAPES_FILE = "nuclei_shapes.npz"
GOLGI_SHAPES_FILE = "Golgi_shapes.npz"


@functools.lru_cache(maxsize=4)
def _load_shapes(path: str, min_voxels: int) -> tuple[np.ndarray, ...]:
    """Masks from one ``.npz`` file as ``(z, y, x)`` uint8 arrays with at least ``min_voxels`` voxels."""
    file = Path(path)
    if not file.is_file():
        raise CellPolError(f"Object shapes not found: {file} (expected {NUCLEUS_SHAPES_FILE} and {GOLGI_SHAPES_FILE}).")
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = sorted(k for k in archive.files if k.startswith("shape_"))
            arrays = [np.asarray(archive[k]) for k in keys]
    except (OSError, ValueError) as exc:
        raise CellPolError(f"{file}: not a readable shapes archive ({exc}).") from None
    # Stored as (a0 = row, a1 = column, a2 = z); we work in (z, y, x).
    masks = tuple(
        np.ascontiguousarray(np.transpose(a > 0, (2, 0, 1))).astype(np.uint8)
        for a in arrays
        if a.ndim == 3 and int(np.count_nonzero(a)) >= min_voxels
    )
    if not masks:
        raise CellPolError(f"{file}: no usable object masks (3D, at least {min_voxels} voxels).")
    return masks


def _transform_shape(
    rng: np.random.Generator, mask: np.ndarray, source_voxel: tuple[float, float, float]
) -> np.ndarray:
    """Random flips and in-plane rotation of a mask at its own voxel size; returns a soft float mask."""
    # Smoothing before resampling turns the blocky masks into a level set we can threshold at 0.5.
    sigma = (0.25 / source_voxel[0], 0.35 / source_voxel[1], 0.35 / source_voxel[2])
    soft = ndi.gaussian_filter(np.pad(mask.astype(np.float32), 2), sigma)
    if rng.uniform() < 0.5:
        soft = soft[:, ::-1, :]
    if rng.uniform() < 0.5:
        soft = soft[:, :, ::-1]
    angle = rng.uniform(0.0, 360.0)
    if abs(source_voxel[1] - source_voxel[2]) < 1e-6:
        soft = ndi.rotate(soft, angle, axes=(1, 2), reshape=True, order=1, mode="constant", prefilter=False)
    return np.ascontiguousarray(np.clip(soft, 0.0, 1.0), dtype=np.float32)


def _mask_ellipse(mask: np.ndarray, voxel: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """Equivalent ellipse of a soft mask's footprint: (a, b, angle, half-thickness), µm."""
    occ = mask >= 0.5
    idx = np.argwhere(occ).astype(np.float64) * np.asarray(voxel)
    if len(idx) < 3:
        return 1.0, 1.0, 0.0, 1.0
    cov = np.cov(idx.T)
    cyx = cov[1:, 1:]
    evals, evecs = np.linalg.eigh(cyx)
    # A uniform ellipse has variance a²/4 along each axis (2σ); the 3DNGMic masks are Otsu-tight, about
    # 20 % inside the nucleus edge one sees after blur, hence 2.4σ.
    a = 2.4 * math.sqrt(max(evals[1], 1e-6))
    b = 2.4 * math.sqrt(max(evals[0], 1e-6))
    major = evecs[:, 1]  # (y, x)
    angle = math.atan2(major[0], major[1])
    half_thickness = math.sqrt(5.0 * max(cov[0, 0], 1e-6))
    return a, b, angle, half_thickness
