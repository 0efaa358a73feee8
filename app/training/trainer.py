"""The training job: a generator of :class:`TrainEvent` that checkpoints and resumes.

The CLI drives it with a progress bar, the UI through its worker; no prints, no Qt. Checkpoints are
written as model files (safetensors + JSON, never pickle) plus the optimiser state in safetensors, so
a run killed at any moment resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from app.core.errors import CellPolError
from app.core.fileutil import atomic_path, atomic_write_json
from app.core.jobs import CancelToken, check_cancel
from app.core.modelfile import ModelSpec, load_model, save_model
from app.core.network import build_network, cpu_bf16_is_fast, preferred_memory_format
from app.training.data import PatchSampler
from app.training.losses import LossConfig, compute_loss
from app.training.targets import make_targets


@dataclass
class TrainConfig:
    """Optimisation settings; the architecture and voxel size live in ``spec``."""

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    sigma_um: dict[str, float] = field(default_factory=lambda: {"nucleus": 2.0, "golgi": 1.0})
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class TrainEvent:
    """What happened at one step: ``kind`` is ``step``, ``checkpoint`` or ``done``."""

    kind: str
    step: int
    total_steps: int
    losses: dict[str, float]
    learning_rate: float
    seconds: float
    path: Optional[Path] = None


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def _save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, spec: ModelSpec, step: int,
                     losses: list[dict[str, float]]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = save_model(folder / "last", model, spec)
    with atomic_path(folder / "last.optimizer.safetensors") as tmp:
        save_file({k: v.contiguous().cpu() for k, v in _optimizer_state_tensors(optimizer).items()}, str(tmp))
    atomic_write_json(folder / "last.state.json", {"step": step, "losses": losses[-2000:]})
    return path


def train(spec: ModelSpec, sampler: PatchSampler, config: TrainConfig, checkpoint_dir: Path,
          cancel: Optional[CancelToken] = None, init: Optional[Path] = None) -> Iterator[TrainEvent]:
    """Train (or resume) a network described by ``spec`` on patches from ``sampler``.

    If ``checkpoint_dir`` holds a checkpoint, training resumes from it; else it starts from ``init``
    (a model file) or from scratch. Yields a ``step`` event per step, a ``checkpoint`` event after
    each save and a final ``done`` event whose ``path`` is the last checkpoint's model file.
    """
    from safetensors.torch import load_file

    checkpoint_dir = Path(checkpoint_dir)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    start_step, history = 0, []
    last = checkpoint_dir / "last.json"
    if last.exists():
        model, _ = load_model(last, device)
        state = json.loads((checkpoint_dir / "last.state.json").read_text())
        start_step, history = int(state["step"]), list(state.get("losses", []))
    elif init is not None:
        model, init_spec = load_model(init, device)
        if init_spec.network != spec.network:
            raise CellPolError(f"{init}: its architecture differs from the one being trained.")
    else:
        model = build_network(spec.network).to(device)
    memory_format = preferred_memory_format(spec.network)
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if start_step and (checkpoint_dir / "last.optimizer.safetensors").exists():
        _load_optimizer_state(optimizer, load_file(str(checkpoint_dir / "last.optimizer.safetensors")))
    use_bf16 = device.type == "cpu" and cpu_bf16_is_fast()
    model.train()
    started = time.perf_counter()
    for step in range(start_step, config.steps):
        check_cancel(cancel)
        rng = np.random.default_rng([config.seed, step])  # a resumed run sees the same batches
        images, target_list = [], []
        for _ in range(config.batch_size):
            image, pairs = sampler.sample(rng)
            images.append(image)
            target_list.append(make_targets(pairs, image.shape[1:], spec.voxel_size, config.sigma_um))
        batch = torch.from_numpy(np.stack(images)).to(device).contiguous(memory_format=memory_format)
        targets = {key: torch.from_numpy(np.stack([t[key] for t in target_list])[:, None]).to(device)
                   for key in target_list[0]}
        learning_rate = _lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = model(batch)
        outputs = {k: v.float() for k, v in outputs.items()}
        parts = compute_loss(outputs, targets, config.loss)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses = {k: float(v.detach()) for k, v in parts.items()}
        history.append({"step": step + 1, **{k: round(v, 6) for k, v in losses.items()}})
        yield TrainEvent("step", step + 1, config.steps, losses, learning_rate, time.perf_counter() - started)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            path = _save_checkpoint(checkpoint_dir, model, optimizer, spec, step + 1, history)
            yield TrainEvent("checkpoint", step + 1, config.steps, losses, learning_rate,
                             time.perf_counter() - started, path)
    yield TrainEvent("done", config.steps, config.steps, history[-1] if history else {}, 0.0,
                     time.perf_counter() - started, checkpoint_dir / "last.json")


def train_config_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready view of a :class:`TrainConfig` for provenance."""
    out = asdict(config)
    out["loss"] = config.loss.to_dict()
    return out
