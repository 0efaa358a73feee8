"""Object masks from annotated centroids and random layouts (app.core.masks): pure numpy, no torch."""

from __future__ import annotations

import numpy as np
import pytest

from app.core import masks
from app.core.errors import CellPolError
from app.core.pairs import PairSet

VOXEL = (1.0, 0.5, 0.5)


def ellipsoid(shape, centre, radii_vox):
    grid = np.indices(shape, dtype=float)
    r = sum(((grid[a] - centre[a]) / radii_vox[a]) ** 2 for a in range(3))
    return r <= 1.0


def scene(rng, nuclei, golgi, shape=(16, 64, 64)):
    """A two-channel image with bright ellipsoids (nuclei r = 3×8×8 voxels, Golgi 1.5×3×3) on noise."""
    image = rng.normal(0.1, 0.02, (2,) + shape).astype(np.float32)
    truth = np.zeros((2,) + shape, dtype=bool)
    for c, (points, radii) in enumerate(((nuclei, (3, 8, 8)), (golgi, (1.5, 3, 3)))):
        for p in points:
            blob = ellipsoid(shape, p, radii)
            truth[c] |= blob
            image[c][blob] += 1.0
    return image, truth


def test_mask_recovers_a_known_object():
    rng = np.random.default_rng(0)
    nucleus, golgi = (8.0, 30.0, 30.0), (8.0, 30.0, 44.0)
    image, truth = scene(rng, [nucleus], [golgi])
    pairs = PairSet([nucleus], [golgi], voxel_size=VOXEL)
    found = masks.annotation_masks(image, pairs, VOXEL)
    assert found.missed == {"nucleus": 0, "golgi": 0}
    assert [o.kind for o in found.objects] == ["nucleus", "golgi"]
    for c in range(2):
        inter = np.count_nonzero(found.volume[c].astype(bool) & truth[c])
        union = np.count_nonzero(found.volume[c].astype(bool) | truth[c])
        assert inter / union > 0.95
    for obj, point in zip(found.objects, (nucleus, golgi)):
        assert np.allclose(obj.centroid, point, atol=0.5)
    # The Golgi box (8×8×5 µm = 16×16×5 voxels here) does not reach the nucleus 14 voxels away.
    assert not np.any(found.volume[1].astype(bool) & truth[0])


def test_a_dim_object_in_noise_is_found_and_noise_alone_is_not():
    rng = np.random.default_rng(4)
    shape = (12, 40, 40)
    noise = rng.normal(0.0, 1.0, shape)
    blob = ellipsoid(shape, (6, 20, 20), (2, 5, 5))
    assert masks.object_mask(noise, (6, 20, 20), VOXEL, (9, 16, 16)) is None
    found = masks.object_mask(noise + 4.0 * blob, (6, 20, 20), VOXEL, (9, 16, 16))  # 4 σ above the noise
    assert found is not None
    mask, origin = found
    grid = np.zeros(shape, bool)
    grid[tuple(slice(o, o + s) for o, s in zip(origin, mask.shape))] = mask
    assert np.count_nonzero(grid & blob) / np.count_nonzero(grid | blob) > 0.7
    assert masks.noise_sigma(noise) == pytest.approx(1.0, rel=0.1)


def test_box_is_in_micrometres():
    assert masks.box_half_size((9.0, 16.0, 16.0), (1.0, 0.5, 0.5)).tolist() == [4, 16, 16]
    assert masks.box_half_size((9.0, 16.0, 16.0), (0.5, 1.0, 1.0)).tolist() == [9, 8, 8]


def test_touching_nuclei_are_split_and_a_click_on_background_snaps():
    rng = np.random.default_rng(1)
    a, b = (8.0, 30.0, 24.0), (8.0, 30.0, 39.0)  # radii 8 voxels: the two ellipsoids touch
    image, _ = scene(rng, [a, b], [])
    pairs = PairSet([a, b], [(8.0, 10.0, 10.0), (8.0, 50.0, 50.0)], voxel_size=VOXEL)
    found = masks.annotation_masks(image, pairs, VOXEL)
    first, second = found.of_kind("nucleus")
    assert first.centroid[2] < 31.5 < second.centroid[2]
    grid_a = np.zeros(image.shape[1:], bool)
    grid_b = np.zeros(image.shape[1:], bool)
    for obj, grid in ((first, grid_a), (second, grid_b)):
        grid[tuple(slice(o, o + s) for o, s in zip(obj.origin, obj.mask.shape))] = obj.mask
    assert not np.any(grid_a & grid_b)
    assert masks.object_mask(np.ones((8, 8, 8)), (4, 4, 4), VOXEL, (5, 8, 8)) is None  # a flat box: nothing
    assert found.missed["golgi"] == 2  # pure noise where the Golgi were clicked: no speckled mask

    # A click 1 µm beside the object still finds it; one far from anything finds nothing.
    near = (8.0, 30.0, 24.0 - 8.0 - 2.0)  # 2 voxels = 1 µm outside the left edge
    assert masks.object_mask(image[0], near, VOXEL, (9, 16, 16)) is not None
    assert masks.object_mask(image[0], near, VOXEL, (9, 16, 16), snap_um=0.2) is None


