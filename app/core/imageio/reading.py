"""The public reading API: :func:`read_volume` (a file into a :class:`~app.core.volume.Volume`),
:func:`read_image_info` (a file described without reading its pixels) and :func:`find_images` (files and folders
into a list of images); with the channel names and roles and the pixel types every reader shares."""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError, ChannelError, FileFormatError, MissingVoxelSizeError
from app.core.imageio.axes import (
    LEGACY_RGB_AXES,
    _AxesPlan,
    _plan_axes,
    _plan_user_axes,
    _resolve_axes_argument,
)
from app.core.imageio.metadata import ImplausibleVoxelSizeError, _RawImage, _voxel_size_from
from app.core.imageio.readers import _open_image, is_zarr_folder
from app.core.volume import ImplausibleInputWarning, Volume, large_z_step_warning, parse_voxel_size

#: File name endings :func:`find_images` picks up from folders (compared case-insensitively).
IMAGE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".npy", ".czi", ".lif", ".nd2", ".ome.zarr", ".zarr")

_AUTHORS_CHANNEL_NAMES = ("golgi", "nucleus", "vessels")

_NUCLEUS_WORDS = ("dapi", "hoechst", "nuc", "dna", "h2b")
_GOLGI_WORDS = ("golgi", "gm130", "gm-130", "giantin", "tgn46", "galt")


