"""Train the 3D starter from scratch on one GPU in one call of at most 9 minutes, then measure it.

Prepared for the few minutes a GPU machine is lent (issue 23, item 4). Here, once per session::

    .venv/bin/python benchmarks/gpu_starter.py --prepare     # copies the data it needs into .gpu_data/

then one device call (the GPU machine's own python3 holds PyTorch; nothing is installed there)::

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_starter.py --out $OUT", carry=[".gpu_data"],
        timeout_s=600)

and on the CPU, to check it works first time (a few steps of a tiny network, minutes)::

    .venv/bin/python benchmarks/gpu_starter.py --smoke --out /tmp/gpu_smoke

What it does, within ``--budget`` seconds of wall time (default 530, under the 9-minute goal):

1. prints the machine (CPU, GPU, torch);
2. trains ``python -m app.training.starter`` from scratch on CUDA: a wider network than the CPU starter
   (``--base-filters 16``, 4× its weights), bigger patches and batches, patches simulated and cut by
   ``--workers`` processes (:mod:`app.training.parallel`), the same broad data as the shipped starter
   (varied samples, crowded layouts, appearance shifts, 3DNGMic shapes when carried), as many steps as fit
   in the time left after the measurements' reserve (``--time-budget``: a short probe times a step first),
   then the decoding calibration on 24 fixed simulator volumes on the GPU;
3. writes ``<out>/cellpol_starter_gpu.json`` + ``.safetensors`` (with the exact command in its provenance;
   checkpoints stay in a temporary folder, since the device tool brings back at most 8 files),
   ``<out>/train.log``, and ``<out>/accuracy.txt``: ``benchmarks/accuracy.py`` for the new model and the
   shipped starter on held-out simulator volumes, on the outside renderer's volumes and on the real
   annotated layouts drawn by it (what time allows, most telling first);
4. ``<out>/speed.txt``: ``benchmarks/predict_speed.py`` on the GPU for the 64×768×768×2 goal (≤ 1 s).

Each step is a subprocess with its own deadline, so a slow step costs its own result, not the others'.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".gpu_data"
SHARED = ROOT.parent / "shared" / "data"
#: Seconds kept back from training for the calibration (inside the training step), and after it for the
#: accuracy tables and the speed figure.
CALIBRATION_S = 90.0
MEASURE_S = 220.0  # the outside renderer draws on the CPU, about 10 s per volume


def prepare() -> int:
    """Copy what the GPU run reads from ../shared (it does not travel) into .gpu_data (git-ignored)."""
    DATA.mkdir(exist_ok=True)
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir():
        known = exclude.read_text() if exclude.exists() else ""
        if "/.gpu_data/" not in known.split():
            exclude.write_text(known + ("" if known.endswith("\n") or not known else "\n") + "/.gpu_data/\n")
    for name in ("shapes_3dngmic", "retina3d_vectors"):
        source = SHARED / name
        if source.is_dir():
            shutil.copytree(source, DATA / name, dirs_exist_ok=True)
            print(f"copied {source} -> {DATA / name}")
        else:
            print(f"not found: {source} (the run goes on without it)")
    return 0


def machine() -> str:
    lines = [f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            lines.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        lines.append("torch missing")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from machine import cpu_name

        lines.append(f"CPU {cpu_name()}")
    except Exception:  # noqa: BLE001 - information only
        pass
    return "; ".join(lines)


def step(command: list[str], log: Path, deadline: float, label: str) -> bool:
    """Run ``command`` (output appended to ``log`` and echoed) until it ends or ``deadline``; True if it ended
    with status 0."""
    left = deadline - time.time()
    if left < 5:
        print(f"[{label}] skipped: no time left", flush=True)
        return False
    print(f"[{label}] {' '.join(command)}  (up to {left:.0f} s)", flush=True)
    started = time.time()
    with log.open("a") as out:
        out.write(f"\n# {label}: {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert process.stdout is not None
            for line in process.stdout:
                out.write(line)
                print(line, end="", flush=True)
                if time.time() > deadline:
                    process.kill()
                    print(f"[{label}] stopped at its deadline", flush=True)
                    return False
            process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            return False
    print(f"[{label}] rc {process.returncode} in {time.time() - started:.0f} s", flush=True)
    return process.returncode == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_starter_out")))
    parser.add_argument("--budget", type=float, default=530.0, help="seconds of wall time for everything")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare", action="store_true", help="copy ../shared data into .gpu_data and stop")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny CPU run of every step (checks the script, not the model)")
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare()
    started = time.time()
    deadline = started + args.budget
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train.log"
    print(machine(), flush=True)
    python = sys.executable
    shapes = next((p for p in (DATA / "shapes_3dngmic", SHARED / "shapes_3dngmic") if p.is_dir()), None)
    layouts = next((p for p in (DATA / "retina3d_vectors", SHARED / "retina3d_vectors") if p.is_dir()), None)
    # Checkpoints stay out of OUT (the device tool brings back at most 8 files); the model is copied there.
    work = Path(tempfile.mkdtemp(prefix="gpu_starter_"))
    model = work / "cellpol_starter_gpu"
    calibration_s, measure_s = CALIBRATION_S, MEASURE_S
    train = [python, "-m", "app.training.starter", "--out", str(model), "--dims", "3",
             "--batch", str(args.batch), "--patch", *map(str, args.patch), "--base-filters", str(args.base_filters),
             "--lr", str(args.lr), "--embedding-weight", "0.5", "--seed", str(args.seed),
             "--vary-samples", "--vary-layout", "0.35", "--appearance", "0.7", "--pool", str(8 * args.workers),
             "--workers", str(args.workers), "--device", args.device, "--fast",
             "--calibration-volumes", "24", "--calibration-seed", "1000", "--calibration-device", args.device]
    n_eval, eval_device = "8", args.device
    if args.smoke:
        # Every step once, tiny and on the CPU: a check of the script, not of the model.
        for flag, value in (("--batch", "2"), ("--base-filters", "4"), ("--workers", "2"), ("--pool", "4"),
                            ("--calibration-volumes", "1"), ("--device", "cpu"), ("--calibration-device", "cpu")):
            train[train.index(flag) + 1] = value
        i = train.index("--patch")
        train[i + 1:i + 4] = ["16", "64", "64"]
        calibration_s, measure_s, n_eval, eval_device = 30.0, args.budget - 70.0, "1", "cpu"
    if shapes is not None:
        train += ["--shapes-dir", str(shapes)]
    # 30 s for start-up and the probe that times a step; the calibration runs inside the training step.
    budget_train = max(10.0, deadline - time.time() - measure_s - calibration_s - 30.0)
    train += ["--time-budget", f"{budget_train:.0f}"]
    trained = step(train, log, deadline - measure_s if not args.smoke else deadline, "train")
    if not trained or not model.with_suffix(".json").exists():
        print("training did not finish; no model to measure", flush=True)
        return 1
    for suffix in (".json", ".safetensors"):
        shutil.copy2(model.with_suffix(suffix), out / model.with_suffix(suffix).name)
    accuracy = out / "accuracy.txt"
    starter = ROOT / "resources" / "models" / "cellpol_starter.json"
    models = ["--model", str(model.with_suffix(".json"))] + (["--model", str(starter)] if starter.exists() else [])
    runs = [("held-out simulator", []), ("outside renderer", ["--renderer", "outside"])]
    if layouts is not None:
        runs.append(("real layouts, outside renderer", ["--renderer", "outside", "--layouts", str(layouts),
                                                         "--limit", "4"]))
    speed_s = 40.0 if not args.smoke else 0.0
    for label, extra in runs:
        with accuracy.open("a") as f:
            f.write(f"\n## {label}\n")
        step([python, "benchmarks/accuracy.py", *models, "--n", n_eval, "--device", eval_device, *extra],
             accuracy, deadline - speed_s, f"accuracy: {label}")
    if not args.smoke:
        step([python, "benchmarks/predict_speed.py", "--model", str(model.with_suffix(".json")), "--device",
              args.device, "--repeats", "2", "--cells", "0"], out / "speed.txt", deadline, "speed")
    print(f"done in {time.time() - started:.0f} s; files in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
