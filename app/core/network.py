"""The 3DCellPol network (and 3DCtrDet, its embedding-free variant) as a configurable PyTorch module.

A U-Net backbone feeds two branches, one per object class (nucleus, Golgi). Each branch is a conv block
followed by a heatmap sub-head (sigmoid: centroid likelihood) and, for the ``"cellpol"`` architecture, an
embedding sub-head (linear, one scalar per voxel; nucleus and Golgi of one cell get close values).

Conventions (ours, not the authors'):

- input ``(B, 2, Z, Y, X)`` (3D) or ``(B, 2, Y, X)`` (2D), **channel 0 = nucleus, channel 1 = Golgi**;
- every output is ``(B, 1, Z, Y, X)`` (or ``(B, 1, Y, X)``) in float32, whatever autocast dtype ran inside;
- pooling factors are per level and per axis, so anisotropic stacks can stop pooling z early, and the first
  ``in_plane_levels`` levels may convolve in-plane only (1×3×3 kernels, the "2D–3D backbone" idea for
  stacks whose z step is much coarser than the pixel size);
- 2D and 3D come from the same code: ``spatial_dims=2`` uses ``Conv2d`` etc. on ``(B, C, Y, X)``.

The module works under ``torch.autocast("cpu", dtype=torch.bfloat16)`` and with
``memory_format=torch.channels_last_3d`` (see :func:`preferred_memory_format`). channels_last helps on any
CPU; bf16 only on CPUs with native bf16 (:func:`cpu_bf16_is_fast`), elsewhere it is far slower.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from app.core.device import cpu_bf16_is_fast  # noqa: F401 - moved to app.core.device; still importable here
from app.core.errors import CellPolError

ARCHITECTURES = ("cellpol", "ctrdet")
NORMS = ("batch", "instance", "group", "none")
OUTPUT_KEYS = {
    "cellpol": ("heatmap_nucleus", "heatmap_golgi", "embedding_nucleus", "embedding_golgi"),
    "ctrdet": ("heatmap_nucleus", "heatmap_golgi"),
}
#: Input channel roles, in order. The authors' files have Golgi first; readers map them to this order.
INPUT_CHANNELS = ("nucleus", "golgi")

# z is pooled at a level only while the z step there is at most this many times the in-plane step.
Z_POOL_MAX_RATIO = 1.5
# A level convolves in-plane only (1×3×3) while its z step is at least this many times the in-plane step.
IN_PLANE_MIN_RATIO = 3.0
# Initial bias of the heatmap logits: sigmoid(-2) ≈ 0.12, close to the mostly-empty targets.
HEATMAP_BIAS_INIT = -2.0


class NetworkConfigError(CellPolError):
    """A network configuration is invalid (bad value, unknown key, wrong type)."""


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of a CellPol network; JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`.

    Parameters
    ----------
    architecture : {"cellpol", "ctrdet"}
        ``cellpol``: heatmaps + embeddings; ``ctrdet``: heatmaps only (pairs are formed by distance).
    spatial_dims : {2, 3}
        3 for ``(B, C, Z, Y, X)`` stacks, 2 for ``(B, C, Y, X)`` images.
    in_channels : int
        Input channels (2: nucleus, Golgi).
    levels : int
        Resolution levels of the U-Net (``levels - 1`` poolings; the deepest level is the bottleneck).
    base_filters : int
        Filters at full resolution; doubled at each level.
    max_filters : int or None
        Cap on the filters of any level (``None``: no cap).
    pool_factors : tuple of tuple of int, optional
        One factor per axis (``(z, y, x)`` in 3D, ``(y, x)`` in 2D) for each of the ``levels - 1``
        poolings. Default: 2 along every axis. :meth:`for_voxel_size` derives them from a voxel size.
    in_plane_levels : int
        3D only: the first ``k`` levels (encoder, decoder and, if ``k >= 1``, the heads) use 1×3×3
        kernels instead of 3×3×3.
    norm : {"batch", "instance", "group", "none"}
        Normalisation after each convolution.
    norm_groups : int
        Groups for ``norm="group"`` (reduced to a divisor of the channel count where needed).
    dropout : float
        Element-wise dropout after the conv blocks below full resolution (the authors used 0.1).
    head_filters : int or None
        Width of the two branches and their sub-heads (``None``: ``base_filters``).
    """

    architecture: str = "cellpol"
    spatial_dims: int = 3
    in_channels: int = 2
    levels: int = 4
    base_filters: int = 16
    max_filters: Optional[int] = None
    pool_factors: Optional[tuple[tuple[int, ...], ...]] = None
    in_plane_levels: int = 0
    norm: str = "batch"
    norm_groups: int = 8
    dropout: float = 0.0
    head_filters: Optional[int] = None

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("norm", self.norm, NORMS)
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise NetworkConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}.")
        _check_int("in_channels", self.in_channels, 1, 64)
        _check_int("levels", self.levels, 1, 8)
        _check_int("base_filters", self.base_filters, 1, 1024)
        if self.max_filters is not None:
            _check_int("max_filters", self.max_filters, 1, 4096)
        _check_int("in_plane_levels", self.in_plane_levels, 0, self.levels)
        if self.spatial_dims == 2 and self.in_plane_levels:
            raise NetworkConfigError("in_plane_levels only applies to 3D networks (spatial_dims=3).")
        _check_int("norm_groups", self.norm_groups, 1, 1024)
        if self.head_filters is not None:
            _check_int("head_filters", self.head_filters, 1, 1024)
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not (
            0.0 <= float(self.dropout) < 1.0
        ):
            raise NetworkConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}.")
        object.__setattr__(self, "dropout", float(self.dropout))

        n_pools = self.levels - 1
        if self.pool_factors is None:
            pools = tuple((2,) * self.spatial_dims for _ in range(n_pools))
        else:
            if isinstance(self.pool_factors, (str, bytes)) or not isinstance(self.pool_factors, Sequence):
                raise NetworkConfigError(f"pool_factors must be a list of per-axis factors, got {self.pool_factors!r}.")
            if len(self.pool_factors) != n_pools:
                raise NetworkConfigError(
                    f"pool_factors needs one entry per pooling ({n_pools} for {self.levels} levels), "
                    f"got {len(self.pool_factors)}."
                )
            pools = []
            for i, factor in enumerate(self.pool_factors):
                if isinstance(factor, (str, bytes)) or not isinstance(factor, Sequence) or len(factor) != self.spatial_dims:
                    raise NetworkConfigError(
                        f"pool_factors[{i}] must have {self.spatial_dims} entries "
                        f"({'z, y, x' if self.spatial_dims == 3 else 'y, x'}), got {factor!r}."
                    )
                for f in factor:
                    _check_int(f"pool_factors[{i}]", f, 1, 8)
                pools.append(tuple(int(f) for f in factor))
            pools = tuple(pools)
        object.__setattr__(self, "pool_factors", pools)

    # --- derived ----------------------------------------------------------------------------
    @property
    def filters(self) -> tuple[int, ...]:
        """Filters per level, full resolution first."""
        out = []
        for level in range(self.levels):
            f = self.base_filters * 2**level
            if self.max_filters is not None:
                f = min(f, self.max_filters)
            out.append(f)
        return tuple(out)

    @property
    def branch_filters(self) -> int:
        return self.head_filters if self.head_filters is not None else self.base_filters

    @property
    def output_keys(self) -> tuple[str, ...]:
        return OUTPUT_KEYS[self.architecture]

    @property
    def has_embeddings(self) -> bool:
        return self.architecture == "cellpol"

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        d = asdict(self)
        d["pool_factors"] = [list(p) for p in self.pool_factors]  # type: ignore[union-attr]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkConfig":
        """Validate and build from :meth:`to_dict` output; unknown keys are an error.

        Raises
        ------
        NetworkConfigError
            On an unknown key, a wrong type or an out-of-range value.
        """
        if not isinstance(data, Mapping):
            raise NetworkConfigError(f"A network configuration must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NetworkConfigError(
                f"Unknown network setting(s) {', '.join(map(repr, unknown))}; "
                "the model may come from a newer version of CellPol Studio."
            )
        kwargs = dict(data)
        pools = kwargs.get("pool_factors")
        if isinstance(pools, list):
            kwargs["pool_factors"] = tuple(tuple(p) if isinstance(p, list) else p for p in pools)
        return cls(**kwargs)

    @classmethod
    def for_voxel_size(
        cls, voxel_size: Sequence[float], spatial_dims: int = 3, **overrides: Any
    ) -> "NetworkConfig":
        """A configuration whose pooling (and in-plane levels) suit ``voxel_size`` ``(z, y, x)`` µm.

        ``overrides`` set any other field; explicit ``pool_factors`` / ``in_plane_levels`` win.
        """
        levels = int(overrides.get("levels", cls.levels))
        if spatial_dims == 3:
            overrides.setdefault("pool_factors", default_pool_factors(voxel_size, levels))
            overrides.setdefault("in_plane_levels", default_in_plane_levels(voxel_size, levels))
        return cls(spatial_dims=spatial_dims, **overrides)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise NetworkConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise NetworkConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}.")


