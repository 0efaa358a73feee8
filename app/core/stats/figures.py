"""The figures of a polarity analysis (``cellpol stats``, the app's Statistics export): rose plots of the in-plane
azimuth, elevation histograms, 3D directions on an equal-area projection and length distributions, one panel per
group; each saved as PNG and SVG, and ``report.pdf`` (a first page with the inputs and the between-group tests, then
one page per group with its four figures and its summary numbers).

Matplotlib's :class:`~matplotlib.figure.Figure` with an Agg canvas is used directly: no pyplot, so no global figure
state, no GUI backend, and drawing is safe in a worker thread. Every ``draw_*`` function draws one group into axes
it is given and every ``*_figure`` function lays out one panel per group, so the app can draw the same pictures
from the arrays it holds (``*_by_group`` arguments map a group's name to its values, in the order to draw them).

Angles are in degrees, as the :class:`~app.core.stats.VectorTable` holds them: the azimuth is read as the
statistics define it (:data:`app.core.stats.AZIMUTH_CONVENTION`, printed under every rose plot) and drawn with 0° to
the right and angles growing counter-clockwise, so a rose plot reads like the image as displayed.

The equal-area plot (Lambert azimuthal) shows each direction as a point in one of two discs side by side: the left
disc the directions with elevation ≥ 0, seen from the + elevation pole, the right disc those with elevation < 0,
seen from the same side (through the sphere), so that in both discs a point's angle from the centre is its azimuth
exactly as on the rose plot. The centre of a disc is straight up (or down), the rim the image plane; equal areas
on the sphere are equal areas in the disc, so a uniform spread of directions gives an even scatter, not one
crowded at the rim. The star marks the 3D mean direction.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from app.core.fileutil import atomic_path
from app.core.stats.tables import format_value

#: Figures written by :func:`save_group_figures` (and ``cellpol stats``): file stem → what it shows.
FIGURES = {
    "rose": "in-plane azimuth per group (rose plot)",
    "elevation": "elevation per group (histogram)",
    "equal_area": "3D directions per group (equal-area projection)",
    "lengths": "vector lengths per group (histogram)",
}
#: One colour per group, in the order the groups are drawn.
GROUP_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                 "tab:olive", "tab:cyan", "tab:gray")
#: Name shown for vectors without a group.
NO_GROUP = "all"
_PANELS_PER_ROW = 3
_A4_PORTRAIT = (8.27, 11.69)
_LINE = 7.0 / 72.0 / (_A4_PORTRAIT[1] * 0.94)  # one line of 7 pt text in the first page's axes coordinates


def _convention(convention: Optional[str]) -> str:
    if convention is not None:
        return convention
    from app.core.stats import AZIMUTH_CONVENTION

    return AZIMUTH_CONVENTION


def _label(group: Any) -> str:
    return str(group) if group not in (None, "") else NO_GROUP


def _colour(k: int) -> str:
    return GROUP_COLOURS[k % len(GROUP_COLOURS)]


def _finite(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array[np.isfinite(array)]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _panel_grid(figure: Figure, n: int, polar: bool = False) -> list:
    """``n`` axes in rows of :data:`_PANELS_PER_ROW`; the spare cells of the last row are hidden."""
    columns = max(1, min(n, _PANELS_PER_ROW))
    rows = max(1, math.ceil(n / columns))
    axes = figure.subplots(rows, columns, squeeze=False, subplot_kw={"projection": "polar"} if polar else None)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return flat[:n]


def _grid_size(n: int, panel_width: float, panel_height: float) -> tuple[float, float]:
    columns = max(1, min(n, _PANELS_PER_ROW))
    rows = max(1, math.ceil(n / columns))
    return panel_width * columns, panel_height * rows + 0.6


def _no_data(ax, message: str = "no vectors") -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _title(group: Any, n: int, n_images: Optional[int]) -> str:
    images = "" if n_images is None else f", {n_images} image{'s' if n_images != 1 else ''}"
    return f"{_label(group)}  (n = {n} cell{'s' if n != 1 else ''}{images})"


# ------------------------------------------------------------------------------------------
# One group into given axes
# ------------------------------------------------------------------------------------------
def mean_resultant(azimuth_deg: Any) -> tuple[float, float]:
    """``(circular mean in degrees [0, 360), mean resultant length R̄)`` of in-plane angles (the arrow of a rose
    plot); ``(nan, nan)`` for no angles. Drawing only: the statistics are :func:`app.core.stats.summarize`'s."""
    theta = np.deg2rad(_finite(azimuth_deg))
    if theta.size == 0:
        return float("nan"), float("nan")
    c, s = float(np.mean(np.cos(theta))), float(np.mean(np.sin(theta)))
    return float(np.rad2deg(math.atan2(s, c)) % 360.0), float(math.hypot(c, s))


