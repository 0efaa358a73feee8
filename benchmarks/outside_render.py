"""A second, independent renderer of two-channel nucleus/Golgi stacks, for VALIDATION ONLY.

    .venv/bin/python benchmarks/outside_render.py --out DIR [--config validation|ship] [--n 8] \
        [--layouts ../shared/data/retina3d_vectors [--limit K] [--voxel-xy 0.666]] [--seed S] \
        [--field Z Y X]

The starter model is trained on ``app.core.simulate`` only. This module draws data deliberately unlike that
simulator, written from optics, camera physics and retina biology, without reading or importing it, so that
a model's numbers on it measure generalisation rather than memory of one generator. It lives in
``benchmarks/`` and must never feed training of a shipped model.

What differs from a Gaussian-blob simulator, axis by axis:

- **Objects.** Nuclei are deformed superellipsoids (exponent 1.6–3.2) with random low-order spherical-harmonic
  bumps, bent around the vessel they line and sometimes kidney-shaped, textured with chromatin noise, bright
  chromocenters, a brighter lamina rim and dark nucleoli holes; a few are mitotic (condensed plates, one or two)
  or dim. Golgi are lumpy compact blobs, crescent ribbons (caps wrapping part of the nucleus, with gaps),
  3–12 mini-stacks fragmented over 1–4 µm, or occasionally dispersed puncta.
- **Ground truth** is the centroid of each object's *rendered mask* on the voxel grid (what an annotator
  clicks), not the requested point: a cap's centroid sits nearer the nucleus than its ribbon.
- **Staining.** Diffuse perinuclear Golgi-marker haze in the cytoplasm; vessel-wall tubes with puncta in the
  Golgi channel; non-endothelial nuclei (pericytes on the vessels, cells of other layers near the top and bottom
  of the stack), some with their own Golgi, none annotated; autofluorescent red blood cells in lumens; debris in
  both channels; bright specks.
- **Optics.** A per-volume PSF mixing an hourglass core (lateral width growing with defocus), an axially
  asymmetric long-tailed widefield-like component and a lateral Cauchy halo; the Golgi channel a little wider.
  Depth attenuation along z, vignetting and gradients, channel bleed-through both ways.
- **Camera.** ``validation``: sCMOS (per-pixel offset, gain and read-noise maps, RTS pixels, hot pixels, column
  pattern) on Poisson photons, 16-bit; ``ship``: EMCCD (Poisson, clock-induced charge, Gamma excess noise of
  the EM register), 12-bit. Row flicker (scan/laser) in both; saturation clipping.
- **Layouts.** Retina-like: cells line branching vessel polylines, nuclei elongated along the vessel (5–20 µm),
  crowded and touching neighbours, Golgi 1–8 µm from the nucleus centre on one side (mostly along the vessel,
  sometimes lateral or above/below in z). Real annotated layouts (``--layouts``) are rendered with the same
  tiling as ``benchmarks/accuracy.py``.

Seeds: ``validation`` volumes start at 50 000 and are used to report models; ``ship`` (other microscope) starts
at 90 000 and is looked at only when a model ships. Real layouts are for testing only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

# The checkout this script lives in, not whichever one an editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.pairs import PairSet  # noqa: E402
from app.core.volume import Volume  # noqa: E402

GENERATOR = "outside_render"
Range = tuple[float, float]


# ------------------------------------------------------------------------------------------
# Microscope configurations
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutsideConfig:
    """Ranges (lo, hi) from which each volume draws its microscope, stain and sample parameters.

    Parameters
    ----------
    name : str
        Configuration name, stored in the volumes' metadata.
    seed_base : int
        First seed of this configuration's random volumes.
    stream : int
        Mixed into every seed so two configurations never share random numbers.
    camera : {"scmos", "emccd"}
        Noise model.
    bits : int
        Digitiser range; values clip at ``2**bits - 1`` (saturation).
    fill : Range
        Mean nucleus signal as a fraction of the digitiser range (the user's exposure and gain choice), used
        where ``adu_per_e`` is (0, 0).
    adu_per_e : Range
        Camera conversion gain (ADU per photo-electron) of a camera whose gain the user does not set (sCMOS).
    """

    name: str
    seed_base: int
    stream: int
    camera: str = "scmos"
    bits: int = 16
    fill: Range = (0.06, 0.16)
    adu_per_e: Range = (0.42, 0.6)
    # photo-electrons (mean, in focus) of a typical object and of the backgrounds
    nucleus_photons: Range = (250.0, 1000.0)
    golgi_photons: Range = (200.0, 1000.0)
    autofluor_nucleus: Range = (0.04, 0.12)   # × nucleus photons
    autofluor_golgi: Range = (0.06, 0.22)     # × Golgi photons
    haze_golgi: Range = (0.05, 0.18)          # perinuclear cytoplasmic Golgi-marker haze, × Golgi photons
    vessel_golgi: Range = (0.04, 0.14)        # vessel-wall staining in the Golgi channel, × Golgi photons
    # optics (µm)
    sigma_xy: Range = (0.16, 0.28)
    sigma_z: Range = (0.45, 0.8)
    rayleigh_z: Range = (0.6, 1.2)            # lateral width doubles (×√2) at this defocus
    z_asymmetry: Range = (1.3, 1.8)           # axial widths above / below focus
    tail_weight: Range = (0.2, 0.35)          # long-tailed widefield-like component
    tail_gamma_z: Range = (1.2, 2.5)
    tail_cone: Range = (0.35, 0.6)            # its lateral spread per µm of defocus
    halo_weight: Range = (0.04, 0.1)          # lateral Cauchy halo (tissue scatter)
    halo_gamma_xy: Range = (0.6, 1.2)
    golgi_psf_scale: Range = (1.05, 1.2)
    depth_length: Range = (25.0, 60.0)        # 1/e attenuation length along z
    bleed_nucleus_to_golgi: Range = (0.02, 0.06)
    bleed_golgi_to_nucleus: Range = (0.005, 0.02)
    vignetting: Range = (0.1, 0.3)
    gradient: Range = (0.0, 0.25)
    row_flicker: Range = (0.01, 0.035)
    # camera (sCMOS: read noise e-, hot pixel fraction; EMCCD: EM gain, CIC, read noise in ADU)
    read_noise: Range = (1.0, 2.2)
    hot_fraction: Range = (1e-4, 5e-4)
    em_gain: Range = (100.0, 300.0)
    cic: Range = (0.005, 0.02)
    # biology
    p_mitotic: float = 0.02
    p_dim: float = 0.08
    p_kidney: float = 0.15
    golgi_kinds: tuple[tuple[str, float], ...] = (("blob", 0.35), ("cap", 0.3), ("fragmented", 0.28), ("dispersed", 0.07))
    other_layer_per_field: Range = (4.0, 16.0)  # non-endothelial nuclei per 160 × 160 µm
    pericyte_fraction: Range = (0.03, 0.1)
    debris_per_field: Range = (2.0, 8.0)
    specks_per_field: Range = (20.0, 60.0)
    rbc_per_field: Range = (0.0, 8.0)


#: The named configurations. ``validation`` reports models; ``second`` (a dimmer spinning-disk-like confocal:
#: fewer photons, wider PSF, weaker autofluorescence, more fragmented Golgi, fewer non-endothelial nuclei) is the
#: second outside data set of the fine-tuning study; ``ship`` (another microscope: widefield-like optics, EMCCD,
#: 12-bit, stronger attenuation, other Golgi mix) is looked at only when a model ships.
CONFIGS: dict[str, OutsideConfig] = {
    "validation": OutsideConfig(name="validation", seed_base=50_000, stream=1),
    "second": OutsideConfig(
        name="second", seed_base=70_000, stream=3, nucleus_photons=(120.0, 500.0), golgi_photons=(100.0, 450.0),
        autofluor_nucleus=(0.02, 0.08), autofluor_golgi=(0.04, 0.14), haze_golgi=(0.04, 0.12),
        sigma_xy=(0.2, 0.32), sigma_z=(0.6, 1.0), rayleigh_z=(0.8, 1.4), z_asymmetry=(1.1, 1.4),
        tail_weight=(0.1, 0.25), halo_weight=(0.02, 0.06), depth_length=(30.0, 80.0),
        bleed_nucleus_to_golgi=(0.01, 0.04), read_noise=(1.4, 2.8), hot_fraction=(2e-4, 8e-4),
        golgi_kinds=(("blob", 0.25), ("cap", 0.25), ("fragmented", 0.4), ("dispersed", 0.1)),
        other_layer_per_field=(2.0, 8.0), pericyte_fraction=(0.02, 0.06),
    ),
    "ship": OutsideConfig(
        name="ship", seed_base=90_000, stream=2, camera="emccd", bits=12, fill=(0.12, 0.3), adu_per_e=(0.0, 0.0),
        nucleus_photons=(30.0, 120.0), golgi_photons=(25.0, 140.0),
        autofluor_nucleus=(0.05, 0.14), autofluor_golgi=(0.07, 0.22), haze_golgi=(0.08, 0.22),
        vessel_golgi=(0.06, 0.18),
        sigma_xy=(0.22, 0.34), sigma_z=(0.7, 1.1), rayleigh_z=(0.8, 1.6), z_asymmetry=(0.5, 0.75),
        tail_weight=(0.3, 0.45), tail_gamma_z=(2.0, 4.0), tail_cone=(0.5, 0.8), halo_weight=(0.08, 0.15),
        halo_gamma_xy=(0.8, 1.6), golgi_psf_scale=(1.1, 1.3), depth_length=(18.0, 40.0),
        bleed_nucleus_to_golgi=(0.03, 0.08), bleed_golgi_to_nucleus=(0.01, 0.03),
        vignetting=(0.2, 0.4), gradient=(0.05, 0.35), row_flicker=(0.02, 0.05),
        read_noise=(8.0, 20.0), hot_fraction=(0.0, 0.0),
        p_mitotic=0.03, p_dim=0.12, p_kidney=0.2,
        golgi_kinds=(("blob", 0.25), ("cap", 0.35), ("fragmented", 0.32), ("dispersed", 0.08)),
        other_layer_per_field=(8.0, 24.0), pericyte_fraction=(0.05, 0.14), debris_per_field=(4.0, 12.0),
        specks_per_field=(30.0, 90.0), rbc_per_field=(2.0, 12.0),
    ),
}
#: A full field in y/x (µm²) for the per-field counts.
FIELD_AREA_UM2 = 160.0 * 160.0
#: Seeds of the real-layout volumes: ``seed_base + LAYOUT_SEED_OFFSET + 100·crop + tile``.
LAYOUT_SEED_OFFSET = 5_000


def get_config(config: Union[str, OutsideConfig]) -> OutsideConfig:
    """The :class:`OutsideConfig` named ``config`` (or ``config`` itself)."""
    if isinstance(config, OutsideConfig):
        return config
    try:
        return CONFIGS[config]
    except KeyError:
        raise ValueError(f"Unknown outside configuration {config!r}; expected one of {', '.join(CONFIGS)}.") from None


def _draw(rng: np.random.Generator, cfg: OutsideConfig) -> dict[str, float]:
    """One volume's parameters: a uniform draw from every range of ``cfg``."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            out[f.name] = float(rng.uniform(*value)) if value[1] > value[0] else float(value[0])
    return out


# ------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """Cells of one field: requested nucleus and Golgi points plus the hints a random layout knows.

    Parameters
    ----------
    nuclei_um, golgi_um : ndarray, shape (N, 3)
        Requested centres ``(z, y, x)`` in µm from the field's corner.
    field_um : tuple of float
        ``(Z, Y, X)`` extent in µm.
    vessels : list of (ndarray (M, 3), float)
        Vessel centre lines (µm) with their radius.
    axes, normals, semi_axes : ndarray, shape (N, 3), optional
        Per nucleus: long axis, wall normal (thin axis) and semi-axes (long, width, half-thickness) in µm.
    """

    nuclei_um: np.ndarray
    golgi_um: np.ndarray
    field_um: tuple[float, float, float]
    vessels: list = field(default_factory=list)
    axes: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None
    semi_axes: Optional[np.ndarray] = None

    def hints(self) -> dict[str, Any]:
        """Keyword arguments for :func:`render`."""
        return {"vessels": self.vessels, "axes": self.axes, "normals": self.normals, "semi_axes": self.semi_axes}


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-9)


def _perpendicular(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector perpendicular to unit vector ``u``."""
    while True:
        v = rng.standard_normal(3)
        v -= v.dot(u) * u
        if np.linalg.norm(v) > 1e-3:
            return v / np.linalg.norm(v)


def _ellipsoid_extent(direction: np.ndarray, u: np.ndarray, w: np.ndarray, n: np.ndarray, semi: np.ndarray) -> float:
    """Distance from an ellipsoid's centre to its surface along unit ``direction``."""
    local = np.array([direction.dot(u), direction.dot(w), direction.dot(n)])
    return float(1.0 / math.sqrt(max(np.sum((local / semi) ** 2), 1e-12)))


def _vessel_paths(rng: np.random.Generator, field_um: Sequence[float]) -> list[tuple[np.ndarray, float]]:
    """A branching, roughly planar vessel plexus crossing the field: polylines (µm) with radii."""
    fz, fy, fx = field_um
    layer = fz * rng.uniform(0.4, 0.6)
    tilt = rng.normal(0, 0.03, 2)
    extent = max(fy, fx)
    vessels: list[tuple[np.ndarray, float]] = []

    def walk(start: np.ndarray, heading: float, length: float) -> np.ndarray:
        points, p, h = [start], start.copy(), heading
        for _ in range(int(length / 4.0)):
            h += rng.normal(0, 0.12)
            p = p + 4.0 * np.array([0.0, math.sin(h), math.cos(h)])
            p[0] = layer + tilt[0] * (p[1] - fy / 2) + tilt[1] * (p[2] - fx / 2) + rng.normal(0, 0.15)
            points.append(p.copy())
            if not (-15 < p[1] < fy + 15 and -15 < p[2] < fx + 15):
                break
        return np.array(points)

    n_main = max(2, int(round(rng.uniform(2, 5) * extent / 160.0)))
    for _ in range(n_main):
        # enter at a random border point, heading inwards
        side = rng.integers(4)
        t = rng.uniform(0.1, 0.9)
        start = {0: (0.0, t * fy, -5.0), 1: (0.0, t * fy, fx + 5), 2: (0.0, -5.0, t * fx), 3: (0.0, fy + 5, t * fx)}[side]
        heading = {0: 0.0, 1: math.pi, 2: math.pi / 2, 3: -math.pi / 2}[side] + rng.normal(0, 0.4)
        radius = rng.uniform(4.0, 7.0) if rng.random() < 0.25 else rng.uniform(2.0, 3.5)
        vessels.append((walk(np.array(start), heading, 2.5 * extent), radius))
    for _ in range(int(rng.integers(2, 7) * extent / 160.0) + 1):  # capillary branches
        parent, _ = vessels[rng.integers(len(vessels))]
        k = int(rng.integers(len(parent)))
        d = parent[min(k + 1, len(parent) - 1)] - parent[max(k - 1, 0)]
        heading = math.atan2(d[1], d[2]) + rng.choice([-1, 1]) * rng.uniform(0.7, 1.6)
        vessels.append((walk(parent[k].copy(), heading, rng.uniform(30, 110)), rng.uniform(1.8, 3.2)))
    return vessels


def random_layout(rng: np.random.Generator, field_um: Sequence[float], density: Optional[float] = None,
                  crowding: float = 0.3) -> Layout:
    """Plausible retina endothelial cells in a field: nuclei lining vessels, each with its Golgi.

    Parameters
    ----------
    rng : numpy.random.Generator
    field_um : sequence of 3 float
        ``(Z, Y, X)`` in µm.
    density : float, optional
        Cells per µm² of y/x field (default: 30–80 per 160 × 160 µm).
    crowding : float
        Share of cells placed right next to another one along the vessel (crowded or touching nuclei).

    Returns
    -------
    Layout
        Requested centres plus vessel, orientation and size hints for :func:`render`.
    """
    field_um = tuple(float(f) for f in field_um)
    fz, fy, fx = field_um
    vessels = _vessel_paths(rng, field_um)
    if density is None:
        density = rng.uniform(30, 80) / FIELD_AREA_UM2
    n_cells = max(1, int(round(density * fy * fx)))
    # sample positions along vessel length (inside the field), flow direction per vessel
    seg = []
    for v, (path, radius) in enumerate(vessels):
        for a, b in zip(path[:-1], path[1:]):
            mid = (a + b) / 2
            if 0 <= mid[1] <= fy and 0 <= mid[2] <= fx:
                seg.append((v, a, b, radius))
    if not seg:
        return Layout(np.zeros((0, 3)), np.zeros((0, 3)), field_um, vessels)
    lengths = np.array([np.linalg.norm(b - a) for _, a, b, _ in seg])
    flow = {v: rng.choice([-1.0, 1.0]) for v in range(len(vessels))}
    nuclei, golgi, axes, normals, semis = [], [], [], [], []
    for _ in range(n_cells):
        if nuclei and rng.random() < crowding:  # a neighbour of an earlier cell along the same vessel
            j = int(rng.integers(len(nuclei)))
            u = axes[j]
            gap = semis[j][0] + rng.uniform(2.5, 8.0)
            centre = nuclei[j] + rng.choice([-1, 1]) * gap * u + rng.normal(0, 0.8, 3) * np.array([0.3, 1, 1])
            n = normals[j] if rng.random() < 0.6 else _perpendicular(u, rng)
            radius = 0.0
            v_id = None
        else:
            s = int(rng.choice(len(seg), p=lengths / lengths.sum()))
            v_id, a, b, radius = seg[s]
            t = rng.random()
            axis_point = a + t * (b - a)
            u = _unit(b - a)
            # around the vessel: mostly top/bottom and sides of a planar plexus
            n = _perpendicular(u, rng)
            centre = axis_point + radius * n
        u = _unit(u + rng.normal(0, 0.12, 3) * np.array([0.3, 1, 1]))
        n = _unit(n - n.dot(u) * u)
        w = np.cross(n, u)
        length = float(np.clip(rng.lognormal(math.log(11.0), 0.3), 5.0, 20.0))
        semi = np.array([length / 2, rng.uniform(1.7, 3.4), rng.uniform(0.9, 1.9)])
        # Golgi: along the vessel (against flow), lateral in the wall, or above/below the nucleus
        r = rng.random()
        sign = flow[v_id] if v_id is not None and rng.random() < 0.75 else rng.choice([-1.0, 1.0])
        if r < 0.5:
            d = _unit(sign * u + rng.normal(0, 0.35) * w + rng.normal(0, 0.15) * n)
        elif r < 0.82:
            d = _unit(rng.choice([-1, 1]) * w + rng.normal(0, 0.4) * u + rng.normal(0, 0.2) * n)
        else:
            d = _unit(rng.choice([-1, 1]) * n + rng.normal(0, 0.45) * u + rng.normal(0, 0.3) * w)
        gap = rng.uniform(0.6, 3.8)
        surface = _ellipsoid_extent(d, u, w, n, semi)
        if surface + gap > 8.0:  # a long nucleus: shorten it so the Golgi stays within 8 µm
            semi[0] = max(2.5, semi[0] * (8.0 - gap) / (surface + 1e-6) * 0.95)
            surface = _ellipsoid_extent(d, u, w, n, semi)
        dist = float(np.clip(surface + gap, 1.0, 8.0))
        g = centre + dist * d
        nuclei.append(centre)
        golgi.append(g)
        axes.append(u)
        normals.append(n)
        semis.append(semi)
    nuclei_a, golgi_a = np.array(nuclei), np.array(golgi)
    # drop cells whose nucleus is outside the field (crowded neighbours can step out)
    keep = np.all((nuclei_a >= -1.0) & (nuclei_a <= np.asarray(field_um) + 1.0), axis=1)
    return Layout(nuclei_a[keep], golgi_a[keep], field_um, vessels, np.array(axes)[keep], np.array(normals)[keep],
                  np.array(semis)[keep])


# ------------------------------------------------------------------------------------------
# Objects
# ------------------------------------------------------------------------------------------
#: Spherical-harmonic-like bumps: monomials of degree 2 and 3 in the direction cosines.
_MONOMIALS = [(2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1),
              (3, 0, 0), (0, 3, 0), (0, 0, 3), (2, 1, 0), (2, 0, 1), (1, 2, 0), (0, 2, 1), (1, 0, 2), (0, 1, 2),
              (1, 1, 1)]


class _Box:
    """A bounding box on the voxel grid with µm offsets of its voxel centres from ``centre``."""

    def __init__(self, centre: np.ndarray, half_um: np.ndarray, voxel: np.ndarray, shape: Sequence[int]):
        lo = np.floor((centre - half_um) / voxel).astype(int)
        hi = np.ceil((centre + half_um) / voxel).astype(int) + 1
        lo = np.clip(lo, 0, shape)
        hi = np.clip(hi, 0, shape)
        self.empty = bool(np.any(hi <= lo))
        self.centre = np.asarray(centre, dtype=float)
        self.lo = lo
        self.slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.shape = tuple(int(b - a) for a, b in zip(lo, hi))
        idx = [np.arange(a, b) for a, b in zip(lo, hi)]
        self.index = idx
        self.d = [(i * v - c).astype(np.float32) for i, v, c in zip(idx, voxel, centre)]
        self.dz = self.d[0][:, None, None]
        self.dy = self.d[1][None, :, None]
        self.dx = self.d[2][None, None, :]

    def local(self, u: np.ndarray, w: np.ndarray, n: np.ndarray, offset: np.ndarray = np.zeros(3)):
        """Coordinates of the voxel centres along ``u, w, n`` (µm), relative to ``centre + offset``."""
        dz, dy, dx = self.dz - float(offset[0]), self.dy - float(offset[1]), self.dx - float(offset[2])
        return [dz * float(a[0]) + dy * float(a[1]) + dx * float(a[2]) for a in (u, w, n)]


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_um: float, voxel: np.ndarray) -> np.ndarray:
    """Gaussian random field of unit standard deviation with correlation length ``sigma_um``."""
    noise = rng.standard_normal(shape).astype(np.float32)
    out = ndimage.gaussian_filter(noise, sigma=[sigma_um / v for v in voxel], mode="reflect")
    sd = float(out.std())
    return out / sd if sd > 0 else out


