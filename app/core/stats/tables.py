"""Tables of polarity: one row per vector, summaries per image and group, tests between groups.

The experimental unit is the image, or the animal where the groups file gives one: bootstrap confidence
intervals resample units and the between-group permutation tests permute group labels over units. Cells
of one image are not independent observations; the per-cell Watson–Williams test is reported beside
them, with that caveat, because it is the test most papers use.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from app.core.annotation import vector_angles
from app.core.stats import directional as dst
from app.core.stats.inputs import _TO_FRAME, ImageVectors, Reference

_NAN = float("nan")

#: How the in-plane angle is measured (written into the outputs and the README).
AZIMUTH_CONVENTION = (
    "Azimuth: the angle in the image plane from the image's +x axis (to the right), counter-clockwise as "
    "the image is displayed (rows grow downwards, as in ImageJ), 0 to 360 degrees; elevation: the angle "
    "between the vector and the image plane, positive when the Golgi lies in a deeper slice than the nucleus "
    "(increasing z), -90 to 90 degrees."
)

#: The frame of :attr:`VectorTable.direction` and :attr:`VectorTable.reference`.
DIRECTION_FRAME = (
    "unit vectors (x, y_up, z) in µm space: x to the right, y_up towards the top of the displayed image "
    "(minus the row direction), z towards deeper slices; azimuth = atan2(y_up, x), elevation = asin(z)"
)

#: The caveat printed with every per-cell test.
PER_CELL_CAVEAT = (
    "Treats every cell as an independent observation. Cells of one image (or animal) share its conditions "
    "and tend to point alike, so when images differ from one another this p is too small, often by orders "
    "of magnitude; judge the difference between groups by the tests with images (or animals) as the unit."
)


@dataclass
class VectorTable:
    """One row per vector; every attribute is an array of the same length N.

    Attributes
    ----------
    image, group, unit, source : ndarray of object
        The image's name, its group, its experimental unit; the pair's source (manual, predicted, ...).
    pair_id : ndarray of int
        The pair's id in its file.
    score : ndarray of float
        The prediction score; NaN for manual pairs.
    length_um, length_xy_um : ndarray of float
        Length in µm in 3D and of the in-plane projection.
    azimuth_deg, elevation_deg : ndarray of float
        See :data:`AZIMUTH_CONVENTION`; NaN for a zero-length vector (azimuth also for a vector along z).
    reference_angle_deg : ndarray of float
        3D angle between the vector and its reference direction, 0 to 180; NaN without a reference.
    reference_angle_xy_deg : ndarray of float
        In-plane angle from the reference's in-plane direction to the vector's, signed, in (-180, 180]:
        positive counter-clockwise as displayed; NaN without a reference or where either has no in-plane
        component.
    direction : ndarray, shape (N, 3)
        Unit vectors in :data:`DIRECTION_FRAME` ``(x, y_up, z)``; NaN rows for zero-length vectors.
    reference : ndarray, shape (N, 3)
        Unit reference direction per vector in the same frame; NaN rows where there is none.
    """

    image: np.ndarray
    group: np.ndarray
    unit: np.ndarray
    score: np.ndarray
    length_um: np.ndarray
    length_xy_um: np.ndarray
    azimuth_deg: np.ndarray
    elevation_deg: np.ndarray
    reference_angle_deg: np.ndarray
    reference_angle_xy_deg: np.ndarray
    direction: np.ndarray
    reference: np.ndarray
    source: np.ndarray = None  # type: ignore[assignment]
    pair_id: np.ndarray = None  # type: ignore[assignment]

    #: Column names of :meth:`rows`, in order.
    COLUMNS = ("image", "group", "unit", "length_um", "length_xy_um", "azimuth_deg", "elevation_deg",
               "angle_to_reference_deg", "angle_to_reference_xy_deg", "score", "source", "id")

    def __len__(self) -> int:
        return int(len(self.image))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per vector for ``vectors.csv``, keys :attr:`COLUMNS` (floats as floats, NaN as NaN)."""
        columns = (self.image, self.group, self.unit, self.length_um, self.length_xy_um, self.azimuth_deg,
                   self.elevation_deg, self.reference_angle_deg, self.reference_angle_xy_deg, self.score,
                   self.source, self.pair_id)
        out = []
        for values in zip(*columns):
            row = dict(zip(self.COLUMNS, values))
            for key in self.COLUMNS[3:10]:
                row[key] = float(row[key])
            row["id"] = int(row["id"])
            out.append(row)
        return out

    def subset(self, mask: Any) -> "VectorTable":
        """The rows selected by a boolean mask or an index array (a new table)."""
        return VectorTable(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[mask]
                              for f in fields(self)})


