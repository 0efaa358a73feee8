"""Procedural simulator of two-channel nucleus + Golgi fluorescence volumes with ground truth.

The idea of NucGen3D / 3DMSL, without a GAN: lay out a flat monolayer of cells in µm, render textured
nuclei and Golgi (analytic shapes, or real 3DNGMic masks), add distractors, an uneven background, the
microscope's blur and camera noise, and record each cell's nucleus→Golgi pair where an annotator would
click it (the centroid of the object as rendered and visible in the volume).

Everything is specified in µm and converted by the voxel size, so that the same seed gives physically the
same scene at any voxel size (0.2–0.8 µm in xy, 0.25–1 µm in z). ``Z == 1`` gives a 2D image.
``SimConfig.layout_um`` replaces the random layout by given nucleus and Golgi centroids (e.g. real
annotations), which then are the ground truth.

Main entry points
-----------------
:func:`simulate`
    One :class:`~app.core.volume.Volume` (channel 0 = nuclei, 1 = Golgi) and its
    :class:`~app.core.pairs.PairSet`.
:func:`synthesize_dataset`
    ``n`` volumes written as ImageJ TIFF + vectors CSV (+ JSON sidecar), reproducible item by item.
:data:`PRESETS`
    Microscope presets: ``confocal``, ``confocal-low-snr``, ``widefield``, ``retina``.

Speed comes from rendering each object into its own bounding box, blurring each channel once and
drawing shot noise from a lookup table (``float32`` throughout): a 64×256×256×2 volume takes about
0.8 s on one core of a 2-core CPU (``benchmarks/synth_speed.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from app.core.errors import CellPolError
from app.core.fileutil import clean_stale_temporaries, ensure_folder
from app.core.jobs import CancelToken, ProgressCallback, check_cancel
from app.core.pairs import PairSet, write_pairs
from app.core.volume import Volume, parse_voxel_size

GENERATOR = "cellpol-simulator"

#: Longest nucleus→Golgi distance (µm) a simulated pair may have (the paper's pairing limit).
MAX_PAIR_LENGTH_UM = 14.0

#: Voxel size ``(z, y, x)`` µm of the 3DNGMic object masks. Their data were resampled to
#: 0.666 µm in x/y (reference §5.1, §6.3: a 16 µm box is 24 voxels); z stayed at 0.27 µm.
SHAPES_VOXEL_SIZE_3DNGMIC = (0.27, 0.666, 0.666)

NUCLEUS_SHAPES_FILE = "nuclei_shapes.npz"
GOLGI_SHAPES_FILE = "Golgi_shapes.npz"

#: Peak memory of :func:`simulate` per voxel of the volume, in bytes: float32 working copies of both channels,
#: the blur, the haze and the output (measured with tracemalloc: 31-33 bytes for every preset at 32×256×256
#: and 64×512×512), plus a margin.
SIMULATE_BYTES_PER_VOXEL = 36


# ----------------------------------------------------------------------------------------------
# Presets and configuration
# ----------------------------------------------------------------------------------------------
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
        try:
            shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError):
            raise CellPolError(f"Shape must be three integers Z Y X, got {self.shape!r}.") from None
        if len(shape) != 3 or min(shape) < 1:
            raise CellPolError(f"Shape must be three positive integers Z Y X, got {self.shape!r}.")
        if shape[1] < 8 or shape[2] < 8:
            raise CellPolError(f"Shape {shape} is too small to hold a cell; Y and X need at least 8 voxels.")
        values["voxel_size"] = parse_voxel_size(values["voxel_size"])
        for name in ("psf_sigma_um", "haze_sigma_um"):
            vec = tuple(float(v) for v in values[name])
            if len(vec) != 3 or min(vec) < 0:
                raise CellPolError(f"{name} must be three non-negative numbers (z, y, x) in µm, got {vec}.")
            values[name] = vec
        direction = self.polarity_direction
        if direction is not None:
            vec = np.asarray(direction, dtype=np.float64).reshape(-1)
            if vec.size != 3 or not np.all(np.isfinite(vec)) or np.linalg.norm(vec) < 1e-9:
                raise CellPolError(f"polarity_direction must be a non-zero (z, y, x) vector, got {direction!r}.")
            if shape[0] == 1:
                vec[0] = 0.0
                if np.linalg.norm(vec) < 1e-9:
                    raise CellPolError("A 2D image cannot have a purely z polarity direction.")
            direction = tuple(float(v) for v in vec / np.linalg.norm(vec))
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


# ----------------------------------------------------------------------------------------------
# Scene description (all in µm; independent of the voxel size)
# ----------------------------------------------------------------------------------------------
@dataclass
class _Nucleus:
    centre: np.ndarray  # (z, y, x) µm
    semi_axes: tuple[float, float, float]  # (major, minor, half-thickness) µm; thickness inf in 2D
    angle: float  # in-plane angle of the major axis (radians, from +x towards +y)
    rotation: np.ndarray  # 3×3, rows = local axes (major, minor, thickness) in world (z, y, x)
    brightness: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows: smooth outline perturbation
    spots: np.ndarray  # (K, 4): chromocentre centres (z, y, x) µm and radii
    spot_gain: np.ndarray
    nucleoli: np.ndarray  # (K, 4)
    shape_mask: Optional[np.ndarray] = None  # real shape (z, y, x) at the shapes' voxel size, float


@dataclass
class _Golgi:
    centre: np.ndarray  # sampled reference point, µm
    spheres: np.ndarray  # (K, 4): centres µm and radii (empty for a real shape)
    weights: np.ndarray  # (K,)
    flat: float  # z radius / xy radius of the blobs
    brightness: float
    shape_mask: Optional[np.ndarray] = None


@dataclass
class _Scene:
    nuclei: list[_Nucleus]
    golgi: list[Optional[_Golgi]]  # one per nucleus, None when no place was found
    vessels: list[tuple[np.ndarray, float, float]]  # (points (P,3) µm, radius, brightness)
    dirt: np.ndarray  # (K, 5): centre, radius, brightness
    fragments: list[tuple[np.ndarray, float]]  # (spheres (K,4), brightness)
    illumination: "_SmoothField"
    background: "_SmoothField"
    layer_mid_um: float
    n_requested: int


class _SmoothField:
    """A smooth random 2D field in [0, 1] made of a few long-wavelength plane waves (µm coordinates)."""

    def __init__(self, rng: np.random.Generator, wavelength_um: tuple[float, float], n_waves: int = 3) -> None:
        angles = rng.uniform(0.0, 2.0 * np.pi, n_waves)
        wavelengths = rng.uniform(*wavelength_um, n_waves)
        self.k_y = 2.0 * np.pi * np.sin(angles) / wavelengths
        self.k_x = 2.0 * np.pi * np.cos(angles) / wavelengths
        self.phase = rng.uniform(0.0, 2.0 * np.pi, n_waves)
        self.weight = rng.uniform(0.5, 1.0, n_waves)

    def __call__(self, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
        y = np.asarray(y_um, dtype=np.float64)
        x = np.asarray(x_um, dtype=np.float64)
        total = np.zeros(np.broadcast_shapes(y.shape, x.shape))
        for ky, kx, ph, w in zip(self.k_y, self.k_x, self.phase, self.weight):
            total = total + w * np.cos(ky * y + kx * x + ph)
        return 0.5 + 0.5 * total / self.weight.sum()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _rotation(angle: float, tilt: float) -> np.ndarray:
    """Rows: the nucleus' major, minor and thickness axes in world (z, y, x), with a small tilt."""
    major = np.array([0.0, math.sin(angle), math.cos(angle)])
    minor = np.array([0.0, math.cos(angle), -math.sin(angle)])
    thick = np.array([1.0, 0.0, 0.0])
    # Tilt about the major axis (Rodrigues): the cell lies on a slightly sloping surface.
    c, s = math.cos(tilt), math.sin(tilt)
    minor, thick = c * minor + s * thick, -s * minor + c * thick
    return np.stack([major, minor, thick])


def _edge_radius(a: float, b: float, angle: float, direction_angle: np.ndarray | float) -> np.ndarray:
    """Distance from the centre to the edge of an (a, b, angle) ellipse along ``direction_angle``."""
    phi = np.asarray(direction_angle) - angle
    return 1.0 / np.sqrt((np.cos(phi) / a) ** 2 + (np.sin(phi) / b) ** 2)


