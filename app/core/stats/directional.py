"""Directional statistics on angles (radians) and unit vectors: the formulas, each citing its source.

Pure numpy/scipy; no files, no app types. scipy.stats supplies what it has (``circmean``, ``circstd``,
``directional_stats``); the tests it lacks are written here. Angles are in radians; directions are unit
vectors, one per row. Empty input gives NaN, never an exception.

References
----------
- Fisher, N.I., Lewis, T. & Embleton, B.J.J. (1987). *Statistical Analysis of Spherical Data*. Cambridge.
- Fisher, N.I. (1993). *Statistical Analysis of Circular Data*. Cambridge.
- Mardia, K.V. & Jupp, P.E. (2000). *Directional Statistics*. Wiley.
- Zar, J.H. (2010). *Biostatistical Analysis*, 5th ed. Pearson (chapters 26 and 27).
- Good, P. (2005). *Permutation, Parametric and Bootstrap Tests of Hypotheses*, 3rd ed. Springer.
- Efron, B. & Tibshirani, R.J. (1993). *An Introduction to the Bootstrap*. Chapman & Hall (percentile
  intervals, ch. 13).
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats

_NAN = float("nan")


# ------------------------------------------------------------------------------------------
# 3D: directions on the sphere
# ------------------------------------------------------------------------------------------
def mean_direction(directions: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean direction and mean resultant length R̄ of unit vectors ``(N, 3)``.

    R̄ = |Σ xᵢ| / n (Mardia & Jupp 2000, §9.2.1), via ``scipy.stats.directional_stats``. The mean
    direction is NaN where R̄ = 0 (no direction); both are NaN for no vectors.
    """
    directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    if len(directions) == 0:
        return np.full(3, np.nan), _NAN
    with np.errstate(invalid="ignore", divide="ignore"):  # R̄ = 0: scipy divides by it
        result = stats.directional_stats(directions, normalize=False)
    rbar = float(result.mean_resultant_length)
    if not rbar > 1e-12:
        return np.full(3, np.nan), max(rbar, 0.0)
    return np.asarray(result.mean_direction, dtype=np.float64), rbar


def spherical_variance(rbar: float) -> float:
    """Spherical variance 1 − R̄ (Mardia & Jupp 2000, §9.2.1; Fisher, Lewis & Embleton 1987, §3.2.1)."""
    return 1.0 - rbar


def rayleigh_3d(n: int, rbar: float) -> tuple[float, float]:
    """Rayleigh test of uniformity on the sphere: ``(S*, p)``.

    S = 3nR̄² is asymptotically χ²₃ under uniformity; the modified statistic
    S* = (1 − 1/(2n)) S + S²/(10n) follows χ²₃ with error O(n^(-3/2)) and is used here (Mardia & Jupp 2000,
    §10.4.1, eqs. 10.4.5–10.4.6; Fisher, Lewis & Embleton 1987, §5.3.1(i)).
    """
    if n < 1 or not np.isfinite(rbar):
        return _NAN, _NAN
    s = 3.0 * n * rbar * rbar
    s_star = (1.0 - 1.0 / (2.0 * n)) * s + s * s / (10.0 * n)
    return float(s_star), float(stats.chi2.sf(s_star, 3))


def v_test_3d(cosines: np.ndarray) -> tuple[float, float]:
    """3D analogue of the V-test: do the directions cluster around a given (per-vector) reference?

    ``cosines`` are cᵢ = xᵢ·rᵢ, each unit direction against its unit reference. Under uniformity on the
    sphere each cᵢ is uniform on [−1, 1] (Archimedes' hat-box theorem), with mean 0 and variance 1/3, so
    the standardised resultant component along the reference, Z = √(3n)·c̄, is asymptotically N(0, 1); the
    test is one-sided (large Z: towards the reference). This is the score (locally most powerful) test of
    uniformity against a von Mises–Fisher alternative with known mean direction (Mardia & Jupp 2000,
    §10.4.1, the sphere's analogue of the circle's V-test in §6.3.3). Returns ``(Z, p)``.
    """
    c = np.asarray(cosines, dtype=np.float64).reshape(-1)
    c = c[np.isfinite(c)]
    n = len(c)
    if n == 0:
        return _NAN, _NAN
    z = math.sqrt(3.0 * n) * float(np.mean(c))
    return z, float(stats.norm.sf(z))


