"""A large image in the window: it opens at a downsampled level, zooming in brings the full-resolution region in a
worker thread (matching the file's pixels), scrolling while reads are in flight never stalls the window, and
snapping reads the file at full resolution.

The image here is small; the settings make it count as large (``large_image_mb``) and keep the coarsest level
small (``multiscale_budget_mb``), so the same code paths run as for a whole-retina scan.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore  # noqa: E402

from app.core.imageio import write_imagej_tiff  # noqa: E402
from app.core.multiscale import block_mean  # noqa: E402
from app.core.volume import Volume  # noqa: E402
from app.ui.document import LARGE_IMAGE_NOTE  # noqa: E402

VOXEL = (1.0, 0.25, 0.25)
SHAPE = (2, 24, 400, 360)   # (C, Z, Y, X): 13.8 MB
NUCLEUS = (12, 200, 180)


def large_data() -> np.ndarray:
    """Noise (so block averages differ from the raw pixels) plus one bright nucleus blob in channel 0."""
    rng = np.random.default_rng(3)
    data = rng.integers(100, 1100, SHAPE, dtype=np.uint16)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in SHAPE[1:]], indexing="ij")
    blob = 20000 * np.exp(-0.5 * (((zz - NUCLEUS[0]) / 2.0) ** 2 + ((yy - NUCLEUS[1]) / 5.0) ** 2
                                  + ((xx - NUCLEUS[2]) / 5.0) ** 2))
    data[0] += blob.astype(np.uint16)
    return data


@pytest.fixture
def large(tmp_path, settings):
    """(path, data): an ImageJ TIFF the window opens as a large image (threshold 1 MB, coarsest level ≤ 1 MB)."""
    data = large_data()
    path = write_imagej_tiff(tmp_path / "retina.tif", Volume(data, VOXEL, channel_names=("nuclei", "golgi")))
    settings.setValue("large_image_mb", 1)
    settings.setValue("multiscale_budget_mb", 1)
    settings.setValue("multiscale_cache", str(tmp_path / "cache"))
    return path, data


def open_large(qtbot, window, path):
    messages = []
    window.document.status.connect(messages.append)
    assert window.open_path(path)
    qtbot.wait(30)
    return messages


def zoom_to(view, h_range, v_range) -> None:
    """Show level-0 voxels ``h_range`` × ``v_range`` (the view's horizontal and vertical axes) in ``view``."""
    size = view.state.voxel_size
    h, v = view.h_axis, view.v_axis
    view.viewbox.setRange(xRange=(h_range[0] * size[h], h_range[1] * size[h]),
                          yRange=(v_range[0] * size[v], v_range[1] * size[v]), padding=0)


def file_region(data, view, request) -> np.ndarray:
    """What the file holds for a detail request at level 0: (C, a, b) in the plane's axis order."""
    (a0, a1), (b0, b1) = request["region"]
    index = view.state.slice_index(view.axis)
    key = [slice(None)] * 4
    key[1 + view.axis] = index
    first, second = {0: (1, 2), 1: (0, 2), 2: (0, 1)}[view.axis]
    key[1 + first], key[1 + second] = slice(a0, a1), slice(b0, b1)
    return data[tuple(key)]


def test_large_image_opens_at_a_downsampled_level(qtbot, window, large):
    path, data = large
    messages = open_large(qtbot, window, path)
    state = window.state
    assert state.is_multiscale
    assert state.volume.spatial_shape == SHAPE[1:]           # annotations stay in full-resolution voxels
    assert state.volume.voxel_size == VOXEL
    assert state.volume.data.nbytes == data.nbytes and state.volume.data.strides[1:] == (0, 0, 0)  # no pixels held
    preview = state.preview()
    assert preview.nbytes <= 2**20
    factors = state.preview_factors()
    assert factors[1] > 1 and factors[2] > 1
    np.testing.assert_array_equal(preview, block_mean(data, factors))
    xy = window.ortho.xy
    assert xy.image.image.shape[:2] == preview.shape[2:]     # the XY view shows the coarsest level
    assert any(LARGE_IMAGE_NOTE in m for m in messages)
    assert window.document.errors == []
    # the contrast comes from the downsampled level, not the empty placeholder
    assert state.displays[0].low > 100 and state.displays[0].high > 500   # zeros would give (0, 1)


def test_zoom_in_brings_the_full_resolution_region(qtbot, window, large):
    path, data = large
    open_large(qtbot, window, path)
    xy = window.ortho.xy
    assert not xy.detail.isVisible()
    zoom_to(xy, (150, 230), (160, 240))
    qtbot.waitUntil(lambda: xy.detail.isVisible() and xy.detail_shown["level"] == 0, timeout=15000)
    request = xy.detail_shown
    (a0, a1), (b0, b1) = request["region"]
    assert a0 <= 160 and a1 >= 240 and b0 <= 150 and b1 >= 230   # the region in view (and a margin)
    assert (a1 - a0) < SHAPE[2] or (b1 - b0) < SHAPE[3]          # not the whole plane
    np.testing.assert_array_equal(xy.detail_planes, file_region(data, xy, request))
    # it is drawn where those voxels are (µm)
    rect = xy.detail.mapRectToParent(xy.detail.boundingRect())
    assert rect.left() == pytest.approx(b0 * VOXEL[2]) and rect.top() == pytest.approx(a0 * VOXEL[1])
    assert rect.width() == pytest.approx((b1 - b0) * VOXEL[2])
    # the XZ view (y fixed) zoomed in too
    xz = window.ortho.xz
    zoom_to(xz, (100, 200), (0, 24))
    qtbot.waitUntil(lambda: xz.detail.isVisible() and xz.detail_shown["level"] == 0, timeout=15000)
    np.testing.assert_array_equal(xz.detail_planes, file_region(data, xz, xz.detail_shown))
    # zooming far out hides it: the coarsest level is as sharp as the screen then
    zoom_to(xy, (-2000, 2400), (-2000, 2400))
    qtbot.waitUntil(lambda: not xy.detail.isVisible(), timeout=5000)


def test_scrolling_while_reads_are_in_flight_never_stalls(qtbot, window, large):
    path, data = large
    open_large(qtbot, window, path)
    state, xy = window.state, window.ortho.xy
    image = state.multiscale.image
    real_read = image.read_region

    def slow_read(*args, **kwargs):  # a slow disk for the views' region reads: 800 ms each in the worker thread
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.8)
        return real_read(*args, **kwargs)

    image.read_region = slow_read
    zoom_to(xy, (150, 230), (160, 240))
    qtbot.waitUntil(lambda: xy.detail.isVisible(), timeout=15000)
    reads_before = xy.detail_loader.reads

    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    probe = QtCore.QTimer()
    probe.setInterval(5)
    probe.timeout.connect(tick)
    probe.start()
    steps = 30
    for _ in range(steps):   # a burst of Shift+wheel steps through z, 25 ms apart
        state.step_slice(0, -1 if state.slice_index(0) > 0 else 1)
        qtbot.wait(25)
    final = state.slice_index(0)
    qtbot.waitUntil(lambda: xy.detail.isVisible() and xy.detail_shown["slice"] == final
                    and not xy.detail_loader.busy, timeout=20000)
    probe.stop()
    # A read on the GUI thread would stall it for at least 800 ms; drawing under a loaded CI machine stays well
    # below 600 ms (measured: 160–300 ms on 2 cores busy with training; responsiveness itself is measured by
    # benchmarks, not here).
    assert max(gaps) < 0.6, f"the GUI thread stalled {max(gaps) * 1000:.0f} ms"
    # stale positions were dropped: far fewer reads than steps, and what is shown is the last slice's pixels
    assert xy.detail_loader.reads - reads_before < steps // 2
    np.testing.assert_array_equal(xy.detail_planes, file_region(data, xy, xy.detail_shown))


