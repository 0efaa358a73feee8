"""Accuracy on held-out simulator volumes: TPR/FDR at τL = 0 and 5 (the paper's protocol).

    .venv/bin/python benchmarks/accuracy.py [--model resources/models/cellpol_starter.json] \
        [--model OTHER.json ...] [--ensemble [A.json B.json]] [--n 8] [--presets retina confocal] \
        [--embedding-delta 1000]

Volumes come from seeds (≥ 10000) never used in training and, by default, the "retina" preset that the
starter model never saw (it is trained on the other presets), at voxel sizes drawn per volume. The
classic Otsu peer always runs as the reference. Prints one table row per method.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from app.core import evaluate
from app.core.classic import predict_classic
from app.core.simulate import SimConfig, simulate


def held_out_volumes(n: int, presets: list[str], seed: int = 10_000, dims: int = 3):
    rng = np.random.default_rng(seed)
    for k in range(n):
        vxy = float(rng.uniform(0.25, 0.7))
        vz = float(rng.uniform(0.3, 1.0))
        field = (float(rng.uniform(14, 24)), 160.0, 160.0)
        shape = tuple(max(1, int(round(f / v))) for f, v in zip(field, (vz, vxy, vxy)))
        if dims == 2:
            shape = (1,) + shape[1:]
        config = SimConfig(shape=shape, voxel_size=(vz, vxy, vxy), preset=presets[k % len(presets)],
                           seed=seed + k)
        yield simulate(config)


def label(path: str, paths: list[str]) -> str:
    """A model's name in the table: its file stem, with its folder where another of ``paths`` shares it."""
    stem = Path(path).stem
    return stem if [Path(p).stem for p in paths].count(stem) == 1 else f"{Path(path).parent.name}/{stem}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="model .json (repeatable)")
    parser.add_argument("--ensemble", nargs="*", default=None, metavar="MODEL",
                        help="also run these model files (default: all --model files) as one ensemble")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--presets", nargs="+", default=["retina"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="2: single-plane images")
    parser.add_argument("--embedding-delta", type=float, default=None, metavar="DELTA",
                        help="also run each --model decoded with this embedding margin (e.g. 1000: the "
                             "embeddings ignored, pairing by distance and peak strength alone)")
    args = parser.parse_args()

    volumes = list(held_out_volumes(args.n, args.presets, dims=args.dims))
    methods = {"classic": predict_classic}
    if args.model:
        from app.core.inference import Predictor

        for path in args.model:
            methods[label(path, args.model)] = predictor = Predictor.from_files([path], args.device)
            if args.embedding_delta is not None:
                decoding = dataclasses.replace(predictor.decoding, embedding_delta=args.embedding_delta)
                methods[f"{label(path, args.model)} Δ={args.embedding_delta:g}"] = Predictor.from_files(
                    [path], args.device, decoding=decoding)
    if args.ensemble is not None:
        from app.core.inference import Predictor

        members = args.ensemble or args.model
        methods["ensemble(" + "+".join(label(p, members) for p in members) + ")"] = Predictor.from_files(members, args.device)
    print(f"{args.n} held-out {args.dims}D volumes, presets {args.presets}, "
          f"{sum(len(p) for _, p in volumes)} GT pairs")
    print(f"{'method':28s} {'TPR@0':>7s} {'FDR@0':>7s} {'TPR@5':>7s} {'FDR@5':>7s} {'cos@0':>7s} {'s/vol':>7s}")
    for name, method in methods.items():
        scores, seconds = [], []
        for volume, gt in volumes:
            started = time.perf_counter()
            pred = method(volume)
            seconds.append(time.perf_counter() - started)
            scores.append(evaluate.score_pairs(gt, pred, image_shape=volume.spatial_shape))
        result = evaluate.aggregate(scores)
        cos = result.mean["cos"][0]
        print(f"{name:28s} {result.tpr[0]:7.3f} {result.fdr[0]:7.3f} {result.tpr[5]:7.3f} {result.fdr[5]:7.3f} "
              f"{cos:7.3f} {np.median(seconds):7.2f}")


if __name__ == "__main__":
    main()
