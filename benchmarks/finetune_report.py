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
written as ``WORK/finetuned_synthetic`` so that a run without it in the same ``--work`` folder is kept;
``--synthetic N`` mixes N volumes of our own simulator the same way (``cellpol train --synthetic``).
``--augment NAME=P ...`` (e.g. ``appearance=0.5``) and ``--encoder-lr-scale S`` are ``cellpol train``'s.

``--renderer outside [--outside-config validation|ship] [--field Z Y X] [--layouts DIR]`` trains and tests on
volumes of ``benchmarks/outside_render.py`` (an independent renderer; train and test seeds disjoint, the test
set the configuration's reporting seeds or the real layouts of DIR). ``--seeds 0 1 2`` fine-tunes once per
seed (each in ``WORK/seedS``) and ends with per-seed rows and mean ± sd for starter and fine-tuned.
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


def make_volumes(args, seed: int, work: Path) -> tuple[Path, Path, Path]:
    """Train, test and (``--validation extra``) validation folders for one run seed, made if absent.

    Ours: the preset's volumes, train seeds ``1000 + seed``, test ``2000 + seed``, validation ``3000 + seed``.
    Outside (``benchmarks/outside_render.py``, ``--outside-config``): test volumes are the configuration's reporting
    seeds (``seed_base`` on, the same for every run seed) or, with ``--layouts``, the real layouts rendered by it;
    train seeds ``seed_base + 20000 + 100·seed`` and validation ``seed_base + 30000 + 100·seed`` never meet them.
    """
    train_dir, test_dir, val_dir = work / "train", work / "test", work / "val"
    if args.renderer == "ours":
        from app.core.simulate import synthesize_dataset

        common = dict(shape=tuple(args.shape), preset=args.preset)
        if not train_dir.exists():
            synthesize_dataset(train_dir, args.n_train, seed=1000 + seed, **common)
        if not test_dir.exists():
            synthesize_dataset(test_dir, args.n_test, seed=2000 + seed, **common)
        if args.validation == "extra" and not val_dir.exists():
            synthesize_dataset(val_dir, 1, seed=3000 + seed, **common)
        return train_dir, test_dir, val_dir

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import outside_render

    cfg = outside_render.get_config(args.outside_config)
    field = {"field_xy_um": args.field[1], "field_z_um": (args.field[0], args.field[0])}
    train_seed, val_seed = cfg.seed_base + 20_000 + 100 * seed, cfg.seed_base + 30_000 + 100 * seed
    if not train_dir.exists():
        outside_render.write_folder(train_dir, outside_render.outside_volumes(args.n_train, cfg, train_seed, **field))
    if not test_dir.exists():
        if args.layouts:
            items = outside_render.layout_volumes(args.layouts, cfg)
        else:
            items = outside_render.outside_volumes(args.n_test, cfg, cfg.seed_base, **field)
        outside_render.write_folder(test_dir, items)
    if args.validation == "extra" and not val_dir.exists():
        outside_render.write_folder(val_dir, outside_render.outside_volumes(1, cfg, val_seed, **field))
    return train_dir, test_dir, val_dir


def run_seed(args, seed: int, init: Path, work: Path) -> dict:
    """Fine-tune once with ``seed``: scores before and after, steps and times (and prints the run's table)."""
    from app.core.inference import Predictor

    train_dir, test_dir, val_dir = make_volumes(args, seed, work)
    what = (f"preset {args.preset}, volumes {tuple(args.shape)} at the preset's voxel size" if args.renderer == "ours"
            else f"outside renderer ({args.outside_config}), fields {tuple(args.field)} µm"
                 + (f", test: the layouts of {args.layouts}" if args.layouts else ""))
    print(f"seed {seed}: {what}; init {init}")
    n_test = len(list(test_dir.glob("*.tif")))
    started = time.perf_counter()
    before = score(Predictor.from_files([init], args.device), test_dir)
    print(f"starter on {n_test} test volumes ({before['gt']} GT pairs): {time.perf_counter() - started:.0f} s")

    from app.training.data import AugmentConfig
    from app.training.finetune import TrainingOptions, run_training

    if args.synthetic_dir:
        print(f"mixing in the volumes of {args.synthetic_dir} ({args.synthetic_fraction:.0%} of the patches)")
    if args.synthetic:
        print(f"mixing in {args.synthetic} volumes of our simulator ({args.synthetic_fraction:.0%} of the patches)")
    mixed = bool(args.synthetic_dir or args.synthetic)
    options = TrainingOptions(images=train_dir, out=work / ("finetuned_synthetic" if mixed else "finetuned"),
                              synthetic_dir=args.synthetic_dir, synthetic=args.synthetic,
                              synthetic_fraction=args.synthetic_fraction,
                              augment=AugmentConfig.from_dict(dict(args.augment or {})),
                              encoder_lr_scale=args.encoder_lr_scale,
                              init=init, steps=args.steps,
                              batch_size=args.batch_size, epoch_steps=args.epoch_steps, device=args.device,
                              seed=seed, val_images=val_dir if args.validation == "extra" else None,
                              overwrite=True, learning_rate=args.lr, init_share=args.init_share,
                              calibrate=args.calibrate, keep=args.keep,
                              **({"embedding_weight": args.embedding_weight} if args.embedding_weight is not None else {}))
    wall = time.perf_counter()
    model_path = None
    seconds = float("nan")
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
    source = f"'{args.preset}'" if args.renderer == "ours" else f"outside-rendered ({args.outside_config})"
    print(f"Fine-tuning the starter on {args.n_train} {source} volumes "
          f"({'one held out for validation' if args.validation == 'held-out' else 'plus one extra for validation'}), "
          f"tested on {n_test} others ({before['gt']} GT pairs), seed {seed}:")
    print(f"{'':8s} {'TPR@τL0':>8s} {'FDR@τL0':>8s} {'TPR@τL5':>8s} {'FDR@τL5':>8s} {'pred':>6s}")
    for label, m in (("before", before), ("after", after)):
        print(f"{label:8s} {m['tpr0']:8.3f} {m['fdr0']:8.3f} {m['tpr5']:8.3f} {m['fdr5']:8.3f} {m['pred']:6d}")
    from app.core.modelfile import load_spec

    tuned = load_spec(model_path)
    patch = "×".join(str(p) for p in tuned.provenance.get("patch_shape_zyx", []))
    print(f"decoding: {tuned.provenance.get('calibration', {}).get('method', 'calibrated')}")
    print(f"steps {args.steps} (batch {args.batch_size}, patches {patch} voxels), training "
          f"{seconds / 60:.1f} min including validations, median {np.median(step_times) if step_times else float('nan'):.2f}"
          f" s/step on {args.device} ({torch_threads()} threads); whole job {wall / 60:.1f} min; model {model_path}")
    return {"seed": seed, "before": before, "after": after, "minutes": wall / 60}


def summary(runs: list[dict]) -> str:
    """Per-seed rows and mean ± sd (sample sd; 0 for one run) of starter and fine-tuned scores."""
    keys = ("tpr0", "fdr0", "tpr5", "fdr5")
    lines = [f"{'seed':>6s} {'model':10s} " + " ".join(f"{k.upper().replace('0', '@τL0').replace('5', '@τL5'):>11s}"
                                                      for k in keys)]
    for run in runs:
        for label in ("before", "after"):
            name = "starter" if label == "before" else "finetuned"
            lines.append(f"{run['seed']:6d} {name:10s} " + " ".join(f"{run[label][k]:11.3f}" for k in keys))
    for label in ("before", "after"):
        name = "starter" if label == "before" else "finetuned"
        cells = []
        for k in keys:
            values = np.array([run[label][k] for run in runs])
            sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.3f}±{sd:.3f}")
        lines.append(f"{'mean':>6s} {name:10s} " + " ".join(f"{c:>11s}" for c in cells))
    return "\n".join(lines)


