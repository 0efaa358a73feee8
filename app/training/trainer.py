"""The training job: a generator of :class:`TrainEvent` that validates, checkpoints, pauses and resumes.

The CLI drives it with a progress bar, the UI through its worker; no prints, no Qt.

Checkpoints (in ``checkpoint_dir``)
    ``last.ckpt.safetensors``
        Everything needed to resume, in **one** file written atomically: the weights (``model.*``), the
        optimiser state (``optimizer.*``) and, in the safetensors metadata, the model description and the
        run state (step, loss history, elapsed time, best score, the run's fingerprint). A run killed at
        any moment (even ``kill -9`` during a save) resumes exactly from the last complete checkpoint,
        and, since every step draws its batch from a generator seeded by ``(seed, step)``, redoes the
        lost steps with the same batches: the resumed run ends with the same weights as an
        uninterrupted one (on the CPU, where the kernels are deterministic).
    ``last.json`` + ``last.safetensors``
        The same weights as an ordinary model file (load it, predict with it).
    ``best.json`` + ``best.safetensors`` (+ ``best.state.json``)
        With a validator: the model of the best epoch so far, highest validation J = TPR − FDR at
        τL = 5 (``j5``), ties broken by the lower validation loss (``val_loss``; alone when the validator
        gives no J).

Older checkpoint folders (``last.json`` + ``last.optimizer.safetensors`` + ``last.state.json``) still resume.
Nothing is ever unpickled.

Events (``TrainEvent.kind``)
    ``step``        after every optimiser step (``losses`` of that batch);
    ``epoch``       every ``epoch_steps`` steps and at the end: ``losses`` = means over the epoch,
                    ``metrics`` = the validator's result (empty without one), ``best`` = a new best;
    ``checkpoint``  after a save (``path`` = the model ``.json``; ``best`` tells which);
    ``paused`` / ``resumed``  around a pause (a checkpoint is saved before pausing);
    ``done``        last; ``path`` = ``last.json``.

Mixed precision: none on a CPU (:func:`choose_autocast_dtype` says why), bf16 on CUDA GPUs that support
it, else fp16 with a gradient scaler. Cancelling (the
:class:`~app.core.jobs.CancelToken`) saves a checkpoint, then raises
:class:`~app.core.errors.CancelledError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from app.core.device import autocast_dtype, select_device
from app.core.errors import CellPolError
from app.core.fileutil import atomic_path, atomic_write_json
from app.core.jobs import CancelToken
from app.core.modelfile import ModelSpec, load_model, save_model
from app.core.network import build_network, preferred_memory_format, required_multiple
from app.training.data import PatchSampler
from app.training.jobcontrol import PauseToken, TrainEvent, TrainingClock, pause_point
from app.training.losses import LossConfig, compute_loss
from app.training.targets import make_targets

CHECKPOINT_FORMAT = "cellpol-checkpoint"
CHECKPOINT_VERSION = 1
LAST = "last"
BEST = "best"
#: Loss rows kept in a checkpoint's state (the CSV log written by the caller keeps all).
HISTORY_KEPT = 2000

#: ``validator(model, spec) -> metrics``: called at the end of each epoch with the training network
#: (the validator must not change it; the trainer puts it back in training mode afterwards).
Validator = Callable[[torch.nn.Module, ModelSpec], Mapping[str, float]]


@dataclass
class TrainConfig:
    """Optimisation settings; the architecture and voxel size live in ``spec``.

    ``epoch_steps`` sets how often an ``epoch`` event (and a validation) happens; ``device`` is ``auto``
    (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda[:N]`` or ``mps``; ``amp`` allows mixed precision
    where it is fast; ``deterministic`` makes cuDNN pick deterministic kernels.

    ``embedding_warmup_steps`` ramps the pull/push weights linearly from 0 to their full value over the
    first steps (0, the default: no ramp). Why one may want it: early in training from scratch the push
    term is an order of magnitude larger than the heatmap term and dominates the shared backbone; on small
    simulator runs (150 steps) the heatmap loss fell ~10× further with the embedding terms off, ~4× with
    their weight at 0.1 (``loss.pull_weight`` / ``loss.push_weight``), while a linear ramp over half the
    run gained little.

    ``encoder_lr_scale`` multiplies the learning rate of the U-Net's encoder (its contracting half, whose
    parameters are named ``encoders.*``) against the rest (decoder, branches, heads): 1, the default, trains
    every part alike; below 1 keeps the starter's features and adapts the decoder and heads more
    (discriminative fine-tuning); 0 freezes the encoder's weights (its batch-norm statistics still follow the
    data).
    """

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-5
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100
    epoch_steps: int = 100
    amp: bool = True
    deterministic: bool = True
    grad_clip: float = 5.0
    embedding_warmup_steps: int = 0
    encoder_lr_scale: float = 1.0
    sigma_um: dict[str, float] = field(default_factory=lambda: {"nucleus": 2.0, "golgi": 1.0})
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "epoch_steps", "embedding_warmup_steps"):
            value = getattr(self, name)
            least = 0 if name == "embedding_warmup_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CellPolError(f"{name} must be a whole number ≥ {least}, got {value!r}.")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise CellPolError(f"warmup_steps must be a whole number ≥ 0, got {self.warmup_steps!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise CellPolError(f"The learning rate must be a positive number, got {self.learning_rate!r}.")
        check_encoder_lr_scale(self.encoder_lr_scale)


def check_encoder_lr_scale(scale: Any) -> None:
    """Raise :class:`CellPolError` unless ``scale`` is a number from 0 to 1 (``TrainConfig.encoder_lr_scale``)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= 1.0:
        raise CellPolError(f"The encoder's learning-rate scale must be between 0 and 1, got {scale!r}.")


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _loss_at(step: int, config: TrainConfig) -> LossConfig:
    """The loss settings at ``step``: pull/push weights ramped over ``embedding_warmup_steps``."""
    if step >= config.embedding_warmup_steps:
        return config.loss
    ramp = step / config.embedding_warmup_steps
    return dataclasses.replace(config.loss, pull_weight=config.loss.pull_weight * ramp,
                               push_weight=config.loss.push_weight * ramp)


