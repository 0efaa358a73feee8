"""Image readers: real files from ../shared/data and synthetic round trips (no Qt)."""

from __future__ import annotations

from pathlib import Path

import czifile
import numpy as np
import pytest
import tifffile

from app.core import imageio
from app.core.errors import CellPolError, ChannelError, FileFormatError, MissingVoxelSizeError
from app.core.imageio import (
    IMAGE_SUFFIXES,
    find_images,
    read_image_info,
    read_volume,
    write_imagej_tiff,
)
from app.core.volume import Volume

VOXEL = (0.5, 0.25, 0.25)


# --------------------------------------------------------------------------------------------------
# Real files: truth from ../shared/data/README.md (calibration numbers checked against the tags)
# --------------------------------------------------------------------------------------------------

# name -> (Volume shape (C, Z, Y, X), dtype, voxel size (z, y, x) µm, function mapping the stored array to CZYX)
CALIBRATED = {
    "neubias/xyc_16bit__nuclei_golgi.tif": ((2, 1, 220, 204), np.uint16, (1.0, 0.5158, 0.5158), lambda a: a[:, None]),
    "neubias/xyz_8bit__nuclei_autothresh.tif": ((1, 37, 118, 132), np.uint8, (4.0, 0.8286, 0.8286), lambda a: a[None]),
    "neubias/xyzc_16bit__dna_conf_wf.tif": (
        (2, 45, 130, 133), np.uint16, (0.4994, 0.5119, 0.5119), lambda a: a.transpose(1, 0, 2, 3)
    ),
    "neubias/xyz_calibrated_16bit__golgi_bfa.tif": (
        (1, 25, 137, 147), np.uint16, (0.3876, 0.3514, 0.3514), lambda a: a[None]
    ),
    "huvec2d/060721_EGM2_18dyn_02_small.tif": (
        (4, 1, 256, 256), np.float32, (1.0, 0.4151, 0.4151), lambda a: a[:, None]
    ),
}

# name -> (Volume shape, dtype, mapping); these carry no usable calibration.
UNCALIBRATED = {
    "neubias/xyz_8bit__nucleus.tif": ((1, 7, 207, 207), np.uint8, lambda a: a[None]),
    "neubias/xyc_8bit__cyto_nuclei.tif": ((2, 1, 254, 182), np.uint8, lambda a: a[:, None]),  # unit "px"
    "cells3d_nuclei/nuclei.tif": ((1, 60, 256, 256), np.uint16, lambda a: a[None]),
    "cells3d_nuclei/nuclei_label.tif": ((1, 60, 256, 256), np.uint16, lambda a: a[None]),  # uint32 labels, max < 2**16
    "huvec2d/060721_EGM2_18dyn_02_small_seg_masks.tif": ((1, 1, 256, 256), np.uint16, lambda a: a[None, None]),
    "huvec2d/060721_EGM2_18dyn_02_small_seg_nuc_masks.tif": ((1, 1, 256, 256), np.uint16, lambda a: a[None, None]),
}

CZI_NAME = "neubias/xyz__multiple_images.czi"
CZI_VOXEL = (0.3, 0.19564437607395324, 0.19564437607395324)  # Scaling/Items/Distance, metres in the file


def test_every_real_image_is_covered(shared_data: Path) -> None:
    folders = [shared_data / "neubias", shared_data / "cells3d_nuclei", shared_data / "huvec2d"]
    found = {p.relative_to(shared_data).as_posix() for p in find_images(folders)}
    assert found == set(CALIBRATED) | set(UNCALIBRATED) | {CZI_NAME}


@pytest.mark.parametrize("name", sorted(CALIBRATED))
def test_real_calibrated_file(shared_data: Path, name: str) -> None:
    shape, dtype, voxel, to_czyx = CALIBRATED[name]
    path = shared_data / name
    volume = read_volume(path)
    assert volume.data.shape == shape
    assert volume.data.dtype == dtype
    assert volume.voxel_size == pytest.approx(voxel, abs=1e-4)
    assert volume.metadata["voxel_size_source"] == "file"
    assert volume.metadata["format"] == "imagej-tiff"
    assert volume.metadata["is_2d"] is (shape[1] == 1)
    np.testing.assert_array_equal(volume.data, to_czyx(tifffile.imread(path)))
    info = read_image_info(path)
    assert info["czyx_shape"] == shape
    assert info["voxel_size"] == pytest.approx(voxel, abs=1e-4)


