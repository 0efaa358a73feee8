"""Reproducible training of the bundled starter model on broad simulator data.

    python -m app.training.starter --out resources/models/cellpol_starter --steps 3000 --seed 0 \
        [--shapes-dir ../shared/data/shapes_3dngmic] [--device cpu] [--init PREVIOUS.json] [--dims 2]

The data are simulator volumes at random voxel sizes (0.2–0.8 µm in x/y, 0.25–1 µm in z), all presets,
optionally the real 3DNGMic object masks, resampled to the model's voxel size as user images are.
The pool is partly regenerated every ``--refresh-every`` steps so the model sees thousands of scenes.
A killed run resumes from ``<out>.checkpoints/``. ``--init`` continues from an earlier model's weights
(a 3DCtrDet run may start from a CellPol model: the backbone and heatmap heads carry over; a run with more
``--base-filters`` than the earlier model grows it, ``app.training.widen``); ``--dims 2``
trains the starter for single-plane images on 2D simulator scenes. The exact commands behind the shipped
models are in their JSON (``provenance.trained_by``).
"""

from __future__ import annotations

import os

# Torch's OpenMP threads busy-wait by default, which slows everything else on a small machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

import app.core.simulate as simulation  # simulation.simulate is looked up at each call (a test replaces it)
from app.core.errors import CellPolError
from app.core.fileutil import sha256_file
from app.core.inference import Predictor
from app.core.modelfile import DecodingSpec, ModelSpec, load_model, load_spec, model_paths, save_model
from app.core.network import NetworkConfig, build_network
from app.core.simulate import SimConfig, scene_layout_options, varied_sample_options
from app.training.calibrate import best_row, calibrate_decoding
from app.training.data import AugmentConfig, PatchSampler, synthetic_pool
from app.training.parallel import PoolRecipe, WorkerPatches
from app.training.losses import LossConfig
from app.training.trainer import TrainConfig, train, train_config_dict
from app.training.widen import WIDTH_FIELDS, widen_model

