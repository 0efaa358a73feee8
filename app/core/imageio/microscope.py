"""Readers of microscope formats through the packages made for them: Leica ``.lif`` (readlif), Nikon ``.nd2`` (nd2)
and OME-Zarr (zarr, with the OME-NGFF metadata read here). Each opens one series (scene) of a file as a
:class:`~app.core.imageio.metadata._RawImage` whose ``region()`` reads parts of it; every failure of a package on a
damaged file becomes one :class:`~app.core.errors.FileFormatError`.

The packages are imported inside the openers: a user who never opens such a file never pays for them (nd2 brings
dask and ome-types, zarr its codecs).
"""

from __future__ import annotations

import contextlib
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import numpy as np

from app.core.errors import FileFormatError
from app.core.imageio.metadata import _Calibration, _local_name, _positive_float, _RawImage, _unit_to_um
from app.core.imageio.readers import _check_scene, _GuardedRegions, _reading, _size_text


class _PlaneRegions:
    """An image stored plane by plane as an array-like over ``axes`` (the last two are Y, X) whose ``[slices]``
    reads only the planes the region touches (each whole, then cropped): for readers that read one plane at a
    time, such as readlif's ``get_frame``."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, read_plane, path: Path, kind: str) -> None:
        self.shape, self.dtype, self.read_plane, self.path, self.kind = shape, np.dtype(dtype), read_plane, path, kind

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (len(self.shape) - len(key))
        ranges = []
        for item, size in zip(key, self.shape):
            if not isinstance(item, slice) or item.step not in (None, 1):
                raise TypeError("plane regions are read with one step-1 slice per axis")
            start, stop, _ = item.indices(size)
            ranges.append(range(start, max(start, stop)))
        *outer, rows, cols = ranges
        out = np.zeros([len(r) for r in ranges], self.dtype)
        with _reading(self.path, self.kind):
            for index in np.ndindex(*[len(r) for r in outer]):
                plane = np.asarray(self.read_plane(*[r[i] for r, i in zip(outer, index)]))
                if plane.shape != self.shape[-2:]:
                    raise FileFormatError(
                        f"{self.path}: a plane of this {self.kind} file holds {plane.shape} pixels instead of "
                        f"{self.shape[-2:]}; the file is damaged or truncated."
                    )
                out[index] = plane[rows.start:rows.stop, cols.start:cols.stop]
        return out


# --- Leica LIF ------------------------------------------------------------------------------------


def _open_lif(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    from readlif.reader import LifFile

    with _reading(path, "Leica LIF"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lif = LifFile(str(path))
    if any("truncated" in str(w.message) for w in caught):
        # readlif would go on and return blank planes for the missing images: refuse instead.
        raise FileFormatError(
            f"{path}: the Leica LIF file is truncated (some images' data are missing); it was not completely "
            "written or copied. Copy or export it again."
        )
    n_series = int(lif.num_images)
    if n_series == 0:
        raise FileFormatError(f"{path}: the Leica LIF file contains no images.")
    _check_scene(path, scene, n_series)
    with _reading(path, "Leica LIF"):
        image = lif.get_image(scene)
        dims = image.dims  # (x, y, z, t, m)
        n_channels = int(image.channels)
        depth = max(image.bit_depth) if image.bit_depth else 0
        element = _lif_image_elements(lif.xml_root)[scene]
    if dims.m > 1:
        raise FileFormatError(
            f"{path}: series {scene} is a tiled (mosaic) image of {dims.m} tiles; merge the tiles in LAS X and "
            "export the merged image."
        )
    if not 0 < depth <= 16:
        raise FileFormatError(f"{path}: series {scene} has {depth}-bit pixels; 8 to 16 bits are supported.")
    dtype = np.dtype(np.uint8 if depth <= 8 else np.uint16)
    expected = n_channels * dims.x * dims.y * dims.z * dims.t * dtype.itemsize
    offset, length = image.offsets
    file_size = path.stat().st_size
    if length != expected or offset + length > file_size:
        raise FileFormatError(
            f"{path}: series {scene} of this Leica LIF file should hold {_size_text(expected)} of pixels but "
            f"{_size_text(max(0, min(length, file_size - offset)))} are there; the file is damaged or truncated."
        )
    shape = (int(dims.t), n_channels, int(dims.z), int(dims.y), int(dims.x))

    def read_plane(t: int, c: int, z: int) -> np.ndarray:
        return np.asarray(image.get_frame(z=z, t=t, c=c), dtype=dtype)

    regions = _PlaneRegions(shape, dtype, read_plane, path, "Leica LIF")
    scale_x, scale_y, scale_z = image.scale[:3]  # pixels per µm, or None
    sizes = [None if s is None or not s > 0 else 1.0 / s for s in (scale_x, scale_y, scale_z)]
    problem = "" if sizes[0] and sizes[1] else "no X/Y length in the LIF metadata"
    if not problem and sizes[2] is None:
        problem = "no Z length in the LIF metadata"
    return _RawImage(
        format="lif",
        shape=shape,
        axes="TCZYX",
        dtype=dtype,
        load=lambda: regions[:],
        calibration=_Calibration(x=sizes[0], y=sizes[1], z=sizes[2], problem=problem,
                                 source="LIF DimensionDescription Length"),
        channel_names=_lif_channel_names(element, n_channels),
        n_scenes=n_series,
        region=lambda: regions,
        series_names=tuple(str(info.get("name") or f"Series {i}") for i, info in enumerate(lif.image_list)),
        lazy_note="the planes (z, channel) the region touches, each read whole (readlif reads planes)",
    )


def _lif_image_elements(root: ET.Element) -> list[ET.Element]:
    """The XML ``Element`` of every image, in readlif's order (depth first, an image before its children)."""
    found: list[ET.Element] = []

    def walk(tree: ET.Element) -> None:
        children = tree.findall("./Children/Element") or tree.findall("./Element")
        for item in children:
            if item.findall("./Data/Image"):
                found.append(item)
            if item.findall("./Children/Element/Data"):
                walk(item)

    walk(root)
    return found


