"""Training patches: a pool of prepared volumes (at the model's voxel size) and random crops from it.

Every volume is prepared exactly as the inference engine prepares its input: resampled to the model
voxel size with :func:`app.core.preprocess.resample`, normalised per channel with
:func:`app.core.preprocess.normalize`, pairs mapped with the same coordinate transform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.preprocess import normalize, resample
from app.core.simulate import PRESETS, SimConfig, scene_layout_options, simulate, varied_sample_options
from app.core.volume import Volume


@dataclass
class PreparedVolume:
    """One image at the model voxel size: normalised ``(2, Z, Y, X)`` (nucleus, Golgi) and its pairs."""

    image: np.ndarray
    pairs: PairSet
    name: str = ""


def prepare(volume: Volume, pairs: PairSet, voxel_size: Sequence[float], low: float = 1.0,
            high: float = 99.8, clip: bool = True, name: str = "") -> PreparedVolume:
    """Resample and normalise a volume with its pairs to ``voxel_size`` (nucleus channel first)."""
    volume = volume.with_roles()
    channels = volume.data[[volume.nucleus_channel, volume.golgi_channel]]
    data, mapping = resample(channels, volume.voxel_size, voxel_size)
    image = normalize(data, low, high, clip)
    moved = PairSet(mapping.to_output(pairs.nuclei), mapping.to_output(pairs.golgi),
                    voxel_size=tuple(voxel_size), ids=pairs.ids)
    return PreparedVolume(image, moved, name)


@dataclass
class AugmentConfig:
    """Augmentation probabilities (each applied independently, per patch; 0 switches one off).

    Geometric: flips along y, x (and z), and an in-plane transpose of square patches, which together
    with the flips gives every 90° rotation about the z axis (all 8 in-plane symmetries); pairs move with
    the image. Intensity, per channel: contrast (gain U(0.6, 1.6)) and brightness (offset U(−0.1, 0.1)),
    gamma U(0.7, 1.4) and additive Gaussian noise (σ U(0, 0.08), on the normalised [0, 1] scale).
    Appearance (``appearance``, off by default; the starter's ``--appearance``): the nuisances of other
    microscopes and stains that a simulator's own optics do not vary (:func:`appearance_shift`).
    """

    flip_y: float = 0.5
    flip_x: float = 0.5
    rotate90: float = 0.5  # in-plane rotation by a multiple of 90° (about the z axis)
    flip_z: float = 0.2
    intensity: float = 0.8  # per-channel gain U(0.6, 1.6) and offset U(-0.1, 0.1)
    gamma: float = 0.3  # per-channel gamma U(0.7, 1.4)
    noise: float = 0.3  # additive Gaussian noise, sigma U(0, 0.08)
    appearance: float = 0.0  # other microscopes' and stains' nuisances (appearance_shift)

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise CellPolError(f"The augmentation probability {name} must be between 0 and 1, got {value!r}.")
            setattr(self, name, float(value))

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation at all (validation patches)."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CellPolError(f"Unknown augmentation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**dict(data))


@dataclass
class PatchSampler:
    """Random patches ``(2, Z, Y, X)`` with their pairs in patch coordinates.

    ``foreground_fraction`` of the patches are centred near an annotated nucleus; the rest anywhere
    (background, and cells nobody annotated on a fully annotated image). Volumes smaller than the patch
    are padded with zeros (after normalisation 0 = background). ``weights`` (one per volume, any positive
    scale) set how often each volume is drawn; default: equally often. 2D volumes take a patch shape
    ``(1, Y, X)``.
    """

    volumes: list[PreparedVolume]
    patch_shape: tuple[int, int, int]
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    foreground_fraction: float = 0.8
    weights: Optional[Sequence[float]] = None

    def __post_init__(self) -> None:
        if not self.volumes:
            raise CellPolError("There are no training volumes to draw patches from.")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise CellPolError(f"foreground_fraction must be between 0 and 1, got {self.foreground_fraction}.")
        self.patch_shape = tuple(int(p) for p in self.patch_shape)  # type: ignore[assignment]
        if len(self.patch_shape) != 3 or min(self.patch_shape) < 1:
            raise CellPolError(f"The patch shape must be three positive sizes (Z, Y, X), got {self.patch_shape}.")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.shape != (len(self.volumes),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise CellPolError("The volume weights must be one non-negative number per volume, not all 0.")
            self._probabilities = w / w.sum()

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, PairSet]:
        if self.weights is None:
            prepared = self.volumes[int(rng.integers(len(self.volumes)))]
        else:
            prepared = self.volumes[int(rng.choice(len(self.volumes), p=self._probabilities))]
        image, pairs = prepared.image, prepared.pairs
        shape = np.array(image.shape[1:])
        patch = np.array(self.patch_shape)
        if len(pairs) and rng.random() < self.foreground_fraction:
            centre = pairs.nuclei[int(rng.integers(len(pairs)))] + rng.uniform(-0.3, 0.3, 3) * patch
            origin = np.round(centre - patch / 2).astype(int)
        else:
            origin = np.array([int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(shape, patch)])
        origin = np.clip(origin, np.minimum(0, shape - patch), np.maximum(0, shape - patch))
        crop = _crop_padded(image, origin, patch)
        local = pairs.subset(slice(None))
        local.nuclei = local.nuclei - origin
        local.golgi = local.golgi - origin
        return self._augment(crop, local, rng)

    def _augment(self, crop: np.ndarray, pairs: PairSet, rng: np.random.Generator) -> tuple[np.ndarray, PairSet]:
        aug = self.augment
        nuclei, golgi = pairs.nuclei.copy(), pairs.golgi.copy()
        size = np.array(crop.shape[1:], dtype=float)
        for axis, p in ((0, aug.flip_z), (1, aug.flip_y), (2, aug.flip_x)):
            if rng.random() < p:
                crop = np.flip(crop, axis=axis + 1)
                nuclei[:, axis] = size[axis] - 1 - nuclei[:, axis]
                golgi[:, axis] = size[axis] - 1 - golgi[:, axis]
        if crop.shape[2] == crop.shape[3] and rng.random() < aug.rotate90:
            # Transpose y and x (a rotation combined with the flips above covers all 8 symmetries).
            crop = np.swapaxes(crop, 2, 3)
            nuclei = nuclei[:, [0, 2, 1]]
            golgi = golgi[:, [0, 2, 1]]
        crop = np.ascontiguousarray(crop, dtype=np.float32)
        for c in range(crop.shape[0]):
            if rng.random() < aug.gamma:
                crop[c] = np.power(np.clip(crop[c], 0, None), rng.uniform(0.7, 1.4))
            if rng.random() < aug.intensity:
                crop[c] = crop[c] * rng.uniform(0.6, 1.6) + rng.uniform(-0.1, 0.1)
            if rng.random() < aug.noise:
                crop[c] += rng.normal(0, rng.uniform(0, 0.08), crop[c].shape).astype(np.float32)
        if aug.appearance and rng.random() < aug.appearance:
            crop = appearance_shift(crop, rng)
        out = PairSet(nuclei, golgi, voxel_size=pairs.voxel_size, ids=pairs.ids)
        return crop, out


def appearance_shift(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A normalised patch ``(2, Z, Y, X)`` (nucleus, Golgi) as another microscope and stain might show it.

    Each nuisance applies with probability one half, independently, on the [0, 1] scale of normalised
    images; none moves an object, so the pairs stay. They are what our simulator keeps fixed (its own PSF
    family, noise model and stains), so a model trained with them leans less on those:

    - bleed-through: each channel gains U(0, 0.2) of the other (either direction, filters and dyes overlap);
    - optics: a channel blurred by a Gaussian of U(0.3, 1.2) voxels in y/x and U(0, 0.8) in z (other PSFs,
      coarser acquisitions resampled up), or sharpened (unsharp mask) instead, one time in three;
    - depth: signal falling (or rising) along z by exp(±z / L), L U(8, 40) voxels;
    - background: a smooth additive field (a tilted plane plus a broad bump), up to 0.15, and blotchy tissue
      autofluorescence (rectified smooth noise 1–4 µm across), up to 0.35;
    - camera: signal-dependent (shot-like) noise of relative size U(0, 0.25), fixed-pattern row stripes, and
      a few hot voxels per thousand;
    - range: saturation at U(0.6, 1.0), or a coarser bit depth (64–256 levels).
    """
    out = np.ascontiguousarray(crop, dtype=np.float32).copy()
    n_channels, nz, ny, nx = out.shape
    if n_channels == 2 and rng.random() < 0.5:
        a, b = rng.uniform(0.0, 0.2, 2) * (rng.random(2) < 0.6)
        nucleus, golgi = out[0].copy(), out[1].copy()
        out[0] += a * golgi
        out[1] += b * nucleus
    for c in range(n_channels):
        if rng.random() < 0.5:
            if rng.random() < 1 / 3:
                smooth = ndimage.gaussian_filter(out[c], (0.0 if nz == 1 else 0.6, 1.0, 1.0))
                out[c] = out[c] + rng.uniform(0.3, 1.0) * (out[c] - smooth)
            else:
                sxy = rng.uniform(0.3, 1.2)
                sz = 0.0 if nz == 1 else rng.uniform(0.0, 0.8)
                out[c] = ndimage.gaussian_filter(out[c], (sz, sxy, sxy))
        if nz > 1 and rng.random() < 0.5:
            z = np.arange(nz, dtype=np.float32) - rng.uniform(0, nz)
            out[c] *= np.exp(np.clip(rng.choice([-1.0, 1.0]) * z / rng.uniform(8.0, 40.0), -3, 3))[:, None, None]
        if rng.random() < 0.5:
            yy = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
            xx = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
            cy, cx, w = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.3, 1.0)
            field = rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / w)
            field -= field.min()
            peak = float(field.max())
            if peak > 0:
                out[c] += (rng.uniform(0.0, 0.15) / peak) * field[None]
        if rng.random() < 0.5:
            # Blotchy tissue autofluorescence: smooth noise 1–4 µm across (at the model's 0.5 µm in x/y),
            # rectified, up to a third of the stain's brightness; in the Golgi channel too.
            sxy = rng.uniform(2.0, 8.0)
            blotch = ndimage.gaussian_filter(rng.standard_normal(out[c].shape).astype(np.float32),
                                             (0.0 if nz == 1 else rng.uniform(1.0, 3.0), sxy, sxy))
            blotch = np.clip(blotch / (float(blotch.std()) + 1e-6) - rng.uniform(-0.5, 1.0), 0, None)
            out[c] += (rng.uniform(0.05, 0.35) / (float(blotch.max()) + 1e-6)) * blotch
        if rng.random() < 0.5:
            scale = rng.uniform(0.0, 0.25)
            out[c] += scale * np.sqrt(np.clip(out[c], 0, None)) * rng.standard_normal(out[c].shape).astype(np.float32)
            out[c] += rng.normal(0.0, 0.02, (1, ny, 1)).astype(np.float32)
            hot = rng.random(out[c].shape) < rng.uniform(0.0, 0.003)
            out[c][hot] += rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            if rng.random() < 0.5:
                out[c] = np.minimum(out[c], rng.uniform(0.6, 1.0))
            else:
                levels = float(rng.integers(64, 257))
                out[c] = np.round(np.clip(out[c], 0, None) * levels) / levels
    return out


