"""Training a Vox2Vox generator: the job :func:`train_vox2vox` and its steps.

The job reads and masks the images (:func:`_load_data`), describes the run (:func:`_describe_run`: patch,
volume shape, fingerprint, provenance), builds the networks (:func:`_build_networks`), resumes a checkpoint of
the same run (:func:`_resume`), trains step by step (:meth:`_Session.steps`: a pix2pix step, the SSIM every
``eval_every`` steps, checkpoints) and writes the generator (:meth:`_Session.finish`).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn
from torch.nn import functional as F

from app.core import masks as masks_mod
from app.core.device import select_device
from app.core.errors import CellPolError
from app.core.fileutil import atomic_path
from app.core.jobs import CancelToken, check_cancel
from app.core.masks import GOLGI_BOX_UM, NUCLEUS_BOX_UM, LayoutParams, ShapeLibrary
from app.core.modelfile import model_paths
from app.core.volume import parse_voxel_size
from app.training import dataset
from app.training.data import AugmentConfig, PatchSampler, PreparedVolume
from app.training.finetune import CsvLog, choose_model_voxel_size
from app.training.jobcontrol import TrainingClock, check_output, pause_point
from app.training.trainer import (
    PauseToken,
    TrainEvent,
    checkpoint_exists,
    choose_autocast_dtype,
    load_optimizer_state,
    optimizer_state_tensors,
    read_checkpoint_state,
    step_seed,
)
from app.training.vox2vox.evaluation import (
    MAX_VOLUME_SHAPE,
    MaskedVolume,
    _to_signed,
    evaluate_generator,
    masked_volume,
)
from app.training.vox2vox.files import GeneratorSpec, PathLike, check_shape, save_generator
from app.training.vox2vox.networks import PatchDiscriminator, UNetGenerator, Vox2VoxConfig

CHECKPOINT_FORMAT = "cellpol-vox2vox-checkpoint"
LAST = "last"
#: The paper's weight of the L1 term.
L1_WEIGHT = 100.0
#: Default training patch, µm (z, y, x): a few cells; rounded to the generator's strides.
DEFAULT_PATCH_FIELD_UM = (12.0, 32.0, 32.0)
LOSS_KEYS = ("d", "g_gan", "g_l1", "g_total")
LOG_COLUMNS = ("step", "seconds", "learning_rate") + LOSS_KEYS
EVAL_COLUMNS = ("step", "seconds", "ssim", "ssim_nucleus", "ssim_golgi", "l1")
HISTORY_KEPT = 2000


@dataclass
class Vox2VoxOptions:
    """A Vox2Vox training run (the CLI's ``cellpol vox2vox train``; the GUI fills the same).

    ``images``/``vectors`` are read as ``cellpol train`` reads them; validation (the SSIM) is on
    ``val_images`` if given, else a seeded hold-out of whole images, else the training image itself.
    ``patch_shape`` is in voxels at the model's voxel size (``model_voxel_size``, default: the images'
    median within 0.25–1 µm in x/y, as ``cellpol train`` chooses it) and must be a multiple of the
    generator's strides. ``eval_every`` steps between SSIM evaluations (and checkpoints unless
    ``checkpoint_every``). ``overwrite`` replaces an existing generator and discards its checkpoints.
    """

    images: Union[PathLike, Sequence[PathLike]]
    out: PathLike
    vectors: Optional[PathLike] = None
    val_images: Union[PathLike, Sequence[PathLike], None] = None
    val_vectors: Optional[PathLike] = None
    steps: int = 2000
    patch_shape: Optional[Sequence[int]] = None
    batch_size: int = 2
    learning_rate: float = 2e-4
    beta1: float = 0.5
    l1_weight: float = L1_WEIGHT
    seed: int = 0
    device: str = "auto"
    voxel_size: Optional[Sequence[float]] = None
    axes: Optional[str] = None
    nucleus_channel: Optional[int] = None
    golgi_channel: Optional[int] = None
    model_voxel_size: Optional[Sequence[float]] = None
    val_fraction: float = 0.2
    eval_every: int = 100
    checkpoint_every: Optional[int] = None
    levels: int = 4
    base_filters: int = 16
    nucleus_box_um: Sequence[float] = NUCLEUS_BOX_UM
    golgi_box_um: Sequence[float] = GOLGI_BOX_UM
    amp: bool = True
    overwrite: bool = False
    name: Optional[str] = None

    def check(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "levels", "base_filters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CellPolError(f"{name.replace('_', ' ')} must be a whole number ≥ 1, got {value!r}.")
        if self.checkpoint_every is not None and (not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1):
            raise CellPolError(f"checkpoint every must be a whole number ≥ 1, got {self.checkpoint_every!r}.")
        for name in ("learning_rate", "l1_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0) or (
                    name == "learning_rate" and value == 0):
                raise CellPolError(f"The {name.replace('_', ' ')} must be a positive number, got {value!r}.")
        if not 0.0 <= self.beta1 < 1.0:
            raise CellPolError(f"beta1 must be in [0, 1), got {self.beta1}.")
        if self.patch_shape is not None and (len(self.patch_shape) != 3 or min(int(p) for p in self.patch_shape) < 1):
            raise CellPolError(f"The patch must be three positive sizes Z Y X, got {list(self.patch_shape)}.")
        if self.model_voxel_size is not None:
            parse_voxel_size(self.model_voxel_size)
        if self.voxel_size is not None:
            parse_voxel_size(self.voxel_size)


def _event(kind: str, total: int, message: str = "", **extra: Any) -> TrainEvent:
    return TrainEvent(kind, extra.pop("step", 0), total, extra.pop("losses", {}), extra.pop("learning_rate", 0.0),
                      extra.pop("seconds", 0.0), message=message, **extra)


def _default_patch(voxel: Sequence[float], multiple: Sequence[int], volumes: Sequence[MaskedVolume]) -> tuple[int, int, int]:
    largest = np.max([v.image.shape[1:] for v in volumes], axis=0)
    out = []
    for field_um, v, m, big in zip(DEFAULT_PATCH_FIELD_UM, voxel, multiple, largest):
        want = max(m, int(round(field_um / v / m)) * m)
        out.append(int(min(want, max(m, int(math.ceil(big / m)) * m))))
    return tuple(out)  # type: ignore[return-value]


def _default_volume_shape(multiple: Sequence[int], patch: Sequence[int], volumes: Sequence[MaskedVolume]) -> tuple[int, int, int]:
    """The generation default: the training images' median shape, at most :data:`MAX_VOLUME_SHAPE`, at least
    the patch, rounded down to the strides."""
    median = np.median([v.image.shape[1:] for v in volumes], axis=0)
    return tuple(int(max(p, min(big, med) // m * m))
                 for med, big, m, p in zip(median, MAX_VOLUME_SHAPE, multiple, patch))  # type: ignore[return-value]


def output_paths(out: PathLike) -> dict[str, Path]:
    """Where a run writes: the generator ``.json``, ``checkpoints/``, the loss log and the SSIM log."""
    json_path, _ = model_paths(out)
    stem = json_path.with_suffix("")
    return {"model": json_path, "checkpoints": stem.with_name(stem.name + ".checkpoints"),
            "log": stem.with_name(stem.name + ".log.csv"), "eval_log": stem.with_name(stem.name + ".ssim.csv")}


def _save_checkpoint(folder: Path, parts: Mapping[str, Any], spec: GeneratorSpec, state: Mapping[str, Any]) -> None:
    """One atomic safetensors file: every module's weights and optimiser state under its own prefix, and
    the spec and run state in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, part in parts.items():
        source = part.state_dict() if isinstance(part, nn.Module) else optimizer_state_tensors(part)
        tensors.update({f"{prefix}.{k}": v.detach().to("cpu").contiguous() for k, v in source.items()})
    metadata = {"format": CHECKPOINT_FORMAT, "version": "1", "spec": json.dumps(spec.to_dict()),
                "state": json.dumps(dict(state), default=_json_default)}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{LAST}.ckpt.safetensors") as tmp:
        tmp.write_bytes(st_save(tensors, metadata=metadata))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _load_checkpoint(folder: Path, parts: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Restore ``parts`` (modules and optimisers by prefix) from ``folder``; return the run state."""
    path = folder / f"{LAST}.ckpt.safetensors"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a Vox2Vox checkpoint (format {metadata.get('format')!r})")
        state = json.loads(metadata["state"])
        for prefix, part in parts.items():
            own = {k[len(prefix) + 1:]: v.to(device) for k, v in tensors.items() if k.startswith(prefix + ".")}
            if isinstance(part, nn.Module):
                part.load_state_dict(own)
            elif own:
                load_optimizer_state(part, own)
    except (SafetensorError, KeyError, ValueError, OSError, RuntimeError) as exc:
        raise CellPolError(f"The Vox2Vox checkpoint {path} is damaged or of another run ({exc}); delete {folder} "
                           "to start again.") from None
    return state



def train_vox2vox(options: Vox2VoxOptions, cancel: Optional[CancelToken] = None,
                  pause: Optional[PauseToken] = None) -> Generator[TrainEvent, None, Path]:
    """Train a Vox2Vox generator on the user's annotated images (see :mod:`app.training.vox2vox`).

    Yields :class:`~app.training.trainer.TrainEvent`: ``info`` (data, split, settings, resume), ``step``
    (``losses``: ``d``, ``g_gan``, ``g_l1``, ``g_total``), ``epoch`` every ``eval_every`` steps and at the
    end (``metrics``: ``ssim``, ``ssim_nucleus``, ``ssim_golgi``, ``l1`` on the held-out volumes),
    ``checkpoint``, ``paused``/``resumed`` and last ``done`` (``path`` = the generator ``.json``,
    ``metrics`` = the final SSIM). Returns the generator's ``.json`` path.

    Raises
    ------
    CellPolError
        Bad input (one clear message), an existing generator without ``overwrite``, a checkpoint of another
        run. :class:`~app.core.errors.CancelledError` when cancelled (a checkpoint is saved first).
    """
    opts = options
    opts.check()
    paths = output_paths(opts.out)
    check_output(paths, opts.overwrite)
    boxes = {"nucleus": [float(v) for v in masks_mod.check_box(opts.nucleus_box_um, "nucleus")],
             "golgi": [float(v) for v in masks_mod.check_box(opts.golgi_box_um, "Golgi")]}
    device = select_device(opts.device)
    data = yield from _load_data(opts, boxes, cancel)
    spec, fingerprint = yield from _describe_run(opts, paths, data, boxes, device)
    if opts.overwrite:
        _discard_previous_run(paths)
    parts = _build_networks(opts, spec.config, device)
    state = yield from _resume(opts, paths, parts, fingerprint, device)
    session = _Session(opts, paths, spec, data, parts, state, fingerprint, device)
    yield from session.steps(pause, cancel)
    path = yield from session.finish(cancel)
    return path


@dataclass
class _Data:
    """The images read and masked at the model's voxel size, and what their annotations taught."""

    split: dataset.Split
    voxel: tuple[float, float, float]
    config: Vox2VoxConfig
    masked: list[MaskedVolume]  # every image: the training ones, then validation images not among them
    train_volumes: list[MaskedVolume]
    val_volumes: list[MaskedVolume]
    library: ShapeLibrary
    layout: LayoutParams
    missed: dict[str, int]  # annotated objects no mask was found for, per class
    normalization: dict[str, float]  # how the images were scaled to [0, 1] (per-channel percentiles)

    @property
    def n_pairs(self) -> int:
        return sum(len(m.pairs) for m in self.train_volumes)


@dataclass
class _RunState:
    """What a run accumulates step by step, as its checkpoint keeps it."""

    start_step: int = 0  # the step this sitting starts from (the checkpoint's)
    history: list[dict[str, float]] = field(default_factory=list)  # one loss row per step
    evaluations: list[dict[str, float]] = field(default_factory=list)  # one SSIM row per evaluation
    elapsed_s: float = 0.0  # training seconds before this sitting
    saved_at: int = 0  # the step of the last checkpoint
    final: Optional[dict[str, float]] = None  # the latest evaluation of this sitting




def _load_data(opts: Vox2VoxOptions, boxes: Mapping[str, Sequence[float]],
               cancel: Optional[CancelToken]) -> Generator[TrainEvent, None, _Data]:
    """Read, check and split the images, make their object masks at the model's voxel size, and learn the
    mask dictionary and the layout limits (``info`` events on the data, the split and the limits)."""
    steps = opts.steps
    data = dataset.load_training_data(opts.images, opts.vectors, opts.val_images, opts.val_vectors, seed=opts.seed,
                                      val_fraction=opts.val_fraction, cancel=cancel, voxel_size=opts.voxel_size,
                                      axes=opts.axes, nucleus_channel=opts.nucleus_channel,
                                      golgi_channel=opts.golgi_channel)
    split = data.split
    if data.is_2d:
        raise CellPolError("Vox2Vox needs 3D stacks; these images are 2D (one plane).")
    for warning in data.warnings:
        yield _event("info", steps, "Warning: " + warning)
    every = list(split.train) + [v for v in split.validation if all(v is not t for t in split.train)]
    voxel = (parse_voxel_size(opts.model_voxel_size) if opts.model_voxel_size is not None
             else choose_model_voxel_size([item.volume for item in every]))
    config = Vox2VoxConfig.for_voxel_size(voxel, opts.levels, base_filters=opts.base_filters)
    normalization = {"low_percentile": 1.0, "high_percentile": 99.8}
    masked: dict[int, MaskedVolume] = {}
    for item in every:
        check_cancel(cancel)
        masked[id(item)] = masked_volume(item, voxel, normalization, boxes)
    train_volumes = [masked[id(i)] for i in split.train]
    val_volumes = [masked[id(i)] for i in split.validation]
    library = ShapeLibrary.from_masks([m.found for m in masked.values()], voxel)
    library.check()
    missed = {k: sum(m.found.missed[k] for m in masked.values()) for k in ("nucleus", "golgi")}
    layout = masks_mod.learn_layout_params([(m.pairs, m.image.shape[1:]) for m in masked.values()], seed=opts.seed)
    out = _Data(split, voxel, config, list(masked.values()), train_volumes, val_volumes, library, layout, missed,
                normalization)
    yield _event("info", steps, f"Training data: {len(train_volumes)} image(s) with {out.n_pairs} pairs at voxel "
                 f"size {'×'.join(f'{v:g}' for v in voxel)} µm; object masks: {len(library.nuclei)} nuclei, "
                 f"{len(library.golgi)} Golgi" + (f" ({missed['nucleus']} nuclei and {missed['golgi']} Golgi found no "
                                                  "mask)" if any(missed.values()) else "") + ".")
    yield _event("info", steps, f"SSIM: {split.note}", data={"split": split.mode})
    yield _event("info", steps, f"Layout limits ({layout.source}): nucleus→Golgi ≤ {layout.max_pair_distance_um:.1f} "
                 f"µm, objects ≥ {layout.min_separation_um:.1f} µm apart, {layout.pairs_per_1000_um2:.2f} pairs per "
                 "1000 µm².")
    return out


def _describe_run(opts: Vox2VoxOptions, paths: Mapping[str, Path], data: _Data, boxes: dict[str, list[float]],
                  device: torch.device) -> Generator[TrainEvent, None, tuple[GeneratorSpec, dict[str, Any]]]:
    """The generator's description (patch, default volume shape, provenance) and the run's fingerprint (a
    checkpoint of another fingerprint is not resumed); an ``info`` event on the settings."""
    steps, config, voxel, split = opts.steps, data.config, data.voxel, data.split
    train_volumes, val_volumes = data.train_volumes, data.val_volumes
    patch = (check_shape(opts.patch_shape, config.multiple, "patch") if opts.patch_shape is not None
             else _default_patch(voxel, config.multiple, train_volumes))
    shape = _default_volume_shape(config.multiple, patch, data.masked)
    fingerprint = {"train_images": [[m.name, len(m.pairs), list(m.image.shape[1:])] for m in train_volumes],
                   "validation_images": [[m.name, len(m.pairs)] for m in val_volumes], "steps": steps,
                   "seed": opts.seed, "batch_size": opts.batch_size, "learning_rate": opts.learning_rate,
                   "beta1": opts.beta1, "l1_weight": opts.l1_weight, "patch": list(patch), "voxel_size": list(voxel),
                   "architecture": config.to_dict(), "boxes_um": boxes}
    provenance: dict[str, Any] = {
        "trained_by": "cellpol vox2vox train",
        "training_images": [{"name": m.name, "pairs": len(m.pairs), "shape_zyx": list(m.image.shape[1:])}
                            for m in train_volumes],
        "validation_images": [m.name for m in val_volumes], "validation_split": split.mode,
        "validation_note": split.note, "masks_missed": data.missed,
        "train": {"steps": steps, "batch_size": opts.batch_size, "learning_rate": opts.learning_rate,
                  "beta1": opts.beta1, "l1_weight": opts.l1_weight, "seed": opts.seed},
        "device": str(device), "torch": torch.__version__, "host": platform.node(),
    }
    name = opts.name or paths["model"].stem
    spec = GeneratorSpec(config, voxel, patch, shape, data.layout, data.normalization, boxes, provenance, name,
                         f"Vox2Vox generator trained on {len(train_volumes)} image(s) with {data.n_pairs} pairs.")
    yield _event("info", steps, f"Generator: {len(config.strides)} levels, strides "
                 f"{[list(s) for s in config.strides]}, patch {'×'.join(map(str, patch))} voxels, batch "
                 f"{opts.batch_size}, on {device}.")
    return spec, json.loads(json.dumps(fingerprint, default=_json_default))


def _discard_previous_run(paths: Mapping[str, Path]) -> None:
    """Overwriting: the checkpoints and logs of an earlier run go."""
    if paths["checkpoints"].is_dir():
        shutil.rmtree(paths["checkpoints"])
    for key in ("log", "eval_log"):
        if paths[key].exists():
            paths[key].unlink()


def _build_networks(opts: Vox2VoxOptions, config: Vox2VoxConfig, device: torch.device) -> dict[str, Any]:
    """The generator, the discriminator and their optimisers, by checkpoint prefix; seeded by ``opts.seed``."""
    torch.manual_seed(opts.seed)
    generator = UNetGenerator(config).to(device)
    discriminator = PatchDiscriminator(config).to(device)
    betas = (opts.beta1, 0.999)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=opts.learning_rate, betas=betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=opts.learning_rate, betas=betas)
    return {"generator": generator, "discriminator": discriminator, "optimizer_g": optimizer_g,
            "optimizer_d": optimizer_d}


