"""Reading parts of an image without loading it whole (:func:`open_lazy`, :class:`LazyImage`) and listing the series
(scenes) a file holds (:func:`list_series`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.imageio.axes import _AxesPlan, _plan_axes, _plan_user_axes, _resolve_axes_argument
from app.core.imageio.metadata import _voxel_size_from
from app.core.imageio.readers import _open_image
from app.core.imageio.reading import describe_raw
from app.core.volume import parse_voxel_size


@dataclass(frozen=True)
class SeriesInfo:
    """One series (scene, position, image) of a file, described without reading its pixels.

    Attributes
    ----------
    index : int
        0-based, as ``series=`` / ``scene=`` and the CLI's ``--series`` take it.
    name : str
        The name the file gives it (``"Series 3"`` where it gives none).
    shape : tuple of 4 int or None
        ``(C, Z, Y, X)``; ``None`` when the axes are ambiguous (``axes_problem`` says why).
    voxel_size : tuple of 3 float or None
        ``(z, y, x)`` in µm from the file; ``None`` when it has none (``voxel_size_problem`` says why).
    channel_names : tuple of str or None
    dtype : str
    """

    index: int
    name: str
    shape: Optional[tuple[int, int, int, int]]
    voxel_size: Optional[tuple[float, float, float]]
    channel_names: Optional[tuple[str, ...]]
    dtype: str
    axes_problem: Optional[str] = None
    voxel_size_problem: Optional[str] = None


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """Every series (scene) of an image file: index, name, ``(C, Z, Y, X)`` shape, voxel size, channel names.

    A file with one image (most TIFFs, ``.npy``) has one series. Leica ``.lif`` files list every image, Zeiss
    ``.czi`` their scenes, Nikon ``.nd2`` their stage positions, OME-TIFF its images and a bioformats2raw
    OME-Zarr folder its numbered images.

    Raises
    ------
    FileFormatError
        The file is missing, damaged or of an unsupported type.
    """
    path = Path(path)
    found = []
    with contextlib.ExitStack() as stack:
        first = _open_image(path, 0, stack)
    names = first.series_names or tuple(f"Series {i}" for i in range(first.n_scenes))
    for index in range(first.n_scenes):
        if index == 0:
            raw = first
        else:
            with contextlib.ExitStack() as stack:
                raw = _open_image(path, index, stack)
        plan, axes_problem, voxel, voxel_problem = describe_raw(raw, path)
        found.append(SeriesInfo(
            index=index,
            name=names[index] if index < len(names) else f"Series {index}",
            shape=plan.czyx_shape if plan else None,
            voxel_size=voxel,
            channel_names=_names_for(raw.channel_names, plan),
            dtype=str(raw.dtype),
            axes_problem=axes_problem,
            voxel_size_problem=voxel_problem or None,
        ))
    return found


def _names_for(names: Optional[tuple[str, ...]], plan: Optional[_AxesPlan]) -> Optional[tuple[str, ...]]:
    if names is None or plan is None or len(names) != plan.czyx_shape[0]:
        return None
    return tuple(names)


class LazyImage:
    """One series of an image file, open for reading regions of it as ``(C, Z, Y, X)`` arrays.

    Made by :func:`open_lazy`; use it as a context manager (or call :meth:`close`) so the file is closed.
    Only the part asked for is read: tifffile's zarr store reads the TIFF pages or tiles a region touches,
    Zarr the chunks, CZI the subblocks, ``.npy`` is memory-mapped, ND2 reads the frames (planes) and LIF the
    planes a region touches (each plane whole, then cropped: readlif reads whole planes). :attr:`lazy_note`
    says which applies.

    Attributes
    ----------
    path : Path
    series : int
    shape : tuple of 4 int
        ``(C, Z, Y, X)``.
    dtype : numpy.dtype
        The file's pixel type; regions come back in it (:func:`read_volume` converts unusual types, this does
        not).
    voxel_size : tuple of 3 float or None
        ``(z, y, x)`` in µm: the caller's if given, else the file's, else ``None`` (``voxel_size_problem``
        says why).
    channel_names : tuple of str or None
    series_names : tuple of str
        The names of every series in the file (``len`` = number of series).
    format : str
        As :func:`read_image_info` names it (``"ome-tiff"``, ``"czi"``, ``"lif"``, ``"nd2"``, ``"ome-zarr"``...).
    """

    def __init__(self, path: str | os.PathLike, series: int = 0, axes: Optional[str] = None,
                 voxel_size: Optional[Sequence[float]] = None) -> None:
        self.path = Path(path)
        self.series = _check_index(series)
        user_voxel = parse_voxel_size(voxel_size)
        axes = _resolve_axes_argument(axes, None)
        self._stack = contextlib.ExitStack()
        self._whole: Optional[np.ndarray] = None
        try:
            raw = _open_image(self.path, self.series, self._stack)
            if axes is not None:
                self._plan = _plan_user_axes(raw, axes, self.path, [])
            else:
                self._plan = _plan_axes(raw.shape, raw.axes, raw.stack_axes, self.path)
            self._stored_shape = tuple(raw.shape)
            self._regions: Any = raw.region() if raw.region is not None else None
            if self._regions is None:
                self._whole = raw.load()  # the format cannot read parts: read it once, then cut regions from it
        except BaseException:
            self._stack.close()
            raise
        self.format = raw.format
        self.dtype = np.dtype(raw.dtype)
        self.shape: tuple[int, int, int, int] = tuple(self._plan.czyx_shape)  # type: ignore[assignment]
        file_voxel, problem, _ = _voxel_size_from(raw.calibration, self._plan.is_2d)
        self.voxel_size = user_voxel if user_voxel is not None else file_voxel
        self.voxel_size_problem = None if self.voxel_size is not None else (problem or "no voxel size")
        self.channel_names = _names_for(raw.channel_names, self._plan)
        self.series_names = raw.series_names or tuple(f"Series {i}" for i in range(raw.n_scenes))
        self.lazy_note = raw.lazy_note if self._regions is not None else "none: read whole once"

    @property
    def series_name(self) -> str:
        return self.series_names[self.series] if self.series < len(self.series_names) else f"Series {self.series}"

    # --- reading ----------------------------------------------------------------------------
    def read_region(self, z: Any = None, y: Any = None, x: Any = None, c: Any = None) -> np.ndarray:
        """The pixels of a box, as a new ``(C, Z, Y, X)`` array of :attr:`dtype`.

        Parameters
        ----------
        z, y, x, c : slice or (start, stop) or None
            The range along each axis (``None`` = all); steps are not supported. Out-of-range bounds are
            clipped as numpy slicing does.

        Raises
        ------
        FileFormatError
            The file turns out damaged where the region lies.
        CellPolError
            A range is malformed.
        """
        ranges = {letter: _as_range(value, size, letter)
                  for letter, value, size in zip("CZYX", (c, z, y, x), self.shape)}
        key = []
        for role, size in zip(self._plan.roles, self._stored_shape):
            key.append(slice(0, size) if role == "-" else slice(*ranges[role]))
        if self._regions is not None:
            block = np.asarray(self._regions[tuple(key)])
        else:
            block = self._whole[tuple(key)]
        kept = "".join(r for r in self._plan.roles if r != "-")
        block = block.reshape([n for n, r in zip(block.shape, self._plan.roles) if r != "-"])
        for letter in "ZC":
            if letter not in kept:
                block, kept = block[np.newaxis], letter + kept
        return np.ascontiguousarray(block.transpose([kept.index(letter) for letter in "CZYX"]))

    def __getitem__(self, key: Any) -> np.ndarray:
        """``image[c, z, y, x]`` with slices (steps other than 1 are refused) or integers (which drop that axis,
        as in numpy); fewer entries mean whole axes."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 4:
            raise CellPolError(f"A LazyImage has 4 axes (C, Z, Y, X); got {len(key)} indices.")
        key = key + (slice(None),) * (4 - len(key))
        drop = []
        ranges = []
        for axis, (item, size) in enumerate(zip(key, self.shape)):
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                index = int(item) + (size if item < 0 else 0)
                if not 0 <= index < size:
                    raise IndexError(f"index {item} is out of range for axis {'CZYX'[axis]} of length {size}")
                ranges.append(slice(index, index + 1))
                drop.append(axis)
            else:
                ranges.append(item)
        c, z, y, x = ranges
        block = self.read_region(z=z, y=y, x=x, c=c)
        return block.reshape([n for axis, n in enumerate(block.shape) if axis not in drop])

    def read(self) -> np.ndarray:
        """The whole series as ``(C, Z, Y, X)``."""
        return self.read_region()

    # --- life -------------------------------------------------------------------------------
    def close(self) -> None:
        self._regions = None
        self._whole = None
        self._stack.close()

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LazyImage({str(self.path)!r}, series={self.series}, shape={self.shape}, dtype={self.dtype}, "
                f"voxel_size={self.voxel_size})")