def vector_table(
    images: list[ImageVectors],
    reference: Reference | Mapping[str, Reference] | None = None,
) -> VectorTable:
    """One row per vector of ``images``.

    ``reference``: one :class:`Reference` for every image, or one per image name (images without one get
    NaN reference angles), or ``None``.
    """
    parts = [_image_rows(image, reference.get(image.image) if isinstance(reference, Mapping) else reference)
             for image in images]
    if not parts:
        return _empty_table()
    return VectorTable(**{f.name: np.concatenate([p[f.name] for p in parts]) for f in fields(VectorTable)})


@dataclass
class Summary:
    """The statistics of one image or one group.

    3D statistics use the unit directions; in-plane (2D) statistics use the azimuths of vectors with an
    in-plane component. Tests whose null assumes directions uniform on the sphere (``rayleigh_3d_*``,
    ``v_test_3d_*``) are NaN when every vector lies in the image plane (a 2D image).

    Attributes
    ----------
    level : str
        ``"image"`` or ``"group"``.
    name, group : str
        The image's (or group's) name; the group it belongs to.
    n : int
        Vectors with a direction (zero-length vectors are left out).
    n_units : int
        Experimental units (images or animals) among them; 1 for an image.
    n_xy : int
        Vectors with an in-plane direction (used by the 2D statistics).
    mean_length_um : float
        Mean 3D length.
    mean_direction : tuple of float
        The 3D mean direction, a unit vector ``(x, y_up, z)`` (:data:`DIRECTION_FRAME`); NaN if R̄ = 0.
    mean_azimuth_deg, mean_elevation_deg : float
        The mean direction as azimuth and elevation (:data:`AZIMUTH_CONVENTION`).
    mean_resultant_length : float
        3D R̄ in [0, 1]: 0 no common direction, 1 all vectors parallel.
    spherical_variance : float
        1 − R̄.
    rayleigh_3d_z, rayleigh_3d_p : float
        3D Rayleigh test of uniformity on the sphere (modified statistic S*, χ²₃).
    circular_mean_deg, circular_std_deg : float
        In-plane circular mean (azimuth convention) and circular standard deviation, degrees.
    polarity_index : float
        In-plane mean resultant length (Polarity-JaM's polarity index), [0, 1].
    rayleigh_z, rayleigh_p : float
        2D Rayleigh test (z = nR̄², Zar's p approximation).
    v_test_u, v_test_p : float
        2D V-test that in-plane angles cluster around the reference (relative to each cell's reference);
        NaN without one.
    v_test_3d_stat, v_test_3d_p : float
        3D analogue: √(3n)·C̄ with C̄ the mean cosine to the reference, one-sided normal p.
    mean_angle_to_reference_xy_deg : float
        Circular mean of the in-plane angles relative to each vector's reference (as
        :attr:`VectorTable.reference_angle_xy_deg`), in (−180, 180]; NaN without a reference.
    mean_cosine_to_reference : float
        Mean cosine of the 3D angle to the reference: 1 all along it, 0 no preference, −1 all against it.
    rayleigh_units_z, rayleigh_units_p, rayleigh_3d_units_z, rayleigh_3d_units_p : float
        The 2D and 3D Rayleigh tests on the units' mean directions (one direction per image or animal):
        do the images agree on a direction? The tests above pool the cells of a group and treat them as
        independent, so for a group they say little when images differ from one another; these are the
        ones to quote for a group. NaN for an image or a group with fewer than 2 units.
    ci : dict of str to (float, float)
        Bootstrap 95% percentile intervals for ``mean_resultant_length``, ``spherical_variance``,
        ``polarity_index``, ``circular_std_deg``, ``circular_mean_deg`` (an arc from the first value
        counter-clockwise to the second; it may wrap through 0) and ``mean_length_um``.
    ci_unit : str
        What was resampled: ``"images"``, ``"animals"`` or ``"cells"`` (an image, or a group of one unit).
    """

    level: str
    name: str
    group: str
    n: int
    n_units: int
    mean_direction: tuple[float, float, float]
    mean_resultant_length: float
    spherical_variance: float
    rayleigh_3d_z: float
    rayleigh_3d_p: float
    circular_mean_deg: float
    circular_std_deg: float
    polarity_index: float
    rayleigh_p: float
    rayleigh_z: float
    v_test_u: float
    v_test_p: float
    v_test_3d_stat: float
    v_test_3d_p: float
    ci: dict[str, tuple[float, float]]
    ci_unit: str
    n_xy: int = 0
    mean_length_um: float = float("nan")
    mean_azimuth_deg: float = float("nan")
    mean_elevation_deg: float = float("nan")
    mean_angle_to_reference_xy_deg: float = float("nan")
    mean_cosine_to_reference: float = float("nan")
    rayleigh_units_z: float = float("nan")
    rayleigh_units_p: float = float("nan")
    rayleigh_3d_units_z: float = float("nan")
    rayleigh_3d_units_p: float = float("nan")

    #: Column names of :meth:`row`, in order (``<stat>_ci_low`` / ``<stat>_ci_high`` for each CI).
    CI_STATS = ("mean_resultant_length", "spherical_variance", "polarity_index", "circular_std_deg",
                "circular_mean_deg", "mean_length_um")
    COLUMNS = (
        "level", "name", "group", "n", "n_units", "n_xy", "mean_length_um",
        "mean_direction_x", "mean_direction_y_up", "mean_direction_z", "mean_azimuth_deg",
        "mean_elevation_deg", "mean_resultant_length", "spherical_variance", "rayleigh_3d_z",
        "rayleigh_3d_p", "rayleigh_3d_units_z", "rayleigh_3d_units_p", "circular_mean_deg",
        "circular_std_deg", "polarity_index", "rayleigh_z", "rayleigh_p", "rayleigh_units_z",
        "rayleigh_units_p", "v_test_u", "v_test_p", "v_test_3d_stat", "v_test_3d_p",
        "mean_angle_to_reference_xy_deg", "mean_cosine_to_reference",
    ) + tuple(f"{s}_ci_{end}" for s in CI_STATS for end in ("low", "high")) + ("ci_unit",)

    def row(self) -> dict[str, Any]:
        """One flat dict for ``summary.csv``, keys :attr:`COLUMNS`."""
        out: dict[str, Any] = {}
        for key in self.COLUMNS:
            if key.startswith("mean_direction_"):
                out[key] = float(self.mean_direction[("mean_direction_x", "mean_direction_y_up",
                                                      "mean_direction_z").index(key)])
            elif "_ci_" in key:
                stat, end = key.rsplit("_ci_", 1)
                out[key] = float(self.ci.get(stat, (_NAN, _NAN))[0 if end == "low" else 1])
            else:
                out[key] = getattr(self, key)
        return out


