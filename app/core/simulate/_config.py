"""What the simulator makes: microscope presets, the sample variation ranges and :class:`SimConfig`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.simulate._shapes import SHAPES_VOXEL_SIZE_3DNGMIC
from app.core.volume import parse_voxel_size

#: Longest nucleus→Golgi distance (µm) a simulated pair may have (the paper's pairing limit).
MAX_PAIR_LENGTH_UM = 14.0


@dataclass(frozen=True)
class Preset:
    """Microscope and sample parameters a :class:`SimConfig` takes unless it overrides them.

    Parameters
    ----------
    description : str
        One line for menus and ``cellpol synth --list-presets``.
    voxel_size : tuple of float
        Default ``(z, y, x)`` in µm.
    psf_sigma_um : tuple of float
        Gaussian PSF sigma ``(z, y, x)`` in µm (anisotropic: z is 2–3× x/y for a confocal).
    haze : float
        Out-of-focus / scattered light, as a fraction of the in-focus signal spread by ``haze_sigma_um``.
    haze_sigma_um : tuple of float
        Sigma ``(z, y, x)`` µm of the haze.
    density_per_100um2 : float
        Cells per 100 µm² of the field (real annotated retina crops: about 0.12–0.32).
    nucleus_overlap : float
        How far neighbouring nuclei may overlap, as a fraction of the sum of their radii along the line
        joining them (0 = they may at most touch; negative values keep a gap of that fraction).
    dim_fraction : float
        Fraction of cells at 20–40 % brightness.
    vessels_per_10000um2, dirt_per_10000um2 : float
        Vessel-like tubes and bright specks in the Golgi channel per 10 000 µm² of field.
    fragments_per_cell : float
        Unpaired nuclear fragments / mitotic dots in the nucleus channel, per cell.
    cytoplasm_level : float
        Faint diffuse Golgi-marker signal in each cell's cytoplasm, relative to the Golgi's brightness.
    photons_nucleus, photons_golgi : float
        Photons per voxel at a typical nucleus / Golgi (before blur).
    photons_background : float
        Mean background photons per voxel.
    illumination_variation : float
        Depth of the smooth multiplicative illumination field (0 = flat).
    depth_attenuation_um : float
        1/e depth (µm) of signal loss along z; 0 = none (widefield images the thin layer evenly).
    layer_undulation_um : float
        Amplitude of the smooth up-and-down of the cell layer in z.
    read_noise_e, gain_adu_per_e, offset_adu : float
        Camera model: ADU = gain · photo-electrons + N(0, read noise) · gain + offset.
    """

    description: str
    voxel_size: tuple[float, float, float]
    psf_sigma_um: tuple[float, float, float]
    haze: float
    haze_sigma_um: tuple[float, float, float]
    density_per_100um2: float
    nucleus_overlap: float
    dim_fraction: float
    vessels_per_10000um2: float
    dirt_per_10000um2: float
    fragments_per_cell: float
    cytoplasm_level: float
    photons_nucleus: float
    photons_golgi: float
    photons_background: float
    illumination_variation: float
    depth_attenuation_um: float
    layer_undulation_um: float
    read_noise_e: float
    gain_adu_per_e: float
    offset_adu: float


PRESETS: dict[str, Preset] = {
    "confocal": Preset(
        description="point-scanning confocal, 63x oil: anisotropic PSF, good signal",
        voxel_size=(0.4, 0.333, 0.333),
        psf_sigma_um=(0.55, 0.2, 0.2),
        haze=0.06,
        haze_sigma_um=(3.0, 3.0, 3.0),
        density_per_100um2=0.25,
        nucleus_overlap=0.1,
        dim_fraction=0.12,
        vessels_per_10000um2=1.5,
        dirt_per_10000um2=4.0,
        fragments_per_cell=0.04,
        cytoplasm_level=0.04,
        photons_nucleus=110.0,
        photons_golgi=170.0,
        photons_background=3.0,
        illumination_variation=0.3,
        depth_attenuation_um=80.0,
        layer_undulation_um=1.5,
        read_noise_e=1.5,
        gain_adu_per_e=8.0,
        offset_adu=100.0,
    ),
    "confocal-low-snr": Preset(
        description="confocal with few photons (fast scan / weak stain): noisy, dim",
        voxel_size=(0.4, 0.333, 0.333),
        psf_sigma_um=(0.6, 0.22, 0.22),
        haze=0.08,
        haze_sigma_um=(3.0, 3.0, 3.0),
        density_per_100um2=0.25,
        nucleus_overlap=0.1,
        dim_fraction=0.2,
        vessels_per_10000um2=1.5,
        dirt_per_10000um2=4.0,
        fragments_per_cell=0.04,
        cytoplasm_level=0.05,
        photons_nucleus=14.0,
        photons_golgi=22.0,
        photons_background=2.0,
        illumination_variation=0.35,
        depth_attenuation_um=60.0,
        layer_undulation_um=1.5,
        read_noise_e=2.5,
        gain_adu_per_e=12.0,
        offset_adu=100.0,
    ),
    "widefield": Preset(
        description="widefield epifluorescence, sCMOS: broader PSF and out-of-focus haze",
        voxel_size=(0.5, 0.325, 0.325),
        psf_sigma_um=(1.1, 0.3, 0.3),
        haze=0.45,
        haze_sigma_um=(4.0, 2.5, 2.5),
        density_per_100um2=0.25,
        nucleus_overlap=0.1,
        dim_fraction=0.12,
        vessels_per_10000um2=1.0,
        dirt_per_10000um2=3.0,
        fragments_per_cell=0.04,
        cytoplasm_level=0.06,
        photons_nucleus=350.0,
        photons_golgi=450.0,
        photons_background=30.0,
        illumination_variation=0.4,
        depth_attenuation_um=0.0,
        layer_undulation_um=1.0,
        read_noise_e=1.6,
        gain_adu_per_e=2.0,
        offset_adu=100.0,
    ),
    "retina": Preset(
        description="whole-mount mouse retina vasculature, confocal: crowded, vessels, 0.333x0.333x0.27 um",
        voxel_size=(0.27, 0.333, 0.333),
        psf_sigma_um=(0.6, 0.2, 0.2),
        haze=0.1,
        haze_sigma_um=(3.0, 3.0, 3.0),
        density_per_100um2=0.35,
        nucleus_overlap=0.2,
        dim_fraction=0.15,
        vessels_per_10000um2=4.0,
        dirt_per_10000um2=6.0,
        fragments_per_cell=0.06,
        cytoplasm_level=0.03,
        photons_nucleus=90.0,
        photons_golgi=140.0,
        photons_background=4.0,
        illumination_variation=0.35,
        depth_attenuation_um=50.0,
        layer_undulation_um=3.0,
        read_noise_e=1.5,
        gain_adu_per_e=8.0,
        offset_adu=100.0,
    ),
}

#: Ranges (uniform) of the sample a varied scene draws from: sparse to crowded layers, clean to
#: distractor-heavy Golgi channels, so a model does not learn one preset's amounts.
SAMPLE_VARIATION = {
    "density_per_100um2": (0.12, 0.45),
    "nucleus_overlap": (-0.05, 0.25),
    "dim_fraction": (0.05, 0.3),
    "vessels_per_10000um2": (0.0, 7.0),
    "dirt_per_10000um2": (0.0, 10.0),
    "fragments_per_cell": (0.0, 0.1),
    "cytoplasm_level": (0.01, 0.08),
    "layer_undulation_um": (0.5, 4.0),
    "illumination_variation": (0.1, 0.5),
    "golgi_over_nucleus_fraction": (0.0, 0.2),
    "polarity_concentration": (0.0, 5.0),
}
#: Factors (drawn log-uniformly) on the preset's stain brightness and PSF width: ``photons`` scales both
#: channels, ``golgi_photons`` the Golgi channel once more, ``psf`` every PSF sigma.
SAMPLE_SCALES = {"photons": (0.5, 2.0), "golgi_photons": (0.7, 1.4), "psf": (0.8, 1.3)}


def varied_sample_options(rng: np.random.Generator, preset: str) -> dict:
    """:class:`SimConfig` overrides drawn from :data:`SAMPLE_VARIATION` and :data:`SAMPLE_SCALES` for ``preset``."""
    base = PRESETS[preset]
    options = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in SAMPLE_VARIATION.items()}
    scale = {name: float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) for name, (lo, hi) in SAMPLE_SCALES.items()}
    options["photons_nucleus"] = base.photons_nucleus * scale["photons"]
    options["photons_golgi"] = base.photons_golgi * scale["photons"] * scale["golgi_photons"]
    options["psf_sigma_um"] = tuple(s * scale["psf"] for s in base.psf_sigma_um)
    return options


#: Ranges of the cell layout a crowded scene draws from (``--vary-layout``). Real annotated retina layouts
#: (../shared/data/retina3d_vectors) put 19 % of nuclei within 7 µm of another and 2.5 % within 5 µm; the
#: default layout (16 × 8.5 × 5 µm nuclei, 5 µm apart at least) almost never does (1 % within 7 µm). Nuclei
#: smaller by the factor ``nucleus_size`` (log-uniform) and allowed closer make such neighbours common.
LAYOUT_VARIATION = {"min_nucleus_distance_um": (2.0, 4.5)}
LAYOUT_SCALES = {"nucleus_size": (0.4, 0.9)}


def varied_layout_options(rng: np.random.Generator) -> dict:
    """:class:`SimConfig` overrides drawn from :data:`LAYOUT_VARIATION` and :data:`LAYOUT_SCALES`."""
    options = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in LAYOUT_VARIATION.items()}
    lo, hi = LAYOUT_SCALES["nucleus_size"]
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    options["nucleus_size_um"] = tuple(scale * s for s in SimConfig.nucleus_size_um)  # the field's default
    return options


def scene_layout_options(key: Sequence[int], fraction: float) -> dict:
    """Crowded-layout overrides (:func:`varied_layout_options`) for the scene with seed ``key``, or none.

    A share ``fraction`` of scenes is crowded (1: all, 0: none); which ones, and their draws, come from
    streams of their own (seeds ``[*key, 3]`` and ``[*key, 2]``), so a scene's other draws do not depend on it.
    """
    if fraction <= 0 or np.random.default_rng([*key, 3]).random() >= fraction:
        return {}
    return varied_layout_options(np.random.default_rng([*key, 2]))


_PRESET_FIELDS = tuple(f.name for f in dataclasses.fields(Preset) if f.name != "description")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Fields left at ``None`` take the value of the chosen preset.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` in voxels; ``Z == 1`` simulates a 2D image.
    voxel_size : tuple of float, optional
        ``(z, y, x)`` µm; default from the preset.
    preset : str
        Key of :data:`PRESETS`.
    seed : int
        Random seed; the same config and seed give the same volume and pairs.
    n_cells : int, optional
        Number of cells whose nucleus centre lies in the field. Default: ``density_per_100um2`` × area.
    density_per_100um2 : float, optional
        Cells per 100 µm² (ignored when ``n_cells`` is given).
    polarity_direction : tuple of float, optional
        Preferred nucleus→Golgi direction ``(z, y, x)`` (normalised here). ``None``: uniform in x/y with
        a small z component.
    polarity_concentration : float
        von Mises–Fisher concentration κ around ``polarity_direction`` (0 = uniform, 5 = strong).
    golgi_over_nucleus_fraction : float
        Fraction of Golgi lying on top of their nucleus in z rather than beside it (no preferred direction).
    golgi_gap_um : float, optional
        Mean distance (µm) from the nucleus edge to the Golgi's reference point, for Golgi beside their
        nucleus (a negative value overlaps the edge). Default 0.8 with analytic nuclei and 2.0 with the
        Otsu-tight real masks; either gives a median pair length of about 5.5–6 µm, as in the annotated
        retina crops.
    nucleus_size_um : tuple of float
        Mean full nucleus size ``(major, minor, thickness)`` in µm; each cell varies by ``size_jitter``.
    size_jitter : float
        Relative per-cell spread of the nucleus axes (uniform ±).
    shapes_dir : str, optional
        Folder with the 3DNGMic masks (``nuclei_shapes.npz``, ``Golgi_shapes.npz``); when set, real object
        shapes replace the analytic ellipsoids and blob clusters. Loaded at run time, never copied.
    shapes_voxel_size : tuple of float
        Voxel size ``(z, y, x)`` µm of those masks.
    min_nucleus_distance_um : float
        No two nucleus centres closer than this.
    nucleus_overlap, dim_fraction : float, optional
        See :class:`Preset`.
    vessels_per_10000um2, dirt_per_10000um2, fragments_per_cell : float, optional
        Distractor amounts; see :class:`Preset`.
    cytoplasm_level : float, optional
        Diffuse cytoplasmic Golgi-channel signal; see :class:`Preset`.
    psf_sigma_um, haze, haze_sigma_um : optional
        Optics; see :class:`Preset`.
    photons_nucleus, photons_golgi, photons_background : float, optional
        Signal levels; see :class:`Preset`.
    illumination_variation, depth_attenuation_um, layer_undulation_um : float, optional
        Uneven illumination and sample geometry; see :class:`Preset`.
    read_noise_e, gain_adu_per_e, offset_adu : float, optional
        Camera; see :class:`Preset`.
    noise : bool
        Add shot and read noise (``False`` gives the noise-free expected image, for tests and figures).
    dtype : str
        ``"uint16"`` (12-bit-like camera range) or ``"uint8"`` (the same image scaled by 1/16).
    layout_um : tuple, optional
        A given layout instead of the random one: ``(nuclei, golgi)``, each N ``(z, y, x)`` centroids in µm
        in the :class:`~app.core.pairs.PairSet` convention (voxel index × voxel size, so the centre of the
        first voxel is 0), e.g. ``(pairs.nuclei_um, pairs.golgi_um)`` of real annotations shifted into the
        field. Cell i's nucleus and Golgi are centred there (sizes, shapes, textures and distractors are
        drawn as usual; nuclei shrink where they would swallow their Golgi or overlap neighbours) and the
        ground truth is exactly these pairs. ``n_cells``, ``density_per_100um2`` and the polarity options
        are then unused; every point must lie in the field. In 2D the z values are ignored.
    """

    shape: tuple[int, int, int] = (64, 256, 256)
    voxel_size: Optional[tuple[float, float, float]] = None
    preset: str = "confocal"
    seed: int = 0
    n_cells: Optional[int] = None
    density_per_100um2: Optional[float] = None
    polarity_direction: Optional[tuple[float, float, float]] = None
    polarity_concentration: float = 4.0
    golgi_over_nucleus_fraction: float = 0.08
    golgi_gap_um: Optional[float] = None
    nucleus_size_um: tuple[float, float, float] = (16.0, 8.5, 5.0)
    size_jitter: float = 0.2
    shapes_dir: Optional[str] = None
    shapes_voxel_size: tuple[float, float, float] = SHAPES_VOXEL_SIZE_3DNGMIC
    min_nucleus_distance_um: float = 5.0
    nucleus_overlap: Optional[float] = None
    dim_fraction: Optional[float] = None
    vessels_per_10000um2: Optional[float] = None
    dirt_per_10000um2: Optional[float] = None
    fragments_per_cell: Optional[float] = None
    cytoplasm_level: Optional[float] = None
    psf_sigma_um: Optional[tuple[float, float, float]] = None
    haze: Optional[float] = None
    haze_sigma_um: Optional[tuple[float, float, float]] = None
    photons_nucleus: Optional[float] = None
    photons_golgi: Optional[float] = None
    photons_background: Optional[float] = None
    illumination_variation: Optional[float] = None
    depth_attenuation_um: Optional[float] = None
    layer_undulation_um: Optional[float] = None
    read_noise_e: Optional[float] = None
    gain_adu_per_e: Optional[float] = None
    offset_adu: Optional[float] = None
    noise: bool = True
    dtype: str = "uint16"
    layout_um: Optional[tuple] = None

    @property
    def is_2d(self) -> bool:
        return int(self.shape[0]) == 1

    def replace(self, **changes: Any) -> "SimConfig":
        """A copy with ``changes`` applied; unknown names are a :class:`CellPolError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise CellPolError(
                f"Unknown simulation option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
            )
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "SimConfig":
        """A validated copy with every ``None`` filled from the preset and vectors normalised.

        Raises
        ------
        CellPolError
            Unknown preset, bad shape, voxel size, direction or fractions.
        """
        if self.preset not in PRESETS:
            raise CellPolError(f"Unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        preset = PRESETS[self.preset]
        values = {name: getattr(self, name) for name in _PRESET_FIELDS}
        for name, value in values.items():
            if value is None:
                values[name] = getattr(preset, name)
        shape = _resolve_shape(self.shape)
        values["voxel_size"] = parse_voxel_size(values["voxel_size"])
        for name in ("psf_sigma_um", "haze_sigma_um"):
            vec = tuple(float(v) for v in values[name])
            if len(vec) != 3 or min(vec) < 0:
                raise CellPolError(f"{name} must be three non-negative numbers (z, y, x) in µm, got {vec}.")
            values[name] = vec
        direction = self.polarity_direction
        if direction is not None:
            direction = _resolve_direction(direction, is_2d=shape[0] == 1)
        for name in ("dim_fraction", "golgi_over_nucleus_fraction", "illumination_variation"):
            value = values[name] if name in values else getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise CellPolError(f"{name} must be between 0 and 1, got {value}.")
        if not -1.0 <= float(values["nucleus_overlap"]) < 1.0:
            raise CellPolError(f"nucleus_overlap must be in [-1, 1), got {values['nucleus_overlap']}.")
        if self.n_cells is not None and int(self.n_cells) < 0:
            raise CellPolError(f"n_cells must be >= 0, got {self.n_cells}.")
        if self.dtype not in ("uint16", "uint8"):
            raise CellPolError(f"dtype must be 'uint16' or 'uint8', got {self.dtype!r}.")
        sizes = tuple(float(v) for v in self.nucleus_size_um)
        if len(sizes) != 3 or min(sizes) <= 0:
            raise CellPolError(f"nucleus_size_um must be three positive numbers, got {self.nucleus_size_um!r}.")
        shapes_dir = None if self.shapes_dir is None else os.fspath(self.shapes_dir)
        layout = None if self.layout_um is None else _resolve_layout(self.layout_um, shape, values["voxel_size"])
        return dataclasses.replace(
            self,
            shape=shape,
            layout_um=layout,
            polarity_direction=direction,
            nucleus_size_um=sizes,
            shapes_dir=shapes_dir,
            shapes_voxel_size=parse_voxel_size(self.shapes_voxel_size),
            **values,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists when written).

        ``layout_um`` is left out while unset, so random configs keep the dictionary they always had.
        """
        out = dataclasses.asdict(self)
        if out["layout_um"] is None:
            del out["layout_um"]
        return out