def draw_rose(ax, azimuth_deg: Any, *, title: str = "", colour: str = "tab:blue", bins: int = 24) -> None:
    """A rose plot of in-plane angles into polar axes ``ax``: 0° to the right, counter-clockwise.

    Wedges have an area proportional to their number of cells (radius ∝ √count, so a wedge twice as full does not
    look four times as big); the arrow points along the circular mean and its length is the mean resultant length
    R̄ (0 = no preferred direction, the outer circle = 1, every cell the same way).
    """
    azimuth = _finite(azimuth_deg) % 360.0
    ax.set_theta_zero_location("E")
    ax.set_theta_direction(1)
    ax.set_title(title, fontsize=9)
    ax.set_yticklabels([])
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    if azimuth.size == 0:
        _no_data(ax)
        return
    counts, edges = np.histogram(azimuth, bins=bins, range=(0.0, 360.0))
    radius = np.sqrt(counts / counts.max())
    width = np.deg2rad(360.0 / bins)
    ax.bar(np.deg2rad(edges[:-1]), radius, width=width, align="edge", color=colour, alpha=0.55,
           edgecolor="white", linewidth=0.5)
    mean, length = mean_resultant(azimuth)
    ax.annotate("", xy=(np.deg2rad(mean), length), xytext=(0.0, 0.0),
                arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.6})
    ax.set_title(f"{title}\nmean {mean:.0f}°, R̄ = {length:.2f}".lstrip("\n"), fontsize=9)


def draw_elevation(ax, elevation_deg: Any, *, title: str = "", colour: str = "tab:blue", bin_deg: float = 10.0) -> None:
    """A histogram of elevations (−90° … 90°, share of the cells per bin) into ``ax``, with the shares directions
    spread uniformly over the sphere would give (dashed; ∝ cos elevation), the reference for "no 3D preference"."""
    elevation = _finite(elevation_deg)
    edges = np.arange(-90.0, 90.0 + bin_deg / 2, bin_deg)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-90, 90)
    ax.set_xticks(np.arange(-90, 91, 30))
    ax.set_xlabel("elevation (°)")
    ax.set_ylabel("share of cells")
    ax.grid(True, alpha=0.3)
    uniform = (np.sin(np.deg2rad(edges[1:])) - np.sin(np.deg2rad(edges[:-1]))) / 2.0
    ax.stairs(uniform, edges, color="0.35", linestyle="--", label="uniform on the sphere")
    if elevation.size == 0:
        _no_data(ax)
        return
    counts, _ = np.histogram(np.clip(elevation, -90.0, 90.0), bins=edges)
    ax.stairs(counts / elevation.size, edges, fill=True, color=colour, alpha=0.55, label="cells")
    ax.axvline(float(np.median(elevation)), color="black", lw=1.0)
    ax.legend(fontsize=7, loc="upper left")
    ax.text(0.98, 0.97, f"median {int(round(float(np.median(elevation))))}°", transform=ax.transAxes, ha="right",
            va="top", fontsize=8)