# ------------------------------------------------------------------------------------------
# 2D: angles in the image plane
# ------------------------------------------------------------------------------------------
def circular_summary(angles: np.ndarray) -> tuple[float, float, float]:
    """``(circular mean, circular standard deviation, R̄)`` of angles in radians.

    Mean in [0, 2π) from ``scipy.stats.circmean``; standard deviation √(−2 ln R̄) from
    ``scipy.stats.circstd`` (Mardia & Jupp 2000, §2.3.1; Zar 2010, eqs. 26.20–26.21); R̄ = |Σ e^{iθ}|/n, the
    mean resultant length (Zar 2010, eq. 26.8; Polarity-JaM's polarity index).
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return _NAN, _NAN, _NAN
    rbar = float(np.hypot(np.cos(a).sum(), np.sin(a).sum()) / len(a))
    mean = float(stats.circmean(a)) if rbar > 1e-12 else _NAN
    std = float(stats.circstd(a)) if rbar > 1e-12 else float("inf")
    return mean, std, rbar


def rayleigh_2d(n: int, rbar: float) -> tuple[float, float]:
    """Rayleigh test of circular uniformity: ``(z, p)`` with z = nR̄² = R²/n (Zar 2010, eq. 27.2).

    p from Zar's approximation (Zar 2010, eq. 27.4, after Greenwood & Durand 1955):
    p = exp(√(1 + 4n + 4(n² − R²)) − (1 + 2n)), R = nR̄.
    """
    if n < 1 or not np.isfinite(rbar):
        return _NAN, _NAN
    big_r = n * rbar
    z = big_r * big_r / n
    p = math.exp(math.sqrt(1.0 + 4.0 * n + 4.0 * (n * n - big_r * big_r)) - (1.0 + 2.0 * n))
    return float(z), float(min(max(p, 0.0), 1.0))


def v_test_2d(angles: np.ndarray, expected: float = 0.0) -> tuple[float, float, float]:
    """V-test of circular uniformity against clustering around ``expected`` (radians): ``(V, u, p)``.

    V = R cos(θ̄ − μ₀) = Σ cos(θᵢ − μ₀) (Zar 2010, eq. 27.5); u = V √(2/n) (eq. 27.6), compared with the
    standard normal's upper tail, the large-sample limit of Zar's table B.35 (Durand & Greenwood 1958).
    For per-cell references pass the angles relative to each cell's reference and ``expected=0``.
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    n = len(a)
    if n == 0:
        return _NAN, _NAN, _NAN
    v = float(np.cos(a - expected).sum())
    u = v * math.sqrt(2.0 / n)
    return v, u, float(stats.norm.sf(u))


def kappa_estimate(rbar: float) -> float:
    """Maximum-likelihood von Mises concentration κ̂ from R̄ (the A₁⁻¹ approximation of Fisher 1993, eq. 4.40):
    2R̄ + R̄³ + 5R̄⁵/6 below 0.53, −0.4 + 1.39R̄ + 0.43/(1 − R̄) below 0.85, else 1/(R̄³ − 4R̄² + 3R̄)."""
    r = float(rbar)
    if not np.isfinite(r):
        return _NAN
    if r < 0.53:
        return 2 * r + r ** 3 + 5 * r ** 5 / 6
    if r < 0.85:
        return -0.4 + 1.39 * r + 0.43 / (1 - r)
    if r >= 1.0:
        return float("inf")
    return 1.0 / (r ** 3 - 4 * r ** 2 + 3 * r)