def _resolve_shape(shape: Any) -> tuple[int, int, int]:
    """``SimConfig.shape`` as three ints, large enough to hold a cell.

    Raises
    ------
    CellPolError
        Not three positive integers, or fewer than 8 voxels in Y or X.
    """
    try:
        resolved = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise CellPolError(f"Shape must be three integers Z Y X, got {shape!r}.") from None
    if len(resolved) != 3 or min(resolved) < 1:
        raise CellPolError(f"Shape must be three positive integers Z Y X, got {shape!r}.")
    if resolved[1] < 8 or resolved[2] < 8:
        raise CellPolError(f"Shape {resolved} is too small to hold a cell; Y and X need at least 8 voxels.")
    return resolved


def _resolve_direction(direction: Any, is_2d: bool) -> tuple[float, float, float]:
    """``SimConfig.polarity_direction`` as a unit ``(z, y, x)`` vector (in the plane for a 2D image).

    Raises
    ------
    CellPolError
        Not a finite non-zero 3-vector, or purely along z in 2D.
    """
    vec = np.asarray(direction, dtype=np.float64).reshape(-1)
    if vec.size != 3 or not np.all(np.isfinite(vec)) or np.linalg.norm(vec) < 1e-9:
        raise CellPolError(f"polarity_direction must be a non-zero (z, y, x) vector, got {direction!r}.")
    if is_2d:
        vec[0] = 0.0
        if np.linalg.norm(vec) < 1e-9:
            raise CellPolError("A 2D image cannot have a purely z polarity direction.")
    return tuple(float(v) for v in vec / np.linalg.norm(vec))