#: Parameter-name prefix of the U-Net's encoder (:class:`app.core.network.CellPolNet`), which
#: ``TrainConfig.encoder_lr_scale`` scales.
ENCODER_PREFIX = "encoders."


def parameter_groups(model: torch.nn.Module, encoder_lr_scale: float) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one for every parameter when ``encoder_lr_scale`` is 1, else the
    encoder's (``lr_scale`` = ``encoder_lr_scale``) then the rest's (1). A network without an encoder of that
    name is one group."""
    params = list(model.named_parameters())
    encoder = [p for name, p in params if name.startswith(ENCODER_PREFIX)]
    rest = [p for name, p in params if not name.startswith(ENCODER_PREFIX)]
    if encoder_lr_scale == 1.0 or not encoder or not rest:
        return [{"params": [p for _, p in params], "lr_scale": 1.0}]
    return [{"params": encoder, "lr_scale": float(encoder_lr_scale)}, {"params": rest, "lr_scale": 1.0}]


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def checkpoint_exists(checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a checkpoint a run would resume from."""
    folder = Path(checkpoint_dir)
    return (folder / f"{LAST}.ckpt.safetensors").is_file() or (folder / f"{LAST}.json").is_file()


def read_checkpoint_state(checkpoint_dir: Path) -> Optional[dict[str, Any]]:
    """The run state of the checkpoint in ``checkpoint_dir`` (step, fingerprint, best, ...), or None."""
    folder = Path(checkpoint_dir)
    path = folder / f"{LAST}.ckpt.safetensors"
    try:
        if path.is_file():
            with safe_open(str(path), framework="pt") as handle:
                return json.loads(handle.metadata()["state"])
        legacy = folder / f"{LAST}.state.json"
        if legacy.is_file():
            return json.loads(legacy.read_text(encoding="utf-8"))
    except (OSError, KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise CellPolError(f"The training checkpoint in {folder} is damaged ({exc}); delete the folder to start "
                           "again.") from None
    return None


def _save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: ModelSpec,
                     state: dict[str, Any]) -> Path:
    """Write the resumable checkpoint (one atomic file), then ``last.json`` as a loadable model."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"optimizer.{k}": v.detach().to("cpu").contiguous()
                    for k, v in optimizer_state_tensors(optimizer).items()})
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
                "spec": json.dumps(spec.to_dict()), "state": json.dumps(state, default=_json_default)}
    payload = st_save(tensors, metadata=metadata)
    with atomic_path(folder / f"{LAST}.ckpt.safetensors") as tmp:
        tmp.write_bytes(payload)
    return save_model(folder / LAST, model, spec)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _load_checkpoint(folder: Path, device: torch.device) -> tuple[torch.nn.Module, ModelSpec, dict, dict]:
    """``(model, spec, optimizer tensors, state)`` from ``folder`` (the current or the first layout)."""
    path = folder / f"{LAST}.ckpt.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            spec = ModelSpec.from_dict(json.loads(metadata["spec"]))
            state = json.loads(metadata["state"])
            model = build_network(spec.network)
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        except (SafetensorError, KeyError, ValueError, OSError, RuntimeError, CellPolError) as exc:
            raise CellPolError(f"The training checkpoint {path} is damaged ({exc}); delete {folder} to start "
                               "again.") from None
        optimizer = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        return model.to(device), spec, optimizer, state
    # The first layout: a model file, the optimiser beside it and a JSON state.
    model, spec = load_model(folder / f"{LAST}.json", device)
    state = json.loads((folder / f"{LAST}.state.json").read_text(encoding="utf-8"))
    optimizer_path = folder / f"{LAST}.optimizer.safetensors"
    optimizer = load_file(str(optimizer_path)) if optimizer_path.exists() else {}
    return model, spec, optimizer, state


def choose_autocast_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """The autocast dtype for training on ``device``: none on a CPU, bf16 or fp16 on a CUDA GPU.

    :func:`app.core.device.autocast_dtype` with ``purpose="training"`` (its notes say why a CPU trains in
    fp32 even where prediction uses bf16); fp16 trains with a gradient scaler.
    """
    return autocast_dtype(device, "training", amp)


def _best_key(metrics: Mapping[str, Any], epoch_losses: Mapping[str, float]) -> list[float]:
    """Larger is better: validation J at τL = 5, then −validation loss (−mean training loss as a last resort)."""
    def finite(name: str) -> Optional[float]:
        value = metrics.get(name)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    j5, val_loss = finite("j5"), finite("val_loss")
    if j5 is not None:
        return [j5, -val_loss if val_loss is not None else 0.0]
    if val_loss is not None:
        return [-val_loss]
    return [-float(epoch_losses.get("total", math.inf))]


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(step), 7]).generate_state(1, dtype=np.uint32)[0])


def train(spec: ModelSpec, sampler: PatchSampler, config: TrainConfig, checkpoint_dir: Path,
          cancel: Optional[CancelToken] = None, init: Optional[Path] = None, pause: Optional[PauseToken] = None,
          validator: Optional[Validator] = None, fingerprint: Optional[Mapping[str, Any]] = None
          ) -> Iterator[TrainEvent]:
    """Train (or resume) a network described by ``spec`` on patches from ``sampler``.

    Parameters
    ----------
    spec : ModelSpec
        Architecture, voxel size and the rest of the model description (saved with every checkpoint).
    sampler : PatchSampler
        Anything with ``sample(rng) -> (image (2, Z, Y, X), pairs)``; patch sizes must be multiples of the
        network's pooling (:func:`~app.core.network.required_multiple`). 2D networks get ``Z == 1``.
    config : TrainConfig
    checkpoint_dir : Path
        If it holds a checkpoint, training resumes from it; else it starts from ``init`` (a model file with
        the same architecture) or from a fresh network seeded by ``config.seed``.
    cancel, pause : CancelToken, PauseToken, optional
        Polled before every step.
    validator : callable, optional
        ``validator(model, spec) -> metrics`` at the end of every epoch (see :data:`Validator`).
    fingerprint : dict, optional
        What defines the run (data, settings). Stored in the checkpoint; resuming a checkpoint whose
        fingerprint differs raises :class:`CellPolError` instead of silently mixing two runs.

    Yields
    ------
    TrainEvent
        See the module docstring.
    """
    checkpoint_dir = Path(checkpoint_dir)
    device = _training_device(config)
    torch.manual_seed(config.seed)  # a fresh network's weights
    fingerprint = json.loads(json.dumps(dict(fingerprint), default=_json_default)) if fingerprint else None
    model, state, optimizer_tensors = _starting_point(spec, checkpoint_dir, init, device, fingerprint)
    _check_patch_shape(spec, sampler)
    session = _Session(spec, sampler, config, checkpoint_dir, device, model, state, optimizer_tensors, fingerprint)
    yield from session.steps(pause, cancel, validator)
    yield session.finish()


@dataclass
class _RunState:
    """What a run accumulates step by step, as its checkpoint keeps it (plus the epoch in progress)."""

    start_step: int = 0  # the step this sitting starts from (the checkpoint's)
    history: list[dict[str, float]] = field(default_factory=list)  # one loss row per step
    epochs: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    best: Optional[dict[str, Any]] = None  # the best epoch so far (with a validator)
    elapsed_s: float = 0.0  # training seconds before this sitting
    grad_scaler: Optional[dict] = None  # the fp16 gradient scaler's state
    epoch_losses: list[dict[str, float]] = field(default_factory=list)  # loss rows of the epoch in progress
    saved_at: int = 0  # the step of the last checkpoint
    learning_rate: float = 0.0  # that of the last step

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> "_RunState":
        return cls(start_step=int(state["step"]), history=list(state.get("losses", [])),
                   epochs=list(state.get("epochs", [])), best=state.get("best"),
                   elapsed_s=float(state.get("elapsed_s", 0.0)), grad_scaler=state.get("grad_scaler"))


def _training_device(config: TrainConfig) -> torch.device:
    """The device ``config.device`` names, with cuDNN's deterministic kernels where asked for."""
    device = select_device(config.device)
    if config.deterministic and device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


