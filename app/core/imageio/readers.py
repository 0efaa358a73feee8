"""Format readers: each recognises its file, opens it and describes what it holds as a
:class:`~app.core.imageio.metadata._RawImage` whose ``load()`` reads the pixels and whose ``region()`` reads parts
of them (TIFF with ImageJ or OME-TIFF metadata, Zeiss CZI, NumPy ``.npy`` here; Leica LIF, Nikon ND2 and OME-Zarr
in :mod:`~app.core.imageio.microscope`). A damaged or truncated file is one :class:`~app.core.errors.FileFormatError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

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
_LIF_MAGIC = b"\x70\x00\x00\x00"
_ND2_MAGICS = (b"\xda\xce\xbe\x0a", b"\x00\x00\x00\x0cjP  ")  # current ND2; the old JPEG 2000 kind
_KIND_NAMES = {"tiff": "TIFF", "czi": "CZI", "npy": "NumPy .npy", "lif": "Leica LIF", "nd2": "Nikon ND2",
               "zarr": "OME-Zarr"}
_SUFFIX_KINDS = {".tif": "tiff", ".tiff": "tiff", ".czi": "czi", ".npy": "npy", ".lif": "lif", ".nd2": "nd2",
                 ".zarr": "zarr"}
#: Files whose presence makes a folder a Zarr store (v2: .zgroup/.zarray, v3: zarr.json).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
SUPPORTED_TEXT = (
    "TIFF (.tif, .tiff, OME-TIFF), Zeiss CZI (.czi), Leica LIF (.lif), Nikon ND2 (.nd2), OME-Zarr (.zarr folder) "
    "and NumPy arrays (.npy)"
)


def is_zarr_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding a Zarr store (an OME-Zarr image is a folder, not a file)."""
    return path.is_dir() and any((path / marker).is_file() for marker in _ZARR_MARKERS)


def _open_image(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    """Recognise the file type from its first bytes and open it with the matching reader."""
    if not path.exists():
        raise FileFormatError(f"{path}: file not found.")
    if is_zarr_folder(path):
        from app.core.imageio.microscope import _open_zarr

        return _open_zarr(path, scene, stack)
    if path.is_dir():
        if path.suffix.lower() == ".zarr":
            raise FileFormatError(f"{path}: not a valid OME-Zarr image (the folder holds no zarr.json or .zgroup).")
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
            raise FileFormatError(f"{path}: unsupported file type '{path.suffix}'. Supported: {SUPPORTED_TEXT}.")
        raise FileFormatError(
            f"{path}: not a valid {_KIND_NAMES[expected]} file (its content is not in that format; "
            "it may be damaged or another kind of file renamed)."
        )
    if kind in ("lif", "nd2"):
        from app.core.imageio import microscope  # the readers' packages load only when such a file is opened

        return getattr(microscope, f"_open_{kind}")(path, scene, stack)
    openers = {"tiff": _open_tiff, "czi": _open_czi, "npy": _open_npy}
    return openers[kind](path, scene, stack)


def _sniff(head: bytes) -> Optional[str]:
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head.startswith(_CZI_MAGIC):
        return "czi"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_LIF_MAGIC) and head[8:9] == b"\x2a":
        return "lif"
    if head.startswith(_ND2_MAGICS):
        return "nd2"
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
        raise FileFormatError(
            f"{path}: scene {scene} does not exist; the file has {n_scenes} scene(s) (series), numbered from 0."
        )


class _GuardedRegions:
    """An array-like whose reads turn a library's failure into one :class:`FileFormatError` (``after`` runs
    after each read, e.g. to refuse damage the library only logged)."""

    def __init__(self, array: Any, path: Path, kind: str, after: Optional[Callable[[], None]] = None) -> None:
        self.array, self.path, self.kind, self.after = array, path, kind, after
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        with _reading(self.path, self.kind):
            data = np.asarray(self.array[key])
        if self.after is not None:
            self.after()
        return data


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

    def region() -> _GuardedRegions:
        # tifffile's zarr store reads the pages (or tiles) a region touches, nothing else; level 0 of a pyramid.
        import zarr

        with _reading(path, "TIFF"):
            array = zarr.open(series.aszarr(level=0), mode="r")
        return _GuardedRegions(array, path, "TIFF", after=lambda: _raise_if_damaged(path, errors, tif))

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
        region=region,
        series_names=tuple(_tiff_series_name(s, i, ome_root) for i, s in enumerate(tif.series)),
        lazy_note="pages or tiles touched by the region (tifffile's zarr store)",
    )


