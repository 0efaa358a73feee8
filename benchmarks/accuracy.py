"""Accuracy on held-out simulator volumes: TPR/FDR at τL = 0 and 5 (the paper's protocol).

    .venv/bin/python benchmarks/accuracy.py [--model resources/models/cellpol_starter.json] \
        [--model OTHER.json ...] [--ensemble [A.json B.json]] [--n 8] [--presets retina confocal] \
        [--embedding-delta 1000] [--layouts ../shared/data/retina3d_vectors [--limit K]] [--failures]

Volumes come from seeds (≥ 10000) never used in training and, by default, the "retina" preset that the
starter model never saw (it is trained on the other presets), at voxel sizes drawn per volume. With
``--layouts DIR`` they instead follow real annotated layouts: one volume (or a few tiles) per ``Crop*.csv``
in DIR, whose cells sit where the annotators clicked them, at the crop's own voxel size (seeds ≥ 20000).
The classic Otsu peer always runs as the reference. Prints one table row per method.

``--renderer outside`` draws both kinds of volumes with ``benchmarks/outside_render.py`` instead, an
independent renderer unlike our simulator (other shapes, PSF, camera, stains, distractors), configuration
``--outside-config validation`` (seeds from 50000; x/y voxel 0.333 and 0.666 µm alternating) or ``ship``
(another microscope, seeds from 90000, looked at only when a model ships). With ``--layouts`` the same tiles
are rendered; ``--voxel-xy 0.666`` renders them at that x/y voxel. ``--field Z Y X`` (µm) shrinks the random
outside volumes (tests). The default, ``--renderer ours``, is unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

# The checkout this script lives in, not whichever one an editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core import evaluate  # noqa: E402
from app.core.classic import predict_classic  # noqa: E402
from app.core.pairs import PairSet, read_legacy_csv  # noqa: E402
from app.core.volume import Volume  # noqa: E402

#: Voxel size (z, y, x) µm of the real retina crops; Crop7_BC and Crop8_BC were imaged at 0.4 µm in z.
CROP_VOXEL_SIZE = (0.27, 0.333, 0.333)
CROP_VOXEL_SIZE_BY_NAME = {"Crop7_BC": (0.4, 0.333, 0.333), "Crop8_BC": (0.4, 0.333, 0.333)}
#: Empty margin (z, y, x) µm around a layout's pairs, and the largest y/x field of one layout volume.
LAYOUT_MARGIN_UM = (3.0, 10.0, 10.0)
LAYOUT_MAX_FIELD_UM = 200.0
LAYOUT_SEED = 20_000


def held_out_volumes(n: int, presets: list[str], seed: int = 10_000, dims: int = 3):
    from app.core.simulate import SimConfig, simulate

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


def crop_layouts(pairs: PairSet) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut one crop's pairs into tiles whose field (pairs' bounding box + :data:`LAYOUT_MARGIN_UM`) stays
    within about :data:`LAYOUT_MAX_FIELD_UM` in y/x; each tile keeps the pairs whose nucleus lies in it.

    Returns
    -------
    list of (nuclei_um, golgi_um)
        Per tile, the pairs in µm ``(z, y, x)``, not yet shifted into a field.
    """
    nuclei, golgi = pairs.nuclei_um, pairs.golgi_um
    margin = np.asarray(LAYOUT_MARGIN_UM)
    span = np.ptp(np.concatenate([nuclei, golgi]), axis=0)
    lo_n, hi_n = nuclei.min(axis=0), nuclei.max(axis=0)
    counts = [1] + [max(1, math.ceil((span[a] + 2 * margin[a]) / LAYOUT_MAX_FIELD_UM)) for a in (1, 2)]
    tiles = []
    for ty in range(counts[1]):
        for tx in range(counts[2]):
            keep = np.ones(len(nuclei), dtype=bool)
            for axis, t in ((1, ty), (2, tx)):
                edges = np.linspace(lo_n[axis], hi_n[axis], counts[axis] + 1)
                index = np.clip(np.searchsorted(edges, nuclei[:, axis], side="right") - 1, 0, counts[axis] - 1)
                keep &= index == t
            if keep.any():
                tiles.append((nuclei[keep], golgi[keep]))
    return tiles


