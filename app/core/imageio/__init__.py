"""Image readers and writers. Every reader returns a :class:`app.core.volume.Volume`.

Supported inputs (the format is recognised from the file's first bytes, not only its suffix):

- **ImageJ hyperstack TIFF** in any of ``ZCYX``, ``ZYX``, ``CYX``, ``YX`` (singleton ``T``/``S`` axes are
  dropped; a real time series is refused). Voxel size from the ``XResolution``/``YResolution`` tags (pixels per
  unit) with ``unit`` and ``spacing`` from the ImageJ description, the way ImageJ writes them.
- **OME-TIFF**: ``PhysicalSizeX/Y/Z`` with their unit attributes (µm by default) and channel names.
- **Plain TIFF** with an explicit ``axes`` string (``"ZYXC"``, ``"YXZC"``, ``"CZYX"``, ...).
- **The authors' legacy RGB TIFF**, an array ``(row, column, Z, RGB)`` with R = Golgi, G = nucleus,
  B = vessels: ``layout="legacy-rgb"`` (or ``axes="YXZC"``).
- **3DNGMic patches** ``.npy`` of shape ``(128, 128, 64, 2)`` = ``(row, column, Z, channel)``, channel 0 =
  Golgi, channel 1 = nuclei. Other ``.npy`` shapes need ``axes``.
- **Zeiss CZI** (every scene) with the scaling and channel names from its XML metadata (czifile).
- **Leica LIF** (every image of the project) with the dimension lengths and dye names (readlif).
- **Nikon ND2** (every stage position) with voxel size and channel names (the ``nd2`` package).
- **OME-Zarr** folders (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3; bioformats2raw folders hold several images):
  level 0 of the multiscales, scale and units of the axes, ``omero`` channel labels (zarr).

A file with several series (scenes) is read one series at a time (``scene=``/``series=``); :func:`list_series`
lists them. :func:`open_lazy` reads regions of a series without loading it whole (what is read for a region depends
on the format: :class:`LazyImage`).

Conventions every reader keeps:

- The array is ``(C, Z, Y, X)``; a 2D image has ``Z == 1``, ``metadata["is_2d"] is True`` and the z entry of its
  voxel size is **1.0 by convention** (a single plane has no z spacing; the entry is only a placeholder).
- The voxel size comes from the file or from the caller (the caller wins). If neither has one,
  :class:`~app.core.errors.MissingVoxelSizeError` is raised: there is never a silent default.
  ``metadata["voxel_size_source"]`` is ``"file"`` or ``"user"``.
- Pixel types are ``uint8``, ``uint16`` or ``float32``; other types are converted (see :func:`read_volume`).
- Anything wrong with a file becomes one :class:`~app.core.errors.FileFormatError` with a clear message.
  A file that ``tifffile`` reports as damaged is refused even where ``tifffile`` could return *some* pixels,
  because a truncated stack otherwise reads as a plausible but wrong single plane.

Modules
-------
:mod:`~app.core.imageio.reading` the public API (:func:`read_volume`, :func:`read_image_info`, :func:`find_images`),
channel roles and pixel types; :mod:`~app.core.imageio.axes` the axes rules; :mod:`~app.core.imageio.metadata`
voxel size, channel names and roles as each format stores them; :mod:`~app.core.imageio.readers` the format readers;
:mod:`~app.core.imageio.writers` :func:`write_imagej_tiff`; :mod:`~app.core.imageio.microscope` the LIF, ND2 and
OME-Zarr readers; :mod:`~app.core.imageio.lazy` :func:`open_lazy` and :func:`list_series`. Everything public is importable from here.
"""

from __future__ import annotations

from app.core.imageio.axes import LEGACY_RGB_AXES, MAX_CHANNELS, NGMIC_PATCH_SHAPE
from app.core.imageio.metadata import ImplausibleVoxelSizeError, _imagej_calibration, _unit_to_um
from app.core.imageio.lazy import LazyImage, SeriesInfo, list_series, open_lazy
from app.core.imageio.reading import IMAGE_SUFFIXES, find_images, read_image_info, read_volume
from app.core.imageio.writers import write_imagej_tiff
from app.core.volume import ImplausibleInputWarning

__all__ = [
    "IMAGE_SUFFIXES",
    "ImplausibleInputWarning",
    "ImplausibleVoxelSizeError",
    "LazyImage",
    "LEGACY_RGB_AXES",
    "MAX_CHANNELS",
    "NGMIC_PATCH_SHAPE",
    "SeriesInfo",
    "find_images",
    "list_series",
    "open_lazy",
    "read_image_info",
    "read_volume",
    "write_imagej_tiff",
]
# Private names that tests import from here: _imagej_calibration, _unit_to_um (re-exported above, not part of
# __all__).