def _bumps(coeffs: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Σ coeff·monomial of the direction cosines of (a, b, c)."""
    r = np.sqrt(a * a + b * b + c * c) + 1e-6
    powers = []
    for v in (a / r, b / r, c / r):
        powers.append([None, v, v * v, v * v * v])
    f = np.zeros(np.broadcast(a, b, c).shape, dtype=np.float32)
    for k, (i, j, m) in zip(coeffs, _MONOMIALS):
        if k:
            term = None
            for pw, e in zip(powers, (i, j, m)):
                if e:
                    term = pw[e] if term is None else term * pw[e]
            f += np.float32(k) * term
    return f


@dataclass
class _Nucleus:
    centre: np.ndarray
    u: np.ndarray
    w: np.ndarray
    n: np.ndarray
    semi: np.ndarray
    power: float
    coeffs: np.ndarray
    bend_wall: float        # curvature around the vessel (w–n plane), 1/µm
    bend_long: float        # banana bend (u–w plane), 1/µm
    kidney: bool
    kind: str               # "normal", "mitotic", "dim"
    brightness: float
    plates: int = 1         # mitotic: 1 (metaphase) or 2 (anaphase)
    plate_gap: float = 0.0

    def half_extent(self, pad: float = 0.0) -> np.ndarray:
        if self.kind == "mitotic":
            return np.full(3, float(self.semi.max()) + self.plate_gap / 2 + 1.0 + pad)
        semi = self.semi * 1.3 + np.array([0.0, abs(self.bend_long) * self.semi[0] ** 2,
                                           self.bend_wall * self.semi[1] ** 2]) + pad
        axes = np.abs(np.stack([self.u, self.w, self.n]))  # rows: local axes in world (z, y, x)
        return axes.T @ semi + 1.0

    def mask(self, box: _Box, offset: np.ndarray = np.zeros(3)) -> tuple[np.ndarray, np.ndarray]:
        """Inside mask and normalised depth (0 at the surface, 1 at the centre) on ``box``."""
        a_, b_, c_ = box.local(self.u, self.w, self.n, offset)
        if self.kind == "mitotic":
            inside = np.zeros(np.broadcast(a_, b_, c_).shape, dtype=bool)
            depth = np.zeros(inside.shape, dtype=np.float32)
            shifts = [0.0] if self.plates == 1 else [-self.plate_gap / 2, self.plate_gap / 2]
            for s in shifts:  # plates perpendicular to the long axis u
                rho = (np.abs((a_ - s) / self.semi[2]) ** 2.5 + np.abs(b_ / self.semi[1]) ** 2.5
                       + np.abs(c_ / self.semi[1]) ** 2.5) ** 0.4
                inside |= rho <= 1
                depth = np.maximum(depth, 1 - rho)
            return inside, depth
        b_ = b_ + self.bend_long * a_ * a_
        c_ = c_ + self.bend_wall * b_ * b_
        a, b, c = a_ / self.semi[0], b_ / self.semi[1], c_ / self.semi[2]
        p = self.power
        rho = (np.abs(a) ** p + np.abs(b) ** p + np.abs(c) ** p) ** (1.0 / p)
        near = np.flatnonzero((rho > 0.7) & (rho < 1.3))  # bumps matter only near the surface
        limit = np.ones(rho.shape, dtype=np.float32)
        if near.size:
            ab = np.broadcast_arrays(a, b, c)
            limit.flat[near] = 1.0 + np.clip(_bumps(self.coeffs, *(x.ravel()[near] for x in ab)), -0.3, 0.3)
        inside = rho <= limit
        if self.kidney:  # an indentation (hilum) on one side
            inside &= (a * self.semi[0]) ** 2 + ((b - 1.15) * self.semi[1]) ** 2 + (c * self.semi[2]) ** 2 \
                > (0.55 * self.semi[1]) ** 2
        return inside, np.clip(1 - rho / limit, 0, 1)


@dataclass
class _Piece:
    """An ellipsoidal Golgi element (blob, mini-stack or punctum)."""

    centre: np.ndarray
    semi: np.ndarray
    rot: np.ndarray  # rows u, w, n
    coeffs: np.ndarray
    brightness: float


@dataclass
class _Golgi:
    kind: str
    point: np.ndarray
    nucleus_centre: np.ndarray
    brightness: float
    pieces: list = field(default_factory=list)
    cap_radius: float = 0.0
    cap_thickness: float = 0.0
    cap_angle: float = 0.0
    ribbon_keep: float = 1.0

    def half_extent(self) -> np.ndarray:
        if self.kind == "cap":
            return np.full(3, self.cap_radius * math.sin(min(self.cap_angle, math.pi / 2)) + self.cap_thickness + 1.5)
        ext = np.zeros(3)
        for piece in self.pieces:
            ext = np.maximum(ext, np.abs(piece.centre - self.point) + piece.semi.max() + 0.8)
        return ext


# ------------------------------------------------------------------------------------------
# Planning: shapes for the requested points
# ------------------------------------------------------------------------------------------
def _infer_orientation(nuclei: np.ndarray, golgi: np.ndarray, rng: np.random.Generator):
    """Long axes and wall normals of nuclei from a real layout: along the local vessel, guessed as the minimum
    spanning tree of the nuclei (endothelial cells line the vessels), flat in z (a planar plexus)."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    n = len(nuclei)
    axes = np.zeros((n, 3))
    edges: list[tuple[int, int]] = []
    if n > 1:
        d = cdist(nuclei, nuclei)
        mst = minimum_spanning_tree(d).tocoo()
        edges = [(int(i), int(j)) for i, j, dist in zip(mst.row, mst.col, mst.data) if dist <= 40.0]
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        neighbours[i].append(j)
        neighbours[j].append(i)
    for i in range(n):
        if neighbours[i]:
            dirs = [_unit(nuclei[j] - nuclei[i]) for j in neighbours[i]]
            ref = dirs[0]
            u = sum(d if d.dot(ref) >= 0 else -d for d in dirs)
        else:
            g = golgi[i] - nuclei[i]
            u = np.array([0.0, g[1], g[2]]) if rng.random() < 0.5 else np.array([0.0, *rng.standard_normal(2)])
        u = _unit(u * np.array([0.3, 1.0, 1.0]) + rng.normal(0, 0.1, 3) * np.array([0.2, 1, 1]))
        axes[i] = u
    normals = np.zeros((n, 3))
    for i in range(n):
        z = np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.25, 3)
        normals[i] = _unit(z - z.dot(axes[i]) * axes[i])
    return axes, normals, edges


