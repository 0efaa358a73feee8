"""Vox2Vox: synthetic microscopy volumes from object masks, learned from the user's own annotated images.

The 3DNGMic recipe (reference §6) as one job and one generation function:

- :func:`train_vox2vox` — a generator of :class:`~app.training.trainer.TrainEvent` (like the detector's
  trainer: progress, cancel, pause, atomic checkpoints, resume after a kill). It reads the user's images
  and ``<stem>.vectors.csv`` (:mod:`app.training.dataset`), resamples and normalises them as training
  does (:func:`app.training.data.prepare`), turns every annotation into an object mask
  (:func:`app.core.masks.annotation_masks`) and trains a 3D pix2pix: a U-Net generator masks → image and
  a 3D PatchGAN discriminator on (masks, image), loss BCE + λ·L1 with λ = 100. Every ``eval_every``
  steps it reports the 3D SSIM between held-out real volumes and the generator's output from their own
  masks (:func:`ssim3d`). The result is a generator file (``<out>.json`` + ``<out>.safetensors``, format
  ``cellpol-vox2vox``) that also carries the dictionary of single-object masks and the layout limits
  learned from the annotations.
- :func:`generate` — new random layouts (:func:`app.core.masks.random_layout`) through the generator:
  the 3DNGMic folders ``inputs/ outputs/ vectors/ heatmaps/`` (``k.npy``) plus ``gen_kkkk.tif`` and
  ``gen_kkkk.vectors.csv`` that ``cellpol train --synthetic-dir`` reads. Deterministic under a seed.

What differs from the authors' code, on purpose:

- InstanceNorm instead of BatchNorm forced into training mode: the same per-sample normalisation the
  authors got with batch statistics at batch size 2, without the output depending on what else is in
  the batch. Dropout (0.5 on the first decoder blocks) trains as in pix2pix; at generation it is off
  unless asked for (``dropout=True``), so generation is reproducible and variety is a choice.
- Separate Adam optimisers, lr 2e-4, β1 = 0.5 (pix2pix's values; theirs shared one Adam at lr 1e-3).
  The discriminator outputs logits and uses ``BCEWithLogits`` (numerically safe); its loss is halved.
- Strides follow the voxel size (z is pooled only once its step has caught up with x/y,
  :func:`app.core.network.default_pool_factors`) and the patch size is a setting, not 64×128×128.
- SSIM is computed over the two real channels on the common [0, 1] scale (``data_range`` 1). Their
  evaluation added a zero-filled third channel, whose SSIM is 1, to the average, which inflates it
  (two channels at 0.86 read as 0.91), and took the data range from the generated volume.

The package (import everything from ``app.training.vox2vox``):

- ``networks``: :class:`Vox2VoxConfig`, :class:`UNetGenerator`, :class:`PatchDiscriminator`;
- ``files``: the generator file, :class:`GeneratorSpec`, :func:`save_generator`, :func:`load_generator`;
- ``evaluation``: :func:`ssim3d`, the masked volumes (:func:`masked_volume`), :func:`run_generator`,
  :func:`evaluate_generator`;
- ``training``: :class:`Vox2VoxOptions`, :func:`train_vox2vox` and its steps;
- ``generation``: :func:`generate`, :func:`generate_job`.
"""

from __future__ import annotations

from app.core.masks import GOLGI_BOX_UM, NUCLEUS_BOX_UM, LayoutParams, ShapeLibrary
from app.training.jobcontrol import pause_point
from app.training.trainer import PauseToken, TrainEvent
from app.training.vox2vox.evaluation import (
    MAX_VOLUME_SHAPE,
    SSIM_SIGMA,
    MaskedVolume,
    evaluate_generator,
    masked_volume,
    run_generator,
    ssim3d,
)
from app.training.vox2vox.files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GeneratorSpec,
    PathLike,
    check_shape,
    load_generator,
    save_generator,
)
from app.training.vox2vox.generation import GENERATED_PREFIX, NGMIC_FOLDERS, generate, generate_job
from app.training.vox2vox.networks import PatchDiscriminator, UNetGenerator, Vox2VoxConfig
from app.training.vox2vox.training import (
    CHECKPOINT_FORMAT,
    DEFAULT_PATCH_FIELD_UM,
    EVAL_COLUMNS,
    HISTORY_KEPT,
    L1_WEIGHT,
    LAST,
    LOG_COLUMNS,
    LOSS_KEYS,
    Vox2VoxOptions,
    output_paths,
    train_vox2vox,
)

__all__ = ["Vox2VoxConfig", "UNetGenerator", "PatchDiscriminator", "GeneratorSpec", "Vox2VoxOptions", "train_vox2vox",
           "generate", "generate_job", "save_generator", "load_generator", "ssim3d", "evaluate_generator", "run_generator",
           "output_paths", "L1_WEIGHT"]