def _level_steps(voxel_size: Sequence[float], levels: int) -> list[tuple[float, float, list[int]]]:
    """Per level: (z step, in-plane step, pool factor leading to the next level) under the z-pool rule."""
    if len(voxel_size) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel_size):
        raise NetworkConfigError(f"Voxel size must be three positive numbers (z, y, x) in µm, got {voxel_size!r}.")
    vz, vy, vx = (float(v) for v in voxel_size)
    vxy = min(vy, vx)
    out = []
    for _ in range(levels):
        pool_z = 2 if vz <= Z_POOL_MAX_RATIO * vxy + 1e-9 else 1
        out.append((vz, vxy, [pool_z, 2, 2]))
        vz *= pool_z
        vxy *= 2
    return out


def default_pool_factors(voxel_size: Sequence[float], levels: int = 4) -> tuple[tuple[int, int, int], ...]:
    """Pooling factors ``(z, y, x)`` per level for a voxel size ``(z, y, x)`` in µm.

    y and x are always pooled by 2. z is pooled by 2 at a level only while the z step at that level is at
    most 1.5× the in-plane step, so coarse-z stacks keep their few slices until the in-plane resolution has
    caught up (e.g. 1.0 × 0.5 × 0.5 µm → ``[(1,2,2), (2,2,2), (2,2,2)]``).
    """
    steps = _level_steps(voxel_size, levels)
    return tuple(tuple(s[2]) for s in steps[: levels - 1])  # type: ignore[misc]