MODEL_VOXEL_SIZE = (1.0, 0.5, 0.5)
PATCH_SHAPE = (16, 128, 128)
PATCH_SHAPE_2D = (1, 256, 256)
#: Physical field (z, y, x) µm of each simulated scene in the pool, per dimensionality.
POOL_FIELD_UM = {3: (20.0, 96.0, 96.0), 2: (0.01, 160.0, 160.0)}
TRAIN_PRESETS = ("confocal", "confocal-low-snr", "widefield")
#: Radius (µm) within which calibrated starters refine Golgi ends on the image (DecodingSpec.golgi_refine_radius_um).
GOLGI_REFINE_UM = 2.5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="model path stem (writes <out>.json + <out>.safetensors)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pool", type=int, default=24, help="simulated volumes held at once")
    parser.add_argument("--refresh-every", type=int, default=100, help="steps between replacing a quarter of the pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes-dir", type=Path, default=None)
    parser.add_argument("--architecture", default="cellpol", choices=("cellpol", "ctrdet"))
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--patch", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                        help=f"patch size in model voxels (default {PATCH_SHAPE} in 3D, {PATCH_SHAPE_2D} in 2D)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3,
                        help="3: the starter for stacks; 2: the starter for single-plane images")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from this model's weights (same architecture), e.g. the previous starter")
    parser.add_argument("--embedding-weight", type=float, default=1.0,
                        help="weight of the pull/push loss (1: the paper's; smaller favours the heatmaps)")
    parser.add_argument("--negative-weight", type=float, default=0.0,
                        help="hard negatives: background voxels weigh 1 + λ·(r − 1)·prediction (0: off)")
    parser.add_argument("--push-radius", type=float, default=0.0, metavar="UM",
                        help="push apart only pairs whose centroids are within this distance (0: all pairs)")
    parser.add_argument("--vary-layout", type=float, nargs="?", const=1.0, default=0.0, metavar="SHARE",
                        help="that share of scenes (training and calibration; alone: all) draws smaller nuclei "
                             "allowed closer together (app.core.simulate.LAYOUT_VARIATION), as crowded as real "
                             "retina layouts")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="skip training: calibrate the decoding of the existing <out>.json and save it again")
    parser.add_argument("--calibration-volumes", type=int, default=6,
                        help="simulator volumes the decoding is calibrated on (more: a steadier choice)")
    parser.add_argument("--calibration-seed", type=int, default=None,
                        help="seed of the calibration volumes (default: --seed); one fixed seed lets the "
                             "validation scores of successive stages be compared")
    parser.add_argument("--presets", nargs="+", default=list(TRAIN_PRESETS),
                        help="simulator presets to train on (default leaves 'retina' out for held-out tests)")
    parser.add_argument("--vary-samples", action="store_true",
                        help="each scene draws density, distractors, stain brightness and optics from wide ranges "
                             "(app.core.simulate.SAMPLE_VARIATION) instead of its preset's fixed amounts")
    parser.add_argument("--appearance", type=float, default=0.0, metavar="P",
                        help="share of patches shown as another microscope and stain might show them (bleed-through, "
                             "other blur, depth loss, background, camera noise, saturation: "
                             "app.training.data.appearance_shift); 0 = off")
    parser.add_argument("--workers", type=int, default=0,
                        help="simulate and cut patches in this many worker processes, each with a pool of "
                             "--pool / N scenes (for a GPU that one core cannot feed; the run is then not "
                             "step-for-step reproducible); 0 = in this process")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="instead of --steps: time a few steps first, then train as many as fit in SECONDS")
    parser.add_argument("--fast", action="store_true",
                        help="let cuDNN pick its fastest (non-deterministic) kernels on a GPU")
    parser.add_argument("--calibration-device", default="cpu", help="device the decoding calibration predicts on")
    args = parser.parse_args(argv)

    out = Path(args.out)
    calibration_seed = args.seed if args.calibration_seed is None else args.calibration_seed
    if args.calibrate_only:
        calibrate_and_save(out, args.presets, calibration_seed, args.dims, args.calibration_volumes, args.vary_samples,
                           args.vary_layout, device=args.calibration_device)
        return 0
    checkpoints = out.with_name(out.name + ".checkpoints")
    network = NetworkConfig.for_voxel_size(MODEL_VOXEL_SIZE, spatial_dims=args.dims, architecture=args.architecture,
                                           base_filters=args.base_filters)
    patch_shape = tuple(args.patch) if args.patch else (PATCH_SHAPE if args.dims == 3 else PATCH_SHAPE_2D)
    config = TrainConfig(steps=args.steps, batch_size=args.batch, learning_rate=args.lr, seed=args.seed,
                         device=args.device, checkpoint_every=100, deterministic=not args.fast,
                         loss=LossConfig(pull_weight=args.embedding_weight, push_weight=args.embedding_weight,
                                         negative_weight=args.negative_weight, push_radius_um=args.push_radius))
    init_provenance, init_path = None, args.init
    if args.init is not None:
        init_spec = load_spec(args.init)
        widths = {name: getattr(network, name) for name in WIDTH_FIELDS}
        wider = dataclasses.replace(init_spec.network, **widths)
        same_backbone = dataclasses.replace(wider, architecture=network.architecture) == network
        if not same_backbone or tuple(init_spec.voxel_size) != MODEL_VOXEL_SIZE:
            parser.error(f"--init {args.init}: its architecture or voxel size differs from this run's")
        init_provenance = {"path": str(args.init), "name": init_spec.name,
                           "weights_sha256": sha256_file(model_paths(args.init)[1]), "provenance": init_spec.provenance}
        if wider != init_spec.network:
            # A wider network grown from a narrower one: it starts computing exactly what that one computes.
            if network.architecture != init_spec.network.architecture:
                parser.error("--init: a network can be widened or turned into a 3DCtrDet, not both at once")
            try:
                init_path = widen_model(args.init, out.with_name(out.name + "_init"), widths, seed=args.seed)
            except CellPolError as exc:
                parser.error(f"--init {args.init}: {exc}")
            init_provenance["transferred"] = (f"widened from {init_spec.network.base_filters} to "
                                              f"{network.base_filters} base filters (app.training.widen)")
        elif init_spec.network != network:
            # A 3DCtrDet from a CellPol model: the backbone and heatmap heads carry over, the embeddings go.
            init_path = transfer_weights(args.init, network, out.with_name(out.name + "_init"))
            init_provenance["transferred"] = "backbone and heatmap heads (embedding heads dropped)"
    provenance = {
        "trained_by": "python -m app.training.starter " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": ("cellpol simulator, voxel sizes xy U(0.2,0.8) z U(0.25,1.0) µm" if args.dims == 3
                 else "cellpol simulator, single planes, voxel sizes xy U(0.2,0.8) µm")
                + (", 40% real 3DNGMic masks" if args.shapes_dir else "")
                + (", varied samples (SAMPLE_VARIATION)" if args.vary_samples else "")
                + (f", crowded layouts (LAYOUT_VARIATION) in {args.vary_layout:.0%} of scenes"
                   if args.vary_layout else "")
                + (f", appearance shifts (appearance_shift) on {args.appearance:.0%} of patches"
                   if args.appearance else ""),
        "presets": list(args.presets), "pool_volumes": args.pool, "vary_samples": args.vary_samples,
        "vary_layout": args.vary_layout, "appearance": args.appearance,
        "refresh_every": args.refresh_every,
        "patch_shape_zyx": list(patch_shape),
        "train": train_config_dict(config), "host": platform.node(), "python": platform.python_version(),
        "continued_from": init_provenance,
    }
    spec = ModelSpec(network=network, voxel_size=MODEL_VOXEL_SIZE, decoding=DecodingSpec(),
                     provenance=provenance, name=out.name,
                     description="Starter model trained on broad simulator data; fine-tune on your own images.")

    def new_pool(n: int, seed: int):
        return synthetic_pool(n, MODEL_VOXEL_SIZE, seed, presets=args.presets, shapes_dir=args.shapes_dir,
                              field_um=POOL_FIELD_UM[args.dims], vary_samples=args.vary_samples,
                              vary_layout=args.vary_layout)

    augment = AugmentConfig(appearance=args.appearance)
    if args.workers > 0:
        recipe = PoolRecipe(MODEL_VOXEL_SIZE, max(2, args.pool // args.workers), args.refresh_every * args.batch,
                            dict(presets=args.presets, shapes_dir=args.shapes_dir, field_um=POOL_FIELD_UM[args.dims],
                                 vary_samples=args.vary_samples, vary_layout=args.vary_layout))
        sampler = WorkerPatches(args.workers, recipe, patch_shape, augment, seed=args.seed)
    else:
        sampler = PatchSampler(new_pool(args.pool, args.seed * 1000), patch_shape, augment)
    started = time.time()
    try:
        if args.time_budget is not None:
            per_step = time_steps(spec, sampler, config, checkpoints.with_name(checkpoints.name + ".probe"), init_path)
            config = dataclasses.replace(config, steps=max(config.warmup_steps + 10,
                                                           int(args.time_budget / (per_step * 1.05))))
            provenance["time_budget"] = {"seconds": args.time_budget, "seconds_per_step": round(per_step, 4),
                                         "steps": config.steps}
            print(f"{per_step:.3f} s/step: {config.steps} steps fit in {args.time_budget:.0f} s", flush=True)
        run_training(args, spec, sampler, config, checkpoints, init_path, new_pool)
    finally:
        if isinstance(sampler, WorkerPatches):
            print(f"waited {sampler.waited_s:.1f} s for patches from the workers", flush=True)
            sampler.close()
    model, _ = load_model(checkpoints / "last.json")
    provenance["wall_seconds"] = round(time.time() - started, 1)
    provenance["train"] = train_config_dict(config)
    final = ModelSpec(network=network, voxel_size=MODEL_VOXEL_SIZE, decoding=spec.decoding,
                      provenance=provenance, name=spec.name, description=spec.description)
    path = save_model(out, model, final)
    print(f"saved {path}")
    calibrate_and_save(out, args.presets, calibration_seed, args.dims, args.calibration_volumes, args.vary_samples,
                       args.vary_layout, device=args.calibration_device)
    return 0


def time_steps(spec: ModelSpec, sampler, config: TrainConfig, folder: Path, init: Optional[Path],
               steps: int = 12) -> float:
    """Seconds per training step of this run, from a throwaway run of ``steps`` (the first three, warm-up
    and kernel choice, not counted) in ``folder``, which is removed after."""
    probe = dataclasses.replace(config, steps=steps, checkpoint_every=10 * steps, epoch_steps=10 * steps,
                                warmup_steps=1)
    times = []
    try:
        for event in train(spec, sampler, probe, folder, init=init):
            if event.kind == "step":
                times.append(time.perf_counter())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return float(np.median(np.diff(times[3:])))


def run_training(args, spec: ModelSpec, sampler, config: TrainConfig, checkpoints: Path, init_path,
                 new_pool) -> None:
    """The training loop: progress lines, and (in-process pools) a quarter of the pool renewed every
    ``--refresh-every`` steps."""
    for event in train(spec, sampler, config, checkpoints, init=init_path):
        if event.kind == "step":
            if event.step % 10 == 0:
                loss = event.losses
                print(f"step {event.step}/{event.total_steps} total {loss['total']:.4f} heat {loss['heatmap']:.4f} "
                      f"pull {loss['pull']:.4f} push {loss['push']:.4f} lr {event.learning_rate:.2e} "
                      f"{event.seconds:.0f}s", flush=True)
            if isinstance(sampler, PatchSampler) and event.step % args.refresh_every == 0:
                # Replace a quarter of the pool with new scenes (seeded by the step: reproducible).
                fresh = new_pool(max(1, args.pool // 4), args.seed * 1000 + event.step)
                start = (event.step // args.refresh_every) * len(fresh) % args.pool
                for i, volume in enumerate(fresh):
                    sampler.volumes[(start + i) % args.pool] = volume
        elif event.kind == "checkpoint":
            print(f"checkpoint {event.path}", flush=True)


def transfer_weights(source, network: NetworkConfig, out: Path) -> Path:
    """Save a model of architecture ``network`` whose weights are those of ``source`` it shares by name."""
    model, spec = load_model(source)
    target = build_network(network)
    shared = {k: v for k, v in model.state_dict().items() if k in target.state_dict()}
    missing = [k for k in target.state_dict() if k not in shared]
    if missing:
        raise SystemExit(f"cannot transfer weights: {source} lacks {missing[:3]}")
    target.load_state_dict(shared)
    return save_model(out, target, dataclasses.replace(spec, network=network))


def validation_set(presets, seed: int, n: int = 6, dims: int = 3, vary_samples: bool = False,
                   vary_layout: float = 0.0):
    """Simulator volumes (``dims`` = 2: single planes) from seeds the training pool never uses (< 1e6).

    ``vary_samples``: the scenes draw their sample and optics from the training ranges too
    (:func:`app.core.simulate.varied_sample_options`), so the decoding is chosen for varied data.
    """
    rng = np.random.default_rng(7_000_000 + seed)
    out = []
    for k in range(n):
        vxy, vz = float(rng.uniform(0.25, 0.7)), float(rng.uniform(0.3, 1.0))
        shape = (max(1, round(18 / vz)) if dims == 3 else 1, round(120 / vxy), round(120 / vxy))
        preset = presets[k % len(presets)]
        options = varied_sample_options(rng, preset) if vary_samples else {}
        options.update(scene_layout_options((seed, k), vary_layout))
        config = SimConfig(shape=shape, voxel_size=(vz, vxy, vxy), preset=preset,
                           seed=int(rng.integers(1_000_000, 2**31)), **options)
        out.append(simulation.simulate(config))
    return out


def calibrate_and_save(out: Path, presets, seed: int, dims: int = 3, n_volumes: int = 6,
                       vary_samples: bool = False, vary_layout: float = 0.0, device: str = "cpu") -> None:
    """Choose decoding thresholds on validation volumes (TPR − FDR at τL = 5) and store them."""
    model, spec = load_model(out.with_suffix(".json"))
    predictor = Predictor.from_modules([(model, spec)], device)
    best, table = calibrate_decoding(predictor, validation_set(list(presets), seed, n=n_volumes, dims=dims,
                                                                   vary_samples=vary_samples, vary_layout=vary_layout))
    row = best_row(table)
    # Refining Golgi ends on the image comes after pairing and is not part of the grid: a fixed radius
    # (benchmarks/RESULTS.md, "Golgi refinement": TPR at tauL=10 rose on our held-out volumes and the outside
    # renderer's alike).
    best = dataclasses.replace(best, golgi_refine_radius_um=GOLGI_REFINE_UM)
    provenance = dict(spec.provenance)
    provenance["calibration"] = {
        "method": f"grid search maximising TPR - FDR at tauL=5 on {n_volumes} simulator validation volumes",
        "presets": list(presets), "vary_samples": vary_samples, "vary_layout": vary_layout, "best": row,
        "settings_tried": len(table),
        "command": f"python -m app.training.starter --out {out} --dims {dims} --seed {seed} "
                   f"--calibration-volumes {n_volumes} --calibrate-only" + (" --vary-samples" if vary_samples else "")
                   + (f" --vary-layout {vary_layout:g}" if vary_layout else ""),
    }
    model, _ = load_model(out.with_suffix(".json"))
    save_model(out, model, ModelSpec(network=spec.network, voxel_size=spec.voxel_size, decoding=best,
                                     provenance=provenance, name=spec.name, description=spec.description))
    print(f"calibrated decoding: {best} (TPR {row['tpr']:.3f}, FDR {row['fdr']:.3f} at tauL=5)")


if __name__ == "__main__":
    sys.exit(main())
