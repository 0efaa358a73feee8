"""Writers: :func:`write_imagej_tiff`, an ImageJ hyperstack that :func:`~app.core.imageio.read_volume` reads back
as it was (data, voxel size, channel names and roles)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from app.core.fileutil import atomic_path
from app.core.imageio.metadata import _ROLE_PROPERTIES
from app.core.volume import Volume

def write_imagej_tiff(path: str | os.PathLike, volume: Volume, compress: bool = False) -> Path:
    """Write ``volume`` as an ImageJ hyperstack TIFF (axes ZCYX) with its voxel size, atomically.

    Channel names are stored as ImageJ slice labels and the channel roles as ImageJ image properties, so
    :func:`read_volume` gives back the same data, voxel size, names and roles. A 2D volume (``Z == 1``) reads
    back with the conventional z voxel size of 1.0.

    Parameters
    ----------
    path : str or path-like
        Destination; its folder is created if needed.
    volume : Volume
        The image to write. Types other than uint8/uint16/float32 are written as float32.
    compress : bool, default False
        Use lossless zlib compression.

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    vz, vy, vx = volume.voxel_size
    data = np.ascontiguousarray(np.moveaxis(volume.data, 0, 1))  # (C,Z,Y,X) -> (Z,C,Y,X)
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        data = data.astype(np.float32)
    roles = {"nucleus": volume.nucleus_channel, "golgi": volume.golgi_channel}
    axes = "ZCYX"
    if data.shape[-1] == 1:
        # tifffile's ImageJ writer drops a trailing axis of length 1 as if it were RGB samples, which would
        # store an image 1 pixel wide with its description and pages at odds: give it that samples axis.
        data, axes = data[..., np.newaxis], "ZCYXS"
    metadata = {
        "axes": axes,
        "spacing": vz,
        "unit": "um",
        "Labels": list(volume.channel_names) * volume.spatial_shape[0],
        "Properties": {_ROLE_PROPERTIES[role]: "none" if idx is None else str(idx) for role, idx in roles.items()},
    }
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