def default_in_plane_levels(voxel_size: Sequence[float], levels: int = 4) -> int:
    """Leading levels whose z step is ≥ 3× the in-plane step: there a 3×3×3 kernel mostly mixes unrelated
    slices, so they convolve in-plane only (1×3×3). The bottleneck always stays 3D, so the network still
    sees across slices however coarse z is."""
    k = 0
    for vz, vxy, _ in _level_steps(voxel_size, levels):
        if vz >= IN_PLANE_MIN_RATIO * vxy - 1e-9:
            k += 1
        else:
            break
    return min(k, levels - 1) if levels > 1 else 0


def required_multiple(config: NetworkConfig) -> tuple[int, int, int]:
    """Input sizes ``(z, y, x)`` must be multiples of these (``z = 1`` for 2D networks)."""
    total = [1] * config.spatial_dims
    for factor in config.pool_factors:  # type: ignore[union-attr]
        total = [t * f for t, f in zip(total, factor)]
    if config.spatial_dims == 2:
        return (1, total[0], total[1])
    return (total[0], total[1], total[2])


def preferred_memory_format(config: NetworkConfig) -> torch.memory_format:
    """``channels_last_3d`` (3D) or ``channels_last`` (2D): the faster layout for oneDNN on CPU."""
    return torch.channels_last_3d if config.spatial_dims == 3 else torch.channels_last


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------
def _conv_cls(dims: int) -> type:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _kernel(dims: int, in_plane: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if dims == 2:
        return (3, 3), (1, 1)
    if in_plane:
        return (1, 3, 3), (0, 1, 1)
    return (3, 3, 3), (1, 1, 1)


def _norm(kind: str, dims: int, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """conv (3×3×3 or 1×3×3) → norm → ReLU."""

    def __init__(self, dims: int, cin: int, cout: int, norm: str, groups: int, in_plane: bool) -> None:
        kernel, padding = _kernel(dims, in_plane)
        super().__init__(
            _conv_cls(dims)(cin, cout, kernel, padding=padding, bias=norm == "none"),
            _norm(norm, dims, cout, groups),
            nn.ReLU(inplace=True),
        )


class ConvBlock(nn.Sequential):
    """Two :class:`ConvNormAct`, then optional dropout."""

    def __init__(
        self, dims: int, cin: int, cout: int, norm: str, groups: int, in_plane: bool, dropout: float
    ) -> None:
        layers: list[nn.Module] = [
            ConvNormAct(dims, cin, cout, norm, groups, in_plane),
            ConvNormAct(dims, cout, cout, norm, groups, in_plane),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class SubHead(nn.Sequential):
    """conv + ReLU, then a 1×1 conv to one channel (the authors' sub-head, without the activation)."""

    def __init__(self, dims: int, channels: int, in_plane: bool) -> None:
        kernel, padding = _kernel(dims, in_plane)
        conv = _conv_cls(dims)
        super().__init__(
            conv(channels, channels, kernel, padding=padding),
            nn.ReLU(inplace=True),
            conv(channels, 1, 1),
        )


class Branch(nn.Module):
    """One object class: a conv block, a sigmoid heatmap sub-head and (optionally) a linear embedding."""

    def __init__(self, config: NetworkConfig, cin: int) -> None:
        super().__init__()
        dims, width = config.spatial_dims, config.branch_filters
        in_plane = config.in_plane_levels > 0
        self.block = ConvNormAct(dims, cin, width, config.norm, config.norm_groups, in_plane)
        self.heatmap = SubHead(dims, width, in_plane)
        self.embedding = SubHead(dims, width, in_plane) if config.has_embeddings else None
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_BIAS_INIT)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = self.block(features)
        heat = torch.sigmoid(self.heatmap(x).float())
        emb = self.embedding(x).float() if self.embedding is not None else None
        return heat, emb


class CellPolNet(nn.Module):
    """U-Net backbone + nucleus and Golgi branches; see :class:`NetworkConfig`.

    ``forward(x)`` takes ``(B, in_channels, Z, Y, X)`` (or ``(B, C, Y, X)`` in 2D) with sizes divisible by
    :func:`required_multiple` and returns a dict of float32 ``(B, 1, ...)`` tensors named
    ``heatmap_nucleus``, ``heatmap_golgi`` and, for ``cellpol``, ``embedding_nucleus``, ``embedding_golgi``.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        dims, filters = config.spatial_dims, config.filters
        conv_t = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        pool = nn.MaxPool3d if dims == 3 else nn.MaxPool2d

        def in_plane(level: int) -> bool:
            return dims == 3 and level < config.in_plane_levels

        def block(level: int, cin: int, cout: int) -> ConvBlock:
            drop = config.dropout if level > 0 else 0.0
            return ConvBlock(dims, cin, cout, config.norm, config.norm_groups, in_plane(level), drop)

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin = config.in_channels
        for level, f in enumerate(filters):
            if level > 0:
                factor = config.pool_factors[level - 1]  # type: ignore[index]
                self.pools.append(pool(kernel_size=factor, stride=factor))
            self.encoders.append(block(level, cin, f))
            cin = f
        # Decoder, deepest first: upsample level+1 → level, concatenate the skip, conv block.
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.levels - 1)):
            factor = config.pool_factors[level]  # type: ignore[index]
            self.ups.append(conv_t(filters[level + 1], filters[level], kernel_size=factor, stride=factor))
            self.decoders.append(block(level, 2 * filters[level], filters[level]))
        self.branch_nucleus = Branch(config, filters[0])
        self.branch_golgi = Branch(config, filters[0])
        self._multiple = required_multiple(config)

    def _check_input(self, x: torch.Tensor) -> None:
        dims = self.config.spatial_dims
        if x.dim() != dims + 2:
            layout = "(B, C, Z, Y, X)" if dims == 3 else "(B, C, Y, X)"
            raise ValueError(f"This {dims}D network expects a {layout} tensor, got shape {tuple(x.shape)}.")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"The network expects {self.config.in_channels} input channels (nucleus, Golgi), got {x.shape[1]}."
            )
        multiple = self._multiple if dims == 3 else self._multiple[1:]
        spatial = tuple(x.shape[2:])
        if any(s % m for s, m in zip(spatial, multiple)):
            raise ValueError(
                f"Input size {spatial} must be a multiple of {multiple} per axis (the network's pooling); pad it."
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(x)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pools[level - 1](x)
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            x = up(x)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        heat_n, emb_n = self.branch_nucleus(x)
        heat_g, emb_g = self.branch_golgi(x)
        out = {"heatmap_nucleus": heat_n, "heatmap_golgi": heat_g}
        if emb_n is not None and emb_g is not None:
            out["embedding_nucleus"] = emb_n
            out["embedding_golgi"] = emb_g
        return out


def build_network(config: Optional[NetworkConfig] = None) -> CellPolNet:
    """Build a freshly initialised network for ``config`` (default: :class:`NetworkConfig()`)."""
    return CellPolNet(config if config is not None else NetworkConfig())