def _lif_channel_names(element: ET.Element, n_channels: int) -> Optional[tuple[str, ...]]:
    """Dye names (``ChannelProperty`` DyeName, as LAS X writes them), else the channels' LUT colours."""
    channels = element.findall("./Data/Image/ImageDescription/Channels/ChannelDescription")
    names = []
    for channel in channels:
        dye = ""
        for prop in channel.findall("./ChannelProperty"):
            if (prop.findtext("Key") or "").strip() == "DyeName":
                dye = (prop.findtext("Value") or "").strip()
        names.append(dye or channel.get("LUTName", "").strip())
    return tuple(names) if len(names) == n_channels and all(names) else None


# --- Nikon ND2 ------------------------------------------------------------------------------------


def _open_nd2(path: Path, scene: int, stack: contextlib.ExitStack) -> _RawImage:
    import nd2

    with _reading(path, "Nikon ND2"):
        nd2_file = stack.enter_context(nd2.ND2File(str(path)))
        sizes = dict(nd2_file.sizes)
        array = nd2_file.to_dask()
        dtype = np.dtype(nd2_file.dtype)
        voxel = nd2_file.voxel_size()
        try:
            channel_names = tuple(str(c.channel.name) for c in (nd2_file.metadata.channels or []))
        except Exception:  # noqa: BLE001 - legacy files carry less metadata; names are optional
            channel_names = ()
        positions = _nd2_position_names(nd2_file)
    axes = "".join(sizes)
    n_series = int(sizes.get("P", 1))
    _check_scene(path, scene, n_series)
    if "P" in sizes:  # the positions of a multipoint experiment are its series
        index = axes.index("P")
        array = array[(slice(None),) * index + (scene,)]
        axes = axes.replace("P", "")
    shape = tuple(int(n) for n in array.shape)
    if len(axes) != len(shape):
        raise FileFormatError(f"{path}: the ND2 file's axes {axes!r} do not match its data's shape {shape}.")

    class _Computed:  # one dask graph per region; the synchronous scheduler keeps the file's reads in this thread
        def __init__(self, lazy: Any) -> None:
            self.lazy, self.shape, self.dtype = lazy, lazy.shape, lazy.dtype

        def __getitem__(self, key: Any) -> np.ndarray:
            return np.asarray(self.lazy[key].compute(scheduler="synchronous"))

    regions = _GuardedRegions(_Computed(array), path, "Nikon ND2")
    calibration = _Calibration(
        x=_positive_float(voxel.x), y=_positive_float(voxel.y), z=_positive_float(voxel.z),
        problem="" if _positive_float(voxel.x) and _positive_float(voxel.z) else "no voxel size in the ND2 metadata",
        source="ND2 voxel size",
    )
    names = positions if len(positions) == n_series else [f"Position {i}" for i in range(n_series)]
    return _RawImage(
        format="nd2",
        shape=shape,
        axes=axes,
        dtype=dtype,
        load=lambda: regions[tuple(slice(None) for _ in shape)],
        calibration=calibration,
        channel_names=channel_names if channel_names and all(channel_names) else None,
        n_scenes=n_series,
        region=lambda: regions,
        series_names=tuple(names),
        lazy_note="the frames (planes) the region touches (the nd2 package's dask array)",
    )