def _fit_sizes(nuclei: np.ndarray, golgi: np.ndarray, axes: np.ndarray, normals: np.ndarray, semis: np.ndarray) -> np.ndarray:
    """Shrink nuclei so each one's Golgi point lies outside it and neighbours at most just touch."""
    from scipy.spatial import cKDTree

    semis = semis.copy()
    minimum = np.array([1.6, 1.2, 0.8])
    tree = cKDTree(nuclei) if len(nuclei) > 1 else None
    for i in range(len(nuclei)):
        u, n = axes[i], normals[i]
        w = np.cross(n, u)
        g = golgi[i] - nuclei[i]
        dist = np.linalg.norm(g)
        for _ in range(30):
            shrink = 1.0
            if dist > 1e-6:
                limit = dist - 0.5  # the Golgi point at least 0.5 µm outside the surface
                ext = _ellipsoid_extent(g / dist, u, w, n, semis[i])
                if ext > limit:
                    shrink = min(shrink, max(limit, 0.1) / ext)
            if tree is not None:
                for dd, j in zip(*tree.query(nuclei[i], k=min(4, len(nuclei)))):
                    if j == i or dd <= 1e-6:
                        continue
                    ext = _ellipsoid_extent((nuclei[j] - nuclei[i]) / dd, u, w, n, semis[i])
                    if ext > 0.56 * dd:  # half the distance, plus a little: touching allowed
                        shrink = min(shrink, 0.56 * dd / ext)
            if shrink >= 0.999:
                break
            new = np.maximum(semis[i] * max(shrink, 0.85), minimum)
            if np.allclose(new, semis[i]):
                break
            semis[i] = new
    return semis


