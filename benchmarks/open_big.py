"""Opening an image larger than the window should load: time to first view, peak memory, and how long the
full-resolution region takes to arrive after a zoom.

Writes a 96×2048×2048×2 uint16 ImageJ TIFF (1.5 GiB) plane by plane (never whole), then, in a fresh process,
opens it in the main window (offscreen) forced into large-image mode, twice: cold (the coarsest level computed
from the file) and warm (from the sidecar cache). The file's pages are in the OS page cache after writing, so
the cold figure is the best case for reading; a disk at 200 MB/s adds about 8 s. The file is deleted after.

    .venv/bin/python benchmarks/open_big.py [--keep] [--path FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = (96, 2, 2048, 2048)   # Z, C, Y, X as stored
VOXEL = (1.0, 0.2, 0.2)


def write_big(path: Path) -> None:
    """The stack, one 2048×2048 plane at a time (8 MiB in memory at most, plus a 2048² noise pattern)."""
    import tifffile

    rng = np.random.default_rng(0)
    pattern = rng.integers(80, 160, SHAPE[2:], dtype=np.uint16)
    yy, xx = np.ogrid[:SHAPE[2], :SHAPE[3]]
    cells = rng.integers(64, 1984, size=(400, 3)) * np.array([1, 1, 1])

    def planes():
        for z in range(SHAPE[0]):
            for c in range(SHAPE[1]):
                plane = np.roll(pattern, 37 * z + 101 * c, axis=1).copy()
                near = cells[np.abs(cells[:, 2] % SHAPE[0] - z) < 4]
                for y, x, _ in near:
                    size = 14 if c == 0 else 4
                    dy, dx = (0, 0) if c == 0 else (10, 12)
                    plane[max(0, y + dy - size):y + dy + size, max(0, x + dx - size):x + dx + size] += 1500
                yield plane

    with tifffile.TiffWriter(path, imagej=True) as tif:
        tif.write(planes(), shape=SHAPE, dtype=np.uint16, resolution=(1 / VOXEL[2], 1 / VOXEL[1]),
                  metadata={"axes": "ZCYX", "spacing": VOXEL[0], "unit": "um"})


def child(path: Path, cache: Path) -> dict:
    """In a fresh process: open ``path`` twice (cold, then from the cache) and zoom in once."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ.pop("DISPLAY", None)
    from PySide6 import QtCore, QtWidgets

    app = QtWidgets.QApplication([])
    from app.ui.main_window import MainWindow

    settings = QtCore.QSettings(str(cache / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    settings.setValue("large_image_mb", 1)            # force large-image mode (1.5 GiB fits this machine)
    settings.setValue("multiscale_cache", str(cache / "levels"))
    window = MainWindow(settings=settings, enable_3d=False)
    window.document.interactive = False
    window.ask_on_close = False
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures: dict = {"rss_before_open_mb": round(rss_before)}

    def wait(condition, timeout=120.0):
        end = time.perf_counter() + timeout
        while not condition():
            app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 20)
            if time.perf_counter() > end:
                raise TimeoutError("the full-resolution region did not arrive")

    for run in ("cold", "warm"):
        start = time.perf_counter()
        assert window.open_path(path), window.document.errors
        app.processEvents()
        first_view = time.perf_counter() - start
        state, xy = window.state, window.ortho.xy
        assert state.is_multiscale
        # zoom into a 300×300-voxel region in the middle of the XY view
        size = state.voxel_size
        cy, cx = SHAPE[2] // 2, SHAPE[3] // 2
        start = time.perf_counter()
        xy.viewbox.setRange(xRange=((cx - 150) * size[2], (cx + 150) * size[2]),
                            yRange=((cy - 150) * size[1], (cy + 150) * size[1]), padding=0)
        wait(lambda: xy.detail.isVisible() and xy.detail_shown["level"] == 0)
        zoom = time.perf_counter() - start  # includes the 60 ms pause the view waits for the zoom to settle
        # and a slice step while zoomed in
        start = time.perf_counter()
        state.step_slice(0, 1)
        target = state.slice_index(0)
        wait(lambda: xy.detail.isVisible() and xy.detail_shown["slice"] == target)
        step = time.perf_counter() - start
        figures[run] = {"first_view_s": round(first_view, 2), "zoom_full_res_s": round(zoom, 3),
                        "next_slice_full_res_s": round(step, 3),
                        "levels": state.multiscale.describe(),
                        "from_cache": state.multiscale.built_from_cache}
        window.document.model.mark_saved()
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    window.release()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=Path(tempfile.gettempdir()) / "cellpol_open_big.tif")
    parser.add_argument("--keep", action="store_true", help="keep the big file")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return
    from benchmarks.machine import cpu_name

    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores)")
    path = args.path
    try:
        if not path.exists():
            start = time.perf_counter()
            write_big(path)
            print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) plane by plane in "
                  f"{time.perf_counter() - start:.1f} s; peak RSS of the writer "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        with tempfile.TemporaryDirectory() as cache:
            done = subprocess.run([sys.executable, __file__, "--child", str(path), cache], capture_output=True,
                                  text=True, cwd=ROOT)
            if done.returncode != 0:
                print(done.stdout, done.stderr)
                raise SystemExit(done.returncode)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
        in_memory = np.prod(SHAPE) * 2 / 2**20
        print(f"image {SHAPE[0]}×{SHAPE[2]}×{SHAPE[3]}×{SHAPE[1]} uint16 = {in_memory:.0f} MiB if loaded whole")
        for run in ("cold", "warm"):
            f = figures[run]
            print(f"{run:>4}: first view {f['first_view_s']:.2f} s; full resolution after a zoom "
                  f"{f['zoom_full_res_s'] * 1000:.0f} ms; next slice at full resolution "
                  f"{f['next_slice_full_res_s'] * 1000:.0f} ms (levels {f['levels']}; from cache: {f['from_cache']})")
        print(f"peak RSS of the window process: {figures['peak_rss_mb']} MB "
              f"(before opening: {figures['rss_before_open_mb']} MB)")
    finally:
        if not args.keep and path.exists():
            path.unlink()


if __name__ == "__main__":
    main()
