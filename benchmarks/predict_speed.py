"""How fast learned prediction runs on one large stack, and how much memory it needs.

Run from the project root::

    .venv/bin/python benchmarks/predict_speed.py [--model PATH] [--device cpu|cuda|auto] [--repeats 3] [--tta]

Builds one 64×768×768×2 uint16 volume at 0.27×0.666×0.666 µm with the simulator (``--random`` for noise
instead), then predicts it ``--repeats`` times, each in a fresh process (so each peak RSS is that of one
prediction: the process reads the volume, loads the model and predicts). Prints the median wall time of
the prediction call, its stages (preprocess, window batching, network, stitching, peaks, pairing), the
largest peak RSS and the device. With no ``--model`` it uses the starter model in ``resources/models`` if
there is one, else a freshly built default ``NetworkConfig()`` network saved to a temporary folder (voxel
size ``--model-voxel-size``, default the volume's, so no resampling). An untrained network finds almost no
peaks, so the script also times the decoding stage alone on synthetic heatmaps with a realistic number of
cells (``--cells``).

Targets: ≤ 30 s and ≤ 3 GB on a 2-core CPU, ≤ 1 s on one H100. Quote medians; this machine is shared. On a
GPU each run first predicts a small crop (``--warmup``, the default there) so the timed call is the
steady state, not the one-off kernel loading of a fresh process; ``--no-warmup`` times the cold call.
"""

from __future__ import annotations

import argparse
import json
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

SHAPE = (64, 768, 768)
VOXEL = (0.27, 0.666, 0.666)


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 1024.0**2


def make_volume(path: Path, shape, voxel, seed: int, random: bool) -> dict:
    """Write the benchmark volume as ``.npy`` (2, Z, Y, X) uint16; return a description."""
    started = time.perf_counter()
    if random:
        rng = np.random.default_rng(seed)
        data = rng.integers(100, 4000, size=(2,) + tuple(shape), dtype=np.uint16)
        n_pairs = 0
    else:
        from app.core.simulate import SimConfig, simulate

        volume, pairs = simulate(SimConfig(shape=tuple(shape), voxel_size=tuple(voxel), seed=seed))
        data = np.stack([volume.nucleus, volume.golgi]).astype(np.uint16, copy=False)
        n_pairs = len(pairs)
    np.save(path, data)
    return {"seconds": time.perf_counter() - started, "pairs": n_pairs, "dtype": str(data.dtype)}


def default_model(folder: Path, voxel, base_filters: int | None = None, fresh: bool = False) -> Path:
    """The starter model if shipped (and not ``fresh``), else a fresh network saved under ``folder``."""
    from app.core.inference import find_starter_model

    starter = None if fresh or base_filters is not None else find_starter_model()
    if starter is not None:
        return starter
    import torch

    from app.core.modelfile import ModelSpec, save_model
    from app.core.network import NetworkConfig, build_network

    torch.manual_seed(0)
    config = NetworkConfig() if base_filters is None else NetworkConfig(base_filters=base_filters)
    spec = ModelSpec(network=config, voxel_size=tuple(voxel), name="fresh-default")
    return save_model(folder / "fresh-default", build_network(config).eval(), spec)


def child(args: argparse.Namespace) -> int:
    """One prediction in this process; print a JSON line."""
    import torch

    from app.core.inference import Predictor
    from app.core.volume import Volume

    t0 = time.perf_counter()
    data = np.load(args.child)
    volume = Volume(data, tuple(args.voxel_size), ("nuclei", "golgi"))
    options = {}
    if args.window:
        options["window"] = tuple(args.window)
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.tta:
        options["tta"] = True
    predictor = Predictor.from_files([args.model], device=args.device, **options)
    load_s = time.perf_counter() - t0
    warmup_s = None
    if args.warmup or (args.warmup is None and predictor.device.type != "cpu"):
        # A GPU's first call pays one-off kernel loading and library set-up; time the steady state.
        t = time.perf_counter()
        predictor(Volume(np.ascontiguousarray(data[:, : min(16, data.shape[1]), :128, :128]), tuple(args.voxel_size),
                         ("nuclei", "golgi")))
        warmup_s = time.perf_counter() - t
    t1 = time.perf_counter()
    pairs = predictor(volume)
    seconds = time.perf_counter() - t1
    meta = pairs.meta
    print(json.dumps({
        "seconds": seconds,
        "load_seconds": load_s,
        "warmup_seconds": warmup_s,
        "rss_mb": _peak_rss_mb(),
        "cuda_peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
        "device": str(predictor.device),
        "autocast": meta.get("autocast"),
        "threads": torch.get_num_threads(),
        "windows": meta["windows"],
        "window": meta["window_shape_zyx"],
        "batch": meta["batch_size"],
        "grid": meta["model_grid_shape_zyx"],
        "pairs": len(pairs),
        "timings": meta["timings_s"],
    }))
    return 0