def _augment_item(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name, float(value)


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
                        help="volume shape in voxels at the preset's voxel size (--renderer ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="fine-tune once per seed (its own training volumes and training seed) and print "
                             "per-seed rows plus mean ± sd; overrides --seed")
    parser.add_argument("--renderer", choices=("ours", "outside"), default="ours",
                        help="who draws train and test volumes: our simulator's --preset (default) or "
                             "benchmarks/outside_render.py (never used to train a shipped model)")
    parser.add_argument("--outside-config", choices=("validation", "second", "ship"), default="validation")
    parser.add_argument("--field", nargs=3, type=float, default=(20.0, 66.6, 66.6), metavar=("Z", "Y", "X"),
                        help="--renderer outside: field of the random volumes in µm (y = x; x/y voxel 0.333 and "
                             "0.666 µm alternating)")
    parser.add_argument("--layouts", default=None, metavar="DIR",
                        help="--renderer outside: test on the real Crop*.csv layouts of DIR rendered by it")
    parser.add_argument("--validation", choices=("held-out", "extra"), default="held-out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--synthetic-dir", help="mix these generated volumes into fine-tuning (cellpol train --synthetic-dir)")
    parser.add_argument("--synthetic-fraction", type=float, default=0.5, help="share of patches drawn from them")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="mix N volumes of our simulator into fine-tuning (cellpol train --synthetic)")
    parser.add_argument("--augment", nargs="+", type=_augment_item, metavar="NAME=P",
                        help="augmentation probabilities other than the defaults, e.g. appearance=0.5 "
                             "(cellpol train --augment)")
    parser.add_argument("--encoder-lr-scale", type=float, default=1.0,
                        help="the encoder's learning rate against the rest's (cellpol train --encoder-lr-scale)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: cellpol train's)")
    parser.add_argument("--embedding-weight", type=float, default=None, help="pull/push weight (default: cellpol train's)")
    parser.add_argument("--init-share", type=float, default=None,
                        help="share of the starter's weights averaged in at the end (default: cellpol train's)")
    parser.add_argument("--calibrate", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--keep", choices=("auto", "best", "last"), default="auto",
                        help="for a study of every variant (benchmarks/finetune_levers.py): --init-share 0 "
                             "--calibrate always --keep best, so the run keeps what each variant needs")
    args = parser.parse_args(argv)
    if args.renderer == "ours" and args.layouts:
        parser.error("--layouts needs --renderer outside")
    if args.renderer == "outside" and args.field[1] != args.field[2]:
        parser.error("--field: Y and X must be equal")

    from app.core.inference import find_starter_model

    init = Path(args.init) if args.init else find_starter_model()
    if init is None or not Path(init).is_file():
        print(f"SKIPPED: starter model not found ({init or 'resources/models/*.json'}); pass --init PATH.")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetune_report_"))
    seeds = args.seeds if args.seeds else [args.seed]
    runs = []
    for seed in seeds:
        folder = work if args.seeds is None else work / f"seed{seed}"
        if args.renderer == "outside" and args.seeds is None:
            folder = work / "outside"
        runs.append(run_seed(args, seed, init, folder))
        print(flush=True)
    if len(runs) > 1 or args.seeds is not None:
        print(f"Starter vs fine-tuned over seeds {seeds} ({args.renderer}"
              + (f", {args.outside_config}" if args.renderer == "outside" else "") + "):")
        print(summary(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
