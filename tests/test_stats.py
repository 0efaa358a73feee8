"""Polarity statistics (app.core.stats, issue 20): formulas, tables, tests between groups, inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from app.core.errors import CellPolError
from app.core.pairs import PairSet, write_pairs
from app.core.stats import (
    PER_CELL_CAVEAT,
    GroupTest,
    ImageVectors,
    Reference,
    Summary,
    VectorTable,
    assign_groups,
    compare_groups,
    load_vectors,
    read_groups,
    read_references,
    summarize,
    vector_table,
)
from app.core.stats import directional as dst

VOXEL = (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _pairs(vectors_zyx, nuclei_zyx=None, voxel_size=VOXEL, **kwargs) -> PairSet:
    vectors = np.asarray(vectors_zyx, dtype=float).reshape(-1, 3)
    nuclei = np.full_like(vectors, 50.0) if nuclei_zyx is None else np.asarray(nuclei_zyx, dtype=float)
    return PairSet(nuclei, nuclei + vectors, voxel_size=voxel_size, **kwargs)


def _image(name, directions_xyz_up, group="all", unit=None) -> ImageVectors:
    """An image whose vectors have the given directions in the statistics' frame (x, y_up, z)."""
    d = np.asarray(directions_xyz_up, dtype=float) * 5.0
    zyx = np.column_stack([d[:, 2], -d[:, 1], d[:, 0]])  # y_up → rows grow downwards
    return ImageVectors(name, _pairs(zyx), Path(f"{name}.vectors.csv"), group=group, unit=unit or name)


def _uniform_sphere(rng, n):
    x = rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _vmf(rng, mu, kappa, n):
    return sps.vonmises_fisher(mu / np.linalg.norm(mu), kappa).rvs(n, random_state=rng)


# ------------------------------------------------------------------------------------------
# Published worked examples (Zar 2010, Biostatistical Analysis, 5th ed., chapter 27)
# ------------------------------------------------------------------------------------------
def test_rayleigh_zar_example_27_1():
    # Zar (2010) Example 27.1 (the data of Example 26.2: eight trees' leaning directions, degrees). The
    # book gives r = 0.82522, z = 5.448 and 0.001 < P < 0.002; the data and those values were checked
    # against pycircstat2's test suite (tests/test_hypothesis.py, data zar/D1.csv), not against the book.
    angles = np.radians([45, 55, 81, 96, 110, 117, 132, 154])
    mean, _, rbar = dst.circular_summary(angles)
    assert rbar == pytest.approx(0.82522, abs=5e-5)
    assert math.degrees(mean) == pytest.approx(99.0, abs=0.05)  # Zar's Example 26.4: a = 99°
    z, p = dst.rayleigh_2d(len(angles), rbar)
    assert z == pytest.approx(5.448, abs=1e-3)
    assert 0.001 < p < 0.002


def test_v_test_zar_example_27_2():
    # Zar (2010) Example 27.2: ten homing directions, expected direction 90°: V = 9.498, u = 4.248,
    # P < 0.0005 (values as in pycircstat2's test suite, data zar/D7.csv).
    angles = np.radians([66, 75, 86, 88, 88, 93, 97, 101, 118, 130])
    v, u, p = dst.v_test_2d(angles, math.radians(90))
    assert v == pytest.approx(9.498, abs=1e-3)
    assert u == pytest.approx(4.248, abs=1e-3)
    assert p < 0.0005
    assert dst.v_test_2d(angles + np.pi, math.radians(90))[2] > 0.99  # one-sided: pointing away is not "towards"


