"""The README's statistics example: a simulated two-condition experiment, one condition polarised and one not,
analysed by ``cellpol stats`` with the image as the unit.

    python docs/make_stats_example.py [--out docs/stats_example] [--work DIR]

Condition A: 6 volumes whose Golgi sit, around a von Mises–Fisher spread (κ = 3), towards the image's +x side of
their nucleus (``cellpol synth --polarity-direction 0 0 1 --polarity-concentration 3``); condition B: 6 volumes
without a preferred direction (the simulator's default). Each volume is 24 × 384 × 384 voxels (0.4 × 0.333 ×
0.333 µm, about 40 cells). The statistics use the simulator's ground-truth vectors, so they measure the design,
not a model's mistakes. The vectors are copied into one folder as ``A_synth_kkkk`` / ``B_synth_kkkk`` (the two
runs of ``synth`` name their files alike) with a groups file, and ``cellpol stats`` runs with its defaults (2000
bootstrap resamples, 5000 permutations, seed 0). Copied into ``--out``: the rose plot, the equal-area plot, the
elevation histograms, ``summary.csv`` and ``tests.csv`` (no PDF, no volumes). About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONDITIONS = {
    "A": ["--seed", "1", "--polarity-direction", "0", "0", "1", "--polarity-concentration", "3"],
    "B": ["--seed", "2"],
}
N_IMAGES = 6
SHAPE = ["24", "384", "384"]
COPIED = ("rose.png", "equal_area.png", "elevation.png", "summary.csv", "tests.csv")


def make_example(out: Path, work: Path) -> int:
    from app.cli import main as cellpol

    vectors = work / "vectors"
    vectors.mkdir(parents=True, exist_ok=True)
    group_rows = ["image,group"]
    for condition, options in CONDITIONS.items():
        synth = work / f"synth_{condition}"
        code = cellpol(["synth", "--out", str(synth), "--n", str(N_IMAGES), "--shape", *SHAPE, *options])
        if code:
            return code
        for csv_path in sorted(synth.glob("synth_*.vectors.csv")):
            stem = csv_path.name[: -len(".vectors.csv")]
            name = f"{condition}_{stem}"
            shutil.copyfile(csv_path, vectors / f"{name}.vectors.csv")
            shutil.copyfile(csv_path.with_suffix(".json"), vectors / f"{name}.vectors.json")
            group_rows.append(f"{name},{condition}")
    groups = work / "groups.csv"
    groups.write_text("\n".join(group_rows) + "\n")
    stats = work / "stats"
    code = cellpol(["stats", str(vectors), "--out", str(stats), "--groups", str(groups)])
    if code:
        return code
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(stats / name, out / name)
    _print_numbers(stats)
    print(f"Copied {', '.join(COPIED)} to {out}")
    return 0


def _print_numbers(stats: Path) -> None:
    """The numbers the README quotes: each group's Rayleigh p and the tests' p."""
    with open(stats / "summary.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["level"] == "group":
                print(f"group {row['name']}: n = {row['n']} cells in {row['n_units']} images, in-plane R̄ = "
                      f"{row['polarity_index']}, Rayleigh p (2D) = {row['rayleigh_p']} on the cells, "
                      f"{row.get('rayleigh_units_p', '')} on the images' means; 3D R̄ = "
                      f"{row['mean_resultant_length']}, Rayleigh p (3D) = {row['rayleigh_3d_p']} on the cells, "
                      f"{row.get('rayleigh_3d_units_p', '')} on the images' means")
    with open(stats / "tests.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            print(f"{row['test']}: p = {row['p']} ({row['n_1']} vs {row['n_2']} {row['unit']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "stats_example"), help="where the copies go")
    parser.add_argument("--work", help="keep the volumes, vectors and all outputs here (default: a temporary "
                                       "folder, removed at the end)")
    args = parser.parse_args()
    if args.work:
        return make_example(Path(args.out), Path(args.work))
    with tempfile.TemporaryDirectory(prefix="cellpol_stats_example_") as work:
        return make_example(Path(args.out), Path(work))


if __name__ == "__main__":
    sys.exit(main())
