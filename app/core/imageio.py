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
- **Zeiss CZI** (one scene at a time) with the scaling from its XML metadata.

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
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError, ChannelError, FileFormatError, MissingVoxelSizeError
from app.core.fileutil import atomic_path
from app.core.volume import (
    ImplausibleInputWarning,
    Volume,
    implausible_voxel_size,
    large_z_step_warning,
    parse_voxel_size,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImplausibleInputWarning",
    "ImplausibleVoxelSizeError",
    "LEGACY_RGB_AXES",
    "MAX_CHANNELS",
    "NGMIC_PATCH_SHAPE",
    "find_images",
    "read_image_info",
    "read_volume",
    "write_imagej_tiff",
]

#: File name endings :func:`find_images` picks up from folders (compared case-insensitively).
IMAGE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".npy", ".czi")

#: Axes of the authors' files, ``(row, column, Z, channel)``: channel 0 = Golgi, 1 = nucleus, 2 = vessels.
LEGACY_RGB_AXES = "YXZC"

#: Shape of a 3DNGMic ``.npy`` patch, ``(row, column, Z, channel)``.
NGMIC_PATCH_SHAPE = (128, 128, 64, 2)

#: Most channels an ``axes`` string given by the caller may produce. Nucleus, Golgi and a few other stains
#: fit; more means the string put C on a stack axis (e.g. 'CZYX' for a ZCYX file gives one channel per slice).
MAX_CHANNELS = 8

_LAYOUTS = {"legacy-rgb": LEGACY_RGB_AXES}
_AUTHORS_CHANNEL_NAMES = ("golgi", "nucleus", "vessels")
_USER_AXES_LETTERS = "ZCYXTSQ"
# Axis letters that mean "a stack of planes of unknown meaning": tifffile's Q (other) and I (sequence).
_TIFF_STACK_AXES = "QI"

_NUCLEUS_WORDS = ("dapi", "hoechst", "nuc", "dna", "h2b")
_GOLGI_WORDS = ("golgi", "gm130", "gm-130", "giantin", "tgn46", "galt")

# Length units found in ImageJ, OME and CZI metadata, in µm. Spellings are normalised first (_unit_key).
_UNIT_TO_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micrometers": 1.0, "micrometres": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "nanometers": 1e-3, "nanometres": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "millimeters": 1e3, "millimetres": 1e3,
    "cm": 1e4, "m": 1e6, "inch": 25400.0,
}
_UNCALIBRATED_UNITS = ("", "pixel", "pixels", "px")

# Written by write_imagej_tiff as ImageJ image properties so that channel roles survive a round trip.
_ROLE_PROPERTIES = {"nucleus": "cellpol_nucleus_channel", "golgi": "cellpol_golgi_channel"}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_CZI_MAGIC = b"ZISRAWFILE"
_NPY_MAGIC = b"\x93NUMPY"
_KIND_NAMES = {"tiff": "TIFF", "czi": "CZI", "npy": "NumPy .npy"}
_SUFFIX_KINDS = {".tif": "tiff", ".tiff": "tiff", ".czi": "czi", ".npy": "npy"}