# ------------------------------------------------------------------------------------------
# Hand-computed cases and scipy agreement
# ------------------------------------------------------------------------------------------
def test_axis_vectors_by_hand():
    axes = np.vstack([np.eye(3), -np.eye(3)])
    direction, rbar = dst.mean_direction(axes)
    assert rbar == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(direction).all()  # no mean direction for a symmetric set
    assert dst.spherical_variance(rbar) == pytest.approx(1.0)
    direction, rbar = dst.mean_direction([[0.0, 0.0, 1.0]])
    assert rbar == pytest.approx(1.0) and np.allclose(direction, [0, 0, 1])
    direction, rbar = dst.mean_direction(np.eye(3)[:2])  # +x and +y: R̄ = √2/2, mean along the diagonal
    assert rbar == pytest.approx(math.sqrt(0.5))
    assert np.allclose(direction, [math.sqrt(0.5), math.sqrt(0.5), 0])
    mean, std, rbar = dst.circular_summary(np.radians([0, 90, 180, 270]))
    assert rbar == pytest.approx(0.0, abs=1e-12) and np.isnan(mean)
    mean, std, rbar = dst.circular_summary(np.radians([350, 10]))
    assert math.degrees(mean) % 360 == pytest.approx(0.0, abs=1e-9) or math.degrees(mean) == pytest.approx(360)
    assert rbar == pytest.approx(math.cos(math.radians(10)))


def test_values_agree_with_scipy():
    rng = np.random.default_rng(3)
    angles = rng.vonmises(1.0, 2.0, 300)
    mean, std, rbar = dst.circular_summary(angles)
    assert mean == pytest.approx(sps.circmean(angles))
    assert std == pytest.approx(sps.circstd(angles))
    assert rbar == pytest.approx(np.abs(np.exp(1j * angles).mean()))
    vectors = _vmf(rng, np.array([1.0, 2.0, -1.0]), 5.0, 300)
    direction, rbar = dst.mean_direction(vectors)
    reference = sps.directional_stats(vectors)
    assert rbar == pytest.approx(reference.mean_resultant_length)
    assert np.allclose(direction, reference.mean_direction)