def fixed_patches(volumes: Sequence[PreparedVolume], patch_shape: Sequence[int], n: int, seed: int = 0,
                  foreground_fraction: float = 0.8) -> list[tuple[np.ndarray, PairSet]]:
    """``n`` patches drawn once, without augmentation (the same every call: a validation-loss set)."""
    sampler = PatchSampler(list(volumes), tuple(patch_shape), AugmentConfig.off(), foreground_fraction)
    rng = np.random.default_rng([int(seed), 99])
    return [sampler.sample(rng) for _ in range(int(n))]


def _crop_padded(image: np.ndarray, origin: np.ndarray, patch: np.ndarray) -> np.ndarray:
    out = np.zeros((image.shape[0],) + tuple(int(p) for p in patch), dtype=np.float32)
    src_lo = np.maximum(origin, 0)
    src_hi = np.minimum(origin + patch, image.shape[1:])
    dst_lo = src_lo - origin
    dst_hi = dst_lo + (src_hi - src_lo)
    if np.all(src_hi > src_lo):
        out[:, dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = image[
            :, src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]
        ]
    return out


def synthetic_pool(n: int, voxel_size: Sequence[float], seed: int, field_um: Sequence[float] = (20.0, 96.0, 96.0),
                   presets: Optional[Sequence[str]] = None, shapes_dir: Optional[Path] = None,
                   xy_range: Sequence[float] = (0.2, 0.8), z_range: Sequence[float] = (0.25, 1.0),
                   real_shape_fraction: float = 0.4, vary_samples: bool = False, vary_layout: float = 0.0,
                   progress=None) -> list[PreparedVolume]:
    """``n`` simulator volumes at random voxel sizes, presets and object shapes, prepared at ``voxel_size``.

    Each is simulated at its own voxel size (drawn from ``xy_range`` / ``z_range`` µm) over the same
    physical field, then resampled to the model's voxel size, as a user's image would be. With
    ``vary_samples`` each scene also draws its density, distractors, stain brightness and optics from
    :data:`app.core.simulate.SAMPLE_VARIATION` and ``SAMPLE_SCALES`` instead of taking its preset's fixed amounts.
    ``vary_layout``: that share of scenes (1: all) also draws smaller, closer nuclei
    (:func:`app.core.simulate.scene_layout_options`) from streams of its own, so the other draws stay
    those of a run without it.
    """
    presets = list(presets or PRESETS)
    rng = np.random.default_rng(seed)
    pool = []
    for k in range(n):
        vxy = float(rng.uniform(*xy_range))
        vz = float(rng.uniform(*z_range))
        shape = tuple(max(1, int(round(f / v))) for f, v in zip(field_um, (vz, vxy, vxy)))
        options = {}
        if shapes_dir is not None and rng.random() < real_shape_fraction:
            options["shapes_dir"] = shapes_dir
        preset = presets[k % len(presets)]
        if vary_samples:
            options.update(varied_sample_options(rng, preset))
        options.update(scene_layout_options((seed, k), vary_layout))
        config = SimConfig(shape=shape, voxel_size=(vz, vxy, vxy), preset=preset,
                           seed=int(rng.integers(2**31)), **options)
        volume, pairs = simulate(config)
        pool.append(prepare(volume, pairs, voxel_size, name=f"sim{k}:{config.preset}"))
        if progress:
            progress(k + 1, n, "simulating")
    return pool