def decode_only(shape, voxel, cells: int, seed: int) -> dict:
    """Time peak finding and pairing on synthetic full-size heatmaps with ``cells`` Gaussian blobs."""
    from app.core.inference import candidate_edges, find_peaks, match_pairs

    rng = np.random.default_rng(seed)
    heat = {"n": np.zeros(shape, dtype=np.float32), "g": np.zeros(shape, dtype=np.float32)}
    voxel = np.asarray(voxel)
    centres = rng.uniform(0, 1, size=(cells, 3)) * (np.asarray(shape) - 1)
    golgi = centres + rng.normal(0, 4.0, size=(cells, 3)) / voxel
    for key, points, sigma in (("n", centres, 2.0), ("g", golgi, 1.0)):
        half = np.ceil(3 * sigma / voxel).astype(int)
        for c in points:
            lo = np.maximum(np.floor(c).astype(int) - half, 0)
            hi = np.minimum(np.floor(c).astype(int) + half + 1, shape)
            if np.any(hi <= lo):
                continue
            axes = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
            d2 = sum(((axes[a] - c[a]) * voxel[a]) ** 2 for a in range(3))
            block = heat[key][tuple(slice(a, b) for a, b in zip(lo, hi))]
            np.maximum(block, np.exp(-d2 / (2 * sigma**2)).astype(np.float32), out=block)
    t0 = time.perf_counter()
    pn, _, _ = find_peaks(heat["n"], 0.4, 3.0, voxel)
    pg, _, _ = find_peaks(heat["g"], 0.4, 1.5, voxel)
    t1 = time.perf_counter()
    rows, cols, dist = candidate_edges(pn, pg, voxel, 14.0)
    cost = rng.uniform(0, 1.2, size=len(rows))
    n, _, _ = match_pairs(len(pn), len(pg), rows, cols, cost, dist, 14.0)
    t2 = time.perf_counter()
    return {"peaks_s": t1 - t0, "pairing_s": t2 - t1, "nuclei": len(pn), "golgi": len(pg), "pairs": len(n),
            "edges": len(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model .json (default: starter model, else a fresh default network)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", nargs=3, type=int, default=SHAPE, metavar=("Z", "Y", "X"))
    parser.add_argument("--voxel-size", nargs=3, type=float, default=VOXEL, metavar=("Z", "Y", "X"))
    parser.add_argument("--model-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="voxel size of the fresh default network (default: the volume's)")
    parser.add_argument("--base-filters", type=int,
                        help="build a fresh NetworkConfig(base_filters=N) network instead (what-if for smaller models)")
    parser.add_argument("--window", nargs=3, type=int, metavar=("Z", "Y", "X"), help="largest window (voxels)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (mirror images averaged)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random", action="store_true", help="random data instead of the simulator")
    parser.add_argument("--cells", type=int, default=600, help="cells for the decode-only timing (0 = skip)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="predict a small crop first and time the second call (default: on a GPU, not on CPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    print(f"python {platform.python_version()}, torch {__import__('torch').__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="cellpol-bench-") as tmp:
        tmp = Path(tmp)
        volume_path = tmp / "volume.npy"
        info = make_volume(volume_path, args.shape, args.voxel_size, args.seed, args.random)
        kind = "random" if args.random else "simulated"
        print(f"volume {'x'.join(map(str, args.shape))}x2 uint16 @ {tuple(args.voxel_size)} µm "
              f"({kind}, {info['pairs']} true pairs, made in {info['seconds']:.1f} s)")
        model = Path(args.model) if args.model else default_model(
            tmp, args.model_voxel_size or args.voxel_size, args.base_filters, fresh=args.model_voxel_size is not None)
        print(f"model {model}")
        command = [sys.executable, __file__, "--child", str(volume_path), "--model", str(model),
                   "--device", args.device, "--voxel-size", *map(str, args.voxel_size)]
        if args.window:
            command += ["--window", *map(str, args.window)]
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        if args.tta:
            command.append("--tta")
        if args.warmup is not None:
            command.append("--warmup" if args.warmup else "--no-warmup")
        runs = []
        for repeat in range(args.repeats):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(run)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in run["timings"].items())
            warm = f", warm-up {run['warmup_seconds']:.1f} s" if run.get("warmup_seconds") is not None else ""
            print(f"run {repeat + 1}: {run['seconds']:.1f} s (load {run['load_seconds']:.1f} s{warm}), "
                  f"peak RSS {run['rss_mb']:.0f} MB; {stages}")
        first = runs[0]
        print(f"device {first['device']} (autocast {first['autocast']}, {first['threads']} threads); "
              f"model grid {first['grid']}, {first['windows']} windows of {first['window']}, batch {first['batch']}; "
              f"{first['pairs']} pairs")
        median = statistics.median(r["seconds"] for r in runs)
        peak = max(r["rss_mb"] for r in runs)
        stage_medians = {k: statistics.median(r["timings"].get(k, 0.0) for r in runs) for k in first["timings"]}
        print("median stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stage_medians.items()))
        line = f"RESULT median {median:.1f} s over {len(runs)} runs, peak RSS {peak:.0f} MB ({peak / 1024:.2f} GB)"
        if first.get("cuda_peak_mb"):
            line += f", CUDA peak {max(r['cuda_peak_mb'] for r in runs):.0f} MB"
        print(line)
    if args.cells:
        d = decode_only(tuple(args.shape), args.voxel_size, args.cells, args.seed)
        print(f"decode only ({args.cells} synthetic cells): peaks {d['peaks_s']:.2f} s "
              f"({d['nuclei']} nuclei, {d['golgi']} Golgi), pairing {d['pairing_s']:.2f} s "
              f"({d['edges']} candidate edges, {d['pairs']} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
