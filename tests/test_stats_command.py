"""`cellpol stats` end to end on tiny hand-made vectors (no images), its files, figures and report; the projection of
the equal-area plot; and `cellpol synth --polarity-direction`."""

from __future__ import annotations

import csv
import hashlib
import json
import re

import numpy as np
import pytest

from app.cli import main
from app.core.pairs import PairSet, read_pairs, write_pairs

VOXEL = (1.0, 0.5, 0.5)  # (z, y, x) µm
GROUPS = {"polarised": 4, "uniform": 4}
CELLS = 30


def _vectors(rng: np.random.Generator, polarised: bool) -> PairSet:
    """30 cells: in-plane angles von Mises around +x (κ 4) or uniform; lengths 4–8 µm; a little z."""
    nuclei = np.column_stack([rng.uniform(5, 15, CELLS), rng.uniform(20, 200, CELLS), rng.uniform(20, 200, CELLS)])
    theta = rng.vonmises(0.0, 4.0, CELLS) if polarised else rng.uniform(-np.pi, np.pi, CELLS)
    length = rng.uniform(4.0, 8.0, CELLS)
    dz_um = rng.normal(0.0, 1.0, CELLS)
    # Image x = column; the azimuth is counter-clockwise as displayed, so +angle moves up the rows (−row).
    step_um = np.column_stack([dz_um, -length * np.sin(theta), length * np.cos(theta)])
    golgi = nuclei + step_um / np.asarray(VOXEL)
    scores = rng.uniform(0.5, 1.0, CELLS)
    return PairSet(nuclei, golgi, voxel_size=VOXEL, scores=scores, sources="predicted")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Vectors of two conditions (4 images each, one folder), a groups file, and `cellpol stats` run on them."""
    root = tmp_path_factory.mktemp("stats")
    vectors = root / "vectors"
    vectors.mkdir()
    rng = np.random.default_rng(7)
    rows = ["image,group"]
    for group, n in GROUPS.items():
        for k in range(n):
            name = f"{group}_{k}"
            write_pairs(vectors / f"{name}.pred.vectors.csv", _vectors(rng, group == "polarised"),
                        provenance={"method": "cellpol", "models": [{"name": "toy", "weights_sha256": "ab" * 32}],
                                    "decoding": {"peak_threshold_nucleus": 0.31, "peak_threshold_golgi": 0.27}},
                        content="prediction")
            rows.append(f"{name}.tif,{group}")
    groups = root / "groups.csv"
    groups.write_text("\n".join(rows) + "\n")
    out = root / "out"
    import matplotlib._pylab_helpers as helpers

    figures_before = helpers.Gcf.get_num_fig_managers()
    code = main([
        "stats", str(vectors), "--out", str(out), "--groups", str(groups), "--reference-axis", "1", "0", "0",
        "--bootstrap", "200", "--permutations", "999", "--seed", "3",
    ])
    return {"root": root, "vectors": vectors, "groups": groups, "out": out, "code": code,
            "pyplot_figures_left": helpers.Gcf.get_num_fig_managers() - figures_before}


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_stats_writes_every_file(experiment):
    assert experiment["code"] == 0
    out = experiment["out"]
    names = ["vectors.csv", "summary.csv", "tests.csv", "vectors.json", "summary.json", "tests.json", "report.pdf"]
    names += [f"{figure}.{kind}" for figure in ("rose", "elevation", "equal_area", "lengths") for kind in ("png", "svg")]
    for name in names:
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 100, name
    assert (out / "rose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "equal_area.svg").read_bytes()[:2000]
    assert experiment["pyplot_figures_left"] == 0  # drawn without pyplot's global figures


def test_vectors_csv_has_one_row_per_vector(experiment):
    rows = _read_csv(experiment["out"] / "vectors.csv")
    assert len(rows) == CELLS * sum(GROUPS.values())
    for column in ("image", "group", "length_um", "azimuth_deg", "elevation_deg", "angle_to_reference_deg", "score"):
        assert column in rows[0], column
    polarised = [r for r in rows if r["group"] == "polarised"]
    assert {r["image"] for r in polarised} == {f"polarised_{k}" for k in range(4)}
    lengths = np.array([float(r["length_um"]) for r in rows])
    assert 3.9 < lengths.min() and lengths.max() < 8.6  # 4–8 µm in the plane plus a little z
    # The reference is +x, so the polarised cells' angle to it is small on average, the uniform ones' about 90°.
    angle = {g: np.mean([float(r["angle_to_reference_deg"]) for r in rows if r["group"] == g]) for g in GROUPS}
    assert angle["polarised"] < 45 < angle["uniform"]


def test_summary_rows_per_image_and_group(experiment):
    rows = _read_csv(experiment["out"] / "summary.csv")
    assert sum(r["level"] == "image" for r in rows) == sum(GROUPS.values())
    groups = {r["name"]: r for r in rows if r["level"] == "group"}
    assert set(groups) == set(GROUPS)
    assert float(groups["polarised"]["rayleigh_p"]) < 1e-6
    assert float(groups["uniform"]["rayleigh_p"]) > 0.01
    assert float(groups["polarised"]["polarity_index"]) > 0.6 > float(groups["uniform"]["polarity_index"])
    assert int(groups["polarised"]["n"]) == 4 * CELLS and int(groups["polarised"]["n_units"]) == 4


def test_tests_csv_separates_the_groups_with_images_as_units(experiment):
    rows = _read_csv(experiment["out"] / "tests.csv")
    image_level = [r for r in rows if r["unit"] == "images"]
    per_cell = [r for r in rows if r["unit"] == "cells"]
    assert image_level and per_cell
    assert {(r["group_1"], r["group_2"]) for r in rows} == {("polarised", "uniform")}
    assert min(float(r["p"]) for r in image_level) < 0.05
    assert all(int(r["n_1"]) == 4 and int(r["n_2"]) == 4 for r in image_level)
    assert all(r["caveat"].strip() for r in per_cell)
    assert "independent" in per_cell[0]["caveat"]


def test_sidecars_carry_the_provenance(experiment):
    out, vectors = experiment["out"], experiment["vectors"]
    for name in ("vectors", "summary", "tests"):
        side = json.loads((out / f"{name}.json").read_text())
        assert side["csv_sha256"] == hashlib.sha256((out / f"{name}.csv").read_bytes()).hexdigest()
        by_image = {item["image"]: item for item in side["inputs"]}
        assert len(by_image) == 8
        item = by_image["uniform_2"]
        assert item["sha256"] == hashlib.sha256((vectors / "uniform_2.pred.vectors.csv").read_bytes()).hexdigest()
        assert item["voxel_size_zyx_um"] == list(VOXEL) and item["voxel_size_from"] == "sidecar"
        assert item["decoding"]["peak_threshold_golgi"] == 0.27
        assert side["models"] == [{"name": "toy", "weights_sha256": "ab" * 32}]
        assert side["groups_file"]["sha256"] == hashlib.sha256(experiment["groups"].read_bytes()).hexdigest()
        assert side["reference"]["kind"] == "axis" and side["reference"]["xyz"] == [1.0, 0.0, 0.0]
        assert "counter-clockwise" in side["azimuth_convention"]
        assert (side["n_boot"], side["n_perm"], side["seed"]) == (200, 999, 3)


def test_report_pdf_has_a_page_per_group(experiment):
    data = (experiment["out"] / "report.pdf").read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
    assert pages == 1 + len(GROUPS)


def test_stats_prints_the_summary(experiment, tmp_path, capsys):
    code = main(["stats", str(experiment["vectors"]), "--out", str(tmp_path / "again"), "--groups",
                 str(experiment["groups"]), "--bootstrap", "20", "--permutations", "99"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "polarised" in printed and "uniform" in printed and "Rayleigh p" in printed
    assert "Caveat" in printed and "Wrote to" in printed


def test_stats_missing_voxel_size_is_one_message(tmp_path, capsys):
    pairs = PairSet([[2, 10, 10]], [[2, 14, 13]])  # no voxel size: none in the sidecar either
    write_pairs(tmp_path / "a.vectors.csv", pairs)
    assert read_pairs(tmp_path / "a.vectors.csv").voxel_size is None
    code = main(["stats", str(tmp_path / "a.vectors.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cellpol: error:") and "--voxel-size" in err[0]


def test_stats_groups_naming_unknown_images_is_one_message(experiment, tmp_path, capsys):
    groups = tmp_path / "groups.csv"
    groups.write_text(experiment["groups"].read_text() + "ghost_9.tif,uniform\n")
    code = main(["stats", str(experiment["vectors"]), "--out", str(tmp_path / "out"), "--groups", str(groups),
                 "--bootstrap", "10", "--permutations", "9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "ghost_9" in err[0]
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_stats_help_states_the_conventions(capsys):
    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "counter-clockwise" in text and "+x axis" in text
    assert "reference point in voxels" in text and "a direction x y z, not a position" in text


def test_equal_area_projection_keeps_areas():
    from app.core.stats.figures import equal_area_xy

    x, y, upper = equal_area_xy([0.0, 90.0, 180.0], [90.0, 0.0, -45.0])
    assert np.allclose(np.hypot(x, y), [0.0, 1.0, np.sin(np.radians(22.5)) / np.sin(np.radians(45))])
    assert np.allclose(np.degrees(np.arctan2(y[1], x[1])), 90.0)  # the angle in the disc is the azimuth
    assert upper.tolist() == [True, True, False]
    # Uniform on the sphere → uniform in each disc: the share inside radius r is r².
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x, y, upper = equal_area_xy(np.degrees(np.arctan2(v[:, 1], v[:, 0])), np.degrees(np.arcsin(v[:, 2])))
    radius = np.hypot(x, y)
    for r in (0.3, 0.5, 0.8):
        assert abs(np.mean(radius[upper] < r) - r * r) < 0.015
        assert abs(np.mean(radius[~upper] < r) - r * r) < 0.015


def test_synth_polarity_direction_points_the_vectors(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path), "--n", "1", "--shape", "8", "192", "192", "--seed", "2",
                 "--polarity-direction", "0", "0", "1", "--polarity-concentration", "20"])
    assert code == 0
    pairs = read_pairs(tmp_path / "synth_0000.vectors.csv")
    assert len(pairs) >= 5
    in_plane = pairs.vectors_um[:, 1:]  # (y, x)
    unit = in_plane / np.linalg.norm(in_plane, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    assert mean[1] > 0.8 and abs(mean[0]) < 0.3  # along +x (image right), tight
    config = json.loads((tmp_path / "synth_0000.vectors.json").read_text())["config"]
    assert config["polarity_direction"] == [0.0, 0.0, 1.0] and config["polarity_concentration"] == 20.0


def test_synth_polarity_concentration_needs_a_direction(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path), "--n", "1", "--polarity-concentration", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--polarity-direction" in err[0]
    assert not list(tmp_path.iterdir())


def test_stats_on_a_project_uses_its_groups_and_prefers_annotations(tmp_path):
    """`cellpol stats PROJECT`: the groups typed in the app (the project file) are the groups, and an image's
    annotations (reviewed, corrected) count instead of its predictions."""
    import csv

    import numpy as np

    from app.cli import main
    from app.core.pairs import PairSet, write_pairs
    from app.core.project import Project

    rng = np.random.default_rng(5)
    project = Project.create(tmp_path / "study")
    for k in range(4):
        image = project.folder("images") / f"img{k}.npy"
        np.save(image, np.zeros((2, 4, 40, 40), np.uint8))
        nuclei = np.column_stack([np.full(12, 2.0), rng.uniform(5, 35, 12), rng.uniform(5, 35, 12)])
        step = [0, 0, 3] if k < 2 else [0, 3, 0]
        pairs = PairSet(nuclei, nuclei + step, voxel_size=(1, 0.5, 0.5))
        write_pairs(project.vectors_path(image), pairs)
        predicted = PairSet(nuclei[:5], nuclei[:5] + step, voxel_size=(1, 0.5, 0.5), scores=np.full(5, 0.9),
                            sources="predicted")
        write_pairs(project.predictions_path(image), predicted)
        project.set_group(image, "right" if k < 2 else "down")
    out = tmp_path / "out"
    assert main(["stats", str(project.root), "--out", str(out), "--bootstrap", "50", "--permutations", "50"]) == 0
    rows = list(csv.DictReader((out / "vectors.csv").open()))
    assert len(rows) == 4 * 12  # the annotations, not the 5 predictions each
    assert {r["group"] for r in rows} == {"right", "down"}