def watson_williams(samples: Sequence[np.ndarray]) -> tuple[float, float]:
    """Watson–Williams test of equal mean directions of k samples of angles (radians): ``(F, p)``.

    F = K (N − k)(Σ Rⱼ − R) / ((k − 1)(N − Σ Rⱼ)) with the correction K = 1 + 3/(8κ̂), κ̂ estimated from the
    pooled r_w = Σ Rⱼ / N (:func:`kappa_estimate`), referred to F(k − 1, N − k) (Zar 2010, §27.4, the
    two- and multi-sample Watson–Williams test; Mardia & Jupp 2000, §7.3.2). It assumes independent
    observations from von Mises distributions of equal, not too small concentration.
    """
    groups = [np.asarray(s, dtype=np.float64).reshape(-1) for s in samples]
    groups = [g[np.isfinite(g)] for g in groups]
    k = len(groups)
    sizes = np.array([len(g) for g in groups])
    n = int(sizes.sum())
    if k < 2 or (sizes < 1).any() or n <= k:
        return _NAN, _NAN
    resultants = np.array([np.hypot(np.cos(g).sum(), np.sin(g).sum()) for g in groups])
    pooled = np.concatenate(groups)
    r_all = float(np.hypot(np.cos(pooled).sum(), np.sin(pooled).sum()))
    sum_r = float(resultants.sum())
    if n - sum_r <= 1e-12:  # every sample perfectly concentrated
        return (float("inf"), 0.0) if sum_r - r_all > 1e-9 else (_NAN, _NAN)
    kappa = kappa_estimate(sum_r / n)
    correction = 1.0 + 3.0 / (8.0 * kappa) if kappa > 0 else _NAN
    f = correction * (n - k) * (sum_r - r_all) / ((k - 1) * (n - sum_r))
    return float(f), float(stats.f.sf(f, k - 1, n - k))