def test_real_file_roles_default_without_names(shared_data: Path) -> None:
    volume = read_volume(shared_data / "neubias/xyc_16bit__nuclei_golgi.tif")  # ch0 nuclei, ch1 Golgi
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 1)
    assert volume.metadata["channel_roles_source"] == {"nucleus": "default", "golgi": "default"}
    single = read_volume(shared_data / "neubias/xyz_calibrated_16bit__golgi_bfa.tif")
    assert (single.nucleus_channel, single.golgi_channel) == (0, None)


def test_bioformats_slice_labels_are_not_channel_names(shared_data: Path) -> None:
    # Labels such as "c:1/2 z:1/45 - Hoechst_LSM_WF3 #1" change with z; both would match "hoechst".
    volume = read_volume(shared_data / "neubias/xyzc_16bit__dna_conf_wf.tif")
    assert volume.channel_names == ("C0", "C1")
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 1)


@pytest.mark.parametrize("name", sorted(UNCALIBRATED))
def test_real_uncalibrated_file_needs_voxel_size(shared_data: Path, name: str) -> None:
    shape, dtype, to_czyx = UNCALIBRATED[name]
    path = shared_data / name
    with pytest.raises(MissingVoxelSizeError) as excinfo:
        read_volume(path)
    assert excinfo.value.path == str(path)
    assert read_image_info(path)["voxel_size"] is None
    volume = read_volume(path, voxel_size=(0.29, 0.26, 0.26))
    assert volume.data.shape == shape
    assert volume.data.dtype == dtype
    assert volume.voxel_size == (0.29, 0.26, 0.26)
    assert volume.metadata["voxel_size_source"] == "user"
    assert volume.metadata["file_voxel_size"] is None
    np.testing.assert_array_equal(volume.data, to_czyx(tifffile.imread(path)))


def test_pixel_unit_is_reported_as_uncalibrated(shared_data: Path) -> None:
    with pytest.raises(MissingVoxelSizeError, match="'px'"):
        read_volume(shared_data / "neubias/xyc_8bit__cyto_nuclei.tif")


def test_user_voxel_size_wins_over_file(shared_data: Path) -> None:
    volume = read_volume(shared_data / "neubias/xyz_calibrated_16bit__golgi_bfa.tif", voxel_size=(1, 2, 3))
    assert volume.voxel_size == (1.0, 2.0, 3.0)
    assert volume.metadata["voxel_size_source"] == "user"
    assert volume.metadata["file_voxel_size"] == pytest.approx((0.3876, 0.3514, 0.3514), abs=1e-4)


@pytest.mark.parametrize("scene", [0, 1])
def test_czi_scenes(shared_data: Path, scene: int) -> None:
    path = shared_data / CZI_NAME
    volume = read_volume(path, scene=scene)
    assert volume.data.shape == (1, 2, 251, 251)
    assert volume.data.dtype == np.uint16
    assert volume.voxel_size == pytest.approx(CZI_VOXEL)
    assert volume.metadata["n_scenes"] == 2
    assert volume.metadata["format"] == "czi"
    everything = czifile.imread(str(path))  # BVSCTZYX0 = (1, 1, 2, 1, 1, 2, 251, 251, 1)
    np.testing.assert_array_equal(volume.data[0], everything[0, 0, scene, 0, 0, :, :, :, 0])
    info = read_image_info(path, scene=scene)
    assert (info["n_scenes"], info["czyx_shape"], info["format"]) == (2, (1, 2, 251, 251), "czi")


def test_czi_refuses_missing_scene_and_axes(shared_data: Path) -> None:
    path = shared_data / CZI_NAME
    with pytest.raises(FileFormatError, match="has 2 scene"):
        read_volume(path, scene=2)
    with pytest.raises(CellPolError, match="CZI"):
        read_volume(path, axes="ZYX")