def open_lazy(path: str | os.PathLike, series: int = 0, axes: Optional[str] = None,
              voxel_size: Optional[Sequence[float]] = None) -> LazyImage:
    """Open one series of an image file for reading regions without loading it whole.

    Parameters
    ----------
    path : str or path-like
        Any file :func:`read_volume` reads (an OME-Zarr image is a folder).
    series : int, default 0
        Which series (scene) of the file; :func:`list_series` lists them.
    axes : str, optional
        As for :func:`read_volume`, for files that do not name their axes.
    voxel_size : sequence of 3 float, optional
        ``(z, y, x)`` in µm; overrides the file's. Unlike :func:`read_volume`, a missing voxel size is not an
        error here (:attr:`LazyImage.voxel_size` is then ``None``).

    Returns
    -------
    LazyImage

    Raises
    ------
    FileFormatError
        The file is missing, damaged, of an unsupported type, or its axes are ambiguous (give ``axes``).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> path = tempfile.mkdtemp() + "/stack.ome.tif"
    >>> tifffile.imwrite(path, np.zeros((4, 2, 64, 64), np.uint16), ome=True,
    ...                  metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1})
    >>> with open_lazy(path) as image:
    ...     image.shape, image.voxel_size, image.read_region(z=(1, 3), y=(0, 16), x=(0, 8)).shape
    ((2, 4, 64, 64), (1.0, 0.2, 0.2), (2, 2, 16, 8))
    """
    return LazyImage(path, series=series, axes=axes, voxel_size=voxel_size)


def _check_index(series: Any) -> int:
    if isinstance(series, bool) or not isinstance(series, (int, np.integer)) or series < 0:
        raise CellPolError(f"The series (scene) must be a whole number from 0 up, got {series!r}.")
    return int(series)


def _as_range(value: Any, size: int, letter: str) -> tuple[int, int]:
    if value is None:
        return 0, size
    if isinstance(value, slice):
        if value.step not in (None, 1):
            raise CellPolError(f"Regions are read without steps; the {letter} range {value} has step {value.step}.")
        start, stop, _ = value.indices(size)
        return start, max(start, stop)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        start, stop, _ = slice(*value).indices(size)
        return start, max(start, stop)
    raise CellPolError(f"The {letter} range must be a slice or (start, stop), got {value!r}.")
