"""The starter-training script's weight transfer: a 3DCtrDet started from a CellPol model."""

from __future__ import annotations

import dataclasses

import torch

from app.core.modelfile import ModelSpec, load_model, save_model
from app.core.network import NetworkConfig, build_network
from app.training.starter import transfer_weights


def test_ctrdet_from_cellpol_keeps_backbone_and_heatmap_heads(tmp_path):
    torch.manual_seed(0)
    config = NetworkConfig(levels=2, base_filters=4, pool_factors=((1, 2, 2),))
    source = build_network(config)
    save_model(tmp_path / "cellpol", source, ModelSpec(network=config, voxel_size=(1.0, 0.5, 0.5), name="src"))
    target_config = dataclasses.replace(config, architecture="ctrdet")
    path = transfer_weights(tmp_path / "cellpol.json", target_config, tmp_path / "ctr_init")
    model, spec = load_model(path)
    assert spec.network.architecture == "ctrdet" and path.name == "ctr_init.json"
    own = source.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, own[key])
    assert not any("embedding" in key for key in model.state_dict())
    x = torch.rand(1, 2, 4, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x)["heatmap_golgi"], source.eval()(x)["heatmap_golgi"])


def test_varied_samples_draw_within_ranges_reproducibly_and_change_the_scene():
    import numpy as np

    from app.core.simulate import (PRESETS, SAMPLE_SCALES, SAMPLE_VARIATION, SimConfig, simulate,
                                   varied_sample_options)

    draws = [varied_sample_options(np.random.default_rng(s), "confocal") for s in range(40)]
    assert varied_sample_options(np.random.default_rng(3), "confocal") == draws[3]
    base = PRESETS["confocal"]
    for name in ("density_per_100um2", "vessels_per_10000um2", "dirt_per_10000um2", "dim_fraction"):
        values = [d[name] for d in draws]
        lo, hi = SAMPLE_VARIATION[name]
        assert lo <= min(values) and max(values) <= hi
        assert max(values) - min(values) > 0.5 * (hi - lo)  # really spread, not one preset's amount
    lo, hi = SAMPLE_SCALES["photons"]
    scales = [d["photons_nucleus"] / base.photons_nucleus for d in draws]
    assert lo <= min(scales) and max(scales) <= hi and max(scales) / min(scales) > 2
    # The options are accepted by the simulator and change the scene: a crowded draw holds more cells.
    sparse = dict(draws[0], density_per_100um2=0.12)
    crowded = dict(draws[0], density_per_100um2=0.45)
    n = [len(simulate(SimConfig(shape=(6, 96, 96), voxel_size=(1.0, 0.5, 0.5), seed=1, **o))[1].nuclei)
         for o in (sparse, crowded)]
    assert n[1] > 2 * n[0]


def test_calibration_seed_defaults_to_the_training_seed_and_can_be_fixed(monkeypatch, tmp_path):
    import app.training.starter as starter

    seen = []
    monkeypatch.setattr(starter, "calibrate_and_save", lambda out, presets, seed, *rest, **kw: seen.append(seed))
    out = str(tmp_path / "model")
    starter.main(["--out", out, "--calibrate-only", "--seed", "7"])
    starter.main(["--out", out, "--calibrate-only", "--seed", "7", "--calibration-seed", "1000"])
    assert seen == [7, 1000]


def test_crowded_layouts_draw_within_ranges_and_bring_nuclei_closer():
    import numpy as np
    from scipy.spatial import cKDTree

    from app.core.simulate import LAYOUT_SCALES, LAYOUT_VARIATION, SimConfig, simulate, varied_layout_options

    draws = [varied_layout_options(np.random.default_rng(s)) for s in range(30)]
    assert varied_layout_options(np.random.default_rng(4)) == draws[4]
    lo, hi = LAYOUT_VARIATION["min_nucleus_distance_um"]
    assert all(lo <= d["min_nucleus_distance_um"] <= hi for d in draws)
    lo, hi = LAYOUT_SCALES["nucleus_size"]
    majors = [d["nucleus_size_um"][0] / SimConfig().nucleus_size_um[0] for d in draws]
    assert lo <= min(majors) and max(majors) <= hi and max(majors) / min(majors) > 1.5

    def close_fraction(options):
        near = []
        for seed in range(3):
            volume, pairs = simulate(SimConfig(shape=(6, 240, 240), voxel_size=(1.0, 0.5, 0.5), seed=seed,
                                               density_per_100um2=0.45, noise=False, **options))
            centres = pairs.nuclei * np.asarray(volume.voxel_size)
            near.extend(cKDTree(centres).query(centres, 2)[0][:, 1] < 7.0)
        return float(np.mean(near))

    crowded = {"min_nucleus_distance_um": 2.0, "nucleus_size_um": tuple(0.45 * s for s in SimConfig().nucleus_size_um)}
    assert close_fraction(crowded) > close_fraction({}) + 0.05