def equal_area_xy(azimuth_deg: Any, elevation_deg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lambert azimuthal equal-area coordinates of directions, scaled to the unit disc: ``(x, y, upper)``.

    A direction at elevation e is ``90° − |e|`` from the pole of its hemisphere (``upper``: e ≥ 0); the Lambert
    radius of that polar distance p is ``√2 sin(p / 2)``, divided here by the rim's (p = 90°) so that the rim is
    1. The angle in the disc is the azimuth. Snyder, *Map Projections — A Working Manual* (USGS 1395, 1987),
    eq. 24-2 (ρ = 2R sin(χ/2), χ the angular distance from the centre).
    """
    azimuth = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64).reshape(-1))
    elevation = np.asarray(elevation_deg, dtype=np.float64).reshape(-1)
    polar = np.deg2rad(90.0 - np.abs(elevation))
    radius = np.sin(polar / 2.0) / math.sin(math.pi / 4.0)
    return radius * np.cos(azimuth), radius * np.sin(azimuth), elevation >= 0.0


_DISC_GAP = 2.35  # distance between the two discs' centres, in disc radii


def draw_equal_area(ax, azimuth_deg: Any, elevation_deg: Any, *, title: str = "", colour: str = "tab:blue") -> None:
    """3D directions on two equal-area discs side by side into ``ax`` (see the module's notes): left elevation ≥ 0,
    right elevation < 0, both seen from the + elevation side; rings at elevations 0°, 30° and 60°; the star is the
    3D mean direction (the normalised mean of the unit vectors)."""
    azimuth = np.asarray(azimuth_deg, dtype=np.float64).reshape(-1)
    elevation = np.asarray(elevation_deg, dtype=np.float64).reshape(-1)
    keep = np.isfinite(azimuth) & np.isfinite(elevation)
    azimuth, elevation = azimuth[keep], elevation[keep]
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_xlim(-1.15, _DISC_GAP + 1.15)
    ax.set_ylim(-1.3, 1.2)
    ring = np.linspace(0.0, 2.0 * np.pi, 181)
    for centre, name, count in ((0.0, "elevation ≥ 0 (deeper)", int(np.sum(elevation >= 0))),
                                (_DISC_GAP, "elevation < 0 (shallower)", int(np.sum(elevation < 0)))):
        for level in (0.0, 30.0, 60.0):
            r = math.sin(math.radians(90.0 - level) / 2.0) / math.sin(math.pi / 4.0)
            ax.plot(centre + r * np.cos(ring), r * np.sin(ring), color="0.3" if level == 0 else "0.8", lw=0.8)
        ax.plot([centre - 1, centre + 1], [0, 0], color="0.85", lw=0.6)
        ax.plot([centre, centre], [-1, 1], color="0.85", lw=0.6)
        ax.text(centre, -1.12, f"{name} ({count})", ha="center", va="top", fontsize=8)
        ax.text(centre + 1.03, 0.0, "0°", ha="left", va="center", fontsize=7, color="0.4")
        ax.text(centre, 1.03, "90°", ha="center", va="bottom", fontsize=7, color="0.4")
    if azimuth.size == 0:
        _no_data(ax)
        return
    x, y, upper = equal_area_xy(azimuth, elevation)
    x = np.where(upper, x, x + _DISC_GAP)
    ax.scatter(x, y, s=9, color=colour, alpha=0.6, linewidths=0)
    unit = _unit_vectors(azimuth, elevation).mean(axis=0)
    norm = float(np.linalg.norm(unit))
    if norm > 1e-12:
        mean_az = math.degrees(math.atan2(unit[1], unit[0]))
        mean_el = math.degrees(math.asin(max(-1.0, min(1.0, unit[2] / norm))))
        mx, my, mup = equal_area_xy([mean_az], [mean_el])
        ax.scatter(mx + (0.0 if mup[0] else _DISC_GAP), my, marker="*", s=160, color="black", zorder=3,
                   label=f"3D mean (az {mean_az % 360:.0f}°, el {mean_el:.0f}°, R̄ = {norm:.2f})")
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, -0.08), frameon=False)


def _unit_vectors(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    """Unit vectors ``(cos e cos a, cos e sin a, sin e)`` in the frame the angles are measured in."""
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.column_stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def draw_lengths(ax, length_um: Any, length_xy_um: Any = None, *, title: str = "", colour: str = "tab:blue",
                 bins: Optional[np.ndarray] = None) -> None:
    """Histograms of the vector lengths in µm into ``ax``: 3D (filled) and, when given, in-plane (outline)."""
    length = _finite(length_um)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("nucleus → Golgi length (µm)")
    ax.set_ylabel("cells")
    ax.grid(True, alpha=0.3)
    if length.size == 0:
        _no_data(ax)
        return
    if bins is None:
        bins = _length_bins([length])
    ax.hist(length, bins=bins, color=colour, alpha=0.55, label="3D")
    if length_xy_um is not None and _finite(length_xy_um).size:
        ax.hist(_finite(length_xy_um), bins=bins, histtype="step", color="black", lw=1.0, label="in-plane")
        ax.legend(fontsize=7)
    ax.text(0.98, 0.97, f"median {np.median(length):.1f} µm", transform=ax.transAxes, ha="right", va="top",
            fontsize=8)


def _length_bins(arrays: Iterable[np.ndarray]) -> np.ndarray:
    values = [a for a in arrays if a.size]
    top = max((float(np.max(a)) for a in values), default=1.0)
    return np.linspace(0.0, max(top * 1.02, 1e-6), 26)


# ------------------------------------------------------------------------------------------
# One panel per group
# ------------------------------------------------------------------------------------------
def rose_figure(azimuth_by_group: Mapping[Any, Any], *, n_images: Optional[Mapping[Any, int]] = None,
                convention: Optional[str] = None, bins: int = 24) -> Figure:
    """Rose plots of the in-plane azimuth, one per group (:func:`draw_rose`); the convention under them.

    ``n_images`` (group → number of images) adds the images to each title; ``convention`` defaults to
    :data:`app.core.stats.AZIMUTH_CONVENTION`.
    """
    groups = list(azimuth_by_group)
    figure = _new_figure(*_grid_size(len(groups), 3.4, 3.6))
    for k, (ax, group) in enumerate(zip(_panel_grid(figure, len(groups), polar=True), groups)):
        values = _finite(azimuth_by_group[group])
        draw_rose(ax, values, title=_title(group, values.size, (n_images or {}).get(group)), colour=_colour(k),
                  bins=bins)
    figure.suptitle("In-plane direction (azimuth); wedge area ∝ cells, arrow = mean direction, length R̄", fontsize=10)
    figure.supxlabel(textwrap.fill(_convention(convention), 40 * min(len(groups), _PANELS_PER_ROW) + 20),
                     fontsize=7, color="0.3")
    return figure


def elevation_figure(elevation_by_group: Mapping[Any, Any], *, n_images: Optional[Mapping[Any, int]] = None) -> Figure:
    """Elevation histograms, one per group (:func:`draw_elevation`)."""
    groups = list(elevation_by_group)
    figure = _new_figure(*_grid_size(len(groups), 3.6, 3.0))
    for k, (ax, group) in enumerate(zip(_panel_grid(figure, len(groups)), groups)):
        values = _finite(elevation_by_group[group])
        draw_elevation(ax, values, title=_title(group, values.size, (n_images or {}).get(group)), colour=_colour(k))
    figure.suptitle("Elevation (angle out of the image plane)", fontsize=10)
    return figure


def equal_area_figure(azimuth_by_group: Mapping[Any, Any], elevation_by_group: Mapping[Any, Any], *,
                      n_images: Optional[Mapping[Any, int]] = None) -> Figure:
    """3D directions on the equal-area projection, one panel (two discs) per group (:func:`draw_equal_area`)."""
    groups = list(azimuth_by_group)
    columns = max(1, min(len(groups), 2))
    rows = max(1, math.ceil(len(groups) / columns))
    figure = _new_figure(4.6 * columns, 2.6 * rows + 0.6)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for k, (ax, group) in enumerate(zip(axes, groups)):
        azimuth = np.asarray(azimuth_by_group[group], dtype=np.float64).reshape(-1)
        draw_equal_area(ax, azimuth, elevation_by_group[group],
                        title=_title(group, int(np.isfinite(azimuth).sum()), (n_images or {}).get(group)),
                        colour=_colour(k))
    figure.suptitle("3D directions, equal-area projection: left disc elevation ≥ 0, right disc < 0;\nangle in a "
                    "disc = azimuth (as on the rose plot); centre = along z (left: deeper, right: shallower), rim = in the image plane",
                    fontsize=9)
    return figure


def length_figure(length_by_group: Mapping[Any, Any], length_xy_by_group: Optional[Mapping[Any, Any]] = None, *,
                  n_images: Optional[Mapping[Any, int]] = None) -> Figure:
    """Length histograms, one per group, on shared bins (:func:`draw_lengths`)."""
    groups = list(length_by_group)
    bins = _length_bins([_finite(length_by_group[g]) for g in groups])
    figure = _new_figure(*_grid_size(len(groups), 3.6, 3.0))
    for k, (ax, group) in enumerate(zip(_panel_grid(figure, len(groups)), groups)):
        values = _finite(length_by_group[group])
        draw_lengths(ax, values, None if length_xy_by_group is None else length_xy_by_group[group],
                     title=_title(group, values.size, (n_images or {}).get(group)), colour=_colour(k), bins=bins)
    figure.suptitle("Nucleus → Golgi vector length", fontsize=10)
    return figure


# ------------------------------------------------------------------------------------------
# From a VectorTable
# ------------------------------------------------------------------------------------------
def groups_of(table) -> list[str]:
    """The groups of a :class:`~app.core.stats.VectorTable` in drawing order (sorted; vectors without a group are
    :data:`NO_GROUP`)."""
    return sorted({_label(g) for g in np.asarray(table.group, dtype=object).tolist()})


def by_group(table, column: str) -> dict[str, np.ndarray]:
    """``{group: values of column}`` of a :class:`~app.core.stats.VectorTable`, in :func:`groups_of` order."""
    labels = np.array([_label(g) for g in np.asarray(table.group, dtype=object).tolist()], dtype=object)
    values = np.asarray(getattr(table, column))
    return {group: values[labels == group] for group in groups_of(table)}


def images_per_group(table) -> dict[str, int]:
    """``{group: number of images}`` of a :class:`~app.core.stats.VectorTable`."""
    images = np.asarray(table.image, dtype=object)
    return {group: len(set(names.tolist())) for group, names in
            ((g, images[m]) for g, m in _group_masks(table).items())}


def _group_masks(table) -> dict[str, np.ndarray]:
    labels = np.array([_label(g) for g in np.asarray(table.group, dtype=object).tolist()], dtype=object)
    return {group: labels == group for group in groups_of(table)}


def table_figures(table, convention: Optional[str] = None) -> dict[str, Figure]:
    """The four figures of :data:`FIGURES` (one panel per group) from a :class:`~app.core.stats.VectorTable`."""
    counts = images_per_group(table)
    azimuth = by_group(table, "azimuth_deg")
    elevation = by_group(table, "elevation_deg")
    return {
        "rose": rose_figure(azimuth, n_images=counts, convention=convention),
        "elevation": elevation_figure(elevation, n_images=counts),
        "equal_area": equal_area_figure(azimuth, elevation, n_images=counts),
        "lengths": length_figure(by_group(table, "length_um"), by_group(table, "length_xy_um"), n_images=counts),
    }


def save_figure(figure: Figure, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``figure`` as ``<stem>.png`` (150 dpi) and ``<stem>.svg``, each atomically; the two paths."""
    stem = Path(stem)
    paths = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    for path, kind in zip(paths, ("png", "svg")):
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=kind, dpi=150 if kind == "png" else None)
    return paths


def save_group_figures(table, out_dir: str | os.PathLike, convention: Optional[str] = None) -> dict[str, Path]:
    """:func:`table_figures` written into ``out_dir`` as ``<name>.png`` and ``<name>.svg``;
    ``{"<name>_png": path, "<name>_svg": path}``."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name, figure in table_figures(table, convention).items():
        written[f"{name}_png"], written[f"{name}_svg"] = save_figure(figure, out / name)
    return written


# ------------------------------------------------------------------------------------------
# The PDF report
# ------------------------------------------------------------------------------------------
#: Summary numbers shown on a group's page: column of the summary row (:attr:`app.core.stats.Summary.COLUMNS`) →
#: label; a CI is shown beside its statistic where the row has ``<column>_ci_low`` / ``_ci_high``.
PAGE_NUMBERS = (
    ("n", "cells"), ("n_units", "experimental units (images or animals)"),
    ("mean_length_um", "mean length (µm)"),
    ("circular_mean_deg", "in-plane mean direction (°)"),
    ("polarity_index", "polarity index R̄ (in-plane)"),
    ("circular_std_deg", "circular standard deviation (°)"),
    ("rayleigh_p", "Rayleigh test p (in-plane, cells)"),
    ("rayleigh_units_p", "Rayleigh test p (in-plane, unit means)"),
    ("mean_azimuth_deg", "3D mean direction: azimuth (°)"),
    ("mean_elevation_deg", "3D mean direction: elevation (°)"),
    ("mean_resultant_length", "mean resultant length R̄ (3D)"),
    ("spherical_variance", "spherical variance"),
    ("rayleigh_3d_p", "Rayleigh test p (3D, cells)"),
    ("rayleigh_3d_units_p", "Rayleigh test p (3D, unit means)"),
    ("v_test_p", "V-test p (in-plane, towards the reference)"),
    ("v_test_3d_p", "V-test p (3D, towards the reference)"),
    ("mean_angle_to_reference_xy_deg", "mean in-plane angle to the reference (°)"),
    ("mean_cosine_to_reference", "mean cosine to the reference (3D)"),
)


def _page_numbers(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (label, value) lines of a group's page: :data:`PAGE_NUMBERS` where the row has them, with the 95%
    bootstrap interval beside a statistic that has one, and what the bootstrap resampled."""
    lines: list[tuple[str, str]] = []
    for column, label in PAGE_NUMBERS:
        if column not in row:
            continue
        value = format_value(row[column])
        low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
        if low is not None and high is not None and value != "—":
            value += f"  [{format_value(low)}, {format_value(high)}]"
        lines.append((label, value))
    if "ci_unit" in row:
        lines.append(("[95% bootstrap CI] resampled", str(row["ci_unit"])))
    return lines


def group_page(table, group: str, summary_row: Optional[Mapping[str, Any]] = None,
               convention: Optional[str] = None) -> Figure:
    """One A4 page for ``group`` of a :class:`~app.core.stats.VectorTable`: rose plot, elevation histogram,
    equal-area plot, lengths and the group's summary numbers (``summary_row``: its row of ``summary.csv``)."""
    mask = _group_masks(table).get(group, np.zeros(len(np.asarray(table.group)), dtype=bool))
    images = np.asarray(table.image, dtype=object)[mask]
    azimuth = np.asarray(table.azimuth_deg)[mask]
    elevation = np.asarray(table.elevation_deg)[mask]
    colour = _colour(groups_of(table).index(group) if group in groups_of(table) else 0)
    figure = _new_figure(*_A4_PORTRAIT)
    grid = figure.add_gridspec(3, 2, height_ratios=[1.1, 0.9, 1.0])
    n_images = len(set(images.tolist()))
    figure.suptitle(_title(group, int(mask.sum()), n_images), fontsize=13)
    draw_rose(figure.add_subplot(grid[0, 0], projection="polar"), azimuth, title="in-plane direction (azimuth)",
              colour=colour)
    draw_elevation(figure.add_subplot(grid[0, 1]), elevation, title="elevation", colour=colour)
    draw_equal_area(figure.add_subplot(grid[1, :]), azimuth, elevation,
                    title="3D directions (equal-area; left elevation ≥ 0, right < 0)", colour=colour)
    draw_lengths(figure.add_subplot(grid[2, 0]), np.asarray(table.length_um)[mask],
                 np.asarray(table.length_xy_um)[mask], title="length", colour=colour)
    text_ax = figure.add_subplot(grid[2, 1])
    text_ax.set_axis_off()
    lines = _page_numbers(summary_row or {})
    width = max((len(label) for label, _ in lines), default=0)
    text = "\n".join(f"{label:<{width}}  {value}" for label, value in lines) or "no summary"
    text_ax.text(-0.05, 1.0, text, va="top", ha="left", fontsize=6.5, family="monospace",
                 transform=text_ax.transAxes)
    text_ax.text(-0.05, 0.0, textwrap.fill(_convention(convention), 62), va="bottom", ha="left", fontsize=6.5,
                 color="0.3", transform=text_ax.transAxes)
    return figure


#: Columns of the per-group table on the report's first page (of :attr:`app.core.stats.Summary.COLUMNS`): the
#: Rayleigh tests on the cells and on the units' (images' or animals') mean directions.
FIRST_PAGE_GROUP_COLUMNS = (("name", "group"), ("n", "cells"), ("n_units", "units"),
                            ("circular_mean_deg", "mean az (°)"), ("polarity_index", "R̄ in-plane"),
                            ("rayleigh_p", "Rayleigh p 2D"), ("rayleigh_units_p", "p 2D (units)"),
                            ("mean_resultant_length", "R̄ 3D"), ("rayleigh_3d_p", "Rayleigh p 3D"),
                            ("rayleigh_3d_units_p", "p 3D (units)"))


def first_page(provenance: Mapping[str, Any], test_rows: Sequence[Mapping[str, Any]],
               group_rows: Sequence[Mapping[str, Any]] = (), convention: Optional[str] = None) -> Figure:
    """The report's first page: what was analysed (inputs, models, groups, reference, settings), the per-group
    summary and the between-group tests (rows of ``tests.csv``) with their caveats."""
    figure = Figure(figsize=_A4_PORTRAIT, dpi=100)  # placed by hand: no constrained layout
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0.06, 0.03, 0.9, 0.94))
    ax.set_axis_off()
    ax.text(0.0, 1.0, f"Polarity statistics — CellPol Studio {provenance.get('app_version', '')}", va="top",
            fontsize=13, weight="bold", transform=ax.transAxes)
    lines = []
    inputs = list(provenance.get("inputs") or [])
    lines.append(f"Inputs ({len(inputs)} vectors file{'s' if len(inputs) != 1 else ''}):")
    for item in inputs[:12]:
        lines.append(f"  {Path(str(item.get('path', ''))).name}  ({item.get('content', '?')}, "
                     f"{item.get('n_vectors', '?')} vectors)  sha256 {str(item.get('sha256', ''))[:16]}…")
    if len(inputs) > 12:
        lines.append(f"  … and {len(inputs) - 12} more (all in the CSVs' JSON sidecars)")
    for model in list(provenance.get("models") or [])[:4]:
        lines.append(f"Model: {model.get('name')}  weights sha256 {str(model.get('weights_sha256', ''))[:16]}…")
    groups = provenance.get("groups_file")
    if groups:
        lines.append(f"Groups: {Path(str(groups.get('path'))).name}  sha256 {str(groups.get('sha256', ''))[:16]}…")
    lines.append(f"Reference: {_describe_reference(provenance.get('reference'))}")
    settings = [f"{k} = {format_value(provenance[k])}" for k in ("min_score", "n_boot", "n_perm", "seed")
                if k in provenance]
    if settings:
        lines.append("Settings: " + ", ".join(settings))
    lines.append(textwrap.fill(_convention(convention), 115))
    text = "\n".join(lines)
    ax.text(0.0, 0.965, text, va="top", ha="left", fontsize=7, transform=ax.transAxes, linespacing=1.4)
    y = 0.955 - _LINE * 1.4 * (text.count("\n") + 1) - 0.02
    if group_rows:
        y = _draw_group_table(ax, group_rows, y)
    ax.text(0.0, y, "Between groups", va="top", ha="left", fontsize=10, weight="bold", transform=ax.transAxes)
    y -= 0.03
    if not test_rows:
        ax.text(0.0, y, "No tests: fewer than two groups.", va="top", fontsize=8, transform=ax.transAxes)
        return figure
    test_lines = []
    for row in test_rows:
        test_lines.append(f"{row.get('group_1', '')} vs {row.get('group_2', '')}: p = {format_value(row.get('p'))}"
                          f"  (statistic {format_value(row.get('statistic'))}, {row.get('n_1', '')} vs "
                          f"{row.get('n_2', '')} {row.get('unit', '')})")
        test_lines.append("    " + str(row.get("test", "")))
    ax.text(0.0, y, "\n".join(test_lines), va="top", ha="left", fontsize=7, family="monospace",
            transform=ax.transAxes, linespacing=1.35)
    y -= _LINE * 1.35 * len(test_lines) + 0.02
    caveats: list[str] = []
    for row in test_rows:
        caveat = str(row.get("caveat") or "").strip()
        if caveat and caveat not in caveats:
            caveats.append(caveat)
    if caveats:
        ax.text(0.0, y, "\n".join(textwrap.fill(f"Caveat: {c}", 115) for c in caveats), va="top", ha="left",
                fontsize=7, color="darkred", transform=ax.transAxes)
    return figure