class ImplausibleVoxelSizeError(MissingVoxelSizeError):
    """The file's metadata gives a voxel size that no light microscope has (typically a wrong unit).

    A :class:`~app.core.errors.MissingVoxelSizeError`, so that a caller that asks the user for a voxel size
    when the file has none does the same here; the message says what the file gives and how to override it.
    """

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path = str(path)
        CellPolError.__init__(self, message, settings={"voxel_size": None})


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def read_volume(
    path: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    axes: Optional[str] = None,
    nucleus_channel: Optional[int] = None,
    golgi_channel: Optional[int] = None,
    scene: int = 0,
    layout: Optional[str] = None,
) -> Volume:
    """Read an image file into a :class:`~app.core.volume.Volume` of shape ``(C, Z, Y, X)``.

    Parameters
    ----------
    path : str or path-like
        A TIFF (ImageJ, OME or plain), a ``.npy`` array or a Zeiss ``.czi`` file.
    voxel_size : sequence of 3 float, optional
        ``(z, y, x)`` in µm. Overrides whatever the file says. Required when the file has no calibration.
    axes : str, optional
        Meaning of each dimension of the stored array, one letter per dimension from ``Z C Y X T S Q``
        (``S`` = RGB samples, counted as channels; ``T``/``Q`` must have length 1 unless a single ``Q`` is the
        only stack axis, then it is Z). Overrides the axes in the file's metadata (with an
        :class:`ImplausibleInputWarning` where that changes which axis is C or Z); the length must match the
        shape that :func:`read_image_info` reports. At most :data:`MAX_CHANNELS` channels: a string that makes
        more is refused, with the likely right string in the message. ``"YXZC"`` is the authors' layout, whose
        channels are named golgi, nucleus (and vessels). Not accepted for CZI files, which describe their own
        axes.
    nucleus_channel, golgi_channel : int, optional
        Channel roles. If not given they come from channel roles stored by :func:`write_imagej_tiff`, then
        from channel names (DAPI/Hoechst/nuc/DNA/H2B; Golgi/GM130/giantin/TGN46/GalT), then default to the
        first free channels (nucleus 0, Golgi 1). A single-channel image gets no Golgi channel.
    scene : int, default 0
        Scene of a CZI file or series (image) of a TIFF; ``metadata["n_scenes"]`` says how many there are.
    layout : {None, "legacy-rgb"}, optional
        ``"legacy-rgb"`` is a shortcut for ``axes="YXZC"`` on the authors' ``(row, column, Z, RGB)`` TIFFs.

    Returns
    -------
    Volume
        ``data`` may be a view of the array read from the file (transposed, not copied). ``metadata`` holds
        ``format``, ``original_shape``, ``original_axes``, ``axes_source``, ``original_dtype``, ``scene``,
        ``n_scenes``, ``is_2d``, ``voxel_size_source``, ``file_voxel_size``, ``channel_roles_source`` and
        ``warnings`` (the messages of the :class:`ImplausibleInputWarning` issued while reading, usually empty).

    Raises
    ------
    FileFormatError
        The file is missing, unreadable, damaged or truncated, of an unsupported type or layout, a time series,
        has an ambiguous axis order (pass ``axes``), ``axes`` that do not fit it or make more than
        :data:`MAX_CHANNELS` channels, or holds NaN/infinite values.
    MissingVoxelSizeError
        Neither the file nor the caller gives a voxel size. :class:`ImplausibleVoxelSizeError` (a subclass):
        the file's calibration is implausible (:func:`~app.core.volume.implausible_voxel_size`, e.g. a pixel
        size of 200 µm from a wrong unit) and the caller gives none.
    ChannelError
        A requested channel does not exist, or nucleus and Golgi are the same channel.
    CellPolError
        ``voxel_size``, ``axes``, ``layout`` or ``scene`` is malformed, or ``voxel_size`` is implausible.

    Warns
    -----
    ImplausibleInputWarning
        A 3D image's z step is above 50 µm (possible, but larger than a cell), or ``axes`` read the file
        otherwise than its own metadata does.

    Notes
    -----
    Pixel types: ``uint8``, ``uint16`` and ``float32`` are kept; ``bool`` becomes ``uint8``; other integers
    become ``uint16`` when all values fit in 0…65535, else ``float32``; ``float16``/``float64`` become
    ``float32``. For 2D images the z entry of the voxel size read from a file is 1.0 by convention.

    Examples
    --------
    A plain ``.npy`` carries no axes and no voxel size, so both are given:

    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> np.save(f"{folder}/stack.npy", np.zeros((4, 2, 8, 8), np.uint16))   # Z, C, Y, X
    >>> volume = read_volume(f"{folder}/stack.npy", axes="ZCYX", voxel_size=(1.0, 0.5, 0.5))
    >>> volume.data.shape, volume.voxel_size
    ((2, 4, 8, 8), (1.0, 0.5, 0.5))
    >>> volume.nucleus_channel, volume.golgi_channel
    (0, 1)

    Without a voxel size it refuses rather than guess:

    >>> read_volume(f"{folder}/stack.npy", axes="ZCYX")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    app.core.errors.MissingVoxelSizeError: .../stack.npy: no voxel size found in the file's metadata...
    """
    path = Path(path)
    user_voxel_size = parse_voxel_size(voxel_size)
    axes = _resolve_axes_argument(axes, layout)
    scene = _check_scene_argument(scene)
    notes: list[str] = []  # warnings: possible but unusual input
    with contextlib.ExitStack() as stack:
        raw = _open_image(path, scene, stack)
        if axes is not None and raw.format == "czi":
            raise CellPolError(f"{path}: 'axes' applies to TIFF and .npy files; a CZI file describes its own axes.")
        used_axes = axes if axes is not None else raw.axes
        if axes is not None:
            plan = _plan_user_axes(raw, axes, path, notes)
        else:
            plan = _plan_axes(raw.shape, raw.axes, raw.stack_axes, path)
        n_channels = plan.czyx_shape[0]
        if layout == "legacy-rgb" and n_channels != 3:
            raise FileFormatError(
                f"{path}: layout 'legacy-rgb' expects 3 colour channels (R, G, B) in the last axis, "
                f"but the image shape {raw.shape} gives {n_channels}."
            )
        names = _channel_names(raw.channel_names, used_axes, n_channels)
        nucleus, golgi, role_sources = _channel_roles(
            n_channels, names, {"nucleus": nucleus_channel, "golgi": golgi_channel}, raw.stored_roles, path
        )
        file_voxel_size, voxel_problem, implausible = _voxel_size_from(raw.calibration, plan.is_2d)
        if user_voxel_size is None and file_voxel_size is None:
            if implausible:
                raise ImplausibleVoxelSizeError(
                    path,
                    f"{path}: the voxel size in the file's metadata is unusable: {voxel_problem}. The file's "
                    "calibration is probably wrong (e.g. saved with a wrong unit); give the voxel size "
                    "(z, y, x in µm), which overrides the file's.",
                )
            raise MissingVoxelSizeError(str(path), f" ({voxel_problem})")
        data = raw.load()
    if data.shape != raw.shape:
        raise FileFormatError(_shape_mismatch_message(path, raw, data))
    data = _convert_dtype(plan.apply(data), path)
    voxel = user_voxel_size if user_voxel_size is not None else file_voxel_size
    if not plan.is_2d and large_z_step_warning(voxel):
        source = "given" if user_voxel_size is not None else "from the file's metadata"
        notes.append(f"{path}: {large_z_step_warning(voxel)} (voxel size {source}).")
    for note in notes:
        warnings.warn(note, ImplausibleInputWarning, stacklevel=2)
    metadata: dict[str, Any] = {
        "format": raw.format,
        "original_shape": tuple(raw.shape),
        "original_axes": used_axes,
        "axes_source": "user" if axes is not None else "file",
        "original_dtype": str(raw.dtype),
        "scene": scene,
        "n_scenes": raw.n_scenes,
        "is_2d": plan.is_2d,
        "voxel_size_source": "user" if user_voxel_size is not None else "file",
        "file_voxel_size": file_voxel_size,
        "channel_roles_source": role_sources,
        "warnings": notes,
    }
    return Volume(
        data=data,
        voxel_size=voxel,
        channel_names=names or (),
        nucleus_channel=nucleus,
        golgi_channel=golgi,
        source=str(path),
        metadata=metadata,
    )


