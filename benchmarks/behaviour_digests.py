"""Digests of what the engine computes on fixed seeds: run it before and after a refactor, compare.

Writes one SHA-256 per behaviour (simulated volumes and their vectors, predictions of the shipped starter
models and of the classic method, decoded peaks, evaluation scores, a few fp32 training steps) as JSON,
and prints them. Two runs on one machine and one commit give identical digests; a refactor that is
meant to change nothing must too. Floats are hashed as their exact bytes, so compare digests made on the
same machine only (AVX2 and AVX-512 machines differ in the last bits).

    python benchmarks/behaviour_digests.py --out digests.json
    python benchmarks/behaviour_digests.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)


def digest(*arrays: Any) -> str:
    """SHA-256 over arrays (dtype, shape and bytes) and plain values (their JSON)."""
    h = hashlib.sha256()
    for value in arrays:
        if isinstance(value, np.ndarray) or hasattr(value, "detach"):
            array = np.ascontiguousarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
            h.update(str(array.dtype).encode())
            h.update(str(array.shape).encode())
            h.update(array.tobytes())
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def pairs_digest(pairs) -> str:
    return digest(pairs.nuclei, pairs.golgi, pairs.scores, pairs.ids, [str(s) for s in pairs.sources])


def simulated() -> dict[str, str]:
    from app.core.simulate import SimConfig, simulate

    out = {}
    configs = {
        "sim_confocal_3d": SimConfig(shape=(12, 96, 96), voxel_size=(1.0, 0.5, 0.5), seed=3),
        "sim_retina_3d": SimConfig(shape=(16, 128, 128), voxel_size=(0.5, 0.333, 0.333), preset="retina", seed=7),
        "sim_widefield_2d": SimConfig(shape=(1, 128, 128), voxel_size=(1.0, 0.4, 0.4), preset="widefield", seed=5),
        "sim_layout_3d": SimConfig(shape=(12, 80, 80), voxel_size=(1.0, 0.5, 0.5), seed=2,
                                   layout_um=([[6.0, 12.0, 12.0], [6.0, 25.0, 28.0]],
                                              [[6.5, 14.0, 13.0], [5.0, 27.0, 30.0]])),
    }
    for name, config in configs.items():
        volume, pairs = simulate(config)
        out[name] = digest(volume.data, pairs.nuclei, pairs.golgi)
    return out


def _volumes():
    from app.core.simulate import SimConfig, simulate

    stack = simulate(SimConfig(shape=(24, 160, 160), voxel_size=(1.0, 0.4, 0.4), preset="retina", seed=11))
    plane = simulate(SimConfig(shape=(1, 192, 192), voxel_size=(1.0, 0.4, 0.4), seed=12))
    return stack, plane


def predictions() -> dict[str, str]:
    import torch

    from app.core.classic import ClassicParams, predict_classic
    from app.core.inference import StarterPredictor

    torch.set_num_threads(1)
    (stack, stack_gt), (plane, plane_gt) = _volumes()
    out = {}
    starter = StarterPredictor("cpu")
    for name, volume in (("stack", stack), ("plane", plane)):
        out[f"predict_starter_{name}"] = pairs_digest(starter(volume))
        out[f"predict_classic_{name}"] = pairs_digest(predict_classic(volume, ClassicParams()))
    return out


def peaks_and_pairing() -> dict[str, str]:
    import torch

    from app.core.inference import Predictor, find_starter_model

    torch.set_num_threads(1)
    (stack, _), _ = _volumes()
    predictor = Predictor.from_files([find_starter_model(spatial_dims=3)], "cpu")
    output = predictor.run_network(stack)
    (nucleus_peaks, golgi_peaks) = predictor.peaks(output)  # (positions, voxels, heights) per class
    arrays = [np.asarray(a) for a in (*nucleus_peaks, *golgi_peaks)]
    return {"network_heatmaps_stack": digest(output.heatmap_nucleus, output.heatmap_golgi),
            "peaks_starter_stack": digest(*arrays),
            "decode_starter_stack": pairs_digest(predictor.decode(output))}


def scores() -> dict[str, str]:
    from app.core.evaluate import score_pairs
    from app.core.pairs import PairSet

    rng = np.random.default_rng(5)
    n = 300
    gt_n = rng.uniform([0, 0, 0], [30, 400, 400], (n, 3))
    gt_g = gt_n + rng.normal(0, 4, (n, 3))
    keep = rng.random(n) < 0.85
    pred_n = np.concatenate([gt_n[keep] + rng.normal(0, 2, (keep.sum(), 3)), rng.uniform(0, 30, (20, 3)) * [1, 13, 13]])
    pred_g = np.concatenate([gt_g[keep] + rng.normal(0, 1.5, (keep.sum(), 3)), pred_n[-20:] + 3])
    voxel = (1.0, 0.5, 0.5)
    gt = PairSet(gt_n, gt_g, voxel_size=voxel)
    pred = PairSet(np.clip(pred_n, 0, [29, 399, 399]), np.clip(pred_g, 0, [29, 399, 399]), voxel_size=voxel)
    gt = PairSet(np.clip(gt.nuclei, 0, [29, 399, 399]), np.clip(gt.golgi, 0, [29, 399, 399]), voxel_size=voxel)
    score = score_pairs(gt, pred, image_shape=(30, 400, 400))
    rows = score.per_level_rows() if hasattr(score, "per_level_rows") else []
    return {"score_pairs": digest(np.asarray(score.tp), np.asarray(score.fp), np.asarray(score.fn), rows)}


def training() -> dict[str, str]:
    import tempfile

    import torch

    from app.core.simulate import synthesize_dataset
    from app.training.finetune import TrainingOptions, run_training

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "train"
        synthesize_dataset(folder, 2, shape=(8, 128, 128), voxel_size=(1.0, 0.5, 0.5), seed=3)
        options = TrainingOptions(images=folder, out=Path(scratch) / "m", steps=6, epoch_steps=3, init=None,
                                  model_voxel_size=(2.0, 1.0, 1.0), base_filters=4, device="cpu", calibrate="never")
        for _ in run_training(options):
            pass
        from app.core.modelfile import load_model

        model, _ = load_model(Path(scratch) / "m.json")
        state = model.state_dict()
        return {"train_6_steps_fp32": digest(*[state[k] for k in sorted(state)])}


SECTIONS: dict[str, Callable[[], dict[str, str]]] = {
    "simulated": simulated, "predictions": predictions, "peaks": peaks_and_pairing, "scores": scores,
    "training": training,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the digests as JSON here")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two digest files")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text())["digests"] for p in args.compare)
        names = sorted(set(before) | set(after))
        differ = [n for n in names if before.get(n) != after.get(n)]
        for name in names:
            print(f"{'same  ' if name not in differ else 'DIFFER'} {name}")
        print(f"{len(names) - len(differ)} of {len(names)} digests identical")
        return 1 if differ else 0
    digests: dict[str, str] = {}
    for section in SECTIONS.values():
        digests.update(section())
    cpu = cpu_name()
    report = {"cpu": cpu, "python": platform.python_version(), "digests": digests}
    for name, value in digests.items():
        print(f"{value}  {name}")
    print(f"CPU: {cpu}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
