"""Image readers and writers. Every reader returns a :class:`app.core.volume.Volume`.

(Being built: see the module docstring plan in the foundation issue.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.core.fileutil import atomic_path
from app.core.volume import Volume


def write_imagej_tiff(path: str | os.PathLike, volume: Volume, compress: bool = False) -> Path:
    """Write ``volume`` as an ImageJ hyperstack TIFF (axes ZCYX) with its voxel size, atomically."""
    import tifffile

    path = Path(path)
    vz, vy, vx = volume.voxel_size
    data = np.ascontiguousarray(np.moveaxis(volume.data, 0, 1))  # (C,Z,Y,X) -> (Z,C,Y,X)
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        data = data.astype(np.float32)
    metadata = {"axes": "ZCYX", "spacing": vz, "unit": "um", "Labels": list(volume.channel_names) * volume.spatial_shape[0]}
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            imagej=True,
            resolution=(1.0 / vx, 1.0 / vy),
            metadata=metadata,
            compression="zlib" if compress else None,
        )
    return path
