"""What a file says about itself, before any axes are interpreted: the raw image a format reader finds, its pixel size
per format (ImageJ resolution tags and unit, OME ``PhysicalSize*``, CZI scaling) and the rule that makes it a voxel
size, channel names, and the channel roles :func:`~app.core.imageio.write_imagej_tiff` stores."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from app.core.errors import CellPolError, MissingVoxelSizeError
from app.core.volume import implausible_voxel_size, parse_voxel_size

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


class ImplausibleVoxelSizeError(MissingVoxelSizeError):
    """The file's metadata gives a voxel size that no light microscope has (typically a wrong unit).

    A :class:`~app.core.errors.MissingVoxelSizeError`, so that a caller that asks the user for a voxel size
    when the file has none does the same here; the message says what the file gives and how to override it.
    """

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path = str(path)
        CellPolError.__init__(self, message, settings={"voxel_size": None})


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
    """A stored image as its format reader sees it; ``load()`` reads the pixels while the file is open.

    ``region`` (where the format can read part of an image) returns an array-like in the stored axes whose
    ``[...]`` with one slice per axis reads only that part; ``series_names`` names every series (scene) of
    the file, ``scene`` being the one described.
    """

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
    region: Optional[Callable[[], Any]] = None
    series_names: tuple[str, ...] = ()
    lazy_note: str = ""  # how far region reads are lazy for this format, for LazyImage.lazy_note


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
