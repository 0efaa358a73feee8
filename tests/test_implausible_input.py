"""Implausible input gets one clear, true message (or a warning where the input is possible).

Each test fails on the code before the fix: an axes string that made 96 channels, voxel sizes in nm or mm,
a 4000³ simulation, a project file with fields of the wrong type, a valid 1-pixel-wide file called damaged and
a truncated .npy called "not enough memory".
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.cli import main
from app.core import simulate
from app.core.errors import CellPolError, FileFormatError, MissingVoxelSizeError
from app.core.imageio import (
    MAX_CHANNELS,
    ImplausibleInputWarning,
    ImplausibleVoxelSizeError,
    read_image_info,
    read_volume,
    write_imagej_tiff,
)
from app.core.modelfile import load_spec
from app.core.project import Project
from app.core.volume import Volume, parse_voxel_size

VOXEL = (1.0, 0.25, 0.25)
REPO = Path(__file__).resolve().parents[1]


def _zcyx(n_slices: int = 96, n_channels: int = 2, size: int = 8) -> np.ndarray:
    return np.arange(n_slices * n_channels * size * size, dtype=np.uint16).reshape(n_slices, n_channels, size, size)


def _imagej(path: Path, data: np.ndarray, axes: str, unit: str = "um", spacing: float = 1.0,
            pixel: float = 0.25) -> Path:
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / pixel, 1 / pixel),
                     metadata={"axes": axes, "unit": unit, "spacing": spacing})
    return path


# --------------------------------------------------------------------------------------------------
# A. An axes string must not silently turn a 2-channel stack into 96 channels
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain-tiff", "npy"])
def test_axes_that_make_96_channels_are_refused_with_the_likely_string(tmp_path: Path, kind: str) -> None:
    data = _zcyx()
    path = tmp_path / ("a.tif" if kind == "plain-tiff" else "a.npy")
    if kind == "plain-tiff":
        tifffile.imwrite(path, data)  # no axes in the file: tifffile calls them QQYX
    else:
        np.save(path, data)
    with pytest.raises(FileFormatError) as info:
        read_volume(path, voxel_size=VOXEL, axes="CZYX")
    message = str(info.value)
    assert "96 channels" in message and "C=96, Z=2, Y=8, X=8" in message
    assert f"at most {MAX_CHANNELS} channels" in message
    assert "'ZCYX' (2 channels × 96 slices" in message
    # The suggested string reads the file as intended.
    volume = read_volume(path, voxel_size=VOXEL, axes="ZCYX")
    np.testing.assert_array_equal(volume.data, data.transpose(1, 0, 2, 3))


def test_axes_against_the_files_own_metadata_point_to_it(tmp_path: Path) -> None:
    path = _imagej(tmp_path / "ij.tif", _zcyx(n_slices=12), "ZCYX")
    with pytest.raises(FileFormatError, match=r"metadata says 'ZCYX' \(2 channels × 12 slices.*leave the axes out"):
        read_volume(path, axes="CZYX")
    assert read_volume(path).data.shape == (2, 12, 8, 8)


def test_a_single_channel_stack_read_as_channels_suggests_zyx(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    np.save(path, np.zeros((40, 8, 8), np.uint8))
    with pytest.raises(FileFormatError, match=r"40 channels.*'ZYX' \(1 channel × 40 slices"):
        read_volume(path, voxel_size=VOXEL, axes="CYX")


def test_up_to_max_channels_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "eight.npy"
    np.save(path, np.zeros((MAX_CHANNELS, 3, 8, 8), np.uint8))
    assert read_volume(path, voxel_size=VOXEL, axes="CZYX").n_channels == MAX_CHANNELS
    np.save(path, np.zeros((MAX_CHANNELS + 1, 3, 8, 8), np.uint8))
    with pytest.raises(FileFormatError, match=f"{MAX_CHANNELS + 1} channels"):
        read_volume(path, voxel_size=VOXEL, axes="CZYX")


def test_axes_overriding_the_files_metadata_warn(tmp_path: Path) -> None:
    # Plausible both ways (3 slices × 2 channels, or 3 channels × 2 slices): the caller wins, with a warning.
    path = _imagej(tmp_path / "ij.tif", _zcyx(n_slices=3), "ZCYX")
    with pytest.warns(ImplausibleInputWarning, match=r"override the file's own axes 'ZCYX'.*3 channels × 2 slices"):
        volume = read_volume(path, axes="CZYX")
    assert volume.data.shape == (3, 2, 8, 8)
    assert len(volume.metadata["warnings"]) == 1
    # The same axes as the file's: nothing to say.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agreed = read_volume(path, axes="ZCYX")
    assert agreed.metadata["warnings"] == []


def test_axes_of_the_wrong_length_name_the_files_own_axes(tmp_path: Path) -> None:
    # A batch's --axes meets an OME-TIFF that stores a single plane as CYX.
    path = tmp_path / "one.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 1, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "CZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1})
    axes = read_image_info(path)["axes"]
    assert len(axes) == 3
    with pytest.raises(FileFormatError, match=f"own metadata names '{axes}'; leave the axes out"):
        read_volume(path, axes="CZYX")


# --------------------------------------------------------------------------------------------------
# B. Voxel sizes in nm or mm
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ((1.0, 200.0, 200.0), r"implausibly large: y = 200 µm and x = 200 µm are above 50 µm.*200 nm = 0\.2 µm"),
        ((0.5, 0.0002, 0.0002), r"implausibly small: y = 0\.0002 µm and x = 0\.0002 µm .*0\.0002 mm = 0\.2 µm"),
        ((500.0, 0.2, 0.2), r"z = 500 µm is above 100 µm.*500 nm = 0\.5 µm"),
        ((0.001, 0.2, 0.2), r"z = 0\.001 µm is below 0\.01 µm"),
    ],
)
def test_voxel_sizes_in_nm_or_mm_are_refused(values, expected) -> None:
    with pytest.raises(CellPolError, match=expected):
        parse_voxel_size(values)


@pytest.mark.parametrize("values", [(0.01, 0.01, 0.01), (100.0, 50.0, 50.0), (60.0, 0.2, 0.2), (1.0, 0.5, 0.5)])
def test_plausible_voxel_sizes_pass(values) -> None:
    assert parse_voxel_size(values) == values


def test_shipped_models_still_load() -> None:
    specs = sorted((REPO / "resources" / "models").glob("*.json"))
    assert specs
    for spec_path in specs:
        assert load_spec(spec_path).voxel_size == pytest.approx((1.0, 0.5, 0.5))


def test_a_voxel_size_in_nm_from_the_file_says_where_it_came_from(tmp_path: Path) -> None:
    # Pixel size 100 "µm": the value was in nm but the unit says µm.
    path = _imagej(tmp_path / "nm.tif", np.zeros((3, 8, 8), np.uint8), "ZYX", unit="um", spacing=300, pixel=100)
    with pytest.raises(ImplausibleVoxelSizeError) as info:
        read_volume(path)
    message = str(info.value)
    assert isinstance(info.value, MissingVoxelSizeError)  # the app asks for a voxel size, as for none
    assert "ImageJ unit 'um'" in message and "300 × 100 × 100 µm" in message and "give the voxel size" in message
    assert info.value.settings == {"voxel_size": None}  # the command line adds --voxel-size Z Y X
    assert "no voxel size found" not in message
    assert read_volume(path, voxel_size=(0.3, 0.1, 0.1)).voxel_size == (0.3, 0.1, 0.1)
    info_dict = read_image_info(path)
    assert info_dict["voxel_size"] is None and "implausibly large" in info_dict["voxel_size_problem"]


def test_an_ome_voxel_size_in_the_wrong_unit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 2, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 250, "PhysicalSizeY": 250, "PhysicalSizeZ": 0.5})
    with pytest.raises(ImplausibleVoxelSizeError, match=r"OME PhysicalSizeX/Y/Z.*y = 250 µm and x = 250 µm"):
        read_volume(path)


def test_a_user_voxel_size_in_nm_is_refused_by_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "p.npy"
    np.save(path, np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(CellPolError, match="If it was given in nm"):
        read_volume(path, voxel_size=(1000, 200, 200), axes="CZYX")


def test_a_z_step_larger_than_a_cell_is_read_with_a_warning(tmp_path: Path) -> None:
    path = _imagej(tmp_path / "z.tif", np.zeros((3, 8, 8), np.uint8), "ZYX", spacing=60, pixel=0.25)
    with pytest.warns(ImplausibleInputWarning, match="z step of 60 µm is larger than a cell"):
        volume = read_volume(path)
    assert volume.voxel_size == (60.0, 0.25, 0.25)
    assert "from the file's metadata" in volume.metadata["warnings"][0]
    # A single plane's z entry is only a placeholder: no warning.
    plane = tmp_path / "plane.npy"
    np.save(plane, np.zeros((2, 8, 8), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_volume(plane, voxel_size=(60, 0.25, 0.25), axes="CYX")


def test_cli_reports_a_file_voxel_size_in_nm_in_one_line(tmp_path: Path, capsys) -> None:
    path = _imagej(tmp_path / "nm.tif", np.zeros((3, 8, 8), np.uint8), "ZYX", unit="um", spacing=300, pixel=100)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--voxel-size" in err and "implausibly large" in err
    assert main(["info", str(path), "--voxel-size", "0.3", "0.1", "0.1"]) == 0


# --------------------------------------------------------------------------------------------------
# C. Small messages that were wrong
# --------------------------------------------------------------------------------------------------


def test_a_simulation_too_large_for_memory_is_refused_up_front() -> None:
    start = time.perf_counter()
    with pytest.raises(CellPolError, match=r"4000 × 4000 × 4000 voxels .* needs about 2\.3 TB of memory"):
        simulate.simulate(simulate.SimConfig(shape=(4000, 4000, 4000)))
    assert time.perf_counter() - start < 5  # before drawing the scene or allocating the canvas


def test_synthesize_dataset_checks_memory_before_writing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(simulate, "available_memory_bytes", lambda: 1_000_000)
    out = tmp_path / "synth"
    with pytest.raises(CellPolError, match=r"needs about 9\.4 MB .* only 1\.0 MB is available"):
        simulate.synthesize_dataset(out, 2, shape=(16, 128, 128))
    assert not out.exists()


def test_available_memory_is_known_here() -> None:
    available = simulate.available_memory_bytes()
    assert available is None or available > 0


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("voxel_sizes", 5, "'voxel_sizes' must be an object"),
        ("voxel_sizes", [1, 0.2, 0.2], "'voxel_sizes' must be an object"),
        ("voxel_sizes", {"images/a.tif": "abc"}, "'voxel_sizes[\"images/a.tif\"]' must be three numbers"),
        ("voxel_sizes", {"images/a.tif": 5}, "'voxel_sizes[\"images/a.tif\"]' must be three numbers"),
        ("settings", "abc", "'settings' must be an object"),
        ("settings", {"last_image": 5}, "'settings[\"last_image\"]' must be an image path"),
        ("name", {"x": 1}, "'name' must be a string"),
    ],
)
def test_a_project_file_field_of_the_wrong_type_is_named(tmp_path: Path, field, value, shown) -> None:
    project = Project.create(tmp_path / "p")
    document = json.loads(project.file.read_text(encoding="utf-8"))
    document[field] = value
    project.file.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(FileFormatError) as info:
        Project.open(tmp_path / "p")
    message = str(info.value)
    assert str(project.file) in message and shown in message


def test_a_project_keeps_unknown_fields_and_ignores_an_implausible_remembered_voxel_size(tmp_path: Path) -> None:
    project = Project.create(tmp_path / "p")
    document = json.loads(project.file.read_text(encoding="utf-8"))
    document["images"] = 5  # not a field of this version: kept as it is
    document["voxel_sizes"] = {"images/a.tif": [1, 200, 200]}  # typed in nm: asked again, not used
    project.file.write_text(json.dumps(document), encoding="utf-8")
    opened = Project.open(tmp_path / "p")
    assert opened.extra == {"images": 5}
    assert opened.voxel_size_for(tmp_path / "p" / "images" / "a.tif") is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (2, 3, 4, 1), (2, 1, 5, 1)])
def test_our_imagej_files_one_pixel_wide_read_back(tmp_path: Path, shape, dtype) -> None:
    volume = Volume(np.arange(np.prod(shape)).reshape(shape).astype(dtype), VOXEL, ("nuclei", "golgi"))
    path = write_imagej_tiff(tmp_path / "tiny.tif", volume)
    again = read_volume(path)
    np.testing.assert_array_equal(again.data, volume.data)
    assert again.voxel_size == (1.0 if shape[1] == 1 else VOXEL[0], 0.25, 0.25)
    assert again.channel_names == ("nuclei", "golgi")


def test_tiny_valid_files_with_two_channels_read(tmp_path: Path) -> None:
    data = np.array([10, 20], np.uint16).reshape(2, 1, 1, 1)
    tifffile.imwrite(tmp_path / "plain.tif", data, metadata={"axes": "CZYX"})
    tifffile.imwrite(tmp_path / "t.ome.tif", data, ome=True,
                     metadata={"axes": "CZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1})
    np.save(tmp_path / "t.npy", data)
    for name, axes in (("plain.tif", "CZYX"), ("t.ome.tif", None), ("t.npy", "CZYX")):
        volume = read_volume(tmp_path / name, voxel_size=VOXEL, axes=axes)
        assert volume.data.shape == (2, 1, 1, 1) and volume.data.ravel().tolist() == [10, 20], name


def test_an_inconsistent_imagej_file_says_what_does_not_match(tmp_path: Path) -> None:
    # tifffile's ImageJ writer stores an image 1 pixel wide with a description that its pages contradict.
    path = tmp_path / "tifffile.tif"
    tifffile.imwrite(path, np.ones((1, 2, 1, 1), np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(FileFormatError) as info:
        read_volume(path, voxel_size=VOXEL)
    message = str(info.value)
    assert "ImageJ description does not match the image data" in message
    assert "declares 2 planes (2 channels), but the file holds 1 complete page of 2×1 pixels" in message
    assert "damaged" not in message and "truncated" not in message


def test_a_truncated_imagej_file_is_still_called_damaged_or_truncated(tmp_path: Path) -> None:
    full = _imagej(tmp_path / "full.tif", _zcyx(n_slices=10, size=64), "ZCYX")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    with pytest.raises(FileFormatError, match="damaged or truncated"):
        read_volume(cut)


def test_a_truncated_npy_says_truncated_not_out_of_memory(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<u2", "fortran_order": False, "shape": (2, 2000, 4000, 4000)}
    )
    path = tmp_path / "big.npy"
    path.write_bytes(header.getvalue() + bytes(4096))
    for reader in (lambda: read_volume(path, voxel_size=VOXEL, axes="CZYX"), lambda: read_image_info(path)):
        with pytest.raises(FileFormatError) as info:
            reader()
        message = str(info.value)
        assert "truncated" in message and "128.0 GB" in message and "4.1 kB" in message
        assert "memory" not in message
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((2, 3, 8, 8), np.uint16))
    small.write_bytes(small.read_bytes()[:-10])
    with pytest.raises(FileFormatError, match=r"truncated: .* 768 bytes of data, but only 758 bytes"):
        read_volume(small, voxel_size=VOXEL, axes="CZYX")