def test_vary_layout_leaves_the_other_draws_alone(monkeypatch):
    import app.core.simulate as simulate_module
    from app.training.starter import validation_set

    seen = []
    real = simulate_module.simulate
    monkeypatch.setattr(simulate_module, "simulate", lambda config: seen.append(config) or real(config))
    for vary_layout in (False, True):
        validation_set(["confocal"], 3, n=1, dims=2, vary_samples=True, vary_layout=vary_layout)
    plain, crowded = seen
    assert crowded.seed == plain.seed and crowded.voxel_size == plain.voxel_size
    assert crowded.photons_nucleus == plain.photons_nucleus
    assert crowded.nucleus_size_um != plain.nucleus_size_um


def test_scene_layout_options_crowd_the_requested_share_of_scenes():
    import numpy as np

    from app.core.simulate import scene_layout_options, varied_layout_options

    keys = [(11, k) for k in range(400)]
    assert all(scene_layout_options(key, 0.0) == {} for key in keys[:20])
    assert scene_layout_options(keys[5], 1.0) == varied_layout_options(np.random.default_rng([11, 5, 2]))
    share = np.mean([bool(scene_layout_options(key, 0.5)) for key in keys])
    assert 0.4 < share < 0.6
    # A crowded scene draws the same options whatever the share, so runs at different shares agree on it.
    crowded = next(key for key in keys if scene_layout_options(key, 0.5))
    assert scene_layout_options(crowded, 0.5) == scene_layout_options(crowded, 1.0)


def test_worker_patches_come_from_worker_processes_and_a_failing_worker_is_one_message(tmp_path):
    """The GPU feeder: patches of the asked shape whose pairs lie inside them, from two spawned workers;
    a worker that cannot simulate ends the run with one CellPolError, and close() ends the workers."""
    import numpy as np
    import pytest

    from app.core.errors import CellPolError
    from app.training.parallel import PoolRecipe, WorkerPatches

    recipe = PoolRecipe((1.0, 0.5, 0.5), pool_per_worker=2, refresh_every=3,
                        options=dict(field_um=(10.0, 40.0, 40.0)))
    with WorkerPatches(2, recipe, (8, 32, 32), seed=1, timeout_s=120) as source:
        patches = [source.sample(None) for _ in range(8)]  # past a pool refresh in each worker
        processes = list(source._processes)
    assert not any(p.is_alive() for p in processes)
    for image, pairs in patches:
        assert image.shape == (2, 8, 32, 32) and image.dtype == np.float32
        assert pairs.voxel_size == (1.0, 0.5, 0.5)
    assert any(len(pairs) for _, pairs in patches)  # foreground patches hold their cells
    assert len({float(image.sum()) for image, _ in patches}) > 4  # not one patch over and over
    broken = PoolRecipe((1.0, 0.5, 0.5), pool_per_worker=1, options=dict(presets=["no-such-preset"]))
    with WorkerPatches(1, broken, (8, 32, 32), timeout_s=120) as source:
        with pytest.raises(CellPolError, match="patch worker failed"):
            source.sample(None)


def test_time_budget_probe_times_steps_and_leaves_no_files(tmp_path):
    from app.training.data import PatchSampler, synthetic_pool
    from app.training.starter import time_steps
    from app.training.trainer import TrainConfig

    spec = ModelSpec(network=NetworkConfig(levels=2, base_filters=4, pool_factors=((2, 2, 2),)),
                     voxel_size=(1.0, 0.5, 0.5))
    sampler = PatchSampler(synthetic_pool(1, (1.0, 0.5, 0.5), 2, field_um=(8.0, 32.0, 32.0)), (8, 32, 32))
    per_step = time_steps(spec, sampler, TrainConfig(steps=1000, batch_size=1, device="cpu"), tmp_path / "probe",
                          None, steps=6)
    assert 0 < per_step < 5 and not (tmp_path / "probe").exists()
