"""Batch speed-up on a local Dask cluster: ``cellpol predict`` and ``cellpol synth``, serial against ``--workers N``.

Run from the project root::

    .venv/bin/python benchmarks/cluster_speed.py [--images 8] [--shape 32 192 192] [--workers 2] [--repeats 3]

Simulates ``--images`` stacks into a temporary folder, then times, each ``--repeats`` times into fresh output
folders, medians printed:

- predict serial: the batch in this process with the starter model, torch on all cores (what ``cellpol
  predict`` does without ``--workers``), and the same with torch on one thread (a worker's share on 2 cores:
  it separates the gain of running images side by side from the cost of torch's threads on busy cores);
- predict ``--workers N``, cold: as ``cellpol predict --workers N`` runs it, starting the local cluster (worker
  processes import torch, each builds the model) and closing it;
- predict on a warm cluster: the same tasks sent to a cluster started before the clock starts, whose workers
  hold the model already (what a long batch approaches, and what ``--scheduler`` to a running cluster gives);
- synth serial and synth ``--workers N`` cold, for ``--images`` volumes of ``--shape``.

With N workers on N cores each worker has one torch thread, so a speed-up comes only from what one process
cannot keep the cores busy with (reading, peaks, pairing, writing are single-threaded); the cluster's start
(worker processes importing torch) is paid once per batch. The outputs are checked to be the serial run's.
The load average is printed before and after: on a machine shared with other work, multi-threaded torch
loses more to waiting for its threads than single-threaded workers do, so quote the figures with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.batch import PredictorSpec, ReadOptions, predict_batch  # noqa: E402
from app.core.cluster import (  # noqa: E402
    ClusterOptions,
    available_cores,
    predict_batch_cluster,
    start_local_cluster,
    synthesize_cluster_job,
)
from app.core.jobs import run as run_job  # noqa: E402
from app.core.simulate import synthesize_job  # noqa: E402


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def same_csvs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.vectors.csv"))
    return names == sorted(p.name for p in b.glob("*.vectors.csv")) and all(
        (a / n).read_text() == (b / n).read_text() for n in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="stacks in the batch (default 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 192, 192), metavar=("Z", "Y", "X"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-synth", action="store_true", help="time prediction only")
    args = parser.parse_args(argv)
    import torch

    print("load average (1, 5, 15 min) before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"python {platform.python_version()}, {available_cores()} cores (os.cpu_count {os.cpu_count()}), "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__} on {torch.get_num_threads()} "
          f"threads; {args.images} stacks of {'x'.join(map(str, args.shape))}x2; {args.workers} workers; "
          f"median of {args.repeats}")
    spec = PredictorSpec("cellpol", (), "cpu")
    local = ClusterOptions(workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = sorted(run_job(synthesize_job(root / "images", args.images, shape=tuple(args.shape), seed=3)))
        predictor, provenance = spec.build()
        run_job(predict_batch(images[:1], root / "warmup", predictor, ReadOptions(), provenance))
        results: dict[str, list[float]] = {}

        def record(name: str, seconds: float) -> None:
            results.setdefault(name, []).append(seconds)

        threads = torch.get_num_threads()
        for k in range(args.repeats):
            record("predict serial", timed(lambda: run_job(
                predict_batch(images, root / f"serial{k}", predictor, ReadOptions(), provenance))))
            torch.set_num_threads(1)
            record("predict serial, torch on 1 thread", timed(lambda: run_job(
                predict_batch(images, root / f"serial1t{k}", predictor, ReadOptions(), provenance))))
            torch.set_num_threads(threads)
            record(f"predict --workers {args.workers} (cold: cluster start + close)", timed(lambda: run_job(
                predict_batch_cluster(images, root / f"cold{k}", spec, local))))
        assert same_csvs(root / "serial0", root / "cold0"), "cluster outputs differ from the serial ones"
        cluster = start_local_cluster(args.workers)
        try:
            warm = ClusterOptions(scheduler=cluster.scheduler_address,
                                  torch_threads=max(1, available_cores() // args.workers))
            run_job(predict_batch_cluster(images[:args.workers], root / "warmup-cluster", spec, warm))
            for k in range(args.repeats):
                record(f"predict on a warm {args.workers}-worker cluster", timed(lambda: run_job(
                    predict_batch_cluster(images, root / f"warm{k}", spec, warm))))
        finally:
            cluster.close()
        if not args.skip_synth:
            for k in range(args.repeats):
                record("synth serial", timed(lambda: run_job(
                    synthesize_job(root / f"synth{k}", args.images, shape=tuple(args.shape), seed=5))))
                record(f"synth --workers {args.workers} (cold)", timed(lambda: run_job(
                    synthesize_cluster_job(root / f"csynth{k}", args.images, local, shape=tuple(args.shape),
                                           seed=5))))
    baseline = {"predict": statistics.median(results["predict serial"])}
    if "synth serial" in results:
        baseline["synth"] = statistics.median(results["synth serial"])
    print(f"{'case':56s} {'median s':>9s} {'s/item':>7s} {'speed-up':>8s}   runs")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        speedup = baseline[name.split()[0]] / median
        runs = " ".join(f"{s:.1f}" for s in seconds)
        print(f"{name:56s} {median:9.2f} {median / args.images:7.2f} {speedup:7.2f}x   {runs}")
    print("load average (1, 5, 15 min) after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