def read_image_info(path: str | os.PathLike, scene: int = 0) -> dict[str, Any]:
    """Describe an image file without reading its pixels (for dialogs asking for voxel size or axes).

    Parameters
    ----------
    path : str or path-like
        Any file :func:`read_volume` accepts.
    scene : int, default 0
        Scene (CZI) or series (TIFF) to describe.

    Returns
    -------
    dict
        ``path``; ``format`` (``"imagej-tiff"``, ``"ome-tiff"``, ``"tiff"``, ``"npy"`` or ``"czi"``);
        ``shape``, ``axes`` and ``dtype`` as stored (``"?"`` marks an axis the file does not name, as in a
        ``.npy`` array); ``czyx_shape`` and ``is_2d`` (``None`` when the axes are
        ambiguous, with the reason in ``axes_problem``); ``voxel_size`` ``(z, y, x)`` in µm or ``None`` (the
        reason in ``voxel_size_problem``); ``channel_names`` (tuple or ``None``); ``n_scenes``; ``scene``.

    Raises
    ------
    FileFormatError
        The file is missing, unreadable, damaged or of an unsupported type.
    """
    path = Path(path)
    scene = _check_scene_argument(scene)
    with contextlib.ExitStack() as stack:
        raw = _open_image(path, scene, stack)
    try:
        plan: Optional[_AxesPlan] = _plan_axes(raw.shape, raw.axes, raw.stack_axes, path)
        axes_problem = None
    except FileFormatError as exc:
        plan, axes_problem = None, str(exc)
    if plan is None:
        voxel_size, voxel_problem = None, "axes unknown"
        names = raw.channel_names
    else:
        voxel_size, voxel_problem, _ = _voxel_size_from(raw.calibration, plan.is_2d)
        names = _channel_names(raw.channel_names, raw.axes, plan.czyx_shape[0])
    return {
        "path": str(path),
        "format": raw.format,
        "shape": tuple(raw.shape),
        "axes": raw.axes,
        "dtype": str(raw.dtype),
        "czyx_shape": plan.czyx_shape if plan else None,
        "is_2d": plan.is_2d if plan else None,
        "axes_problem": axes_problem,
        "voxel_size": voxel_size,
        "voxel_size_problem": voxel_problem or None,
        "channel_names": names,
        "n_scenes": raw.n_scenes,
        "scene": scene,
    }


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into the list of image files to process.

    Parameters
    ----------
    inputs : iterable of str or path-like
        Files (kept as given, whatever their suffix) and folders. A folder contributes its image files
        (suffix in :data:`IMAGE_SUFFIXES`), not recursively, in natural order (``2.npy`` before ``10.npy``),
        skipping hidden files and the project's ``*.vectors.*`` outputs.

    Returns
    -------
    list of Path
        Each file once, in input order. Empty if the folders hold no images.

    Raises
    ------
    FileFormatError
        An input does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        item_path = Path(item)
        if item_path.is_dir():
            candidates = sorted(
                (p for p in item_path.iterdir() if _is_image_name(p.name) and p.is_file()),
                key=lambda p: _natural_key(p.name),
            )
        elif item_path.exists():
            candidates = [item_path]
        else:
            raise FileFormatError(f"{item_path}: no such file or folder.")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


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
    import tifffile

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