def _nd2_position_names(nd2_file: Any) -> list[str]:
    for loop in getattr(nd2_file, "experiment", None) or []:
        if getattr(loop, "type", "") == "XYPosLoop":
            return [p.name or f"Position {i}" for i, p in enumerate(loop.parameters.points)]
    return []


# --- OME-Zarr -------------------------------------------------------------------------------------


def _open_zarr(path: Path, scene: int, stack: contextlib.ExitStack, level: int = 0) -> _RawImage:
    """An OME-Zarr image (NGFF 0.4 on Zarr v2 or 0.5 on Zarr v3; a bioformats2raw folder holds one image per
    series), multiscale level ``level`` (0 = full resolution)."""
    import zarr

    with _reading(path, "OME-Zarr"):
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):  # a bare array: no axes, no calibration
            return _zarr_raw(path, node, "?" * node.ndim, _Calibration(problem="a Zarr array without OME metadata"),
                             None, 1, ("Series 0",))
        ome = _ome_attributes(node)
        series_keys = [""]
        if "bioformats2raw.layout" in ome:
            series_keys = sorted((k for k in node.group_keys() if k.isdigit()), key=int)
            if not series_keys:
                raise FileFormatError(f"{path}: the OME-Zarr (bioformats2raw) folder contains no images.")
        _check_scene(path, scene, len(series_keys))
        group = node[series_keys[scene]] if series_keys[scene] else node
        image_attributes = _ome_attributes(group)
        multiscales = image_attributes.get("multiscales")
        if not multiscales:
            raise FileFormatError(f"{path}: this Zarr folder has no OME-Zarr 'multiscales' metadata, so it is not an "
                                  "OME-Zarr image.")
        multiscale = multiscales[0]
        datasets = multiscale.get("datasets") or []
        if not datasets:
            raise FileFormatError(f"{path}: the OME-Zarr metadata lists no resolution levels.")
        if level >= len(datasets):
            raise FileFormatError(f"{path}: level {level} does not exist; the image has {len(datasets)} levels.")
        array = group[datasets[level]["path"]]
        axes_meta = multiscale.get("axes") or ["t", "c", "z", "y", "x"][-array.ndim:]  # NGFF 0.3 and older
        names = [str(a.get("name") if isinstance(a, dict) else a).lower() for a in axes_meta]
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes_meta]
        if len(names) != array.ndim:
            raise FileFormatError(f"{path}: the OME-Zarr metadata names {len(names)} axes but the data have "
                                  f"{array.ndim} dimensions.")
        axes = "".join(n.upper() if n in ("t", "c", "z", "y", "x") else "Q" for n in names)
        scale = _ngff_scale(multiscale, datasets[level], array.ndim)
        calibration = _ngff_calibration(names, units, scale)
        channel_names = _omero_channel_names(image_attributes)
        series_names = tuple(_zarr_series_names(path, node, series_keys))
    return _zarr_raw(path, array, axes, calibration, channel_names, len(series_keys), series_names)


