"""The procedural simulator: determinism, geometry, ground truth, physics, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from app.core.errors import CancelledError, CellPolError
from app.core.jobs import CancelToken
from app.core.pairs import read_pairs, sidecar_path
from app.core.simulate import (
    MAX_PAIR_LENGTH_UM,
    PRESETS,
    SimConfig,
    item_seed,
    simulate,
    synthesize_dataset,
)

SHAPES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shapes_3dngmic"
SMALL = (24, 128, 128)


def _voxel_index(points: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.rint(points).astype(int).T)


def test_same_seed_same_volume_and_pairs_other_seed_differs():
    cfg = SimConfig(shape=SMALL, seed=11)
    volume_a, pairs_a = simulate(cfg)
    volume_b, pairs_b = simulate(cfg)
    np.testing.assert_array_equal(volume_a.data, volume_b.data)
    np.testing.assert_array_equal(pairs_a.nuclei, pairs_b.nuclei)
    np.testing.assert_array_equal(pairs_a.golgi, pairs_b.golgi)
    volume_c, pairs_c = simulate(cfg.replace(seed=12))
    assert not np.array_equal(volume_a.data, volume_c.data)
    assert len(pairs_c) != len(pairs_a) or not np.allclose(pairs_a.nuclei, pairs_c.nuclei)


def test_volume_layout_dtype_voxel_size_and_metadata():
    volume, pairs = simulate(SimConfig(shape=(16, 96, 112), voxel_size=(0.5, 0.3, 0.3), seed=1))
    assert volume.data.shape == (2, 16, 96, 112)
    assert volume.data.dtype == np.uint16
    assert volume.voxel_size == (0.5, 0.3, 0.3)
    assert volume.channel_names == ("nuclei", "golgi")
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 1)
    assert volume.metadata["config"]["preset"] == "confocal"
    assert volume.metadata["config"]["voxel_size"] == (0.5, 0.3, 0.3)
    assert pairs.voxel_size == (0.5, 0.3, 0.3)
    assert set(pairs.sources) == {"simulated"}
    assert pairs.meta["image_shape_zyx"] == [16, 96, 112]
    assert pairs.meta["config"]["seed"] == 1
    # The preset's voxel size is used when none is given; uint8 is the same image at 1/16 scale.
    default_volume, _ = simulate(SimConfig(shape=(8, 64, 64), preset="retina"))
    assert default_volume.voxel_size == PRESETS["retina"].voxel_size
    small16, _ = simulate(SimConfig(shape=(8, 64, 64), seed=4, noise=False))
    small8, _ = simulate(SimConfig(shape=(8, 64, 64), seed=4, noise=False, dtype="uint8"))
    assert small8.data.dtype == np.uint8
    assert np.abs(small16.data.astype(float) / 16 - small8.data).max() <= 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pairs_lie_in_the_volume_with_plausible_lengths(preset):
    volume, pairs = simulate(SimConfig(shape=SMALL, preset=preset, seed=3))
    assert len(pairs) >= 3
    upper = np.asarray(volume.spatial_shape) - 1
    for points in (pairs.nuclei, pairs.golgi):
        assert np.all(points >= 0) and np.all(points <= upper)
    lengths = pairs.lengths_um
    assert np.all(lengths > 0) and np.all(lengths <= MAX_PAIR_LENGTH_UM)
    # Nuclei keep their distance: no two centroids closer than ~5 µm (allow for clipping at borders).
    nuclei_um = pairs.nuclei_um
    gaps = np.linalg.norm(nuclei_um[:, None] - nuclei_um[None], axis=-1) + np.eye(len(pairs)) * 1e9
    assert gaps.min() > 4.0


@pytest.mark.parametrize("preset", ["confocal", "retina"])
def test_every_cell_is_paired_or_left_out_for_one_reason(preset):
    volume, pairs = simulate(SimConfig(shape=SMALL, preset=preset, seed=7))
    scene = volume.metadata["scene"]
    assert set(scene["dropped"]) == {"nucleus_outside", "golgi_missing", "golgi_outside", "too_long"}
    assert scene["dropped"]["nucleus_outside"] > 0  # cells in the margin around the field
    assert scene["n_pairs"] == len(pairs)
    assert scene["n_pairs"] + sum(scene["dropped"].values()) == scene["n_cells"]


def test_the_package_exports_what_its_callers_import():
    import app.core.simulate as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    # The names the app, the training code, the tests and the benchmarks import from app.core.simulate.
    used = {"PRESETS", "SAMPLE_SCALES", "SAMPLE_VARIATION", "LAYOUT_SCALES", "LAYOUT_VARIATION", "SimConfig",
            "simulate", "synthesize_dataset", "scene_layout_options", "varied_layout_options",
            "varied_sample_options", "available_memory_bytes", "item_seed", "MAX_PAIR_LENGTH_UM"}
    assert used <= set(package.__all__)
    assert callable(package.simulate)  # the function, not a submodule of that name


def test_ground_truth_sits_on_the_rendered_objects():
    volume, pairs = simulate(SimConfig(shape=(32, 160, 160), seed=3))
    voxel = np.asarray(volume.voxel_size)
    nuclei = ndi.gaussian_filter(volume.data[0].astype(np.float32), 0.6 / voxel)
    golgi = ndi.gaussian_filter(volume.data[1].astype(np.float32), 0.6 / voxel)
    background_n, top_n = np.median(nuclei), np.percentile(nuclei, 99.5)
    at_nuclei = nuclei[_voxel_index(pairs.nuclei)]
    # Even dim cells (20–40 % brightness) are far above the background at their centroid.
    assert np.all(at_nuclei - background_n > 0.3 * (top_n - background_n))
    at_golgi = golgi[_voxel_index(pairs.golgi)]
    assert np.all(at_golgi > np.percentile(golgi, 97))
    # The nucleus centroid is not on a Golgi: above background, the Golgi channel is far weaker there.
    background_g = np.median(golgi)
    at_nuclei_golgi = golgi[_voxel_index(pairs.nuclei)] - background_g
    assert np.median(at_nuclei_golgi) < 0.5 * np.median(at_golgi - background_g)


@pytest.mark.parametrize("shape", [(24, 224, 224), (1, 224, 224)])
@pytest.mark.parametrize("seed", [2])
def test_ground_truth_is_the_centroid_of_the_visible_object(shape, seed):
    # A sparse field keeps objects apart, so that simple image analysis can find each one alone.
    clean = SimConfig(
        shape=shape, seed=seed, n_cells=10, nucleus_overlap=-0.3, noise=False,
        vessels_per_10000um2=0.0, dirt_per_10000um2=0.0, fragments_per_cell=0.0, dim_fraction=0.0,
    )
    volume, pairs = simulate(clean)
    voxel = np.asarray(volume.voxel_size)
    # Smooth away the chromatin texture so that a threshold traces the nucleus outline.
    sigma = [0 if n == 1 else 1.0 / v for n, v in zip(shape, voxel)]
    nuclei = ndi.gaussian_filter(volume.data[0].astype(float), sigma)
    golgi = volume.data[1].astype(float)
    background_n, background_g = np.median(nuclei), np.median(golgi)
    grid = np.indices(golgi.shape, sparse=True)
    checked = 0
    for nucleus, golgi_point in zip(pairs.nuclei, pairs.golgi):
        # Nucleus: the half-maximum component around the click, unless it runs into the image border
        # (where it may merge with a neighbour whose centre is outside and so has no pair).
        at = tuple(np.rint(nucleus).astype(int))
        labels, _ = ndi.label(nuclei > background_n + 0.4 * (nuclei[at] - background_n))
        component = labels == labels[at]
        rows, cols = np.nonzero(component.any(axis=0))
        if rows.min() == 0 or cols.min() == 0 or rows.max() == shape[1] - 1 or cols.max() == shape[2] - 1:
            continue
        if sum(component[tuple(np.rint(other).astype(int))] for other in pairs.nuclei) > 1:
            continue  # touching nuclei merged at half maximum
        checked += 1
        centroid = np.array(ndi.center_of_mass(component))
        assert np.linalg.norm((centroid - nucleus) * voxel) < 0.5
        # Golgi: intensity-weighted centroid of the bright part within 4 µm (if no other Golgi is near).
        if np.sort(np.linalg.norm((pairs.golgi - golgi_point) * voxel, axis=1))[1] < 8.0:
            continue
        distance = np.sqrt(sum(((axis - c) * v) ** 2 for axis, c, v in zip(grid, golgi_point, voxel)))
        weight = np.where(distance < 4.0, golgi - background_g, 0.0)
        weight = np.where(weight > 0.3 * weight.max(), weight, 0.0)
        centroid = np.array([(weight * axis).sum() / weight.sum() for axis in np.broadcast_arrays(*grid)])
        assert np.linalg.norm((centroid - golgi_point) * voxel) < 1.0
    assert checked >= 4


def test_same_scene_at_two_voxel_sizes_gives_the_same_pairs_in_um():
    # Same field of view (16 × 51.2 × 51.2 µm) sampled at two voxel sizes.
    coarse_volume, coarse = simulate(SimConfig(shape=(32, 128, 128), voxel_size=(0.5, 0.4, 0.4), seed=21))
    fine_volume, fine = simulate(SimConfig(shape=(64, 256, 256), voxel_size=(0.25, 0.2, 0.2), seed=21))
    assert len(coarse) >= 4
    assert abs(len(coarse) - len(fine)) <= 1

    def centres_um(pairs, which):
        return (getattr(pairs, which) + 0.5) * np.asarray(pairs.voxel_size)

    matched = 0
    length_differences = []
    fine_nuclei = centres_um(fine, "nuclei")
    for i, centre in enumerate(centres_um(coarse, "nuclei")):
        distance = np.linalg.norm(fine_nuclei - centre, axis=1)
        j = int(np.argmin(distance))
        if distance[j] < 0.5:
            matched += 1
            length_differences.append(abs(coarse.lengths_um[i] - fine.lengths_um[j]))
    assert matched >= len(coarse) - 1
    assert np.median(length_differences) < 0.15
    assert np.max(length_differences) < 0.6


def test_2d_images():
    volume, pairs = simulate(SimConfig(shape=(1, 192, 192), preset="widefield", seed=2))
    assert volume.data.shape == (2, 1, 192, 192)
    assert volume.is_2d
    assert len(pairs) >= 5
    assert np.all(pairs.nuclei[:, 0] == 0) and np.all(pairs.golgi[:, 0] == 0)
    assert np.all(pairs.lengths_um > 0)
    nuclei = volume.data[0, 0].astype(float)
    assert np.all(nuclei[_voxel_index(pairs.nuclei[:, 1:])] > np.percentile(nuclei, 60))


def _mean_direction(pairs) -> np.ndarray:
    vectors = pairs.vectors_um
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).mean(axis=0)


def test_preferred_polarity_direction_shows_in_the_mean_vector():
    base = SimConfig(shape=(1, 320, 320), seed=8, vessels_per_10000um2=0.0)
    _, oriented = simulate(base.replace(polarity_direction=(0.0, 1.0, 0.0), polarity_concentration=6.0))
    _, free = simulate(base)
    assert len(oriented) >= 20 and len(free) >= 20
    mean_oriented = _mean_direction(oriented)
    assert mean_oriented[1] > 0.6 and abs(mean_oriented[2]) < 0.25
    assert np.linalg.norm(_mean_direction(free)) < 0.35
    # A 3D direction pointing along -x shows up in 3D as well.
    _, oriented_3d = simulate(SimConfig(shape=(24, 192, 192), seed=8, polarity_direction=(0, 0, -2),
                                        polarity_concentration=6.0))
    assert _mean_direction(oriented_3d)[2] < -0.6


@pytest.mark.skipif(not SHAPES_DIR.is_dir(), reason="3DNGMic shapes not available")
def test_real_object_shapes():
    cfg = SimConfig(shape=(24, 160, 160), preset="retina", seed=5, shapes_dir=str(SHAPES_DIR))
    volume, pairs = simulate(cfg)
    assert len(pairs) >= 5
    assert volume.metadata["config"]["shapes_dir"] == str(SHAPES_DIR)
    voxel = np.asarray(volume.voxel_size)
    golgi = ndi.gaussian_filter(volume.data[1].astype(np.float32), 0.6 / voxel)
    nuclei = ndi.gaussian_filter(volume.data[0].astype(np.float32), 0.6 / voxel)
    assert np.mean(golgi[_voxel_index(pairs.golgi)] > np.percentile(golgi, 95)) >= 0.9
    assert np.all(nuclei[_voxel_index(pairs.nuclei)] > np.percentile(nuclei, 70))
    assert np.all((pairs.lengths_um > 0) & (pairs.lengths_um <= MAX_PAIR_LENGTH_UM))
    # Real shapes work in 2D too.
    volume_2d, pairs_2d = simulate(cfg.replace(shape=(1, 160, 160)))
    assert volume_2d.is_2d and len(pairs_2d) >= 5


def test_missing_shapes_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CellPolError, match="shapes"):
        simulate(SimConfig(shape=(8, 64, 64), shapes_dir=str(tmp_path)))


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(CellPolError, match="preset"):
        simulate(SimConfig(preset="two-photon"))
    with pytest.raises(CellPolError, match="Unknown simulation option"):
        SimConfig().replace(brightness=3)
    with pytest.raises(CellPolError, match="polarity_direction"):
        simulate(SimConfig(shape=(8, 64, 64), polarity_direction=(0, 0, 0)))
    with pytest.raises(CellPolError, match="Shape"):
        simulate(SimConfig(shape=(8, 0, 64)))


def test_presets_are_physically_sensible():
    for name, preset in PRESETS.items():
        sz, sy, sx = preset.psf_sigma_um
        assert 2.0 <= sz / sy <= 4.0, name
        assert preset.description
    assert PRESETS["widefield"].haze > PRESETS["confocal"].haze
    assert PRESETS["widefield"].psf_sigma_um[1] > PRESETS["confocal"].psf_sigma_um[1]
    assert PRESETS["confocal-low-snr"].photons_nucleus < PRESETS["confocal"].photons_nucleus / 3
    assert PRESETS["retina"].density_per_100um2 > PRESETS["confocal"].density_per_100um2


def test_synthesize_dataset_writes_readable_reproducible_items(tmp_path):
    import tifffile

    calls = []
    shape = (8, 64, 80)
    paths = synthesize_dataset(tmp_path / "out", 2, shape=shape, seed=7, progress=lambda d, t, m: calls.append((d, t)))
    assert [p.name for p in paths] == ["synth_0000.tif", "synth_0001.tif"]
    assert calls == [(1, 2), (2, 2)]
    for k, tif in enumerate(paths):
        with tifffile.TiffFile(tif) as handle:
            assert handle.is_imagej
            data = handle.asarray()
            assert handle.imagej_metadata["spacing"] == pytest.approx(PRESETS["confocal"].voxel_size[0])
        assert data.shape == (shape[0], 2, shape[1], shape[2])
        pairs = read_pairs(tif.with_name(f"synth_{k:04d}.vectors.csv"))
        assert pairs.voxel_size == PRESETS["confocal"].voxel_size
        sidecar_text = sidecar_path(tif.with_name(f"synth_{k:04d}.vectors.csv")).read_text()
        # Strict JSON: no NaN/Infinity constants that other tools refuse.
        sidecar = json.loads(sidecar_text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
        assert sidecar["image"] == tif.name
        assert sidecar["image_shape_zyx"] == list(shape)
        assert sidecar["generator"] == "cellpol-simulator"
        assert sidecar["config"]["seed"] == item_seed(7, k)
        # Item k can be regenerated alone from (seed, k).
        volume, expected = simulate(SimConfig(shape=shape, seed=item_seed(7, k)))
        np.testing.assert_array_equal(np.moveaxis(data, 1, 0), volume.data)
        np.testing.assert_allclose(pairs.nuclei, expected.nuclei, atol=1e-4)
        np.testing.assert_allclose(pairs.golgi, expected.golgi, atol=1e-4)


def test_synthesize_dataset_cancel_and_bad_options(tmp_path):
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        synthesize_dataset(tmp_path, 3, shape=(4, 32, 32), cancel=token)
    assert not list(tmp_path.glob("*.tif"))
    with pytest.raises(CellPolError):
        synthesize_dataset(tmp_path, 1, shape=(4, 32, 32), no_such_option=1)


def test_synthesize_dataset_vary_samples_per_item_reproducible_and_overrides_win(tmp_path):
    from app.cli import main

    args = ["synth", "--n", "3", "--shape", "4", "48", "48", "--seed", "5", "--vary-samples"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    configs = [json.loads(sidecar_path(p).read_text())["config"] for p in sorted((tmp_path / "a").glob("*.vectors.csv"))]
    again = [json.loads(sidecar_path(p).read_text())["config"] for p in sorted((tmp_path / "b").glob("*.vectors.csv"))]
    assert configs == again  # reproducible from the dataset seed
    densities = {c["density_per_100um2"] for c in configs}
    assert len(densities) == 3 and PRESETS["confocal"].density_per_100um2 not in densities
    assert len({c["photons_golgi"] for c in configs}) == 3
    # An option given explicitly is kept, the rest still vary.
    paths = synthesize_dataset(tmp_path / "c", 2, shape=(4, 48, 48), seed=5, vary_samples=True, dirt_per_10000um2=0.0)
    fixed = [json.loads(sidecar_path(p.with_name(p.stem + ".vectors.csv")).read_text())["config"] for p in paths]
    assert [c["dirt_per_10000um2"] for c in fixed] == [0.0, 0.0]
    assert fixed[0]["density_per_100um2"] == configs[0]["density_per_100um2"]