def summarize(table: VectorTable, by: str = "image", n_boot: int = 2000, seed: int = 0) -> list[Summary]:
    """A :class:`Summary` per image (``by="image"``) or per group (``by="group"``), in order of appearance.

    Confidence intervals: ``n_boot`` bootstrap resamples of the units (images or animals) with replacement,
    the statistic recomputed from the pooled cells of the chosen units; an image, or a group with one unit,
    resamples its cells instead (``ci_unit`` says which). Seeded: the same ``seed`` gives the same CIs.
    """
    if by not in ("image", "group"):
        raise ValueError(f"by must be 'image' or 'group', not {by!r}")
    keys = table.image if by == "image" else table.group
    out = []
    for index, key in enumerate(dict.fromkeys(keys.tolist())):
        rows = table.subset(keys == key)
        rng = np.random.default_rng([int(seed), index])
        out.append(_summary(rows, by, str(key), n_boot, rng))
    return out


@dataclass
class GroupTest:
    """One test between two groups.

    Attributes
    ----------
    name : str
        What was tested and on what, e.g. ``"permutation test of equal mean direction, 3D (units: images)"``.
    groups : (str, str)
    statistic, p : float
    n_units : (int, int)
        Units per group (cells for the per-cell test).
    unit : str
        ``"images"``, ``"animals"`` or ``"cells"``.
    caveat : str
        What to bear in mind (the per-cell test's independence assumption; too few units for a small p).
    method : str
        How the statistic and p were computed, in one sentence.
    """

    name: str
    groups: tuple[str, str]
    statistic: float
    p: float
    n_units: tuple[int, int]
    unit: str
    caveat: str
    method: str = ""

    COLUMNS = ("test", "group_1", "group_2", "statistic", "p", "n_1", "n_2", "unit", "method", "caveat")

    def row(self) -> dict[str, Any]:
        """One flat dict for ``tests.csv``, keys :attr:`COLUMNS`."""
        return {"test": self.name, "group_1": self.groups[0], "group_2": self.groups[1],
                "statistic": float(self.statistic), "p": float(self.p), "n_1": int(self.n_units[0]),
                "n_2": int(self.n_units[1]), "unit": self.unit, "method": self.method, "caveat": self.caveat}