def _plan(nuclei: np.ndarray, golgi: np.ndarray, rng: np.random.Generator, cfg: OutsideConfig,
          axes, normals, semis) -> tuple[list[_Nucleus], list[_Golgi], list]:
    n = len(nuclei)
    edges: list = []
    if axes is None or normals is None:
        axes, normals, edges = _infer_orientation(nuclei, golgi, rng)
    if semis is None:
        lengths = np.clip(rng.lognormal(math.log(11.0), 0.3, n), 5.0, 20.0)
        semis = np.stack([lengths / 2, rng.uniform(1.7, 3.4, n), rng.uniform(0.9, 1.9, n)], axis=1)
    semis = _fit_sizes(nuclei, golgi, np.asarray(axes), np.asarray(normals), np.asarray(semis, dtype=float))
    kinds_g, probs_g = zip(*cfg.golgi_kinds)
    cells_n, cells_g = [], []
    for i in range(n):
        u, nn = np.asarray(axes[i], float), np.asarray(normals[i], float)
        w = np.cross(nn, u)
        r = rng.random()
        kind = "mitotic" if r < cfg.p_mitotic else "dim" if r < cfg.p_mitotic + cfg.p_dim else "normal"
        bright = float(rng.lognormal(0, 0.35)) * (rng.uniform(0.2, 0.45) if kind == "dim" else 1.0)
        coeffs = rng.normal(0, rng.uniform(0.03, 0.1), len(_MONOMIALS))
        nucleus = _Nucleus(
            centre=nuclei[i], u=u, w=w, n=nn, semi=semis[i], power=float(rng.uniform(1.6, 3.2)), coeffs=coeffs,
            bend_wall=float(rng.uniform(0.0, 0.12)) * (1 if rng.random() < 0.7 else 0),
            bend_long=float(rng.normal(0, 0.03)) if rng.random() < 0.3 else 0.0,
            kidney=bool(rng.random() < cfg.p_kidney), kind=kind, brightness=bright)
        if kind == "mitotic":
            nucleus.semi = np.array([0, rng.uniform(3.0, 4.5), 0, ], dtype=float)
            nucleus.semi[2] = rng.uniform(0.7, 1.2)
            nucleus.semi[0] = nucleus.semi[1]
            nucleus.plates = 1 if rng.random() < 0.6 else 2
            nucleus.plate_gap = float(rng.uniform(4.0, 7.0))
            nucleus.brightness *= rng.uniform(1.4, 2.2)
        cells_n.append(nucleus)
        gkind = "dispersed" if kind == "mitotic" else str(rng.choice(kinds_g, p=np.array(probs_g) / sum(probs_g)))
        cells_g.append(_plan_golgi(gkind, golgi[i], nucleus, rng))
    return cells_n, cells_g, edges


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q


def _plan_golgi(kind: str, point: np.ndarray, nucleus: _Nucleus, rng: np.random.Generator,
                brightness: Optional[float] = None) -> _Golgi:
    c = nucleus.centre
    radial = point - c
    dist = float(np.linalg.norm(radial))
    if kind == "cap" and dist < 2.0:
        kind = "blob"
    golgi = _Golgi(kind=kind, point=np.asarray(point, float), nucleus_centre=c,
                   brightness=float(rng.lognormal(0, 0.4)) if brightness is None else brightness)
    r_hat = radial / dist if dist > 1e-6 else _unit(rng.standard_normal(3))
    t1 = _perpendicular(r_hat, rng)
    t2 = np.cross(r_hat, t1)
    if kind == "blob":
        semi = rng.uniform(0.7, 1.7, 3)
        golgi.pieces.append(_Piece(golgi.point, semi, _rotation(rng), rng.normal(0, 0.2, len(_MONOMIALS)), 1.0))
    elif kind == "cap":
        golgi.cap_radius = dist
        golgi.cap_thickness = float(rng.uniform(0.6, 1.4))
        golgi.cap_angle = float(rng.uniform(0.35, 0.9))  # half-angle, rad
        golgi.ribbon_keep = float(rng.uniform(0.6, 0.9))
    elif kind in ("fragmented", "dispersed"):
        count = int(rng.integers(3, 13)) if kind == "fragmented" else int(rng.integers(15, 41))
        spread = float(rng.uniform(1.0, 4.0)) if kind == "fragmented" else float(rng.uniform(2.5, 6.0))
        for _ in range(count):
            # around the perinuclear surface: mostly tangential, a little radial
            off = spread / 2 * (rng.normal() * t1 + rng.normal() * t2) + rng.normal(0, 0.4) * r_hat
            size = rng.uniform(0.35, 0.8, 3) if kind == "fragmented" else rng.uniform(0.25, 0.5, 3)
            golgi.pieces.append(_Piece(golgi.point + off, size, _rotation(rng), np.zeros(len(_MONOMIALS)),
                                       float(rng.uniform(0.5, 1.5))))
        if kind == "dispersed":
            golgi.brightness *= 0.6
    return golgi


