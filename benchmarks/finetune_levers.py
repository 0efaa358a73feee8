"""What each part of the fine-tuning recipe buys, measured on runs ``finetune_report.py --seeds`` left behind.

    .venv/bin/python benchmarks/finetune_levers.py --init STARTER.json RUN [RUN ...] [--threads N]

Each RUN is a ``WORK/seedS`` folder of ``benchmarks/finetune_report.py`` (``train/``, ``test/``,
``finetuned.json`` and ``finetuned.checkpoints/``). Without training again, every run's held-out ``test/``
volumes are scored (the paper's protocol, TPR / FDR at τL = 0) with:

- ``starter``: the initial model, as shipped;
- ``starter+bn``: the starter with its batch-norm statistics re-estimated on the run's training images
  (no gradient step: "normalisation statistics" alone, AdaBN);
- ``W/D`` for weights W and decoding D: W is ``best`` (the best validation epoch), ``last`` (the last
  weights; stopping), ``wise-best`` or ``wise-last`` (those averaged half and half with the starter's, WiSE-FT,
  :func:`app.training.average.average_modules`); D is ``cal`` (the decoding ``cellpol train`` calibrated on
  the validation images for the weights it kept) or ``init`` (the starter's: calibration off). The model
  ``cellpol train`` wrote is the row marked ``*`` (its kept weights with ``cal``).

Prints one row per run and variant, then per variant the mean ± sd over runs of TPR, FDR and TPR − FDR
and in how many runs it beat the starter.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Patches (model voxels) and how many the batch-norm statistics are re-estimated on.
BN_PATCH = (16, 96, 96)
BN_BATCHES = 24
BN_BATCH_SIZE = 4


def renormalized(init: Path, train_dir: Path, seed: int = 0):
    """The model of ``init`` with batch-norm running statistics re-estimated on random patches of the images
    in ``train_dir`` (resampled and normalised as prediction does); ``(module, spec)`` in eval mode."""
    import torch

    from app.core.imageio import find_images, read_volume
    from app.core.modelfile import load_model
    from app.core.preprocess import normalize, resample

    model, spec = load_model(init)
    norm = spec.normalization
    volumes = []
    for image in find_images([train_dir]):
        volume = read_volume(image)
        data, _ = resample(np.stack([volume.nucleus, volume.golgi]), volume.voxel_size, spec.voxel_size)
        data = normalize(data, norm.low_percentile, norm.high_percentile, norm.clip)
        pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(BN_PATCH, data.shape[1:])]
        volumes.append(np.pad(data, pad, mode="reflect") if any(p[1] for p in pad) else data)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over every batch
    rng = np.random.default_rng(seed)
    model.train()
    with torch.no_grad():
        for _ in range(BN_BATCHES):
            batch = []
            for _ in range(BN_BATCH_SIZE):
                data = volumes[rng.integers(len(volumes))]
                start = [rng.integers(s - p + 1) for s, p in zip(data.shape[1:], BN_PATCH)]
                batch.append(data[:, start[0]:start[0] + BN_PATCH[0], start[1]:start[1] + BN_PATCH[1],
                                  start[2]:start[2] + BN_PATCH[2]])
            model(torch.from_numpy(np.stack(batch)))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    return model, spec


def variants(init: Path, run: Path):
    """``(name, predictor)`` for every variant of one run (see the module docstring)."""
    from app.core.inference import Predictor
    from app.core.modelfile import load_model, load_spec

    from app.training.average import average_modules

    starter_spec = load_spec(init)
    final = run / "finetuned.json"
    kept = json.loads(final.read_text(encoding="utf-8"))["provenance"].get("weights_from", "last")
    decodings = {"cal": load_spec(final).decoding, "init": starter_spec.decoding}
    yield "starter", Predictor.from_files([init], "cpu")
    yield "starter+bn", Predictor.from_modules([renormalized(init, run / "train")], "cpu")
    starter_module, _ = load_model(init)
    for weights in ("best", "last", "wise-best", "wise-last"):
        checkpoint = run / "finetuned.checkpoints" / f"{weights.split('-')[-1]}.json"
        if not checkpoint.is_file():
            continue
        module, spec = load_model(checkpoint)
        if weights.startswith("wise"):
            module.load_state_dict(average_modules([module, starter_module], [0.5, 0.5]))
        for decoding in ("cal", "init"):  # the predictor folds batch norm on a copy: one module serves both
            mark = "*" if weights == kept and decoding == "cal" else ""
            yield f"{weights}/{decoding}{mark}", Predictor.from_modules(
                [(module, dataclasses.replace(spec, decoding=decodings[decoding]))], "cpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True, help="the starter the runs fine-tuned")
    parser.add_argument("runs", nargs="+", type=Path, help="finetune_report.py seed folders")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from benchmarks.finetune_report import score

    table: dict[str, list[dict]] = {}
    print(f"{'run':28s} {'variant':24s} {'TPR@τL0':>8s} {'FDR@τL0':>8s} {'TPR-FDR':>8s} {'pred':>5s}")
    for run in args.runs:
        for name, predictor in variants(args.init, run):
            m = score(predictor, run / "test")
            key = name.rstrip("*")
            table.setdefault(key, []).append(m)
            if name.endswith("*"):
                table.setdefault("default", []).append(m)
            print(f"{str(run)[-28:]:28s} {name:24s} {m['tpr0']:8.3f} {m['fdr0']:8.3f} "
                  f"{m['tpr0'] - m['fdr0']:8.3f} {m['pred']:5d}", flush=True)
    print()
    starter = np.array([m["tpr0"] - m["fdr0"] for m in table["starter"]])
    print(f"{'variant':16s} {'TPR@τL0':>13s} {'FDR@τL0':>13s} {'TPR-FDR':>13s} {'beats starter':>14s}")
    for key, rows in table.items():
        def ms(values):
            values = np.asarray(values, dtype=float)
            return f"{values.mean():.3f}±{(values.std(ddof=1) if len(values) > 1 else 0.0):.3f}"
        j = np.array([m["tpr0"] - m["fdr0"] for m in rows])
        wins = int(np.sum(j > starter[:len(j)])) if len(j) == len(starter) else -1
        print(f"{key:16s} {ms([m['tpr0'] for m in rows]):>13s} {ms([m['fdr0'] for m in rows]):>13s} "
              f"{ms(j):>13s} {f'{wins}/{len(j)}':>14s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