# --------------------------------------------------------------------------------------------------
# What a format reader finds before any axes are interpreted
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calibration:
    """Pixel size found in a file, in µm (``None`` = absent); ``problem`` says why it is unusable."""

    x: Optional[float] = None
    y: Optional[float] = None
    z: Optional[float] = None
    problem: str = ""
    source: str = ""  # where the values come from, for messages (e.g. "ImageJ unit 'mm' and resolution tags")


@dataclass
class _RawImage:
    """A stored image as its format reader sees it; ``load()`` reads the pixels while the file is open."""

    format: str
    shape: tuple[int, ...]
    axes: str
    dtype: np.dtype
    load: Callable[[], np.ndarray]
    calibration: _Calibration
    stack_axes: str = ""
    channel_names: Optional[tuple[str, ...]] = None
    stored_roles: dict[str, Optional[int]] = field(default_factory=dict)
    n_scenes: int = 1


def _open_image(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    """Recognise the file type from its first bytes and open it with the matching reader."""
    if not path.exists():
        raise FileFormatError(f"{path}: file not found.")
    if path.is_dir():
        raise FileFormatError(f"{path} is a folder, not an image file.")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot open the file ({exc.strerror or exc}).") from exc
    if not head:
        raise FileFormatError(f"{path}: the file is empty (0 bytes).")
    kind = _sniff(head)
    if kind is None:
        expected = _SUFFIX_KINDS.get(path.suffix.lower())
        if expected is None:
            raise FileFormatError(
                f"{path}: unsupported file type '{path.suffix}'. "
                "Supported: TIFF (.tif, .tiff, OME-TIFF), Zeiss CZI (.czi) and NumPy arrays (.npy)."
            )
        raise FileFormatError(
            f"{path}: not a valid {_KIND_NAMES[expected]} file (its content is not in that format; "
            "it may be damaged or another kind of file renamed)."
        )
    openers = {"tiff": _open_tiff, "czi": _open_czi, "npy": _open_npy}
    return openers[kind](path, scene, stack)


def _sniff(head: bytes) -> Optional[str]:
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head.startswith(_CZI_MAGIC):
        return "czi"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    return None


@contextlib.contextmanager
def _reading(path: Path, kind: str) -> Iterator[None]:
    """Turn any failure of a reading library into one :class:`FileFormatError` naming the file."""
    try:
        yield
    except CellPolError:
        raise
    except MemoryError as exc:
        raise FileFormatError(f"{path}: not enough memory to read this {kind} file.") from exc
    except Exception as exc:  # noqa: BLE001 - the libraries raise anything on damaged input
        detail = str(exc) or type(exc).__name__
        raise FileFormatError(
            f"{path}: cannot read this {kind} file; it may be damaged or truncated ({detail})."
        ) from exc


def _size_text(n_bytes: int) -> str:
    """``"512 bytes"``, ``"40.5 kB"``, ``"2.1 GB"`` (decimal units)."""
    if n_bytes < 1000:
        return f"{n_bytes} byte{'s' if n_bytes != 1 else ''}"
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.1f} {unit}"
    return f"{n_bytes} bytes"  # pragma: no cover


def _check_scene(path: Path, scene: int, n_scenes: int) -> None:
    if scene >= n_scenes:
        raise FileFormatError(f"{path}: scene {scene} does not exist; the file has {n_scenes} scene(s) (0-based).")


# --- TIFF ---------------------------------------------------------------------------------------


class _TifffileErrors(logging.Handler):
    """Collect tifffile's error records from the current thread.

    tifffile logs damage it can work around (a broken page chain, tag values past the end of the file,
    unreadable ImageJ/OME metadata) and carries on, e.g. returning only the first plane of a truncated stack.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # An unknown tag type only costs that (private) tag; the image itself is intact.
        if record.thread == self.thread and "invalid data type" not in message:
            self.messages.append(message)


@contextlib.contextmanager
def _collect_tifffile_errors() -> Iterator[_TifffileErrors]:
    logger = logging.getLogger("tifffile")
    handler = _TifffileErrors()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _raise_if_damaged(path: Path, errors: _TifffileErrors, tif: Any = None) -> None:
    if not errors.messages:
        return
    # Only that complaint, with every page intact: the description and the pages disagree (no damage).
    imagej_mismatch = all("ImageJ series metadata invalid" in message for message in errors.messages)
    if tif is not None and tif.is_imagej and imagej_mismatch and not _cut_short(path, tif):
        raise FileFormatError(_imagej_mismatch_message(path, tif))
    raise FileFormatError(f"{path}: the TIFF file is damaged or truncated ({errors.messages[0]}).")


def _cut_short(path: Path, tif: Any) -> bool:
    """Whether the chain of pages is broken or a page's pixel data run past the end of the file."""
    try:
        size = path.stat().st_size
        with _collect_tifffile_errors() as errors:
            ends = [
                max((o + c for o, c in zip(page.dataoffsets, page.databytecounts)), default=0) for page in tif.pages
            ]
    except Exception:  # noqa: BLE001 - a page that cannot even be parsed is damage
        return True
    return bool(errors.messages) or any(end > size for end in ends)