def _resolve_layout(
    layout: Any, shape: tuple[int, int, int], voxel: tuple[float, float, float]
) -> tuple[tuple[tuple[float, float, float], ...], tuple[tuple[float, float, float], ...]]:
    """``SimConfig.layout_um`` validated and frozen as nested tuples of floats (hashable, JSON-ready).

    Raises
    ------
    CellPolError
        Not two (N, 3) arrays of finite numbers, or a point outside the field.
    """
    try:
        nuclei, golgi = (np.array(part, dtype=np.float64).reshape(-1, 3) for part in layout)  # copies
    except (TypeError, ValueError):
        raise CellPolError("layout_um must be (nuclei, golgi), each N (z, y, x) points in µm.") from None
    if len(nuclei) != len(golgi):
        raise CellPolError(f"layout_um has {len(nuclei)} nuclei but {len(golgi)} Golgi; they must pair up.")
    points = np.concatenate([nuclei, golgi])
    if not np.all(np.isfinite(points)):
        raise CellPolError("layout_um has non-finite coordinates.")
    if shape[0] == 1:
        nuclei[:, 0] = 0.0
        golgi[:, 0] = 0.0
        points = np.concatenate([nuclei, golgi])
    # Voxel i covers [i - ½, i + ½] in voxel units: the field is [-½, shape - ½] × voxel.
    lo = -0.5 * np.asarray(voxel)
    hi = (np.asarray(shape) - 0.5) * np.asarray(voxel)
    outside = np.any((points < lo - 1e-9) | (points > hi + 1e-9), axis=1)
    if np.any(outside):
        first = points[np.argmax(outside)]
        raise CellPolError(
            f"layout_um: {int(outside.sum())} point(s) lie outside the field of {shape} voxels, "
            f"e.g. {tuple(round(float(v), 3) for v in first)} µm."
        )
    return (
        tuple(tuple(float(v) for v in row) for row in nuclei),
        tuple(tuple(float(v) for v in row) for row in golgi),
    )
