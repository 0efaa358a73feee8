"""Format readers: each recognises its file, opens it and describes what it holds as a
:class:`~app.core.imageio.metadata._RawImage` whose ``load()`` reads the pixels (TIFF with ImageJ or OME-TIFF
metadata, Zeiss CZI, NumPy ``.npy``). A damaged or truncated file is one :class:`~app.core.errors.FileFormatError`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import tifffile

from app.core.errors import CellPolError, FileFormatError
from app.core.imageio.axes import _TIFF_STACK_AXES, LEGACY_RGB_AXES, NGMIC_PATCH_SHAPE
from app.core.imageio.metadata import (
    _Calibration,
    _czi_calibration,
    _czi_channel_names,
    _imagej_calibration,
    _imagej_channel_names,
    _ome_metadata,
    _RawImage,
    _stored_roles,
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_CZI_MAGIC = b"ZISRAWFILE"
_NPY_MAGIC = b"\x93NUMPY"
_KIND_NAMES = {"tiff": "TIFF", "czi": "CZI", "npy": "NumPy .npy"}
_SUFFIX_KINDS = {".tif": "tiff", ".tiff": "tiff", ".czi": "czi", ".npy": "npy"}


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


def _open_tiff(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
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


# --- CZI ----------------------------------------------------------------------------------------



def _open_czi(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    # Deliberately lazy: czifile imports scipy.ndimage (~0.2 s), and the app imports this module at start-up
    # (through app.core.batch and app.core.project); it is loaded when the first CZI file is opened.
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