# ------------------------------------------------------------------------------------------
# Painting
# ------------------------------------------------------------------------------------------
class _Canvas:
    """Signal (photons, before optics) and labels of both channels, with running mask centroids."""

    def __init__(self, shape: Sequence[int], voxel: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.voxel = voxel
        self.signal = np.zeros((2,) + self.shape, dtype=np.float32)
        self.labels = np.zeros((2,) + self.shape, dtype=np.int32)
        self.sums: dict[tuple[int, int], np.ndarray] = {}

    def claim(self, channel: int, label: int, box: _Box, mask: np.ndarray, values: np.ndarray,
              allow: Optional[np.ndarray] = None) -> int:
        """Paint ``values`` where ``mask`` holds and the voxel is free; record the claimed voxels' centroid."""
        region = self.labels[(channel,) + box.slices]
        claimed = mask & (region == 0)
        if allow is not None:
            claimed &= allow
        count = int(claimed.sum())
        if count:
            region[claimed] = label
            self.signal[(channel,) + box.slices][claimed] += values[claimed] if np.ndim(values) else values
            sz = claimed.sum(axis=(1, 2)) @ box.index[0]
            sy = claimed.sum(axis=(0, 2)) @ box.index[1]
            sx = claimed.sum(axis=(0, 1)) @ box.index[2]
            prev = self.sums.get((channel, label), np.zeros(4))
            self.sums[(channel, label)] = prev + np.array([sz, sy, sx, count], dtype=np.float64)
        return count

    def add(self, channel: int, box: _Box, values: np.ndarray) -> None:
        self.signal[(channel,) + box.slices] += values

    def centroid(self, channel: int, label: int) -> Optional[np.ndarray]:
        s = self.sums.get((channel, label))
        return None if s is None or s[3] == 0 else s[:3] / s[3]


def _paint_nucleus(canvas: _Canvas, nucleus: _Nucleus, label: int, level: float, rng: np.random.Generator) -> None:
    box = _Box(nucleus.centre, nucleus.half_extent(), canvas.voxel, canvas.shape)
    if box.empty:
        return
    inside, depth = nucleus.mask(box)
    if not inside.any():
        return
    voxel = canvas.voxel
    if nucleus.kind == "mitotic":  # condensed chromosome arms: high-frequency rods
        tex = _smooth_noise(rng, box.shape, 0.25, voxel)
        values = np.where(tex > -0.3, 1.0 + 0.4 * tex, 0.3).astype(np.float32)
    else:
        chromatin = _smooth_noise(rng, box.shape, rng.uniform(0.35, 0.7), voxel)
        values = 1.0 + rng.uniform(0.15, 0.35) * chromatin
        # lamina-associated heterochromatin: a brighter rim
        rim_um = depth * float(min(nucleus.semi))
        values += rng.uniform(0.1, 0.4) * np.exp(-rim_um / 0.45)
        # chromocenters (bright DAPI foci of mouse nuclei) and nucleoli (dark holes)
        for _ in range(int(rng.integers(2, 9))):
            spot = _local_point(nucleus, rng, 0.7)
            values += rng.uniform(0.6, 1.8) * np.exp(-_dist2(box, spot) / (2 * rng.uniform(0.3, 0.55) ** 2))
        for _ in range(int(rng.integers(1, 4))):
            hole = _local_point(nucleus, rng, 0.5)
            radius = rng.uniform(0.6, 1.3)
            values *= 1 - rng.uniform(0.5, 0.8) * (np.sqrt(_dist2(box, hole)) < radius)
        values = np.clip(values, 0.05, None).astype(np.float32)
    canvas.claim(0, label, box, inside, values * (level * nucleus.brightness))


def _local_point(nucleus: _Nucleus, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A random point inside the nucleus' unbent ellipsoid, within ``scale`` of its semi-axes."""
    while True:
        p = rng.uniform(-1, 1, 3)
        if p.dot(p) <= 1:
            break
    s = nucleus.semi * scale * p
    return nucleus.centre + s[0] * nucleus.u + s[1] * nucleus.w + s[2] * nucleus.n


def _dist2(box: _Box, point: np.ndarray) -> np.ndarray:
    """Squared distance (µm²) of the box's voxel centres from an absolute point."""
    off = np.asarray(point, dtype=float) - box.centre
    z, y, x = box.dz - off[0], box.dy - off[1], box.dx - off[2]
    return z * z + y * y + x * x


def _paint_golgi(canvas: _Canvas, golgi: _Golgi, label: int, level: float, rng: np.random.Generator) -> None:
    box = _Box(golgi.point, golgi.half_extent(), canvas.voxel, canvas.shape)
    if box.empty:
        return
    voxel = canvas.voxel
    inside = np.zeros(box.shape, dtype=bool)
    values = np.zeros(box.shape, dtype=np.float32)
    if golgi.kind == "cap":
        # a ribbon on a spherical shell around the nucleus centre, within a cone around the Golgi direction
        dz = box.dz + (golgi.point[0] - golgi.nucleus_centre[0])
        dy = box.dy + (golgi.point[1] - golgi.nucleus_centre[1])
        dx = box.dx + (golgi.point[2] - golgi.nucleus_centre[2])
        r = np.sqrt(dz * dz + dy * dy + dx * dx) + 1e-6
        axis = _unit(golgi.point - golgi.nucleus_centre)
        cos = (dz * axis[0] + dy * axis[1] + dx * axis[2]) / r
        shell = np.abs(r - golgi.cap_radius) <= golgi.cap_thickness / 2
        cone = cos >= math.cos(golgi.cap_angle)
        ribbon = _smooth_noise(rng, box.shape, 0.5, voxel)
        keep = ribbon > np.quantile(ribbon, 1 - golgi.ribbon_keep) if ribbon.size > 1 else np.ones(box.shape, bool)
        inside = shell & cone & keep
        if not inside.any():  # too thin for this grid: keep the whole cone of the shell
            inside = shell & cone
        values = (0.8 + 0.25 * ribbon).astype(np.float32)
    else:
        for piece in golgi.pieces:
            offset = piece.centre - golgi.point
            a, b, c = box.local(piece.rot[0], piece.rot[1], piece.rot[2], offset)
            semi = np.maximum(piece.semi, 0.5 * float(voxel.min()))
            an, bn, cn = a / semi[0], b / semi[1], c / semi[2]
            rho = np.sqrt(an * an + bn * bn + cn * cn)
            limit = 1.0 + np.clip(_bumps(piece.coeffs, an, bn, cn), -0.35, 0.35) if piece.coeffs.any() else 1.0
            part = rho <= limit
            inside |= part
            values = np.where(part, np.maximum(values, piece.brightness), values)
        tex = _smooth_noise(rng, box.shape, 0.3, voxel)
        values = values * (0.85 + 0.2 * tex)
    if not inside.any():  # smaller than a voxel here: the voxel nearest the requested point
        near = tuple(int(np.argmin(np.abs(d))) for d in box.d)
        inside[near] = True
        values[near] = max(float(values[near]), 1.0)
    nuclear = canvas.labels[(0,) + box.slices] != 0
    free = inside & ~nuclear
    allow = None if free.sum() < 0.4 * inside.sum() else ~nuclear  # a Golgi over a nucleus in z keeps its overlap
    canvas.claim(1, label, box, inside, np.clip(values, 0.1, None) * (level * golgi.brightness), allow=allow)


def _paint_haze(canvas: _Canvas, nucleus: _Nucleus, golgi: _Golgi, level: float, rng: np.random.Generator) -> None:
    """Golgi-marker haze in the perinuclear cytoplasm, strongest on the Golgi side."""
    box = _Box(nucleus.centre, nucleus.half_extent(pad=4.0), canvas.voxel, canvas.shape)
    if box.empty:
        return
    a, b, c = box.local(nucleus.u, nucleus.w, nucleus.n)
    rho = np.sqrt((a / nucleus.semi[0]) ** 2 + (b / nucleus.semi[1]) ** 2 + (c / nucleus.semi[2]) ** 2)
    outside_um = np.maximum(rho - 1, 0) * float(nucleus.semi.mean())
    d = _unit(golgi.point - nucleus.centre)
    r = np.sqrt(box.dz ** 2 + box.dy ** 2 + box.dx ** 2) + 1e-6
    cos = (box.dz * d[0] + box.dy * d[1] + box.dx * d[2]) / r
    side = 0.35 + 0.65 * np.clip(cos, 0, 1) ** 2
    haze = np.exp(-outside_um / rng.uniform(1.0, 2.2)) * side * (rho > 0.95)
    haze *= 1 + 0.3 * _smooth_noise(rng, box.shape, 0.6, canvas.voxel)
    canvas.add(1, box, np.clip(haze, 0, None).astype(np.float32) * level)


def _paint_tube(canvas: _Canvas, a: np.ndarray, b: np.ndarray, radius: float, levels: Sequence[float],
                rng: np.random.Generator) -> None:
    """A vessel wall (hollow cylinder) between points a and b; maximum with what is there (segments overlap)."""
    centre = (a + b) / 2
    half = np.abs(b - a) / 2 + radius + 1.5
    box = _Box(centre, half, canvas.voxel, canvas.shape)
    if box.empty:
        return
    ab = b - a
    length2 = float(ab.dot(ab)) or 1e-6
    pz, py, px = box.dz + (centre[0] - a[0]), box.dy + (centre[1] - a[1]), box.dx + (centre[2] - a[2])
    t = np.clip((pz * ab[0] + py * ab[1] + px * ab[2]) / length2, 0, 1)
    dist = np.sqrt((pz - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (px - t * ab[2]) ** 2)
    wall = np.exp(-((dist - radius) / 0.45) ** 2).astype(np.float32)
    for ch, level in enumerate(levels):
        if level > 0:
            region = canvas.signal[(ch,) + box.slices]
            np.maximum(region, wall * level, out=region)


def _paint_blob(canvas: _Canvas, centre: np.ndarray, semi: np.ndarray, levels: Sequence[float],
                rot: Optional[np.ndarray] = None, profile: str = "flat") -> None:
    """An ellipsoid (debris, red blood cell, punctum) added to the signal of both channels."""
    box = _Box(centre, np.full(3, float(np.max(semi)) + 1.0), canvas.voxel, canvas.shape)
    if box.empty:
        return
    rot = np.eye(3) if rot is None else rot
    a, b, c = box.local(rot[0], rot[1], rot[2])
    semi = np.maximum(semi, 0.5 * canvas.voxel.min())
    if profile == "disc":  # biconcave red blood cell: thinner in the middle
        rr = np.sqrt(a * a + b * b) / semi[0]
        inside = (rr <= 1) & (np.abs(c) <= semi[2] * (0.45 + 0.55 * np.clip(rr, 0, 1) ** 2 + 0.05))
    else:
        inside = (a / semi[0]) ** 2 + (b / semi[1]) ** 2 + (c / semi[2]) ** 2 <= 1
    for ch, level in enumerate(levels):
        if level > 0:
            canvas.add(ch, box, inside.astype(np.float32) * level)


# ------------------------------------------------------------------------------------------
# Optics and camera
# ------------------------------------------------------------------------------------------
def psf_kernel(voxel: Sequence[float], p: dict[str, float], scale: float = 1.0, xy_half_um: float = 3.0,
               z_half_um: float = 5.0) -> np.ndarray:
    """Axially asymmetric, long-tailed PSF on the voxel grid (sums to 1).

    A mix of (1) an hourglass core whose lateral width grows with defocus and whose axial width differs above
    and below focus, (2) a widefield-like tail: per-plane weight ``1/(1 + (z/γ)²)`` spreading laterally in a
    cone, and (3) an in-plane Cauchy halo (scatter) with a broad axial envelope.
    """
    vz, vy, vx = (float(v) for v in voxel)
    hz, hy, hx = int(math.ceil(z_half_um / vz)), int(math.ceil(xy_half_um / vy)), int(math.ceil(xy_half_um / vx))
    z = (np.arange(-hz, hz + 1) * vz)[:, None, None]
    r2 = (np.arange(-hy, hy + 1) * vy)[None, :, None] ** 2 + (np.arange(-hx, hx + 1) * vx)[None, None, :] ** 2
    sxy, sz = p["sigma_xy"] * scale, p["sigma_z"] * scale
    sz_side = np.where(z > 0, sz * p["z_asymmetry"], sz)

    def plane_gauss(width):
        g = np.exp(-r2 / (2 * width ** 2))
        return g / g.sum(axis=(1, 2), keepdims=True)

    core = plane_gauss(sxy * np.sqrt(1 + (z / p["rayleigh_z"]) ** 2)) * np.exp(-z ** 2 / (2 * sz_side ** 2))
    gamma = np.where(z > 0, p["tail_gamma_z"] * p["z_asymmetry"], p["tail_gamma_z"])
    tail = plane_gauss(np.sqrt((sxy * 1.5) ** 2 + (np.abs(z) * p["tail_cone"]) ** 2)) / (1 + (z / gamma) ** 2)
    cauchy = (1 + r2 / (p["halo_gamma_xy"] * scale) ** 2) ** -1.5
    halo = cauchy / cauchy.sum(axis=(1, 2), keepdims=True) * np.exp(-z ** 2 / (2 * (2.5 * sz_side) ** 2))
    kernel = ((1 - p["tail_weight"] - p["halo_weight"]) * core / core.sum() + p["tail_weight"] * tail / tail.sum()
              + p["halo_weight"] * halo / halo.sum())
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(volume: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve with ``kernel`` (same shape out), light from beyond the border approximated by reflection.

    The volume is padded by half the kernel (reflecting) and convolved circularly on that padded grid, which
    never wraps into the part kept.
    """
    from scipy import fft

    half = [k // 2 for k in kernel.shape]
    pads = [min(h, s - 1) for h, s in zip(half, volume.shape)]
    padded = np.pad(volume, [(p, p) for p in pads], mode="reflect")
    size = [fft.next_fast_len(max(s, k), real=True) for s, k in zip(padded.shape, kernel.shape)]
    psf = np.zeros(size, dtype=np.float32)
    psf[tuple(slice(0, k) for k in kernel.shape)] = kernel
    psf = np.roll(psf, [-h for h in half], axis=(0, 1, 2))  # kernel centre at the origin
    with fft.set_workers(2):
        spectrum = fft.rfftn(padded, s=size)
        spectrum *= fft.rfftn(psf)
        del psf
        out = fft.irfftn(spectrum, s=size)
    crop = tuple(slice(p, p + s) for p, s in zip(pads, volume.shape))
    return np.clip(out[crop], 0, None).astype(np.float32)


def _background(rng: np.random.Generator, shape: Sequence[int], voxel: np.ndarray, shares: Sequence[float]) -> list:
    """Autofluorescent tissue texture per channel (mean 1): lognormal random fields at two scales on a 1 µm grid,
    a texture shared by the channels (``shares``) plus one of each channel's own."""
    coarse_voxel = np.array([max(1.0, voxel[0]), 1.0, 1.0])
    extent = np.asarray(shape) * voxel
    coarse = np.maximum(2, np.ceil(extent / coarse_voxel).astype(int))

    def texture():
        t = 0.7 * _smooth_noise(rng, coarse, 5.0, coarse_voxel) + 0.5 * _smooth_noise(rng, coarse, 1.2, coarse_voxel)
        t = np.exp(0.5 * t)
        return t / t.mean()

    shared = texture()
    fields = []
    for share in shares:
        t = (share * shared + (1 - share) * texture()).astype(np.float32)
        out = ndimage.zoom(t, [s / c for s, c in zip(shape, coarse)], order=1, grid_mode=True, mode="nearest")
        out = out[tuple(slice(0, s) for s in shape)]
        if out.shape != tuple(shape):
            out = np.pad(out, [(0, s - o) for s, o in zip(shape, out.shape)], mode="edge")
        fields.append(out)
    return fields


def _camera(rng: np.random.Generator, photons: np.ndarray, cfg: OutsideConfig, p: dict[str, float],
            adu_per_e: float) -> np.ndarray:
    """Digitise photon rates ``(C, Z, Y, X)``: Poisson plus the configuration's camera, clipped to its range."""
    top = float(2 ** cfg.bits - 1)
    shape_yx = photons.shape[2:]
    electrons = rng.poisson(photons).astype(np.float32)
    if cfg.camera == "scmos":
        offset = 100.0 + rng.normal(0, 3.0, shape_yx) + rng.normal(0, 2.0, shape_yx[1])[None, :]  # pixel + column
        gain = adu_per_e * (1 + rng.normal(0, 0.03, shape_yx))
        read = p["read_noise"] * rng.lognormal(0, 0.35, shape_yx)
        rts = rng.random(shape_yx) < 0.005
        read[rts] *= rng.uniform(3, 8, int(rts.sum()))
        hy, hx = np.nonzero(rng.random(shape_yx) < p["hot_fraction"])  # hot pixels: dark current, every slice
        if len(hy):
            dark = rng.uniform(30, 1500, len(hy))
            electrons[:, :, hy, hx] += rng.poisson(dark, photons.shape[:2] + (len(hy),)).astype(np.float32)
        electrons += rng.standard_normal(photons.shape, dtype=np.float32) * read.astype(np.float32)
        adu = offset.astype(np.float32) + gain.astype(np.float32) * electrons
    else:  # EMCCD: clock-induced charge, Gamma-distributed EM gain (excess noise factor √2), read noise
        electrons += rng.poisson(p["cic"], photons.shape).astype(np.float32)
        amplified = rng.gamma(np.maximum(electrons, 1e-9), p["em_gain"]).astype(np.float32)
        amplified[electrons == 0] = 0
        sensitivity = p["em_gain"] / adu_per_e  # e- after gain per ADU
        offset = 100.0 + rng.normal(0, 1.0, shape_yx)
        adu = offset.astype(np.float32) + amplified / sensitivity \
            + rng.standard_normal(photons.shape, dtype=np.float32) * p["read_noise"]
    return np.clip(np.rint(adu), 0, top).astype(np.uint16)


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------
def field_shape(field_um: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """Voxels ``(Z, Y, X)`` of a field: ``round(extent / voxel)``, at least 1."""
    return tuple(max(1, int(round(float(f) / float(v)))) for f, v in zip(field_um, voxel_size))


def render(nuclei_um: np.ndarray, golgi_um: np.ndarray, field_um: Sequence[float], voxel_size: Sequence[float],
           seed: int, config: Union[str, OutsideConfig] = "validation", *, vessels: Optional[list] = None,
           axes: Optional[np.ndarray] = None, normals: Optional[np.ndarray] = None,
           semi_axes: Optional[np.ndarray] = None, return_labels: bool = False):
    """Render cells at the requested centres into a two-channel uint16 volume with ground-truth vectors.

    Parameters
    ----------
    nuclei_um, golgi_um : array_like, shape (N, 3)
        Requested nucleus and Golgi centres ``(z, y, x)`` in µm from the field's corner (voxel ``i`` has its
        centre at ``i · voxel``).
    field_um : sequence of 3 float
        ``(Z, Y, X)`` extent in µm; the volume has :func:`field_shape` voxels.
    voxel_size : sequence of 3 float
        ``(z, y, x)`` µm.
    seed : int
        Everything random (shapes, microscope draw, noise) follows from it and the configuration.
    config : str or OutsideConfig
        ``"validation"`` or ``"ship"`` (:data:`CONFIGS`), or a modified :class:`OutsideConfig`.
    vessels, axes, normals, semi_axes : optional
        Hints from :func:`random_layout` (:meth:`Layout.hints`); inferred from the points when absent.
    return_labels : bool
        Also return the ground-truth label volumes.

    Returns
    -------
    volume : Volume
        ``(2, Z, Y, X)`` uint16, channel 0 nuclei, channel 1 Golgi.
    pairs : PairSet
        One pair per requested cell whose nucleus and Golgi both have rendered voxels: the centroids of the
        rendered masks in voxels, ``ids`` = the cell's index in the request, source ``simulated``.
    labels : ndarray, shape (2, Z, Y, X), int32
        Only with ``return_labels``: ``id + 1`` on each annotated cell's nucleus (channel 0) and Golgi
        (channel 1) mask, 0 elsewhere (also on unannotated objects).
    """
    cfg = get_config(config)
    voxel = np.asarray([float(v) for v in voxel_size])
    field_um = tuple(float(f) for f in field_um)
    shape = field_shape(field_um, voxel)
    rng = np.random.default_rng([int(seed), cfg.stream])
    p = _draw(rng, cfg)
    nuclei = np.asarray(nuclei_um, dtype=float).reshape(-1, 3)
    golgi = np.asarray(golgi_um, dtype=float).reshape(-1, 3)
    n = len(nuclei)
    area_share = field_um[1] * field_um[2] / FIELD_AREA_UM2

    cells_n, cells_g, edges = _plan(nuclei, golgi, rng, cfg, axes, normals, semi_axes)
    if vessels is None:  # tubes along the guessed plexus, below the nuclei they join
        vessels = []
        for i, j in edges:
            r = float(rng.uniform(2.0, 3.5))
            a = nuclei[i] - cells_n[i].n * r
            b = nuclei[j] - cells_n[j].n * r
            vessels.append((np.array([a, b]), r))

    canvas = _Canvas(shape, voxel)
    nuc_level, golgi_level = p["nucleus_photons"], p["golgi_photons"]
    for i, nucleus in enumerate(cells_n):  # annotated endothelial cells first: they claim their voxels
        _paint_nucleus(canvas, nucleus, i + 1, nuc_level, rng)

    # non-endothelial nuclei, never annotated: pericytes on the vessels and cells of other layers
    extra_n, extra_g = [], []
    seg_list = [(a, b, r) for path, r in vessels for a, b in zip(path[:-1], path[1:])
                if 0 <= (a[1] + b[1]) / 2 <= field_um[1] and 0 <= (a[2] + b[2]) / 2 <= field_um[2]]
    n_peri = int(round(rng.uniform(*cfg.pericyte_fraction) * max(n, 1))) if seg_list else 0
    for _ in range(n_peri):
        a, b, r = seg_list[int(rng.integers(len(seg_list)))]
        u = _unit(b - a)
        nn = _perpendicular(u, rng)
        centre = a + rng.random() * (b - a) + (r + 0.8) * nn
        semi = np.array([rng.uniform(4.0, 7.0), rng.uniform(1.2, 2.2), rng.uniform(0.7, 1.2)])
        extra_n.append(_Nucleus(centre, u, np.cross(nn, u), nn, semi, 2.0, rng.normal(0, 0.05, len(_MONOMIALS)),
                                0.08, 0.0, False, "normal", float(rng.uniform(0.5, 1.1))))
    for _ in range(int(round(rng.uniform(*cfg.other_layer_per_field) * area_share))):
        top = rng.random() < 0.5
        z = rng.uniform(-2.0, 2.5) if top else field_um[0] - rng.uniform(-2.0, 2.5)
        centre = np.array([z, rng.uniform(0, field_um[1]), rng.uniform(0, field_um[2])])
        u = _unit(np.array([rng.normal(0, 0.3), *rng.standard_normal(2)]))
        nn = _unit(np.array([1.0, 0, 0]) - u[0] * u)
        semi = np.array([rng.uniform(2.8, 4.5), rng.uniform(2.5, 3.8), rng.uniform(2.0, 3.0)])
        extra_n.append(_Nucleus(centre, u, np.cross(nn, u), nn, semi, float(rng.uniform(1.8, 2.4)),
                                rng.normal(0, 0.06, len(_MONOMIALS)), 0.0, 0.0, False, "normal",
                                float(rng.uniform(0.2, 0.7))))
    for k, nucleus in enumerate(extra_n):
        _paint_nucleus(canvas, nucleus, n + 1 + k, nuc_level, rng)
        if rng.random() < 0.5:  # their Golgi are stained too
            d = _unit(rng.standard_normal(3) * np.array([0.5, 1, 1]))
            dist = _ellipsoid_extent(d, nucleus.u, nucleus.w, nucleus.n, nucleus.semi) + rng.uniform(0.5, 1.5)
            kind = "blob" if rng.random() < 0.6 else "fragmented"
            extra_g.append(_plan_golgi(kind, nucleus.centre + dist * d, nucleus, rng, float(rng.uniform(0.3, 0.8))))

    for i, g in enumerate(cells_g):
        _paint_golgi(canvas, g, i + 1, golgi_level, rng)
    for k, g in enumerate(extra_g):
        _paint_golgi(canvas, g, n + 1 + k, golgi_level, rng)
    for nucleus, g in zip(cells_n, cells_g):
        _paint_haze(canvas, nucleus, g, p["haze_golgi"] * golgi_level * rng.uniform(0.5, 1.5), rng)

    # vessel walls (Golgi channel, faint in the nuclear one) with puncta; red blood cells in the lumen
    wall = p["vessel_golgi"] * golgi_level
    for path, r in vessels:
        for a, b in zip(path[:-1], path[1:]):
            _paint_tube(canvas, a, b, r, (0.02 * nuc_level, wall * rng.uniform(0.6, 1.4)), rng)
            for _ in range(rng.poisson(np.linalg.norm(b - a) / 5.0)):
                t = rng.random()
                spot = a + t * (b - a) + r * _perpendicular(_unit(b - a), rng)
                _paint_blob(canvas, spot, rng.uniform(0.25, 0.5, 3), (0, golgi_level * rng.uniform(0.3, 1.0)))
    if seg_list:
        for _ in range(int(round(rng.uniform(*cfg.rbc_per_field) * area_share))):
            a, b, r = seg_list[int(rng.integers(len(seg_list)))]
            centre = a + rng.random() * (b - a)
            _paint_blob(canvas, centre, np.array([3.2, 3.2, 1.0]) * rng.uniform(0.85, 1.1),
                        (nuc_level * rng.uniform(0.03, 0.08), golgi_level * rng.uniform(0.05, 0.15)),
                        rot=_rotation(rng), profile="disc")
    for _ in range(int(round(rng.uniform(*cfg.debris_per_field) * area_share))):  # debris: both channels
        centre = np.array([rng.uniform(0, field_um[0]), rng.uniform(0, field_um[1]), rng.uniform(0, field_um[2])])
        levels = (nuc_level * rng.uniform(0.3, 4.0) * (rng.random() < 0.8), golgi_level * rng.uniform(0.3, 4.0))
        for _ in range(int(rng.integers(2, 5))):
            _paint_blob(canvas, centre + rng.normal(0, 0.8, 3), rng.uniform(0.4, 1.5, 3), levels, rot=_rotation(rng))

    # optics: depth attenuation, PSF, bright sub-resolution specks (point sources)
    z_um = np.arange(shape[0]) * voxel[0]
    depth = z_um if rng.random() < 0.5 else z_um[-1] - z_um
    attenuation = np.exp(-depth / p["depth_length"]).astype(np.float32)[:, None, None]
    canvas.signal *= attenuation[None]
    kernels = [psf_kernel(voxel, p, 1.0), psf_kernel(voxel, p, p["golgi_psf_scale"])]
    for _ in range(int(round(rng.uniform(*cfg.specks_per_field) * area_share))):
        ch = 1 if rng.random() < 0.7 else 0
        idx = tuple(int(rng.integers(s)) for s in shape)
        peak = (golgi_level if ch else nuc_level) * rng.uniform(0.5, 3.0)
        canvas.signal[(ch,) + idx] += peak / float(kernels[ch].max())
    blurred = np.stack([_blur(canvas.signal[c], kernels[c]) for c in range(2)])
    labels = canvas.labels
    del canvas.signal

    # tissue autofluorescence (shared texture plus a channel-specific one), bleed-through both ways
    for c, (level, texture) in enumerate(zip((p["autofluor_nucleus"] * nuc_level, p["autofluor_golgi"] * golgi_level),
                                            _background(rng, shape, voxel, (0.6, 0.6)))):
        blurred[c] += level * texture * attenuation
    n_to_g, g_to_n = p["bleed_nucleus_to_golgi"], p["bleed_golgi_to_nucleus"]
    nucleus_ch = blurred[0] + g_to_n * blurred[1]
    blurred[1] += n_to_g * blurred[0]
    blurred[0] = nucleus_ch
    del nucleus_ch

    # illumination: vignetting, gradient, row flicker (laser / scan)
    yy = (np.arange(shape[1]) * voxel[1] / max(field_um[1], 1e-6) - rng.uniform(0.35, 0.65))[:, None]
    xx = (np.arange(shape[2]) * voxel[2] / max(field_um[2], 1e-6) - rng.uniform(0.35, 0.65))[None, :]
    angle = rng.uniform(0, 2 * math.pi)
    illum = (1 - p["vignetting"] * 2 * (yy ** 2 + xx ** 2)) * (1 + p["gradient"] * (math.cos(angle) * yy + math.sin(angle) * xx))
    rows = 1 + p["row_flicker"] * rng.standard_normal((2, shape[0], shape[1], 1))
    drop = rng.random((2, shape[0], shape[1], 1)) < 0.002
    rows[drop] *= rng.uniform(0.4, 1.6, int(drop.sum()))
    blurred *= np.clip(illum, 0.2, None).astype(np.float32)[None, None]
    blurred *= np.clip(rows, 0.1, None).astype(np.float32)

    # the camera's gain, or (EMCCD) the user's: the mean nucleus fills cfg.fill of the range; bright things saturate
    if cfg.adu_per_e[1] > 0:
        adu_per_e = p["adu_per_e"]
    else:
        adu_per_e = float(rng.uniform(*cfg.fill) * (2 ** cfg.bits - 1) / nuc_level)
    data = _camera(rng, blurred, cfg, p, adu_per_e)
    del blurred

    kept, n_pts, g_pts = [], [], []
    for i in range(n):
        cn, cg = canvas.centroid(0, i + 1), canvas.centroid(1, i + 1)
        if cn is not None and cg is not None:
            kept.append(i)
            n_pts.append(cn)
            g_pts.append(cg)
    meta = {"generator": GENERATOR, "config": cfg.name, "seed": int(seed), "field_um": list(field_um),
            "requested": int(n)}
    pairs = PairSet(np.array(n_pts).reshape(-1, 3), np.array(g_pts).reshape(-1, 3), voxel_size=tuple(voxel),
                    ids=np.array(kept, dtype=np.int64), sources="simulated", meta=meta)
    params = {k: round(v, 6) for k, v in p.items()}
    volume = Volume(data, tuple(voxel), channel_names=("nucleus", "golgi"), nucleus_channel=0, golgi_channel=1,
                    metadata={"generator": GENERATOR, "config": {"name": cfg.name, "seed": int(seed),
                                                                  "field_um": list(field_um), "camera": cfg.camera,
                                                                  "bits": cfg.bits, "params": params,
                                                                  "golgi_kinds": [g.kind for g in cells_g]}})
    if return_labels:
        lut = np.zeros(max(int(labels.max()), n) + 1, dtype=np.int32)  # only the annotated (kept) cells
        lut[np.array(kept, dtype=int) + 1] = np.array(kept, dtype=np.int32) + 1
        labels = lut[labels]
        return volume, pairs, labels
    return volume, pairs


# ------------------------------------------------------------------------------------------
# Collections of volumes
# ------------------------------------------------------------------------------------------
def outside_volumes(n: int, config: Union[str, OutsideConfig] = "validation", seed: Optional[int] = None,
                    voxel_xy: Sequence[float] = (0.333, 0.666), field_xy_um: float = 160.0,
                    field_z_um: Range = (14.0, 24.0), voxel_z: Range = (0.3, 1.0)) -> Iterator[tuple[Volume, PairSet]]:
    """``n`` volumes of random retina-like layouts (:func:`random_layout`).

    Volume ``k`` uses seed ``seed + k`` (default seed: the configuration's ``seed_base``), x/y voxel
    ``voxel_xy[k % len(voxel_xy)]``, z voxel and z field drawn from ``voxel_z`` and ``field_z_um``.
    """
    cfg = get_config(config)
    base = cfg.seed_base if seed is None else int(seed)
    for k in range(int(n)):
        rng = np.random.default_rng([base + k, cfg.stream, 7])
        vxy = float(voxel_xy[k % len(voxel_xy)])
        vz = float(rng.uniform(*voxel_z))
        field_um = (float(rng.uniform(*field_z_um)), float(field_xy_um), float(field_xy_um))
        layout = random_layout(rng, field_um)
        volume, pairs = render(layout.nuclei_um, layout.golgi_um, field_um, (vz, vxy, vxy), base + k, cfg,
                               **layout.hints())
        pairs.meta["image"] = f"outside_{cfg.name}_{base + k}"
        yield volume, pairs


def layout_volumes(layouts: Union[str, Path, Iterable], config: Union[str, OutsideConfig] = "validation",
                   seed: Optional[int] = None, limit: Optional[int] = None,
                   voxel_xy: Optional[float] = None) -> Iterator[tuple[Volume, PairSet]]:
    """Volumes of REAL annotated layouts (testing only, never training), tiled as ``benchmarks/accuracy.py``.

    Parameters
    ----------
    layouts : path or iterable
        A folder of ``Crop*.csv`` (read and tiled with ``accuracy.crop_layouts`` at each crop's voxel size), or
        PairSets (with voxel sizes), or ``(nuclei_um, golgi_um)`` tuples.
    config : str or OutsideConfig
    seed : int, optional
        Base seed (default ``seed_base + LAYOUT_SEED_OFFSET``); crop ``k`` tile ``t`` uses ``seed + 100·k + t``.
    limit : int, optional
        The first ``limit`` crops only.
    voxel_xy : float, optional
        Render at this x/y voxel (e.g. 0.666) instead of the crop's own; z keeps the crop's.
    """
    from benchmarks import accuracy

    cfg = get_config(config)
    base = cfg.seed_base + LAYOUT_SEED_OFFSET if seed is None else int(seed)
    items: list[tuple[str, tuple[float, float, float], list]] = []
    if isinstance(layouts, (str, Path)):
        files = sorted(Path(layouts).glob("Crop*.csv"))
        if not files:
            raise ValueError(f"No Crop*.csv files in {layouts}.")
        from app.core.pairs import read_legacy_csv

        for path in files[:limit]:
            voxel = tuple(accuracy.CROP_VOXEL_SIZE_BY_NAME.get(path.stem, accuracy.CROP_VOXEL_SIZE))
            pairs = read_legacy_csv(path, one_based=True, voxel_size=voxel)
            items.append((path.stem, voxel, accuracy.crop_layouts(pairs)))
    else:
        for k, item in enumerate(list(layouts)[:limit]):
            if isinstance(item, PairSet):
                items.append((str(item.meta.get("image", f"layout{k}")), tuple(item.voxel_size),
                              accuracy.crop_layouts(item)))
            else:
                items.append((f"layout{k}", tuple(accuracy.CROP_VOXEL_SIZE), [tuple(np.asarray(a, float) for a in item)]))
    margin = np.asarray(accuracy.LAYOUT_MARGIN_UM)
    for k, (stem, voxel, tiles) in enumerate(items):
        voxel = np.asarray(voxel, float)
        if voxel_xy is not None:
            voxel = np.array([voxel[0], voxel_xy, voxel_xy])
        for t, (nuclei, golgi) in enumerate(tiles):
            points = np.concatenate([nuclei, golgi])
            origin = points.min(axis=0) - margin
            shape = np.ceil((points.max(axis=0) + margin - origin) / voxel) + 1
            field_um = tuple(float(s * v) for s, v in zip(shape, voxel))
            volume, gt = render(nuclei - origin, golgi - origin, field_um, tuple(voxel), base + 100 * k + t, cfg)
            gt.meta["image"] = f"{stem}#{t}"
            yield volume, gt


# ------------------------------------------------------------------------------------------
# Writing a folder that `cellpol train --images` and `cellpol evaluate` read
# ------------------------------------------------------------------------------------------
def write_item(out: Path, stem: str, volume: Volume, pairs: PairSet, index: int) -> Path:
    """``<stem>.tif`` (ImageJ ZCYX with voxel size) and ``<stem>.vectors.csv`` + sidecar; the TIFF path."""
    from app.core.imageio import write_imagej_tiff
    from app.core.pairs import write_pairs

    tif = write_imagej_tiff(Path(out) / f"{stem}.tif", volume)
    write_pairs(Path(out) / f"{stem}.vectors.csv", pairs, content="ground-truth",
                provenance={"image": tif.name, "image_shape_zyx": list(volume.spatial_shape), "generator": GENERATOR,
                            "config": volume.metadata["config"], "index": int(index),
                            "source_layout": pairs.meta.get("image")})
    return tif


def write_folder(out: Union[str, Path], items: Iterable[tuple[Volume, PairSet]], prefix: str = "outside") -> list[Path]:
    """Write every (volume, pairs) of ``items`` as ``<prefix>_kkkk.tif`` plus vectors; the TIFF paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_item(out, f"{prefix}_{k:04d}", volume, pairs, k) for k, (volume, pairs) in enumerate(items)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default="validation", choices=sorted(CONFIGS))
    parser.add_argument("--n", type=int, default=8, help="random volumes (ignored with --layouts)")
    parser.add_argument("--layouts", default=None, metavar="DIR", help="render the real Crop*.csv layouts in DIR")
    parser.add_argument("--limit", type=int, default=None, help="with --layouts: the first K crops only")
    parser.add_argument("--voxel-xy", type=float, default=None,
                        help="with --layouts: this x/y voxel (µm) instead of the crops' own; else the random "
                             "volumes' x/y voxel (default: 0.333 and 0.666 alternating)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: the configuration's)")
    parser.add_argument("--field", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                        help="random volumes' field in µm (default: 14–24 × 160 × 160)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.layouts:
        items = layout_volumes(args.layouts, args.config, args.seed, args.limit, args.voxel_xy)
    else:
        kwargs: dict[str, Any] = {}
        if args.field:
            kwargs = {"field_xy_um": args.field[1], "field_z_um": (args.field[0], args.field[0])}
            if args.field[1] != args.field[2]:
                parser.error("--field: Y and X must be equal")
        if args.voxel_xy:
            kwargs["voxel_xy"] = (args.voxel_xy,)
        items = outside_volumes(args.n, args.config, args.seed, **kwargs)
    paths = write_folder(args.out, items)
    print(f"Wrote {len(paths)} volumes ({args.config}) with ground-truth vectors to {args.out} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