def test_truncated_real_tiff(shared_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.tif"
    bad.write_bytes((shared_data / "neubias/xyzc_16bit__dna_conf_wf.tif").read_bytes()[:1000])
    with pytest.raises(FileFormatError, match="cut.tif"):
        read_volume(bad, voxel_size=VOXEL)
    with pytest.raises(FileFormatError):
        read_image_info(bad)


def test_read_image_info_reads_no_pixels(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pixel data was read")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", refuse)
    monkeypatch.setattr(np, "load", refuse)
    info = read_image_info(shared_data / "neubias/xyzc_16bit__dna_conf_wf.tif")
    assert info["shape"] == (45, 2, 130, 133)
    assert info["axes"] == "ZCYX"
    assert info["dtype"] == "uint16"
    assert info["format"] == "imagej-tiff"
    assert info["n_scenes"] == 1
    assert info["is_2d"] is False
    info = read_image_info(shared_data / "neubias/xyz_8bit__nucleus.tif")
    assert info["voxel_size"] is None and "unit" in info["voxel_size_problem"]


# --------------------------------------------------------------------------------------------------
# ImageJ hyperstacks
# --------------------------------------------------------------------------------------------------


def _write_imagej(path: Path, data: np.ndarray, axes: str, unit: str | None = "um", spacing: float | None = 0.5,
                  pixel: float | None = 0.25, **extra) -> Path:
    metadata = {"axes": axes, **extra}
    if unit is not None:
        metadata["unit"] = unit
    if spacing is not None:
        metadata["spacing"] = spacing
    resolution = None if pixel is None else (1 / pixel, 1 / pixel)
    tifffile.imwrite(path, data, imagej=True, resolution=resolution, metadata=metadata)
    return path


@pytest.mark.parametrize(
    "axes, shape, to_czyx",
    [
        ("ZCYX", (4, 2, 10, 12), lambda a: a.transpose(1, 0, 2, 3)),
        ("ZYX", (4, 10, 12), lambda a: a[None]),
        ("CYX", (3, 10, 12), lambda a: a[:, None]),
        ("YX", (10, 12), lambda a: a[None, None]),
        ("TZCYX", (1, 4, 2, 10, 12), lambda a: a[0].transpose(1, 0, 2, 3)),  # T = 1 is dropped
        ("ZYXS", (4, 10, 12, 3), lambda a: a.transpose(3, 0, 1, 2)),  # ImageJ RGB stack: samples = channels
    ],
)
def test_imagej_layouts(tmp_path: Path, axes: str, shape: tuple, to_czyx) -> None:
    dtype = np.uint8 if axes.endswith("S") else np.uint16
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    path = _write_imagej(tmp_path / "ij.tif", data, axes)
    volume = read_volume(path)
    expected = to_czyx(data)
    np.testing.assert_array_equal(volume.data, expected)
    is_2d = expected.shape[1] == 1
    # 2D: z = 1.0 by convention, whatever the file's 'spacing' says.
    assert volume.voxel_size == pytest.approx((1.0 if is_2d else 0.5, 0.25, 0.25))
    assert volume.metadata["is_2d"] is is_2d
    assert volume.metadata["format"] == "imagej-tiff"


@pytest.mark.parametrize(
    "unit, factor",
    [("um", 1.0), ("micron", 1.0), ("microns", 1.0), ("\\u00B5m", 1.0), ("nm", 1e-3), ("mm", 1e3)],
)
def test_imagej_unit_spellings(tmp_path: Path, unit: str, factor: float) -> None:
    # The same plausible voxel size (0.5, 0.25, 0.25) µm written in each unit.
    data = np.zeros((3, 8, 8), np.uint8)
    path = _write_imagej(tmp_path / "u.tif", data, "ZYX", unit=unit, spacing=0.5 / factor, pixel=0.25 / factor)
    assert read_volume(path).voxel_size == pytest.approx((0.5, 0.25, 0.25))


def test_implausible_file_calibration_is_reported(tmp_path: Path) -> None:
    path = _write_imagej(tmp_path / "mm.tif", np.zeros((3, 8, 8), np.uint8), "ZYX", unit="mm", spacing=2, pixel=0.5)
    with pytest.raises(MissingVoxelSizeError, match="implausibly large"):
        read_volume(path)


@pytest.mark.parametrize("unit", ["pixel", "px", None, "furlong"])
def test_imagej_uncalibrated_units(tmp_path: Path, unit: str | None) -> None:
    path = _write_imagej(tmp_path / "u.tif", np.zeros((3, 8, 8), np.uint8), "ZYX", unit=unit)
    with pytest.raises(MissingVoxelSizeError):
        read_volume(path)
    assert read_volume(path, voxel_size=VOXEL).voxel_size == VOXEL


def test_unit_spellings_unicode() -> None:
    for spelling in ("µm", "\u00b5m", "\u03bcm", "Âµm", "\\u00b5m", " Micron ", "um"):
        assert imageio._unit_to_um(spelling) == 1.0, spelling
    assert imageio._unit_to_um("nm") == pytest.approx(1e-3)
    assert imageio._unit_to_um("pixel") is None


def test_imagej_missing_spacing_means_one_unit(tmp_path: Path) -> None:
    # ImageJ leaves 'spacing' out of the description when the z step is exactly 1 unit.
    path = _write_imagej(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), "ZYX", unit="micron", spacing=None,
                         pixel=0.1)
    assert read_volume(path).voxel_size == pytest.approx((1.0, 0.1, 0.1))


