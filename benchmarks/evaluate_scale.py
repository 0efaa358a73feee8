"""How fast scoring runs on very large vector sets, and how much memory it needs.

Run from the project root::

    .venv/bin/python benchmarks/evaluate_scale.py [--n 1000000] [--repeats 3]

Builds ``--n`` ground-truth cells on a jittered 12 µm grid (voxel 1 × 0.666 × 0.666 µm) and as many
predictions: 90 % of the cells found with 1.5 µm (nucleus) and 1 µm (Golgi) noise per axis, the rest
strays. Then scores them with :func:`app.core.evaluate.score_pairs` (7 µm border, 3D protocol)
``--repeats`` times, each in a fresh process that loads the saved sets first, so each peak RSS is that of
one scoring. Prints the median wall time of ``score_pairs`` and of its matching step
(:func:`~app.core.evaluate.match_within_radius`), the RSS before scoring and the largest peak, the counts,
and the CPU. Quote medians; this machine may be shared.

The dense cost matrix the scoring used before would hold ``n_pred × n_gt`` float64 entries: 7.3 TiB at
10^6 a side (74.5 GiB at 10^5), several times over with its temporaries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

VOXEL = (1.0, 0.666, 0.666)
SPACING_UM = 12.0


def _rss_mb(kind: str) -> float:
    """Current (``"now"``, from /proc) or peak (``"peak"``) resident memory of this process in MB."""
    if kind == "now":
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return math.nan
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 1024.0**2


def cell_grid(n: int, seed: int, voxel=VOXEL, spacing: float = SPACING_UM):
    """n cells on a jittered grid ``spacing`` µm apart; predictions find 90 % with 1–1.5 µm noise, the rest
    are strays. Returns ground-truth and predicted nuclei and Golgi in voxels and an image shape holding them
    (also used by tests/test_evaluate_honest.py)."""
    rng = np.random.default_rng(seed)
    side = int(math.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    nuclei = (grid + 1) * spacing + rng.uniform(-3, 3, (n, 3))
    direction = rng.normal(size=(n, 3))
    golgi = nuclei + direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(3, 7, (n, 1))
    found = rng.random(n) < 0.9
    extent = (side + 1) * spacing
    strays = rng.uniform(spacing / 2, extent - spacing / 2, (n - found.sum(), 3))
    pred_n = np.concatenate([nuclei[found] + rng.normal(0, 1.5, (found.sum(), 3)), strays])
    pred_g = np.concatenate([golgi[found] + rng.normal(0, 1.0, (found.sum(), 3)), strays + [0, 0, 5]])
    v = np.asarray(voxel)
    shape = tuple(int(math.ceil(extent / s)) + 1 for s in v)
    return {"gt_n": nuclei / v, "gt_g": golgi / v, "pred_n": pred_n / v, "pred_g": pred_g / v, "shape": shape}


def run_once(data_path: Path) -> dict:
    """One scoring in this process (called in a fresh one by :func:`main`)."""
    from app.core import evaluate
    from app.core.evaluate import scoring
    from app.core.pairs import PairSet

    data = np.load(data_path)
    gt = PairSet(data["gt_n"], data["gt_g"], voxel_size=VOXEL)
    pred = PairSet(data["pred_n"], data["pred_g"], voxel_size=VOXEL, sources="predicted")
    shape = tuple(int(s) for s in data["shape"])
    del data
    rss_before = _rss_mb("now")
    matching = []
    original = scoring.match_within_radius  # where score_pairs looks it up

    def timed_match(*args, **kwargs):
        started = time.perf_counter()
        out = original(*args, **kwargs)
        matching.append(time.perf_counter() - started)
        return out

    scoring.match_within_radius = timed_match
    started = time.perf_counter()
    score = evaluate.score_pairs(gt, pred, image_shape=shape)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "matching_seconds": matching[0], "rss_before_mb": rss_before,
        "peak_rss_mb": _rss_mb("peak"), "n_gt": score.n_gt, "n_pred": score.n_pred,
        "tp_level0": int(score.tp[0]), "tp_level5": int(score.tp[5]), "tpr_level5": float(score.tpr[5]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="ground-truth cells (and predictions)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-once", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_once is not None:
        print(json.dumps(run_once(args.run_once)))
        return

    with tempfile.TemporaryDirectory() as folder:
        data_path = Path(folder) / "sets.npz"
        started = time.perf_counter()
        sets = cell_grid(args.n, args.seed)
        np.savez(data_path, **sets)
        print(f"built {len(sets['gt_n'])} ground-truth and {len(sets['pred_n'])} predicted pairs in "
              f"{time.perf_counter() - started:.1f} s (image {'×'.join(map(str, sets['shape']))} voxels)")
        del sets
        runs = []
        for k in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--run-once", str(data_path)], check=True,
                                 capture_output=True, text=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(f"run {k + 1}: score_pairs {run['seconds']:.2f} s (matching {run['matching_seconds']:.2f} s), "
                  f"RSS before {run['rss_before_mb']:.0f} MB, peak {run['peak_rss_mb']:.0f} MB")
    last = runs[-1]
    print(f"scored after border exclusion: {last['n_gt']} ground truth, {last['n_pred']} predictions; "
          f"TP at τL 0: {last['tp_level0']}, at τL 5: {last['tp_level5']} (TPR {last['tpr_level5']:.3f})")
    print(f"median score_pairs: {statistics.median(r['seconds'] for r in runs):.2f} s; median matching: "
          f"{statistics.median(r['matching_seconds'] for r in runs):.2f} s; largest peak RSS: "
          f"{max(r['peak_rss_mb'] for r in runs):.0f} MB (RSS with the sets loaded, before scoring: "
          f"{statistics.median(r['rss_before_mb'] for r in runs):.0f} MB)")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {__import__('scipy').__version__}")


if __name__ == "__main__":
    main()
