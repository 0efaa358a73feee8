"""Tables of polarity: one row per vector, summaries per image and group, tests between groups.

The experimental unit is the image, or the animal where the groups file gives one: bootstrap confidence
intervals resample units and the between-group permutation tests permute group labels over units. Cells
of one image are not independent observations; the per-cell Watson–Williams test is reported beside
them, with that caveat, because it is the test most papers use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from app.core.stats.inputs import ImageVectors, Reference

#: How the in-plane angle is measured (written into the outputs and the README).
AZIMUTH_CONVENTION = (
    "Azimuth: the angle in the image plane from the image's +x axis (to the right), counter-clockwise as "
    "the image is displayed (rows grow downwards, as in ImageJ), 0 to 360 degrees; elevation: the angle "
    "above the image plane towards deeper slices (increasing z), -90 to 90 degrees."
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
        raise NotImplementedError

    def subset(self, mask: Any) -> "VectorTable":
        """The rows selected by a boolean mask or an index array (a new table)."""
        raise NotImplementedError


def vector_table(
    images: list[ImageVectors],
    reference: Reference | Mapping[str, Reference] | None = None,
) -> VectorTable:
    """One row per vector of ``images``.

    ``reference``: one :class:`Reference` for every image, or one per image name (images without one get
    NaN reference angles), or ``None``.
    """
    raise NotImplementedError


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
    mean_angle_to_reference_deg : float
        Angle between the mean of the vectors expressed relative to their references and the reference
        (for an axis: between the 3D mean direction and the axis); NaN without one.
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
    mean_angle_to_reference_deg: float = float("nan")

    #: Column names of :meth:`row`, in order (``<stat>_ci_low`` / ``<stat>_ci_high`` for each CI).
    CI_STATS = ("mean_resultant_length", "spherical_variance", "polarity_index", "circular_std_deg",
                "circular_mean_deg", "mean_length_um")
    COLUMNS = (
        "level", "name", "group", "n", "n_units", "n_xy", "mean_length_um",
        "mean_direction_x", "mean_direction_y_up", "mean_direction_z", "mean_azimuth_deg",
        "mean_elevation_deg", "mean_resultant_length", "spherical_variance", "rayleigh_3d_z",
        "rayleigh_3d_p", "circular_mean_deg", "circular_std_deg", "polarity_index", "rayleigh_z",
        "rayleigh_p", "v_test_u", "v_test_p", "v_test_3d_stat", "v_test_3d_p",
        "mean_angle_to_reference_deg",
    ) + tuple(f"{s}_ci_{end}" for s in CI_STATS for end in ("low", "high")) + ("ci_unit",)

    def row(self) -> dict[str, Any]:
        """One flat dict for ``summary.csv``, keys :attr:`COLUMNS`."""
        raise NotImplementedError


def summarize(table: VectorTable, by: str = "image", n_boot: int = 2000, seed: int = 0) -> list[Summary]:
    """A :class:`Summary` per image (``by="image"``) or per group (``by="group"``), in order of appearance.

    Confidence intervals: ``n_boot`` bootstrap resamples of the units (images or animals) with replacement,
    the statistic recomputed from the pooled cells of the chosen units; an image, or a group with one unit,
    resamples its cells instead (``ci_unit`` says which). Seeded: the same ``seed`` gives the same CIs.
    """
    raise NotImplementedError


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
        raise NotImplementedError


def compare_groups(table: VectorTable, n_perm: int = 5000, seed: int = 0) -> list[GroupTest]:
    """Tests between every pair of groups (in order of appearance): with units as the observations,
    permutation tests of equal mean direction and of equal concentration, in 3D and in-plane; and the
    per-cell Watson–Williams test (in-plane) with :data:`PER_CELL_CAVEAT`. Fewer than two groups: ``[]``."""
    raise NotImplementedError