def read_volume(
    path: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    axes: Optional[str] = None,
    nucleus_channel: Optional[int] = None,
    golgi_channel: Optional[int] = None,
    scene: int = 0,
    layout: Optional[str] = None,
    series: Optional[int] = None,
) -> Volume:
    """Read an image file into a :class:`~app.core.volume.Volume` of shape ``(C, Z, Y, X)``.

    Parameters
    ----------
    path : str or path-like
        A TIFF (ImageJ, OME or plain), a ``.npy`` array, a Zeiss ``.czi``, Leica ``.lif`` or Nikon ``.nd2`` file,
        or an OME-Zarr folder (level 0 of its multiscales).
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
        Series (scene) to read: the scene of a CZI file, image of a LIF or OME-TIFF file, stage position of an
        ND2 file, numbered image of a bioformats2raw OME-Zarr; ``metadata["n_scenes"]`` says how many there are
        and :func:`~app.core.imageio.list_series` lists them.
    layout : {None, "legacy-rgb"}, optional
        ``"legacy-rgb"`` is a shortcut for ``axes="YXZC"`` on the authors' ``(row, column, Z, RGB)`` TIFFs.
    series : int, optional
        Another name for ``scene`` (given, it wins).

    Returns
    -------
    Volume
        ``data`` may be a view of the array read from the file (transposed, not copied). ``metadata`` holds
        ``format``, ``original_shape``, ``original_axes``, ``axes_source``, ``original_dtype``, ``scene``,
        ``series_name``, ``n_scenes``, ``is_2d``, ``voxel_size_source``, ``file_voxel_size``, ``channel_roles_source`` and
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
    scene = _check_scene_argument(scene if series is None else series)
    notes: list[str] = []  # warnings: possible but unusual input
    with contextlib.ExitStack() as stack:
        raw = _open_image(path, scene, stack)
        plan = _plan_reading(raw, axes, layout, path, notes)
        used_axes = axes if axes is not None else raw.axes
        n_channels = plan.czyx_shape[0]
        names = _channel_names(raw.channel_names, used_axes, n_channels)
        nucleus, golgi, role_sources = _channel_roles(
            n_channels, names, {"nucleus": nucleus_channel, "golgi": golgi_channel}, raw.stored_roles, path
        )
        file_voxel_size = _file_voxel_size(raw, plan, user_voxel_size, path)
        data = raw.load()
    data = _to_czyx(data, raw, plan, path)
    voxel = user_voxel_size if user_voxel_size is not None else file_voxel_size
    notes += _z_step_notes(path, plan, voxel, user_voxel_size is not None)
    for note in notes:
        warnings.warn(note, ImplausibleInputWarning, stacklevel=2)
    metadata: dict[str, Any] = {
        "format": raw.format,
        "original_shape": tuple(raw.shape),
        "original_axes": used_axes,
        "axes_source": "user" if axes is not None else "file",
        "original_dtype": str(raw.dtype),
        "scene": scene,
        "series_name": raw.series_names[scene] if scene < len(raw.series_names) else f"Series {scene}",
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


def read_image_info(path: str | os.PathLike, scene: int = 0, series: Optional[int] = None) -> dict[str, Any]:
    """Describe an image file without reading its pixels (for dialogs asking for voxel size or axes).

    Parameters
    ----------
    path : str or path-like
        Any file :func:`read_volume` accepts.
    scene : int, default 0
        Series (scene) to describe, as for :func:`read_volume`; ``series`` is another name for it.

    Returns
    -------
    dict
        ``path``; ``format`` (``"imagej-tiff"``, ``"ome-tiff"``, ``"tiff"``, ``"npy"`` or ``"czi"``);
        ``shape``, ``axes`` and ``dtype`` as stored (``"?"`` marks an axis the file does not name, as in a
        ``.npy`` array); ``czyx_shape`` and ``is_2d`` (``None`` when the axes are
        ambiguous, with the reason in ``axes_problem``); ``voxel_size`` ``(z, y, x)`` in µm or ``None`` (the
        reason in ``voxel_size_problem``); ``channel_names`` (tuple or ``None``); ``n_scenes``; ``scene``;
        ``series_names`` (every series' name).

    Raises
    ------
    FileFormatError
        The file is missing, unreadable, damaged or of an unsupported type.
    """
    path = Path(path)
    scene = _check_scene_argument(scene if series is None else series)
    with contextlib.ExitStack() as stack:
        raw = _open_image(path, scene, stack)
    plan, axes_problem, voxel_size, voxel_problem = describe_raw(raw, path)
    names = raw.channel_names if plan is None else _channel_names(raw.channel_names, raw.axes, plan.czyx_shape[0])
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
        "series_names": raw.series_names or tuple(f"Series {i}" for i in range(raw.n_scenes)),
    }


def describe_raw(raw: "_RawImage", path: Path) -> tuple[Optional[_AxesPlan], Optional[str],
                                                       Optional[tuple[float, float, float]], Optional[str]]:
    """How the file's stored axes map to C, Z, Y, X and its voxel size, or why either is unknown:
    ``(plan, axes_problem, voxel_size, voxel_problem)`` (shared by :func:`read_image_info` and
    :func:`~app.core.imageio.lazy.list_series`)."""
    try:
        plan: Optional[_AxesPlan] = _plan_axes(raw.shape, raw.axes, raw.stack_axes, path)
    except FileFormatError as exc:
        return None, str(exc), None, "axes unknown"
    voxel_size, voxel_problem, _ = _voxel_size_from(raw.calibration, plan.is_2d)
    return plan, None, voxel_size, voxel_problem


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into the list of image files to process.

    Parameters
    ----------
    inputs : iterable of str or path-like
        Files (kept as given, whatever their suffix) and folders. An OME-Zarr folder is one image. Another
        folder contributes its image files and OME-Zarr folders (suffix in :data:`IMAGE_SUFFIXES`), not recursively, in natural order (``2.npy`` before ``10.npy``),
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
        if is_zarr_folder(item_path):
            candidates = [item_path]
        elif item_path.is_dir():
            candidates = sorted(
                (p for p in item_path.iterdir() if _is_image_name(p.name) and (p.is_file() or is_zarr_folder(p))),
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


# --- the steps of read_volume --------------------------------------------------------------------------------


def _plan_reading(
    raw: _RawImage, axes: Optional[str], layout: Optional[str], path: Path, notes: list[str]
) -> _AxesPlan:
    """How to turn the stored array into ``(C, Z, Y, X)``: by the caller's ``axes`` (the one rule for them,
    :func:`~app.core.imageio.axes._plan_user_axes`, which adds its warnings to ``notes``), else by the file's own.

    Raises
    ------
    CellPolError
        ``axes`` given for a CZI file.
    FileFormatError
        Axes that do not fit, or a ``"legacy-rgb"`` layout without 3 colour channels.
    """
    if axes is not None and raw.format == "czi":
        raise CellPolError(f"{path}: 'axes' applies to TIFF and .npy files; a CZI file describes its own axes.")
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
    return plan


def _file_voxel_size(
    raw: _RawImage, plan: _AxesPlan, user_voxel_size: Optional[tuple[float, float, float]], path: Path
) -> Optional[tuple[float, float, float]]:
    """The voxel size the file gives (``None`` when it gives no usable one), checked before any pixel is read.

    Raises
    ------
    MissingVoxelSizeError
        Neither the file nor the caller gives a voxel size; :class:`ImplausibleVoxelSizeError` when the
        file's is implausible.
    """
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
    return file_voxel_size


def _to_czyx(data: np.ndarray, raw: _RawImage, plan: _AxesPlan, path: Path) -> np.ndarray:
    """The pixels read as ``(C, Z, Y, X)`` (a view where the pixel type is kept) in a supported pixel type.

    Raises
    ------
    FileFormatError
        The data read do not have the shape the file declares, or hold NaN/infinite values or an
        unsupported pixel type.
    """
    if data.shape != raw.shape:
        raise FileFormatError(_shape_mismatch_message(path, raw, data))
    return _convert_dtype(plan.apply(data), path)


def _z_step_notes(path: Path, plan: _AxesPlan, voxel: tuple[float, float, float], user_given: bool) -> list[str]:
    """A warning when a 3D image's z step is possible but larger than a cell (none for 2D images)."""
    if not plan.is_2d and large_z_step_warning(voxel):
        source = "given" if user_given else "from the file's metadata"
        return [f"{path}: {large_z_step_warning(voxel)} (voxel size {source})."]
    return []


# --- arguments, channels, pixel types, folders ---------------------------------------------------------------


def _check_scene_argument(scene: Any) -> int:
    if isinstance(scene, bool) or not isinstance(scene, (int, np.integer)) or scene < 0:
        raise CellPolError(f"Scene (series) must be a non-negative integer, got {scene!r}.")
    return int(scene)


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


def _is_image_name(name: str) -> bool:
    lower = name.lower()
    return not name.startswith(".") and ".vectors." not in lower and lower.endswith(IMAGE_SUFFIXES)


def _natural_key(name: str) -> list[Any]:
    # re.split with a group alternates text and digits, so int and str never meet in a comparison.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