def compare_groups(table: VectorTable, n_perm: int = 5000, seed: int = 0) -> list[GroupTest]:
    """Tests between every pair of groups (in order of appearance): with units as the observations,
    permutation tests of equal mean direction and of equal concentration, in 3D and in-plane; and the
    per-cell Watson–Williams test (in-plane) with :data:`PER_CELL_CAVEAT`. Fewer than two groups: ``[]``."""
    valid = table.subset(np.isfinite(table.direction).all(axis=1))
    names = list(dict.fromkeys(valid.group.tolist()))
    tests: list[GroupTest] = []
    for index, (first, second) in enumerate(itertools.combinations(names, 2)):
        rng = np.random.default_rng([int(seed), index])
        tests.extend(_pair_tests(valid, str(first), str(second), n_perm, rng))
    return tests


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _empty_table() -> VectorTable:
    empty = {f.name: np.zeros(0) for f in fields(VectorTable)}
    for name in ("image", "group", "unit", "source"):
        empty[name] = np.zeros(0, dtype=object)
    empty["pair_id"] = np.zeros(0, dtype=np.int64)
    empty["direction"] = np.zeros((0, 3))
    empty["reference"] = np.zeros((0, 3))
    return VectorTable(**empty)


def _image_rows(image: ImageVectors, reference: Reference | None) -> dict[str, np.ndarray]:
    """The columns of :class:`VectorTable` for one image."""
    pairs = image.pairs
    n = len(pairs)
    length, azimuth, elevation = vector_angles(pairs)
    frame = pairs.vectors_um[:, ::-1] * _TO_FRAME  # (x, y_up, z) µm
    with np.errstate(invalid="ignore", divide="ignore"):
        direction = frame / length[:, None]
    direction[length == 0] = np.nan
    length_xy = np.hypot(frame[:, 0], frame[:, 1])
    azimuth = np.where(length_xy > 0, azimuth, np.nan)
    ref = np.full((n, 3), np.nan)
    angle = np.full(n, np.nan)
    angle_xy = np.full(n, np.nan)
    if reference is not None and n:
        ref = reference.axis_for(pairs.nuclei_um[:, ::-1], pairs.voxel_size)
        cosine = np.clip(np.einsum("ij,ij->i", direction, ref), -1.0, 1.0)
        angle = np.degrees(np.arccos(cosine))
        ref_in_plane = np.hypot(ref[:, 0], ref[:, 1]) > 1e-12
        ref_azimuth = np.where(ref_in_plane, np.degrees(np.arctan2(ref[:, 1], ref[:, 0])), np.nan)
        angle_xy = dst.wrap_degrees(azimuth - ref_azimuth)
    return {
        "image": np.full(n, image.image, dtype=object),
        "group": np.full(n, image.group, dtype=object),
        "unit": np.full(n, image.unit or image.image, dtype=object),
        "score": np.asarray(pairs.scores, dtype=np.float64),
        "length_um": length,
        "length_xy_um": length_xy,
        "azimuth_deg": azimuth,
        "elevation_deg": elevation,
        "reference_angle_deg": angle,
        "reference_angle_xy_deg": angle_xy,
        "direction": direction,
        "reference": ref,
        "source": np.asarray(pairs.sources, dtype=object),
        "pair_id": np.asarray(pairs.ids, dtype=np.int64),
    }


