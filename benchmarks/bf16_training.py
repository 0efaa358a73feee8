"""Does training under CPU bf16 autocast learn as well as fp32? (On a CPU with native bf16: AVX512-BF16/AMX.)

Trains the same small network from scratch (or fine-tunes the starter, ``--init starter``) on the same
simulated volumes twice per seed, once in fp32 (what
`cellpol train` does on a CPU) and once under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what it did
before), then scores both on held-out simulated volumes with the decoding calibrated on them. Prints, per
seed and mode: the mean training loss of the last 50 steps, the validation loss, TPR/FDR at τL 0 and 5,
and seconds per step; and the CPU it ran on. Refuses to run where the CPU has no native bf16 (there bf16
is emulated and ~40x slower, and training never uses it).

    python benchmarks/bf16_training.py [--steps 300] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

import torch  # noqa: E402

from app.core.errors import CellPolError  # noqa: E402
from app.core.network import cpu_bf16_is_fast  # noqa: E402
from app.core.simulate import synthesize_dataset  # noqa: E402
import app.training.trainer as trainer  # noqa: E402
from app.training.finetune import TrainingOptions, run_training  # noqa: E402

VOXEL = (1.0, 0.5, 0.5)


def train_once(folder: Path, val: Path, out: Path, steps: int, seed: int, bf16: bool, lr: float | None,
               init: str) -> dict:
    chosen = torch.bfloat16 if bf16 else None
    original = trainer.choose_autocast_dtype
    trainer.choose_autocast_dtype = lambda device, amp: chosen if device.type == "cpu" else original(device, amp)
    try:
        scratch = dict(init=None, model_voxel_size=(2.0, 1.0, 1.0), base_filters=8) if init == "none" else {}
        options = TrainingOptions(images=folder, val_images=val, out=out, steps=steps, epoch_steps=steps // 3,
                                  device="cpu", seed=seed, calibrate="always", keep="last", batch_size=2,
                                  learning_rate=lr, **scratch)
        losses, started, last = [], time.perf_counter(), None
        try:
            for event in run_training(options):
                if event.kind == "step":
                    losses.append(event.losses["total"])
                elif event.kind == "epoch" and "val_loss" in event.metrics:
                    last = event.metrics
                elif event.kind == "done":
                    done = event
        except CellPolError as exc:  # "Training diverged at step N": a result, not a crash
            return {"diverged": str(exc), "steps_done": len(losses)}
        seconds = time.perf_counter() - started
    finally:
        trainer.choose_autocast_dtype = original
    tail = losses[-50:]
    return {"loss_last50": statistics.mean(tail), "nan": any(v != v for v in losses),
            "val_loss": (last or {}).get("val_loss", float("nan")),
            "tpr0": done.metrics.get("tpr0"), "fdr0": done.metrics.get("fdr0"),
            "tpr5": done.metrics.get("tpr5"), "fdr5": done.metrics.get("fdr5"), "s_per_step": seconds / steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: training's)")
    parser.add_argument("--init", choices=("none", "starter"), default="none",
                        help="train a small network from scratch, or fine-tune the bundled starter model")
    args = parser.parse_args()
    if not cpu_bf16_is_fast():
        print(f"This CPU ({cpu_name()}) has no native bf16: nothing to compare (training is fp32 there anyway).")
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        synthesize_dataset(root / "train", 6, shape=(16, 128, 128), voxel_size=VOXEL, seed=100, vary_samples=True)
        synthesize_dataset(root / "val", 3, shape=(16, 128, 128), voxel_size=VOXEL, seed=200, vary_samples=True)
        for seed in args.seeds:
            for bf16 in (False, True):
                result = train_once(root / "train", root / "val", root / f"m_{seed}_{int(bf16)}", args.steps, seed,
                                    bf16, args.lr, args.init)
                rows.append((seed, "bf16" if bf16 else "fp32", result))
                r = result
                if "diverged" in r:
                    print(f"seed {seed} {'bf16' if bf16 else 'fp32'}: {r['diverged']}", flush=True)
                    continue
                print(f"seed {seed} {'bf16' if bf16 else 'fp32'}: loss(last 50) {r['loss_last50']:.4f}"
                      f"{' NaN seen' if r['nan'] else ''}, val loss {r['val_loss']:.4f}, TPR/FDR τL0 "
                      f"{r['tpr0']:.3f}/{r['fdr0']:.3f}, τL5 {r['tpr5']:.3f}/{r['fdr5']:.3f}, "
                      f"{r['s_per_step']:.2f} s/step", flush=True)
    for mode in ("fp32", "bf16"):
        mine = [r for _, m, r in rows if m == mode and "diverged" not in r]
        diverged = sum(1 for _, m, r in rows if m == mode and "diverged" in r)
        if not mine:
            print(f"{mode}: every run diverged ({diverged})")
            continue
        print(f"{mode}: {diverged} of {len(mine) + diverged} run(s) diverged; ", end="")
        print(f"median TPR τL0 {statistics.median(r['tpr0'] for r in mine):.3f}, median FDR τL0 "
              f"{statistics.median(r['fdr0'] for r in mine):.3f}, median val loss "
              f"{statistics.median(r['val_loss'] for r in mine):.4f}, median {statistics.median(r['s_per_step'] for r in mine):.2f} s/step")
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; {args.steps} steps, "
          f"seeds {args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
