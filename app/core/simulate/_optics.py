"""The microscope and the camera: uneven illumination, blur and haze, background, shot and read noise."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from app.core.simulate._config import SimConfig
from app.core.simulate._scene import _Scene


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


@dataclass
class _Lighting:
    """How bright the sample is lit and how bright its background is, per lateral position and depth (float32).

    Attributes
    ----------
    lateral : ndarray
        ``(Y, X)`` factor on the emitted signal (the smooth illumination field).
    depth : ndarray
        ``(Z,)`` factor on the emitted signal (attenuation with depth).
    background_lateral : ndarray
        ``(Y, X)`` factor on the background.
    background_depth : ndarray
        ``(Z,)`` background photons per voxel, before ``background_lateral``.
    """

    lateral: np.ndarray
    depth: np.ndarray
    background_lateral: np.ndarray
    background_depth: np.ndarray


def _lighting(cfg: SimConfig, scene: _Scene) -> _Lighting:
    """Illumination: smooth lateral field × attenuation with depth; background brightest in the cell layer."""
    shape = cfg.shape
    voxel = np.asarray(cfg.voxel_size)
    is_2d = cfg.is_2d
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
    return _Lighting(lateral, depth, bg_lateral, bg_depth)


def _acquire(
    cfg: SimConfig,
    signals: Sequence[tuple[np.ndarray, float]],
    lighting: _Lighting,
    rng: np.random.Generator,
) -> np.ndarray:
    """Image the emitted signal of each channel: ``(C, Z, Y, X)`` in the output dtype.

    Parameters
    ----------
    cfg : SimConfig
        The resolved configuration (optics, camera, dtype).
    signals : sequence of (ndarray, float)
        Per channel the rendered signal ``(Z, Y, X)`` float32 (scaled in place) and its photons per voxel.
    lighting : _Lighting
        Illumination and background.
    rng : numpy.random.Generator
        The noise stream.
    """
    shape = cfg.shape
    voxel = np.asarray(cfg.voxel_size)
    lateral, depth = lighting.lateral, lighting.depth
    bg_lateral, bg_depth = lighting.background_lateral, lighting.background_depth
    psf = np.asarray(cfg.psf_sigma_um) / voxel
    haze_sigma = np.asarray(cfg.haze_sigma_um) / voxel
    if cfg.is_2d:
        psf[0] = 0.0
        haze_sigma[0] = 0.0
    channels = []
    for signal, photons in signals:
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
            out[z0 : z0 + step] = _camera(cfg, rng, slab)
        channels.append(out)
    return np.stack(channels)
