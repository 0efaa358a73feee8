"""Reproducible training of the bundled starter model on broad simulator data.

    python -m app.training.starter --out resources/models/cellpol_starter --steps 3000 --seed 0 \
        [--shapes-dir ../shared/data/shapes_3dngmic] [--device cpu]

The data are simulator volumes at random voxel sizes (0.2–0.8 µm in x/y, 0.25–1 µm in z), all presets,
optionally the real 3DNGMic object masks, resampled to the model's voxel size as user images are.
The pool is partly regenerated every ``--refresh-every`` steps so the model sees thousands of scenes.
A killed run resumes from ``<out>.checkpoints/``.
"""

from __future__ import annotations

import os

# Torch's OpenMP threads busy-wait by default, which slows everything else on a small machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from app.core.modelfile import DecodingSpec, ModelSpec, load_model, save_model
from app.core.network import NetworkConfig
from app.training.data import PatchSampler, synthetic_pool
from app.training.trainer import TrainConfig, train, train_config_dict

MODEL_VOXEL_SIZE = (1.0, 0.5, 0.5)
PATCH_SHAPE = (16, 128, 128)
TRAIN_PRESETS = ("confocal", "confocal-low-snr", "widefield")


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
    parser.add_argument("--patch", nargs=3, type=int, default=PATCH_SHAPE, metavar=("Z", "Y", "X"))
    parser.add_argument("--calibrate-only", action="store_true",
                        help="skip training: calibrate the decoding of the existing <out>.json and save it again")
    parser.add_argument("--presets", nargs="+", default=list(TRAIN_PRESETS),
                        help="simulator presets to train on (default leaves 'retina' out for held-out tests)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if args.calibrate_only:
        calibrate_and_save(out, args.presets, args.seed)
        return 0
    checkpoints = out.with_name(out.name + ".checkpoints")
    network = NetworkConfig.for_voxel_size(MODEL_VOXEL_SIZE, architecture=args.architecture,
                                           base_filters=args.base_filters)
    patch_shape = tuple(args.patch)
    config = TrainConfig(steps=args.steps, batch_size=args.batch, learning_rate=args.lr, seed=args.seed,
                         device=args.device, checkpoint_every=100)
    provenance = {
        "trained_by": "python -m app.training.starter " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": "cellpol simulator, voxel sizes xy U(0.2,0.8) z U(0.25,1.0) µm"
                + (", 40% real 3DNGMic masks" if args.shapes_dir else ""),
        "presets": list(args.presets), "pool_volumes": args.pool, "refresh_every": args.refresh_every,
        "patch_shape_zyx": list(patch_shape),
        "train": train_config_dict(config), "host": platform.node(), "python": platform.python_version(),
    }
    spec = ModelSpec(network=network, voxel_size=MODEL_VOXEL_SIZE, decoding=DecodingSpec(),
                     provenance=provenance, name=out.name,
                     description="Starter model trained on broad simulator data; fine-tune on your own images.")

    def new_pool(n: int, seed: int):
        return synthetic_pool(n, MODEL_VOXEL_SIZE, seed, presets=args.presets, shapes_dir=args.shapes_dir)

    sampler = PatchSampler(new_pool(args.pool, args.seed * 1000), patch_shape)
    started = time.time()
    for event in train(spec, sampler, config, checkpoints):
        if event.kind == "step":
            if event.step % 10 == 0:
                loss = event.losses
                print(f"step {event.step}/{event.total_steps} total {loss['total']:.4f} heat {loss['heatmap']:.4f} "
                      f"pull {loss['pull']:.4f} push {loss['push']:.4f} lr {event.learning_rate:.2e} "
                      f"{event.seconds:.0f}s", flush=True)
            if event.step % args.refresh_every == 0:
                # Replace a quarter of the pool with new scenes (seeded by the step: reproducible).
                fresh = new_pool(max(1, args.pool // 4), args.seed * 1000 + event.step)
                start = (event.step // args.refresh_every) * len(fresh) % args.pool
                for i, volume in enumerate(fresh):
                    sampler.volumes[(start + i) % args.pool] = volume
        elif event.kind == "checkpoint":
            print(f"checkpoint {event.path}", flush=True)
    model, _ = load_model(checkpoints / "last.json")
    provenance["wall_seconds"] = round(time.time() - started, 1)
    final = ModelSpec(network=network, voxel_size=MODEL_VOXEL_SIZE, decoding=spec.decoding,
                      provenance=provenance, name=spec.name, description=spec.description)
    path = save_model(out, model, final)
    print(f"saved {path}")
    calibrate_and_save(out, args.presets, args.seed)
    return 0


def validation_set(presets, seed: int, n: int = 6):
    """Simulator volumes from seeds the training pool never uses (pool seeds are < 1e6)."""
    from app.core.simulate import SimConfig, simulate

    rng = np.random.default_rng(7_000_000 + seed)
    out = []
    for k in range(n):
        vxy, vz = float(rng.uniform(0.25, 0.7)), float(rng.uniform(0.3, 1.0))
        shape = (max(1, round(18 / vz)), round(120 / vxy), round(120 / vxy))
        config = SimConfig(shape=shape, voxel_size=(vz, vxy, vxy), preset=presets[k % len(presets)],
                           seed=int(rng.integers(1_000_000, 2**31)))
        out.append(simulate(config))
    return out


def calibrate_and_save(out: Path, presets, seed: int) -> None:
    """Choose decoding thresholds on validation volumes (TPR − FDR at τL = 5) and store them."""
    from app.core.inference import Predictor
    from app.training.calibrate import best_row, calibrate_decoding

    model, spec = load_model(out.with_suffix(".json"))
    predictor = Predictor.from_modules([(model, spec)], "cpu")
    best, table = calibrate_decoding(predictor, validation_set(list(presets), seed))
    row = best_row(table)
    provenance = dict(spec.provenance)
    provenance["calibration"] = {
        "method": "grid search maximising TPR - FDR at tauL=5 on 6 simulator validation volumes",
        "presets": list(presets), "best": row, "settings_tried": len(table),
        "command": "python -m app.training.starter --out " + str(out) + " --calibrate-only",
    }
    model, _ = load_model(out.with_suffix(".json"))
    save_model(out, model, ModelSpec(network=spec.network, voxel_size=spec.voxel_size, decoding=best,
                                     provenance=provenance, name=spec.name, description=spec.description))
    print(f"calibrated decoding: {best} (TPR {row['tpr']:.3f}, FDR {row['fdr']:.3f} at tauL=5)")


if __name__ == "__main__":
    sys.exit(main())
