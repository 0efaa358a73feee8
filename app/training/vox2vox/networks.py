"""The Vox2Vox networks: a 3D pix2pix U-Net generator (masks → image) and a 3D PatchGAN discriminator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.core.errors import CellPolError
from app.core.network import default_pool_factors


@dataclass(frozen=True)
class Vox2VoxConfig:
    """Generator (U-Net) and discriminator (PatchGAN) sizes; strides ``(z, y, x)`` per encoder level."""

    strides: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    base_filters: int = 16
    max_filters: int = 128
    dropout: float = 0.5
    dropout_blocks: int = 3
    discriminator_filters: int = 16
    discriminator_layers: int = 3
    in_channels: int = 2
    out_channels: int = 2

    def __post_init__(self) -> None:
        try:
            strides = tuple(tuple(int(s) for s in level) for level in self.strides)
        except (TypeError, ValueError):
            raise CellPolError(f"Vox2Vox strides must be (z, y, x) triples, got {self.strides!r}.") from None
        if not strides or any(len(level) != 3 or any(s not in (1, 2) for s in level) for level in strides):
            raise CellPolError(f"Vox2Vox strides must be (z, y, x) triples of 1 or 2, got {self.strides!r}.")
        object.__setattr__(self, "strides", strides)
        for name in ("base_filters", "max_filters", "discriminator_filters", "discriminator_layers", "in_channels",
                     "out_channels", "dropout_blocks"):
            value = getattr(self, name)
            least = 0 if name == "dropout_blocks" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CellPolError(f"Vox2Vox setting {name} must be a whole number ≥ {least}, got {value!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise CellPolError(f"Vox2Vox dropout must be in [0, 1), got {self.dropout!r}.")
        if self.discriminator_layers > len(strides):
            raise CellPolError("The discriminator cannot have more strided layers than the generator has levels.")

    @classmethod
    def for_voxel_size(cls, voxel_size: Sequence[float], levels: int = 4, **overrides: Any) -> "Vox2VoxConfig":
        """Strides suited to ``voxel_size`` (z pooled once its step has caught up with x/y)."""
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 7:
            raise CellPolError(f"The generator needs 2 to 7 levels, got {levels!r}.")
        return cls(strides=default_pool_factors(voxel_size, levels + 1), **overrides)

    @property
    def multiple(self) -> tuple[int, int, int]:
        """Volume sizes ``(z, y, x)`` must be multiples of these."""
        total = np.prod(np.array(self.strides), axis=0)
        return tuple(int(t) for t in total)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["strides"] = [list(s) for s in self.strides]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "Vox2VoxConfig":
        if not isinstance(data, Mapping):
            raise CellPolError("'architecture' must be a JSON object.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CellPolError(f"'architecture' has unknown setting(s) {', '.join(map(repr, unknown))}.")
        values = dict(data)
        if "strides" in values:
            values["strides"] = tuple(tuple(s) for s in values["strides"])
        return cls(**values)


def _kernel(stride: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kernel 4 where the stride is 2 (halves/doubles exactly with padding 1), 3 where it is 1."""
    return tuple(4 if s == 2 else 3 for s in stride), tuple(1 for _ in stride)


class UNetGenerator(nn.Module):
    """pix2pix U-Net in 3D: masks in [-1, 1] → image in [-1, 1] (tanh)."""

    def __init__(self, config: Vox2VoxConfig) -> None:
        super().__init__()
        self.config = config
        self.generation_dropout = False  # dropout at generation time (variety), off by default
        widths = [min(config.base_filters * 2 ** i, config.max_filters) for i in range(len(config.strides))]
        self.encoders = nn.ModuleList()
        channels = config.in_channels
        for level, (stride, width) in enumerate(zip(config.strides, widths)):
            kernel, padding = _kernel(stride)
            layers: list[nn.Module] = [nn.Conv3d(channels, width, kernel, stride, padding, bias=level == 0)]
            if level > 0:
                layers.append(nn.InstanceNorm3d(width, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            self.encoders.append(nn.Sequential(*layers))
            channels = width
        self.bottleneck = nn.Sequential(nn.Conv3d(channels, channels, 3, 1, 1), nn.ReLU())
        self.decoders = nn.ModuleList()
        for level in range(len(config.strides) - 1, 0, -1):
            kernel, padding = _kernel(config.strides[level])
            width = widths[level - 1]
            self.decoders.append(nn.Sequential(
                nn.ConvTranspose3d(channels, width, kernel, config.strides[level], padding, bias=False),
                nn.InstanceNorm3d(width, affine=True)))
            channels = 2 * width
        kernel, padding = _kernel(config.strides[0])
        self.output = nn.ConvTranspose3d(channels, config.out_channels, kernel, config.strides[0], padding)
        _init_weights(self)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        skips = []
        x = masks
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = self.bottleneck(x)
        dropout_on = self.training or self.generation_dropout
        for k, decoder in enumerate(self.decoders):
            x = decoder(x)
            if k < self.config.dropout_blocks and self.config.dropout > 0:
                x = F.dropout(x, self.config.dropout, training=dropout_on)
            x = F.relu(torch.cat([x, skips[-2 - k]], dim=1))
        return torch.tanh(self.output(x))


class PatchDiscriminator(nn.Module):
    """3D PatchGAN on (masks, image): a map of real/fake logits, one per overlapping patch."""

    def __init__(self, config: Vox2VoxConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.in_channels + config.out_channels
        width = config.discriminator_filters
        for level in range(config.discriminator_layers):
            kernel, padding = _kernel(config.strides[level])
            layers.append(nn.Conv3d(channels, width, kernel, config.strides[level], padding, bias=level == 0))
            if level > 0:
                layers.append(nn.InstanceNorm3d(width, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            channels, width = width, min(width * 2, 8 * config.discriminator_filters)
        layers += [nn.Conv3d(channels, width, 3, 1, 1, bias=False), nn.InstanceNorm3d(width, affine=True),
                   nn.LeakyReLU(0.2), nn.Conv3d(width, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, masks: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([masks, image], dim=1))


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: convolutions N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm3d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

