"""How channels are shown: colour, contrast, gamma, visibility, and the composite of all channels.

Pure numpy (no Qt), shared by the slice views and the 3D view so both show the same thing.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from app.core.volume import Volume

RGB = tuple[int, int, int]

NUCLEUS_COLOUR: RGB = (40, 230, 80)    # green
GOLGI_COLOUR: RGB = (255, 50, 230)     # magenta
OTHER_COLOURS: tuple[RGB, ...] = ((80, 160, 255), (255, 200, 40), (200, 200, 200))

#: Overlay colours by pair source, and by evaluation result.
SOURCE_COLOURS: dict[str, RGB] = {
    "manual": (255, 215, 0),
    "predicted": (0, 200, 255),
    "corrected": (255, 140, 0),
    "imported": (235, 235, 235),
    "simulated": (180, 255, 120),
}
#: "border": left out of the scoring by the border margin (app.core.annotation.BORDER).
EVALUATION_COLOURS: dict[str, RGB] = {"TP": (60, 255, 120), "FP": (255, 60, 60), "FN": (70, 130, 255),
                                      "border": (150, 150, 150)}
DEFAULT_OVERLAY_COLOUR: RGB = (235, 235, 235)
#: Colour ramp of the "score" colour mode, from a prediction's lowest score (0) to its highest (1): grey (doubtful)
#: through blue to the cyan of predictions, clear of the annotations' yellow and orange and the channels' colours.
SCORE_RAMP: tuple[RGB, RGB, RGB] = ((140, 140, 160), (90, 140, 255), (40, 230, 255))


#: Score colours come in this many steps (tenths): the views draw one line item and one marker image per distinct
#: colour, so a continuous ramp over a thousand predictions stalled the window for 0.3 s (benchmarks/ui_stall.py).
SCORE_STEPS = 10


def score_colour(score: float) -> RGB:
    """The colour of a predicted pair's score in [0, 1] (:data:`SCORE_RAMP`, linear between its stops, in
    :data:`SCORE_STEPS` steps)."""
    return _step_colour(round(min(1.0, max(0.0, float(score))) * SCORE_STEPS))


@functools.lru_cache(maxsize=SCORE_STEPS + 1)
def _step_colour(step: int) -> RGB:
    t = step / SCORE_STEPS * 2.0
    low, high = (SCORE_RAMP[0], SCORE_RAMP[1]) if t <= 1.0 else (SCORE_RAMP[1], SCORE_RAMP[2])
    f = t if t <= 1.0 else t - 1.0
    return tuple(int(round(a + (b - a) * f)) for a, b in zip(low, high))  # type: ignore[return-value]
SELECTED_COLOUR: RGB = (255, 255, 255)


@dataclass
class ChannelDisplay:
    """Display settings of one channel. ``low``/``high`` are raw intensities mapped to black/full colour."""

    name: str
    colour: RGB
    low: float
    high: float
    gamma: float = 1.0
    visible: bool = True

    def replace(self, **changes) -> "ChannelDisplay":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"colour": list(self.colour), "gamma": self.gamma, "visible": self.visible}


def auto_contrast(channel: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.8),
                  max_samples: int = 2_000_000) -> tuple[float, float]:
    """Contrast limits from percentiles of (a regular subsample of) a channel.

    A 64×1024×1024 channel has 67 M voxels; a strided sample of ≤ 2 M gives the same limits to within
    noise in a few milliseconds instead of seconds.
    """
    sample = subsample(channel, max_samples)
    low, high = np.percentile(sample, percentiles)
    low, high = float(low), float(high)
    if high <= low:
        high = low + 1.0
    return low, high


def subsample(channel: np.ndarray, max_samples: int = 2_000_000) -> np.ndarray:
    """A regular sample of at most about ``max_samples`` voxels, without copying the whole channel
    (``reshape(-1)`` of a transposed view would copy all of it)."""
    steps = [1] * channel.ndim
    axis = 0
    while np.prod([max(1, -(-n // s)) for n, s in zip(channel.shape, steps)]) > max_samples:
        if channel.shape[axis] // (steps[axis] + 1) >= 1:
            steps[axis] += 1
        axis = (axis + 1) % channel.ndim
        if all(st >= n for st, n in zip(steps, channel.shape)):
            break
    return channel[tuple(slice(None, None, st) for st in steps)]


def intensity_range(dtype: np.dtype, channel: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Range for contrast sliders: the dtype's range for integers, the data range for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if channel is not None and dtype.itemsize > 1:
            top = float(subsample(channel).max())
            return 0.0, float(min(info.max, max(255.0, top * 1.25)))
        return float(info.min), float(info.max)
    if channel is None:
        return 0.0, 1.0
    return float(np.nanmin(channel)), float(np.nanmax(channel))


def default_displays(volume: Volume, preview: Optional[np.ndarray] = None) -> list[ChannelDisplay]:
    """Green nuclei, magenta Golgi, other channels blue/yellow/grey, contrast from percentiles (of ``preview``,
    ``(C, Z, Y, X)``, where given: a large image's coarsest level, its ``volume.data`` holding no pixels)."""
    others = iter(OTHER_COLOURS * 4)
    displays = []
    for index, name in enumerate(volume.channel_names):
        if index == volume.nucleus_channel:
            colour = NUCLEUS_COLOUR
        elif index == volume.golgi_channel:
            colour = GOLGI_COLOUR
        else:
            colour = next(others)
        low, high = auto_contrast((preview if preview is not None else volume.data)[index])
        displays.append(ChannelDisplay(name, colour, low, high))
    return displays


class CompositeRenderer:
    """Blend planes of several channels into one RGB image (additive, clipped).

    Integer data goes through a per-channel lookup table (built once per settings change), which is
    about five times faster than float arithmetic on a 1024×1024 plane.
    """

    def __init__(self) -> None:
        self._luts: dict[int, tuple[tuple, np.ndarray]] = {}

    def _lut(self, index: int, display: ChannelDisplay, dtype: np.dtype) -> Optional[np.ndarray]:
        dtype = np.dtype(dtype)
        if not (np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize <= 2):
            return None
        key = (dtype.str, display.colour, display.low, display.high, display.gamma)
        cached = self._luts.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        levels = np.arange(np.iinfo(dtype).max + 1, dtype=np.float32)
        lut = _scaled(levels, display)[:, None] * (np.asarray(display.colour, np.float32) / 255.0)
        lut = np.round(lut).astype(np.uint16)
        self._luts[index] = (key, lut)
        return lut

    def render(self, planes: Sequence[Optional[np.ndarray]], displays: Sequence[ChannelDisplay]) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` of the visible channels; ``None`` planes are skipped."""
        shape = next((p.shape for p in planes if p is not None), None)
        if shape is None:
            return np.zeros((1, 1, 3), np.uint8)
        acc = np.zeros(shape + (3,), np.uint16)
        for index, (plane, display) in enumerate(zip(planes, displays)):
            if plane is None or not display.visible:
                continue
            lut = self._lut(index, display, plane.dtype)
            if lut is not None:
                acc += lut[plane]
            else:
                values = _scaled(plane.astype(np.float32), display)
                acc += np.round(values[..., None] * (np.asarray(display.colour, np.float32) / 255.0)).astype(np.uint16)
        np.minimum(acc, 255, out=acc)
        return acc.astype(np.uint8)


def _scaled(values: np.ndarray, display: ChannelDisplay) -> np.ndarray:
    """Intensities → 0…255 with the display's limits and gamma."""
    span = max(display.high - display.low, 1e-9)
    unit = np.clip((values - display.low) / span, 0.0, 1.0)
    if display.gamma != 1.0 and display.gamma > 0:
        unit = unit ** display.gamma  # as napari: gamma < 1 brightens dim structures
    return unit * 255.0
