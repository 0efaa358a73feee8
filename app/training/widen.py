"""Widen a trained network without changing what it computes (function-preserving growth).

A wider network (more filters per level: ``base_filters``, ``max_filters``, ``head_filters``) trained from
scratch repeats the whole starter chain (hours on a CPU). Grown from a trained one, it starts where that one
is and only has to learn what the new filters add. Growth here keeps every old filter's weights, gives each
new filter fresh random incoming weights, and sets the weights by which a new filter reaches an *old* one to
zero, so the old filters, and the outputs, compute exactly what they did (in training mode, batch-norm batch
statistics included). The zeros receive gradients at the first step (the new filters' activations are not
zero), so training moves them: unlike copying filters (Net2Net), nothing is symmetric that needs noise.

The one place where channels are not a leading block is a decoder's first convolution: it sees
``cat(upsampled, skip)``, so the old channels are the first ``f_old`` of each half.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

import torch
from torch import nn

from app.core.errors import CellPolError
from app.core.modelfile import load_model, save_model
from app.core.network import CellPolNet, NetworkConfig, build_network

PathLike = Union[str, Path]
#: Fields a widening may change; every other field of the configuration must stay as it is.
WIDTH_FIELDS = ("base_filters", "max_filters", "head_filters")


def check_widening(old: NetworkConfig, new: NetworkConfig) -> None:
    """Raise :class:`CellPolError` unless ``new`` differs from ``old`` only in width, and is nowhere narrower."""
    same = dataclasses.replace(new, **{name: getattr(old, name) for name in WIDTH_FIELDS})
    if same != old:
        changed = [f.name for f in dataclasses.fields(old)
                   if f.name not in WIDTH_FIELDS and getattr(old, f.name) != getattr(new, f.name)]
        raise CellPolError(f"Only the width of a network can grow; these settings differ too: {', '.join(changed)}.")
    if any(b < a for a, b in zip(old.filters, new.filters)) or new.branch_filters < old.branch_filters:
        raise CellPolError(f"The new network is narrower than the old one ({list(old.filters)} filters per level, "
                           f"branches {old.branch_filters}; asked for {list(new.filters)}, {new.branch_filters}).")


def _channel_index(old_count: int, new_count: int, halves: bool) -> torch.Tensor:
    """Positions in the new layer of the old layer's channels (``halves``: two concatenated blocks)."""
    if not halves:
        return torch.arange(old_count)
    half_old, half_new = old_count // 2, new_count // 2
    return torch.cat([torch.arange(half_old), half_new + torch.arange(half_old)])


def _grow_conv(old: nn.Module, new: nn.Module, halves_in: bool) -> None:
    transposed = isinstance(old, (nn.ConvTranspose2d, nn.ConvTranspose3d))
    old_w, new_w = old.weight.detach(), new.weight.detach()
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    out_old, in_old = old_w.shape[out_axis], old_w.shape[in_axis]
    in_idx = _channel_index(in_old, new_w.shape[in_axis], halves_in)
    with torch.no_grad():
        # Old filters read nothing from new channels ...
        index: list = [slice(None)] * new_w.dim()
        index[out_axis] = slice(0, out_old)
        new_w[tuple(index)] = 0.0
        # ... and what they read from old channels is unchanged. New filters keep their fresh random weights.
        moved = new_w.movedim((out_axis, in_axis), (0, 1))
        moved[:out_old, in_idx] = old_w.movedim((out_axis, in_axis), (0, 1))
        if old.bias is not None:
            new.bias.detach()[:out_old] = old.bias.detach()


def _grow_norm(old: nn.Module, new: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            a, b = getattr(old, name, None), getattr(new, name, None)
            if a is not None and b is not None:
                b.detach()[: a.shape[0]] = a.detach()
        if getattr(old, "num_batches_tracked", None) is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)


def widen_module(model: CellPolNet, config: NetworkConfig, seed: int = 0) -> CellPolNet:
    """A network of ``config`` (wider than ``model``'s) that computes what ``model`` computes.

    ``seed`` fixes the new filters' random weights. Raises :class:`CellPolError` if ``config`` is not a
    widening of ``model.config`` (:func:`check_widening`).
    """
    check_widening(model.config, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wide = build_network(config)
    old_modules = dict(model.named_modules())
    for name, new in wide.named_modules():
        old = old_modules.get(name)
        if old is None or type(old) is not type(new):
            raise CellPolError(f"Cannot widen: the networks differ at '{name or 'the top'}'.")
        if isinstance(new, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            # A decoder's first convolution reads cat(upsampled, skip): "decoders.<i>.0.0".
            halves = name.startswith("decoders.") and name.endswith(".0.0")
            _grow_conv(old, new, halves)
        elif isinstance(new, (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            _grow_norm(old, new)
        elif isinstance(new, nn.GroupNorm):
            if old.num_groups != new.num_groups:
                raise CellPolError("Cannot widen a group-normalised layer whose number of groups changes.")
            _grow_norm(old, new)
    wide.train(model.training)
    return wide


def widen_model(source: PathLike, out: PathLike, widths: dict, seed: int = 0) -> Path:
    """Write the model at ``source`` widened to ``widths`` (a subset of :data:`WIDTH_FIELDS`) to ``out``.

    The result keeps the source's voxel size, normalisation and decoding, and records
    ``provenance.widened_from`` (the source's name and widths)."""
    unknown = sorted(set(widths) - set(WIDTH_FIELDS))
    if unknown:
        raise CellPolError(f"Unknown width setting(s): {', '.join(unknown)}.")
    model, spec = load_model(source)
    config = dataclasses.replace(spec.network, **widths)
    wide = widen_module(model, config, seed=seed)
    provenance = dict(spec.provenance)
    provenance["widened_from"] = {"name": spec.name, **{k: getattr(spec.network, k) for k in WIDTH_FIELDS},
                                  "seed": seed}
    return save_model(out, wide, dataclasses.replace(spec, network=config, provenance=provenance))

