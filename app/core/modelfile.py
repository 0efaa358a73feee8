"""Model files: ``<name>.safetensors`` (weights) + ``<name>.json`` (everything else).

The JSON holds the format name and version, the architecture (:class:`~app.core.network.NetworkConfig`),
the voxel size the model was trained at, the input channel roles (channel 0 = nucleus, 1 = Golgi), the
intensity normalisation, the decoding parameters and free-form training provenance, plus the SHA-256 of
the weights file so a mismatched or damaged pair is caught. Example::

    {
      "format": "cellpol-model", "version": 1, "name": "starter", "description": "",
      "weights": "starter.safetensors", "weights_sha256": "…",
      "architecture": {"architecture": "cellpol", "spatial_dims": 3, …},
      "voxel_size_zyx_um": [0.27, 0.666, 0.666],
      "input_channels": ["nucleus", "golgi"],
      "normalization": {"method": "percentile", "low_percentile": 1.0, "high_percentile": 99.8, …},
      "decoding": {"peak_threshold_nucleus": 0.4, …, "embedding_delta": 2.0, "max_pair_distance_um": 14.0},
      "provenance": {…}, "app_version": "0.1.0", "saved": "2025-…"
    }

Loading never unpickles: weights are read with safetensors only (no ``torch.load``), so a model file from
anywhere cannot run code. Every problem with the files becomes one :class:`FileFormatError`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from app import __version__
from app.core.errors import CellPolError, FileFormatError
from app.core.fileutil import atomic_path, atomic_write_json, sha256_file
from app.core.network import NetworkConfig, build_network
from app.core.volume import parse_voxel_size

FORMAT_NAME = "cellpol-model"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CONFIG_SUFFIX = ".json"
CHANNEL_ROLES = ("nucleus", "golgi")

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------
# Spec
# ----------------------------------------------------------------------------------------------
def _strict_from_dict(cls: type, data: Any, section: str) -> Any:
    if not isinstance(data, Mapping):
        raise CellPolError(f"'{section}' must be a JSON object.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CellPolError(f"'{section}' has unknown setting(s) {', '.join(map(repr, unknown))}.")
    try:
        return cls(**dict(data))
    except TypeError as exc:
        raise CellPolError(f"'{section}': {exc}") from None


def _number(section: str, name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CellPolError(f"{section}.{name} must be a number, got {value!r}.")
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise CellPolError(f"{section}.{name} must be in {bracket}{lo}, {hi}], got {value}.")
    return float(value)


@dataclass(frozen=True)
class NormalizationSpec:
    """Input intensity normalisation: per-channel percentiles mapped to [0, 1]."""

    method: str = "percentile"
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    per_channel: bool = True
    clip: bool = True

    def __post_init__(self) -> None:
        if self.method != "percentile":
            raise CellPolError(f"normalization.method must be 'percentile', got {self.method!r}.")
        lo = _number("normalization", "low_percentile", self.low_percentile, 0.0, 100.0)
        hi = _number("normalization", "high_percentile", self.high_percentile, 0.0, 100.0)
        if lo >= hi:
            raise CellPolError(f"normalization: low percentile {lo} must be below the high percentile {hi}.")
        if not isinstance(self.per_channel, bool) or not isinstance(self.clip, bool):
            raise CellPolError("normalization.per_channel and normalization.clip must be true or false.")
        object.__setattr__(self, "low_percentile", lo)
        object.__setattr__(self, "high_percentile", hi)


@dataclass(frozen=True)
class DecodingSpec:
    """How heatmaps and embeddings become vectors (absolute thresholds; distances in µm).

    Each setting is used, and its rule written, in one place: the peak thresholds, minimum distances and
    valley ratios by :func:`app.core.inference.peaks.find_peaks`; ``embedding_delta`` (Δ),
    ``max_pair_distance_um`` (d_max) and the pairing weights by :func:`app.core.inference.pairing.pairing_cost`
    (the module :mod:`app.core.inference.pairing` says why each term exists); ``ridge_radius_um`` by
    :func:`app.core.inference.peaks.ridge_scores`; ``golgi_refine_radius_um`` by
    :func:`app.core.inference.refine.refine_golgi` (0: the Golgi ends stay where the heatmap put them). Weights
    and ratios of 0 switch their term off (the paper's decoding); calibration chooses them per model.
    """

    peak_threshold_nucleus: float = 0.4
    peak_threshold_golgi: float = 0.4
    min_distance_nucleus_um: float = 3.0
    min_distance_golgi_um: float = 1.5
    embedding_delta: float = 2.0
    max_pair_distance_um: float = 14.0
    pairing_distance_weight: float = 0.0
    pairing_height_weight: float = 0.0
    peak_valley_nucleus: float = 0.0
    peak_valley_golgi: float = 0.0
    pairing_ridge_weight: float = 0.0
    ridge_radius_um: float = 3.5
    golgi_refine_radius_um: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pairing_distance_weight", "pairing_height_weight", "peak_valley_nucleus",
                     "peak_valley_golgi", "pairing_ridge_weight"):
            object.__setattr__(self, name, _number("decoding", name, getattr(self, name), 0.0, 1.0))
        limits = {
            "peak_threshold_nucleus": (0.0, 1.0),
            "peak_threshold_golgi": (0.0, 1.0),
            "min_distance_nucleus_um": (0.0, 1000.0),
            "min_distance_golgi_um": (0.0, 1000.0),
            "embedding_delta": (0.0, 1000.0),
            "max_pair_distance_um": (0.0, 10000.0),
            "ridge_radius_um": (0.0, 1000.0),
        }
        for name, (lo, hi) in limits.items():
            object.__setattr__(self, name, _number("decoding", name, getattr(self, name), lo, hi, lo_open=True))
        object.__setattr__(self, "golgi_refine_radius_um",
                           _number("decoding", "golgi_refine_radius_um", self.golgi_refine_radius_um, 0.0, 20.0))


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a trained model except its weights.

    Parameters
    ----------
    network : NetworkConfig
        Architecture.
    voxel_size : tuple of float
        ``(z, y, x)`` µm of the training data; inputs should be resampled to it.
    channel_roles : tuple of str
        Role of each input channel, in order (ours: ``("nucleus", "golgi")``).
    normalization, decoding : NormalizationSpec, DecodingSpec
    provenance : dict
        Free-form, JSON-serialisable: training data, epochs, losses, target sigmas, ...
    name, description : str
    """

    network: NetworkConfig
    voxel_size: tuple[float, float, float]
    channel_roles: tuple[str, ...] = CHANNEL_ROLES
    normalization: NormalizationSpec = field(default_factory=NormalizationSpec)
    decoding: DecodingSpec = field(default_factory=DecodingSpec)
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.network, NetworkConfig):
            raise CellPolError("ModelSpec.network must be a NetworkConfig.")
        object.__setattr__(self, "voxel_size", parse_voxel_size(self.voxel_size))
        roles = tuple(self.channel_roles)
        if len(roles) != self.network.in_channels or sorted(roles) != sorted(CHANNEL_ROLES):
            raise CellPolError(
                f"input_channels must name each of {', '.join(CHANNEL_ROLES)} once "
                f"({self.network.in_channels} channels), got {list(roles)}."
            )
        object.__setattr__(self, "channel_roles", roles)
        if not isinstance(self.provenance, Mapping):
            raise CellPolError("provenance must be a JSON object.")
        if not isinstance(self.name, str) or not isinstance(self.description, str):
            raise CellPolError("name and description must be text.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document without the file-specific entries (weights name, checksum, timestamp)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "architecture": self.network.to_dict(),
            "voxel_size_zyx_um": list(self.voxel_size),
            "input_channels": list(self.channel_roles),
            "normalization": asdict(self.normalization),
            "decoding": asdict(self.decoding),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Parse and validate a model JSON document.

        Raises
        ------
        CellPolError
            With a one-line reason (wrapped into :class:`FileFormatError` by :func:`load_spec`).
        """
        if not isinstance(data, Mapping):
            raise CellPolError("the top level is not a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise CellPolError(f"it is not a CellPol model description (format {data.get('format')!r})")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise CellPolError(f"its format version {version!r} is not a whole number")
        if version > FORMAT_VERSION:
            raise CellPolError(
                f"it has format version {version}, newer than this CellPol Studio reads ({FORMAT_VERSION}); "
                "update the app"
            )
        for key in ("architecture", "voxel_size_zyx_um"):
            if key not in data:
                raise CellPolError(f"the entry '{key}' is missing")
        network = NetworkConfig.from_dict(data["architecture"])
        voxel = data["voxel_size_zyx_um"]
        if not isinstance(voxel, list):
            raise CellPolError("voxel_size_zyx_um must be a list [z, y, x] in µm")
        return cls(
            network=network,
            voxel_size=tuple(voxel),  # type: ignore[arg-type]
            channel_roles=tuple(data.get("input_channels", CHANNEL_ROLES)),
            normalization=_strict_from_dict(NormalizationSpec, data.get("normalization", {}), "normalization"),
            decoding=_strict_from_dict(DecodingSpec, data.get("decoding", {}), "decoding"),
            provenance=data.get("provenance", {}) or {},
            name=data.get("name", "") or "",
            description=data.get("description", "") or "",
        )

    def with_decoding(self, **changes: Any) -> "ModelSpec":
        """A copy with some decoding parameters changed (validated)."""
        return replace(self, decoding=replace(self.decoding, **changes))


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------
def model_paths(path: PathLike) -> tuple[Path, Path]:
    """``(json_path, weights_path)`` for a stem, a ``.json`` or a ``.safetensors`` path."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (CONFIG_SUFFIX, WEIGHTS_SUFFIX):
        stem = p.with_suffix("")
        return stem.with_suffix(CONFIG_SUFFIX), stem.with_suffix(WEIGHTS_SUFFIX)
    return p.with_name(p.name + CONFIG_SUFFIX), p.with_name(p.name + WEIGHTS_SUFFIX)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------
def _expected_shapes(config: NetworkConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        reference = build_network(config)
    return {name: tuple(t.shape) for name, t in reference.state_dict().items()}


def compare_state(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> Optional[str]:
    """A one-line description of how ``tensors`` differ from the architecture, or None."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(tensors[k].shape)} instead of {expected[k]})"
        )
    return "; ".join(problems) if problems else None


def save_model(path: PathLike, module: nn.Module, spec: ModelSpec) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` atomically; return the JSON path.

    ``path`` may be the stem, the ``.json`` or the ``.safetensors`` path. A kill at any step leaves a
    loadable model, the old or the new one (:func:`write_model_files`), never a mismatched pair.

    Raises
    ------
    CellPolError
        If the module's weights do not fit ``spec.network``.
    """
    json_path, weights_path = model_paths(path)
    module_config = getattr(module, "config", None)
    if isinstance(module_config, NetworkConfig) and module_config != spec.network:
        raise CellPolError("The network's configuration differs from the one in the model description.")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()}
    problem = compare_state(tensors, _expected_shapes(spec.network))
    if problem:
        raise CellPolError(f"The network's weights do not fit the described architecture: {problem}.")

    return write_model_files(json_path, weights_path, tensors, spec.to_dict())


def write_model_files(json_path: Path, weights_path: Path, tensors: Mapping[str, torch.Tensor],
                      document: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (safetensors) and ``document`` (JSON) atomically; return the JSON path.

    A new model: the weights, then the JSON. Replacing one: the new JSON carrying the old one (``previous``),
    the weights, then the new JSON alone; :func:`read_document` takes the old JSON while the old weights
    are still in place.

    The JSON gets the weights' file name and SHA-256 after its ``format``/``version``/``name``/
    ``description`` entries, and the app version and time at the end. Shared by every model kind (the
    detector here, the Vox2Vox generator), each with its own ``format`` value.
    """
    head_keys = ("format", "version", "name", "description")
    payload = st_save(dict(tensors), metadata={"format": str(document.get("format", "")),
                                               "version": str(document.get("version", ""))})
    document = {
        **{k: document[k] for k in head_keys if k in document},
        "weights": weights_path.name,
        "weights_sha256": _sha256(payload),
        **{k: v for k, v in document.items() if k not in head_keys and k != "previous"},
        "app_version": __version__,
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # Replacing a model: the new JSON goes first and keeps the old one, whose checksum still matches the old
    # weights, so a kill before the new weights are in leaves a loadable old model (read_document).
    old = _committed_document(json_path, weights_path)
    if old is not None:
        atomic_write_json(json_path, {**document, "previous": old})
    with atomic_path(weights_path) as tmp:
        tmp.write_bytes(payload)
    atomic_write_json(json_path, document)
    return json_path


def _committed_document(json_path: Path, weights_path: Path) -> Optional[dict[str, Any]]:
    """The model JSON at ``json_path`` if it matches the weights at ``weights_path`` now, else ``None``."""
    try:
        document = read_document(json_path)
        matches = document.get("weights_sha256") == sha256_file(weights_path)
    except (CellPolError, OSError):
        return None
    return document if matches else None


# ----------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------
def read_document(json_path: Path) -> dict[str, Any]:
    """The JSON object of a model file; a missing, unreadable or damaged file is one :class:`FileFormatError`."""
    if not json_path.is_file():
        raise FileFormatError(
            f"Model file not found: {json_path} (a model is a .json description plus its .safetensors weights)."
        )
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"Cannot read the model file {json_path}: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(
            f"The model file {json_path} is damaged: not valid JSON (line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(document, dict):
        raise FileFormatError(f"The model file {json_path} is damaged: the top level is not a JSON object.")
    previous = document.pop("previous", None)
    if isinstance(previous, dict):  # a replacement was cut short: the old JSON fits whichever weights are in
        named = document.get("weights")
        weights = json_path.parent / named if isinstance(named, str) and Path(named).name == named else None
        try:
            actual = sha256_file(weights) if weights is not None else None
        except OSError:
            actual = None
        if actual is not None and actual != document.get("weights_sha256") and actual == previous.get("weights_sha256"):
            return previous
    return document


def _spec_from_document(document: Mapping[str, Any], json_path: Path) -> ModelSpec:
    try:
        return ModelSpec.from_dict(document)
    except (CellPolError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{json_path} is not a usable CellPol model: {exc}.") from None


def read_model_weights(json_path: Path, weights_path: Path,
                       document: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a model's weights file, checked against the JSON's checksum; never unpickles.

    Falls back on the file named in the JSON (a bare name next to it). Returns the tensors and the path
    read. Every problem is one :class:`FileFormatError`.
    """
    if not weights_path.is_file():
        # Fall back on the file name recorded in the JSON (a bare name next to it, never a path elsewhere).
        named = document.get("weights")
        if isinstance(named, str) and named and Path(named).name == named and (json_path.parent / named).is_file():
            weights_path = json_path.parent / named
        else:
            raise FileFormatError(
                f"The weights of model {json_path.name} are missing: expected {weights_path} next to it."
            )
    try:
        payload = weights_path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"Cannot read the model weights {weights_path}: {exc}") from None
    checksum = document.get("weights_sha256")
    if isinstance(checksum, str) and checksum and checksum.lower() != _sha256(payload):
        raise FileFormatError(
            f"The model weights {weights_path} are damaged or belong to another model (checksum mismatch)."
        )
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError, OSError, TypeError) as exc:
        raise FileFormatError(
            f"The model weights {weights_path} are damaged or not a safetensors file ({exc})."
        ) from None
    return tensors, weights_path


def load_spec(path: PathLike) -> ModelSpec:
    """Read and validate the JSON of a model (``path``: stem, ``.json`` or ``.safetensors``)."""
    json_path, _ = model_paths(path)
    return _spec_from_document(read_document(json_path), json_path)


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Load a model (eval mode, on ``device``) and its spec. Never unpickles anything.

    Raises
    ------
    FileFormatError
        Missing or damaged JSON or weights, a checksum mismatch, or weights that do not fit the architecture.
    """
    json_path, weights_path = model_paths(path)
    document = read_document(json_path)
    spec = _spec_from_document(document, json_path)
    tensors, weights_path = read_model_weights(json_path, weights_path, document)
    problem = compare_state(tensors, _expected_shapes(spec.network))
    if problem:
        raise FileFormatError(
            f"The weights {weights_path.name} do not fit the architecture in {json_path.name} "
            f"(incompatible model): {problem}."
        )
    module = build_network(spec.network)
    reference = module.state_dict()
    for name, tensor in tensors.items():
        want = reference[name].dtype
        if tensor.dtype != want:
            if tensor.is_floating_point() != reference[name].is_floating_point():
                raise FileFormatError(
                    f"The weights {weights_path.name} are incompatible: tensor {name} has type {tensor.dtype}."
                )
            tensors[name] = tensor.to(want)
    module.load_state_dict(tensors, strict=True)
    module.to(device)
    module.eval()
    return module, spec