def test_imagej_resolution_tags() -> None:
    # Resolution tags are pixels per unit (TIFF RATIONAL); without them a unit alone is no calibration.
    calibration = imageio._imagej_calibration({"unit": "micron", "spacing": 0.4}, ((2, 1), (4, 1)))
    assert (calibration.z, calibration.y, calibration.x) == pytest.approx((0.4, 0.25, 0.5))
    missing = imageio._imagej_calibration({"unit": "micron"}, (None, None))
    assert missing.x is None and "XResolution" in missing.problem
    assert imageio._imagej_calibration({"unit": "um"}, ((1, 0), (1, 0))).x is None


def test_imagej_time_series_is_refused(tmp_path: Path) -> None:
    path = _write_imagej(tmp_path / "t.tif", np.zeros((3, 4, 2, 8, 8), np.uint16), "TZCYX")
    with pytest.raises(FileFormatError, match="time series with 3 time points"):
        read_volume(path)
    # ImageJ stacks with z and t swapped are common: the caller can say the T axis is really Z.
    data = np.arange(3 * 2 * 8 * 8, dtype=np.uint16).reshape(3, 1, 2, 8, 8)
    swapped = _write_imagej(tmp_path / "swapped.tif", data, "TZCYX")
    with pytest.raises(FileFormatError, match="time series"):
        read_volume(swapped)
    volume = read_volume(swapped, axes="ZCYX")
    np.testing.assert_array_equal(volume.data, data[:, 0].transpose(1, 0, 2, 3))
    assert volume.voxel_size == pytest.approx((0.5, 0.25, 0.25))


def test_imagej_channel_names_from_consistent_labels(tmp_path: Path) -> None:
    labels = ["GM130", "DAPI"] * 4  # plane order: channel fastest, then z
    path = _write_imagej(tmp_path / "n.tif", np.zeros((4, 2, 8, 8), np.uint16), "ZCYX", Labels=labels)
    volume = read_volume(path)
    assert volume.channel_names == ("GM130", "DAPI")
    assert (volume.nucleus_channel, volume.golgi_channel) == (1, 0)
    assert volume.metadata["channel_roles_source"] == {"nucleus": "names", "golgi": "names"}


# --------------------------------------------------------------------------------------------------
# OME-TIFF
# --------------------------------------------------------------------------------------------------


def test_ome_tiff_with_units_and_names(tmp_path: Path) -> None:
    data = np.arange(2 * 4 * 10 * 12, dtype=np.uint16).reshape(2, 4, 10, 12)
    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "CZYX",
            "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.0003, "PhysicalSizeYUnit": "mm",
            "PhysicalSizeZ": 0.5,  # no unit attribute: µm
            "Channel": {"Name": ["GM130", "Hoechst 33342"]},
        },
    )
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.voxel_size == pytest.approx((0.5, 0.3, 0.25))
    assert volume.channel_names == ("GM130", "Hoechst 33342")
    assert (volume.nucleus_channel, volume.golgi_channel) == (1, 0)
    assert volume.metadata["format"] == "ome-tiff"
    assert read_image_info(path)["channel_names"] == ("GM130", "Hoechst 33342")


