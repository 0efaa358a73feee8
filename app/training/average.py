"""Weight averaging of models of one lineage ("model soup"; WiSE-FT when one member is the starter).

Two models fine-tuned from one another sit in one basin of the loss, so the weighted mean of their weights
is itself a good model, often between them in behaviour: the shipped 3D starter is 0.7 × stage 10 +
0.3 × stage 8 of its training chain (docs/models/cellpol_starter.md), which kept most of stage 10's gain on
images unlike our simulator without its small loss on our own. The result costs what one model costs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from app.core.errors import CellPolError
from app.core.modelfile import ModelSpec, load_model, save_model

PathLike = Union[str, Path]


def average_modules(modules: Sequence[nn.Module], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean (weights normalised to sum 1) of the modules' state dicts, on the CPU: every
    floating-point tensor, batch-norm running statistics included; others (the batch counter) are the first
    module's. ``load_state_dict`` copies the result to wherever a module lives.

    Raises
    ------
    CellPolError
        Fewer than two modules, a weight per module missing, negative weights, or different tensor names
        or shapes.
    """
    if len(modules) < 2 or len(weights) != len(modules):
        raise CellPolError("Averaging needs at least two models and one weight per model.")
    if any(not (w >= 0) for w in weights) or sum(weights) <= 0:
        raise CellPolError(f"Averaging weights must be ≥ 0 and not all 0, got {list(weights)}.")
    total = float(sum(weights))
    states = [module.state_dict() for module in modules]
    mixed: dict[str, torch.Tensor] = {}
    for key, tensor in states[0].items():
        for state in states[1:]:
            if key not in state or state[key].shape != tensor.shape:
                raise CellPolError(f"The models differ in '{key}': they are not one architecture.")
        if not torch.is_floating_point(tensor):
            mixed[key] = tensor.clone()
            continue
        acc = torch.zeros(tensor.shape, dtype=torch.float64)  # on the CPU (float64 is not on every device)
        for w, state in zip(weights, states):
            acc += (w / total) * state[key].detach().to("cpu", torch.float64)
        mixed[key] = acc.to(tensor.dtype)
    return mixed


def average_models(paths: Sequence[PathLike], weights: Sequence[float], out: PathLike,
                   decoding_from: int = 0) -> Path:
    """Write the weighted average of the models at ``paths`` to ``out`` (stem or ``.json``); returns its JSON.

    The result keeps member ``decoding_from``'s voxel size, normalisation, decoding and provenance, and adds
    ``provenance.weight_average`` (members, normalised weights). Members must share the architecture.
    """
    paths = [Path(p) for p in paths]
    loaded = [load_model(p) for p in paths]
    for (_, spec), path in zip(loaded[1:], paths[1:]):
        if spec.network != loaded[0][1].network:
            raise CellPolError(f"{path.name} has another architecture than {paths[0].name}.")
    module, spec = loaded[decoding_from]
    module.load_state_dict(average_modules([m for m, _ in loaded], weights))
    total = float(sum(weights))
    provenance = dict(spec.provenance)
    provenance["weight_average"] = {"members": [p.name for p in paths], "weights": [w / total for w in weights],
                                    "decoding_from": paths[decoding_from].name}
    result: ModelSpec = dataclasses.replace(spec, provenance=provenance)
    return save_model(out, module, result)
