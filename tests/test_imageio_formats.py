"""Microscope formats: Leica LIF, Nikon ND2, Zeiss CZI (every scene), OME-Zarr and OME-TIFF, their series, voxel
sizes and channel names, lazy region reads, and one clear message for a damaged file.

Files come from each format's own writer where there is one: tifffile writes the OME-TIFFs, ome-zarr the OME-Zarr
folders (NGFF 0.4 on Zarr v2 and 0.5 on Zarr v3), the CZI is a real two-scene file of the shared data. readlif and
nd2 have no writers: the LIF files are written here byte by byte after the layout readlif parses (an XML header
block, then one memory block per image), so readlif itself reads them; ND2 is tested through a stand-in for
``nd2.ND2File`` with the same attributes (sizes, to_dask, voxel_size, metadata.channels, experiment).
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from app.cli import main
from app.core.errors import FileFormatError
from app.core.imageio import list_series, open_lazy, read_image_info, read_volume

CZI_NAME = "neubias/xyz__multiple_images.czi"


# --- writers -----------------------------------------------------------------------------------------------


def write_lif(path: Path, images: list[tuple[str, np.ndarray, tuple[float, float, float], list[str]]]) -> Path:
    """A Leica LIF file: ``images`` of ``(name, (C, Z, Y, X) uint8/uint16 array, voxel (z, y, x) µm, dye names)``.

    Layout (as readlif and Bio-Formats read it): blocks of int32 0x70, int32 length, byte 0x2A; the first holds the
    XML header (int32 character count, UTF-16), each next one an image's memory (uint64 size, 0x2A, int32 id
    length, UTF-16 id, the pixels with channels fastest, then z)."""
    elements, blocks = [], []
    for i, (name, data, voxel, dyes) in enumerate(images):
        c, z, y, x = data.shape
        bpp = data.dtype.itemsize
        channels = "".join(
            f'<ChannelDescription DataType="0" Resolution="{8 * bpp}" LUTName="{["Blue", "Green", "Red"][k % 3]}" '
            f'BytesInc="{k * x * y * bpp}"><ChannelProperty><Key>DyeName</Key><Value>{dyes[k]}</Value>'
            "</ChannelProperty></ChannelDescription>"
            for k in range(c)
        )
        dims = "".join(
            f'<DimensionDescription DimID="{dim_id}" NumberOfElements="{n}" Origin="0" Length="{(n - 1) * size * 1e-6}"'
            f' Unit="m" BytesInc="{inc}"/>'
            for dim_id, n, size, inc in ((1, x, voxel[2], bpp), (2, y, voxel[1], x * bpp), (3, z, voxel[0], x * y * bpp * c))
            if n > 1 or dim_id < 3
        )
        memory_id = f"MemBlock_{i + 1}"
        elements.append(
            f'<Element Name="{name}"><Data><Image><ImageDescription><Channels>{channels}</Channels>'
            f"<Dimensions>{dims}</Dimensions></ImageDescription></Image></Data>"
            f'<Memory Size="{data.nbytes}" MemoryBlockID="{memory_id}"/><Children/></Element>'
        )
        pixels = np.ascontiguousarray(data.transpose(1, 0, 2, 3)).astype(data.dtype.newbyteorder("<")).tobytes()
        ident = memory_id.encode("utf-16-le")
        body = struct.pack("<BQBI", 0x2A, len(pixels), 0x2A, len(memory_id)) + ident + pixels
        blocks.append(struct.pack("<II", 0x70, len(body)) + body)
    xml = ('<LMSDataContainerHeader Version="2"><Element Name="project"><Data><Experiment/></Data>'
           f'<Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>{"".join(elements)}</Children></Element>'
           "</LMSDataContainerHeader>")
    header = struct.pack("<BI", 0x2A, len(xml)) + xml.encode("utf-16-le")
    path.write_bytes(struct.pack("<II", 0x70, len(header)) + header + b"".join(blocks))
    return path


def write_ome_zarr(path: Path, data: np.ndarray, voxel: tuple[float, float, float], names: list[str],
                   version: str = "0.4", chunks=(1, 2, 16, 16)) -> Path:
    """An OME-Zarr image written by ome-zarr (two resolution levels, (C, Z, Y, X))."""
    zarr = pytest.importorskip("zarr")
    writer = pytest.importorskip("ome_zarr.writer")
    from ome_zarr.format import FormatV04, FormatV05

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    window = {"start": 0, "end": 1000, "min": 0, "max": 65535}
    writer.write_image(
        data, root, scale_factors=(2,), fmt=fmt, axes="czyx", scale=dict(zip("zyx", voxel)),
        axes_units={axis: "micrometer" for axis in "zyx"}, storage_options={"chunks": chunks},
        omero={"channels": [{"label": n, "color": "FFFFFF", "window": window} for n in names]},
    )
    return path


def write_ome_tiff(path: Path, images: list[np.ndarray], voxel=(1.0, 0.2, 0.2), names=("DAPI", "GM130"),
                   tile=(16, 16)) -> Path:
    """An OME-TIFF with one OME image per array (ZCYX), tiled, written by tifffile."""
    with tifffile.TiffWriter(path, ome=True) as tif:
        for i, data in enumerate(images):
            tif.write(data, tile=tile, metadata={
                "axes": "ZCYX", "Name": f"field {i}", "PhysicalSizeX": voxel[2], "PhysicalSizeY": voxel[1],
                "PhysicalSizeZ": voxel[0], "Channel": {"Name": list(names)}})
    return path


def stack(seed: int, shape=(2, 5, 64, 48), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000 if dtype == np.uint16 else 250, shape).astype(dtype)


# --- Leica LIF ---------------------------------------------------------------------------------------------


@pytest.fixture
def lif_path(tmp_path: Path) -> Path:
    return write_lif(tmp_path / "experiment.lif", [
        ("Position 1", stack(1, (2, 4, 32, 40), np.uint8), (2.0, 0.5, 0.5), ["DAPI", "GM130"]),
        ("Position 2", stack(2, (2, 3, 24, 16), np.uint16), (1.0, 0.25, 0.25), ["Hoechst", "Giantin"]),
    ])


def test_lif_every_series_with_voxel_size_and_names(lif_path: Path) -> None:
    found = list_series(lif_path)
    assert [(s.index, s.name, s.shape) for s in found] == [(0, "Position 1", (2, 4, 32, 40)),
                                                           (1, "Position 2", (2, 3, 24, 16))]
    assert found[0].voxel_size == pytest.approx((2.0, 0.5, 0.5))
    assert found[1].voxel_size == pytest.approx((1.0, 0.25, 0.25))
    assert found[1].channel_names == ("Hoechst", "Giantin")
    for index, seed, dtype in ((0, 1, np.uint8), (1, 2, np.uint16)):
        volume = read_volume(lif_path, series=index)
        expected = stack(seed, found[index].shape, dtype)
        np.testing.assert_array_equal(volume.data, expected)
        assert volume.metadata["format"] == "lif" and volume.metadata["series_name"] == found[index].name
    volume = read_volume(lif_path, scene=1)
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 1)  # from the dye names Hoechst, Giantin


def test_lif_reads_only_the_planes_of_a_region(lif_path: Path, monkeypatch) -> None:
    from readlif.reader import LifImage

    asked = []
    original = LifImage.get_frame
    monkeypatch.setattr(LifImage, "get_frame", lambda self, z=0, t=0, c=0, m=0: asked.append((c, z)) or
                        original(self, z=z, t=t, c=c, m=m))
    with open_lazy(lif_path, series=0) as image:
        region = image.read_region(z=(1, 3), y=(4, 20), x=(8, 30), c=(1, 2))
    np.testing.assert_array_equal(region, stack(1, (2, 4, 32, 40), np.uint8)[1:2, 1:3, 4:20, 8:30])
    assert sorted(asked) == [(1, 1), (1, 2)]


def test_lif_truncated_or_damaged_is_one_clear_message(lif_path: Path, tmp_path: Path) -> None:
    content = lif_path.read_bytes()
    cut = tmp_path / "cut.lif"
    cut.write_bytes(content[: len(content) - 500])
    with pytest.raises(FileFormatError, match=r"cut\.lif: series 1 of this Leica LIF file should hold .* the file is "
                                              "damaged or truncated"):
        read_volume(cut, series=1)
    assert read_volume(cut, series=0).data.shape == (2, 4, 32, 40)  # the series before the cut is whole
    header_cut = tmp_path / "header.lif"
    header_cut.write_bytes(content[:200])
    with pytest.raises(FileFormatError, match=r"header\.lif: cannot read this Leica LIF file"):
        list_series(header_cut)


# --- Nikon ND2 (a stand-in for nd2.ND2File: the package has no writer) --------------------------------------


class FakeND2:
    """What CellPol uses of ``nd2.ND2File``: two stage positions (P) of a Z, C, Y, X stack."""

    data = stack(3, (2, 4, 2, 20, 24))  # P, Z, C, Y, X
    frames_read: list = []

    def __init__(self, path: str) -> None:
        if Path(path).stat().st_size < 64:
            raise ValueError("File too short to be an ND2 chunk map")  # what a truncated file does to the reader
        self.sizes = {"P": 2, "Z": 4, "C": 2, "Y": 20, "X": 24}
        self.dtype = self.data.dtype
        self.metadata = SimpleNamespace(channels=[SimpleNamespace(channel=SimpleNamespace(name=n))
                                                  for n in ("DAPI", "GM130")])
        self.experiment = [SimpleNamespace(type="XYPosLoop", parameters=SimpleNamespace(
            points=[SimpleNamespace(name="well A1"), SimpleNamespace(name="")]))]

    def voxel_size(self):
        return SimpleNamespace(x=0.3, y=0.3, z=1.5)

    def to_dask(self):
        import dask.array as da

        def block(block_id=None):
            FakeND2.frames_read.append(block_id[:3])
            p, z, c = block_id[:3]
            return self.data[p:p + 1, z:z + 1, c:c + 1]

        return da.map_blocks(block, chunks=((1,) * 2, (1,) * 4, (1,) * 2, (20,), (24,)), dtype=self.dtype)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass


@pytest.fixture
def nd2_path(tmp_path: Path, monkeypatch) -> Path:
    nd2 = pytest.importorskip("nd2")
    monkeypatch.setattr(nd2, "ND2File", FakeND2)
    FakeND2.frames_read = []
    path = tmp_path / "plate.nd2"
    path.write_bytes(b"\xda\xce\xbe\x0a" + bytes(200))
    return path


def test_nd2_positions_are_series(nd2_path: Path) -> None:
    found = list_series(nd2_path)
    assert [(s.name, s.shape, s.channel_names) for s in found] == [
        ("well A1", (2, 4, 20, 24), ("DAPI", "GM130")), ("Position 1", (2, 4, 20, 24), ("DAPI", "GM130"))]
    assert found[0].voxel_size == pytest.approx((1.5, 0.3, 0.3))
    volume = read_volume(nd2_path, series=1)
    np.testing.assert_array_equal(volume.data, FakeND2.data[1].transpose(1, 0, 2, 3))
    assert volume.metadata["format"] == "nd2"


def test_nd2_region_reads_only_its_frames(nd2_path: Path) -> None:
    with open_lazy(nd2_path, series=1) as image:
        FakeND2.frames_read = []
        region = image.read_region(z=(2, 3), y=(5, 9), c=(0, 1))
    np.testing.assert_array_equal(region, FakeND2.data[1, 2:3, 0:1, 5:9].transpose(1, 0, 2, 3))
    assert FakeND2.frames_read == [(1, 2, 0)]


def test_nd2_damaged_is_one_clear_message(nd2_path: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.nd2"
    short.write_bytes(b"\xda\xce\xbe\x0a" + bytes(10))
    with pytest.raises(FileFormatError, match=r"short\.nd2: cannot read this Nikon ND2 file; it may be damaged"):
        read_volume(short)


# --- Zeiss CZI (a real two-scene file) ---------------------------------------------------------------------


def test_czi_scenes_listed_and_read_by_region(shared_data: Path, monkeypatch) -> None:
    import czifile

    path = shared_data / CZI_NAME
    found = list_series(path)
    assert [(s.index, s.shape) for s in found] == [(0, (1, 2, 251, 251)), (1, (1, 2, 251, 251))]
    whole = read_volume(path, series=1).data
    decoded = []
    original = czifile.DirectoryEntryDV.data_segment
    monkeypatch.setattr(czifile.DirectoryEntryDV, "data_segment",
                        lambda self: decoded.append(self.start) or original(self))
    with open_lazy(path, series=1) as image:
        region = image.read_region(z=(1, 2), y=(100, 150), x=(20, 60))
    np.testing.assert_array_equal(region, whole[:, 1:2, 100:150, 20:60])
    z_axis = czifile.CziFile(str(path)).axes.index("Z")
    assert decoded and all(start[z_axis] == 1 for start in decoded)  # only subblocks of that plane


def test_czi_truncated_is_one_clear_message(shared_data: Path, tmp_path: Path) -> None:
    content = (shared_data / CZI_NAME).read_bytes()
    cut = tmp_path / "cut.czi"
    cut.write_bytes(content[: len(content) // 2])
    for read in (list_series, lambda p: read_volume(p, series=1), lambda p: open_lazy(p, series=1).read()):
        with pytest.raises(FileFormatError, match=r"cut\.czi.*CZI"):
            read(cut)


# --- OME-Zarr -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_voxel_size_names_and_level_0(tmp_path: Path, version: str) -> None:
    data = stack(4, (2, 6, 64, 48))
    path = write_ome_zarr(tmp_path / "cells.ome.zarr", data, (2.0, 0.25, 0.25), ["DAPI", "GM130"], version)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, data)  # level 0, not the half-size level 1
    assert volume.voxel_size == pytest.approx((2.0, 0.25, 0.25))
    assert volume.channel_names == ("DAPI", "GM130")
    assert read_image_info(path)["format"] == "ome-zarr"


def test_ome_zarr_bioformats2raw_folder_lists_each_image(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "plate.ome.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    for i in range(2):
        write_ome_zarr(path / str(i), stack(10 + i, (2, 3, 32, 32)), (1.0 + i, 0.5, 0.5), ["DAPI", "GM130"])
    (path / "OME").mkdir()
    (path / "OME" / "METADATA.ome.xml").write_text(
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0" Name="left"/>'
        '<Image ID="Image:1" Name="right"/></OME>')
    found = list_series(path)
    assert [(s.name, s.voxel_size) for s in found] == [("left", (1.0, 0.5, 0.5)), ("right", (2.0, 0.5, 0.5))]
    np.testing.assert_array_equal(read_volume(path, series=1).data, stack(11, (2, 3, 32, 32)))


def test_ome_zarr_region_reads_only_its_chunks(tmp_path: Path, monkeypatch) -> None:
    zarr = pytest.importorskip("zarr")
    data = stack(5, (2, 6, 64, 48))
    path = write_ome_zarr(tmp_path / "big.ome.zarr", data, (2.0, 0.25, 0.25), ["DAPI", "GM130"], "0.5",
                          chunks=(1, 2, 16, 16))
    keys = []
    original = zarr.storage.LocalStore.get

    async def recording_get(self, key, prototype=None, byte_range=None):
        keys.append(key)
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", recording_get)
    with open_lazy(path) as image:
        keys.clear()
        region = image.read_region(z=(2, 4), y=(16, 32), x=(0, 20), c=(1, 2))
    np.testing.assert_array_equal(region, data[1:2, 2:4, 16:32, 0:20])
    chunk_keys = sorted(k for k in keys if "/c/" in k)
    assert chunk_keys == ["s0/c/1/1/1/0", "s0/c/1/1/1/1"]  # c=1, z-chunk 1, y-chunk 1, x-chunks 0 and 1


def test_ome_zarr_damaged_is_one_clear_message(tmp_path: Path) -> None:
    data = stack(6, (2, 4, 32, 32))
    path = write_ome_zarr(tmp_path / "cells.ome.zarr", data, (1.0, 0.5, 0.5), ["DAPI", "GM130"], "0.5")
    chunk = next(p for p in sorted((path / "s0").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:7])  # a truncated compressed chunk
    with pytest.raises(FileFormatError, match=r"cells\.ome\.zarr: cannot read this OME-Zarr file; it may be damaged"):
        read_volume(path)
    (path / "zarr.json").write_text("{ not json")
    with pytest.raises(FileFormatError, match=r"cells\.ome\.zarr: cannot read this OME-Zarr file"):
        list_series(path)


# --- OME-TIFF through tifffile's zarr store ----------------------------------------------------------------


def test_ome_tiff_images_are_series(tmp_path: Path) -> None:
    images = [stack(7, (5, 2, 64, 48)), stack(8, (3, 2, 32, 32))]
    path = write_ome_tiff(tmp_path / "two.ome.tif", images)
    found = list_series(path)
    assert [(s.name, s.shape, s.channel_names) for s in found] == [
        ("field 0", (2, 5, 64, 48), ("DAPI", "GM130")), ("field 1", (2, 3, 32, 32), ("DAPI", "GM130"))]
    assert found[1].voxel_size == pytest.approx((1.0, 0.2, 0.2))
    np.testing.assert_array_equal(read_volume(path, series=1).data, images[1].transpose(1, 0, 2, 3))


def test_tiff_region_reads_only_its_tiles_and_never_the_whole_image(tmp_path: Path, monkeypatch) -> None:
    from tifffile.zarr import ZarrTiffStore

    data = stack(9, (5, 2, 64, 48))
    path = write_ome_tiff(tmp_path / "tiled.ome.tif", [data])
    keys = []
    original = ZarrTiffStore.get

    async def recording_get(self, key, prototype, byte_range=None):
        keys.append(key)
        return await original(self, key, prototype, byte_range)

    def never(*args, **kwargs):
        raise AssertionError("the whole image was read")

    monkeypatch.setattr(ZarrTiffStore, "get", recording_get)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", never)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", never)
    with open_lazy(path) as image:
        assert image.shape == (2, 5, 64, 48) and image.voxel_size == pytest.approx((1.0, 0.2, 0.2))
        keys.clear()
        region = image.read_region(z=(1, 2), y=(16, 32), x=(16, 40))
        plane = image[0, 4]
    np.testing.assert_array_equal(region, data[1:2, :, 16:32, 16:40].transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(plane, data[4, 0])
    # the region: z 1, both channels, y-tile 1, x-tiles 1 and 2 (16-pixel tiles), 4 of the 120 tiles; then the
    # plane: z 4, channel 0, its 12 tiles
    assert keys[:4] == ["1.0.1.1", "1.0.1.2", "1.1.1.1", "1.1.1.2"]
    assert sorted(keys[4:]) == sorted(f"4.0.{y}.{x}" for y in range(4) for x in range(3))


def test_truncated_ome_tiff_is_one_clear_message(tmp_path: Path) -> None:
    path = write_ome_tiff(tmp_path / "whole.ome.tif", [stack(7, (5, 2, 64, 48))], tile=None)
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(path.read_bytes()[:30000])
    with pytest.raises(FileFormatError, match=r"cut\.ome\.tif.*(damaged or truncated)"):
        with open_lazy(cut) as image:
            image.read()


# --- lazy API details ---------------------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_regions_match(tmp_path: Path) -> None:
    data = stack(12, (3, 2, 16, 16))  # Z, C, Y, X
    path = tmp_path / "a.npy"
    np.save(path, data)
    with open_lazy(path, axes="ZCYX") as image:
        assert image.voxel_size is None and image.voxel_size_problem
        assert image.lazy_note.startswith("the bytes")
        np.testing.assert_array_equal(image[:, 1:3, :4, -4:], data[1:3, :, :4, -4:].transpose(1, 0, 2, 3))


def test_missing_series_is_refused(tmp_path: Path) -> None:
    path = write_ome_tiff(tmp_path / "one.ome.tif", [stack(7, (2, 2, 16, 16))])
    with pytest.raises(FileFormatError, match="scene 3 does not exist; the file has 1 scene"):
        open_lazy(path, series=3)


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_info_lists_series(lif_path: Path, capsys) -> None:
    assert main(["info", str(lif_path), "--series", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 series" in out
    assert '0  "Position 1"  2×4×32×40 (C×Z×Y×X)  voxel 2×0.5×0.5 µm  channels DAPI, GM130' in out
    assert '1  "Position 2"  2×3×24×16' in out
    assert "[series 1: Position 2]: 3D 2ch 3×24×16" in out


def test_cli_predict_series_all_and_one(lif_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(lif_path), "--out", str(out), "--method", "classic", "--series", "all"]) == 0
    written = sorted(p.name for p in out.glob("*.pred.vectors.csv"))
    assert written == ["experiment_s0-Position_1.pred.vectors.csv", "experiment_s1-Position_2.pred.vectors.csv"]
    summary = (out / "predict_summary.csv").read_text()
    assert "[series 1: Position 2]" in summary
    one = tmp_path / "one"
    assert main(["predict", str(lif_path), "--out", str(one), "--method", "classic", "--scene", "1"]) == 0
    assert [p.name for p in one.glob("*.pred.vectors.csv")] == ["experiment_s1-Position_2.pred.vectors.csv"]
    capsys.readouterr()
    assert main(["predict", str(lif_path), "--out", str(one), "--method", "classic", "--series", "5"]) == 1
    assert "scene 5 does not exist" in capsys.readouterr().err