def layout_volumes(folder: str, presets: list[str], limit: Optional[int] = None,
                   shapes_dir: Optional[str] = None) -> Iterator[tuple[Volume, PairSet]]:
    """Simulated volumes laid out like the real annotated crops ``Crop*.csv`` in ``folder``.

    Each crop (or tile, see :func:`crop_layouts`) gives one volume at the crop's voxel size, its field the
    pairs' bounding box plus :data:`LAYOUT_MARGIN_UM`, with the seed ``LAYOUT_SEED + 100·crop + tile``. Crops
    take ``presets`` in turn. ``limit`` keeps the first crops only. ``shapes_dir``: every nucleus and Golgi
    takes a real 3DNGMic mask shape (from the same retina data) instead of an analytic one.
    """
    from app.core.simulate import SimConfig, simulate

    files = sorted(Path(folder).glob("Crop*.csv"))
    if not files:
        raise SystemExit(f"No Crop*.csv files in {folder}.")
    margin = np.asarray(LAYOUT_MARGIN_UM)
    for k, path in enumerate(files[:limit]):
        voxel = np.asarray(CROP_VOXEL_SIZE_BY_NAME.get(path.stem, CROP_VOXEL_SIZE))
        pairs = read_legacy_csv(path, one_based=True, voxel_size=tuple(voxel))
        for t, (nuclei, golgi) in enumerate(crop_layouts(pairs)):
            points = np.concatenate([nuclei, golgi])
            origin = points.min(axis=0) - margin
            shape = tuple(int(n) for n in np.ceil((points.max(axis=0) + margin - origin) / voxel) + 1)
            config = SimConfig(shape=shape, voxel_size=tuple(float(v) for v in voxel), preset=presets[k % len(presets)],
                               seed=LAYOUT_SEED + 100 * k + t, layout_um=(nuclei - origin, golgi - origin),
                               shapes_dir=shapes_dir)
            volume, gt = simulate(config)
            gt.meta["image"] = f"{path.stem}#{t}"
            yield volume, gt


#: A peak within this many µm of an annotated nucleus / Golgi centroid counts as that object found.
FOUND_NUCLEUS_UM, FOUND_GOLGI_UM = 3.0, 2.0
#: A predicted end this close to a peak is that peak (mapped ends are clipped to the image by ≤ half a voxel;
#: two peaks of a class are at least the 1 µm minimum distance apart).
SAME_POINT_UM = 0.5


