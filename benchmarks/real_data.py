"""How the shipped models do on the real files in ../shared/data (data the simulator never made).

    .venv/bin/python benchmarks/real_data.py [--data ../shared/data] [--model MODEL.json ...]

1. ``huvec2d``: a real 2D image of endothelial cells (Golgi ch0, nuclei ch2, 0.415 µm/px) with Cellpose
   cell and nucleus masks. Reference pairs are *derived*, not hand-clicked: the nucleus centroid is its
   mask's centroid; the Golgi centroid is the intensity-weighted centroid of the Golgi-channel pixels above
   Otsu's threshold inside the same cell. Scored with the paper's 2D protocol (TPR/FDR at τL = 0 and 5)
   for the classic peer and for the 2D starter model (or each ``--model``).
2. ``neubias/xyc_16bit__nuclei_golgi.tif`` (2D, ~7 cells) and ``neubias/xyzc_16bit__dna_conf_wf.tif``
   (3D ZCYX, two DNA channels: not a nucleus/Golgi pair, a distractor case): no reference, so the script
   prints how many vectors each method finds and their median length, to catch absurd output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core import evaluate  # noqa: E402
from app.core.classic import predict_classic  # noqa: E402
from app.core.imageio import read_volume  # noqa: E402
from app.core.pairs import PairSet  # noqa: E402

HUVEC = "huvec2d/060721_EGM2_18dyn_02_small"


def huvec_reference(data: Path):
    """The huvec2d volume and pairs derived from its Cellpose masks (see the module docstring)."""
    import tifffile
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    volume = read_volume(data / (HUVEC + ".tif"), nucleus_channel=2, golgi_channel=0)
    cells = tifffile.imread(data / (HUVEC + "_seg_masks.tif"))
    nuclei = tifffile.imread(data / (HUVEC + "_seg_nuc_masks.tif"))
    golgi = ndimage.gaussian_filter(np.asarray(volume.golgi[0], dtype=np.float64), 1.0)
    rows = []
    for label in np.unique(nuclei)[1:]:
        mask = nuclei == label
        cell = int(np.bincount(cells[mask]).argmax())
        if cell == 0:
            continue
        inside = cells == cell
        values = golgi[inside]
        keep = inside & (golgi > threshold_otsu(values))
        weights = golgi[keep]
        gy, gx = (np.argwhere(keep) * weights[:, None]).sum(0) / weights.sum()
        ny, nx = np.argwhere(mask).mean(0)
        rows.append(((0.0, ny, nx), (0.0, gy, gx)))
    nuc = np.array([r[0] for r in rows])
    gol = np.array([r[1] for r in rows])
    return volume, PairSet(nuc, gol, voxel_size=volume.voxel_size)


def describe(pairs: PairSet) -> str:
    if len(pairs) == 0:
        return "0 vectors"
    return f"{len(pairs)} vectors, median length {np.median(pairs.lengths_um):.1f} µm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", action="append", default=[], help="model .json (default: the starter models)")
    args = parser.parse_args()

    from accuracy import label  # benchmarks/ is on sys.path when this runs as a script

    from app.core.inference import Predictor, StarterPredictor

    methods = {"classic": predict_classic}
    if args.model:
        for path in args.model:
            methods[label(path, args.model)] = Predictor.from_files([path], "cpu")
    else:
        methods["starter"] = StarterPredictor("cpu")

    volume, reference = huvec_reference(args.data)
    print(f"huvec2d: {volume.spatial_shape}, voxel {volume.voxel_size[1]:.3f} µm, {len(reference)} derived pairs "
          f"(median length {np.median(reference.lengths_um):.1f} µm)")
    print(f"{'method':24s} {'TPR@0':>7s} {'FDR@0':>7s} {'TPR@5':>7s} {'FDR@5':>7s} {'found':>6s} {'s':>6s}")
    for name, method in methods.items():
        started = time.perf_counter()
        try:
            pred = method(volume)
        except Exception as exc:  # report and go on: a missing 2D model is a result too
            print(f"{name:24s} failed: {exc}")
            continue
        seconds = time.perf_counter() - started
        result = evaluate.aggregate([evaluate.score_pairs(reference, pred, image_shape=volume.spatial_shape)])
        print(f"{name:24s} {result.tpr[0]:7.3f} {result.fdr[0]:7.3f} {result.tpr[5]:7.3f} {result.fdr[5]:7.3f} "
              f"{len(pred):6d} {seconds:6.1f}")

    others = [("neubias 2D nuclei+Golgi", "neubias/xyc_16bit__nuclei_golgi.tif", {}),
              ("neubias 3D DNA conf/wf", "neubias/xyzc_16bit__dna_conf_wf.tif", {})]
    for label, rel, options in others:
        volume = read_volume(args.data / rel, **options)
        for name, method in methods.items():
            try:
                print(f"{label} {volume.spatial_shape}: {name}: {describe(method(volume))}")
            except Exception as exc:
                print(f"{label}: {name}: failed: {exc}")


if __name__ == "__main__":
    main()