def _starting_point(spec: ModelSpec, checkpoint_dir: Path, init: Optional[Path], device: torch.device,
                    fingerprint: Optional[dict[str, Any]]
                    ) -> tuple[torch.nn.Module, _RunState, dict[str, torch.Tensor]]:
    """``(network, run state, optimiser tensors)``: the checkpoint's when there is one (after checking that it
    is of this run), else ``init``'s weights or a fresh network, at step 0."""
    if checkpoint_exists(checkpoint_dir):
        model, saved_spec, optimizer_tensors, saved = _load_checkpoint(checkpoint_dir, device)
        if saved_spec.network != spec.network:
            raise CellPolError(f"The checkpoint in {checkpoint_dir} is of another architecture than the model being "
                               "trained; delete that folder to start again.")
        _check_fingerprint(checkpoint_dir, fingerprint, saved.get("fingerprint"))
        state = _RunState.from_checkpoint(saved)
        # The checkpoint is the authority; ``last.json`` is its loadable copy, written after it, so a kill
        # between the two leaves the copy one checkpoint behind: bring it up to date before going on.
        save_model(checkpoint_dir / LAST, model, saved_spec)
        return model, state, optimizer_tensors
    if init is not None:
        model, init_spec = load_model(init, device)
        if init_spec.network != spec.network:
            raise CellPolError(f"{init}: its architecture differs from the one being trained.")
        return model, _RunState(), {}
    return build_network(spec.network).to(device), _RunState(), {}


