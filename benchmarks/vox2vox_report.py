"""Vox2Vox on simulator data: held-out 3D SSIM after a CPU run, against a trivial baseline.

    .venv/bin/python benchmarks/vox2vox_report.py [--preset retina] [--n 4] [--shape 40 200 200] [--seed 1000] \
        [--steps 2000] [--patch 16 64 64] [--model-voxel-size 0.5 0.5 0.5] [--eval-every 200] \
        [--work DIR] [--model G.json] [--generate N]

Simulates ``--n`` volumes of a preset (``cellpol synth``; by default the four training volumes of
``benchmarks/finetune_report.py``, seed 1000), trains a generator on them as ``cellpol vox2vox train`` does
(one whole volume held out for the SSIM) — or, with ``--model``, evaluates a generator trained before on
the same folder — and prints:

- the SSIM between the held-out real volume and the generator's output from its own masks, per channel
  and as the mean of the two (ours), and the way the authors averaged it (a zero-filled third channel,
  whose SSIM is 1, averaged in: (2·ours + 1) / 3), which is what their 0.91 is comparable to;
- a baseline that needs no learning: the masks painted with each channel's mean intensity inside and
  outside them (what the generator must beat to have learned texture and blur);
- steps, minutes and seconds per step on this machine.

With ``--generate N`` it also writes N generated volumes to ``WORK/generated`` (for
``finetune_report.py --synthetic-dir``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def mask_baseline(volume) -> np.ndarray:
    """The masks painted with each channel's mean inside and outside them."""
    out = np.empty_like(volume.image)
    for c in range(volume.image.shape[0]):
        inside = volume.masks[c] > 0
        out[c] = np.where(inside, volume.image[c][inside].mean() if inside.any() else 0.0,
                          volume.image[c][~inside].mean())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="retina")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--shape", nargs=3, type=int, default=(40, 200, 200), metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=1000, help="simulator dataset seed (1000: finetune_report's train set)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--patch", nargs=3, type=int, default=(16, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--model-voxel-size", nargs=3, type=float, default=(0.5, 0.5, 0.5), metavar=("Z", "Y", "X"))
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--model", help="evaluate this generator (trained on WORK/train) instead of training one")
    parser.add_argument("--generate", type=int, default=0, metavar="N", help="also write N generated volumes")
    args = parser.parse_args(argv)

    from app.core.simulate import synthesize_dataset
    from app.training import dataset
    from app.training.vox2vox import (
        Vox2VoxOptions,
        evaluate_generator,
        generate,
        load_generator,
        masked_volume,
        ssim3d,
        train_vox2vox,
    )

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vox2vox_report_"))
    train_dir = work / "train"
    if not train_dir.exists():
        synthesize_dataset(train_dir, args.n, shape=tuple(args.shape), preset=args.preset, seed=args.seed)
    model = Path(args.model) if args.model else work / "generator.json"
    command = (f"cellpol vox2vox train --images {train_dir} --out {model.with_suffix('')} --steps {args.steps} "
               f"--patch {' '.join(map(str, args.patch))} --model-voxel-size "
               f"{' '.join(f'{v:g}' for v in args.model_voxel_size)} --eval-every {args.eval_every} "
               f"--device {args.device} --seed 0")
    print(f"preset {args.preset}, {args.n} volumes {tuple(args.shape)}; {command}", flush=True)
    if not args.model:
        options = Vox2VoxOptions(images=train_dir, out=model, steps=args.steps, patch_shape=tuple(args.patch),
                                 model_voxel_size=tuple(args.model_voxel_size), eval_every=args.eval_every,
                                 device=args.device, overwrite=True)
        for event in train_vox2vox(options):
            if event.kind == "info":
                print(event.message, flush=True)
            elif event.kind == "epoch":
                m = event.metrics
                print(f"step {event.step}: SSIM {m['ssim']:.3f} (nucleus {m['ssim_nucleus']:.3f}, Golgi "
                      f"{m['ssim_golgi']:.3f}); {event.seconds / event.step:.2f} s/step", flush=True)

    generator, spec, _ = load_generator(model, args.device)
    held_out = set(spec.provenance.get("validation_images", []))
    data = dataset.load_training_data(train_dir)
    items = [i for i in data.split.train + data.split.validation if i.name in held_out]
    volumes = [masked_volume(i, spec.voxel_size, spec.normalization, spec.boxes_um) for i in items]
    metrics = evaluate_generator(generator, volumes, args.device)
    baseline = np.mean([ssim3d(v.image, mask_baseline(v)) for v in volumes], axis=0)
    ours = metrics["ssim"]
    seconds = float(spec.provenance.get("training_seconds", float("nan")))
    steps = int(spec.provenance.get("steps", 0))
    print()
    print(f"Held-out volume(s) {', '.join(sorted(held_out))} at {'×'.join(f'{v:g}' for v in spec.voxel_size)} µm:")
    print(f"{'':24s} {'mean':>6s} {'nucleus':>8s} {'Golgi':>6s} {'authors-style':>14s}")
    print(f"{'Vox2Vox generator':24s} {ours:6.3f} {metrics['ssim_nucleus']:8.3f} {metrics['ssim_golgi']:6.3f} "
          f"{(2 * ours + 1) / 3:14.3f}")
    print(f"{'masks, mean intensities':24s} {baseline.mean():6.3f} {baseline[0]:8.3f} {baseline[1]:6.3f} "
          f"{(2 * baseline.mean() + 1) / 3:14.3f}")
    print(f"{steps} steps in {seconds / 60:.1f} min ({seconds / max(1, steps):.2f} s/step, {args.device}); "
          f"generator {model}")
    if args.generate:
        started = time.perf_counter()
        paths = generate(model, args.generate, work / "generated", seed=0, device=args.device)
        print(f"generated {len(paths)} volumes in {time.perf_counter() - started:.1f} s → {work / 'generated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
