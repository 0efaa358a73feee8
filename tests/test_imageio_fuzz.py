"""Fuzzing the readers: damaged or odd input either reads as a valid Volume or raises CellPolError.

Nothing else may escape (no raw tifffile/numpy traceback), and a truncated file must never read as a
different image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import CellPolError
from app.core.imageio import read_image_info, read_volume
from app.core.volume import SUPPORTED_DTYPES, Volume

FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
VOXEL = (0.5, 0.25, 0.25)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def small_tiffs(workdir: Path) -> dict[str, bytes]:
    """Small valid files of each TIFF flavour, as bytes."""
    data = np.arange(3 * 2 * 6 * 7, dtype=np.uint16).reshape(3, 2, 6, 7)
    imagej = workdir / "ij.tif"
    tifffile.imwrite(imagej, data, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZCYX", "spacing": 0.5, "unit": "micron", "Labels": ["DAPI", "GM130"] * 3})
    ome = workdir / "ome.ome.tif"
    tifffile.imwrite(ome, data, ome=True, compression="zlib",
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 0.25, "PhysicalSizeZ": 0.5})
    legacy = workdir / "legacy.tif"
    tifffile.imwrite(legacy, np.arange(8 * 6 * 3 * 3, dtype=np.uint8).reshape(8, 6, 3, 3))
    return {name: path.read_bytes() for name, path in (("ij", imagej), ("ome", ome), ("legacy", legacy))}


def _read_or_refuse(path: Path, **kwargs) -> Volume | None:
    """Read ``path``; a user-facing error is fine, anything else fails the test."""
    try:
        volume = read_volume(path, **kwargs)
    except CellPolError:
        return None
    _assert_valid(volume)
    return volume


def _assert_valid(volume: Volume) -> None:
    assert isinstance(volume, Volume)
    assert volume.data.ndim == 4 and min(volume.data.shape) >= 1
    assert volume.data.dtype in [np.dtype(d) for d in SUPPORTED_DTYPES]
    assert all(np.isfinite(v) and v > 0 for v in volume.voxel_size)
    assert len(volume.channel_names) == volume.data.shape[0]
    for role in (volume.nucleus_channel, volume.golgi_channel):
        assert role is None or 0 <= role < volume.data.shape[0]
    if volume.data.dtype.kind == "f":
        assert np.isfinite(volume.data).all()


def _kwargs(flavour: str) -> dict:
    return {"layout": "legacy-rgb", "voxel_size": VOXEL} if flavour == "legacy" else {}


@pytest.mark.filterwarnings("ignore:unknown segment type:UserWarning")  # czifile on random bytes
@FUZZ
@given(content=st.binary(max_size=600), prefix=st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00",
                                                                 b"ZISRAWFILE", b"\x93NUMPY"]))
def test_random_bytes(workdir: Path, content: bytes, prefix: bytes) -> None:
    for suffix in (".tif", ".npy", ".czi"):
        path = workdir / f"random{suffix}"
        path.write_bytes(prefix + content)
        _read_or_refuse(path, voxel_size=VOXEL, axes=None if suffix == ".czi" else "YX")
        try:
            read_image_info(path)
        except CellPolError:
            pass


@FUZZ
@given(flavour=st.sampled_from(["ij", "ome", "legacy"]), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_tiff_never_reads_as_another_image(workdir: Path, small_tiffs: dict, flavour: str,
                                                    fraction: float) -> None:
    content = small_tiffs[flavour]
    path = workdir / f"cut_{flavour}.tif"
    path.write_bytes(content)
    expected = read_volume(path, **_kwargs(flavour))
    path.write_bytes(content[: int(len(content) * fraction)])
    volume = _read_or_refuse(path, **_kwargs(flavour))
    if volume is not None:
        np.testing.assert_array_equal(volume.data, expected.data)
        assert volume.voxel_size == expected.voxel_size


@FUZZ
@given(
    flavour=st.sampled_from(["ij", "ome", "legacy"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_bit_flips(workdir: Path, small_tiffs: dict, flavour: str, flips: list) -> None:
    content = bytearray(small_tiffs[flavour])
    for position, bit in flips:
        content[position % len(content)] ^= 1 << bit
    path = workdir / f"flipped_{flavour}.tif"
    path.write_bytes(bytes(content))
    _read_or_refuse(path, **_kwargs(flavour))


@FUZZ
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=6),
    dtype=st.sampled_from(["u1", "u2", ">u2", "i1", "i4", "u4", "u8", "f2", "f4", "f8", "b1", "c8", "U2", "V4"]),
    axes=st.one_of(st.none(), st.text(alphabet="ZCYXTSQ", max_size=6)),
    special=st.sampled_from([None, np.nan, np.inf, -1, 70000]),
    data=st.data(),
)
def test_random_npy_arrays(workdir: Path, shape: list, dtype: str, axes: str | None, special, data) -> None:
    array = np.zeros(shape, dtype=dtype)
    if special is not None and array.size and array.dtype.kind in "fiu":
        with np.errstate(all="ignore"):  # NaN/Inf/-1 cast into integer types: any value will do
            array.flat[data.draw(st.integers(0, array.size - 1))] = np.asarray(special).astype(array.dtype)
    path = workdir / "random_array.npy"
    np.save(path, array)
    volume = _read_or_refuse(path, voxel_size=VOXEL, axes=axes)
    if volume is not None:
        assert volume.data.size == array.size



@pytest.mark.filterwarnings("ignore::UserWarning")  # czifile warns about damaged segments
@settings(FUZZ, max_examples=25)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 7)), min_size=1, max_size=8),
    fraction=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_damaged_czi(shared_data: Path, workdir: Path, flips: list, fraction: float | None) -> None:
    content = bytearray((shared_data / "neubias" / "xyz__multiple_images.czi").read_bytes())
    for position, bit in flips:
        content[position % len(content)] ^= 1 << bit
    if fraction is not None:
        content = content[: int(len(content) * fraction)]
    path = workdir / "damaged.czi"
    path.write_bytes(bytes(content))
    _read_or_refuse(path, scene=1)