def _imagej_mismatch_message(path: Path, tif: Any) -> str:
    """The ImageJ description declares other planes than the complete pages hold: say what each says.

    Not damage: tifffile's ImageJ writer (2026.3) stores an image 1 pixel wide this way.
    """
    meta = dict(tif.imagej_metadata or {})
    counts = [
        f"{meta[key]} {label}{'s' if meta[key] != 1 else ''}"
        for key, label in (("channels", "channel"), ("slices", "slice"), ("frames", "time point"))
        if isinstance(meta.get(key), int) and meta[key] > 1
    ]
    pages = tif.pages
    n_pages = len(pages)
    page_shape = "×".join(str(n) for n in pages[0].shape) if n_pages else "?"
    declared = meta.get("images", 1)
    return (
        f"{path}: the file's ImageJ description does not match the image data stored in it: it declares "
        f"{declared} plane{'s' if declared != 1 else ''}" + (f" ({' × '.join(counts)})" if counts else "")
        + f", but the file holds {n_pages} complete page{'s' if n_pages != 1 else ''} of {page_shape} pixels, so "
        "it cannot be read as an ImageJ hyperstack (tifffile's ImageJ writer, for one, writes images 1 pixel wide "
        "this way). Save the image again, e.g. from Fiji, or as OME-TIFF."
    )


def _shape_mismatch_message(path: Path, raw: "_RawImage", data: np.ndarray) -> str:
    declared = math.prod(raw.shape)
    if data.size != declared:
        return (
            f"{path}: the file's metadata describes an image of shape {raw.shape} (axes '{raw.axes}', {declared} "
            f"values) but its data hold {data.size} values (shape {data.shape}); the metadata does not match the "
            "data: the file was written inconsistently or is damaged."
        )
    return (
        f"{path}: expected an array of shape {raw.shape} but read {data.shape}; did the file change while it was "
        "being read?"
    )


