"""Seconds to open a 64×1024×1024×2 uint16 volume in the main window, and per-slice scrolling cost."""
import os, sys, time
import numpy as np
from pathlib import Path

import tempfile
path = Path(tempfile.gettempdir()) / "cellpol_bench_open_64x1024x1024.tif"
if not path.exists():
    from app.core.volume import Volume
    from app.core.imageio import write_imagej_tiff
    rng = np.random.default_rng(0)
    data = rng.integers(90, 130, size=(2, 64, 1024, 1024), dtype=np.uint16)
    zz, yy, xx = np.ogrid[:64, :1024, :1024]
    for k in range(60):  # some bright blobs so contrast and rendering have structure
        z, y, x = rng.integers(8, 56), rng.integers(40, 984), rng.integers(40, 984)
        sl = (slice(max(z-6,0), z+6), slice(y-30, y+30), slice(x-30, x+30))
        data[0][sl] += 800
        data[1][(slice(max(z-2,0), z+2), slice(y-5, y+5), slice(x+30, x+40))] += 1500
    write_imagej_tiff(path, Volume(data, (0.5, 0.1, 0.1)))
    del data

from PySide6 import QtCore, QtWidgets
app = QtWidgets.QApplication([])
t_import = time.perf_counter()
from app.ui.main_window import MainWindow
import tempfile
settings = QtCore.QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QtCore.QSettings.Format.IniFormat)
window = MainWindow(settings=settings)
window.document.interactive = False
window.resize(1400, 900)
window.show()
app.processEvents()
times = {}
start = time.perf_counter()
assert window.open_path(path)
times["open_path: read, contrast, slice composites, 3D upload"] = time.perf_counter() - start
for view in window.ortho.views:
    view.graphics.viewport().repaint()
times["slice views painted (image visible)"] = time.perf_counter() - start
window.viewer3d.render()
times["first 3D frame rendered"] = time.perf_counter() - start
for name, value in times.items():
    print(f"{name:55s} {value:6.2f} s after open")
print("3D shown at reduction", window.viewer3d.factors)
# Slice scrolling: each step re-composites XY (1024×1024, 2 channels) and repaints.
steps = []
for k in range(20):
    t = time.perf_counter()
    window.state.step_slice(0, 1 if k < 10 else -1)
    window.ortho.xy.graphics.viewport().repaint()
    app.processEvents()
    steps.append(time.perf_counter() - t)
print(f"slice step (XY 1024×1024 composite + repaint): median {np.median(steps)*1000:.0f} ms, max {max(steps)*1000:.0f} ms")
t = time.perf_counter(); window.state.set_mip(True); app.processEvents(); print(f"MIP toggle first time: {time.perf_counter()-t:.2f} s")
window.release()
