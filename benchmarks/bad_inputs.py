"""Try bad inputs through the command line as a careful user would, and print what each one got.

Each case runs ``cellpol`` in a fresh process on files made in a scratch folder and records the exit
status and the last line on stderr. A case fails the run when the output holds a Python traceback, or
when a case that must be refused exits 0. Not a test (it takes about a minute and prints a table for
the release note); the behaviours themselves are tested in tests/.

    python benchmarks/bad_inputs.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_files(root: Path) -> dict[str, Path]:
    """The scratch inputs: a small annotated stack, broken and implausible files."""
    import tifffile

    from app.core.pairs import write_pairs
    from app.core.simulate import synthesize_dataset

    stacks = root / "stacks"
    synthesize_dataset(stacks, 2, shape=(8, 64, 64), voxel_size=(1.0, 0.5, 0.5), seed=1)
    files = {"stacks": stacks, "image": stacks / "synth_0000.tif"}
    files["a_file"] = root / "a_file"
    files["a_file"].write_text("not a folder")
    (root / "truncated.tif").write_bytes(files["image"].read_bytes()[:900])
    files["truncated_tif"] = root / "truncated.tif"
    np.save(root / "whole.npy", np.zeros((2, 4, 64, 64), np.uint16))
    (root / "truncated.npy").write_bytes((root / "whole.npy").read_bytes()[:2000])
    files["truncated_npy"] = root / "truncated.npy"
    np.save(root / "tiny.npy", np.zeros((2, 1, 1, 1), np.uint16))
    files["tiny_npy"] = root / "tiny.npy"
    np.save(root / "zcyx.npy", np.zeros((96, 2, 32, 32), np.uint8))
    files["zcyx_npy"] = root / "zcyx.npy"
    tifffile.imwrite(root / "nm.tif", np.zeros((3, 2, 16, 16), np.uint8), imagej=True, resolution=(0.01, 0.01),
                     metadata={"axes": "ZCYX", "spacing": 300, "unit": "um"})
    files["nm_tif"] = root / "nm.tif"
    tifffile.imwrite(root / "one_channel.tif", np.zeros((4, 16, 16), np.uint8), imagej=True, resolution=(2, 2),
                     metadata={"axes": "ZYX", "spacing": 1, "unit": "um"})
    files["one_channel"] = root / "one_channel.tif"
    (root / "empty.csv").write_text("")
    files["empty_csv"] = root / "empty.csv"
    (root / "legacy0.csv").write_text("10,12,14,13,0,3\n")
    files["legacy0"] = root / "legacy0.csv"
    (root / "big_id").mkdir()
    big_id = root / "big_id" / "synth_0000.vectors.csv"
    big_id.write_text("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z,id\n1,2,3,4,5,6,12345678901234567890\n")
    files["big_id"] = big_id
    outside = root / "outside"
    shutil.copytree(stacks, outside)
    from app.core.pairs import read_pairs

    pairs = read_pairs(outside / "synth_0000.vectors.csv")
    pairs.nuclei[0] = [3, 500, 500]
    write_pairs(outside / "synth_0000.vectors.csv", pairs)
    files["outside"] = outside
    nosidecar = root / "gt_nosidecar"
    nosidecar.mkdir()
    for csv_path in stacks.glob("*.vectors.csv"):
        shutil.copy(csv_path, nosidecar / csv_path.name)
    files["gt_nosidecar"] = nosidecar
    preds = root / "preds_nosidecar"
    preds.mkdir()
    for csv_path in stacks.glob("*.vectors.csv"):
        shutil.copy(csv_path, preds / csv_path.name.replace(".vectors.csv", ".pred.vectors.csv"))
    (preds / "synth_0001.pred.vectors.csv").unlink()
    files["preds_nosidecar"] = preds
    (root / "project").mkdir()
    (root / "project" / "cellpol-project.json").write_text('{"format": "cellpol-project", "version": 1, '
                                                           '"voxel_sizes": 5}')
    files["project"] = root / "project"
    return files


def cases(f: dict[str, Path], root: Path) -> list[tuple[str, list[str], bool]]:
    """(what was tried, arguments, must be refused)."""
    s, img = str(f["stacks"]), str(f["image"])
    return [
        ("predict into the annotated folder, --overwrite", ["predict", s, "--out", s, "--method", "classic",
                                                            "--overwrite"], False),
        ("predict, output folder is a file", ["predict", img, "--out", str(f["a_file"]), "--method", "classic"], True),
        ("predict a truncated TIFF", ["predict", str(f["truncated_tif"]), "--out", str(root / "p1"),
                                     "--method", "classic"], True),
        ("predict a truncated .npy", ["predict", str(f["truncated_npy"]), "--out", str(root / "p2"), "--method",
                                      "classic", "--axes", "CZYX", "--voxel-size", "1", "0.5", "0.5"], True),
        ("predict a 1x2x1x1 .npy", ["predict", str(f["tiny_npy"]), "--out", str(root / "p3"), "--method", "classic",
                                    "--axes", "CZYX", "--voxel-size", "1", "0.5", "0.5"], False),
        ("--axes CZYX on a ZCYX stack (96 channels)", ["info", str(f["zcyx_npy"]), "--axes", "CZYX",
                                                       "--voxel-size", "1", "0.5", "0.5"], True),
        ("voxel size in nm in the file", ["info", str(f["nm_tif"])], True),
        ("--voxel-size in nm", ["info", img, "--voxel-size", "1000", "500", "500"], True),
        ("--voxel-size 0.001 um", ["info", img, "--voxel-size", "0.001", "0.001", "0.001"], True),
        ("one-channel stack", ["predict", str(f["one_channel"]), "--out", str(root / "p4"), "--method", "classic"],
         True),
        ("--golgi-channel 5", ["predict", img, "--out", str(root / "p5"), "--method", "classic", "--golgi-channel",
                               "5"], True),
        ("synth --shape 4000 4000 4000", ["synth", "--out", str(root / "s1"), "--n", "1", "--shape", "4000", "4000",
                                          "4000"], True),
        ("synth into a file", ["synth", "--out", str(f["a_file"]), "--n", "1", "--shape", "4", "32", "32"], True),
        ("evaluate, no sidecars, no images", ["evaluate", "--gt", str(f["gt_nosidecar"]), "--pred",
                                              str(f["preds_nosidecar"]), "--voxel-size", "1", "0.5", "0.5"], True),
        ("evaluate, no sidecars, --images, one prediction missing",
         ["evaluate", "--gt", str(f["gt_nosidecar"]), "--pred", str(f["preds_nosidecar"]), "--voxel-size", "1",
          "0.5", "0.5", "--images", s, "--out", str(root / "ev")], False),
        ("evaluate, ground truth outside the image", ["evaluate", "--gt", str(f["outside"]), "--pred", s], True),
        ("import-legacy, 1-based file holding a 0", ["import-legacy", str(f["legacy0"]), "--out",
                                                     str(root / "x.vectors.csv")], True),
        ("import-legacy onto a folder", ["import-legacy", str(f["legacy0"]), "--zero-based", "--out", str(root)], True),
        ("import-legacy an empty file", ["import-legacy", str(f["empty_csv"]), "--out", str(root / "e.vectors.csv")],
         True),
        ("evaluate a ground truth with a 20-digit id", ["evaluate", "--gt", str(f["big_id"].parent), "--pred",
                                                         str(f["preds_nosidecar"]), "--border-margin", "0"], True),
        ("train into a file's folder", ["train", "--images", s, "--out", str(f["a_file"] / "m"), "--init", "none",
                                        "--steps", "1"], True),
        ("train on a project file with a wrong type", ["train", "--project", str(f["project"]), "--out",
                                                       str(root / "m2")], True),
        ("vox2vox train into a file's folder", ["vox2vox", "train", "--images", s, "--out", str(f["a_file"] / "g"),
                                                "--steps", "1"], True),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="scratch folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cellpol-bad-inputs-"))
    root.mkdir(parents=True, exist_ok=True)
    files = make_files(root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    problems = 0
    print(f"{'input':<58} exit  message")
    for what, argv, refuse in cases(files, root):
        done = subprocess.run([sys.executable, "-m", "app.cli", *argv], capture_output=True, text=True, env=env,
                              timeout=600)
        lines = [line for line in done.stderr.splitlines() if line.startswith("cellpol:") or "FAILED" in line]
        message = lines[-1] if lines else (done.stdout.strip().splitlines() or [""])[-1]
        bad = "Traceback" in done.stderr or (refuse and done.returncode == 0)
        problems += bad
        print(f"{what:<58} {done.returncode:>4}  {'!! ' if bad else ''}{message[:400]}")
    print(f"\n{problems} problem(s).")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
