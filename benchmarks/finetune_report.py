"""Fine-tuning on a preset the starter model never saw: TPR/FDR before and after, time used.

    .venv/bin/python benchmarks/finetune_report.py --init resources/models/cellpol_starter.json \
        [--preset retina] [--n-train 4] [--n-test 16] [--steps 200] [--shape 40 200 200] [--seed 0] \
        [--validation held-out|extra] [--work DIR] [--threads N] [--synthetic-dir DIR [--synthetic-fraction F]]

What a user with four annotated images does: ``cellpol train --images FOUR/ --out MODEL`` (the default
recipe: fine-tune the starter, one of the four held out for validation and calibration; with
``--validation extra`` all four train and a fifth simulated volume validates). Sixteen *other* volumes of
the same preset (other seeds) are predicted with the starter and with the fine-tuned model and scored with
the paper's protocol. The starter model is trained on the confocal, confocal-low-snr and widefield presets,
so "retina" is new to it. Prints TPR/FDR at τL = 0 and 5 before and after, the steps, the minutes and the
seconds per step (CPU unless ``--device`` says otherwise). Without the starter model it says so and exits 0.

``--synthetic-dir DIR`` mixes generated volumes (``cellpol vox2vox generate`` or ``cellpol synth`` output) into
the fine-tuning, ``--synthetic-fraction`` of the patches (``cellpol train --synthetic-dir``); the model is then
written as ``WORK/finetuned_synthetic`` so that a run without it in the same ``--work`` folder is kept.
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


def score(predictor, folder: Path):
    from app.core import evaluate
    from app.core.imageio import find_images, read_volume
    from app.core.pairs import read_pairs

    scores = []
    for image in find_images([folder]):
        volume = read_volume(image)
        gt = read_pairs(image.with_name(image.name[: -len(".tif")] + ".vectors.csv"))
        scores.append(evaluate.score_pairs(gt, predictor(volume), image_shape=volume.spatial_shape, name=image.name))
    result = evaluate.aggregate(scores)
    return {"tpr0": float(np.nan_to_num(result.tpr[0])), "fdr0": float(np.nan_to_num(result.fdr[0])),
            "tpr5": float(np.nan_to_num(result.tpr[5])), "fdr5": float(np.nan_to_num(result.fdr[5])),
            "gt": int(sum(s.n_gt for s in scores)), "pred": int(sum(s.n_pred for s in scores))}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="starter model .json (default: the one in resources/models)")
    parser.add_argument("--preset", default="retina")
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=16,
                        help="test volumes (default 16, ~140 pairs: with 4, ~36 pairs, one cell moves TPR by 0.03)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epoch-steps", type=int, default=100)
    parser.add_argument("--shape", nargs=3, type=int, default=(40, 200, 200), metavar=("Z", "Y", "X"),
                        help="volume shape in voxels at the preset's voxel size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", choices=("held-out", "extra"), default="held-out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--synthetic-dir", help="mix these generated volumes into fine-tuning (cellpol train --synthetic-dir)")
    parser.add_argument("--synthetic-fraction", type=float, default=0.5, help="share of patches drawn from them")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: cellpol train's)")
    parser.add_argument("--embedding-weight", type=float, default=None, help="pull/push weight (default: cellpol train's)")
    args = parser.parse_args(argv)

    from app.core.inference import Predictor, find_starter_model
    from app.core.simulate import synthesize_dataset

    init = Path(args.init) if args.init else find_starter_model()
    if init is None or not Path(init).is_file():
        print(f"SKIPPED: starter model not found ({init or 'resources/models/*.json'}); pass --init PATH.")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetune_report_"))
    common = dict(shape=tuple(args.shape), preset=args.preset)
    train_dir, test_dir, val_dir = work / "train", work / "test", work / "val"
    if not train_dir.exists():
        synthesize_dataset(train_dir, args.n_train, seed=1000 + args.seed, **common)
    if not test_dir.exists():
        synthesize_dataset(test_dir, args.n_test, seed=2000 + args.seed, **common)
    if args.validation == "extra" and not val_dir.exists():
        synthesize_dataset(val_dir, 1, seed=3000 + args.seed, **common)

    print(f"preset {args.preset}, volumes {tuple(args.shape)} at the preset's voxel size; init {init}")
    started = time.perf_counter()
    before = score(Predictor.from_files([init], args.device), test_dir)
    print(f"starter on {args.n_test} test volumes ({before['gt']} GT pairs): {time.perf_counter() - started:.0f} s")

    from app.training.finetune import TrainingOptions, run_training

    if args.synthetic_dir:
        print(f"mixing in the volumes of {args.synthetic_dir} ({args.synthetic_fraction:.0%} of the patches)")
    options = TrainingOptions(images=train_dir, out=work / ("finetuned_synthetic" if args.synthetic_dir else "finetuned"),
                              synthetic_dir=args.synthetic_dir, synthetic_fraction=args.synthetic_fraction,
                              init=init, steps=args.steps,
                              batch_size=args.batch_size, epoch_steps=args.epoch_steps, device=args.device,
                              seed=args.seed, val_images=val_dir if args.validation == "extra" else None,
                              overwrite=True, learning_rate=args.lr,
                              **({"embedding_weight": args.embedding_weight} if args.embedding_weight is not None else {}))
    wall = time.perf_counter()
    model_path = None
    step_times: list[float] = []
    previous = None
    for event in run_training(options):
        if event.kind == "step":
            if previous is not None:
                step_times.append(event.seconds - previous)
            previous = event.seconds
        elif event.kind == "epoch":
            previous = None  # the validation that follows is not a step
        if event.kind == "info":
            print(event.message)
        elif event.kind == "baseline":
            print(f"baseline on validation: {event.metrics}")
        elif event.kind == "epoch":
            print(f"epoch {event.epoch} step {event.step}: loss {event.losses['total']:.4f} "
                  f"val {{tpr0 {event.metrics.get('tpr0', float('nan')):.3f} fdr0 {event.metrics.get('fdr0', float('nan')):.3f}"
                  f" j5 {event.metrics.get('j5', float('nan')):.3f}}} {event.seconds / event.step:.2f} s/step", flush=True)
        elif event.kind == "calibration":
            print(f"calibrated: {event.metrics}")
        elif event.kind == "done":
            model_path, seconds = event.path, event.seconds
    wall = time.perf_counter() - wall
    after = score(Predictor.from_files([model_path], args.device), test_dir)

    print()
    print(f"Fine-tuning the starter on {args.n_train} '{args.preset}' volumes "
          f"({'one held out for validation' if args.validation == 'held-out' else 'plus one extra for validation'}), "
          f"tested on {args.n_test} others ({before['gt']} GT pairs):")
    print(f"{'':8s} {'TPR@τL0':>8s} {'FDR@τL0':>8s} {'TPR@τL5':>8s} {'FDR@τL5':>8s} {'pred':>6s}")
    for label, m in (("before", before), ("after", after)):
        print(f"{label:8s} {m['tpr0']:8.3f} {m['fdr0']:8.3f} {m['tpr5']:8.3f} {m['fdr5']:8.3f} {m['pred']:6d}")
    from app.core.modelfile import load_spec

    tuned = load_spec(model_path)
    patch = "×".join(str(p) for p in tuned.provenance.get("patch_shape_zyx", []))
    print(f"decoding: {tuned.provenance.get('calibration', {}).get('method', 'calibrated')}")
    print(f"steps {args.steps} (batch {args.batch_size}, patches {patch} voxels), training "
          f"{seconds / 60:.1f} min including validations, median {np.median(step_times):.2f} s/step on "
          f"{args.device} ({torch_threads()} threads); whole job {wall / 60:.1f} min; model {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
