"""PairSet, the project vectors CSV + sidecar, and the legacy importers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import app.core.pairs as pairs_module
from app.core.errors import CellPolError, FileFormatError
from app.core.pairs import (
    CSV_COLUMNS,
    PairSet,
    read_3dngmic_vectors,
    read_legacy_csv,
    read_pairs,
    sidecar_path,
    write_pairs,
)

LEGACY_FILES = ["Crop1", "Crop2", "Crop3", "Crop4", "Crop5_BC", "Crop6_BC", "Crop7_BC", "Crop8_BC"]


def make_pairs(n=4, voxel=(0.5, 0.25, 0.25), seed=0):
    rng = np.random.default_rng(seed)
    nuclei = rng.uniform(0, 50, (n, 3))
    golgi = nuclei + rng.uniform(-5, 5, (n, 3))
    return PairSet(nuclei, golgi, voxel_size=voxel, scores=rng.uniform(0, 1, n), sources="predicted")


def test_vectors_and_micrometres():
    pairs = PairSet([[1, 2, 3]], [[3, 2, 7]], voxel_size=(0.5, 0.25, 0.25))
    np.testing.assert_allclose(pairs.vectors, [[2, 0, 4]])
    np.testing.assert_allclose(pairs.vectors_um, [[1.0, 0.0, 1.0]])
    np.testing.assert_allclose(pairs.lengths_um, [np.sqrt(2)])
    with pytest.raises(CellPolError, match="voxel size"):
        _ = PairSet([[1, 2, 3]], [[3, 2, 7]]).lengths_um


def test_rejects_misaligned_and_nonfinite():
    with pytest.raises(CellPolError, match="row-aligned"):
        PairSet(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(CellPolError, match="finite"):
        PairSet([[0, 0, np.nan]], [[0, 0, 0]])


def test_csv_round_trip_with_sidecar(tmp_path):
    pairs = make_pairs()
    path = write_pairs(tmp_path / "img.vectors.csv", pairs, provenance={"image": "img.tif", "model": "m1"})
    header = path.read_text().splitlines()[0].split(",")
    assert header[:6] == list(CSV_COLUMNS)
    side = json.loads(sidecar_path(path).read_text())
    assert side["voxel_size_zyx_um"] == [0.5, 0.25, 0.25] and side["model"] == "m1"
    back = read_pairs(path)
    np.testing.assert_allclose(back.nuclei, pairs.nuclei, atol=1e-4)
    np.testing.assert_allclose(back.golgi, pairs.golgi, atol=1e-4)
    np.testing.assert_allclose(back.scores, pairs.scores, atol=1e-4)
    assert back.voxel_size == (0.5, 0.25, 0.25)
    assert list(back.sources) == ["predicted"] * 4


def test_csv_columns_are_x_y_z(tmp_path):
    # x = column (last array axis), y = row, z = slice.
    path = tmp_path / "a.vectors.csv"
    path.write_text("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n10,20,3,11,22,4\n")
    pairs = read_pairs(path, voxel_size=(1, 1, 1))
    np.testing.assert_allclose(pairs.nuclei, [[3, 20, 10]])
    np.testing.assert_allclose(pairs.golgi, [[4, 22, 11]])
    assert np.isnan(pairs.scores[0])


def test_header_only_is_empty_set(tmp_path):
    path = tmp_path / "e.vectors.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")
    assert len(read_pairs(path)) == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ("1,2,3,4,5,6\n", "no header"),
        ("nucleus_x,nucleus_y,golgi_x,golgi_y\n1,2,3,4\n", "missing column"),
        ("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n1,2,nan,4,5,6\n", "finite"),
        ("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n1,2,abc,4,5,6\n", "not a number"),
        ("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n1,2,3,4,5\n", "missing"),
        ("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z,id\n1,2,3,4,5,6,1\n1,2,3,4,5,6,1\n", "duplicates"),
    ],
)
def test_bad_csv_gives_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.vectors.csv"
    path.write_text(content)
    with pytest.raises(FileFormatError, match=message):
        read_pairs(path)


def test_corrupt_sidecar_and_binary_file(tmp_path):
    path = write_pairs(tmp_path / "x.vectors.csv", make_pairs())
    sidecar_path(path).write_text("{not json")
    with pytest.raises(FileFormatError, match="JSON"):
        read_pairs(path)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(FileFormatError, match="binary"):
        read_pairs(binary)
    with pytest.raises(FileFormatError, match="no such file"):
        read_pairs(tmp_path / "missing.csv")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = write_pairs(tmp_path / "keep.vectors.csv", make_pairs(2))
    before = path.read_text()
    def boom(pairs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pairs_module, "pairs_to_csv_text", boom)
    with pytest.raises(RuntimeError):
        write_pairs(path, make_pairs(5))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_legacy_csv_all_retina_files(shared_data):
    total = 0
    for name in LEGACY_FILES:
        pairs = read_legacy_csv(shared_data / "retina3d_vectors" / f"{name}.csv", one_based=True,
                                voxel_size=(0.27, 0.333, 0.333))
        assert len(pairs) > 0
        assert np.all(pairs.nuclei >= 0) and np.all(pairs.golgi >= 0)
        total += len(pairs)
    assert total == 482


def test_legacy_csv_column_order(shared_data):
    # First row of Crop1: 609,484,604,472,16,17 = col_N,row_N,col_G,row_G,z_N,z_G (1-based).
    pairs = read_legacy_csv(shared_data / "retina3d_vectors" / "Crop1.csv", one_based=True,
                            voxel_size=(0.27, 0.333, 0.333))
    np.testing.assert_allclose(pairs.nuclei[0], [15, 483, 608])
    np.testing.assert_allclose(pairs.golgi[0], [16, 471, 603])
    zero = read_legacy_csv(shared_data / "retina3d_vectors" / "Crop1.csv", one_based=False)
    np.testing.assert_allclose(zero.nuclei[0], [16, 484, 609])
    # Real retina vectors: median length about 6 µm.
    assert 4.0 < float(np.median(pairs.lengths_um)) < 8.0


def test_legacy_csv_header_line_skipped(tmp_path):
    path = tmp_path / "tool.csv"
    path.write_text("YN,XN,ZN,YG,XG,ZG\n10.5,20,30,40,2,3\n")
    pairs = read_legacy_csv(path, one_based=False)
    np.testing.assert_allclose(pairs.nuclei, [[2, 20, 10.5]])
    np.testing.assert_allclose(pairs.golgi, [[3, 40, 30]])
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(FileFormatError, match="expected 6 values"):
        read_legacy_csv(bad)


def test_3dngmic_vectors_npy(tmp_path):
    arr = np.array([[10, 20, 30, 12, 25, 31]], dtype=np.float64)  # a0_N, a1_N, z_N, a0_G, a1_G, z_G
    np.save(tmp_path / "0.npy", arr)
    pairs = read_3dngmic_vectors(tmp_path / "0.npy", voxel_size=(0.27, 0.666, 0.666))
    np.testing.assert_allclose(pairs.nuclei, [[30, 10, 20]])
    np.testing.assert_allclose(pairs.golgi, [[31, 12, 25]])
    np.save(tmp_path / "bad.npy", np.zeros((3, 4)))
    with pytest.raises(FileFormatError, match=r"\(N, 6\)"):
        read_3dngmic_vectors(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError):
        read_3dngmic_vectors(tmp_path / "obj.npy")