def _tiff_series_name(series: Any, index: int, ome_root: Optional[ET.Element]) -> str:
    """An OME image's Name, else tifffile's series name, else ``"Series <index>"``."""
    if ome_root is not None:
        images = [el for el in ome_root if el.tag.rsplit("}", 1)[-1] == "Image"]
        if index < len(images) and images[index].get("Name"):
            return str(images[index].get("Name"))
    name = str(getattr(series, "name", "") or "")
    return name if name and name.lower() not in ("shaped", "imagej", "generic", "uniform") else f"Series {index}"


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

    regions = _CziRegions(path, entries, origin, full_shape, keep, dtype)

    def load() -> np.ndarray:
        return regions[tuple(slice(None) for _ in shape)]

    names = [el.get("Name", "") for el in root.iterfind(".//Information/Image/Dimensions/S/Scenes/Scene")]
    return _RawImage(
        format="czi",
        shape=shape,
        axes=axes,
        dtype=dtype,
        load=load,
        calibration=_czi_calibration(root),
        channel_names=_czi_channel_names(root),
        n_scenes=len(scene_starts),
        region=lambda: regions,
        series_names=tuple(
            names[i] if i < len(names) and names[i] else f"Scene {i}" for i in range(len(scene_starts))
        ),
        lazy_note="the subblocks (tiles, planes) the region touches",
    )


class _CziRegions:
    """One CZI scene as an array-like (stored axes without S) whose ``[slices]`` decodes only the subblocks
    that overlap the region."""

    def __init__(self, path: Path, entries: list, origin: tuple, full_shape: tuple, keep: list, dtype) -> None:
        self.path, self.entries, self.origin, self.full_shape, self.keep = path, entries, origin, full_shape, keep
        self.shape = tuple(full_shape[i] for i in keep)
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (len(self.shape) - len(key))
        wanted = [(0, n) for n in self.full_shape]  # [start, stop) per file axis, relative to the scene origin
        for axis, item in zip(self.keep, key):
            if not isinstance(item, slice) or item.step not in (None, 1):
                raise TypeError("CZI regions are read with one step-1 slice per axis")
            start, stop, _ = item.indices(self.full_shape[axis])
            wanted[axis] = (start, max(start, stop))
        out = np.zeros([b - a for a, b in wanted], self.dtype)
        with _reading(self.path, "CZI"):
            for entry in self.entries:
                spans = [(s - o, s - o + n) for s, o, n in zip(entry.start, self.origin, entry.shape)]
                overlap = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(spans, wanted)]
                if any(a >= b for a, b in overlap):
                    continue
                tile = entry.data_segment().data(resize=True, order=0)
                source = tuple(slice(a - s[0], b - s[0]) for (a, b), s in zip(overlap, spans))
                target = tuple(slice(a - w[0], b - w[0]) for (a, b), w in zip(overlap, wanted))
                out[target] = tile[source]
        return out.reshape([out.shape[i] for i in self.keep])


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

    def region() -> _GuardedRegions:
        with _reading(path, "NumPy .npy"):
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # reads only the pages a region touches
        return _GuardedRegions(mapped, path, "NumPy .npy")

    return _RawImage(
        region=region,
        lazy_note="the bytes the region touches (memory-mapped)",
        format="npy",
        shape=tuple(int(s) for s in shape),
        axes=axes,
        dtype=np.dtype(dtype),
        load=load,
        calibration=_Calibration(problem=".npy files carry no voxel size"),
    )