def failure_modes(predictor, volumes: list[tuple[Volume, PairSet]], outputs: Optional[list] = None) -> dict[str, int]:
    """Why a model misses cells and where its false vectors end, at τL = 0, inside the border margin.

    Missed cells split into: no nucleus peak, no Golgi peak, neither, or both found but not paired together
    (``paired_elsewhere``: the nucleus went to another Golgi peak, ``..._non_golgi``: one farther than
    :data:`FOUND_GOLGI_UM` from every annotated Golgi, ``..._closer`` / ``..._stronger``: that peak was nearer
    the nucleus / higher than the cell's own Golgi peak, ``own_golgi_unpaired``: the cell's Golgi peak went
    to no nucleus). False vectors: ``fp_non_golgi`` (ending on such a peak), ``fp_non_nucleus`` (starting
    on a peak far from every annotated nucleus). ``outputs``: the volumes' network outputs, if already run.
    """
    from collections import Counter

    from scipy.spatial.distance import cdist

    counts: Counter = Counter()
    for k, (volume, gt) in enumerate(volumes):
        output = outputs[k] if outputs is not None else predictor.run_network(volume)
        pred = predictor.decode(output)
        score = evaluate.score_pairs(gt, pred, image_shape=volume.spatial_shape)
        scale = np.asarray(gt.voxel_size, dtype=np.float64)
        (pos_n, _, h_n), (pos_g, _, h_g) = predictor.peaks(output)
        peaks_n = output.resampling.to_input(pos_n) * scale if len(pos_n) else np.zeros((0, 3))
        peaks_g = output.resampling.to_input(pos_g) * scale if len(pos_g) else np.zeros((0, 3))
        margin = evaluate.border_margin_voxels(7.0, scale[2])
        gt_inside = np.flatnonzero(evaluate.inside_border(gt, volume.spatial_shape[1:], margin))
        pred_inside = np.flatnonzero(evaluate.inside_border(pred, volume.spatial_shape[1:], margin))
        tp = score.tp_mask[0]
        tp_gt, tp_pred = set(score.matches["gt_index"][tp]), set(score.matches["pred_index"][tp])
        pred_n, pred_g = pred.nuclei_um, pred.golgi_um

        def nearest(points: np.ndarray, targets: np.ndarray) -> tuple[int, float]:
            if len(points) == 0 or len(targets) == 0:
                return -1, np.inf
            d = cdist(points[None], targets)[0]
            return int(d.argmin()), float(d.min())

        for i in gt_inside:
            counts["gt"] += 1
            if i in tp_gt:
                counts["found"] += 1
                continue
            a, dn = nearest(gt.nuclei_um[i], peaks_n)
            b, dg = nearest(gt.golgi_um[i], peaks_g)
            has_n, has_g = dn <= FOUND_NUCLEUS_UM, dg <= FOUND_GOLGI_UM
            if not (has_n or has_g):
                counts["missed_no_peaks"] += 1
                continue
            if not has_n or not has_g:
                counts["missed_no_nucleus_peak" if has_g else "missed_no_golgi_peak"] += 1
                continue
            own_paired = nearest(peaks_g[b], pred_g)[1] < SAME_POINT_UM
            counts["own_golgi_unpaired"] += int(not own_paired)
            k, dk = nearest(peaks_n[a], pred_n)
            if dk >= SAME_POINT_UM:
                counts["missed_nucleus_unpaired"] += 1
                continue
            counts["paired_elsewhere"] += 1
            c, _ = nearest(pred_g[k], peaks_g)
            counts["paired_elsewhere_non_golgi"] += int(nearest(pred_g[k], gt.golgi_um)[1] > FOUND_GOLGI_UM)
            counts["paired_elsewhere_closer"] += int(np.linalg.norm(pred_g[k] - peaks_n[a])
                                                     < np.linalg.norm(peaks_g[b] - peaks_n[a]))
            counts["paired_elsewhere_stronger"] += int(h_g[c] > h_g[b])
        for j in pred_inside:
            counts["predicted"] += 1
            if j in tp_pred:
                continue
            counts["fp"] += 1
            counts["fp_non_golgi"] += int(nearest(pred_g[j], gt.golgi_um)[1] > FOUND_GOLGI_UM)
            counts["fp_non_nucleus"] += int(nearest(pred_n[j], gt.nuclei_um)[1] > FOUND_NUCLEUS_UM)
    return dict(counts)


#: Radius (µm) within which a predicted pair end counts as finding a true nucleus or Golgi (per-class table).
DETECTION_RADIUS_UM = 3.0


def detection_stats(gt: PairSet, pred: PairSet, voxel_size) -> dict:
    """Per class (nucleus, Golgi): true objects, predicted pair ends, one-to-one matches within
    :data:`DETECTION_RADIUS_UM` and the matched distances (3D, and x/y for the Golgi) in µm."""
    from app.core.evaluate.matching import hungarian_match

    scale = np.asarray(voxel_size, dtype=float)
    out = {}
    for key in ("nuclei", "golgi"):
        truth = np.asarray(getattr(gt, key), dtype=float).reshape(-1, 3) * scale
        found = np.asarray(getattr(pred, key), dtype=float).reshape(-1, 3) * scale
        cost = np.linalg.norm(truth[:, None] - found[None], axis=2) if len(truth) and len(found) else np.zeros((0, 0))
        rows, cols, _ = hungarian_match(cost, DETECTION_RADIUS_UM)
        keep = cost[rows, cols] <= DETECTION_RADIUS_UM if len(rows) else np.zeros(0, bool)
        rows, cols = rows[keep], cols[keep]
        diff = truth[rows] - found[cols]
        out[key] = {"n_true": len(truth), "n_found": len(found), "matched": len(rows),
                    "error": np.linalg.norm(diff, axis=1), "xy": np.hypot(diff[:, 1], diff[:, 2])}
    return out