def _open_tiff(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    import tifffile

    errors = stack.enter_context(_collect_tifffile_errors())
    with _reading(path, "TIFF"):
        tif = stack.enter_context(tifffile.TiffFile(path))
        n_scenes = len(tif.series)
        if n_scenes == 0:
            raise FileFormatError(f"{path}: the TIFF file contains no images.")
        _check_scene(path, scene, n_scenes)
        series = tif.series[scene]
        shape, axes, dtype = tuple(int(s) for s in series.shape), str(series.axes), np.dtype(series.dtype)
        ome_root = ET.fromstring(tif.ome_metadata) if tif.is_ome else None
        ij_meta = dict(tif.imagej_metadata or {}) if tif.is_imagej else None
        tags = tif.pages[0].tags
        resolution = (_tag_value(tags, "XResolution"), _tag_value(tags, "YResolution"))
    _raise_if_damaged(path, errors, tif)

    stored_roles: dict[str, Optional[int]] = {}
    if ome_root is not None:
        file_format = "ome-tiff"
        calibration, names = _ome_metadata(ome_root, scene)
    elif ij_meta is not None:
        file_format = "imagej-tiff"
        calibration = _imagej_calibration(ij_meta, resolution)
        names = _imagej_channel_names(ij_meta)
        stored_roles = _stored_roles(ij_meta.get("Properties"))
    else:
        file_format, names = "tiff", None
        calibration = _Calibration(problem="a plain TIFF without ImageJ or OME-TIFF calibration")

    def load() -> np.ndarray:
        with _reading(path, "TIFF"):
            data = series.asarray()
        _raise_if_damaged(path, errors, tif)
        return data

    return _RawImage(
        format=file_format,
        shape=shape,
        axes=axes,
        dtype=dtype,
        load=load,
        calibration=calibration,
        stack_axes=_TIFF_STACK_AXES,
        channel_names=names,
        stored_roles=stored_roles,
        n_scenes=n_scenes,
    )


def _tag_value(tags: Any, name: str) -> Any:
    tag = tags.get(name)
    return None if tag is None else tag.value


def _imagej_calibration(ij_meta: dict[str, Any], resolution: tuple[Any, Any]) -> _Calibration:
    """Pixel size from ImageJ metadata: resolution tags are pixels per ``unit``; ``spacing`` is z in ``unit``."""
    unit = ij_meta.get("unit")
    factor = _unit_to_um(unit)
    if factor is None:
        if unit is None or _unit_key(unit) in _UNCALIBRATED_UNITS:
            return _Calibration(problem=f"ImageJ unit is {unit!r}, i.e. uncalibrated" if unit else "no ImageJ unit")
        return _Calibration(problem=f"unknown ImageJ unit {unit!r}")
    pixels_per_unit = [_rational(value) for value in resolution]
    if any(v is None for v in pixels_per_unit):
        return _Calibration(problem="no XResolution/YResolution tags")
    x, y = (factor / v for v in pixels_per_unit)  # type: ignore[operator]
    # ImageJ leaves 'spacing' out when the z step is exactly 1 unit.
    spacing = _positive_float(ij_meta.get("spacing", 1.0))
    source = f"ImageJ unit {unit!r}, XResolution/YResolution tags and 'spacing'"
    return _Calibration(x=x, y=y, z=None if spacing is None else spacing * factor, source=source)


def _imagej_channel_names(ij_meta: dict[str, Any]) -> Optional[tuple[str, ...]]:
    """Channel names from ImageJ slice labels, if the labels are the same in every slice.

    Labels belong to planes (channel fastest, then z). Bio-Formats fills them with per-plane text such as
    ``"c:1/2 z:3/45 - name"``, which is not a channel name; such labels differ between slices.
    """
    labels = ij_meta.get("Labels")
    n_channels = ij_meta.get("channels", 1)
    n_planes = ij_meta.get("images", 1)
    if not isinstance(labels, (list, tuple)) or not isinstance(n_channels, int) or n_channels < 1:
        return None
    if len(labels) != n_planes or len(labels) % n_channels:
        return None
    names = tuple(labels[:n_channels])
    if not all(isinstance(n, str) and n.strip() for n in names):
        return None
    if any(tuple(labels[i : i + n_channels]) != names for i in range(0, len(labels), n_channels)):
        return None
    return names


def _stored_roles(properties: Any) -> dict[str, Optional[int]]:
    """Channel roles written by :func:`write_imagej_tiff`; malformed entries are ignored."""
    roles: dict[str, Optional[int]] = {}
    if not isinstance(properties, dict):
        return roles
    for role, key in _ROLE_PROPERTIES.items():
        value = str(properties.get(key, "")).strip()
        if value == "none":
            roles[role] = None
        elif value.isdigit():
            roles[role] = int(value)
    return roles


def _ome_metadata(root: ET.Element, scene: int) -> tuple[_Calibration, Optional[tuple[str, ...]]]:
    """Calibration and channel names of OME ``Image`` number ``scene``."""
    images = [el for el in root if _local_name(el.tag) == "Image"]
    image = images[scene] if scene < len(images) else []
    pixels = next((el for el in image if _local_name(el.tag) == "Pixels"), None)
    if pixels is None:
        return _Calibration(problem="no OME Pixels element for this image"), None
    sizes = {}
    for axis in "XYZ":
        value = _positive_float(pixels.get(f"PhysicalSize{axis}"))
        factor = _unit_to_um(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        sizes[axis] = None if value is None or factor is None else value * factor
    problem = "" if sizes["X"] and sizes["Y"] else "no usable OME PhysicalSizeX/PhysicalSizeY"
    if not problem and sizes["Z"] is None:
        problem = "no usable OME PhysicalSizeZ"
    names = tuple(el.get("Name", "") for el in pixels if _local_name(el.tag) == "Channel")
    calibration = _Calibration(x=sizes["X"], y=sizes["Y"], z=sizes["Z"], problem=problem,
                               source="OME PhysicalSizeX/Y/Z and their units")
    return calibration, names if all(names) else None


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# --- CZI ----------------------------------------------------------------------------------------


def _open_czi(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    import czifile

    with _reading(path, "CZI"):
        czi = stack.enter_context(czifile.CziFile(str(path)))
        file_axes = str(czi.axes)
        entries = list(czi.filtered_subblock_directory)
        dtype = np.dtype(czi.dtype)
        root = ET.fromstring(czi.metadata())
        if not entries:
            raise FileFormatError(f"{path}: the CZI file contains no image data.")
        scene_axis = file_axes.find("S")
        scene_starts = sorted({e.start[scene_axis] for e in entries}) if scene_axis >= 0 else [0]
        _check_scene(path, scene, len(scene_starts))
        if scene_axis >= 0:
            entries = [e for e in entries if e.start[scene_axis] == scene_starts[scene]]
        origin = tuple(min(e.start[i] for e in entries) for i in range(len(file_axes)))
        stop = tuple(max(e.start[i] + e.shape[i] for e in entries) for i in range(len(file_axes)))
    full_shape = tuple(int(b - a) for a, b in zip(origin, stop))
    # The scene axis is selected (length 1 now) and dropped; CZI's '0' axis holds RGB samples.
    keep = [i for i, letter in enumerate(file_axes) if letter != "S"]
    shape = tuple(full_shape[i] for i in keep)
    axes = "".join(file_axes[i] for i in keep).replace("0", "S")

    def load() -> np.ndarray:
        with _reading(path, "CZI"):
            out = np.zeros(full_shape, dtype)
            for entry in entries:
                tile = entry.data_segment().data(resize=True, order=0)
                out[tuple(slice(s - o, s - o + n) for s, o, n in zip(entry.start, origin, tile.shape))] = tile
        return out.reshape(shape)

    return _RawImage(
        format="czi",
        shape=shape,
        axes=axes,
        dtype=dtype,
        load=load,
        calibration=_czi_calibration(root),
        channel_names=_czi_channel_names(root),
        n_scenes=len(scene_starts),
    )


def _czi_calibration(root: ET.Element) -> _Calibration:
    """``Scaling/Items/Distance`` values are metres per pixel."""
    sizes = {}
    for distance in root.iterfind(".//Scaling/Items/Distance"):
        value = _positive_float(distance.findtext("Value"))
        if value is not None:
            sizes[distance.get("Id")] = value * 1e6
    if "X" not in sizes or "Y" not in sizes:
        return _Calibration(problem="no X/Y scaling in the CZI metadata")
    problem = "" if "Z" in sizes else "no Z scaling in the CZI metadata"
    return _Calibration(x=sizes["X"], y=sizes["Y"], z=sizes.get("Z"), problem=problem,
                        source="CZI Scaling/Items/Distance")


def _czi_channel_names(root: ET.Element) -> Optional[tuple[str, ...]]:
    names = tuple(el.get("Name", "") for el in root.iterfind(".//Information/Image/Dimensions/Channels/Channel"))
    return names if names and all(names) else None


# --- NumPy --------------------------------------------------------------------------------------


def _open_npy(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    _check_scene(path, scene, 1)
    with _reading(path, "NumPy .npy"):
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise FileFormatError(f"{path}: unsupported .npy format version {version}.")
            data_offset = handle.tell()
            file_size = os.fstat(handle.fileno()).st_size
    if dtype.hasobject:
        raise FileFormatError(f"{path}: the .npy file holds Python objects, not an image; it is not loaded.")
    # Checked before loading: numpy would first allocate the whole declared array, so a truncated file whose
    # header declares a large array fails as "out of memory" instead of as truncated.
    expected = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    if file_size - data_offset < expected:
        raise FileFormatError(
            f"{path}: the .npy file is truncated: its header declares a {np.dtype(dtype)} array of shape "
            f"{tuple(int(s) for s in shape)}, {_size_text(expected)} of data, but only "
            f"{_size_text(file_size - data_offset)} follow the header. It was not completely written or copied; "
            "save or copy it again."
        )
    if tuple(shape) == NGMIC_PATCH_SHAPE:
        axes = LEGACY_RGB_AXES
    else:
        # No axes in the file: read_volume needs the caller's axes (the planner explains which).
        axes = "?" * len(shape)

    def load() -> np.ndarray:
        with _reading(path, "NumPy .npy"):
            return np.load(path, allow_pickle=False)

    return _RawImage(
        format="npy",
        shape=tuple(int(s) for s in shape),
        axes=axes,
        dtype=np.dtype(dtype),
        load=load,
        calibration=_Calibration(problem=".npy files carry no voxel size"),
    )


# --------------------------------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------------------------------


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


def _check_scene_argument(scene: Any) -> int:
    if isinstance(scene, bool) or not isinstance(scene, (int, np.integer)) or scene < 0:
        raise CellPolError(f"Scene must be a non-negative integer, got {scene!r}.")
    return int(scene)


# --------------------------------------------------------------------------------------------------
# Calibration, channels, pixel types
# --------------------------------------------------------------------------------------------------


def _voxel_size_from(
    calibration: _Calibration, is_2d: bool
) -> tuple[Optional[tuple[float, float, float]], str, bool]:
    """``((z, y, x), "", False)`` in µm, or ``(None, reason, implausible)``. 2D images get z = 1.0 by convention.

    ``implausible`` is true when the file does give a voxel size but no light microscope has it (the rule of
    :func:`~app.core.volume.implausible_voxel_size`); ``reason`` then says where the value came from.
    """
    if calibration.x is None or calibration.y is None:
        return None, calibration.problem or "no pixel size", False
    z = 1.0 if is_2d else calibration.z
    if z is None:
        return None, calibration.problem or "no z spacing", False
    values = (z, calibration.y, calibration.x)
    problem = implausible_voxel_size(values)
    if problem:
        where = f" ({calibration.source})" if calibration.source else ""
        return None, (
            f"its calibration{where} gives {z:g} × {calibration.y:g} × {calibration.x:g} µm (z, y, x), which is "
            f"{problem}"
        ), True
    try:
        return parse_voxel_size(values), "", False
    except CellPolError as exc:
        return None, f"the file's calibration is unusable: {str(exc).rstrip('.')}", False


def _unit_key(unit: Any) -> str:
    """Normalise a unit spelling: ImageJ writes µ as a literal ``\\u00B5``; Greek mu and mojibake occur."""
    text = str(unit).strip()
    for variant in ("\\u00B5", "\\u00b5", "Âµ", "\u03bc"):
        text = text.replace(variant, "\u00b5")
    return text.lower()


def _unit_to_um(unit: Any) -> Optional[float]:
    """Micrometres per ``unit``, or ``None`` for 'pixel', missing or unknown units."""
    if unit is None:
        return None
    return _UNIT_TO_UM.get(_unit_key(unit))


def _positive_float(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _rational(value: Any) -> Optional[float]:
    """A TIFF RATIONAL tag value ``(numerator, denominator)`` as a positive float, else ``None``."""
    if isinstance(value, tuple) and len(value) == 2:
        numerator, denominator = value
        if not denominator:
            return None
        return _positive_float(numerator / denominator)
    return _positive_float(value)


def _channel_names(file_names: Optional[tuple[str, ...]], axes: str, n_channels: int) -> Optional[tuple[str, ...]]:
    """The file's channel names if they fit, else the authors' names for their layout, else ``None``."""
    if file_names is not None and len(file_names) == n_channels:
        return tuple(file_names)
    if axes in (LEGACY_RGB_AXES, "YXZS") and n_channels in (2, 3):
        return _AUTHORS_CHANNEL_NAMES[:n_channels]
    return None


def _channel_roles(
    n_channels: int,
    names: Optional[tuple[str, ...]],
    requested: dict[str, Optional[int]],
    stored: dict[str, Optional[int]],
    path: Path,
) -> tuple[Optional[int], Optional[int], dict[str, Optional[str]]]:
    """Decide the nucleus and Golgi channels: caller, then stored roles, then names, then first free channel."""
    roles: dict[str, Optional[int]] = {}
    sources: dict[str, Optional[str]] = {"nucleus": None, "golgi": None}
    shown_names = names or tuple(f"C{i}" for i in range(n_channels))
    listing = ", ".join(f"{i}={n}" for i, n in enumerate(shown_names))
    for role, index in requested.items():
        if index is None:
            continue
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n_channels:
            label = "Nucleus" if role == "nucleus" else "Golgi"
            raise ChannelError(
                f"{label} channel {index!r} does not exist in {path}: "
                f"the image has {n_channels} channel(s) ({listing})."
            )
        roles[role], sources[role] = int(index), "user"
    if len(roles) == 2 and roles["nucleus"] == roles["golgi"]:
        raise ChannelError(f"Nucleus and Golgi channel are both {roles['nucleus']}; they must differ.")

    def taken() -> set[int]:
        return {i for i in roles.values() if i is not None}

    for role, index in stored.items():
        if role not in roles and (index is None or (index < n_channels and index not in taken())):
            roles[role], sources[role] = index, "file"
    if names:
        nucleus_like = {i for i, n in enumerate(names) if any(w in n.lower() for w in _NUCLEUS_WORDS)}
        golgi_like = {i for i, n in enumerate(names) if any(w in n.lower() for w in _GOLGI_WORDS)}
        for role, matches in (("nucleus", nucleus_like - golgi_like), ("golgi", golgi_like - nucleus_like)):
            if role not in roles and len(matches) == 1 and not matches & taken():
                roles[role], sources[role] = matches.pop(), "names"
    for role, min_channels in (("nucleus", 1), ("golgi", 2)):
        if role not in roles and n_channels >= min_channels:
            free = [i for i in range(n_channels) if i not in taken()]
            roles[role] = free[0] if free else None
            sources[role] = "default" if free else None
    return roles.get("nucleus"), roles.get("golgi"), sources


def _convert_dtype(data: np.ndarray, path: Path) -> np.ndarray:
    """Keep uint8/uint16/float32; convert other numeric types; refuse NaN/Inf and non-numeric data."""
    kind = data.dtype.kind
    if data.dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return data
    if kind == "b":
        return data.astype(np.uint8)
    if kind in "iu":
        low, high = data.min(), data.max()
        return data.astype(np.uint16 if low >= 0 and high <= np.iinfo(np.uint16).max else np.float32)
    if kind == "f":
        if data.dtype != np.dtype(np.float32):
            with np.errstate(over="ignore"):
                data = data.astype(np.float32)
        # min/max propagate NaN and reach ±Inf without a temporary mask the size of the image.
        if not (math.isfinite(data.min()) and math.isfinite(data.max())):
            raise FileFormatError(
                f"{path}: the image contains NaN or infinite values (or values beyond the float32 range)."
            )
        return data
    raise FileFormatError(f"{path}: pixel type {data.dtype} is not supported (use integer or float images).")


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    lower = name.lower()
    return not name.startswith(".") and ".vectors." not in lower and lower.endswith(IMAGE_SUFFIXES)


def _natural_key(name: str) -> list[Any]:
    # re.split with a group alternates text and digits, so int and str never meet in a comparison.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