def test_azimuth_elevation_convention_y_down():
    # Golgi − nucleus in (z, y, x) voxels: +x, up on screen (row decreases), down (row increases), deeper.
    pairs = _pairs([[0, 0, 2], [0, -2, 0], [0, 3, 0], [4, 0, 0], [1, -1, 1]], voxel_size=(2.0, 1.0, 1.0))
    table = vector_table([ImageVectors("a", pairs, Path("a.vectors.csv"), group="g", unit="a")])
    assert np.allclose(table.azimuth_deg[:3], [0.0, 90.0, 270.0])
    assert np.isnan(table.azimuth_deg[3])  # along z: no in-plane direction
    assert np.allclose(table.elevation_deg[[0, 1, 2, 3]], [0, 0, 0, 90])
    assert table.azimuth_deg[4] == pytest.approx(45.0)
    assert table.elevation_deg[4] == pytest.approx(math.degrees(math.atan2(2.0, math.sqrt(2))))  # z in µm
    assert np.allclose(table.length_um[:4], [2, 2, 3, 8])
    assert np.allclose(table.length_xy_um[:4], [2, 2, 3, 0])
    # direction frame (x, y_up, z): azimuth = atan2(y_up, x), elevation = asin(z)
    assert np.allclose(table.direction[:4], [[1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    finite = np.isfinite(table.azimuth_deg)
    d = table.direction[finite]
    assert np.allclose(np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360, table.azimuth_deg[finite])
    assert np.allclose(np.degrees(np.arcsin(table.direction[:, 2])), table.elevation_deg)


# ------------------------------------------------------------------------------------------
# The tests' null distributions
# ------------------------------------------------------------------------------------------
def test_rayleigh_on_uniform_and_concentrated_samples():
    rng = np.random.default_rng(1)  # any seed: test_tests_hold_their_level_under_uniformity checks the rate
    uniform = _uniform_sphere(rng, 200)
    assert dst.rayleigh_3d(200, dst.mean_direction(uniform)[1])[1] > 0.01
    azimuth = np.arctan2(uniform[:, 1], uniform[:, 0])
    assert dst.rayleigh_2d(200, dst.circular_summary(azimuth)[2])[1] > 0.01
    concentrated = _vmf(rng, np.array([1.0, 0.5, 0.2]), 4.0, 200)
    assert dst.rayleigh_3d(200, dst.mean_direction(concentrated)[1])[1] < 1e-6
    azimuth = np.arctan2(concentrated[:, 1], concentrated[:, 0])
    assert dst.rayleigh_2d(200, dst.circular_summary(azimuth)[2])[1] < 1e-6


def test_tests_hold_their_level_under_uniformity():
    # Over many uniform samples each test rejects at 5% about 5% of the time (a wrong null, e.g. 2nR̄²
    # for the sphere or a two-sided V-test, lands far outside 1%–11%).
    rng = np.random.default_rng(11)
    n, trials = 40, 600
    rejections = np.zeros(4)
    for _ in range(trials):
        x = _uniform_sphere(rng, n)
        _, rbar = dst.mean_direction(x)
        a = rng.uniform(0, 2 * np.pi, n)
        p = [dst.rayleigh_3d(n, rbar)[1], dst.rayleigh_2d(n, dst.circular_summary(a)[2])[1],
             dst.v_test_3d(x[:, 0])[1], dst.v_test_2d(a, 0.0)[2]]
        rejections += np.asarray(p) < 0.05
    rates = rejections / trials
    assert np.all(rates > 0.01) and np.all(rates < 0.11), rates


def test_v_test_3d_towards_and_away_from_reference():
    rng = np.random.default_rng(5)
    towards = _vmf(rng, np.array([0.0, 0.0, 1.0]), 3.0, 60)
    stat, p = dst.v_test_3d(towards @ np.array([0.0, 0.0, 1.0]))
    assert stat > 0 and p < 1e-6
    stat, p = dst.v_test_3d(-(towards @ np.array([0.0, 0.0, 1.0])))
    assert p > 0.99


def test_watson_williams_by_hand():
    rng = np.random.default_rng(2)
    a = rng.vonmises(0.0, 4.0, 50)
    f, p = dst.watson_williams([a, a.copy()])
    assert f == pytest.approx(0.0, abs=1e-9) and p == pytest.approx(1.0)
    f, p = dst.watson_williams([a, a + 1.0])
    assert p < 1e-6
    # F from its formula with the numbers worked out here: k = 2, N = 100
    b = a + 0.3
    r1 = abs(np.exp(1j * a).sum())
    r = abs(np.exp(1j * np.r_[a, b]).sum())
    kappa = dst.kappa_estimate(2 * r1 / 100)
    expected = (1 + 3 / (8 * kappa)) * 98 * (2 * r1 - r) / (100 - 2 * r1)
    assert dst.watson_williams([a, b])[0] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------
# Between groups: images as the unit
# ------------------------------------------------------------------------------------------
def _experiment(rng, group_means, images=8, cells=60, kappa=30.0):
    out = []
    for group, mean in group_means.items():
        for i in range(images):
            mu = _uniform_sphere(rng, 1)[0] if mean is None else mean + 0.15 * rng.normal(size=3)
            out.append(_image(f"{group}{i}", _vmf(rng, mu, kappa, cells), group=group))
    return out


def _by_name(tests: list[GroupTest], start: str) -> GroupTest:
    return next(t for t in tests if t.name.startswith(start))


def test_image_level_test_not_fooled_by_image_effects():
    # Two groups from ONE distribution: every image has its own random mean direction, its cells tightly
    # around it. Cells pooled per group differ a lot, so the per-cell test is fooled; the image-level
    # permutation test is not.
    rng = np.random.default_rng(20)
    table = vector_table(_experiment(rng, {"control": None, "treated": None}))
    tests = compare_groups(table, n_perm=2000, seed=0)
    ww = _by_name(tests, "Watson-Williams")
    assert ww.p < 1e-6 and ww.unit == "cells" and ww.caveat == PER_CELL_CAVEAT
    assert ww.n_units == (480, 480)
    for start in ("permutation test of equal mean direction, 3D", "permutation test of equal mean direction, in-plane",
                  "permutation test of equal concentration, 3D"):
        test = _by_name(tests, start)
        assert test.p > 0.05, (start, test.p)
        assert test.n_units == (8, 8) and test.unit == "images"
    assert {t.groups for t in tests} == {("control", "treated")}


def test_image_level_test_separates_real_differences():
    rng = np.random.default_rng(21)
    table = vector_table(_experiment(rng, {"a": np.array([1.0, 0, 0]), "b": np.array([-1.0, 0, 0])}, kappa=3.0))
    tests = compare_groups(table, n_perm=2000, seed=0)
    assert _by_name(tests, "permutation test of equal mean direction, 3D").p < 0.01
    assert _by_name(tests, "permutation test of equal mean direction, in-plane").p < 0.01
    # polarised against not polarised: equal concentration is rejected
    table = vector_table(_experiment(rng, {"pol": np.array([0, 1.0, 0])}, kappa=4.0)
                         + _experiment(rng, {"none": np.array([0, 1.0, 0])}, kappa=1e-6))
    conc = _by_name(compare_groups(table, n_perm=2000), "permutation test of equal concentration, 3D")
    assert conc.p < 0.01 and conc.statistic > 0


def test_few_images_enumerate_splits_and_say_so():
    rng = np.random.default_rng(1)
    table = vector_table(_experiment(rng, {"a": np.array([1.0, 0, 0]), "b": np.array([-1.0, 0, 0])}, images=2))
    test = _by_name(compare_groups(table), "permutation test of equal mean direction, 3D")
    assert test.p == pytest.approx(2 / 6)  # C(4, 2) = 6 splits; the observed one and its mirror are extreme
    assert "6 distinct ways" in test.caveat
    assert compare_groups(vector_table(_experiment(rng, {"only": None}, images=2))) == []


def test_planar_data_has_no_3d_tests():
    rng = np.random.default_rng(4)
    angles = rng.vonmises(0.5, 2.0, 50)
    flat = np.column_stack([np.cos(angles), np.sin(angles), np.zeros(50)])
    table = vector_table([_image("a", flat, group="g"), _image("b", flat[::-1], group="h")])
    [s] = summarize(table, by="image", n_boot=50)[:1]
    assert np.isnan(s.rayleigh_3d_p) and np.isfinite(s.rayleigh_p)
    assert not any("3D" in t.name for t in compare_groups(table, n_perm=100))


# ------------------------------------------------------------------------------------------
# Summaries and bootstrap
# ------------------------------------------------------------------------------------------
def test_summary_values_and_bootstrap_over_units():
    rng = np.random.default_rng(8)
    images = _experiment(rng, {"g": np.array([1.0, 1.0, 0.0])}, images=6, cells=40, kappa=5.0)
    table = vector_table(images, Reference("axis", (1.0, -1.0, 0.0)))  # up-right on screen: y_up = +1
    group = summarize(table, by="group", n_boot=500, seed=1)
    assert len(group) == 1
    s = group[0]
    assert (s.level, s.name, s.n, s.n_units, s.ci_unit) == ("group", "g", 240, 6, "images")
    direction, rbar = dst.mean_direction(table.direction)
    assert s.mean_resultant_length == pytest.approx(rbar)
    assert s.spherical_variance == pytest.approx(1 - rbar)
    assert np.allclose(s.mean_direction, direction)
    assert s.circular_mean_deg == pytest.approx(45.0, abs=10)
    assert s.circular_mean_deg == pytest.approx(np.degrees(sps.circmean(np.radians(table.azimuth_deg))))
    assert s.polarity_index == pytest.approx(abs(np.exp(1j * np.radians(table.azimuth_deg)).mean()))
    assert s.v_test_p < 1e-6 and s.v_test_3d_p < 1e-6 and abs(s.mean_angle_to_reference_xy_deg) < 10
    assert s.rayleigh_units_p < 0.05 and s.rayleigh_3d_units_p < 0.05
    lo, hi = s.ci["mean_resultant_length"]
    assert lo < s.mean_resultant_length < hi
    lo, hi = s.ci["circular_mean_deg"]
    assert lo < s.circular_mean_deg < hi  # no wrap near 45°
    again = summarize(table, by="group", n_boot=500, seed=1)[0]
    assert again.ci == s.ci
    assert summarize(table, by="group", n_boot=500, seed=2)[0].ci != s.ci
    images_level = summarize(table, by="image", n_boot=100)
    assert [x.name for x in images_level] == [f"g{i}" for i in range(6)]
    assert all(x.ci_unit == "cells" and x.n_units == 1 and x.group == "g" for x in images_level)
    row = s.row()
    assert list(row) == list(Summary.COLUMNS)
    assert row["rayleigh_p"] == s.rayleigh_p and row["mean_resultant_length_ci_low"] == s.ci["mean_resultant_length"][0]


def test_bootstrap_resamples_units_not_cells():
    # Images with random directions: resampling images gives a wide interval for R̄; resampling cells as if
    # independent would give a narrow one around the pooled value.
    rng = np.random.default_rng(9)
    sums = np.zeros((10, 2))
    sums[:, 0] = 1.0
    boot = dst.bootstrap_sums(sums, 300, rng)
    assert np.allclose(boot[:, 0], 10)  # every resample draws 10 units
    table = vector_table(_experiment(rng, {"g": None}, images=10, cells=100))
    s = summarize(table, by="group", n_boot=400)[0]
    lo, hi = s.ci["mean_resultant_length"]
    assert hi - lo > 0.1


def test_summary_row_of_empty_reference_is_nan():
    table = vector_table([_image("a", np.eye(3))])
    s = summarize(table, n_boot=20)[0]
    assert np.isnan(s.v_test_p) and np.isnan(s.v_test_3d_p) and np.isnan(table.reference_angle_deg).all()


# ------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------
def test_reference_point_gives_radial_directions():
    point = (10.0, 20.0, 3.0)  # x, y, z voxels
    voxel = (2.0, 0.5, 0.5)  # z, y, x µm
    nuclei = np.array([[3.0, 20.0, 30.0], [3.0, 40.0, 10.0], [5.0, 20.0, 10.0]])  # z, y, x voxels
    outward = np.array([[0, 0, 4.0], [0, 4.0, 0], [1.0, 0, 0]])  # away from the point
    pairs = _pairs(np.r_[outward, -outward], np.r_[nuclei, nuclei], voxel_size=voxel)
    table = vector_table([ImageVectors("a", pairs, Path("a.vectors.csv"))], {"a": Reference("point", point)})
    assert np.allclose(table.reference_angle_deg, [0, 0, 0, 180, 180, 180])
    assert np.allclose(table.reference[:3], [[1, 0, 0], [0, -1, 0], [0, 0, 1]])  # frame (x, y_up, z)
    assert np.allclose(table.reference_angle_xy_deg[:2], [0, 0])
    assert np.isnan(table.reference_angle_xy_deg[2])  # the reference is along z there
    axes = Reference("axis", (0.0, 2.0, 0.0)).axis_for(np.zeros((2, 3)))
    assert np.allclose(axes, [[0, -1, 0], [0, -1, 0]])  # down the rows = −y_up
    with pytest.raises(CellPolError):
        Reference("line", (0, 0, 1))
    with pytest.raises(CellPolError):
        Reference("axis", (0, 0, 0))


def test_reference_angle_xy_is_signed_counter_clockwise():
    table = vector_table([_image("a", [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])], Reference("axis", (1.0, 0.0, 0.0)))
    assert np.allclose(table.reference_angle_xy_deg, [90.0, -90.0])


# ------------------------------------------------------------------------------------------
# Reading inputs
# ------------------------------------------------------------------------------------------
def _write(folder: Path, name: str, pairs: PairSet) -> Path:
    return write_pairs(folder / name, pairs)


def test_load_vectors_folder_sidecar_and_min_score(tmp_path):
    _write(tmp_path, "one.vectors.csv", _pairs([[0, 0, 1], [0, 1, 0]], voxel_size=(2.0, 0.5, 0.5)))
    scores = np.array([0.9, 0.2, np.nan, 0.1])
    sources = np.array(["predicted", "predicted", "manual", "corrected"], dtype=object)
    _write(tmp_path, "two.pred.vectors.csv",
           _pairs(np.ones((4, 3)), voxel_size=None, scores=scores, sources=sources))
    (tmp_path / "three.vectors.autosave.csv").write_text((tmp_path / "one.vectors.csv").read_text())
    images = load_vectors([tmp_path], voxel_size=(1.0, 1.0, 1.0), min_score=0.5)
    assert [(i.image, i.kind) for i in images] == [("one", "annotation"), ("two", "prediction")]
    assert images[0].pairs.voxel_size == (2.0, 0.5, 0.5)  # the sidecar's wins
    assert images[1].pairs.voxel_size == (1.0, 1.0, 1.0)
    # 0.2 (predicted) dropped; the manual pair (no score) and the corrected one (0.1, checked by a person) kept
    assert np.allclose(images[1].pairs.scores, [0.9, np.nan, 0.1], equal_nan=True)
    assert len(load_vectors([tmp_path], voxel_size=(1, 1, 1))[1].pairs) == 4


def test_project_folder_and_explicit_files(tmp_path):
    for sub in ("images", "annotations", "results"):
        (tmp_path / sub).mkdir()
    _write(tmp_path / "annotations", "a.vectors.csv", _pairs([[0, 0, 1]]))
    _write(tmp_path / "results", "b.pred.vectors.csv", _pairs([[0, 1, 0]], sources="predicted"))
    assert [i.image for i in load_vectors([tmp_path])] == ["a", "b"]
    assert [i.image for i in load_vectors([tmp_path / "results" / "b.pred.vectors.csv"])] == ["b"]


@pytest.mark.parametrize("case", ["empty-folder", "no-pairs", "nan-row", "missing-voxel", "two-files",
                                  "autosave", "missing-path"])
def test_bad_inputs_raise_one_clear_error(tmp_path, case):
    target = [tmp_path]
    if case == "no-pairs":
        _write(tmp_path, "a.vectors.csv", PairSet.empty(voxel_size=VOXEL))
    elif case == "nan-row":
        (tmp_path / "a.vectors.csv").write_text(
            "nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z\n1,2,3,4,5,6\n1,nan,3,4,5,6\n")
    elif case == "missing-voxel":
        _write(tmp_path, "a.vectors.csv", _pairs([[0, 0, 1]], voxel_size=None))
        _write(tmp_path, "b.vectors.csv", _pairs([[0, 0, 1]], voxel_size=None))
    elif case == "two-files":
        _write(tmp_path, "a.vectors.csv", _pairs([[0, 0, 1]]))
        _write(tmp_path, "a.pred.vectors.csv", _pairs([[0, 0, 1]], sources="predicted"))
    elif case == "autosave":
        target = [_write(tmp_path, "a.vectors.autosave.csv", _pairs([[0, 0, 1]]))]
    elif case == "missing-path":
        target = [tmp_path / "nowhere.vectors.csv"]
    with pytest.raises(CellPolError) as info:
        load_vectors(target)
    message = str(info.value)
    expected = {
        "empty-folder": "No vectors files", "no-pairs": "No vectors to analyse", "nan-row": "line 3",
        "missing-voxel": "b.vectors.csv", "two-files": "a.pred.vectors.csv", "autosave": "autosave",
        "missing-path": "nowhere",
    }[case]
    assert expected in message
    if case == "missing-voxel":
        assert "a.vectors.csv" in message and info.value.settings == {"voxel_size": None}
    if case == "nan-row":
        assert "a.vectors.csv" in message


def test_groups_and_animals(tmp_path):
    images = [_image(n, np.eye(3)) for n in ("a", "b", "c")]
    path = tmp_path / "groups.csv"
    path.write_text("image,group,animal\na.tif,ctrl,m1\nb.vectors.csv,ctrl,m1\nc,treated,\n")
    groups = read_groups(path)
    assert groups == {"a": ("ctrl", "m1"), "b": ("ctrl", "m1"), "c": ("treated", "c")}
    assigned = assign_groups(images, groups)
    assert [(i.group, i.unit) for i in assigned] == [("ctrl", "m1"), ("ctrl", "m1"), ("treated", "c")]
    assert images[0].group == "all"  # inputs untouched
    assert [i.group for i in assign_groups(images, None)] == ["all"] * 3
    s = summarize(vector_table(assigned), by="group", n_boot=10)
    assert [(x.name, x.n_units, x.ci_unit) for x in s] == [("ctrl", 1, "cells"), ("treated", 1, "cells")]
    with pytest.raises(CellPolError, match="not among the vectors read: x"):
        assign_groups(images, {**groups, "x": ("ctrl", "x")})
    with pytest.raises(CellPolError, match="have no group: c"):
        assign_groups(images, {"a": ("ctrl", "a"), "b": ("ctrl", "b")})
    path.write_text("image,group\na,ctrl\na,treated\n")
    with pytest.raises(CellPolError, match="line 3"):
        read_groups(path)


def test_animals_are_the_unit(tmp_path):
    rng = np.random.default_rng(3)
    images = _experiment(rng, {"a": None, "b": None}, images=4, cells=20)
    animals = {i.image: (i.group, f"{i.group}-m{int(i.image[1:]) // 2}") for i in images}
    table = vector_table(assign_groups(images, animals))
    s = summarize(table, by="group", n_boot=20)
    assert [(x.n_units, x.ci_unit) for x in s] == [(2, "animals"), (2, "animals")]
    test = _by_name(compare_groups(table, n_perm=100), "permutation test of equal mean direction, 3D")
    assert test.n_units == (2, 2) and test.unit == "animals"


def test_read_references(tmp_path):
    path = tmp_path / "refs.csv"
    path.write_text("image,kind,x,y,z\na.tif,axis,1,0,0\nb,point,10,20,3\n")
    refs = read_references(path)
    assert refs == {"a": Reference("axis", (1.0, 0.0, 0.0)), "b": Reference("point", (10.0, 20.0, 3.0))}
    for bad in ("a,plane,1,0,0\n", "a,axis,1,x,0\n", "a,axis,0,0,0\n", "a,axis,1,0,0\na,axis,0,1,0\n"):
        path.write_text(bad)
        with pytest.raises(CellPolError):
            read_references(path)


def test_vector_table_rows_and_subset():
    table = vector_table([_image("a", np.eye(3), group="g"), _image("b", -np.eye(3), group="h")])
    assert isinstance(table, VectorTable) and len(table) == 6
    rows = table.rows()
    assert list(rows[0]) == list(VectorTable.COLUMNS)
    assert rows[0]["image"] == "a" and rows[0]["length_um"] == pytest.approx(5.0) and math.isnan(rows[0]["score"])
    sub = table.subset(table.group == "h")
    assert len(sub) == 3 and set(sub.image) == {"b"} and sub.direction.shape == (3, 3)
    assert len(vector_table([])) == 0


def test_in_plane_statistics_agree_with_pingouin():
    """pingouin 0.7.0 (circ_mean, circ_r, circ_rayleigh, circ_vtest) on these angles gave the numbers below
    (computed once in a separate environment: pingouin is too heavy a dependency to install for the tests):

        angles = np.radians([10, 20, 30, 35, 40, 45, 50, 60, 70, 80, 100, 150, 200, 300])
        pg.circ_mean(angles)          -> 0.9102648080146465
        pg.circ_r(angles)             -> 0.6125980155745719
        pg.circ_rayleigh(angles)      -> (5.253868601602648, 0.0036369829660683494)
        pg.circ_vtest(angles, dir=0.7) -> (8.38748343970664, 0.0007617468890983581)
    """
    from app.core.stats.directional import circular_summary, rayleigh_2d, v_test_2d

    angles = np.radians([10, 20, 30, 35, 40, 45, 50, 60, 70, 80, 100, 150, 200, 300])
    mean, _std, rbar = circular_summary(angles)
    assert mean == pytest.approx(0.9102648080146465, rel=1e-9)
    assert rbar == pytest.approx(0.6125980155745719, rel=1e-9)
    z, p = rayleigh_2d(len(angles), rbar)
    assert (z, p) == pytest.approx((5.253868601602648, 0.0036369829660683494), rel=1e-9)
    v, _u, p_v = v_test_2d(angles, 0.7)
    assert (v, p_v) == pytest.approx((8.38748343970664, 0.0007617468890983581), rel=1e-9)