def test_bad_input_is_a_clear_error():
    pairs = PairSet.empty(VOXEL)
    with pytest.raises(CellPolError, match="two-channel"):
        masks.annotation_masks(np.zeros((3, 4, 8, 8)), pairs, VOXEL)
    with pytest.raises(CellPolError, match="box must be three positive"):
        masks.annotation_masks(np.zeros((2, 4, 8, 8)), pairs, VOXEL, nucleus_box_um=(9, -1, 16))
    with pytest.raises(CellPolError, match="at least one of each"):
        masks.random_layout(masks.ShapeLibrary([np.ones((3, 3, 3))], [], VOXEL), (8, 32, 32))
    with pytest.raises(CellPolError, match="three positive sizes"):
        masks.random_layout(cube_library(), (8, 32))


def cube_library(size=5, golgi=3):
    return masks.ShapeLibrary([np.ones((size, size, size), bool)], [np.ones((golgi, golgi, golgi), bool)], VOXEL)


def test_layout_respects_limits_and_vectors_are_exact():
    library = cube_library()
    params = masks.LayoutParams(max_pair_distance_um=6.0, min_separation_um=5.0, pairs_per_1000_um2=20.0)
    layout = masks.random_layout(library, (16, 96, 96), params, np.random.default_rng(3))
    pairs = layout.pairs
    assert len(pairs) >= 5
    voxel = np.asarray(VOXEL)
    lengths = np.linalg.norm(pairs.vectors * voxel, axis=1)
    assert np.all(lengths <= 6.0 + 1e-9)
    for points in (pairs.nuclei, pairs.golgi):
        d = np.linalg.norm((points[:, None] - points[None]) * voxel, axis=2)
        np.fill_diagonal(d, np.inf)
        assert d.min() >= 5.0
    # Odd cubes have whole-voxel centroids: each recorded centroid is the centre of a pasted cube.
    for c, (points, half) in enumerate(((pairs.nuclei, 2), (pairs.golgi, 1))):
        assert np.allclose(points, np.round(points))
        for p in points.astype(int):
            assert layout.masks[c][tuple(slice(v - half, v + half + 1) for v in p)].all()
        assert layout.masks[c].sum() == len(points) * (2 * half + 1) ** 3  # wholly inside, no overlap
    assert not np.any(layout.masks[0].astype(bool) & layout.masks[1].astype(bool))
    # The same generator state gives the same layout.
    again = masks.random_layout(library, (16, 96, 96), params, np.random.default_rng(3))
    assert np.array_equal(again.masks, layout.masks) and np.array_equal(again.pairs.golgi, pairs.golgi)


def test_no_room_is_a_clear_error():
    with pytest.raises(CellPolError, match="make the volume larger"):
        masks.random_layout(cube_library(size=9), (6, 12, 12), rng=np.random.default_rng(0))


def test_transforms_keep_the_shape_exact():
    shape = np.zeros((3, 4, 6), bool)
    shape[1, 0, :] = True
    shape[0, :, 0] = True
    seen = {masks.transform_shape(shape, np.random.default_rng(k), VOXEL).tobytes() for k in range(40)}
    assert len(seen) == 8  # the 8 in-plane symmetries of an asymmetric shape
    for k in range(10):
        out = masks.transform_shape(shape, np.random.default_rng(k), (1.0, 0.5, 0.4))  # y ≠ x: 0/180° only
        assert out.shape == shape.shape and out.sum() == shape.sum()


def test_layout_limits_are_learned_from_annotations():
    rng = np.random.default_rng(0)
    nuclei = np.stack([np.full(20, 5.0), np.repeat(np.arange(4) * 20.0, 5), np.tile(np.arange(5) * 20.0, 4)], 1)
    offsets = np.stack([np.zeros(20), np.zeros(20), rng.uniform(2, 8, 20)], 1)  # lengths 1–4 µm
    pairs = PairSet(nuclei, nuclei + offsets, voxel_size=VOXEL)
    learned = masks.learn_layout_params([(pairs, (10, 100, 100))])
    assert learned.max_pair_distance_um == pytest.approx(np.percentile(offsets[:, 2] * 0.5, 99))
    assert learned.min_separation_um == pytest.approx(10.0 * 0.5 * 2, rel=0.3)  # Golgi 8–18 voxels apart
    assert learned.pairs_per_1000_um2 == pytest.approx(20 / (50 * 50) * 1000)
    assert len(learned.vectors_um) == 20 and "learned" in learned.source
    few = masks.learn_layout_params([(pairs.subset(slice(0, 5)), (10, 100, 100))])
    assert few.max_pair_distance_um == masks.PAPER_MAX_PAIR_DISTANCE_UM
    assert few.min_separation_um == masks.PAPER_MIN_SEPARATION_UM
    assert masks.LayoutParams.from_dict(learned.to_dict()).max_pair_distance_um == pytest.approx(
        learned.max_pair_distance_um, abs=1e-4)
    with pytest.raises(CellPolError, match="Unknown layout setting"):
        masks.LayoutParams.from_dict({"max_distance": 3})


def test_library_round_trip():
    library = cube_library()
    back = masks.ShapeLibrary.from_arrays(library.to_arrays(), VOXEL)
    assert len(back.nuclei) == 1 and back.nuclei[0].dtype == bool and back.golgi[0].sum() == 27
