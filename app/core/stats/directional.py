"""Directional statistics on angles (radians) and unit vectors: the formulas, each citing its source.

Pure numpy/scipy; no files, no app types. scipy.stats supplies what it has (``circmean``, ``circstd``,
``directional_stats``); the tests it lacks are written here.
"""

from __future__ import annotations
