"""How long does the window's event loop stall while it predicts a large stack? (goal: ≤ 100 ms)

Opens the main window (under a virtual screen), opens a simulated 64×768×768×2 stack, presses "Predict this
image" in the Predict dock, and measures, with a 10 ms QTimer, the gaps between its ticks until the job ends.
Prints the longest stall, the 99th percentile and the median gap, the prediction's duration and the CPU.

    xvfb-run -a python benchmarks/ui_stall.py [--shape 64 768 768] [--repeats 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(64, 768, 768))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from PySide6 import QtCore, QtWidgets

    from app.core.simulate import synthesize_dataset
    from app.ui.main_window import MainWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        synthesize_dataset(Path(scratch), 1, shape=tuple(args.shape), voxel_size=(0.27, 0.666, 0.666), seed=1,
                           preset="retina")
        print(f"simulated {tuple(args.shape)} in {time.perf_counter() - started:.1f} s", flush=True)
        settings = QtCore.QSettings(str(Path(scratch) / "settings.ini"), QtCore.QSettings.Format.IniFormat)
        window = MainWindow(settings=settings, enable_3d=False)
        window.document.interactive = False
        window.ask_on_close = False
        window.show()
        window.open_path(Path(scratch) / "synth_0000.tif")
        panel = window.show_predict_panel()
        for _ in range(50):
            app.processEvents()
        results = []
        collections: list[float] = []  # seconds of each garbage collection (a full one scans every object)
        started_gc: list[float] = []
        gc.callbacks.append(lambda phase, info: started_gc.append(time.perf_counter()) if phase == "start"
                            else collections.append(time.perf_counter() - started_gc.pop()))
        for repeat in range(args.repeats):
            collections.clear()
            ticks: list[float] = []
            timer = QtCore.QTimer()
            timer.setInterval(10)
            timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
            before = len(window.model)
            timer.start()
            started = time.perf_counter()
            panel.predict_image()
            handle = panel.handle
            finished_at: list[float] = []
            handle.succeeded.connect(lambda _: finished_at.append(time.perf_counter()))  # when the result arrives
            while handle is not None and handle.running:
                app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
            seconds = time.perf_counter() - started
            for _ in range(20):
                app.processEvents()
            timer.stop()
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
            when = ticks[worst] - started if gaps else 0.0
            gaps_ms = sorted(g * 1000 for g in gaps)
            end = finished_at[0] if finished_at else ticks[-1]
            during = [(b - a) * 1000 for a, b in zip(ticks, ticks[1:]) if b <= end]
            results.append(gaps_ms[-1])
            print(f"run {repeat + 1}: prediction {seconds:.1f} s ({handle.status}, {len(window.model) - before} "
                  f"vectors added); event-loop gaps: longest {gaps_ms[-1]:.0f} ms, 99th percentile "
                  f"{gaps_ms[int(0.99 * (len(gaps_ms) - 1))]:.0f} ms, median {statistics.median(gaps_ms):.0f} ms "
                  f"over {len(gaps_ms)} ticks; the longest began {when:.1f} s after the start; while the worker predicted "
                  f"(until its result arrived): longest {max(during) if during else float('nan'):.0f} ms; longest "
                  f"garbage collection {1000 * max(collections, default=0):.0f} ms", flush=True)
        window.release() if hasattr(window, "release") else window.close()
    print(f"longest stall (median over runs): {statistics.median(results):.0f} ms; goal ≤ 100 ms")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