def _sample_vmf(rng: np.random.Generator, mean: np.ndarray, kappa: float) -> np.ndarray:
    """One unit vector from a von Mises–Fisher distribution on the sphere (Wood 1994, p = 3)."""
    if kappa < 1e-6:
        v = rng.standard_normal(3)
        return _unit(v)
    u = rng.uniform()
    w = 1.0 + math.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
    phi = rng.uniform(0.0, 2.0 * np.pi)
    helper = np.array([1.0, 0.0, 0.0]) if abs(mean[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(mean, helper))
    e2 = np.cross(mean, e1)
    s = math.sqrt(max(0.0, 1.0 - w * w))
    return _unit(w * mean + s * (math.cos(phi) * e1 + math.sin(phi) * e2))


# ----------------------------------------------------------------------------------------------
# Real object shapes (3DNGMic masks, GPL: loaded at run time from the user's folder, never bundled)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_shapes(path: str, min_voxels: int) -> tuple[np.ndarray, ...]:
    """Masks from one ``.npz`` file as ``(z, y, x)`` uint8 arrays with at least ``min_voxels`` voxels."""
    file = Path(path)
    if not file.is_file():
        raise CellPolError(f"Object shapes not found: {file} (expected {NUCLEUS_SHAPES_FILE} and {GOLGI_SHAPES_FILE}).")
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = sorted(k for k in archive.files if k.startswith("shape_"))
            arrays = [np.asarray(archive[k]) for k in keys]
    except (OSError, ValueError) as exc:
        raise CellPolError(f"{file}: not a readable shapes archive ({exc}).") from None
    # Stored as (a0 = row, a1 = column, a2 = z); we work in (z, y, x).
    masks = tuple(
        np.ascontiguousarray(np.transpose(a > 0, (2, 0, 1))).astype(np.uint8)
        for a in arrays
        if a.ndim == 3 and int(np.count_nonzero(a)) >= min_voxels
    )
    if not masks:
        raise CellPolError(f"{file}: no usable object masks (3D, at least {min_voxels} voxels).")
    return masks


def _transform_shape(
    rng: np.random.Generator, mask: np.ndarray, source_voxel: tuple[float, float, float]
) -> np.ndarray:
    """Random flips and in-plane rotation of a mask at its own voxel size; returns a soft float mask."""
    # Smoothing before resampling turns the blocky masks into a level set we can threshold at 0.5.
    sigma = (0.25 / source_voxel[0], 0.35 / source_voxel[1], 0.35 / source_voxel[2])
    soft = ndi.gaussian_filter(np.pad(mask.astype(np.float32), 2), sigma)
    if rng.uniform() < 0.5:
        soft = soft[:, ::-1, :]
    if rng.uniform() < 0.5:
        soft = soft[:, :, ::-1]
    angle = rng.uniform(0.0, 360.0)
    if abs(source_voxel[1] - source_voxel[2]) < 1e-6:
        soft = ndi.rotate(soft, angle, axes=(1, 2), reshape=True, order=1, mode="constant", prefilter=False)
    return np.ascontiguousarray(np.clip(soft, 0.0, 1.0), dtype=np.float32)


def _mask_ellipse(mask: np.ndarray, voxel: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """Equivalent ellipse of a soft mask's footprint: (a, b, angle, half-thickness), µm."""
    occ = mask >= 0.5
    idx = np.argwhere(occ).astype(np.float64) * np.asarray(voxel)
    if len(idx) < 3:
        return 1.0, 1.0, 0.0, 1.0
    cov = np.cov(idx.T)
    cyx = cov[1:, 1:]
    evals, evecs = np.linalg.eigh(cyx)
    # A uniform ellipse has variance a²/4 along each axis (2σ); the 3DNGMic masks are Otsu-tight, about
    # 20 % inside the nucleus edge one sees after blur, hence 2.4σ.
    a = 2.4 * math.sqrt(max(evals[1], 1e-6))
    b = 2.4 * math.sqrt(max(evals[0], 1e-6))
    major = evecs[:, 1]  # (y, x)
    angle = math.atan2(major[0], major[1])
    half_thickness = math.sqrt(5.0 * max(cov[0, 0], 1e-6))
    return a, b, angle, half_thickness


# ----------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------
class _Layout:
    """Nucleus centres and footprint ellipses as arrays, for vectorised placement checks."""

    def __init__(self) -> None:
        self.centres = np.zeros((0, 3))
        self.a = np.zeros(0)
        self.b = np.zeros(0)
        self.angle = np.zeros(0)

    @property
    def n(self) -> int:
        return len(self.a)

    def add(self, centre: np.ndarray, a: float, b: float, angle: float) -> None:
        self.centres = np.vstack([self.centres, centre[None, :]])
        self.a = np.append(self.a, a)
        self.b = np.append(self.b, b)
        self.angle = np.append(self.angle, angle)

    def accepts(self, centre: np.ndarray, a: float, b: float, angle: float, min_distance: float,
                overlap: float) -> bool:
        """True if a new nucleus keeps ``min_distance`` and overlaps its neighbours by at most ``overlap``."""
        if self.n == 0:
            return True
        delta = centre[None, :] - self.centres
        if np.min(np.linalg.norm(delta, axis=1)) < min_distance:
            return False
        planar = np.hypot(delta[:, 1], delta[:, 2])
        direction = np.arctan2(delta[:, 1], delta[:, 2])
        reach = _edge_radius(a, b, angle, direction) + _edge_radius(self.a, self.b, self.angle, direction)
        return bool(np.all(planar >= (1.0 - overlap) * reach))

    def rho(self, yx: np.ndarray) -> np.ndarray:
        """Normalised in-plane ellipse radius of point ``yx`` relative to every nucleus (1 = on its edge)."""
        d = np.asarray(yx)[None, :] - self.centres[:, 1:]
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        along = d[:, 0] * sa + d[:, 1] * ca
        across = d[:, 0] * ca - d[:, 1] * sa
        return np.sqrt((along / self.a) ** 2 + (across / self.b) ** 2)


def _sample_scene(cfg: SimConfig, rng: np.random.Generator) -> _Scene:
    is_2d = cfg.is_2d
    voxel = np.asarray(cfg.voxel_size)
    shape = np.asarray(cfg.shape)
    extent = shape * voxel  # field of view (z, y, x) µm; voxel i is centred at (i + ½)·voxel
    field_area = float(shape[1] * voxel[1] * shape[2] * voxel[2])
    margin = 12.0
    lo_yx = -margin * np.ones(2)
    hi_yx = extent[1:] + margin
    ext_area = float(np.prod(hi_yx - lo_yx))

    if cfg.n_cells is not None:
        n_inside = int(cfg.n_cells)
    else:
        n_inside = int(round(cfg.density_per_100um2 * field_area / 100.0))
    n_total_target = int(round(n_inside * ext_area / max(field_area, 1e-9)))

    layer = _SmoothField(rng, (60.0, 220.0), n_waves=2)
    illumination = _SmoothField(rng, (120.0, 400.0), n_waves=3)
    background = _SmoothField(rng, (40.0, 160.0), n_waves=3)
    z_mid = 0.0 if is_2d else float(extent[0]) / 2.0

    shapes_n: tuple[np.ndarray, ...] = ()
    shapes_g: tuple[np.ndarray, ...] = ()
    if cfg.shapes_dir is not None:
        base = Path(cfg.shapes_dir)
        shapes_n = _load_shapes(str(base / NUCLEUS_SHAPES_FILE), 300)
        shapes_g = _load_shapes(str(base / GOLGI_SHAPES_FILE), 60)

    def layer_z(y: float, x: float) -> float:
        if is_2d:
            return 0.0
        wave = (float(layer(np.array(y), np.array(x))) - 0.5) * 2.0 * cfg.layer_undulation_um
        return z_mid + wave

    def inside(p: np.ndarray) -> bool:
        lo = np.zeros(3)
        return bool(np.all(p >= lo - 1e-9) and np.all(p <= extent + 1e-9))

    if cfg.layout_um is not None:
        # --- a given layout: cells where the annotations put them ----------------------------------------
        nuclei, golgi, layout = _layout_cells(cfg, rng, shapes_n, shapes_g)
        n_inside = len(nuclei)
    else:
        # --- nuclei: random sequential addition with a minimum distance and limited overlap -------------
        nuclei: list[_Nucleus] = []
        layout = _Layout()
        n_inside_done = 0
        attempts = 0
        max_attempts = 60 * max(n_total_target, 1) + 200
        while n_inside_done < n_inside and attempts < max_attempts:
            attempts += 1
            yx = rng.uniform(lo_yx, hi_yx)
            shape_mask, a, b, c, angle, tilt = _draw_nucleus_shape(cfg, rng, shapes_n)
            if is_2d:
                z = 0.0
                c = math.inf
            else:
                z = layer_z(yx[0], yx[1]) + rng.normal(0.0, 0.4)
                half = min(c, extent[0] / 2.0)
                z = float(np.clip(z, half, max(half, extent[0] - half)))
            centre = np.array([z, yx[0], yx[1]])
            if not layout.accepts(centre, a, b, angle, cfg.min_nucleus_distance_um, cfg.nucleus_overlap):
                continue
            nuclei.append(_finish_nucleus(cfg, rng, centre, (a, b, c), angle, tilt, shape_mask))
            layout.add(centre, a, b, angle)
            if inside(centre):
                n_inside_done += 1

        # --- Golgi: beside (or on top of) its own nucleus, closer to it than to any other ----------------
        golgi: list[Optional[_Golgi]] = []
        for i, nucleus in enumerate(nuclei):
            golgi.append(_sample_golgi(cfg, rng, i, nuclei, layout, golgi, shapes_g))

    # --- distractors ------------------------------------------------------------------------------------
    area_ext = ext_area / 10000.0
    vessels = []
    for _ in range(int(rng.poisson(cfg.vessels_per_10000um2 * area_ext))):
        vessels.append(_sample_vessel(rng, lo_yx, hi_yx, layer_z, is_2d))
    n_dirt = int(rng.poisson(cfg.dirt_per_10000um2 * field_area / 10000.0))
    dirt = np.zeros((n_dirt, 5))
    if n_dirt:
        dirt[:, 0] = 0.0 if is_2d else rng.uniform(0.0, extent[0], n_dirt)
        dirt[:, 1] = rng.uniform(0.0, extent[1], n_dirt)
        dirt[:, 2] = rng.uniform(0.0, extent[2], n_dirt)
        dirt[:, 3] = rng.uniform(0.2, 0.35, n_dirt)
        dirt[:, 4] = rng.uniform(2.0, 6.0, n_dirt)
    fragments = []
    for _ in range(int(rng.poisson(cfg.fragments_per_cell * max(len(nuclei), 1)))):
        for _try in range(20):
            yx = rng.uniform(lo_yx, hi_yx)
            if layout.n == 0 or layout.rho(yx).min() > 1.4:
                break
        centre = np.array([layer_z(yx[0], yx[1]), yx[0], yx[1]])
        k = int(rng.integers(1, 5))
        spheres = np.zeros((k, 4))
        spheres[:, :3] = centre + rng.normal(0.0, 1.0, (k, 3)) * np.array([0.0 if is_2d else 0.6, 1.2, 1.2])
        spheres[:, 3] = rng.uniform(0.5, 1.2, k)
        fragments.append((spheres, float(rng.uniform(1.2, 2.0))))
    return _Scene(nuclei, golgi, vessels, dirt, fragments, illumination, background, z_mid, n_inside)


#: Least clearance (µm) between a nucleus' edge and its own Golgi centroid when a layout puts the Golgi beside it.
_LAYOUT_GOLGI_CLEARANCE_UM = 1.0
#: Smallest in-plane semi-axis (µm) a layout nucleus is shrunk to.
_LAYOUT_MIN_SEMI_AXIS_UM = 2.0
#: Smallest half-thickness (µm) a layout nucleus is flattened to.
_LAYOUT_MIN_HALF_THICKNESS_UM = 1.0


def _layout_cells(
    cfg: SimConfig,
    rng: np.random.Generator,
    shapes_n: tuple[np.ndarray, ...],
    shapes_g: tuple[np.ndarray, ...],
) -> tuple[list[_Nucleus], list[Optional[_Golgi]], _Layout]:
    """Nuclei and Golgi centred on the points of ``cfg.layout_um`` (see :class:`SimConfig`).

    Each nucleus' size, shape, orientation, brightness and spots are drawn as in the random layout. Its
    in-plane semi-axes then shrink (keeping their ratio, down to :data:`_LAYOUT_MIN_SEMI_AXIS_UM`) so that
    it leaves :data:`_LAYOUT_GOLGI_CLEARANCE_UM` around its own Golgi, does not cover another cell's Golgi
    and overlaps its neighbours by at most ``nucleus_overlap``; a Golgi too close in-plane for that is
    taken to lie on top of its nucleus, which flattens instead. A nucleus also flattens to fit the
    field's depth. The Golgi is today's blob cluster or real shape, curving around its nucleus.
    """
    is_2d = cfg.is_2d
    voxel = np.asarray(cfg.voxel_size)
    extent = np.asarray(cfg.shape) * voxel
    # PairSet µm (voxel index × size) → scene µm (voxel i centred at (i + ½) · size).
    nuc_um = np.asarray(cfg.layout_um[0], dtype=np.float64).reshape(-1, 3) + 0.5 * voxel
    gol_um = np.asarray(cfg.layout_um[1], dtype=np.float64).reshape(-1, 3) + 0.5 * voxel
    if is_2d:
        nuc_um[:, 0] = 0.0
        gol_um[:, 0] = 0.0
    n = len(nuc_um)

    # Draw every nucleus' own shape first, as the random layout does.
    masks: list[Optional[np.ndarray]] = []
    axes = np.zeros((n, 3))
    angles = np.zeros(n)
    tilts = np.zeros(n)
    for i in range(n):
        mask, a, b, c, angle, tilt = _draw_nucleus_shape(cfg, rng, shapes_n)
        masks.append(mask)
        axes[i] = (a, b, math.inf if is_2d else c)
        angles[i] = angle
        tilts[i] = tilt

    # In-plane scale s_i of each nucleus and its half-thickness.
    s_min = np.minimum(1.0, _LAYOUT_MIN_SEMI_AXIS_UM / axes[:, 1])
    scale = np.ones(n)
    thick = axes[:, 2].copy()
    on_top = np.zeros(n, dtype=bool)
    for i in range(n):
        d = gol_um[i] - nuc_um[i]
        planar = float(np.hypot(d[1], d[2]))
        edge = float(_edge_radius(axes[i, 0], axes[i, 1], angles[i], math.atan2(d[1], d[2])))
        need = (planar - _LAYOUT_GOLGI_CLEARANCE_UM) / edge
        if need >= s_min[i]:
            scale[i] = min(1.0, need)
        else:
            on_top[i] = True
            if not is_2d:
                thick[i] = min(thick[i], max(abs(d[0]) - 0.5, _LAYOUT_MIN_HALF_THICKNESS_UM))
        if not is_2d:  # fit the field's depth
            room = min(nuc_um[i, 0], extent[0] - nuc_um[i, 0])
            thick[i] = max(min(thick[i], room), _LAYOUT_MIN_HALF_THICKNESS_UM)
    # Another cell's Golgi stays outside this nucleus (unless it is above or below it).
    for i in range(n):
        d = gol_um - nuc_um[i]
        near = np.hypot(d[:, 1], d[:, 2]) < 1.5 * axes[i, 0]
        near[i] = False
        if not is_2d:
            near &= np.abs(d[:, 0]) < thick[i] + 0.5
        for j in np.flatnonzero(near):
            edge = float(_edge_radius(axes[i, 0], axes[i, 1], angles[i], math.atan2(d[j, 1], d[j, 2])))
            limit = (float(np.hypot(d[j, 1], d[j, 2])) - 0.5 * _LAYOUT_GOLGI_CLEARANCE_UM) / edge
            scale[i] = max(s_min[i], min(scale[i], limit))
    # Neighbours overlap by at most ``nucleus_overlap`` of their reach (shrinking both alike).
    close = []
    for i in range(n):
        for j in range(i + 1, n):
            d = nuc_um[j] - nuc_um[i]
            planar = float(np.hypot(d[1], d[2]))
            if planar >= axes[i, 0] + axes[j, 0] or (not is_2d and abs(d[0]) >= thick[i] + thick[j]):
                continue
            direction = math.atan2(d[1], d[2])
            e_i = float(_edge_radius(axes[i, 0], axes[i, 1], angles[i], direction))
            e_j = float(_edge_radius(axes[j, 0], axes[j, 1], angles[j], direction))
            close.append((i, j, planar / (1.0 - cfg.nucleus_overlap), e_i, e_j))
    for _sweep in range(4):
        for i, j, limit, e_i, e_j in close:
            reach = scale[i] * e_i + scale[j] * e_j
            if reach > limit:
                scale[i] = max(s_min[i], scale[i] * limit / reach)
                scale[j] = max(s_min[j], scale[j] * limit / reach)

    nuclei: list[_Nucleus] = []
    golgi: list[Optional[_Golgi]] = []
    layout = _Layout()
    for i in range(n):
        centre = nuc_um[i]
        a, b = axes[i, 0] * scale[i], axes[i, 1] * scale[i]
        c = math.inf if is_2d else float(thick[i])
        mask = masks[i]
        if mask is not None and (scale[i] < 1.0 or (not is_2d and c < axes[i, 2])):
            factors = (1.0 if is_2d else c / axes[i, 2], scale[i], scale[i])
            mask = np.clip(ndi.zoom(mask, factors, order=1, prefilter=False), 0.0, 1.0).astype(np.float32)
        nucleus = _finish_nucleus(cfg, rng, centre, (a, b, c), float(angles[i]), float(tilts[i]), mask)
        brightness = nucleus.brightness
        nuclei.append(nucleus)
        layout.add(centre, a, b, float(angles[i]))

        target = gol_um[i]
        d = target - centre
        direction = math.atan2(d[1], d[2]) if np.hypot(d[1], d[2]) > 1e-9 else rng.uniform(0.0, 2.0 * np.pi)
        g_brightness = brightness * rng.uniform(0.8, 1.2)
        if shapes_g:
            g_mask = _transform_shape(rng, shapes_g[rng.integers(len(shapes_g))], cfg.shapes_voxel_size)
            golgi.append(_Golgi(target.copy(), np.zeros((0, 4)), np.zeros(0), 1.0, g_brightness, g_mask))
        else:
            spheres, weights, flat = _golgi_spheres(rng, centre, target, direction, bool(on_top[i]), is_2d)
            golgi.append(_Golgi(target.copy(), spheres, weights, flat, g_brightness))
    return nuclei, golgi, layout


def _draw_nucleus_shape(
    cfg: SimConfig, rng: np.random.Generator, shapes_n: tuple[np.ndarray, ...]
) -> tuple[Optional[np.ndarray], float, float, float, float, float]:
    """One nucleus' shape before it is placed: ``(mask, a, b, c, angle, tilt)``.

    A real mask (from ``shapes_n``, randomly transformed; its fitted ellipse gives the semi-axes ``a ≥ b``,
    the in-plane angle and the half-thickness ``c``; no tilt) or an analytic ellipsoid of the configured
    size with jitter, orientation and a small tilt (mask ``None``). In 2D the caller sets ``c`` to infinity.
    """
    if shapes_n:
        mask = _transform_shape(rng, shapes_n[rng.integers(len(shapes_n))], cfg.shapes_voxel_size)
        a, b, angle, c = _mask_ellipse(mask, cfg.shapes_voxel_size)
        return mask, a, b, c, angle, 0.0
    major0, minor0, thick0 = (s / 2.0 for s in cfg.nucleus_size_um)
    jitter = rng.uniform(1.0 - cfg.size_jitter, 1.0 + cfg.size_jitter, 3)
    a, b, c = major0 * jitter[0], minor0 * jitter[1], thick0 * jitter[2]
    if b > a:
        a, b = b, a
    angle = rng.uniform(0.0, np.pi)
    tilt = 0.0 if cfg.is_2d else float(np.clip(rng.normal(0.0, math.radians(5.0)), -0.2, 0.2))
    return None, a, b, c, angle, tilt


def _finish_nucleus(cfg: SimConfig, rng: np.random.Generator, centre: np.ndarray, semi: tuple, angle: float,
                    tilt: float, mask: Optional[np.ndarray]) -> "_Nucleus":
    """A placed nucleus with its brightness (``dim_fraction`` of them dim), surface ripples and spots."""
    if rng.uniform() < cfg.dim_fraction:
        brightness = rng.uniform(0.2, 0.4)
    else:
        brightness = float(np.clip(rng.lognormal(0.0, 0.2), 0.6, 1.6))
    rotation = _rotation(angle, tilt)
    harmonics = np.stack([np.arange(2, 5), rng.normal(0.0, 0.045, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
    spots, spot_gain, nucleoli = _sample_nuclear_spots(rng, centre, rotation, semi, cfg.is_2d)
    return _Nucleus(centre, semi, angle, rotation, brightness, harmonics, spots, spot_gain, nucleoli, mask)


def _sample_nuclear_spots(
    rng: np.random.Generator, centre: np.ndarray, rotation: np.ndarray, semi: tuple, is_2d: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bright chromocentres and darker nucleoli inside a nucleus (mouse nuclei show both)."""
    a, b, c = semi
    c_eff = 0.0 if is_2d else c

    def points(k: int, reach: float) -> np.ndarray:
        local = rng.uniform(-1.0, 1.0, (k, 3))
        local /= np.maximum(1.0, np.linalg.norm(local, axis=1, keepdims=True))
        local *= reach * np.array([a, b, c_eff])
        return centre + local @ rotation

    n_spots = int(rng.integers(3, 11))
    spots = np.zeros((n_spots, 4))
    spots[:, :3] = points(n_spots, 0.7)
    spots[:, 3] = rng.uniform(0.35, 0.75, n_spots)
    gain = rng.uniform(0.35, 0.9, n_spots)
    n_nucleoli = int(rng.integers(0, 3))
    nucleoli = np.zeros((n_nucleoli, 4))
    nucleoli[:, :3] = points(n_nucleoli, 0.45)
    nucleoli[:, 3] = rng.uniform(0.9, 1.5, n_nucleoli)
    return spots, gain, nucleoli


def _sample_golgi(
    cfg: SimConfig,
    rng: np.random.Generator,
    index: int,
    nuclei: list[_Nucleus],
    layout: _Layout,
    placed: list[Optional[_Golgi]],
    shapes_g: tuple[np.ndarray, ...],
) -> Optional[_Golgi]:
    nucleus = nuclei[index]
    is_2d = cfg.is_2d
    a, b, c = nucleus.semi_axes
    c_z = 0.0 if is_2d else c
    others = np.arange(layout.n) != index
    other_golgi = np.array([g.centre for g in placed if g is not None]).reshape(-1, 3)
    preferred = None if cfg.polarity_direction is None else np.asarray(cfg.polarity_direction)
    if cfg.golgi_gap_um is not None:
        gap = float(cfg.golgi_gap_um)
    else:
        gap = 2.0 if shapes_g else 0.8
    for _attempt in range(40):
        if preferred is not None:
            v = _sample_vmf(rng, preferred, cfg.polarity_concentration)
            if is_2d:
                v[0] = 0.0
                v = _unit(v) if np.linalg.norm(v) > 1e-6 else np.array([0.0, 1.0, 0.0])
            steep = abs(v[0]) > 0.87 and not is_2d
        else:
            theta = rng.uniform(0.0, 2.0 * np.pi)
            steep = rng.uniform() < cfg.golgi_over_nucleus_fraction
            if steep:
                vz = rng.uniform(0.87, 1.0) * rng.choice([-1.0, 1.0])
            else:
                vz = float(np.clip(rng.normal(0.0, 0.12), -0.5, 0.5))
            planar = math.sqrt(max(0.0, 1.0 - vz * vz))
            v = np.array([0.0 if is_2d else vz, planar * math.sin(theta), planar * math.cos(theta)])
        planar_norm = float(np.hypot(v[1], v[2]))
        direction = math.atan2(v[1], v[2]) if planar_norm > 1e-9 else rng.uniform(0.0, 2.0 * np.pi)
        edge = float(_edge_radius(a, b, nucleus.angle, direction))
        if steep:
            # On top of the nucleus (apical or basal), set off from its middle.
            planar_dist = edge * rng.uniform(0.0, 0.6)
            dz = 0.0 if is_2d else math.copysign(c_z + rng.uniform(0.3, 0.9), v[0])
        else:
            if rng.uniform() < 0.12:  # the long tail of real pair lengths: a Golgi well away from its nucleus
                offset = gap + rng.uniform(1.5, 5.0)
            else:
                offset = float(np.clip(rng.normal(gap, 1.0), gap - 2.3, gap + 2.2))
            planar_dist = max(1.5, edge + offset)
            dz = 0.0 if is_2d else v[0] * c_z + rng.normal(0.0, 0.5)
        planar_dist = min(planar_dist, MAX_PAIR_LENGTH_UM - 1.5)
        centre = nucleus.centre + np.array([dz, planar_dist * math.sin(direction), planar_dist * math.cos(direction)])
        # Belongs to exactly one nucleus: not over another one, and clearly closest to its own.
        own = float(np.linalg.norm(centre - nucleus.centre))
        if others.any():
            if layout.rho(centre[1:])[others].min() < 1.15:
                continue
            if 0.9 * np.linalg.norm(layout.centres[others] - centre, axis=1).min() < own:
                continue
        if len(other_golgi) and np.min(np.linalg.norm(other_golgi - centre, axis=1)) < 3.0:
            continue
        brightness = nucleus.brightness * rng.uniform(0.8, 1.2)
        if shapes_g:
            mask = _transform_shape(rng, shapes_g[rng.integers(len(shapes_g))], cfg.shapes_voxel_size)
            return _Golgi(centre, np.zeros((0, 4)), np.zeros(0), 1.0, brightness, mask)
        spheres, weights, flat = _golgi_spheres(rng, nucleus.centre, centre, direction, steep, is_2d)
        return _Golgi(centre, spheres, weights, flat, brightness)
    return None


def _golgi_spheres(
    rng: np.random.Generator, nucleus_centre: np.ndarray, centre: np.ndarray, direction: float, steep: bool, is_2d: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """A cluster of 3–12 small blobs or a beaded ribbon, curving around the nucleus (a crescent).

    A few faint vesicles (0–5 sub-micron dots) scatter around either form, as in real Golgi stains.
    """
    radial = np.array([0.0, math.sin(direction), math.cos(direction)])
    tangent = np.array([0.0, math.cos(direction), -math.sin(direction)])
    radius_arc = max(2.0, float(np.hypot(*(centre - nucleus_centre)[1:])))
    z_spread = 0.0 if is_2d else 0.35
    if rng.uniform() < 0.6 or steep:
        k = int(rng.integers(3, 13))
        spread = rng.uniform(0.8, 1.2) * (1.5 + 0.4 * k) * (0.6 if steep else 1.0)
        along = rng.uniform(-spread / 2.0, spread / 2.0, k)
        radial_jitter = rng.normal(0.0, 0.55, k)
        radii = rng.uniform(0.35, 0.85, k)
        weights = rng.uniform(0.6, 1.0, k)
    else:
        length = rng.uniform(3.5, 9.0)
        spread = length
        k = max(4, int(length / 0.3))
        along = np.linspace(-length / 2.0, length / 2.0, k)
        wobble = rng.normal(0.0, 1.0, 4)
        radial_jitter = 0.35 * (wobble[0] * np.sin(along / length * np.pi * 2 + wobble[1]))
        base = rng.uniform(0.5, 0.85)
        radii = base * (0.8 + 0.2 * np.cos(along * 1.7 + wobble[2]))
        weights = 0.75 + 0.25 * np.cos(along * 2.3 + wobble[3])
    n_vesicles = int(rng.integers(0, 6))
    if n_vesicles:
        along = np.concatenate([along, rng.uniform(-spread / 2.0 - 1.0, spread / 2.0 + 1.0, n_vesicles)])
        radial_jitter = np.concatenate([radial_jitter, rng.normal(0.0, 1.2, n_vesicles)])
        radii = np.concatenate([radii, rng.uniform(0.22, 0.35, n_vesicles)])
        weights = np.concatenate([weights, rng.uniform(0.35, 0.7, n_vesicles)])
        k += n_vesicles
    # Curve around the nucleus: points on a circle about its centre, not on a straight line.
    bend = along / radius_arc if not steep else np.zeros_like(along)
    offsets = (
        radial[None, :] * ((np.cos(bend) - 1.0) * radius_arc + radial_jitter)[:, None]
        + tangent[None, :] * (np.sin(bend) * radius_arc if not steep else along)[:, None]
    )
    offsets[:, 0] += rng.normal(0.0, z_spread, k) if z_spread else 0.0
    spheres = np.zeros((k, 4))
    spheres[:, :3] = centre + offsets
    spheres[:, 3] = radii
    return spheres, weights, float(rng.uniform(0.7, 0.95))


def _sample_vessel(
    rng: np.random.Generator, lo_yx: np.ndarray, hi_yx: np.ndarray, layer_z, is_2d: bool
) -> tuple[np.ndarray, float, float]:
    """A smooth random curve near the cell layer: centre-line points every 2 µm, radius, brightness."""
    length = rng.uniform(60.0, 220.0)
    n = max(2, int(length / 2.0))
    start = rng.uniform(lo_yx, hi_yx)
    heading = rng.uniform(0.0, 2.0 * np.pi)
    # Persistent random walk of the heading plus a gentle meander: smooth, vessel-like curves.
    meander = 0.25 * np.sin(np.arange(n) * 2.0 / rng.uniform(15.0, 40.0) + rng.uniform(0, 2 * np.pi))
    headings = heading + np.cumsum(rng.normal(0.0, 0.05, n)) + meander
    steps = 2.0 * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    yx = start + np.cumsum(steps, axis=0) - steps[0]
    z_offset = np.cumsum(rng.normal(0.0, 0.25, n)) + rng.normal(0.0, 1.5)
    z = np.array([0.0 if is_2d else layer_z(p[0], p[1]) for p in yx]) + (0.0 if is_2d else z_offset)
    points = np.column_stack([z, yx])
    return points, float(rng.uniform(1.0, 3.0)), float(rng.uniform(0.12, 0.3))


# ----------------------------------------------------------------------------------------------
# Rendering into local boxes
# ----------------------------------------------------------------------------------------------
class _Canvas:
    """The two float32 channels plus helpers for rendering objects into local bounding boxes."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        voxel: tuple[float, float, float],
        is_2d: bool,
        shapes_voxel: tuple[float, float, float] = SHAPES_VOXEL_SIZE_3DNGMIC,
    ) -> None:
        self.shape = shape
        self.shapes_voxel = shapes_voxel
        self.voxel = np.asarray(voxel, dtype=np.float64)
        self.is_2d = is_2d
        self.nuclei = np.zeros(shape, dtype=np.float32)
        self.golgi = np.zeros(shape, dtype=np.float32)

    def box(self, lo_um: np.ndarray, hi_um: np.ndarray):
        """Voxel index ranges whose centres lie within ``[lo, hi]`` µm, clipped; ``None`` if empty."""
        lo = np.maximum(np.ceil(np.asarray(lo_um) / self.voxel - 0.5), 0).astype(int)
        hi = np.minimum(np.floor(np.asarray(hi_um) / self.voxel - 0.5), np.asarray(self.shape) - 1).astype(int)
        if self.is_2d:
            lo[0], hi[0] = 0, 0
        if np.any(hi < lo):
            return None
        slices = tuple(slice(int(l), int(h) + 1) for l, h in zip(lo, hi))
        coords = (
            ((np.arange(lo[0], hi[0] + 1) + 0.5) * self.voxel[0]).astype(np.float32).reshape(-1, 1, 1),
            ((np.arange(lo[1], hi[1] + 1) + 0.5) * self.voxel[1]).astype(np.float32).reshape(1, -1, 1),
            ((np.arange(lo[2], hi[2] + 1) + 0.5) * self.voxel[2]).astype(np.float32).reshape(1, 1, -1),
        )
        return slices, coords

    def centroid(self, slices: tuple[slice, ...], occupancy: np.ndarray) -> Optional[np.ndarray]:
        """Occupancy-weighted centroid in voxels (z, y, x) of an object rendered at ``slices``."""
        total = float(occupancy.sum(dtype=np.float64))
        if total <= 1e-6:
            return None
        out = np.zeros(3)
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            profile = occupancy.sum(axis=other, dtype=np.float64)
            index = np.arange(slices[axis].start, slices[axis].stop)
            out[axis] = float(profile @ index) / total
        return out


def _occupancy_from_distance(signed_um: np.ndarray, normal: tuple, voxel: np.ndarray) -> np.ndarray:
    """Partial-volume fraction of a voxel from the signed distance to a surface (negative inside).

    A box voxel crossed by a plane with unit normal n spans ``Σ|n_i| v_i`` along n, so the fraction ramps
    linearly over that width: sub-voxel accurate masks whose centroids do not depend on the voxel size.
    """
    vz, vy, vx = (float(v) for v in voxel)
    width = np.abs(normal[0]) * vz + np.abs(normal[1]) * vy + np.abs(normal[2]) * vx
    width = np.maximum(width, 0.5 * min(vy, vx))
    return np.clip(0.5 - signed_um / width, 0.0, 1.0).astype(np.float32, copy=False)


def _render_spheres(
    canvas: _Canvas, spheres: np.ndarray, flat: float = 1.0, weights: Optional[np.ndarray] = None, pad: float = 0.0
):
    """Render a set of (optionally z-flattened) spheres into one box.

    Returns ``(slices, occupancy, intensity)`` with occupancy = max over spheres and intensity =
    max over spheres of weight × occupancy (× projected thickness in 2D), or ``None`` if not visible.
    """
    if len(spheres) == 0:
        return None
    centres = spheres[:, :3]
    radii = spheres[:, 3]
    z_radii = radii * flat
    reach = np.stack([z_radii, radii, radii], axis=1) + canvas.voxel
    got = canvas.box((centres - reach).min(axis=0) - pad, (centres + reach).max(axis=0) + pad)
    if got is None:
        return None
    slices, (zc, yc, xc) = got
    voxel = canvas.voxel
    occupancy = None
    intensity = None
    weights = np.ones(len(spheres)) if weights is None else np.asarray(weights)
    inv_flat = 1.0 / float(flat)
    for k in range(len(spheres)):
        cz, cy, cx, radius = (float(x) for x in spheres[k, :4])
        # Distance in a space where the blob is a sphere; its gradient maps it back to µm.
        dz = (zc - cz) * inv_flat if not canvas.is_2d else np.zeros((1, 1, 1), dtype=np.float32)
        dy = yc - cy
        dx = xc - cx
        dist = np.sqrt(dz * dz + dy * dy + dx * dx)
        inv = 1.0 / np.maximum(dist, np.float32(1e-6))
        gz, gy, gx = dz * (inv * inv_flat), dy * inv, dx * inv
        grad = np.maximum(np.sqrt(gz * gz + gy * gy + gx * gx), np.float32(1e-3))
        inv_grad = 1.0 / grad
        occ = _occupancy_from_distance((dist - radius) * inv_grad, (gz * inv_grad, gy * inv_grad, gx * inv_grad), voxel)
        value = occ * np.float32(weights[k])
        if canvas.is_2d:
            value = value * (0.35 + 0.65 * np.sqrt(np.clip(1.0 - np.square(dist * (1.0 / radius)), 0.0, 1.0)))
        if occupancy is None:
            occupancy, intensity = occ, value.astype(np.float32, copy=False)
        else:
            occupancy = np.maximum(occupancy, occ)
            intensity = np.maximum(intensity, value)
    return slices, occupancy, intensity


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (a chromatin-like texture)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndi.gaussian_filter(noise, [s if n > 1 else 0 for s, n in zip(sigma_vox, shape)], truncate=2.5)
    std = float(smooth.std())
    return smooth / std if std > 1e-6 else smooth


def _render_nucleus(canvas: _Canvas, nucleus: _Nucleus, rng: np.random.Generator, subvoxel: bool = False):
    """Textured ellipsoid (or real shape) with a brighter rim, chromocentres and nucleoli.

    ``subvoxel``: a real shape is placed to a fraction of a voxel (see :func:`_render_mask_object`).
    """
    if nucleus.shape_mask is not None:
        rendered = _render_mask_object(canvas, nucleus.shape_mask, nucleus.centre, rng, rim=0.3, texture=0.28,
                                       subvoxel=subvoxel)
        if rendered is None:
            return None
        slices, occupancy, intensity = rendered
        intensity = _add_spots(canvas, intensity, slices, nucleus.spots, nucleus.spot_gain, nucleus.nucleoli, occupancy)
        np.maximum(intensity, 0.0, out=intensity)
        intensity *= np.float32(nucleus.brightness)
        return slices, occupancy, intensity
    a, b, c = (float(x) for x in nucleus.semi_axes)
    rot = nucleus.rotation.tolist()  # python floats keep the box arithmetic in float32
    # Axis-aligned bounds of the rotated ellipse (+20 % for the outline harmonics, + 2 voxels).
    ca, sa = math.cos(nucleus.angle), math.sin(nucleus.angle)
    pad_xy = 2.0 * float(canvas.voxel[1:].max())
    half_x = 1.2 * math.hypot(a * ca, b * sa) + pad_xy
    half_y = 1.2 * math.hypot(a * sa, b * ca) + pad_xy
    bound_z = 0.0 if canvas.is_2d else c * 1.2 + (abs(rot[2][1]) + abs(rot[2][2])) * a + 2.0 * canvas.voxel[0]
    half = np.array([bound_z, half_y, half_x])
    got = canvas.box(nucleus.centre - half, nucleus.centre + half)
    if got is None:
        return None
    slices, (zc, yc, xc) = got
    cz, cy, cx = (float(x) for x in nucleus.centre)
    dz, dy, dx = zc - cz, yc - cy, xc - cx
    # Local coordinates along (major, minor, thickness), each scaled by its semi-axis.
    u = (rot[0][0] * dz + rot[0][1] * dy + rot[0][2] * dx) * (1.0 / a)
    v = (rot[1][0] * dz + rot[1][1] * dy + rot[1][2] * dx) * (1.0 / b)
    if canvas.is_2d:
        w = np.zeros((1, 1, 1), dtype=np.float32)
        inv_c = 0.0
    else:
        w = (rot[2][0] * dz + rot[2][1] * dy + rot[2][2] * dx) * (1.0 / c)
        inv_c = 1.0 / c
    r = np.sqrt(u * u + v * v + w * w)
    inv_r = 1.0 / np.maximum(r, np.float32(1e-6))
    # Smooth, irregular outline: a few low angular harmonics modulate the radius.
    phi = np.arctan2(v, u)
    modulation = np.ones_like(phi)
    for k, amp, phase in nucleus.harmonics.tolist():
        modulation += np.float32(amp) * np.cos(np.float32(k) * phi + np.float32(phase))
    r_eff = r / modulation
    # The gradient of r (local frame) gives the distance scale and the surface normal in world axes.
    gu, gv, gw = u * (inv_r / a), v * (inv_r / b), w * (inv_r * inv_c)
    grad = np.maximum(np.sqrt(gu * gu + gv * gv + gw * gw), np.float32(1e-6))
    inv_grad = 1.0 / grad
    normal = tuple((rot[0][i] * gu + rot[1][i] * gv + rot[2][i] * gw) * inv_grad for i in range(3))
    signed = (r_eff - 1.0) * inv_grad
    occupancy = _occupancy_from_distance(signed, normal, canvas.voxel)
    texture = _smooth_noise(rng, occupancy.shape, 0.5 / canvas.voxel)
    depth = np.maximum(-signed, 0.0)
    rim = 1.0 + 0.3 * np.exp(-np.square(depth * (1.0 / 0.7)))
    intensity = occupancy * (1.0 + 0.28 * texture) * rim
    if canvas.is_2d:
        intensity *= 0.35 + 0.65 * np.sqrt(np.clip(1.0 - r_eff * r_eff, 0.0, 1.0))
    intensity = _add_spots(canvas, intensity, slices, nucleus.spots, nucleus.spot_gain, nucleus.nucleoli, occupancy)
    np.maximum(intensity, 0.0, out=intensity)
    intensity *= np.float32(nucleus.brightness)
    return slices, occupancy, intensity.astype(np.float32, copy=False)


def _add_spots(canvas, intensity, slices, spots, gains, nucleoli, occupancy):
    """Add chromocentres (brighter) and nucleoli (darker), each only within its own small sub-box."""
    origin = np.array([s.start for s in slices])
    box_shape = np.asarray(intensity.shape)
    voxel = canvas.voxel
    for group, is_bright in ((spots, True), (nucleoli, False)):
        for k in range(len(group)):
            centre = group[k, :3]
            sigma = group[k, 3] / 1.2
            reach = 2.5 * sigma
            lo = np.ceil((centre - reach) / voxel - 0.5).astype(int) - origin
            hi = np.floor((centre + reach) / voxel - 0.5).astype(int) - origin + 1
            if canvas.is_2d:
                lo[0], hi[0] = 0, 1
            lo = np.maximum(lo, 0)
            hi = np.minimum(hi, box_shape)
            if np.any(hi <= lo):
                continue
            sub = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
            zc, yc, xc = (
                ((np.arange(lo[i], hi[i]) + origin[i] + 0.5) * voxel[i] - centre[i]).reshape(
                    [-1 if j == i else 1 for j in range(3)]
                )
                for i in range(3)
            )
            d2 = (yc * yc + xc * xc) if canvas.is_2d else (zc * zc + yc * yc + xc * xc)
            bump = np.exp(-d2 / (2.0 * sigma * sigma)).astype(np.float32)
            if is_bright:
                intensity[sub] += np.float32(gains[k]) * bump * occupancy[sub]
            else:
                intensity[sub] *= 1.0 - np.float32(0.35) * bump
    return intensity


def _render_mask_object(
    canvas: _Canvas,
    mask: np.ndarray,
    centre_um: np.ndarray,
    rng: np.random.Generator,
    rim: float,
    texture: float,
    subvoxel: bool = False,
):
    """Resample a soft real-shape mask to the canvas voxel size and place its centroid at ``centre_um``.

    The placement is rounded to whole voxels unless ``subvoxel``, which shifts the resampled mask by the
    remaining fraction (linear interpolation, so its centroid lands on ``centre_um``).
    """
    voxel = canvas.voxel
    src = np.asarray(canvas.shapes_voxel, dtype=np.float64)
    if canvas.is_2d:
        factors = (1.0, src[1] / voxel[1], src[2] / voxel[2])
    else:
        factors = tuple(src / voxel)
    resampled = ndi.zoom(mask, factors, order=1, mode="grid-constant", grid_mode=True, prefilter=False)
    # Re-sharpen around the 0.5 level: the edge ramps over about one target voxel.
    occ = np.clip((resampled - 0.5) * 2.5 + 0.5, 0.0, 1.0).astype(np.float32)
    if canvas.is_2d:
        thickness = occ.sum(axis=0, keepdims=True)
        peak = float(thickness.max())
        if peak <= 0:
            return None
        occ = occ.max(axis=0, keepdims=True)
        profile = 0.35 + 0.65 * thickness / peak
    else:
        profile = None
    total = float(occ.sum())
    if total <= 0:
        return None
    local_centroid = np.array(ndi.center_of_mass(occ))
    target = centre_um / voxel - 0.5
    if canvas.is_2d:
        target[0] = 0.0
        local_centroid[0] = 0.0
    start = np.round(target - local_centroid).astype(int)
    if subvoxel:
        fraction = target - local_centroid - start
        pad = [(0, 0) if canvas.is_2d and axis == 0 else (1, 1) for axis in range(3)]
        occ = ndi.shift(np.pad(occ, pad), fraction, order=1, mode="constant", prefilter=False)
        if profile is not None:
            profile = ndi.shift(np.pad(profile, pad), fraction, order=1, mode="nearest", prefilter=False)
        start = start - np.array([p[0] for p in pad])
    stop = start + np.asarray(occ.shape)
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, np.asarray(canvas.shape))
    if np.any(hi <= lo):
        return None
    crop = tuple(slice(int(l - s), int(h - s)) for l, h, s in zip(lo, hi, start))
    slices = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    occupancy = np.ascontiguousarray(occ[crop])
    sigma = 0.5 / voxel
    tex = _smooth_noise(rng, occupancy.shape, sigma)
    blurred = ndi.gaussian_filter(occupancy, [0 if n == 1 else s for s, n in zip(0.7 / voxel, occupancy.shape)])
    rim_term = 1.0 + rim * 2.0 * np.clip(occupancy - blurred, 0.0, 1.0)
    intensity = occupancy * (1.0 + texture * tex) * rim_term
    if profile is not None:
        intensity = intensity * profile[crop]
    return slices, occupancy, np.clip(intensity, 0.0, None).astype(np.float32)


def _render_capsule_chain(canvas: _Canvas, target: np.ndarray, points: np.ndarray, radius: float, brightness: float):
    """Render a tube (vessel) along a polyline as capsules, combined by maximum into ``target``."""
    voxel = canvas.voxel
    reach = np.array([0.0 if canvas.is_2d else radius, radius, radius]) + 2.0 * voxel
    for i in range(0, len(points) - 1, 2):
        a = points[i]
        b = points[min(i + 2, len(points) - 1)]
        got = canvas.box(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if got is None:
            continue
        slices, (zc, yc, xc) = got
        sz, sy, sx = (float(x) for x in (b - a))
        inv_len2 = 1.0 / max(sz * sz + sy * sy + sx * sx, 1e-9)
        pz = zc - float(a[0]) if not canvas.is_2d else np.zeros((1, 1, 1), dtype=np.float32)
        py = yc - float(a[1])
        px = xc - float(a[2])
        t = np.clip((pz * sz + py * sy + px * sx) * inv_len2, 0.0, 1.0)
        qz, qy, qx = pz - t * sz, py - t * sy, px - t * sx
        dist = np.sqrt(qz * qz + qy * qy + qx * qx)
        inv = 1.0 / np.maximum(dist, np.float32(1e-6))
        occ = _occupancy_from_distance(dist - radius, (qz * inv, qy * inv, qx * inv), voxel)
        rel = np.clip(dist * (1.0 / radius), 0.0, 1.0)
        if canvas.is_2d:
            wall = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - rel * rel, 0.0, 1.0))
        else:
            wall = 0.55 + 0.45 * rel * rel  # stained wall brighter than the lumen
        value = occ * wall * np.float32(brightness)
        np.maximum(target[slices], value, out=target[slices])


def _render_cytoplasm(cfg: SimConfig, scene: "_Scene") -> Optional[np.ndarray]:
    """Faint, smooth Golgi-marker signal filling each cell around its nucleus and Golgi.

    Rendered as anisotropic Gaussians on a grid about 2 µm coarse (it has no fine detail) and
    interpolated back, so it costs a few tens of milliseconds for a whole volume.
    """
    if cfg.cytoplasm_level <= 0 or not scene.nuclei:
        return None
    shape = np.asarray(cfg.shape)
    voxel = np.asarray(cfg.voxel_size)
    factors = np.maximum(1, np.round(np.array([1.0, 2.0, 2.0]) / voxel)).astype(int)
    factors = np.minimum(factors, shape)
    coarse_shape = [int(math.ceil(n / f)) for n, f in zip(shape, factors)]
    axes_um = [((np.arange(c) + 0.5) * f * v) for c, f, v in zip(coarse_shape, factors, voxel)]
    zc = axes_um[0].reshape(-1, 1, 1)
    yc = axes_um[1].reshape(1, -1, 1)
    xc = axes_um[2].reshape(1, 1, -1)
    coarse = np.zeros(coarse_shape, dtype=np.float64)
    for nucleus, golgi in zip(scene.nuclei, scene.golgi):
        a, b, c = nucleus.semi_axes
        centre = nucleus.centre.copy()
        if golgi is not None:
            centre = centre + 0.35 * (golgi.centre - centre)
        ca, sa = math.cos(nucleus.angle), math.sin(nucleus.angle)
        dy, dx = yc - centre[1], xc - centre[2]
        along = (dy * sa + dx * ca) / (1.0 * a)
        across = (dy * ca - dx * sa) / (1.2 * b)
        planar = np.exp(-0.5 * (along * along + across * across))
        if cfg.is_2d:
            blob = planar
        else:
            blob = planar * np.exp(-0.5 * ((zc - centre[0]) / (0.9 * c)) ** 2)
        coarse += nucleus.brightness * blob
    coarse *= cfg.cytoplasm_level
    mz, my, mx = (_upsample_matrix(n, c, f) for n, c, f in zip(shape, coarse_shape, factors))
    out = np.tensordot(coarse.astype(np.float32), mx, axes=(2, 1))
    out = np.tensordot(my, out, axes=(1, 1))
    out = np.tensordot(mz, out, axes=(1, 1))
    return np.ascontiguousarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Optics and camera
# ----------------------------------------------------------------------------------------------
def _upsample_matrix(n_fine: int, n_coarse: int, factor: int) -> np.ndarray:
    """Linear interpolation weights (n_fine × n_coarse) from block centres back to fine voxel centres."""
    position = np.clip((np.arange(n_fine) + 0.5) / factor - 0.5, 0.0, n_coarse - 1.0)
    left = np.minimum(np.floor(position).astype(int), max(n_coarse - 2, 0))
    frac = position - left
    matrix = np.zeros((n_fine, n_coarse), dtype=np.float32)
    rows = np.arange(n_fine)
    matrix[rows, left] += (1.0 - frac).astype(np.float32)
    if n_coarse > 1:
        matrix[rows, left + 1] += frac.astype(np.float32)
    else:
        matrix[rows, left] += frac.astype(np.float32)
    return matrix


def _coarse_blur(image: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """A broad Gaussian blur computed on a block-averaged grid and interpolated back (haze).

    Block-averaging by about sigma / 1.5 keeps the result smooth while the filter runs on a grid tens of
    times smaller; separable linear interpolation (three small matrix products) brings it back.
    """
    factors = np.maximum(1, np.floor(np.asarray(sigma_vox) / 1.5)).astype(int)
    factors = np.minimum(factors, np.asarray(image.shape))
    # Whole blocks only; the few voxels past the last whole block take its value (clamped below).
    blocks = [n // f for n, f in zip(image.shape, factors)]
    used = image[: blocks[0] * factors[0], : blocks[1] * factors[1], : blocks[2] * factors[2]]
    coarse = used.reshape(blocks[0], factors[0], blocks[1], factors[1], blocks[2], factors[2]).mean(
        axis=(1, 3, 5), dtype=np.float32
    )
    sigma_coarse = [s / f if n > 1 else 0 for s, f, n in zip(sigma_vox, factors, coarse.shape)]
    coarse = ndi.gaussian_filter(coarse, sigma_coarse, mode="nearest", truncate=3.0)
    mz, my, mx = (_upsample_matrix(n, c, f) for n, c, f in zip(image.shape, coarse.shape, factors))
    # tensordot reshapes to 2D BLAS products; a stacked ``@`` takes a slow generic loop here.
    out = np.tensordot(coarse, mx, axes=(2, 1))  # (cz, cy, X)
    out = np.tensordot(my, out, axes=(1, 1))  # (Y, cz, X)
    out = np.tensordot(mz, out, axes=(1, 1))  # (Z, Y, X)
    return np.ascontiguousarray(out, dtype=np.float32)


#: Noise is drawn in z-slabs of about this many voxels (bounded memory, cache-friendly).
_NOISE_CHUNK_VOXELS = 1 << 18

#: Below this many expected photons a voxel's count is drawn from the exact Poisson table.
_POISSON_EXACT_BELOW = 20.0
_POISSON_STEP = 0.05
_POISSON_LEVELS = 4096


@functools.lru_cache(maxsize=1)
def _poisson_table() -> np.ndarray:
    """Inverse-CDF table: ``table[round(λ / step), j]`` = Poisson(λ) count at quantile ``(j + ½) / levels``."""
    lams = np.arange(int(round(_POISSON_EXACT_BELOW / _POISSON_STEP)) + 1) * _POISSON_STEP
    ks = np.arange(0, int(_POISSON_EXACT_BELOW + 12.0 * math.sqrt(_POISSON_EXACT_BELOW) + 12))
    log_factorial = np.array([math.lgamma(k + 1.0) for k in ks])
    safe_log = np.log(np.maximum(lams, 1e-300))
    log_pmf = ks[None, :] * safe_log[:, None] - lams[:, None] - log_factorial[None, :]
    log_pmf[0, :] = -np.inf
    log_pmf[0, 0] = 0.0  # λ = 0: all mass at 0
    cdf = np.cumsum(np.exp(log_pmf), axis=1)
    u = (np.arange(_POISSON_LEVELS) + 0.5) / _POISSON_LEVELS
    table = np.empty((len(lams), _POISSON_LEVELS), dtype=np.uint8)
    for i in range(len(lams)):
        table[i] = np.minimum(np.searchsorted(cdf[i], u, side="right"), len(ks) - 1)
    return table


def _detect(rng: np.random.Generator, photons: np.ndarray, read_noise: float) -> np.ndarray:
    """Photo-electrons with Poisson shot noise plus Gaussian read noise, float32.

    Below 20 expected photons the count comes from an inverse-CDF table (λ rounded to 0.05 photons,
    quantiles resolved to 1/4096), which matches ``rng.poisson`` within those resolutions and runs
    about three times faster; above, the normal approximation with the same mean and variance is used.
    One normal draw serves as read noise (low branch) or as combined shot + read noise (high branch).
    """
    table = _poisson_table()
    levels = table.shape[1]
    normal = rng.standard_normal(photons.shape, dtype=np.float32)
    high = np.sqrt(photons + np.float32(read_noise * read_noise))
    high *= normal
    high += photons
    index = photons * np.float32(1.0 / _POISSON_STEP)
    index += np.float32(0.5)
    np.minimum(index, np.float32(table.shape[0] - 1), out=index)
    rows = index.astype(np.int32)
    rows *= levels
    rows += rng.integers(0, levels, size=photons.shape, dtype=np.int32)
    low = table.reshape(-1)[rows].astype(np.float32)
    normal *= np.float32(read_noise)
    low += normal
    np.copyto(high, low, where=photons < np.float32(_POISSON_EXACT_BELOW))
    return high


def _camera(cfg: SimConfig, rng: np.random.Generator, photons: np.ndarray) -> np.ndarray:
    """Photons → digital numbers: shot and read noise, gain, offset; rounded and cast to the output dtype."""
    electrons = _detect(rng, photons, cfg.read_noise_e) if cfg.noise else photons
    scale = cfg.gain_adu_per_e
    offset = cfg.offset_adu
    top = 65535.0
    if cfg.dtype == "uint8":
        scale, offset, top = scale / 16.0, offset / 16.0, 255.0
    electrons *= np.float32(scale)
    electrons += np.float32(offset + 0.5)  # + 0.5 and truncation = rounding for the non-negative values
    np.clip(electrons, 0.0, top, out=electrons)
    return electrons.astype(np.uint8 if cfg.dtype == "uint8" else np.uint16)


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------
def available_memory_bytes() -> Optional[int]:
    """Memory this process can still get, in bytes, or ``None`` where it cannot be told.

    Linux: ``MemAvailable`` of ``/proc/meminfo`` (free memory plus caches the kernel can drop), lowered to
    what a cgroup v2 memory limit (a container) and an address-space limit (``ulimit -v``) leave. Other
    POSIX systems: the physical memory. Windows: the available physical memory.
    """
    limits: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            with open("/proc/self/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
                        break
            limits.append(soft - used)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    if not limits:
        try:
            limits.append(int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE")))
        except (AttributeError, ValueError, OSError):
            pass
    if not limits and os.name == "nt":  # pragma: no cover - Windows only
        import ctypes

        class _MemoryStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = _MemoryStatus()
        status.dwLength = ctypes.sizeof(_MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            limits.append(int(status.ullAvailPhys))
    return max(0, min(limits)) if limits else None


def simulation_memory_bytes(shape: Sequence[int]) -> int:
    """About how much memory :func:`simulate` needs at its peak for a volume of ``shape`` ``(Z, Y, X)``."""
    return math.prod(int(n) for n in shape) * SIMULATE_BYTES_PER_VOXEL


def check_simulation_memory(shape: Sequence[int], available: Optional[int] = None) -> None:
    """Refuse, before anything is allocated, a volume that does not fit in the memory available.

    Parameters
    ----------
    shape : sequence of 3 int
        ``(Z, Y, X)`` of the volume.
    available : int, optional
        Bytes available; default :func:`available_memory_bytes` (no check where that is unknown).

    Raises
    ------
    CellPolError
        The volume needs more memory than is available; the message says how much each needs.
    """
    available = available_memory_bytes() if available is None else available
    needed = simulation_memory_bytes(shape)
    if available is None or needed <= available:
        return
    fits = available // SIMULATE_BYTES_PER_VOXEL
    raise CellPolError(
        f"Simulating a volume of {' × '.join(str(int(n)) for n in shape)} voxels (Z × Y × X) needs about "
        f"{_bytes_text(needed)} of memory ({SIMULATE_BYTES_PER_VOXEL} bytes per voxel while it is made), but "
        f"only {_bytes_text(available)} is available to this program now. Use a smaller shape: about "
        f"{fits / 1e6:.3g} million voxels fit (64 × 256 × 256 is 4.2 million)."
    )


def _bytes_text(n_bytes: float) -> str:
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def simulate(config: Optional[SimConfig] = None, **overrides: Any) -> tuple[Volume, PairSet]:
    """Simulate one two-channel volume and its ground-truth nucleus→Golgi pairs.

    Parameters
    ----------
    config : SimConfig, optional
        What to simulate; default ``SimConfig()`` (confocal, 64×256×256).
    **overrides
        Any :class:`SimConfig` field, applied on top of ``config``.

    Returns
    -------
    volume : Volume
        ``(2, Z, Y, X)`` uint16 (or uint8); channel 0 "nuclei", channel 1 "golgi"; ``metadata`` holds the
        resolved config under ``"config"``.
    pairs : PairSet
        One pair per cell whose nucleus centre and Golgi lie in the volume: the occupancy-weighted
        centroids (voxels ``(z, y, x)``) of the nucleus and Golgi as rendered and visible, i.e. where an
        annotator would click. With ``layout_um`` set, exactly the given pairs (each object rendered with
        its centroid on its point; ``meta["scene"]["layout_max_centroid_error_um"]`` says how closely).
        ``sources = "simulated"``; ``meta`` has the config and ``image_shape_zyx``.

    Raises
    ------
    CellPolError
        Invalid configuration, unreadable shapes folder, or a volume too large for the memory available
        (:func:`check_simulation_memory`, checked before anything is drawn or allocated).

    Notes
    -----
    Deterministic for a given config (seed included). The scene (positions, sizes, orientations) is
    drawn in µm from its own random stream, so the same seed at another voxel size with the same
    physical extent gives the same cells; only texture and noise differ.
    """
    cfg = (config if config is not None else SimConfig()).replace(**overrides).resolved()
    check_simulation_memory(cfg.shape)
    seed_seq = np.random.SeedSequence(int(cfg.seed))
    scene_seq, render_seq, noise_seq = seed_seq.spawn(3)
    scene = _sample_scene(cfg, np.random.default_rng(scene_seq))
    render_rng = np.random.default_rng(render_seq)

    shape = cfg.shape
    voxel = np.asarray(cfg.voxel_size)
    is_2d = cfg.is_2d
    canvas = _Canvas(shape, cfg.voxel_size, is_2d, cfg.shapes_voxel_size)
    extent = np.asarray(shape) * voxel  # field of view, µm

    # Distractors first. Objects combine by maximum (two solid objects never share a voxel); specks and
    # fragments add.
    for points, radius, brightness in scene.vessels:
        _render_capsule_chain(canvas, canvas.golgi, points, radius, brightness)
    if len(scene.dirt):
        for row in scene.dirt:
            got = _render_spheres(canvas, row[None, :4])
            if got is not None:
                slices, _occ, value = got
                canvas.golgi[slices] += value * np.float32(row[4])
                canvas.nuclei[slices] += value * np.float32(0.3 * row[4] * (row[4] > 4.5))
    for spheres, brightness in scene.fragments:
        got = _render_spheres(canvas, spheres, flat=0.8)
        if got is not None:
            slices, _occ, value = got
            canvas.nuclei[slices] += value * np.float32(brightness)

    nuclei_gt, golgi_gt = [], []
    dropped = {"nucleus_outside": 0, "golgi_missing": 0, "golgi_outside": 0, "too_long": 0}
    if cfg.layout_um is not None:
        nuclei_gt, golgi_gt, layout_error = _render_layout_cells(cfg, canvas, scene, render_rng)
    random_cells = zip(scene.nuclei, scene.golgi) if cfg.layout_um is None else ()
    for nucleus, golgi in random_cells:
        rendered = _render_nucleus(canvas, nucleus, render_rng)
        nucleus_centroid = None
        if rendered is not None:
            slices, occupancy, intensity = rendered
            # Nuclei cannot interpenetrate: where two touch, the brighter one is what you see.
            np.maximum(canvas.nuclei[slices], intensity, out=canvas.nuclei[slices])
            nucleus_centroid = canvas.centroid(slices, occupancy)
        golgi_centroid = None
        golgi_inside = False
        if golgi is not None:
            if golgi.shape_mask is not None:
                rendered_g = _render_mask_object(canvas, golgi.shape_mask, golgi.centre, render_rng, 0.0, 0.25)
            else:
                rendered_g = _render_spheres(canvas, golgi.spheres, golgi.flat, golgi.weights)
            if rendered_g is not None:
                slices, occupancy, intensity = rendered_g
                _composite_golgi(canvas, golgi, slices, intensity, render_rng)
                golgi_centroid = canvas.centroid(slices, occupancy)
            golgi_inside = bool(np.all(golgi.centre >= -1e-9) and np.all(golgi.centre <= extent + 1e-9))
        centre = nucleus.centre
        if not (np.all(centre >= -1e-9) and np.all(centre <= extent + 1e-9)) or nucleus_centroid is None:
            dropped["nucleus_outside"] += 1
            continue
        if golgi is None or golgi_centroid is None:
            dropped["golgi_missing"] += 1
            continue
        if not golgi_inside:
            dropped["golgi_outside"] += 1
            continue
        length = float(np.linalg.norm((golgi_centroid - nucleus_centroid) * voxel))
        if not 0.0 < length <= MAX_PAIR_LENGTH_UM:
            dropped["too_long"] += 1
            continue
        nuclei_gt.append(nucleus_centroid)
        golgi_gt.append(golgi_centroid)

    cytoplasm = _render_cytoplasm(cfg, scene)
    if cytoplasm is not None:
        canvas.golgi += cytoplasm

    # Illumination: smooth lateral field × attenuation with depth, applied to the emitted signal.
    y_um = ((np.arange(shape[1]) + 0.5) * voxel[1]).reshape(-1, 1)
    x_um = ((np.arange(shape[2]) + 0.5) * voxel[2]).reshape(1, -1)
    lateral = (1.0 - cfg.illumination_variation * scene.illumination(y_um, x_um)).astype(np.float32)
    z_um = (np.arange(shape[0]) + 0.5) * voxel[0]
    if cfg.depth_attenuation_um > 0 and not is_2d:
        depth = np.exp(-z_um / cfg.depth_attenuation_um).astype(np.float32)
    else:
        depth = np.ones(shape[0], dtype=np.float32)
    bg_lateral = (0.6 + 0.8 * scene.background(y_um, x_um)).astype(np.float32)
    if is_2d:
        bg_depth = np.ones(1, dtype=np.float32)
    else:
        bg_depth = (0.7 + 0.3 * np.exp(-(((z_um - scene.layer_mid_um) / 8.0) ** 2))).astype(np.float32)
    bg_depth *= np.float32(cfg.photons_background)

    psf = np.asarray(cfg.psf_sigma_um) / voxel
    haze_sigma = np.asarray(cfg.haze_sigma_um) / voxel
    if is_2d:
        psf[0] = 0.0
        haze_sigma[0] = 0.0
    noise_rng = np.random.default_rng(noise_seq)
    channels = []
    for signal, photons in ((canvas.nuclei, cfg.photons_nucleus), (canvas.golgi, cfg.photons_golgi)):
        # Emission × excitation: photons per voxel, dimmer deeper and towards the field's dim regions.
        signal *= (depth * np.float32(photons))[:, None, None]
        signal *= lateral[None, :, :]
        blurred = ndi.gaussian_filter(signal, psf, truncate=3.0, mode="nearest")
        if cfg.haze > 0:
            haze = _coarse_blur(signal, haze_sigma)
            haze *= np.float32(cfg.haze)
            blurred += haze
        # Background and camera slab by slab: bounded temporaries for large volumes.
        out = np.empty(shape, dtype=np.uint8 if cfg.dtype == "uint8" else np.uint16)
        step = max(1, _NOISE_CHUNK_VOXELS // (shape[1] * shape[2]))
        for z0 in range(0, shape[0], step):
            slab = blurred[z0 : z0 + step]
            slab += bg_depth[z0 : z0 + step, None, None] * bg_lateral[None, :, :]
            out[z0 : z0 + step] = _camera(cfg, noise_rng, slab)
        channels.append(out)
    data = np.stack(channels)

    config_dict = cfg.to_dict()
    counts = {
        "n_cells": len(scene.nuclei),
        "n_cells_requested_in_field": scene.n_requested,
        "n_pairs": len(nuclei_gt),
        "n_vessels": len(scene.vessels),
        "n_dirt": int(len(scene.dirt)),
        "n_fragments": len(scene.fragments),
        "dropped": dropped,
    }
    if cfg.layout_um is not None:
        counts["layout_max_centroid_error_um"] = layout_error
    volume = Volume(
        data,
        voxel_size=cfg.voxel_size,
        channel_names=("nuclei", "golgi"),
        nucleus_channel=0,
        golgi_channel=1,
        source=None,
        metadata={"generator": GENERATOR, "simulated": True, "config": config_dict, "scene": counts},
    )
    pairs = PairSet(
        np.array(nuclei_gt).reshape(-1, 3),
        np.array(golgi_gt).reshape(-1, 3),
        voxel_size=cfg.voxel_size,
        sources="simulated",
        meta={"generator": GENERATOR, "config": config_dict, "image_shape_zyx": list(shape), "scene": counts},
    )
    return volume, pairs


def _composite_golgi(canvas: _Canvas, golgi: _Golgi, slices, intensity: np.ndarray, rng: np.random.Generator) -> None:
    """Texture (blob Golgi only) and brighten a rendered Golgi, then combine it into the Golgi channel by maximum."""
    if golgi.shape_mask is None:
        tex = _smooth_noise(rng, intensity.shape, 0.4 / canvas.voxel)
        intensity = intensity * np.clip(1.0 + 0.2 * tex, 0.3, None)
    intensity *= np.float32(golgi.brightness)
    np.maximum(canvas.golgi[slices], intensity, out=canvas.golgi[slices])


def _render_centred(canvas: _Canvas, render, target_vox: np.ndarray, seed: int, tolerance_um: float = 0.002):
    """Render an object so that its occupancy-weighted centroid lies on ``target_vox``.

    ``render(offset_um, rng)`` renders the object moved by ``offset_um``; it is re-rendered with the moved
    offset (and a fresh generator from ``seed``, so its texture does not change) until the centroid is
    within ``tolerance_um`` or four tries are spent.

    Returns
    -------
    rendered : tuple or None
        ``(slices, occupancy, intensity)`` of the last try, ``None`` if the object is not visible.
    error_um : float
        Distance from the rendered centroid to the target (``inf`` when not visible).
    """
    offset = np.zeros(3)
    rendered, error = None, math.inf
    for _try in range(4):
        rendered = render(offset, np.random.default_rng(seed))
        if rendered is None:
            return None, math.inf
        centroid = canvas.centroid(rendered[0], rendered[1])
        if centroid is None:
            return None, math.inf
        miss = (target_vox - centroid) * canvas.voxel
        if canvas.is_2d:
            miss[0] = 0.0
        error = float(np.linalg.norm(miss))
        if error <= tolerance_um:
            break
        offset = offset + miss
    return rendered, error


def _render_layout_cells(
    cfg: SimConfig, canvas: _Canvas, scene: _Scene, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Render the cells of a given layout, each object centred on its point; returns the layout as ground
    truth (voxels) and the largest distance (µm) of a rendered centroid from its point."""
    voxel = canvas.voxel
    nuclei_gt = [np.asarray(p, dtype=np.float64) / voxel for p in cfg.layout_um[0]]
    golgi_gt = [np.asarray(p, dtype=np.float64) / voxel for p in cfg.layout_um[1]]
    worst = 0.0

    def moved_nucleus(nucleus: _Nucleus, offset: np.ndarray) -> _Nucleus:
        spots, nucleoli = nucleus.spots.copy(), nucleus.nucleoli.copy()
        spots[:, :3] += offset
        nucleoli[:, :3] += offset
        return dataclasses.replace(nucleus, centre=nucleus.centre + offset, spots=spots, nucleoli=nucleoli)

    for nucleus, golgi, target_n, target_g in zip(scene.nuclei, scene.golgi, nuclei_gt, golgi_gt):
        def render_n(offset, gen, nucleus=nucleus):
            return _render_nucleus(canvas, moved_nucleus(nucleus, offset), gen, subvoxel=True)
        rendered, error = _render_centred(canvas, render_n, target_n, int(rng.integers(2**63)))
        worst = max(worst, error)
        if rendered is not None:
            slices, _occupancy, intensity = rendered
            np.maximum(canvas.nuclei[slices], intensity, out=canvas.nuclei[slices])

        if golgi.shape_mask is not None:
            def render_g(offset, gen, golgi=golgi):
                return _render_mask_object(canvas, golgi.shape_mask, golgi.centre + offset, gen, 0.0, 0.25,
                                           subvoxel=True)
        else:
            def render_g(offset, gen, golgi=golgi):
                spheres = golgi.spheres.copy()
                spheres[:, :3] += offset
                return _render_spheres(canvas, spheres, golgi.flat, golgi.weights)
        rendered, error = _render_centred(canvas, render_g, target_g, int(rng.integers(2**63)))
        worst = max(worst, error)
        if rendered is not None:
            _composite_golgi(canvas, golgi, rendered[0], rendered[2], rng)
    return nuclei_gt, golgi_gt, worst


def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a dataset made with ``seed`` (reproducible one item at a time)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def synthesize_dataset(
    out_dir: str | os.PathLike,
    n: int,
    shape: tuple[int, int, int] = (64, 256, 256),
    voxel_size: Optional[Sequence[float]] = None,
    preset: str = "confocal",
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    start_index: int = 0,
    vary_samples: bool = False,
    **overrides: Any,
) -> list[Path]:
    """Write ``n`` simulated volumes with their ground-truth vectors.

    For item ``k`` this writes ``synth_kkkk.tif`` (ImageJ hyperstack ZCYX, voxel size in the metadata),
    ``synth_kkkk.vectors.csv`` and its sidecar ``synth_kkkk.vectors.json`` (provenance: image name,
    ``image_shape_zyx``, generator, config, dataset seed and index).

    Parameters
    ----------
    out_dir : path
        Output folder (created if needed).
    n : int
        Number of volumes.
    shape : tuple of int
        ``(Z, Y, X)`` of each volume; ``Z = 1`` for 2D.
    voxel_size : tuple of float, optional
        ``(z, y, x)`` µm; default from the preset.
    preset : str
        Key of :data:`PRESETS`.
    seed : int
        Dataset seed; item ``k`` uses :func:`item_seed` ``(seed, k)`` so any item can be regenerated alone.
    progress : callable, optional
        ``progress(done, total, message)`` after each volume.
    cancel : CancelToken, optional
        Checked before each volume; a cancelled run raises :class:`~app.core.errors.CancelledError`
        and leaves the completed items on disk.
    start_index : int
        Index of the first item (to extend an existing dataset).
    vary_samples : bool
        Each item draws its density, distractors, stain brightness and optics from
        :data:`SAMPLE_VARIATION` and :data:`SAMPLE_SCALES` (reproducibly from its own seed); options given in
        ``overrides`` win.
    **overrides
        Further :class:`SimConfig` fields.

    Returns
    -------
    list of Path
        The TIFF paths; each one's vectors are ``<stem>.vectors.csv`` beside it.

    Raises
    ------
    CellPolError
        Invalid options, or volumes too large for the memory available (checked before anything is written).
    """
    from app.core.imageio import write_imagej_tiff

    if int(n) < 0:
        raise CellPolError(f"The number of volumes must be >= 0, got {n}.")
    base = SimConfig(shape=tuple(shape), voxel_size=None if voxel_size is None else tuple(voxel_size), preset=preset)
    base = base.replace(**overrides)
    check_simulation_memory(base.resolved().shape)  # fail early, before writing anything
    out = Path(out_dir)
    ensure_folder(out)
    clean_stale_temporaries(out)
    paths: list[Path] = []
    total = int(n)
    for k in range(start_index, start_index + total):
        check_cancel(cancel)
        cfg = base.replace(seed=item_seed(seed, k))
        if vary_samples:
            varied = varied_sample_options(np.random.default_rng([item_seed(seed, k), 1]), preset)
            cfg = cfg.replace(**{name: value for name, value in varied.items() if name not in overrides})
        volume, pairs = simulate(cfg)
        stem = f"synth_{k:04d}"
        tif = write_imagej_tiff(out / f"{stem}.tif", volume)
        write_pairs(
            out / f"{stem}.vectors.csv",
            pairs,
            provenance={
                "image": tif.name,
                "image_shape_zyx": list(volume.spatial_shape),
                "generator": GENERATOR,
                "config": volume.metadata["config"],
                "dataset_seed": int(seed),
                "index": int(k),
            },
        )
        paths.append(tif)
        if progress is not None:
            progress(len(paths), total, f"{stem}: {len(pairs)} pairs")
    return paths