def test_ome_tiff_zcyx_2d_and_missing_z(tmp_path: Path) -> None:
    data = np.arange(3 * 2 * 10 * 12, dtype=np.uint8).reshape(3, 2, 10, 12)
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    with pytest.raises(MissingVoxelSizeError, match="PhysicalSizeZ"):
        read_volume(path)
    np.testing.assert_array_equal(read_volume(path, voxel_size=VOXEL).data, data.transpose(1, 0, 2, 3))
    flat = tmp_path / "flat.ome.tif"
    tifffile.imwrite(flat, data[0], ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    volume = read_volume(flat)
    assert volume.voxel_size == pytest.approx((1.0, 0.2, 0.2))
    assert volume.metadata["is_2d"] is True


# --------------------------------------------------------------------------------------------------
# Plain TIFF + axes, legacy RGB, .npy
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axes, stored_shape",
    [("ZYXC", (5, 10, 12, 2)), ("CZYX", (2, 5, 10, 12)), ("YXZC", (10, 12, 5, 2)), ("ZCYX", (5, 2, 10, 12))],
)
def test_plain_tiff_with_axes(tmp_path: Path, axes: str, stored_shape: tuple) -> None:
    data = np.arange(np.prod(stored_shape), dtype=np.uint16).reshape(stored_shape)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data)
    volume = read_volume(path, voxel_size=VOXEL, axes=axes.lower())
    expected = data.transpose([axes.index(a) for a in "CZYX"])
    np.testing.assert_array_equal(volume.data, expected)
    assert volume.metadata["axes_source"] == "user"
    with pytest.raises(FileFormatError, match="cannot tell which axis is Z"):
        read_volume(path, voxel_size=VOXEL)  # tifffile reports 'QQYX': two unknown axes


def test_plain_grayscale_stack_is_zyx(tmp_path: Path) -> None:
    data = np.arange(5 * 10 * 12, dtype=np.uint16).reshape(5, 10, 12)
    for name, kwargs in (("shaped.tif", {}), ("generic.tif", {"shaped": False})):
        tifffile.imwrite(tmp_path / name, data, **kwargs)  # axes 'QYX' and 'IYX'
        np.testing.assert_array_equal(read_volume(tmp_path / name, voxel_size=VOXEL).data, data[None])


@pytest.mark.parametrize(
    "axes, message",
    [("ZYX", "has 3 letters"), ("ZZYX", "more than once"), ("CZCX", "more than once"), ("ZCQQ", "include Y and X")],
)
def test_axes_that_do_not_fit(tmp_path: Path, axes: str, message: str) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 10, 12, 2), np.uint16))
    with pytest.raises(FileFormatError, match=message):
        read_volume(path, voxel_size=VOXEL, axes=axes)


@pytest.mark.parametrize("axes", ["ZYXW", "", 5])
def test_malformed_axes_argument(tmp_path: Path, axes) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 10, 12, 2), np.uint16))
    with pytest.raises(CellPolError, match="[Aa]xes"):
        read_volume(path, voxel_size=VOXEL, axes=axes)


def _legacy_rgb(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(40, 30, 5, 3), dtype=np.uint8)  # (row, column, Z, RGB)
    path = tmp_path / "legacy.tif"
    tifffile.imwrite(path, data)
    return path, data


def test_legacy_rgb_is_never_read_as_zyx(tmp_path: Path) -> None:
    path, data = _legacy_rgb(tmp_path)
    # tifffile stores 40 RGB pages of 30x5 pixels and reports the series as 'QYXS': Q = row, Y = column, X = Z.
    with tifffile.TiffFile(path) as tif:
        assert (tif.series[0].shape, tif.series[0].axes) == (data.shape, "QYXS")
    with pytest.raises(FileFormatError, match="legacy-rgb"):
        read_volume(path, voxel_size=VOXEL)
    info = read_image_info(path)
    assert info["czyx_shape"] is None and "legacy-rgb" in info["axes_problem"]


@pytest.mark.parametrize(
    "kwargs", [{"layout": "legacy-rgb"}, {"axes": "YXZC"}, {"axes": "YXZC", "layout": "legacy-rgb"}]
)
def test_legacy_rgb(tmp_path: Path, kwargs: dict) -> None:
    path, data = _legacy_rgb(tmp_path)
    volume = read_volume(path, voxel_size=(0.27, 0.666, 0.666), **kwargs)
    assert volume.data.shape == (3, 5, 40, 30)
    # Volume[c, z, row, column] == stored[row, column, z, c]
    assert volume.data[0, 3, 17, 9] == data[17, 9, 3, 0]
    np.testing.assert_array_equal(volume.data, data.transpose(3, 2, 0, 1))
    assert volume.channel_names == ("golgi", "nucleus", "vessels")
    assert (volume.golgi_channel, volume.nucleus_channel) == (0, 1)