def _draw_group_table(ax, rows: Sequence[Mapping[str, Any]], top: float) -> float:
    """The per-group table at axes height ``top``; returns the height below it."""
    ax.text(0.0, top, "Per group", va="top", ha="left", fontsize=10, weight="bold", transform=ax.transAxes)
    columns = [(c, label) for c, label in FIRST_PAGE_GROUP_COLUMNS if any(c in r for r in rows)]
    cells = [[str(row.get(c, "")) if isinstance(row.get(c), str) else format_value(row.get(c, float("nan")))
              for c, _ in columns] for row in rows]
    height = 0.022 * (len(rows) + 1)
    table = ax.table(cellText=cells, colLabels=[label for _, label in columns], loc="upper left",
                     bbox=(0.0, top - 0.03 - height, 1.0, height))
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    return top - 0.06 - height


def _describe_reference(reference: Any) -> str:
    if not reference:
        return "none"
    if isinstance(reference, Mapping):
        if reference.get("kind") == "per-image":
            return f"per image from {Path(str(reference.get('path', ''))).name}"
        kind = reference.get("kind")
        xyz = reference.get("xyz")
        if kind == "point":
            return f"point {format_value(xyz)} (voxels x y z): radial polarity"
        if kind == "axis":
            return f"axis {format_value(xyz)} (x y z)"
    return str(reference)


