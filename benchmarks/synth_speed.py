"""How fast the simulator makes one volume (median of 5 runs, after one warm-up run).

Run from the project root::

    .venv/bin/python benchmarks/synth_speed.py [--runs 5] [--presets confocal,widefield,...]

Prints wall-clock and process CPU seconds per volume. The target is < 2 s for a 64×256×256×2 volume on
a 2-core CPU. CPU time is the steadier figure on a busy machine; quote the median wall time otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.simulate import PRESETS, SimConfig, simulate  # noqa: E402


def time_case(config: SimConfig, runs: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds over ``runs`` seeds, and the median number of pairs."""
    simulate(config.replace(seed=10_000))  # warm-up: imports, lookup tables
    walls, cpus, counts = [], [], []
    for seed in range(runs):
        cfg = config.replace(seed=seed)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        _, pairs = simulate(cfg)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        counts.append(len(pairs))
    return statistics.median(walls), statistics.median(cpus), int(statistics.median(counts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--presets", default="confocal", help="comma-separated preset names, or 'all'")
    args = parser.parse_args(argv)
    presets = list(PRESETS) if args.presets == "all" else args.presets.split(",")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"{'case':54s} {'wall s':>8s} {'cpu s':>8s} {'pairs':>6s}")
    for preset in presets:
        for shape in ((64, 256, 256), (1, 512, 512)):
            cfg = SimConfig(shape=shape, preset=preset)
            wall, cpu, pairs = time_case(cfg, args.runs)
            label = f"{preset} {'x'.join(map(str, shape))}x2 @ {cfg.resolved().voxel_size}"
            print(f"{label:54s} {wall:8.3f} {cpu:8.3f} {pairs:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