def test_legacy_rgb_layout_checks(tmp_path: Path) -> None:
    path, _ = _legacy_rgb(tmp_path)
    with pytest.raises(CellPolError, match="conflicts"):
        read_volume(path, voxel_size=VOXEL, axes="ZYXC", layout="legacy-rgb")
    with pytest.raises(CellPolError, match="Unknown layout"):
        read_volume(path, voxel_size=VOXEL, layout="rgb")
    with pytest.raises(MissingVoxelSizeError):  # no silent 0.666/0.27 default
        read_volume(path, layout="legacy-rgb")
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((10, 12, 5, 2), np.uint8))
    with pytest.raises(FileFormatError, match="3 colour channels"):
        read_volume(gray, voxel_size=VOXEL, layout="legacy-rgb")


def test_ngmic_patch(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    patch = rng.integers(0, 255, size=(128, 128, 64, 2), dtype=np.uint8)
    path = tmp_path / "0.npy"
    np.save(path, patch)
    with pytest.raises(MissingVoxelSizeError):
        read_volume(path)
    volume = read_volume(path, voxel_size=(0.27, 0.666, 0.666))
    assert volume.data.shape == (2, 64, 128, 128)
    np.testing.assert_array_equal(volume.data, patch.transpose(3, 2, 0, 1))
    assert (volume.golgi_channel, volume.nucleus_channel) == (0, 1)
    assert volume.metadata["format"] == "npy"
    info = read_image_info(path)
    assert (info["shape"], info["axes"], info["czyx_shape"]) == ((128, 128, 64, 2), "YXZC", (2, 64, 128, 128))


def test_npy_other_shapes_need_axes(tmp_path: Path) -> None:
    path = tmp_path / "stack.npy"
    data = np.arange(2 * 5 * 6 * 7, dtype=np.uint16).reshape(5, 2, 6, 7)
    np.save(path, data)
    with pytest.raises(FileFormatError, match="no axes information"):
        read_volume(path, voxel_size=VOXEL)
    np.testing.assert_array_equal(read_volume(path, voxel_size=VOXEL, axes="ZCYX").data, data.transpose(1, 0, 2, 3))


def test_npy_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError, match="Python objects"):
        read_volume(path, voxel_size=VOXEL, axes="X")


# --------------------------------------------------------------------------------------------------
# Pixel types
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.array([[0, 1], [1, 0]], dtype=bool), np.uint8),
        (np.array([[0, 100], [7, 3]], dtype=np.int8), np.uint16),
        (np.array([[0, -5], [7, 3]], dtype=np.int16), np.float32),
        (np.array([[0, 70000], [7, 3]], dtype=np.int32), np.float32),
        (np.array([[0, 65535], [7, 3]], dtype=np.uint32), np.uint16),
        (np.array([[0, 65535], [7, 3]], dtype=">u2"), np.uint16),
        (np.array([[0.5, 2], [7, 3]], dtype=np.float64), np.float32),
        (np.array([[0.5, 2], [7, 3]], dtype=np.float16), np.float32),
        (np.array([[0.5, 2], [7, 3]], dtype=np.float32), np.float32),
        (np.array([[1, 2], [7, 3]], dtype=np.uint8), np.uint8),
    ],
)
def test_pixel_type_conversion(tmp_path: Path, values: np.ndarray, expected) -> None:
    path = tmp_path / "px.npy"
    np.save(path, values)
    volume = read_volume(path, voxel_size=VOXEL, axes="YX")
    assert volume.data.dtype == np.dtype(expected)
    np.testing.assert_array_equal(volume.data[0, 0], values.astype(np.float64))


@pytest.mark.parametrize(
    "values", [np.array([[0.0, np.nan]]), np.array([[np.inf, 1.0]], np.float32), np.array([[1e300, 0]]),
               np.array([[1 + 2j, 0]])],
)
def test_bad_pixel_values_refused(tmp_path: Path, values: np.ndarray) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, values)
    with pytest.raises(FileFormatError, match="bad.npy"):
        read_volume(path, voxel_size=VOXEL, axes="YX")


