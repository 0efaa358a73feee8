"""The generator file: ``<name>.json`` (:class:`GeneratorSpec`) + ``<name>.safetensors`` (weights and masks)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from app.core.errors import CellPolError, FileFormatError
from app.core.masks import GOLGI_BOX_UM, NUCLEUS_BOX_UM, LayoutParams, ShapeLibrary
from app.core.modelfile import compare_state, model_paths, read_document, read_model_weights, write_model_files
from app.core.volume import parse_voxel_size
from app.training.vox2vox.networks import UNetGenerator, Vox2VoxConfig

PathLike = Union[str, os.PathLike]
FORMAT_NAME = "cellpol-vox2vox"
FORMAT_VERSION = 1


@dataclass
class GeneratorSpec:
    """Everything about a trained generator except its weights (the JSON of the generator file).

    ``shape`` is the default volume generated (voxels at ``voxel_size``); ``normalization`` is how the
    training images were scaled (per-channel percentiles to [0, 1]); ``layout`` the limits learned from
    the annotations; ``boxes_um`` the mask boxes used.
    """

    config: Vox2VoxConfig
    voxel_size: tuple[float, float, float]
    patch_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    layout: LayoutParams = field(default_factory=LayoutParams)
    normalization: dict[str, float] = field(default_factory=lambda: {"low_percentile": 1.0, "high_percentile": 99.8})
    boxes_um: dict[str, list[float]] = field(default_factory=lambda: {"nucleus": list(NUCLEUS_BOX_UM),
                                                                       "golgi": list(GOLGI_BOX_UM)})
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        self.voxel_size = parse_voxel_size(self.voxel_size)  # type: ignore[assignment]
        for what in ("patch_shape", "shape"):
            value = check_shape(getattr(self, what), self.config.multiple, what.replace("_", " "))
            setattr(self, what, value)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "name": self.name, "description": self.description,
                "architecture": self.config.to_dict(), "voxel_size_zyx_um": list(self.voxel_size),
                "channels": ["nucleus", "golgi"], "patch_shape_zyx": list(self.patch_shape),
                "shape_zyx": list(self.shape), "normalization": dict(self.normalization),
                "mask_boxes_um": dict(self.boxes_um), "layout": self.layout.to_dict(),
                "provenance": dict(self.provenance)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GeneratorSpec":
        if data.get("format") != FORMAT_NAME:
            raise CellPolError(f"it is not a Vox2Vox generator (format {data.get('format')!r}; "
                               "a detection model cannot generate images)")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
            raise CellPolError(f"its format version {version!r} is not one this app reads ({FORMAT_VERSION})")
        try:
            return cls(config=Vox2VoxConfig.from_dict(data["architecture"]),
                       voxel_size=tuple(data["voxel_size_zyx_um"]),  # type: ignore[arg-type]
                       patch_shape=tuple(data["patch_shape_zyx"]), shape=tuple(data["shape_zyx"]),  # type: ignore[arg-type]
                       layout=LayoutParams.from_dict(data.get("layout", {})),
                       normalization=dict(data.get("normalization", {})),
                       boxes_um=dict(data.get("mask_boxes_um", {})), provenance=dict(data.get("provenance", {})),
                       name=str(data.get("name", "")), description=str(data.get("description", "")))
        except KeyError as exc:
            raise CellPolError(f"the entry {exc} is missing") from None
        except (TypeError, ValueError) as exc:
            raise CellPolError(str(exc)) from None


def check_shape(shape: Any, multiple: Sequence[int], what: str = "shape") -> tuple[int, int, int]:
    """Three positive sizes that are multiples of ``multiple``, else a :class:`CellPolError` naming the nearest."""
    try:
        values = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise CellPolError(f"The {what} must be three positive sizes Z Y X, got {shape!r}.")
    if any(v % m for v, m in zip(values, multiple)):
        nearest = tuple(max(m, int(round(v / m)) * m) for v, m in zip(values, multiple))
        raise CellPolError(f"The {what} {values} must be a multiple of {tuple(multiple)} in Z Y X (the generator's "
                           f"strides); e.g. {nearest}.")
    return values  # type: ignore[return-value]


def save_generator(path: PathLike, generator: UNetGenerator, spec: GeneratorSpec, library: ShapeLibrary) -> Path:
    """Write ``<path>.safetensors`` (generator weights ``generator.*`` and the object masks ``shapes.*``) and
    ``<path>.json`` (:class:`GeneratorSpec`), atomically; return the JSON path."""
    json_path, weights_path = model_paths(path)
    tensors = {f"generator.{k}": v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    tensors.update({f"shapes.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in library.to_arrays().items()})
    document = spec.to_dict()
    document["shapes"] = {"nuclei": len(library.nuclei), "golgi": len(library.golgi)}
    return write_model_files(json_path, weights_path, tensors, document)


def load_generator(path: PathLike, device: Union[str, torch.device] = "cpu"
                   ) -> tuple[UNetGenerator, GeneratorSpec, ShapeLibrary]:
    """Load a generator file (eval mode on ``device``), its spec and its object masks; never unpickles.

    Raises
    ------
    FileFormatError
        Missing or damaged files, a detection model instead of a generator, weights that do not fit.
    """
    json_path, weights_path = model_paths(path)
    document = read_document(json_path)
    try:
        spec = GeneratorSpec.from_dict(document)
    except CellPolError as exc:
        raise FileFormatError(f"{json_path} is not a usable Vox2Vox generator: {exc}.") from None
    tensors, weights_path = read_model_weights(json_path, weights_path, document)
    generator = UNetGenerator(spec.config)
    weights = {k[len("generator."):]: v for k, v in tensors.items() if k.startswith("generator.")}
    expected = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    problem = compare_state(weights, expected)
    if problem:
        raise FileFormatError(f"The weights {weights_path.name} do not fit the generator in {json_path.name}: {problem}.")
    generator.load_state_dict({k: v.float() for k, v in weights.items()})
    try:
        library = ShapeLibrary.from_arrays({k[len("shapes."):]: v.numpy() for k, v in tensors.items()
                                            if k.startswith("shapes.")}, spec.voxel_size)
    except CellPolError as exc:
        raise FileFormatError(f"{weights_path}: {exc}") from None
    return generator.to(device).eval(), spec, library