# ------------------------------------------------------------------------------------------
# Resampling over experimental units
# ------------------------------------------------------------------------------------------
def bootstrap_sums(unit_sums: np.ndarray, n_boot: int, rng: np.random.Generator,
                   block: int = 4_000_000) -> np.ndarray:
    """Column sums of ``n_boot`` bootstrap resamples of the rows of ``unit_sums`` ``(U, k)``: ``(n_boot, k)``.

    Each resample draws U units with replacement (Efron & Tibshirani 1993, ch. 6); a statistic that is a
    function of pooled sums (resultant vectors, counts) is then recomputed from each row, i.e. from the
    pooled cells of the chosen units. Done as multiplicity counts times the sums, in blocks of about
    ``block`` counts.
    """
    sums = np.asarray(unit_sums, dtype=np.float64)
    u = len(sums)
    out = np.empty((n_boot, sums.shape[1]))
    if u == 0:
        out[:] = np.nan
        return out
    step = max(1, block // u)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        picks = rng.integers(0, u, size=(b, u)) + (np.arange(b) * u)[:, None]
        counts = np.bincount(picks.ravel(), minlength=b * u).reshape(b, u)
        out[start:start + b] = counts @ sums
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The bootstrap percentile interval (Efron & Tibshirani 1993, §13.3) of finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return _NAN, _NAN
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(v, [tail, 100.0 - tail])
    return float(lo), float(hi)


def angular_interval(angles: np.ndarray, centre: float, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap angles (radians) around ``centre``: the deviations from the centre,
    wrapped to (−π, π], give the interval, returned as ``(start, end)`` in [0, 2π), the arc from start
    counter-clockwise to end (it may pass through 0)."""
    a = np.asarray(angles, dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0 or not np.isfinite(centre):
        return _NAN, _NAN
    deviation = np.angle(np.exp(1j * (a - centre)))
    lo, hi = percentile_interval(deviation, level)
    return float((centre + lo) % (2 * np.pi)), float((centre + hi) % (2 * np.pi))


def unit_permutation_test(
    unit_vectors: np.ndarray,
    in_first: np.ndarray,
    n_perm: int,
    rng: np.random.Generator,
) -> tuple[float, float, float, float, int]:
    """Permutation tests of equal mean direction and equal concentration with units as the observations.

    Parameters
    ----------
    unit_vectors : ndarray, shape (U, d)
        One mean resultant vector per unit (the mean of its cells' unit vectors, length R̄ of the unit;
        d = 3 for directions, 2 for in-plane (cos, sin)).
    in_first : ndarray of bool, shape (U,)
        Which units belong to the first group.
    n_perm : int
        Random relabellings; when the number of distinct splits C(U, U₁) is at most ``n_perm`` every split
        is enumerated instead and p is exact.

    Returns
    -------
    (direction_statistic, direction_p, concentration_statistic, concentration_p, n_splits)
        Direction: T = |Σ₁ mᵤ| + |Σ₂ mᵤ| − |Σ mᵤ| ≥ 0, the Watson–Williams numerator (Zar 2010, §27.4)
        computed on unit means: how much longer the groups' resultants are apart than together; large
        when the groups point different ways. Concentration: D = |mean₁ mᵤ| − |mean₂ mᵤ|, the difference of
        the groups' mean resultant lengths over units, tested two-sided on |D|. p = (1 + #{T* ≥ T}) /
        (1 + n_perm) for random relabellings, #{T* ≥ T} / n_splits for enumeration (Good 2005, §3.1).
        ``n_splits``: distinct splits of the units (the smallest p possible is 1/n_splits).
    """
    m = np.asarray(unit_vectors, dtype=np.float64)
    first = np.asarray(in_first, dtype=bool)
    u, u1 = len(m), int(first.sum())
    n_splits = math.comb(u, u1)
    if u1 < 1 or u1 >= u:
        return _NAN, _NAN, _NAN, _NAN, n_splits

    def statistics(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s1 = masks.astype(np.float64) @ m
        s2 = m.sum(axis=0) - s1
        n1, n2 = u1, u - u1
        r1, r2 = np.linalg.norm(s1, axis=1), np.linalg.norm(s2, axis=1)
        t = r1 + r2 - np.linalg.norm(m.sum(axis=0))
        return t, r1 / n1 - r2 / n2

    t_obs, d_obs = statistics(first[None, :])
    t_obs, d_obs = float(t_obs[0]), float(d_obs[0])
    tol = 1e-10
    if n_splits <= n_perm:
        masks = np.zeros((n_splits, u), dtype=bool)
        for i, chosen in enumerate(itertools.combinations(range(u), u1)):
            masks[i, list(chosen)] = True
        t, d = statistics(masks)
        p_t = float(np.mean(t >= t_obs - tol))
        p_d = float(np.mean(np.abs(d) >= abs(d_obs) - tol))
    else:
        keys = rng.random((n_perm, u))
        masks = np.argsort(keys, axis=1) < u1  # a uniformly random subset of u1 units per row
        t, d = statistics(masks)
        p_t = float((1 + np.sum(t >= t_obs - tol)) / (1 + n_perm))
        p_d = float((1 + np.sum(np.abs(d) >= abs(d_obs) - tol)) / (1 + n_perm))
    return t_obs, p_t, d_obs, p_d, n_splits


def wrap_degrees(angles: np.ndarray) -> np.ndarray:
    """Angles in degrees wrapped to (−180, 180]."""
    a = np.asarray(angles, dtype=np.float64)
    wrapped = (a + 180.0) % 360.0 - 180.0
    return np.where(wrapped == -180.0, 180.0, wrapped)


def as_degrees(angle: Optional[float]) -> float:
    """Radians to degrees in [0, 360); NaN stays NaN."""
    if angle is None or not np.isfinite(angle):
        return _NAN
    return float(np.degrees(angle) % 360.0)