def test_float64_tiff_becomes_float32(tmp_path: Path) -> None:
    data = np.linspace(0, 1, 5 * 8 * 8).reshape(5, 8, 8)  # not 3 slices: tifffile stores (3, Y, X) as RGB
    path = _write_imagej(tmp_path / "f.tif", data.astype(np.float32), "ZYX")
    assert read_volume(path).data.dtype == np.float32
    plain = tmp_path / "f64.tif"
    tifffile.imwrite(plain, data)
    volume = read_volume(plain, voxel_size=VOXEL)
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data[0], data, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Channel roles
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def three_channels(tmp_path: Path) -> Path:
    return _write_imagej(tmp_path / "c3.tif", np.zeros((2, 3, 8, 8), np.uint16), "ZCYX")


def test_channel_role_override(three_channels: Path) -> None:
    volume = read_volume(three_channels, nucleus_channel=2, golgi_channel=0)
    assert (volume.nucleus_channel, volume.golgi_channel) == (2, 0)
    assert volume.metadata["channel_roles_source"] == {"nucleus": "user", "golgi": "user"}
    only_golgi = read_volume(three_channels, golgi_channel=0)
    assert (only_golgi.nucleus_channel, only_golgi.golgi_channel) == (1, 0)  # first free channel


@pytest.mark.parametrize("kwargs", [{"nucleus_channel": 3}, {"golgi_channel": -1}, {"nucleus_channel": True},
                                    {"golgi_channel": 1.0}])
def test_bad_channel_index(three_channels: Path, kwargs: dict) -> None:
    with pytest.raises(ChannelError, match=r"3 channel\(s\) \(0=C0, 1=C1, 2=C2\)"):
        read_volume(three_channels, **kwargs)


def test_same_channel_for_both_roles(three_channels: Path) -> None:
    with pytest.raises(ChannelError, match="must differ"):
        read_volume(three_channels, nucleus_channel=1, golgi_channel=1)


@pytest.mark.parametrize(
    "names, roles",
    [
        (["Hoechst", "GM130"], (0, 1)),
        (["giantin", "H2B-GFP"], (1, 0)),
        (["VE-cadherin", "GalT", "DAPI"], (2, 1)),
        (["nuclei", "nucleus"], (0, 1)),  # ambiguous names: defaults
        (["GM130"], (None, 0)),  # single channel named like Golgi
        (["DAPI"], (0, None)),
        (["membrane"], (0, None)),
    ],
)
def test_roles_from_channel_names(tmp_path: Path, names: list, roles: tuple) -> None:
    path = _write_imagej(tmp_path / "n.tif", np.zeros((2, len(names), 8, 8), np.uint16), "ZCYX", Labels=names * 2)
    volume = read_volume(path)
    assert (volume.nucleus_channel, volume.golgi_channel) == roles


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------


def _small_imagej(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.arange(4 * 2 * 16 * 20, dtype=np.uint16).reshape(4, 2, 16, 20)
    return _write_imagej(tmp_path / "ok.tif", data, "ZCYX"), data


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tif", b"", "empty"),
        ("text.tif", b"this is not an image\n" * 10, "not a valid TIFF"),
        ("text.czi", b"this is not an image\n", "not a valid CZI"),
        ("text.npy", b"this is not an image\n", "not a valid NumPy"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(50), "unsupported file type '.png'"),
        ("half.czi", b"ZISRAWFILE" + bytes(40), "CZI"),
        ("half.npy", b"\x93NUMPY\x01\x00", "NumPy"),
        ("header.tif", b"II*\x00\x08\x00\x00\x00", "TIFF"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=message) as excinfo:
        read_volume(path, voxel_size=VOXEL)
    assert str(path) in str(excinfo.value)
    with pytest.raises(FileFormatError):
        read_image_info(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="not found"):
        read_volume(tmp_path / "nope.tif")
    with pytest.raises(FileFormatError, match="folder"):
        read_volume(tmp_path)


@pytest.mark.parametrize("shape, axes", [((7,), None), ((7,), "X"), ((2, 2, 2, 2, 3, 3), None),
                                         ((2, 2, 2, 2, 3, 3), "QTCZYX"), ((4, 5), "YXZ")])
def test_wrong_dimensionality(tmp_path: Path, shape: tuple, axes: str | None) -> None:
    path = tmp_path / "dims.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(FileFormatError):
        read_volume(path, voxel_size=VOXEL, axes=axes)


def test_truncated_synthetic_tiffs_fail_or_read_identically(tmp_path: Path) -> None:
    """A cut file must never read as a plausible but different image (tifffile would return one plane)."""
    path, data = _small_imagej(tmp_path)
    ome = tmp_path / "ok.ome.tif"
    tifffile.imwrite(ome, data, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                                                     "PhysicalSizeZ": 0.5})
    for source in (path, ome):
        content = source.read_bytes()
        expected = read_volume(source)
        for fraction in np.linspace(0.02, 0.999, 37):
            cut = tmp_path / f"cut{source.name}"
            cut.write_bytes(content[: int(len(content) * fraction)])
            try:
                volume = read_volume(cut)
            except FileFormatError:
                continue
            np.testing.assert_array_equal(volume.data, expected.data)
            assert volume.voxel_size == expected.voxel_size


