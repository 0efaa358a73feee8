"""Predicting a stack too big for memory: time and peak memory of ``cellpol predict`` on it (issue 24 item 2).

Run from the project root::

    .venv/bin/python benchmarks/big_stack.py [--shape 96 2048 2048] [--dir /tmp] [--model PATH] [--keep]
    .venv/bin/python benchmarks/big_stack.py --shape 120 4096 4096          # the 8 GB stack
    .venv/bin/python benchmarks/big_stack.py --compare                      # streamed vs in-memory pairs

1. **Synthesis, tile by tile.** A two-channel uint16 OME-TIFF (axes ZCYX, 256×256 tiles, 0.27×0.333×0.333
   µm by default) is written from a generator: tifffile asks for one 256×256 tile at a time and the image
   never exists whole (``--layout imagej``: an ImageJ hyperstack written plane by plane, whose every region
   read decodes whole planes). The content is one simulator volume (:func:`app.core.simulate.simulate`,
   ``--template`` Z×512×512 voxels, the ``confocal`` preset) repeated over the plane and mirrored on every
   other repeat, so the seams are continuous and the whole stack looks like a field of cells.
2. **Prediction in a fresh process**: ``cellpol predict FILE --out DIR`` (:func:`app.cli.main`, the starter
   model unless ``--model``), which streams the image because its in-memory prediction would exceed the
   memory budget (``--in-memory`` raises the budget so the whole-image path runs instead). The child reports
   its wall time and peak RSS (``ru_maxrss``), the pairs found and the tiles.
3. The stack and the output are deleted unless ``--keep``.

``--compare`` instead simulates one normal stack (``--compare-shape``, default 48×384×384), predicts it in
memory and streamed, and reports how many pairs agree (both ends within 0.5 voxel), beside the in-memory
path against itself with smaller windows (window placement alone moves some pairs; so does bf16 rounding:
``--no-amp`` compares in float32).

Not a test: the 120×4096×4096 run takes tens of minutes on a 2-core CPU. Quote medians; the machine is
shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.machine import cpu_name  # noqa: E402

VOXEL = (0.27, 0.333, 0.333)
TILE = 256


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 1024.0**2


def make_template(z: int, side: int, voxel, seed: int) -> np.ndarray:
    """One simulated (2, z, side, side) uint16 volume: channel 0 nuclei, 1 Golgi."""
    from app.core.simulate import SimConfig, simulate

    volume, _ = simulate(SimConfig(shape=(z, side, side), voxel_size=tuple(voxel), seed=seed))
    return np.stack([volume.nucleus, volume.golgi]).astype(np.uint16, copy=False)


def _mirrored(index: np.ndarray, period: int) -> np.ndarray:
    """Positions in a template of ``period`` for a plane repeated with every other copy mirrored."""
    k = index % (2 * period)
    return np.where(k < period, k, 2 * period - 1 - k)


def write_stack(path: Path, shape, voxel, template: np.ndarray, layout: str = "tiled") -> dict:
    """Write a (Z, C, Y, X) stack from a generator (never whole): ``tiled``, an OME-TIFF of 256×256 tiles;
    ``imagej``, an ImageJ hyperstack of whole planes (what most microscopes' exports look like)."""
    import tifffile

    z_len, y_len, x_len = shape
    _, tz, ty, tx = template.shape
    if layout == "imagej":
        rows, cols = _mirrored(np.arange(y_len), ty), _mirrored(np.arange(x_len), tx)

        def planes():
            for z in range(z_len):
                zt = int(_mirrored(np.array([z]), tz)[0])
                for c in range(2):
                    yield template[c, zt][np.ix_(rows, cols)]

        started = time.perf_counter()
        tifffile.imwrite(path, planes(), shape=(z_len, 2, y_len, x_len), dtype=np.uint16, imagej=True,
                         resolution=(1 / voxel[2], 1 / voxel[1]),
                         metadata={"axes": "ZCYX", "spacing": voxel[0], "unit": "um"})
        return {"seconds": time.perf_counter() - started, "bytes": path.stat().st_size, "rss_mb": _peak_rss_mb()}

    def tiles():
        for z in range(z_len):
            zt = int(_mirrored(np.array([z]), tz)[0])
            for c in range(2):
                plane = template[c, zt]
                for y0 in range(0, y_len, TILE):
                    rows = _mirrored(np.arange(y0, y0 + TILE), ty)
                    for x0 in range(0, x_len, TILE):
                        cols = _mirrored(np.arange(x0, x0 + TILE), tx)
                        yield plane[np.ix_(rows, cols)]

    started = time.perf_counter()
    tifffile.imwrite(
        path, tiles(), shape=(z_len, 2, y_len, x_len), dtype=np.uint16, tile=(TILE, TILE), ome=True,
        bigtiff=True, metadata={"axes": "ZCYX", "PhysicalSizeZ": voxel[0], "PhysicalSizeY": voxel[1],
                                "PhysicalSizeX": voxel[2], "Channel": {"Name": ["nuclei", "golgi"]}},
    )
    return {"seconds": time.perf_counter() - started, "bytes": path.stat().st_size, "rss_mb": _peak_rss_mb()}


def synth_child(args: argparse.Namespace) -> int:
    """Write the stack in this process (so its memory is not the prediction's); print a JSON line."""
    t0 = time.perf_counter()
    template = make_template(min(args.shape[0], args.template[0]), args.template[1], args.voxel_size, args.seed)
    template_s = time.perf_counter() - t0
    info = write_stack(Path(args.synth_child), tuple(args.shape), tuple(args.voxel_size), template, args.layout)
    info["template_seconds"] = template_s
    print(json.dumps(info))
    return 0


def predict_child(args: argparse.Namespace) -> int:
    """``cellpol predict`` in this process; print a JSON line with wall time and peak RSS."""
    import contextlib
    import io

    from app.cli import main as cellpol
    from app.core.inference import streaming

    if args.in_memory:
        streaming.STREAMING_MEMORY_BUDGET = float("inf")
    if args.stream:
        streaming.STREAMING_MEMORY_BUDGET = 0.0
    if args.tile_mb:
        streaming.DEFAULT_TILE_BYTES = args.tile_mb * 1e6
    command = ["predict", args.predict_child, "--out", args.out, "--device", "cpu", "--overwrite"]
    if args.model:
        command += ["--model", args.model]
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = cellpol(command)
    seconds = time.perf_counter() - t0
    from app.core.pairs import read_pairs

    found = sorted(Path(args.out).glob("*.pred.vectors.csv"))
    pairs = read_pairs(found[0]) if found else None
    meta = pairs.meta if pairs is not None else {}
    lines = [line for line in err.getvalue().splitlines() if "Streaming" in line or "Model" in line]
    print(json.dumps({
        "code": code, "seconds": seconds, "rss_mb": _peak_rss_mb(), "pairs": len(pairs) if pairs else None,
        "streaming": meta.get("streaming"), "timings": meta.get("timings_s"), "windows": meta.get("windows"),
        "model_grid": meta.get("model_grid_shape_zyx"), "notes": lines[-3:],
    }))
    return 0


def _agreement(reference, other, model_voxel) -> dict:
    """How ``other``'s pairs agree with ``reference``'s: for each pair of ``other`` the pair of ``reference``
    nearest (largest end offset), its offset per axis in model voxels; ``same``: the fraction with both ends
    within 1 µm (the same cell's vector), ``within_half``: within 0.5 model voxel on every axis, and the
    median offset of the same pairs (model voxels, z y x)."""
    scale = np.asarray(other.voxel_size, dtype=np.float64)
    offsets = []
    for n, g in zip(other.nuclei, other.golgi):
        if len(reference) == 0:
            offsets.append(np.full(3, np.inf))
            continue
        d = np.maximum(np.abs(reference.nuclei - n), np.abs(reference.golgi - g)) * scale  # µm per axis
        offsets.append(d[np.argmin(d.max(1))])
    offsets = np.asarray(offsets).reshape(-1, 3)
    if not len(offsets):
        return {"same": 1.0, "within_half": 1.0, "median": [0.0, 0.0, 0.0]}
    same = offsets.max(1) <= 1.0
    in_model = offsets / np.asarray(model_voxel)
    return {"same": float(same.mean()), "within_half": float(np.mean(in_model.max(1) <= 0.5)),
            "median": np.round(np.median(in_model[same], axis=0), 2).tolist() if same.any() else None}


def compare(args: argparse.Namespace) -> int:
    """Streamed vs in-memory pairs on one normal simulated stack (the starter model or ``--model``), beside
    the in-memory path against itself with another window layout (how much window placement alone moves)."""
    from app.core.imageio import open_lazy
    from app.core.inference import Predictor, find_starter_model
    from app.core.volume import Volume

    shape = tuple(args.compare_shape)
    data = make_template(shape[0], max(shape[1:]), args.voxel_size, args.seed)[:, :, : shape[1], : shape[2]]
    model = args.model or find_starter_model()
    predictor = Predictor.from_files([model], "cpu", amp=not args.no_amp)
    volume = Volume(data, tuple(args.voxel_size), ("nuclei", "golgi"))
    t0 = time.perf_counter()
    whole = predictor(volume)
    t_whole = time.perf_counter() - t0
    window = whole.meta["window_shape_zyx"]
    other_window = (window[0], max(64, int(window[1] * 0.6)), max(64, int(window[2] * 0.6)))
    alternative = Predictor.from_files([model], "cpu", amp=not args.no_amp, window=other_window)(volume)
    del volume
    with tempfile.TemporaryDirectory(prefix="cellpol-compare-") as tmp:
        path = Path(tmp) / "stack.npy"
        np.save(path, data)
        del data
        core = (10**6, args.compare_core, args.compare_core) if args.compare_core else None
        with open_lazy(path, axes="CZYX", voxel_size=tuple(args.voxel_size)) as image:
            t0 = time.perf_counter()
            streamed = predictor.predict_lazy(image, core=core).pairs
            t_stream = time.perf_counter() - t0
    info = streamed.meta["streaming"]
    print(f"stack {'x'.join(map(str, shape))}x2 @ {tuple(args.voxel_size)} µm, model {Path(model).name}, "
          f"autocast {predictor.autocast_dtype}")
    print(f"in memory: {len(whole)} pairs in {t_whole:.1f} s ({whole.meta['windows']} windows of {window}); "
          f"streamed: {len(streamed)} pairs in {t_stream:.1f} s ({info['tiles']} tiles, core {info['tile_core_zyx']}, "
          f"halo {info['tile_halo_zyx']}, {streamed.meta['windows']} windows)")
    for label, pairs in (("streamed vs in memory", streamed),
                         (f"in memory with windows {list(other_window)} vs default", alternative)):
        a = _agreement(whole, pairs, predictor.voxel_size)
        print(f"RESULT {label}: {len(pairs)} vs {len(whole)} pairs; {a['same']:.0%} the same pair (both ends within "
              f"1 µm), {a['within_half']:.0%} within 0.5 model voxel on every axis; median offset of the same pairs "
              f"{a['median']} model voxels (z y x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(96, 2048, 2048), metavar=("Z", "Y", "X"))
    parser.add_argument("--voxel-size", nargs=3, type=float, default=VOXEL, metavar=("Z", "Y", "X"))
    parser.add_argument("--template", nargs=2, type=int, default=(120, 512), metavar=("Z", "YX"),
                        help="simulated volume repeated over the stack (default 120 × 512 × 512)")
    parser.add_argument("--layout", choices=("tiled", "imagej"), default="tiled",
                        help="tiled: OME-TIFF of 256x256 tiles (default); imagej: ImageJ hyperstack of whole planes")
    parser.add_argument("--dir", default=None, help="where the stack is written (default: the temp folder)")
    parser.add_argument("--model", help="model .json (default: the starter model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the stack and the output")
    parser.add_argument("--in-memory", action="store_true", help="predict the whole image in memory instead")
    parser.add_argument("--stream", action="store_true", help="stream the image whatever its size")
    parser.add_argument("--tile-mb", type=float, help="memory for one tile's data (default: streaming's)")
    parser.add_argument("--compare", action="store_true", help="streamed vs in-memory pairs on a normal stack")
    parser.add_argument("--compare-shape", nargs=3, type=int, default=(48, 1024, 1024), metavar=("Z", "Y", "X"))
    parser.add_argument("--compare-core", type=int, default=0,
                        help="in-plane tile core for --compare (model voxels; default: streaming's choice)")
    parser.add_argument("--no-amp", action="store_true", help="--compare in float32 (no bf16 autocast)")
    parser.add_argument("--synth-child", help=argparse.SUPPRESS)
    parser.add_argument("--predict-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.synth_child:
        return synth_child(args)
    if args.predict_child:
        return predict_child(args)
    import torch

    print(f"CPU {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if args.compare:
        return compare(args)
    folder = Path(tempfile.mkdtemp(prefix="cellpol-bigstack-", dir=args.dir))
    try:
        stack = folder / ("big.ome.tif" if args.layout == "tiled" else "big.tif")
        z, y, x = args.shape
        need = z * y * x * 2 * 2
        free = shutil.disk_usage(folder).free
        print(f"stack {z}x{y}x{x}x2 uint16 @ {tuple(args.voxel_size)} µm: {need / 1e9:.1f} GB to {stack} "
              f"({free / 1e9:.0f} GB free)")
        if free < need * 1.05:
            print("not enough disk space", file=sys.stderr)
            return 1
        base = [sys.executable, __file__, "--shape", *map(str, args.shape), "--voxel-size",
                *map(str, args.voxel_size), "--seed", str(args.seed)]
        done = subprocess.run(base + ["--template", *map(str, args.template), "--layout", args.layout,
                                      "--synth-child", str(stack)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        synth = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"written piece by piece in {synth['seconds']:.0f} s (template {synth['template_seconds']:.0f} s), "
              f"{synth['bytes'] / 1e9:.2f} GB on disk, writer peak RSS {synth['rss_mb']:.0f} MB")
        command = base + ["--predict-child", str(stack), "--out", str(folder / "out")]
        if args.model:
            command += ["--model", args.model]
        if args.in_memory:
            command.append("--in-memory")
        if args.stream:
            command.append("--stream")
        if args.tile_mb:
            command += ["--tile-mb", str(args.tile_mb)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        run = json.loads(done.stdout.strip().splitlines()[-1])
        for note in run["notes"]:
            print(note)
        if run["streaming"]:
            s = run["streaming"]
            print(f"path: streaming, {s['tiles']} tiles, core {s['tile_core_zyx']}, halo {s['tile_halo_zyx']}, "
                  f"statistics: planes {len(s['statistics_sample']['planes'])}, stride "
                  f"{s['statistics_sample']['stride_yx']}")
        else:
            print("path: in memory")
        print(f"model grid {run['model_grid']}, {run['windows']} windows; stages: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in (run["timings"] or {}).items()))
        print(f"RESULT cellpol predict: {run['seconds']:.0f} s wall ({run['seconds'] / 60:.1f} min), peak RSS "
              f"{run['rss_mb']:.0f} MB ({run['rss_mb'] / 1024:.2f} GB), {run['pairs']} pairs, exit {run['code']}")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