def _check_fingerprint(checkpoint_dir: Path, fingerprint: Optional[Mapping[str, Any]],
                       saved_fingerprint: Optional[Mapping[str, Any]]) -> None:
    """Raise :class:`CellPolError` naming what differs when the checkpoint belongs to another run."""
    if fingerprint is not None and saved_fingerprint is not None and saved_fingerprint != fingerprint:
        differs = sorted(k for k in set(fingerprint) | set(saved_fingerprint)
                         if fingerprint.get(k) != saved_fingerprint.get(k))
        raise CellPolError(
            f"The checkpoint in {checkpoint_dir} belongs to a different training run (it differs in: "
            f"{', '.join(differs)}). Delete that folder (or start again, replacing it) to train anew, or "
            "run with the original settings to resume it.", settings={"overwrite": True}
        )


def _check_patch_shape(spec: ModelSpec, sampler: PatchSampler) -> None:
    """Raise :class:`CellPolError` when the sampler's patch does not fit the network's pooling."""
    multiple = required_multiple(spec.network)
    patch = tuple(getattr(sampler, "patch_shape", ()) or ())
    if patch:
        need = multiple if spec.network.spatial_dims == 3 else (1,) + multiple[1:]
        if len(patch) != 3 or any(p % m for p, m in zip(patch, need)) or (spec.network.spatial_dims == 2
                                                                           and patch[0] != 1):
            raise CellPolError(f"The training patch {patch} must be a multiple of {need} (the network's pooling)"
                               + (" with one plane" if spec.network.spatial_dims == 2 else "") + ".")