def write_report(path: str | os.PathLike, table, summaries: Sequence[Any], tests: Sequence[Any],
                 provenance: Mapping[str, Any], convention: Optional[str] = None) -> Path:
    """Write ``report.pdf`` atomically: :func:`first_page`, then :func:`group_page` for every group.

    ``summaries`` are :class:`~app.core.stats.Summary` objects or their rows (the group rows give each page its
    numbers), ``tests`` :class:`~app.core.stats.GroupTest` objects or their rows.
    """
    summary_rows = [_row(s) for s in summaries]
    test_rows = [_row(t) for t in tests]
    group_rows = [r for r in summary_rows if r.get("level", "group") == "group"]
    path = Path(path)
    with atomic_path(path) as tmp:
        with PdfPages(tmp, metadata={"Title": "CellPol Studio polarity statistics",
                                     "Creator": f"CellPol Studio {provenance.get('app_version', '')}"}) as pdf:
            pdf.savefig(first_page(provenance, test_rows, group_rows, convention))
            for group in groups_of(table):
                row = next((r for r in group_rows if _label(r.get("name", r.get("group"))) == group), None)
                pdf.savefig(group_page(table, group, row, convention))
    return path


def _row(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    row = dict(item.row())
    caveat = getattr(item, "caveat", None)
    if caveat and not row.get("caveat"):
        row["caveat"] = caveat
    return row
