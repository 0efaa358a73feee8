"""Train or fine-tune a model on the user's own annotated images: the job the CLI and the GUI run.

    for event in run_training(TrainingOptions(images="imgs/", vectors="vecs/", out="my_model")):
        ...   # event.kind: info, loading, baseline, step, epoch, checkpoint, paused, resumed, calibration, done

What it does, in order:

1. **Data.** Every image in ``images`` needs its ``<stem>.vectors.csv`` (in ``vectors``, or beside it);
   everything is read and checked (:mod:`app.training.dataset`). Validation is by whole images:
   ``val_images`` if given, else a seeded hold-out of whole images, else (one image) the training image
   itself, which the ``info`` events and the model's provenance say plainly.
2. **Model.** By default the bundled starter model is fine-tuned (``init="starter"``): its architecture,
   voxel size, normalisation and decoding are kept. ``init=None`` (CLI ``--init none``) trains a fresh
   network from scratch at ``model_voxel_size``, by default the median voxel size of the training images
   kept within 0.25–1 µm in x/y and 0.25–2 µm in z (a finer grid costs time without helping a detector
   whose targets are 1–2 µm wide; a coarser one loses the Golgi). 2D images (Z = 1) train a 2D network;
   a 3D starter is then replaced by a fresh 2D network (an explicitly given 3D model is an error).
3. **Patches** around annotated cells (``foreground_fraction``) and anywhere else, at the model's voxel
   size, prepared exactly as prediction prepares images, with augmentation. ``synthetic`` simulator
   volumes (or the generated ones in ``synthetic_dir``) can be mixed in, ``synthetic_fraction`` of the
   patches: the paper's Synthetic+Real recipe.
4. **Training** (:func:`app.training.trainer.train`): AdamW with warm-up and cosine decay, mixed precision
   where it pays, checkpoints ``last`` and ``best`` in ``<out>.checkpoints/`` (a killed run resumes when
   started again with the same settings), a validation at the end of every epoch: loss on fixed
   validation patches and TPR/FDR at τL = 0 and 5 by full prediction of the validation images
   (:class:`ValidationRun`). Which weights become the model (``keep``): the best epoch (highest
   J = TPR − FDR at τL = 5) when the validation images hold at least :data:`MIN_CALIBRATION_PAIRS` pairs,
   else the last (``keep="auto"``). On one held-out image of ~15 cells J moves by 0.1 with a single cell,
   so "best" picks noise, and the cosine schedule ends at its most settled weights (measured:
   ``benchmarks/RESULTS.md``, "Fine-tuning choices"). When fine-tuning, ``init_share`` > 0 then averages
   the kept weights with the initial model's (WiSE-FT; off by default).
5. **Calibration** of the kept model's decoding on the validation images (per-class peak threshold and
   minimum distance maximising TPR − FDR at τL = 5, :func:`app.training.calibrate.calibrate_decoding`),
   stored in the model file, and a final evaluation with the paper's protocol. When fine-tuning, the
   decoding is re-chosen only when the validation images hold at least :data:`MIN_CALIBRATION_PAIRS`
   pairs (``calibrate="auto"``): a dozen parameters chosen on a few dozen cells fit those cells, not the
   images (measured: ``benchmarks/RESULTS.md``, "Fine-tuning choices" and "Fine-tuning on images unlike
   ours"). A model from scratch has no calibrated decoding to keep, so it is always calibrated.

Writes ``<out>.json`` + ``<out>.safetensors`` (the model), ``<out>.log.csv`` (losses per step),
``<out>.validation.csv`` (per epoch) and ``<out>.checkpoints/``. The generator's return value (and the
``done`` event's ``path``) is the model's ``.json``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from app.core import evaluate
from app.core.device import select_device
from app.core.errors import CellPolError
from app.core.fileutil import atomic_write_text, sha256_file
from app.core.inference import Predictor, find_starter_model
from app.core.jobs import CancelToken, check_cancel
from app.core.modelfile import (
    DecodingSpec,
    ModelSpec,
    NormalizationSpec,
    load_model,
    load_spec,
    model_paths,
    save_model,
)
from app.core.network import NetworkConfig, build_network, required_multiple
from app.core.pairs import PairSet
from app.core.volume import Volume, parse_voxel_size
from app.training import dataset
from app.training.calibrate import best_row, calibrate_decoding
from app.training.data import AugmentConfig, PatchSampler, PreparedVolume, fixed_patches, prepare, synthetic_pool
from app.training.jobcontrol import check_output
from app.training.losses import LossConfig, compute_loss
from app.training.targets import make_targets
from app.training.trainer import (
    PauseToken,
    TrainConfig,
    TrainEvent,
    check_encoder_lr_scale,
    checkpoint_exists,
    read_checkpoint_state,
    train,
    train_config_dict,
)

PathLike = Union[str, os.PathLike]
#: ``init`` value meaning "the bundled starter model".
STARTER = "starter"
#: Physical size (z, y, x) µm of a training patch by default: several cells, as the starter was trained.
DEFAULT_PATCH_FIELD_UM = (16.0, 48.0, 48.0)
#: Physical size of the simulated volumes mixed in (as the starter's pool).
SYNTHETIC_FIELD_UM = (20.0, 96.0, 96.0)
#: From-scratch model voxel size limits (µm): x/y and z.
XY_LIMITS_UM = (0.25, 1.0)
Z_LIMITS_UM = (0.25, 2.0)
#: Common peak thresholds tried when validating during training (the final calibration searches more).
VALIDATION_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)
#: Fine-tuning defaults: a small network fine-tuned on a few dozen cells keeps more of what it knew at the
#: lower rate and the starter's last embedding weight (measured: benchmarks/RESULTS.md, "Fine-tuning choices").
FINETUNE_LEARNING_RATE = 3e-4
FINETUNE_EMBEDDING_WEIGHT = 0.5
#: Fine-tuning default: the share of the initial model's weights averaged into the kept weights (WiSE-FT).
#: Off: on two outside data sets half and half scored as the fine-tuned weights alone on average (and it would
#: halve the gain where fine-tuning helps most); benchmarks/RESULTS.md, "Fine-tuning on images unlike ours".
FINETUNE_INIT_SHARE = 0.0
#: Fewest validation pairs for which a fine-tuned model's decoding is re-chosen (``calibrate="auto"``) and
#: the best epoch rather than the last becomes the model (``keep="auto"``). At 28–50 pairs (two held-out
#: images) both chose noise on images unlike ours: the re-chosen decodings moved peak thresholds and minimum
#: distances far from the starter's and lowered held-out TPR − FDR (benchmarks/RESULTS.md, "Fine-tuning on
#: images unlike ours"); 30 was the bar before.
MIN_CALIBRATION_PAIRS = 100
CALIBRATE_CHOICES = ("auto", "always", "never")
KEEP_CHOICES = ("auto", "best", "last")
LOG_COLUMNS = ("step", "epoch", "learning_rate", "seconds", "total", "heatmap", "heatmap_nucleus", "heatmap_golgi",
               "pull", "push")
VALIDATION_COLUMNS = ("epoch", "step", "seconds", "train_total", "val_loss", "tpr0", "fdr0", "tpr5", "fdr5", "j5",
                      "threshold", "best")


@dataclass
class TrainingOptions:
    """Everything a training run needs (the CLI's ``cellpol train`` options; the GUI fills the same).

    Parameters
    ----------
    images : path or sequence of paths
        Training images: folders and/or files (``None`` with ``project``).
    out : path
        Model to write (stem, ``.json`` or ``.safetensors`` path).
    vectors : path, optional
        Folder of ``<stem>.vectors.csv``; default: beside each image.
    project : path, optional
        A CellPol project folder instead of ``images``/``vectors``: its annotated images train (images not
        yet annotated are left out), with the voxel sizes recorded in the project.
    val_images, val_vectors : optional
        Explicit validation images (whole images, never the training ones) and their vectors folder.
    steps : int
        Optimiser steps (batches).
    init : path, "starter" or None
        Model to fine-tune; ``"starter"`` = the bundled starter model (from scratch when there is none,
        with a note); ``None`` or ``"none"`` = from scratch.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    seed : int
        Seeds the split, the network initialisation, every batch and the simulated volumes.
    voxel_size, axes, nucleus_channel, golgi_channel :
        How to read every image (as ``cellpol predict`` takes them); ``voxel_size`` overrides the files'.
    model_voxel_size : (z, y, x), optional
        From scratch only: the voxel size the model works at (default: see the module docstring).
    patch_shape : (z, y, x), optional
        Patch size in model voxels; default ``patch_field_um`` converted and rounded to the network's
        pooling, no larger than the largest image.
    synthetic, synthetic_dir, synthetic_fraction, synthetic_presets :
        Simulated volumes mixed into training and the share of patches drawn from them.
    epoch_steps : int, optional
        Steps between validations (default ``min(100, steps)``); ``checkpoint_every`` defaults to it.
    calibrate : {"auto", "always", "never"} or bool
        Choose the decoding thresholds on the validation images at the end: ``auto`` does so when training
        from scratch, or when the validation images hold at least :data:`MIN_CALIBRATION_PAIRS` pairs;
        otherwise the initial model's decoding is kept. ``True``/``False`` mean always/never.
    keep : {"auto", "best", "last"}
        Which weights become the model: the epoch with the best validation J, the last, or (``auto``) the
        best when the validation images hold at least :data:`MIN_CALIBRATION_PAIRS` pairs, else the last.
    init_share : float, optional
        Fine-tuning only: the kept weights become ``(1 - init_share) × kept + init_share × initial`` (weight-space
        ensembling, WiSE-FT: keeps what the starter knew where a few images teach little; default
        :data:`FINETUNE_INIT_SHARE`, 0: the fine-tuned weights alone).
    encoder_lr_scale : float
        The encoder's learning rate against the rest of the network's (0 to 1; default 1, every part alike:
        :class:`~app.training.trainer.TrainConfig`).
    embedding_weight, embedding_warmup_steps :
        Weight of the pull/push loss (default :data:`FINETUNE_EMBEDDING_WEIGHT` when fine-tuning, 1 — the
        paper's — from scratch) and steps over which it ramps in (:class:`~app.training.trainer.TrainConfig`).
    overwrite : bool
        Replace an existing model at ``out`` and discard its checkpoints (else an existing model is an
        error and existing checkpoints are resumed).
    """

    images: Union[PathLike, Sequence[PathLike], None]
    out: PathLike
    vectors: Optional[PathLike] = None
    project: Optional[PathLike] = None
    val_images: Union[PathLike, Sequence[PathLike], None] = None
    val_vectors: Optional[PathLike] = None
    steps: int = 500
    init: Optional[PathLike] = STARTER
    device: str = "auto"
    seed: int = 0
    voxel_size: Optional[Sequence[float]] = None
    axes: Optional[str] = None
    nucleus_channel: Optional[int] = None
    golgi_channel: Optional[int] = None
    batch_size: int = 4
    learning_rate: Optional[float] = None  # default FINETUNE_LEARNING_RATE when fine-tuning, 2e-3 from scratch
    warmup_steps: Optional[int] = None  # default min(50, steps // 10)
    patch_shape: Optional[Sequence[int]] = None
    patch_field_um: Sequence[float] = DEFAULT_PATCH_FIELD_UM
    foreground_fraction: float = 0.8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: int = 0
    synthetic_dir: Optional[PathLike] = None
    synthetic_fraction: float = 0.5
    synthetic_presets: Optional[Sequence[str]] = None
    val_fraction: float = 0.2  # share of images held out when no val_images; 0: validate on the training images
    validation_patches: int = 8
    epoch_steps: Optional[int] = None
    checkpoint_every: Optional[int] = None
    calibrate: Union[str, bool] = "auto"
    keep: str = "auto"
    embedding_weight: Optional[float] = None  # default FINETUNE_EMBEDDING_WEIGHT fine-tuning, 1 (the paper's) from scratch
    init_share: Optional[float] = None  # default FINETUNE_INIT_SHARE when fine-tuning; unused from scratch
    embedding_warmup_steps: int = 0
    encoder_lr_scale: float = 1.0
    model_voxel_size: Optional[Sequence[float]] = None
    architecture: str = "cellpol"
    levels: int = 4
    base_filters: int = 8
    amp: bool = True
    overwrite: bool = False
    name: Optional[str] = None
    description: str = ""

    def check(self) -> None:
        """Raise :class:`CellPolError` on a value no run can use."""
        def whole(name: str, value: Any, lo: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise CellPolError(f"{name} must be a whole number ≥ {lo}, got {value!r}.")

        whole("steps", self.steps, 1)
        whole("batch size", self.batch_size, 1)
        whole("synthetic", self.synthetic, 0)
        whole("validation patches", self.validation_patches, 0)
        whole("embedding warm-up steps", self.embedding_warmup_steps, 0)
        if self.init_share is not None and not (isinstance(self.init_share, (int, float))
                                                and not isinstance(self.init_share, bool)
                                                and 0.0 <= self.init_share < 1.0):
            raise CellPolError(f"The initial model's share of the weights must be in [0, 1), got {self.init_share!r}.")
        check_encoder_lr_scale(self.encoder_lr_scale)
        if self.embedding_weight is not None and not (math.isfinite(self.embedding_weight)
                                                      and self.embedding_weight >= 0):
            raise CellPolError(f"The embedding loss weight must be a number ≥ 0, got {self.embedding_weight}.")
        for name in ("epoch_steps", "checkpoint_every"):
            if getattr(self, name) is not None:
                whole(name.replace("_", " "), getattr(self, name), 1)
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise CellPolError(f"The learning rate must be a positive number, got {self.learning_rate}.")
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise CellPolError(f"The synthetic fraction must be in [0, 1), got {self.synthetic_fraction}.")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise CellPolError(f"The foreground fraction must be in [0, 1], got {self.foreground_fraction}.")
        if self.patch_shape is not None and (len(self.patch_shape) != 3 or min(int(p) for p in self.patch_shape) < 1):
            raise CellPolError(f"The patch shape must be three positive sizes Z Y X, got {self.patch_shape}.")
        if self.model_voxel_size is not None:
            parse_voxel_size(self.model_voxel_size)
        if not isinstance(self.calibrate, bool) and self.calibrate not in CALIBRATE_CHOICES:
            raise CellPolError(f"calibrate must be one of {', '.join(CALIBRATE_CHOICES)}, got {self.calibrate!r}.")
        if self.keep not in KEEP_CHOICES:
            raise CellPolError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}.")
        if self.voxel_size is not None:
            parse_voxel_size(self.voxel_size)


# ----------------------------------------------------------------------------------------------
# Validation during training
# ----------------------------------------------------------------------------------------------
def _rate(values: np.ndarray, level: int) -> float:
    return float(np.nan_to_num(values[level]))


def score_outputs(predictor, outputs, validation: Sequence[dataset.AnnotatedImage],
                  decoding: Optional[DecodingSpec] = None) -> evaluate.EvaluationResult:
    """Decode network outputs with ``decoding`` and score them against the validation vectors."""
    scores = [evaluate.score_pairs(item.pairs, predictor.decode(output, decoding),
                                   image_shape=item.volume.spatial_shape, name=item.name)
              for output, item in zip(outputs, validation)]
    return evaluate.aggregate(scores)


def summary_metrics(result: evaluate.EvaluationResult) -> dict[str, float]:
    """TPR/FDR at τL = 0 and 5 and J = TPR − FDR at τL = 5 (an undefined FDR, no detections, counts 0)."""
    out = {"tpr0": _rate(result.tpr, 0), "fdr0": _rate(result.fdr, 0),
           "tpr5": _rate(result.tpr, 5), "fdr5": _rate(result.fdr, 5)}
    out["j5"] = out["tpr5"] - out["fdr5"]
    return out


class ValidationRun:
    """The validator the trainer calls each epoch (see :data:`app.training.trainer.Validator`).

    Returns ``val_loss`` (the training loss on fixed, unaugmented validation patches, network in eval
    mode) and, from a full prediction of every validation image, ``tpr0``/``fdr0``/``tpr5``/``fdr5``/``j5``
    at the best of a few common peak thresholds (``threshold``; the model's own decoding is tried too), so
    epochs are compared at their own best operating point rather than at thresholds chosen for another
    network. The network is copied, never modified.
    """

    def __init__(self, validation: Sequence[dataset.AnnotatedImage], device: Union[str, torch.device],
                 loss_patches: Sequence[tuple[np.ndarray, PairSet]] = (), batch_size: int = 4,
                 sigma_um: Optional[dict] = None, loss_config: Optional[LossConfig] = None,
                 thresholds: Sequence[float] = VALIDATION_THRESHOLDS, cancel: Optional[CancelToken] = None) -> None:
        self.validation = list(validation)
        self.device = device
        self.loss_patches = list(loss_patches)
        self.batch_size = batch_size
        self.sigma_um = sigma_um or {"nucleus": 2.0, "golgi": 1.0}
        self.loss_config = loss_config or LossConfig()
        self.thresholds = tuple(thresholds)
        self.cancel = cancel

    def __call__(self, model: torch.nn.Module, spec: ModelSpec) -> dict[str, float]:
        metrics: dict[str, float] = {}
        module = copy.deepcopy(model).eval()
        if self.loss_patches:
            metrics["val_loss"] = self._loss(module, spec)
        predictor = Predictor.from_modules([(module, spec)], self.device)
        outputs = []
        for item in self.validation:
            check_cancel(self.cancel)
            outputs.append(predictor.run_network(item.volume, cancel=self.cancel))
        candidates = [spec.decoding] + [
            dataclasses.replace(spec.decoding, peak_threshold_nucleus=t, peak_threshold_golgi=t)
            for t in self.thresholds
        ]
        best: Optional[dict[str, float]] = None
        for decoding in candidates:
            found = summary_metrics(score_outputs(predictor, outputs, self.validation, decoding))
            found["threshold"] = decoding.peak_threshold_nucleus
            # Ties in J at τL = 5 (common early on, when nothing passes its tolerances) go to τL = 0.
            if best is None or (found["j5"], found["tpr0"] - found["fdr0"]) > (best["j5"], best["tpr0"] - best["fdr0"]):
                best = found
        metrics.update(best or {})
        return metrics

    def _loss(self, module: torch.nn.Module, spec: ModelSpec) -> float:
        device = next(module.parameters()).device
        total, count = 0.0, 0
        with torch.inference_mode():
            for first in range(0, len(self.loss_patches), self.batch_size):
                chunk = self.loss_patches[first:first + self.batch_size]
                images = torch.from_numpy(np.stack([image for image, _ in chunk]))
                targets_np = [make_targets(pairs, image.shape[1:], spec.voxel_size, self.sigma_um)
                              for image, pairs in chunk]
                targets = {k: torch.from_numpy(np.stack([t[k] for t in targets_np])[:, None]) for k in targets_np[0]}
                if spec.network.spatial_dims == 2:
                    images = images[:, :, 0]
                    targets = {k: v[:, :, 0] for k, v in targets.items()}
                outputs = module(images.to(device))
                parts = compute_loss({k: v.float() for k, v in outputs.items()},
                                     {k: v.to(device) for k, v in targets.items()}, self.loss_config,
                                     tuple(spec.voxel_size))
                total += float(parts["total"]) * len(chunk)
                count += len(chunk)
        return total / max(1, count)


class _CachedNetwork:
    """A predictor whose ``run_network`` answers from outputs computed once (for calibration)."""

    def __init__(self, predictor, outputs: dict[int, Any]) -> None:
        self._predictor = predictor
        self._outputs = outputs
        self.decoding = predictor.decoding

    def run_network(self, volume: Volume, *args, **kwargs):
        return self._outputs[id(volume)]

    def decode(self, output, decoding: Optional[DecodingSpec] = None) -> PairSet:
        return self._predictor.decode(output, decoding)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def resolve_init(init: Optional[PathLike]) -> tuple[Optional[Path], bool]:
    """``(model .json or None, whether it is the default starter)``.

    Raises
    ------
    CellPolError
        An explicit model that does not exist.
    """
    if init is None or (isinstance(init, str) and init.strip().lower() in ("", "none", "scratch")):
        return None, False
    if isinstance(init, str) and init.strip().lower() == STARTER:
        return find_starter_model(), True
    json_path, _ = model_paths(init)
    if not json_path.is_file():
        raise CellPolError(f"The model to start from, {init}, does not exist (expected {json_path}); give another, "
                           "or none to train from scratch.", settings={"init": "none"})
    return json_path, False


def choose_model_voxel_size(volumes: Sequence[Volume]) -> tuple[float, float, float]:
    """The from-scratch model voxel size: the median of the images', within the limits (2D: z = 1)."""
    sizes = np.array([v.voxel_size for v in volumes], dtype=np.float64)
    z, y, x = np.median(sizes, axis=0)
    y, x = (float(np.clip(v, *XY_LIMITS_UM)) for v in (y, x))
    if all(v.is_2d for v in volumes):
        return (1.0, round(y, 4), round(x, 4))
    return (round(float(np.clip(z, *Z_LIMITS_UM)), 4), round(y, 4), round(x, 4))


def choose_patch_shape(field_um: Sequence[float], voxel_size: Sequence[float], network: NetworkConfig,
                       volumes: Sequence[PreparedVolume]) -> tuple[int, int, int]:
    """Patch size in model voxels: ``field_um`` rounded to the pooling multiple, no larger than the images."""
    multiple = required_multiple(network)
    largest = np.max([p.image.shape[1:] for p in volumes], axis=0)
    out = []
    for axis in range(3):
        m = multiple[axis]
        if axis == 0 and network.spatial_dims == 2:
            out.append(1)
            continue
        want = max(m, int(round(float(field_um[axis]) / float(voxel_size[axis]) / m)) * m)
        cap = max(m, int(math.ceil(largest[axis] / m)) * m)
        out.append(int(min(want, cap)))
    return tuple(out)  # type: ignore[return-value]


class CsvLog:
    """A CSV log keyed by step; a resumed run first drops the rows at or after its first new step."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self._started = False

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if not self._started:
            kept = []
            if self.path.is_file():
                try:
                    with open(self.path, newline="", encoding="utf-8") as handle:
                        kept = [r for r in csv.DictReader(handle) if r.get("step", "").isdigit()
                                and int(r["step"]) < step]
                except (OSError, UnicodeDecodeError, csv.Error):
                    kept = []
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.path, buffer.getvalue())
            self._started = True
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, self.columns, extrasaction="ignore", lineterminator="\n").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def output_paths(out: PathLike) -> dict[str, Path]:
    """Where a run writes: ``model`` (.json), ``checkpoints`` (folder), ``log`` and ``validation_log`` (CSV)."""
    json_path, _ = model_paths(out)
    stem = json_path.with_suffix("")
    return {
        "model": json_path,
        "checkpoints": stem.with_name(stem.name + ".checkpoints"),
        "log": stem.with_name(stem.name + ".log.csv"),
        "validation_log": stem.with_name(stem.name + ".validation.csv"),
    }


def _describe(items: Sequence[dataset.AnnotatedImage]) -> list[dict[str, Any]]:
    return [{"name": item.name, "image": str(item.image_path) if item.image_path else None,
             "vectors": str(item.vectors_path) if item.vectors_path else None, "pairs": len(item.pairs),
             "shape_zyx": list(item.volume.spatial_shape), "voxel_size_zyx_um": list(item.volume.voxel_size)}
            for item in items]


def _event(kind: str, total: int, message: str = "", **extra: Any) -> TrainEvent:
    return TrainEvent(kind, extra.pop("step", 0), total, extra.pop("losses", {}), 0.0, extra.pop("seconds", 0.0),
                      message=message, **extra)


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def run_training(options: TrainingOptions, cancel: Optional[CancelToken] = None,
                 pause: Optional[PauseToken] = None) -> Generator[TrainEvent, None, Path]:
    """Train (or fine-tune) a model as described in the module docstring; yields :class:`TrainEvent`.

    Event kinds, beyond the trainer's (``step``, ``epoch``, ``checkpoint``, ``paused``, ``resumed``):
    ``info`` (``message``: data summary, split, warnings, resume), ``loading`` (``step`` images of
    ``total_steps`` read), ``baseline`` (``metrics`` of the initial model on the validation images, not
    on a resumed run), ``calibration`` (``metrics``: the chosen decoding and its TPR/FDR at τL = 5) and
    ``done`` (``path`` = the model ``.json``; ``metrics`` = final TPR/FDR at τL = 0 and 5; ``data`` = the
    :class:`~app.core.evaluate.EvaluationResult` on the validation images).

    Raises
    ------
    CellPolError
        Bad input (one clear message naming the file), an existing model without ``overwrite``, a
        checkpoint from a different run. :class:`~app.core.errors.CancelledError` when cancelled (a
        checkpoint is saved first: run again to resume).
    """
    opts = options
    opts.check()
    paths = output_paths(opts.out)
    check_output(paths, opts.overwrite)
    init_path, init_is_starter = resolve_init(opts.init)
    data = yield from _load_data(opts, cancel)
    start = yield from _choose_start(opts, init_path, init_is_starter, data)
    patches = yield from _make_patches(opts, data, start)
    config = _train_config(opts, start)
    device = select_device(opts.device)
    validator = _make_validator(opts, data, start, patches, config, device, cancel)
    init_sha = sha256_file(model_paths(start.init_path)[1]) if start.init_path is not None else None
    fingerprint = _fingerprint(opts, data, start, patches, config, init_sha)
    run = _RunState(_provenance(opts, data, start, patches, config, device, init_sha))
    spec = _model_spec(opts, paths, data, start, run.provenance)
    yield from _begin(opts, paths, start, spec, validator, device, run)
    yield from _train_and_log(spec, patches.sampler, config, paths, start, validator, fingerprint, run, cancel,
                              pause)
    chosen = yield from _choose_kept_weights(opts, paths, data)
    model, _ = load_model(chosen, device)
    yield from _average_with_init(opts, start, model, run)
    predictor, outputs = _predict_validation(model, spec, device, data, cancel)
    decoding = yield from _calibrate(opts, start, data, spec, predictor, outputs, run)
    path = yield from _write_model(opts, paths, data, model, spec, predictor, outputs, decoding, chosen, run)
    return path


@dataclass
class _Data:
    """The images read: their split, every image (training, then the given validation images) and whether 2D."""

    split: dataset.Split
    images: list[dataset.AnnotatedImage]
    is_2d: bool

    @property
    def n_train_pairs(self) -> int:
        return sum(len(i.pairs) for i in self.split.train)

    @property
    def n_validation_pairs(self) -> int:
        return sum(len(item.pairs) for item in self.split.validation)


@dataclass
class _Start:
    """What training starts from: the initial model (``None`` from scratch) and the description the model keeps."""

    init_path: Optional[Path]
    init_spec: Optional[ModelSpec]
    network: NetworkConfig
    voxel: tuple[float, float, float]
    normalization: NormalizationSpec
    decoding: DecodingSpec

    def prepared(self, items: Sequence[dataset.AnnotatedImage]) -> list[PreparedVolume]:
        """``items`` resampled and normalised as the model sees images."""
        normalization = self.normalization
        return [prepare(i.volume, i.pairs, self.voxel, normalization.low_percentile, normalization.high_percentile,
                        normalization.clip, name=i.name) for i in items]


@dataclass
class _Patches:
    """Where the training patches come from: the sampler, the patch size and how many simulated volumes."""

    sampler: PatchSampler
    shape: tuple[int, int, int]
    synthetic_volumes: int


@dataclass
class _RunState:
    """What the run gathers for the model file as it goes: its provenance, training time and best epoch."""

    provenance: dict[str, Any]
    trained_seconds: float = 0.0
    best_checkpoint: Optional[dict] = None




def _load_data(opts: TrainingOptions, cancel: Optional[CancelToken]) -> Generator[TrainEvent, None, _Data]:
    """Step 1: find, read, check and split the images (``info`` and ``loading`` events)."""
    steps = opts.steps
    read_options = {"voxel_size": opts.voxel_size, "axes": opts.axes, "nucleus_channel": opts.nucleus_channel,
                    "golgi_channel": opts.golgi_channel}
    notes: list[str] = []
    train_files, val_files = dataset.match_training_files(opts.images, opts.vectors, opts.val_images,
                                                          opts.val_vectors, opts.project, notes)
    for note in notes:
        yield _event("info", steps, note)
    warnings: list[str] = []
    loaded = []
    all_files = list(train_files) + list(val_files)
    for k, file in enumerate(all_files):
        check_cancel(cancel)
        loaded.append(dataset.load_annotated(file, warnings=warnings, **read_options))
        yield _event("loading", len(all_files), file.image.name, step=k + 1)
    train_items, val_items = loaded[:len(train_files)], loaded[len(train_files):]
    if opts.val_fraction == 0 and not val_items:  # no validation chosen: the training images themselves
        dataset.check_training_set(train_items)
        split = dataset.Split(list(train_items), [i for i in train_items if len(i.pairs)], "training-image",
                              "No validation images: validating on the training images themselves, so the "
                              "validation figures are optimistic.")
    else:
        split = dataset.make_split(train_items, val_items, opts.seed, opts.val_fraction, warnings)
    data = _Data(split, loaded, train_items[0].is_2d)
    yield _event("info", steps, f"Training data: {len(split.train)} image(s) with {data.n_train_pairs} pairs "
                 f"({'2D' if data.is_2d else '3D'}).")
    yield _event("info", steps, split.note, data={"split": split.mode})
    for warning in warnings:
        yield _event("info", steps, "Warning: " + warning)
    return data


def _choose_start(opts: TrainingOptions, init_path: Optional[Path], init_is_starter: bool,
                  data: _Data) -> Generator[TrainEvent, None, _Start]:
    """Step 2: the model to fine-tune (the starter of the images' dimensionality, when the starter is asked
    for) or a fresh network at the model voxel size; ``info`` events say which."""
    steps, is_2d = opts.steps, data.is_2d
    init_spec: Optional[ModelSpec] = None
    if init_path is not None:
        init_spec = load_spec(init_path)
        if (init_spec.network.spatial_dims == 2) != is_2d and init_is_starter:
            other = find_starter_model(spatial_dims=2 if is_2d else 3)
            if other is not None:  # the starter of the images' dimensionality
                init_path, init_spec = other, load_spec(other)
        if (init_spec.network.spatial_dims == 2) != is_2d:
            kind = f"{init_spec.network.spatial_dims}D"
            if init_is_starter:
                yield _event("info", steps, f"The starter model is {kind} but the images are "
                             f"{'2D' if is_2d else '3D'}: training a {'2D' if is_2d else '3D'} network from scratch.")
                init_path, init_spec = None, None
            else:
                raise CellPolError(f"The model to start from, {init_path}, is a {kind} model but the training images "
                                   f"are {'2D' if is_2d else '3D'}; start from a {'2D' if is_2d else '3D'} model or "
                                   "from scratch.", settings={"init": "none"})
    elif init_is_starter:
        yield _event("info", steps, "No starter model is installed (resources/models): training from scratch.")
    if init_spec is not None:
        voxel = init_spec.voxel_size
        yield _event("info", steps, f"Fine-tuning {init_path.name} (voxel size {'×'.join(f'{v:g}' for v in voxel)} µm).")
        return _Start(init_path, init_spec, init_spec.network, voxel, init_spec.normalization, init_spec.decoding)
    voxel = (parse_voxel_size(opts.model_voxel_size) if opts.model_voxel_size is not None
             else choose_model_voxel_size([i.volume for i in data.images]))
    network = NetworkConfig.for_voxel_size(voxel, spatial_dims=2 if is_2d else 3, architecture=opts.architecture,
                                           levels=opts.levels, base_filters=opts.base_filters)
    yield _event("info", steps, f"Training a new {'2D' if is_2d else '3D'} network from scratch at voxel size "
                 f"{'×'.join(f'{v:g}' for v in voxel)} µm.")
    return _Start(None, None, network, voxel, NormalizationSpec(), DecodingSpec())


def _make_patches(opts: TrainingOptions, data: _Data, start: _Start) -> Generator[TrainEvent, None, _Patches]:
    """Step 3: the patch sampler over the training images and the simulated volumes mixed in."""
    steps, is_2d = opts.steps, data.is_2d
    train_volumes = start.prepared(data.split.train)
    patch_shape = (tuple(int(p) for p in opts.patch_shape) if opts.patch_shape is not None
                   else choose_patch_shape(opts.patch_field_um, start.voxel, start.network, train_volumes))
    synthetic_volumes: list[PreparedVolume] = []
    if opts.synthetic:
        yield _event("info", steps, f"Simulating {opts.synthetic} synthetic volume(s) to mix in.")
        field_um = (0.01,) + SYNTHETIC_FIELD_UM[1:] if is_2d else SYNTHETIC_FIELD_UM
        synthetic_volumes += synthetic_pool(opts.synthetic, start.voxel, seed=opts.seed * 1000 + 17,
                                            field_um=field_um, presets=opts.synthetic_presets)
    if opts.synthetic_dir is not None:
        synth_files = dataset.match_files(opts.synthetic_dir, None, "synthetic")
        synth_items = [dataset.load_annotated(f) for f in synth_files]
        if any(i.is_2d != is_2d for i in synth_items):
            raise CellPolError(f"{opts.synthetic_dir}: the synthetic volumes must be {'2D' if is_2d else '3D'} like "
                               "the training images.")
        synthetic_volumes += start.prepared(synth_items)
    weights = None
    if synthetic_volumes:
        fraction = opts.synthetic_fraction
        weights = ([(1 - fraction) / len(train_volumes)] * len(train_volumes)
                   + [fraction / len(synthetic_volumes)] * len(synthetic_volumes))
        yield _event("info", steps, f"Synthetic+Real: {len(synthetic_volumes)} simulated volume(s), "
                     f"{fraction:.0%} of the patches.")
    sampler = PatchSampler(train_volumes + synthetic_volumes, patch_shape, opts.augment, opts.foreground_fraction,
                           weights)
    return _Patches(sampler, patch_shape, len(synthetic_volumes))  # type: ignore[arg-type]


def _train_config(opts: TrainingOptions, start: _Start) -> TrainConfig:
    """The trainer's settings: the options, with the fine-tuning or from-scratch defaults where unset."""
    steps = opts.steps
    epoch_steps = opts.epoch_steps or min(100, steps)
    embedding_weight = (opts.embedding_weight if opts.embedding_weight is not None
                        else FINETUNE_EMBEDDING_WEIGHT if start.init_spec is not None else 1.0)
    return TrainConfig(
        steps=steps, batch_size=opts.batch_size,
        learning_rate=opts.learning_rate or (FINETUNE_LEARNING_RATE if start.init_spec is not None else 2e-3),
        warmup_steps=opts.warmup_steps if opts.warmup_steps is not None else min(50, steps // 10),
        seed=opts.seed, device=opts.device, checkpoint_every=opts.checkpoint_every or epoch_steps,
        epoch_steps=epoch_steps, amp=opts.amp,
        loss=LossConfig(pull_weight=embedding_weight, push_weight=embedding_weight),
        embedding_warmup_steps=opts.embedding_warmup_steps, encoder_lr_scale=opts.encoder_lr_scale,
    )


def _make_validator(opts: TrainingOptions, data: _Data, start: _Start, patches: _Patches, config: TrainConfig,
                    device: torch.device, cancel: Optional[CancelToken]) -> ValidationRun:
    """The per-epoch validation on the validation images and fixed patches of them."""
    val_patches = fixed_patches(start.prepared(data.split.validation), patches.shape, opts.validation_patches,
                                opts.seed)
    return ValidationRun(data.split.validation, device, val_patches, opts.batch_size, config.sigma_um, config.loss,
                         cancel=cancel)


def _fingerprint(opts: TrainingOptions, data: _Data, start: _Start, patches: _Patches, config: TrainConfig,
                 init_sha: Optional[str]) -> dict[str, Any]:
    """What defines the run: a checkpoint of another fingerprint is not resumed."""
    split = data.split
    return {
        "train_images": [[i.name, len(i.pairs), list(i.volume.spatial_shape)] for i in split.train],
        "validation_images": [[i.name, len(i.pairs)] for i in split.validation],
        "init_weights_sha256": init_sha, "steps": opts.steps, "seed": opts.seed, "batch_size": opts.batch_size,
        "learning_rate": config.learning_rate, "patch_shape": list(patches.shape), "voxel_size": list(start.voxel),
        "synthetic": [opts.synthetic, str(opts.synthetic_dir) if opts.synthetic_dir else None,
                      opts.synthetic_fraction],
        "augment": opts.augment.to_dict(), "foreground_fraction": opts.foreground_fraction,
        "epoch_steps": config.epoch_steps, "loss": config.loss.fingerprint(),
        "embedding_warmup_steps": config.embedding_warmup_steps,
        **({"encoder_lr_scale": config.encoder_lr_scale} if config.encoder_lr_scale != 1.0 else {}),
    }


def _provenance(opts: TrainingOptions, data: _Data, start: _Start, patches: _Patches, config: TrainConfig,
                device: torch.device, init_sha: Optional[str]) -> dict[str, Any]:
    """The model's provenance as known before training (the run adds to it)."""
    split, init_path, init_spec = data.split, start.init_path, start.init_spec
    return {
        "trained_by": "cellpol train",
        "init": {"path": str(init_path), "weights_sha256": init_sha,
                 "name": init_spec.name if init_spec else None} if init_path else None,
        "training_images": _describe(split.train),
        "validation_images": _describe(split.validation),
        "validation_split": split.mode, "validation_note": split.note,
        "synthetic": {"volumes": patches.synthetic_volumes, "generated": opts.synthetic,
                      "dir": str(opts.synthetic_dir) if opts.synthetic_dir else None,
                      "fraction": opts.synthetic_fraction if patches.synthetic_volumes else 0.0,
                      "presets": list(opts.synthetic_presets) if opts.synthetic_presets else "all"},
        "patch_shape_zyx": list(patches.shape), "foreground_fraction": opts.foreground_fraction,
        "augment": opts.augment.to_dict(), "train": train_config_dict(config),
        "device": str(device), "torch": torch.__version__, "host": platform.node(),
    }


def _model_spec(opts: TrainingOptions, paths: dict[str, Path], data: _Data, start: _Start,
                provenance: dict[str, Any]) -> ModelSpec:
    """The description of the model being trained (the trainer saves it with every checkpoint)."""
    init_path, init_spec = start.init_path, start.init_spec
    name = opts.name or paths["model"].stem
    return ModelSpec(network=start.network, voxel_size=start.voxel, normalization=start.normalization,
                     decoding=start.decoding, provenance=provenance, name=name,
                     description=opts.description or (f"Fine-tuned from {init_spec.name or init_path.stem}"
                                                      if init_spec else "Trained from scratch")
                     + f" on {len(data.split.train)} image(s) with {data.n_train_pairs} pairs.")


def _begin(opts: TrainingOptions, paths: dict[str, Path], start: _Start, spec: ModelSpec,
           validator: ValidationRun, device: torch.device, run: _RunState) -> Iterator[TrainEvent]:
    """Discard an earlier run when overwriting; then say where a resumed run resumes, or score the initial
    model on the validation images (the ``baseline`` event)."""
    if opts.overwrite:  # only now that the input is known to be good
        if paths["checkpoints"].is_dir():
            shutil.rmtree(paths["checkpoints"])
        for key in ("log", "validation_log"):
            if paths[key].exists():
                paths[key].unlink()
    if checkpoint_exists(paths["checkpoints"]):
        state = read_checkpoint_state(paths["checkpoints"]) or {}
        yield _event("info", opts.steps, f"Resuming from the checkpoint at step {state.get('step', '?')} in "
                     f"{paths['checkpoints']}.", step=int(state.get("step", 0) or 0))
    elif start.init_path is not None:
        module, _ = load_model(start.init_path, device)
        baseline = validator(module, spec)
        yield _event("baseline", opts.steps, "initial model on the validation images", metrics=baseline)
        run.provenance["baseline_validation"] = baseline
        del module


def _train_and_log(spec: ModelSpec, sampler: PatchSampler, config: TrainConfig, paths: dict[str, Path],
                   start: _Start, validator: ValidationRun, fingerprint: dict[str, Any], run: _RunState,
                   cancel: Optional[CancelToken], pause: Optional[PauseToken]) -> Iterator[TrainEvent]:
    """Step 4: the trainer's events, steps and epochs also written to the CSV logs; its ``done`` event is
    not passed on (the job's own comes last) but its time and best epoch are kept in ``run``."""
    log = CsvLog(paths["log"], LOG_COLUMNS)
    validation_log = CsvLog(paths["validation_log"], VALIDATION_COLUMNS)
    for event in train(spec, sampler, config, paths["checkpoints"], cancel=cancel, init=start.init_path,
                       pause=pause, validator=validator, fingerprint=fingerprint):
        if event.kind == "step":
            log.write({"step": event.step, "epoch": event.epoch, "learning_rate": event.learning_rate,
                       "seconds": round(event.seconds, 3), **event.losses})
        elif event.kind == "epoch":
            validation_log.write({"epoch": event.epoch, "step": event.step, "seconds": round(event.seconds, 3),
                                  "train_total": event.losses.get("total"), **event.metrics,
                                  "best": int(event.best)})
        if event.kind == "done":
            run.trained_seconds = event.seconds
            run.best_checkpoint = event.metrics.get("best")
            continue
        yield event


def _choose_kept_weights(opts: TrainingOptions, paths: dict[str, Path],
                         data: _Data) -> Generator[TrainEvent, None, Path]:
    """Step 5: the checkpoint whose weights become the model (``keep``): the best epoch's or the last."""
    n_validation_pairs = data.n_validation_pairs
    best_json = paths["checkpoints"] / "best.json"
    keep_best = opts.keep == "best" or (opts.keep == "auto" and n_validation_pairs >= MIN_CALIBRATION_PAIRS)
    chosen = best_json if keep_best and best_json.is_file() else paths["checkpoints"] / "last.json"
    if opts.keep == "auto" and not keep_best:
        yield _event("info", opts.steps, f"Keeping the last weights: the validation images hold {n_validation_pairs} "
                     f"pairs, too few to tell the best epoch reliably (at least {MIN_CALIBRATION_PAIRS}).")
    return chosen


def _average_with_init(opts: TrainingOptions, start: _Start, model: torch.nn.Module,
                       run: _RunState) -> Iterator[TrainEvent]:
    """Step 5b (fine-tuning): average the kept weights with the initial model's, ``init_share`` of the latter."""
    share = opts.init_share if opts.init_share is not None else FINETUNE_INIT_SHARE
    if start.init_path is None or share <= 0:
        return
    from app.training.average import average_modules

    initial, _ = load_model(start.init_path)
    model.load_state_dict(average_modules([model, initial], [1.0 - share, share]))
    run.provenance["weight_average"] = {"init_share": share, "init": start.init_path.name}
    yield _event("info", opts.steps, f"Averaged the kept weights with those of {start.init_path.name} "
                 f"({1 - share:g} : {share:g}): keeps what it knew where your images teach little.")


def _predict_validation(model: torch.nn.Module, spec: ModelSpec, device: torch.device, data: _Data,
                        cancel: Optional[CancelToken]) -> tuple[Predictor, dict[int, Any]]:
    """The kept model's predictor and its network outputs on every validation image (by ``id`` of the volume),
    computed once for the calibration and the final evaluation."""
    predictor = Predictor.from_modules([(copy.deepcopy(model), spec)], device)
    outputs = {}
    for item in data.split.validation:
        check_cancel(cancel)
        outputs[id(item.volume)] = predictor.run_network(item.volume, cancel=cancel)
    return predictor, outputs


def _calibrate(opts: TrainingOptions, start: _Start, data: _Data, spec: ModelSpec, predictor: Predictor,
               outputs: dict[int, Any], run: _RunState) -> Generator[TrainEvent, None, DecodingSpec]:
    """Step 6: the decoding the model keeps: re-chosen on the validation images (``calibrate``), or kept from
    the initial model when they hold too few pairs (an ``info`` event says so)."""
    steps, n_validation_pairs, split = opts.steps, data.n_validation_pairs, data.split
    final_decoding = spec.decoding
    mode = {True: "always", False: "never"}.get(opts.calibrate, opts.calibrate)  # type: ignore[arg-type]
    calibrate = mode == "always" or (mode == "auto" and (start.init_spec is None
                                                         or n_validation_pairs >= MIN_CALIBRATION_PAIRS))
    if mode == "auto" and not calibrate:
        note = (f"The validation images hold {n_validation_pairs} pairs, too few to re-choose the decoding "
                f"thresholds reliably (at least {MIN_CALIBRATION_PAIRS}); keeping those of "
                f"{start.init_path.name}. Set calibration to always to re-choose them anyway.")
        run.provenance["calibration"] = {"method": "kept from the initial model", "reason": note}
        yield _event("info", steps, note)
    if calibrate:
        validation_pairs = [(item.volume, item.pairs) for item in split.validation]
        final_decoding, table = calibrate_decoding(_CachedNetwork(predictor, outputs), validation_pairs, level=5)
        row = best_row(table) or {}
        run.provenance["calibration"] = {
            "method": "grid search maximising TPR - FDR at tauL=5 on the validation images",
            "validation_split": split.mode, "best": row, "settings_tried": len(table),
        }
        yield _event("calibration", steps, "decoding calibrated on the validation images",
                     metrics={**dataclasses.asdict(final_decoding),
                              **{k: row.get(k) for k in ("tpr", "fdr", "j")}})
    return final_decoding


def _write_model(opts: TrainingOptions, paths: dict[str, Path], data: _Data, model: torch.nn.Module,
                 spec: ModelSpec, predictor: Predictor, outputs: dict[int, Any], decoding: DecodingSpec,
                 chosen: Path, run: _RunState) -> Generator[TrainEvent, None, Path]:
    """Step 7: the final evaluation with the paper's protocol, the model file (with its provenance) and the
    ``done`` event."""
    steps, split = opts.steps, data.split
    result = score_outputs(predictor, [outputs[id(i.volume)] for i in split.validation], split.validation,
                           decoding)
    final = summary_metrics(result)
    run.provenance.update({
        "steps": steps, "training_seconds": round(run.trained_seconds, 1),
        "seconds_per_step": round(run.trained_seconds / max(1, steps), 3),
        "best_checkpoint": {k: v for k, v in (run.best_checkpoint or {}).items() if k != "key"},
        "weights_from": chosen.stem, "keep": opts.keep, "final_validation": final,
    })
    final_spec = dataclasses.replace(spec, decoding=decoding, provenance=run.provenance)
    path = save_model(paths["model"], model, final_spec)
    yield TrainEvent("done", steps, steps, {}, 0.0, run.trained_seconds, path, metrics=final, data=result,
                     message=split.note)
    return path

def seconds_per_step(init: Optional[PathLike] = STARTER, device: str = "auto", batch_size: int = 4,
                     patch_field_um: Sequence[float] = DEFAULT_PATCH_FIELD_UM,
                     voxel_size: Sequence[float] = (1.0, 0.5, 0.5), levels: int = 4, base_filters: int = 8,
                     steps: int = 3, patch_shape: Optional[Sequence[int]] = None) -> float:
    """Median seconds of one training step (forward, backward, optimiser) of the network ``init`` (or a fresh
    one at ``voxel_size``) on random patches of the training patch size (or ``patch_shape``), on ``device``: for
    a time estimate before a run (the first step, which warms up, is not counted). Imports torch: call it in a worker."""
    import time

    init_path, _ = resolve_init(init)
    if init_path is not None:
        spec = load_spec(init_path)
        network, voxel = spec.network, spec.voxel_size
    else:
        voxel = parse_voxel_size(voxel_size)
        network = NetworkConfig.for_voxel_size(voxel, levels=levels, base_filters=base_filters)
    torch_device = select_device(device)
    module = build_network(network).to(torch_device).train()
    multiple = required_multiple(network)
    shape = [1 if (axis == 0 and network.spatial_dims == 2) else
             max(multiple[axis], int(round(float(patch_field_um[axis]) / float(voxel[axis]) / multiple[axis]))
                 * multiple[axis]) for axis in range(3)]
    if patch_shape is not None:
        shape = [int(p) for p in patch_shape]
    if network.spatial_dims == 2:
        shape = shape[1:]
    batch = torch.rand((batch_size, network.in_channels, *shape), device=torch_device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    times = []
    for _ in range(max(2, steps + 1)):
        started = time.perf_counter()
        loss = sum(output.float().square().mean() for output in module(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


__all__ = ["TrainingOptions", "run_training", "ValidationRun", "PauseToken", "STARTER", "choose_model_voxel_size",
           "choose_patch_shape", "output_paths", "seconds_per_step", "resolve_init", "score_outputs", "summary_metrics"]
