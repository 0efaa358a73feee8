"""The outside renderer (benchmarks/outside_render.py): ground truth, determinism, configurations, independence
from our simulator, the CLI folder and the accuracy benchmark's --renderer outside. Tiny fields, fast."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import outside_render as outside  # noqa: E402

FIELD = (10.0, 40.0, 40.0)
VOXEL = (0.5, 0.333, 0.333)


def tiny_layout(seed: int = 0):
    rng = np.random.default_rng(seed)
    return outside.random_layout(rng, FIELD, density=10 / (40 * 40))


@pytest.fixture(scope="module")
def rendered():
    layout = tiny_layout()
    volume, pairs, labels = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 123, "validation",
                                           return_labels=True, **layout.hints())
    return layout, volume, pairs, labels


def test_ground_truth_is_the_centroid_of_the_rendered_masks(rendered):
    layout, volume, pairs, labels = rendered
    assert len(pairs) >= 5
    for channel, points in ((0, pairs.nuclei), (1, pairs.golgi)):
        ids = pairs.ids + 1
        centroids = np.array(ndimage.center_of_mass(labels[channel] > 0, labels[channel], ids))
        np.testing.assert_allclose(centroids, points, atol=0.1)
    # every annotated label is drawn, and the drawn objects are bright where their masks are
    assert set(np.unique(labels[0])) - {0} == set(pairs.ids + 1)
    data = volume.data.astype(np.float64)
    for channel in (0, 1):
        inside = data[channel][labels[channel] > 0].mean()
        outside_ = data[channel][(labels[0] == 0) & (labels[1] == 0)].mean()
        assert inside > 1.3 * outside_
    # the ground truth is the mask's centroid, not the requested point: for some cells they differ
    requested = layout.golgi_um[pairs.ids]
    assert np.max(np.linalg.norm(pairs.golgi_um - requested, axis=1)) > 0.2


def test_voxel_size_dtype_and_channels(rendered):
    _, volume, pairs, _ = rendered
    assert volume.data.dtype == np.uint16
    assert volume.data.shape == (2,) + outside.field_shape(FIELD, VOXEL)
    assert volume.voxel_size == pytest.approx(VOXEL)
    assert pairs.voxel_size == pytest.approx(VOXEL)
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 1)
    assert np.all(pairs.nuclei >= 0) and np.all(pairs.nuclei < np.array(volume.spatial_shape))


def test_deterministic_for_a_seed_and_different_for_another():
    layout = tiny_layout(1)
    a = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 7, "validation")
    b = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 7, "validation")
    c = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 8, "validation")
    assert np.array_equal(a[0].data, b[0].data)
    np.testing.assert_allclose(a[1].nuclei, b[1].nuclei)
    assert not np.array_equal(a[0].data, c[0].data)
    assert np.mean(np.abs(a[0].data.astype(float) - c[0].data.astype(float))) > 1.0


def test_the_two_configurations_differ():
    layout = tiny_layout(2)
    val, _ = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 5, "validation")
    ship, _ = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 5, "ship")
    assert val.metadata["config"]["camera"] != ship.metadata["config"]["camera"]
    assert ship.data.max() <= 4095  # 12-bit camera
    assert val.metadata["config"]["params"]["sigma_z"] != ship.metadata["config"]["params"]["sigma_z"]
    assert outside.CONFIGS["validation"].seed_base == 50_000 and outside.CONFIGS["ship"].seed_base == 90_000


def test_bleed_through_puts_nuclei_into_the_golgi_channel():
    layout = tiny_layout(3)
    base = outside.CONFIGS["validation"]
    loud = dataclasses.replace(base, bleed_nucleus_to_golgi=(0.06, 0.06))
    none = dataclasses.replace(base, bleed_nucleus_to_golgi=(0.0, 0.0))
    (v1, _, labels), (v0, _) = (
        outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 9, loud, return_labels=True),
        outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 9, none))
    extra = v1.data[1].astype(np.float64) - v0.data[1].astype(np.float64)
    nuclei = v1.data[0].astype(np.float64)
    assert np.corrcoef(extra.ravel(), nuclei.ravel())[0, 1] > 0.3
    in_nuclei = labels[0] > 0
    assert extra[in_nuclei].mean() > 3 * max(extra[~in_nuclei].mean(), 1.0)
    # and by default, too: the Golgi channel is brighter inside nuclei than in the nuclei-free background
    default, _ = outside.render(layout.nuclei_um, layout.golgi_um, FIELD, VOXEL, 9, "validation")
    golgi = default.data[1].astype(np.float64)
    assert golgi[in_nuclei & (labels[1] == 0)].mean() > golgi[(labels[0] == 0) & (labels[1] == 0)].mean()


def test_the_module_does_not_use_our_simulator():
    source = (REPO / "benchmarks" / "outside_render.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            assert not any("simulate" in alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert "simulate" not in (node.module or "")
            assert not any("simulate" in alias.name for alias in node.names)
    code = ("import sys; sys.path.insert(0, %r); import numpy as np; from benchmarks import outside_render as o; "
            "from benchmarks import accuracy; "
            "o.render(np.array([[5., 20., 20.]]), np.array([[5., 20., 25.]]), (10., 40., 40.), (0.5, 0.5, 0.5), 1); "
            "print(sorted(m for m in sys.modules if 'simulate' in m))") % str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_cli_writes_a_folder_the_app_reads(tmp_path):
    from app.core.imageio import find_images, read_volume
    from app.core.pairs import read_pairs, read_vectors_content

    out = tmp_path / "outside"
    assert outside.main(["--out", str(out), "--config", "ship", "--n", "2", "--field", "8", "40", "40",
                         "--seed", "90100"]) == 0
    images = find_images([out])
    assert len(images) == 2
    for k, image in enumerate(images):
        volume = read_volume(image)
        vectors = image.with_name(image.name[: -len(".tif")] + ".vectors.csv")
        pairs = read_pairs(vectors)
        assert read_vectors_content(vectors) == "ground-truth"
        assert volume.data.dtype == np.uint16 and volume.data.shape[0] == 2
        vxy = (0.333, 0.666)[k % 2]
        assert volume.voxel_size[1:] == pytest.approx((vxy, vxy), abs=1e-4)
        assert pairs.voxel_size == pytest.approx(volume.voxel_size, abs=1e-4)
        again, gt = next(outside.outside_volumes(1, "ship", seed=90100 + k, field_xy_um=40.0, field_z_um=(8.0, 8.0),
                                                 voxel_xy=(vxy,)))
        assert np.array_equal(volume.data, again.data)
        np.testing.assert_allclose(pairs.nuclei, gt.nuclei, atol=1e-3)


def test_real_layouts_use_the_accuracy_tiling():
    from app.core.pairs import PairSet

    rng = np.random.default_rng(4)
    nuclei = np.column_stack([rng.uniform(1, 4, 6), rng.uniform(5, 35, 6), rng.uniform(5, 35, 6)])
    golgi = nuclei + np.array([0.5, 3.0, 2.0])
    voxel = (0.4, 0.333, 0.333)
    pairs = PairSet(nuclei / voxel, golgi / voxel, voxel_size=voxel, meta={"image": "CropX"})
    (volume, gt), = list(outside.layout_volumes([pairs], "validation"))
    assert volume.voxel_size == pytest.approx(voxel)
    assert gt.meta["image"] == "CropX#0" and len(gt) >= 5
    (coarse, _), = list(outside.layout_volumes([pairs], "validation", voxel_xy=0.666))
    assert coarse.voxel_size == pytest.approx((0.4, 0.666, 0.666))


def test_accuracy_benchmark_runs_with_the_outside_renderer():
    result = subprocess.run([sys.executable, "benchmarks/accuracy.py", "--renderer", "outside", "--n", "1",
                             "--field", "8", "48", "48"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "outside-rendered (validation)" in result.stdout
    assert any(line.startswith("classic") for line in result.stdout.splitlines())