class _Session:
    """One sitting of a run: the network and its optimiser on the device, the clock, the checkpoints, and the
    run's state (:class:`_RunState`); :meth:`steps` trains, :meth:`finish` ends."""

    def __init__(self, spec: ModelSpec, sampler: PatchSampler, config: TrainConfig, checkpoint_dir: Path,
                 device: torch.device, model: torch.nn.Module, state: _RunState,
                 optimizer_tensors: Mapping[str, torch.Tensor], fingerprint: Optional[dict[str, Any]]) -> None:
        self.spec, self.sampler, self.config = spec, sampler, config
        self.checkpoint_dir, self.device, self.fingerprint = checkpoint_dir, device, fingerprint
        self.state = state
        self.memory_format = (preferred_memory_format(spec.network) if device.type in ("cpu", "cuda")
                              else torch.contiguous_format)
        self.model = model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config.encoder_lr_scale),
                                           lr=config.learning_rate, weight_decay=config.weight_decay)
        if state.start_step and optimizer_tensors:
            load_optimizer_state(self.optimizer, {k: v.to(device) for k, v in optimizer_tensors.items()})
        self.autocast_dtype = choose_autocast_dtype(device, config.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        if self.scaler is not None and state.grad_scaler:
            self.scaler.load_state_dict(state.grad_scaler)
        self.clock = TrainingClock(state.elapsed_s)
        state.saved_at = state.start_step
        state.epoch_losses = [h for h in state.history
                              if h["step"] > state.start_step - state.start_step % config.epoch_steps]

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint_state(self, step: int) -> dict[str, Any]:
        state = self.state
        return {"step": step, "total_steps": self.config.steps, "losses": state.history[-HISTORY_KEPT:],
                "epochs": state.epochs, "best": state.best, "elapsed_s": round(self.clock.seconds(), 3),
                "fingerprint": self.fingerprint,
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def save(self, step: int) -> Path:
        self.state.saved_at = step
        return _save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.spec, self.checkpoint_state(step))

    def save_if_needed(self, step: int) -> Path:
        if self.state.saved_at != step or not checkpoint_exists(self.checkpoint_dir):
            self.save(step)
        return self.checkpoint_dir / f"{LAST}.json"

    # --- the step loop ----------------------------------------------------------------------------
    def steps(self, pause: Optional[PauseToken], cancel: Optional[CancelToken],
              validator: Optional[Validator]) -> Iterator[TrainEvent]:
        """Every step from the start step on: ``step``, ``epoch`` (+ best ``checkpoint``) and ``checkpoint``
        events, pausing and cancelling before each step."""
        config, state = self.config, self.state
        self.model.train()
        state.learning_rate = _lr_at(state.start_step, config)
        for step in range(state.start_step, config.steps):
            yield from pause_point(step, config.steps, pause, cancel, self.clock, self.save_if_needed)
            batch, targets = self.draw_batch(step)
            losses = self.optimise(step, batch, targets)
            yield TrainEvent("step", step + 1, config.steps, losses, state.learning_rate, self.clock.seconds(),
                             epoch=step // config.epoch_steps + 1)
            done = step + 1
            if done % config.epoch_steps == 0 or done == config.steps:
                yield from self.end_epoch(done, validator)
            if done % config.checkpoint_every == 0 or done == config.steps:
                path = self.save(done)
                yield TrainEvent("checkpoint", done, config.steps, losses, state.learning_rate, self.clock.seconds(),
                                 path, epoch=(done - 1) // config.epoch_steps + 1)

    def draw_batch(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step ``step``'s batch and targets on the device, drawn from a generator seeded by the step."""
        config, spec = self.config, self.spec
        rng = np.random.default_rng([config.seed, step])  # a resumed run sees the same batches
        torch.manual_seed(step_seed(config.seed, step))  # and the same dropout masks
        images, target_list = [], []
        for _ in range(config.batch_size):
            image, pairs = self.sampler.sample(rng)
            images.append(image)
            target_list.append(make_targets(pairs, image.shape[1:], spec.voxel_size, config.sigma_um))
        batch = torch.from_numpy(np.stack(images))
        targets = {key: torch.from_numpy(np.stack([t[key] for t in target_list])[:, None])
                   for key in target_list[0]}
        if spec.network.spatial_dims == 2:  # (B, C, 1, Y, X) → (B, C, Y, X)
            batch = batch[:, :, 0]
            targets = {key: value[:, :, 0] for key, value in targets.items()}
        batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
        targets = {key: value.to(self.device) for key, value in targets.items()}
        return batch, targets

    def optimise(self, step: int, batch: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on ``batch``; its losses, added to the run's history."""
        config, state, model, optimizer, scaler = self.config, self.state, self.model, self.optimizer, self.scaler
        state.learning_rate = _lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = state.learning_rate * group.get("lr_scale", 1.0)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            outputs = model(batch)
        outputs = {k: v.float() for k, v in outputs.items()}
        parts = compute_loss(outputs, targets, _loss_at(step, config), tuple(self.spec.voxel_size))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(parts["total"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
        losses = {k: float(v.detach()) for k, v in parts.items()}
        if not math.isfinite(losses["total"]):
            raise CellPolError(f"Training diverged at step {step + 1} (the loss is not a number); "
                               "try a lower learning rate.")
        row = {"step": step + 1, **{k: round(v, 6) for k, v in losses.items()}}
        state.history.append(row)
        state.epoch_losses.append(row)
        return losses

    def end_epoch(self, done: int, validator: Optional[Validator]) -> Iterator[TrainEvent]:
        """The ``epoch`` event after step ``done`` (mean losses, the validator's metrics) and, for a new best
        epoch, its model ``best`` and a ``checkpoint`` event."""
        config, state = self.config, self.state
        epoch = (done - 1) // config.epoch_steps + 1
        keys = [k for k in state.epoch_losses[0] if k != "step"] if state.epoch_losses else []
        means = {k: float(np.mean([r[k] for r in state.epoch_losses])) for k in keys}
        state.epoch_losses = []
        metrics: dict[str, Any] = {}
        if validator is not None:
            metrics = dict(validator(self.model, self.spec))
            self.model.train()
        key = _best_key(metrics, means)
        is_best = validator is not None and (state.best is None or key > list(state.best["key"]))
        state.epochs.append({"epoch": epoch, "step": done, "losses": means, "metrics": metrics, "best": is_best})
        yield TrainEvent("epoch", done, config.steps, means, state.learning_rate, self.clock.seconds(), epoch=epoch,
                         metrics=metrics, best=is_best)
        if is_best:
            state.best = {"key": key, "step": done, "epoch": epoch, "metrics": metrics, "losses": means}
            path = save_model(self.checkpoint_dir / BEST, self.model, self.spec)
            atomic_write_json(self.checkpoint_dir / f"{BEST}.state.json", state.best)
            yield TrainEvent("checkpoint", done, config.steps, means, state.learning_rate, self.clock.seconds(), path,
                             epoch=epoch, metrics=metrics, best=True)

    def finish(self) -> TrainEvent:
        """Save the last step if not yet saved; the ``done`` event."""
        config, state = self.config, self.state
        if state.saved_at != config.steps and config.steps > state.start_step:
            self.save(config.steps)
        return TrainEvent("done", config.steps, config.steps, state.history[-1] if state.history else {}, 0.0,
                          self.clock.seconds(), self.checkpoint_dir / f"{LAST}.json",
                          metrics={"best": state.best} if state.best else {})


def train_config_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready view of a :class:`TrainConfig` for provenance."""
    out = asdict(config)
    out["loss"] = config.loss.to_dict()
    return out