def _resume(opts: Vox2VoxOptions, paths: Mapping[str, Path], parts: Mapping[str, Any], fingerprint: dict[str, Any],
            device: torch.device) -> Generator[TrainEvent, None, _RunState]:
    """The run state to start from: a checkpoint's (of this run only; its weights and optimiser states go
    into ``parts``, and an ``info`` event says so), else a new run's."""
    if not checkpoint_exists(paths["checkpoints"]):
        return _RunState()
    saved = read_checkpoint_state(paths["checkpoints"]) or {}
    if saved.get("fingerprint") != fingerprint:
        old = saved.get("fingerprint") or {}
        differs = sorted(k for k in set(fingerprint) | set(old) if fingerprint.get(k) != old.get(k))
        raise CellPolError(
            f"The checkpoint in {paths['checkpoints']} belongs to a different Vox2Vox run (it differs in: "
            f"{', '.join(differs) or 'its format'}). Start again, replacing it, or run with the original "
            "settings to resume it.", settings={"overwrite": True})
    state = _load_checkpoint(paths["checkpoints"], parts, device)
    resumed = _RunState(start_step=int(state["step"]), history=list(state.get("losses", [])),
                        evaluations=list(state.get("evaluations", [])), elapsed_s=float(state.get("elapsed_s", 0.0)))
    yield _event("info", opts.steps, f"Resuming from the checkpoint at step {resumed.start_step} in "
                 f"{paths['checkpoints']}.", step=resumed.start_step)
    return resumed