def _zarr_raw(path: Path, array: Any, axes: str, calibration: _Calibration, channel_names, n_series: int,
              series_names: tuple[str, ...]) -> _RawImage:
    regions = _GuardedRegions(array, path, "OME-Zarr")
    return _RawImage(
        format="ome-zarr",
        shape=tuple(int(n) for n in array.shape),
        axes=axes,
        dtype=np.dtype(array.dtype),
        load=lambda: regions[...],
        calibration=calibration,
        channel_names=channel_names,
        n_scenes=n_series,
        region=lambda: regions,
        series_names=series_names,
        lazy_note="the Zarr chunks the region touches",
    )


def _ome_attributes(group: Any) -> dict[str, Any]:
    """NGFF 0.5 keeps its metadata under ``"ome"``; 0.4 and older at the top of the attributes."""
    attributes = dict(group.attrs)
    return dict(attributes.get("ome", attributes))


def _ngff_scale(multiscale: dict, dataset: dict, ndim: int) -> list[Optional[float]]:
    """Physical size per axis: the dataset's ``scale`` transformation times the multiscale's (if any)."""
    scale: list[Optional[float]] = [1.0] * ndim
    found = False
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale" and len(transform.get("scale", [])) == ndim:
                found = True
                scale = [None if s is None or v is None else s * v for s, v in
                         zip(scale, (_positive_float(v) for v in transform["scale"]))]
    return scale if found else [None] * ndim


def _ngff_calibration(names: list[str], units: list[Any], scale: list[Optional[float]]) -> _Calibration:
    sizes: dict[str, Optional[float]] = {}
    problem = ""
    for axis in ("x", "y", "z"):
        if axis not in names:
            continue
        i = names.index(axis)
        factor = _unit_to_um(units[i])
        if units[i] is None:
            problem = problem or f"the OME-Zarr axis '{axis}' has no unit"
        elif factor is None:
            problem = problem or f"unknown OME-Zarr unit {units[i]!r} on axis '{axis}'"
        sizes[axis] = None if factor is None or scale[i] is None else scale[i] * factor
    if not problem and not (sizes.get("x") and sizes.get("y")):
        problem = "no scale for the OME-Zarr x/y axes"
    if not problem and "z" in names and sizes.get("z") is None:
        problem = "no scale for the OME-Zarr z axis"
    if problem:
        return _Calibration(problem=problem)
    return _Calibration(x=sizes["x"], y=sizes["y"], z=sizes.get("z"), source="OME-Zarr scale and axis units")


def _omero_channel_names(attributes: dict[str, Any]) -> Optional[tuple[str, ...]]:
    channels = (attributes.get("omero") or {}).get("channels") or []
    names = tuple(str(c.get("label") or "").strip() for c in channels if isinstance(c, dict))
    return names if names and all(names) else None


def _zarr_series_names(path: Path, node: Any, series_keys: list[str]) -> list[str]:
    """Names from a bioformats2raw folder's ``OME/METADATA.ome.xml``, else each image's multiscale name."""
    xml_names: list[str] = []
    metadata = path / "OME" / "METADATA.ome.xml"
    if metadata.is_file():
        with contextlib.suppress(ET.ParseError, OSError):
            root = ET.parse(metadata).getroot()
            xml_names = [el.get("Name", "") for el in root if _local_name(el.tag) == "Image"]
    names = []
    for i, key in enumerate(series_keys):
        name = xml_names[i] if i < len(xml_names) else ""
        if not name:
            with contextlib.suppress(Exception):
                group = node[key] if key else node
                name = str((_ome_attributes(group).get("multiscales") or [{}])[0].get("name") or "")
        names.append(name or f"Series {i}")
    return names