def test_scene_argument(tmp_path: Path) -> None:
    path, _ = _small_imagej(tmp_path)
    with pytest.raises(FileFormatError, match="scene 1 does not exist"):
        read_volume(path, scene=1)
    with pytest.raises(CellPolError, match="Scene"):
        read_volume(path, scene=-1)


def test_bad_voxel_size_argument(tmp_path: Path) -> None:
    path, _ = _small_imagej(tmp_path)
    with pytest.raises(CellPolError, match="Voxel size"):
        read_volume(path, voxel_size=(1, 2))


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def test_find_images(tmp_path: Path) -> None:
    names = ["b.TIFF", "a.tif", "c.ome.tif", "d.ome.tiff", "10.npy", "2.npy", "x.czi", "notes.txt",
             ".hidden.tif", "a.vectors.csv", "a.vectors.json", "img.vectors.npy"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.tif").write_bytes(b"")
    (tmp_path / "folder.tif").mkdir()
    extra = tmp_path / "sub" / "deep.tif"
    found = find_images([tmp_path, extra, tmp_path / "a.tif", str(tmp_path / "notes.txt")])
    assert [p.name for p in found] == ["2.npy", "10.npy", "a.tif", "b.TIFF", "c.ome.tif", "d.ome.tiff", "x.czi",
                                       "deep.tif", "notes.txt"]
    assert all(isinstance(p, Path) for p in found)
    assert find_images([tmp_path / "sub" / ".."]) and find_images([]) == []
    with pytest.raises(FileFormatError, match="no such file"):
        find_images([tmp_path / "missing"])
    assert set(IMAGE_SUFFIXES) >= {".tif", ".tiff", ".ome.tif", ".ome.tiff", ".npy", ".czi"}


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, voxel, names, roles, dtype, compress",
    [
        ((2, 5, 16, 20), (0.4, 0.2, 0.3), ("GM130", "DAPI"), (1, 0), np.uint16, False),
        ((3, 5, 16, 20), (0.4, 0.2, 0.2), ("C0", "C1", "C2"), (2, 0), np.uint8, True),
        ((2, 1, 16, 20), (1.0, 0.5158, 0.5158), ("nuc", "golgi"), (0, 1), np.float32, False),
        ((1, 1, 16, 20), (1.0, 0.5, 0.5), ("C0",), (None, 0), np.uint16, False),
        ((1, 4, 16, 20), (2.0, 0.5, 0.5), ("C0",), (0, None), np.uint16, False),
    ],
)
def test_write_then_read_is_identical(tmp_path: Path, shape, voxel, names, roles, dtype, compress) -> None:
    data = (np.arange(np.prod(shape)) % 251).reshape(shape).astype(dtype)
    original = Volume(data, voxel, names, nucleus_channel=roles[0], golgi_channel=roles[1])
    path = write_imagej_tiff(tmp_path / "out" / "v.tif", original, compress=compress)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, original.data)
    assert volume.data.dtype == original.data.dtype
    assert volume.voxel_size == pytest.approx(original.voxel_size, rel=1e-6)
    assert volume.channel_names == original.channel_names
    assert (volume.nucleus_channel, volume.golgi_channel) == roles
    assert volume.metadata["is_2d"] is (shape[1] == 1)
    assert [p.name for p in path.parent.iterdir()] == ["v.tif"]  # atomic: no temporary left behind


def test_written_roles_yield_to_caller(tmp_path: Path) -> None:
    original = Volume(np.zeros((3, 2, 8, 8), np.uint16), VOXEL, nucleus_channel=2, golgi_channel=1)
    path = write_imagej_tiff(tmp_path / "v.tif", original)
    volume = read_volume(path, golgi_channel=2)
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 2)
    assert volume.metadata["channel_roles_source"] == {"nucleus": "default", "golgi": "user"}