class _Session:
    """One sitting of a run: the networks on the device, the patch sampler, the logs, the clock and the run's
    state (:class:`_RunState`); :meth:`steps` trains, :meth:`finish` writes the generator."""

    def __init__(self, opts: Vox2VoxOptions, paths: Mapping[str, Path], spec: GeneratorSpec, data: _Data,
                 parts: dict[str, Any], state: _RunState, fingerprint: dict[str, Any], device: torch.device) -> None:
        self.opts, self.paths, self.spec, self.data = opts, paths, spec, data
        self.parts, self.state, self.fingerprint, self.device = parts, state, fingerprint, device
        augment = AugmentConfig(flip_y=0.5, flip_x=0.5, rotate90=0.5, flip_z=0.0, intensity=0.0, gamma=0.0, noise=0.0)
        self.sampler = PatchSampler([PreparedVolume(np.concatenate([m.masks, m.image]), m.pairs, m.name)
                                     for m in data.train_volumes], spec.patch_shape, augment, foreground_fraction=0.9)
        self.autocast_dtype = choose_autocast_dtype(device, opts.amp)
        if self.autocast_dtype == torch.float16:  # fp16 would need a gradient scaler per optimiser; not worth it
            self.autocast_dtype = None
        self.checkpoint_every = opts.checkpoint_every or opts.eval_every
        self.log = CsvLog(paths["log"], LOG_COLUMNS)
        self.eval_log = CsvLog(paths["eval_log"], EVAL_COLUMNS)
        self.clock = TrainingClock(state.elapsed_s)
        state.saved_at = state.start_step

    # --- checkpoints ------------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        state = self.state
        state.saved_at = step
        saved = {"step": step, "total_steps": self.opts.steps, "losses": state.history[-HISTORY_KEPT:],
                 "evaluations": state.evaluations, "elapsed_s": round(self.clock.seconds(), 3),
                 "fingerprint": self.fingerprint}
        _save_checkpoint(self.paths["checkpoints"], self.parts, self.spec, saved)
        return self.paths["checkpoints"] / f"{LAST}.ckpt.safetensors"

    def save_if_needed(self, step: int) -> Path:
        if self.state.saved_at != step or not checkpoint_exists(self.paths["checkpoints"]):
            self.save(step)
        return self.paths["checkpoints"] / f"{LAST}.ckpt.safetensors"

    # --- the step loop ----------------------------------------------------------------------------
    def steps(self, pause: Optional[PauseToken], cancel: Optional[CancelToken]) -> Iterator[TrainEvent]:
        """Every step from the start step on: ``step``, ``epoch`` (the SSIM, every ``eval_every`` steps and at the
        end) and ``checkpoint`` events, pausing and cancelling before each step."""
        opts, state, seconds = self.opts, self.state, self.clock.seconds
        steps = opts.steps
        self.parts["generator"].train()
        self.parts["discriminator"].train()
        for step in range(state.start_step, steps):
            yield from pause_point(step, steps, pause, cancel, self.clock, self.save_if_needed)
            losses = self.train_step(step)
            done = step + 1
            row = {"step": done, **{k: round(v, 6) for k, v in losses.items()}}
            state.history.append(row)
            self.log.write({**row, "seconds": round(seconds(), 3), "learning_rate": opts.learning_rate})
            yield _event("step", steps, step=done, losses=losses, learning_rate=opts.learning_rate, seconds=seconds())
            if done % opts.eval_every == 0 or done == steps:
                yield self.evaluate(done, losses, cancel)
            if done % self.checkpoint_every == 0 or done == steps:
                yield _event("checkpoint", steps, step=done, seconds=seconds(), path=self.save(done))

    def train_step(self, step: int) -> dict[str, float]:
        """Step ``step``: a batch drawn from a generator seeded by the step, one pix2pix update; its losses."""
        opts = self.opts
        rng = np.random.default_rng([opts.seed, step])  # a resumed run draws the same batches
        torch.manual_seed(step_seed(opts.seed, step))  # and the same dropout masks
        batch = torch.from_numpy(_to_signed(np.stack([self.sampler.sample(rng)[0] for _ in range(opts.batch_size)])))
        batch = batch.to(self.device)
        condition, real = batch[:, :2], batch[:, 2:]
        parts = self.parts
        losses = _gan_step(parts["generator"], parts["discriminator"], parts["optimizer_g"], parts["optimizer_d"],
                           condition, real, opts.l1_weight, self.device, self.autocast_dtype)
        if not all(math.isfinite(v) for v in losses.values()):
            raise CellPolError(f"Vox2Vox training diverged at step {step + 1} (a loss is not a number); "
                               "try a lower learning rate.")
        return losses

    def evaluate(self, done: int, losses: Mapping[str, float], cancel: Optional[CancelToken]) -> TrainEvent:
        """The SSIM on the validation volumes after step ``done``, logged; the ``epoch`` event."""
        opts, state, seconds = self.opts, self.state, self.clock.seconds
        metrics = state.final = evaluate_generator(self.parts["generator"], self.data.val_volumes, self.device, cancel)
        state.evaluations.append({"step": done, **{k: round(v, 5) for k, v in metrics.items()}})
        self.eval_log.write({"step": done, "seconds": round(seconds(), 3), **metrics})
        return _event("epoch", opts.steps, step=done, losses=losses, seconds=seconds(), metrics=metrics,
                      epoch=done // opts.eval_every)

    def finish(self, cancel: Optional[CancelToken]) -> Generator[TrainEvent, None, Path]:
        """Write the generator file (its provenance: time, final and past SSIM); the ``done`` event."""
        opts, state, spec, seconds = self.opts, self.state, self.spec, self.clock.seconds
        steps = opts.steps
        final = state.final
        if final is None:  # resumed after the last step: the evaluation of the checkpoint, or a new one
            final = ({k: v for k, v in state.evaluations[-1].items() if k != "step"} if state.evaluations
                     else evaluate_generator(self.parts["generator"], self.data.val_volumes, self.device, cancel))
        spec.provenance.update({"steps": steps, "training_seconds": round(seconds(), 1),
                                "seconds_per_step": round(seconds() / max(1, steps), 3), "final_ssim": final,
                                "ssim_history": state.evaluations[-200:]})
        path = save_generator(self.paths["model"], self.parts["generator"], spec, self.data.library)
        yield _event("done", steps, self.data.split.note, step=steps, seconds=seconds(), path=path, metrics=final)
        return path


def _gan_step(generator: UNetGenerator, discriminator: PatchDiscriminator, optimizer_g: torch.optim.Optimizer,
              optimizer_d: torch.optim.Optimizer, condition: torch.Tensor, real: torch.Tensor, l1_weight: float,
              device: torch.device, autocast_dtype: Optional[torch.dtype]) -> dict[str, float]:
    """One pix2pix step: the discriminator on a real and a fake pair, then the generator through it."""
    def autocast():
        return (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())

    with autocast():
        fake = generator(condition)
    fake = fake.float()
    discriminator.requires_grad_(True)
    with autocast():
        logits_real = discriminator(condition, real).float()
        logits_fake = discriminator(condition, fake.detach()).float()
    loss_d = 0.5 * (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                    + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    optimizer_d.zero_grad(set_to_none=True)
    loss_d.backward()
    optimizer_d.step()

    discriminator.requires_grad_(False)  # the generator's step does not train the discriminator
    with autocast():
        logits = discriminator(condition, fake).float()
    loss_gan = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss_l1 = F.l1_loss(fake, real)
    loss_g = loss_gan + l1_weight * loss_l1
    optimizer_g.zero_grad(set_to_none=True)
    loss_g.backward()
    optimizer_g.step()
    discriminator.requires_grad_(True)
    return {"d": float(loss_d.detach()), "g_gan": float(loss_gan.detach()), "g_l1": float(loss_l1.detach()),
            "g_total": float(loss_g.detach())}