def test_snapping_reads_full_resolution(qtbot, window, large):
    path, _ = large
    open_large(qtbot, window, path)
    state = window.state
    state.set_snap(True, radius_um=3.0)
    snapped = state.snapped((NUCLEUS[0] + 1, NUCLEUS[1] + 4, NUCLEUS[2] - 4), "nucleus")
    assert np.allclose(snapped, NUCLEUS, atol=0.6)
    # the crosshair's intensities come from the file, not the placeholder
    values = state.intensities_at(NUCLEUS)
    assert values[0] > 15000


def test_voxel_size_change_keeps_the_large_image(qtbot, window, large):
    path, _ = large
    open_large(qtbot, window, path)
    multiscale = window.state.multiscale
    volume = window.state.volume
    window.document.load_volume(volume.with_voxel_size((2.0, 0.5, 0.5)), image_path=path)
    assert window.state.multiscale is multiscale
    assert window.state.voxel_size == (2.0, 0.5, 0.5)


def test_normal_stack_opens_as_before(qtbot, window, large, settings):
    path, data = large
    settings.setValue("large_image_mb", 0)   # the default: a share of the memory available
    assert window.open_path(path)
    assert not window.state.is_multiscale
    np.testing.assert_array_equal(window.state.volume.data, data)


def test_status_bar_contrast_and_prediction_read_the_file_not_the_placeholder(qtbot, window, large):
    """In large-image mode the status bar's intensities, the contrast slider's range and Auto, and "predict
    this image" all reach the file's pixels (the open volume holds none)."""
    path, data = large
    open_large(qtbot, window, path)
    from app.ui.channel_controls import ChannelRow

    window.status_bar.show_position((0, NUCLEUS))
    assert f"nuclei {int(data[0][NUCLEUS])}" in window.status_bar.position_label.text()
    rows = window.findChildren(ChannelRow)
    assert len(rows) == 2
    rows[0].auto_contrast()
    low, high = rows[0].contrast.value()
    assert high > low >= 100  # from the coarse level's pixels (noise 100–1100), not the all-zero placeholder
    volume = window.volume_to_predict()
    from app.core.inference.streaming import LazyVolume

    assert isinstance(volume, LazyVolume) and volume.voxel_size == VOXEL
    assert volume.image.read_region(z=(NUCLEUS[0], NUCLEUS[0] + 1))[0, 0, NUCLEUS[1], NUCLEUS[2]] == data[0][NUCLEUS]
    assert (volume.nucleus_channel, volume.golgi_channel) == (0, 1)