def summarise_detections(stats: list[dict]) -> dict:
    """Recall, precision and median localisation errors over all volumes of :func:`detection_stats`."""
    out = {}
    for key, name in (("nuclei", "nucleus"), ("golgi", "golgi")):
        matched = sum(s[key]["matched"] for s in stats)
        out[f"{name}_recall"] = matched / max(1, sum(s[key]["n_true"] for s in stats))
        out[f"{name}_precision"] = matched / max(1, sum(s[key]["n_found"] for s in stats))
        errors = np.concatenate([s[key]["error"] for s in stats]) if stats else np.zeros(0)
        xy = np.concatenate([s[key]["xy"] for s in stats]) if stats else np.zeros(0)
        out[f"{name}_error"] = float(np.median(errors)) if len(errors) else float("nan")
        if name == "golgi":
            out["golgi_xy"] = float(np.median(xy)) if len(xy) else float("nan")
            out["golgi_xy90"] = float(np.percentile(xy, 90)) if len(xy) else float("nan")
    return out


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
    parser.add_argument("--layouts", default=None, metavar="DIR",
                        help="volumes laid out like the real annotated Crop*.csv pairs in DIR (3D, the "
                             "crops' voxel sizes) instead of --n random ones")
    parser.add_argument("--shapes-dir", default=None, metavar="DIR",
                        help="with --layouts: draw every object from the real 3DNGMic masks in DIR (e.g. "
                             "../shared/data/shapes_3dngmic) instead of analytic shapes; real retina nuclei are "
                             "smaller than the analytic default, so fewer must shrink to fit the layout")
    parser.add_argument("--limit", type=int, default=None, metavar="K", help="with --layouts: the first K crops only")
    parser.add_argument("--renderer", choices=("ours", "outside"), default="ours",
                        help="who draws the volumes: our simulator (default) or benchmarks/outside_render.py")
    parser.add_argument("--outside-config", choices=("validation", "second", "ship"), default="validation",
                        help="with --renderer outside: its microscope configuration and seed range")
    parser.add_argument("--field", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                        help="with --renderer outside: the random volumes' field in µm (default 14–24 × 160 × 160)")
    parser.add_argument("--voxel-xy", type=float, default=None, metavar="UM",
                        help="with --renderer outside --layouts: render at this x/y voxel instead of the crops' own")
    parser.add_argument("--golgi-refine", type=float, default=None, metavar="UM",
                        help="also run each --model with its Golgi ends refined on the image within UM µm "
                             "(decoding golgi_refine_radius_um; 0: without)")
    parser.add_argument("--tta", action="store_true",
                        help="also run each --model with test-time augmentation (mirrored windows averaged)")
    parser.add_argument("--failures", action="store_true",
                        help="also break each --model's misses and false vectors down by cause (failure_modes)")
    args = parser.parse_args()

    if args.renderer == "outside":
        from benchmarks import outside_render

        if args.layouts is not None:
            volumes = list(outside_render.layout_volumes(args.layouts, args.outside_config, limit=args.limit,
                                                         voxel_xy=args.voxel_xy))
            source = f"{len(volumes)} outside-rendered ({args.outside_config}) layout volumes from {args.layouts}"
        else:
            kwargs = {}
            if args.field is not None:
                if args.field[1] != args.field[2]:
                    parser.error("--field: Y and X must be equal")
                kwargs = {"field_xy_um": args.field[1], "field_z_um": (args.field[0], args.field[0])}
            volumes = list(outside_render.outside_volumes(args.n, args.outside_config, **kwargs))
            source = f"{args.n} outside-rendered ({args.outside_config}) volumes"
        args.presets = ["-"]
    elif args.layouts is not None:
        volumes = list(layout_volumes(args.layouts, args.presets, args.limit, args.shapes_dir))
        source = f"{len(volumes)} layout volumes from {args.layouts}"
    else:
        volumes = list(held_out_volumes(args.n, args.presets, dims=args.dims))
        source = f"{args.n} held-out {args.dims}D volumes"
    methods = {"classic": predict_classic}
    if args.model:
        from app.core.inference import Predictor

        for path in args.model:
            methods[label(path, args.model)] = predictor = Predictor.from_files([path], args.device)
            if args.golgi_refine is not None:
                decoding = dataclasses.replace(predictor.decoding, golgi_refine_radius_um=args.golgi_refine)
                methods[f"{label(path, args.model)} refine={args.golgi_refine:g}"] = Predictor.from_files(
                    [path], args.device, decoding=decoding)
            if args.tta:
                methods[f"{label(path, args.model)} +TTA"] = Predictor.from_files([path], args.device, tta=True)
            if args.embedding_delta is not None:
                decoding = dataclasses.replace(predictor.decoding, embedding_delta=args.embedding_delta)
                methods[f"{label(path, args.model)} Δ={args.embedding_delta:g}"] = Predictor.from_files(
                    [path], args.device, decoding=decoding)
    if args.ensemble is not None:
        from app.core.inference import Predictor

        members = args.ensemble or args.model
        methods["ensemble(" + "+".join(label(p, members) for p in members) + ")"] = Predictor.from_files(members, args.device)
    print(f"{source}, presets {args.presets}, {sum(len(p) for _, p in volumes)} GT pairs")
    print(f"{'method':28s} {'TPR@0':>7s} {'FDR@0':>7s} {'TPR@5':>7s} {'FDR@5':>7s} {'TPR@10':>7s} {'cos@0':>7s} "
          f"{'s/vol':>7s}")
    outputs: dict[str, list] = {}  # network outputs kept for --failures, so it does not run them again
    details = {}
    for name, method in methods.items():
        scores, seconds, detections = [], [], []
        keep = args.failures and getattr(method, "architecture", None) == "cellpol"
        for volume, gt in volumes:
            started = time.perf_counter()
            if keep:
                output = method.run_network(volume)
                outputs.setdefault(name, []).append(output)
                pred = method.decode(output)
            else:
                pred = method(volume)
            seconds.append(time.perf_counter() - started)
            scores.append(evaluate.score_pairs(gt, pred, image_shape=volume.spatial_shape))
            detections.append(detection_stats(gt, pred, volume.voxel_size))
        result = evaluate.aggregate(scores)
        cos = result.mean["cos"][0]
        print(f"{name:28s} {result.tpr[0]:7.3f} {result.fdr[0]:7.3f} {result.tpr[5]:7.3f} {result.fdr[5]:7.3f} "
              f"{result.tpr[10]:7.3f} {cos:7.3f} {np.median(seconds):7.2f}", flush=True)
        details[name] = summarise_detections(detections)
    print(f"\nper class, within {DETECTION_RADIUS_UM:g} µm (pair ends against true objects; errors: median of the "
          "matched, µm)")
    print(f"{'method':28s} {'N rec':>7s} {'N prec':>7s} {'G rec':>7s} {'G prec':>7s} {'N err':>7s} {'G err':>7s} "
          f"{'G xy':>7s} {'G xy90':>7s}")
    for name, d in details.items():
        print(f"{name:28s} {d['nucleus_recall']:7.3f} {d['nucleus_precision']:7.3f} {d['golgi_recall']:7.3f} "
              f"{d['golgi_precision']:7.3f} {d['nucleus_error']:7.2f} {d['golgi_error']:7.2f} {d['golgi_xy']:7.2f} "
              f"{d['golgi_xy90']:7.2f}")
    if args.failures:
        for path in args.model:
            name = label(path, args.model)
            if name in outputs:
                print(f"failure modes at τL = 0, {name}: {failure_modes(methods[name], volumes, outputs[name])}")


if __name__ == "__main__":
    main()