def _unit_kind(table: VectorTable) -> str:
    """``"animals"`` where a groups file gave animals (a unit that is not its image), else ``"images"``."""
    return "animals" if bool(np.any(table.unit != table.image)) else "images"


def _cell_sums(table: VectorTable) -> np.ndarray:
    """Per vector: ``[1, x, y_up, z, has_xy, cos az, sin az, length]``; summed per unit, each row of a
    resample's sum gives every bootstrapped statistic."""
    azimuth = np.radians(table.azimuth_deg)
    has_xy = np.isfinite(azimuth)
    a = np.where(has_xy, azimuth, 0.0)
    return np.column_stack([np.ones(len(table)), table.direction, has_xy, np.cos(a) * has_xy,
                            np.sin(a) * has_xy, table.length_um])


def _stats_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """The bootstrapped statistics of rows of pooled sums (:func:`_cell_sums`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rbar = np.linalg.norm(sums[:, 1:4], axis=1) / sums[:, 0]
        polarity = np.hypot(sums[:, 5], sums[:, 6]) / sums[:, 4]
        return {
            "mean_resultant_length": rbar,
            "spherical_variance": 1.0 - rbar,
            "polarity_index": polarity,
            "circular_std_deg": np.degrees(np.sqrt(-2.0 * np.log(polarity))),
            "circular_mean": np.arctan2(sums[:, 6], sums[:, 5]),
            "mean_length_um": sums[:, 7] / sums[:, 0],
        }


def _bootstrap_ci(table: VectorTable, resample_units: bool, circular_mean: float, n_boot: int,
                  rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    cells = _cell_sums(table)
    if resample_units:
        keys, inverse = np.unique(table.unit.astype(str), return_inverse=True)
        sums = np.zeros((len(keys), cells.shape[1]))
        np.add.at(sums, inverse, cells)
    else:
        sums = cells
    boot = _stats_from_sums(dst.bootstrap_sums(sums, n_boot, rng)) if n_boot > 0 else None
    ci: dict[str, tuple[float, float]] = {}
    for name in Summary.CI_STATS:
        if boot is None:
            ci[name] = (_NAN, _NAN)
        elif name == "circular_mean_deg":
            lo, hi = dst.angular_interval(boot["circular_mean"], circular_mean)
            ci[name] = (dst.as_degrees(lo), dst.as_degrees(hi))
        else:
            ci[name] = dst.percentile_interval(boot[name])
    return ci


def _summary(rows: VectorTable, level: str, name: str, n_boot: int, rng: np.random.Generator) -> Summary:
    """The :class:`Summary` of one image or group's rows."""
    rows = rows.subset(np.isfinite(rows.direction).all(axis=1))
    n = len(rows)
    groups = list(dict.fromkeys(rows.group.tolist()))
    n_units = len(set(rows.unit.tolist()))
    direction, rbar = dst.mean_direction(rows.direction)
    planar = bool(n) and bool(np.all(np.abs(rows.direction[:, 2]) < 1e-9))
    ray3 = (_NAN, _NAN) if planar else dst.rayleigh_3d(n, rbar)
    azimuth = np.radians(rows.azimuth_deg[np.isfinite(rows.azimuth_deg)])
    cmean, cstd, polarity = dst.circular_summary(azimuth)
    ray2 = dst.rayleigh_2d(len(azimuth), polarity)
    relative = np.radians(rows.reference_angle_xy_deg)
    _, v_u, v_p = dst.v_test_2d(relative)
    rel_mean = dst.circular_summary(relative)[0]
    cosine = np.einsum("ij,ij->i", rows.direction, rows.reference)
    v3 = (_NAN, _NAN) if planar else dst.v_test_3d(cosine)
    finite_cos = cosine[np.isfinite(cosine)]
    if level == "image" or n_units < 2:
        ci_unit, by_unit = "cells", False
    else:
        ci_unit, by_unit = _unit_kind(rows), True
    ci = _bootstrap_ci(rows, by_unit, cmean, n_boot if n else 0, rng)
    units_2d = units_3d = (_NAN, _NAN)
    if level == "group" and n_units >= 2:
        means3, _ = _unit_means(rows, in_plane=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit_dirs = means3 / np.linalg.norm(means3, axis=1, keepdims=True)
        unit_dirs = unit_dirs[np.isfinite(unit_dirs).all(axis=1)]
        if not planar:
            units_3d = dst.rayleigh_3d(len(unit_dirs), dst.mean_direction(unit_dirs)[1])
        means2, _ = _unit_means(rows, in_plane=True)
        unit_angles = np.arctan2(means2[:, 1], means2[:, 0])[np.hypot(means2[:, 0], means2[:, 1]) > 1e-12]
        units_2d = dst.rayleigh_2d(len(unit_angles), dst.circular_summary(unit_angles)[2])
    return Summary(
        level=level,
        name=name,
        group=", ".join(str(g) for g in groups) if level == "image" else name,
        n=n,
        n_units=1 if level == "image" else n_units,
        mean_direction=tuple(float(v) for v in direction),  # type: ignore[arg-type]
        mean_resultant_length=rbar,
        spherical_variance=dst.spherical_variance(rbar),
        rayleigh_3d_z=ray3[0],
        rayleigh_3d_p=ray3[1],
        circular_mean_deg=dst.as_degrees(cmean),
        circular_std_deg=float(np.degrees(cstd)),
        polarity_index=polarity,
        rayleigh_p=ray2[1],
        rayleigh_z=ray2[0],
        v_test_u=v_u,
        v_test_p=v_p,
        v_test_3d_stat=v3[0],
        v_test_3d_p=v3[1],
        ci=ci,
        ci_unit=ci_unit,
        n_xy=len(azimuth),
        mean_length_um=float(np.mean(rows.length_um)) if n else _NAN,
        mean_azimuth_deg=dst.as_degrees(np.arctan2(direction[1], direction[0])),
        mean_elevation_deg=float(np.degrees(np.arcsin(np.clip(direction[2], -1, 1)))),
        mean_angle_to_reference_xy_deg=float(dst.wrap_degrees(np.degrees(rel_mean))),
        mean_cosine_to_reference=float(np.mean(finite_cos)) if len(finite_cos) else _NAN,
        rayleigh_units_z=units_2d[0],
        rayleigh_units_p=units_2d[1],
        rayleigh_3d_units_z=units_3d[0],
        rayleigh_3d_units_p=units_3d[1],
    )


def _unit_means(rows: VectorTable, in_plane: bool) -> tuple[np.ndarray, list[str]]:
    """One mean resultant vector per unit (3D directions, or in-plane (cos, sin)) and the units' keys."""
    if in_plane:
        keep = np.isfinite(rows.azimuth_deg)
        a = np.radians(rows.azimuth_deg[keep])
        values = np.column_stack([np.cos(a), np.sin(a)])
    else:
        keep = np.ones(len(rows), dtype=bool)
        values = rows.direction
    units = rows.unit[keep].astype(str)
    keys = list(dict.fromkeys(units.tolist()))
    means = np.array([values[units == key].mean(axis=0) for key in keys]).reshape(len(keys), values.shape[1])
    return means, keys


def _pair_tests(valid: VectorTable, first: str, second: str, n_perm: int,
                rng: np.random.Generator) -> list[GroupTest]:
    """The tests between two groups (rows with a direction only)."""
    a, b = valid.subset(valid.group == first), valid.subset(valid.group == second)
    both = valid.subset((valid.group == first) | (valid.group == second))
    unit = _unit_kind(both)
    shared = sorted(set(a.unit.tolist()) & set(b.unit.tolist()))
    planar = bool(np.all(np.abs(both.direction[:, 2]) < 1e-9))
    tests: list[GroupTest] = []
    for in_plane in (False, True):
        if planar and not in_plane:
            continue  # every vector in the image plane: the in-plane tests say it all
        space = "in-plane" if in_plane else "3D"
        m1, keys1 = _unit_means(a, in_plane)
        m2, keys2 = _unit_means(b, in_plane)
        labels = np.r_[np.ones(len(keys1), dtype=bool), np.zeros(len(keys2), dtype=bool)]
        t, p_t, d, p_d, n_splits = dst.unit_permutation_test(np.vstack([m1, m2]), labels, n_perm, rng)
        caveats = []
        if 0 < n_splits and 1.0 / n_splits > 0.05:
            caveats.append(f"only {n_splits} distinct ways to split the {unit} between the groups: p cannot "
                           f"be below {1.0 / n_splits:.2g}; more {unit} are needed for a small p.")
        if shared:
            caveats.append(f"{', '.join(shared)} appear in both groups; each group's part is treated as a "
                           "separate unit, which ignores the pairing.")
        enumeration = ("all splits enumerated (exact p)" if n_splits <= n_perm
                       else f"{n_perm} random relabellings")
        sizes = (len(keys1), len(keys2))
        tests.append(GroupTest(
            name=f"permutation test of equal mean direction, {space} (units: {unit})",
            groups=(first, second), statistic=t, p=p_t, n_units=sizes, unit=unit, caveat=" ".join(caveats),
            method=("T = |sum of group 1's unit mean vectors| + |group 2's| - |all together|, each unit's mean "
                    f"vector the mean of its cells' unit vectors; group labels permuted over {unit}, "
                    f"{enumeration}."),
        ))
        tests.append(GroupTest(
            name=f"permutation test of equal concentration, {space} (units: {unit})",
            groups=(first, second), statistic=d, p=p_d, n_units=sizes, unit=unit, caveat=" ".join(caveats),
            method=("D = mean resultant length of group 1's unit mean vectors - group 2's (two-sided on |D|); "
                    f"group labels permuted over {unit}, {enumeration}."),
        ))
    az1 = np.radians(a.azimuth_deg[np.isfinite(a.azimuth_deg)])
    az2 = np.radians(b.azimuth_deg[np.isfinite(b.azimuth_deg)])
    f, p = dst.watson_williams([az1, az2])
    tests.append(GroupTest(
        name="Watson-Williams test of equal mean direction, in-plane (per cell)",
        groups=(first, second), statistic=f, p=p, n_units=(len(az1), len(az2)), unit="cells",
        caveat=PER_CELL_CAVEAT,
        method="F = K (N - 2)(R1 + R2 - R) / (N - R1 - R2), K = 1 + 3/(8 kappa), on F(1, N - 2) (Zar 2010, ch. 27).",
    ))
    return tests


def format_value(value: Any) -> str:
    """A statistic as people read it: 3 significant digits, small p-values in exponent form, "—" for NaN;
    the one rule of the report, the figures and the Statistics panel."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return "—"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return str(value)
