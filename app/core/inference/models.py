"""The shipped starter models: where they are (:func:`models_dir`, :func:`starter_models`,
:func:`find_starter_model`) and a predictor that picks the 3D or the 2D one per image
(:class:`StarterPredictor`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Union

import torch

from app.core.device import select_device
from app.core.errors import CellPolError
from app.core.fileutil import sha256_file
from app.core.inference.predictor import TTA_DESCRIPTION, CancelLike, PathLike, Prediction, Predictor, ProgressLike
from app.core.jobs import Job
from app.core.modelfile import load_spec, model_paths
from app.core.pairs import PairSet
from app.core.volume import Volume


def models_dir() -> Path:
    """The folder holding the shipped models (``resources/models``).

    Returns
    -------
    Path
    """
    return Path(__file__).resolve().parents[3] / "resources" / "models"


def _default_models_dir() -> Path:
    """:func:`models_dir`, looked up through the package at call time: ``app.core.inference.models_dir`` is the
    public name, the one a caller replaces to point the starter lookup at another folder (tests do)."""
    return sys.modules[__package__].models_dir()


#: Names that win when a models folder holds several models of one dimensionality.
_STARTER_NAMES = ("starter", "cellpol_starter", "starter_2d", "cellpol_starter_2d")


def starter_models(folder: Optional[PathLike] = None) -> dict[int, Path]:
    """The shipped starter model ``.json`` per dimensionality (``{3: …, 2: …}``, missing ones left out).

    Among the models in ``folder`` (default :func:`models_dir`) of one dimensionality, one named
    ``starter`` or ``cellpol_starter[_2d]`` wins, else the first by name. Files that cannot be read are
    skipped (the error surfaces when such a model is named explicitly). One pass over the folder.

    Parameters
    ----------
    folder : path, optional
        Where to look (default: :func:`models_dir`).

    Returns
    -------
    dict of int to Path
        Model ``.json`` per dimensionality (2 or 3).
    """
    folder = Path(folder) if folder is not None else _default_models_dir()
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            dims = load_spec(path).network.spatial_dims
        except CellPolError:
            continue
        if dims not in found or (path.stem in _STARTER_NAMES and found[dims].stem not in _STARTER_NAMES):
            found[dims] = path
    return found


def find_starter_model(folder: Optional[PathLike] = None, spatial_dims: Optional[int] = 3) -> Optional[Path]:
    """The shipped starter model's ``.json`` for ``spatial_dims``-D images, or None.

    Parameters
    ----------
    folder : path, optional
        Where to look (default: :func:`models_dir`).
    spatial_dims : {3, 2, None}
        The images' dimensionality; None: any, 3D first.

    Returns
    -------
    Path or None
    """
    found = starter_models(folder)
    if spatial_dims is None:
        return found.get(3) or found.get(2)
    return found.get(spatial_dims)


class StarterPredictor:
    """The bundled starter models, the 3D one for stacks and the 2D one for single planes, chosen per image.

    Each :class:`Predictor` is built when first needed; ``options`` go to every one of them.

    Parameters
    ----------
    device : str or torch.device
        See :func:`app.core.device.select_device`.
    folder : path, optional
        Where the starter models are (default: :func:`models_dir`).
    **options
        The other parameters of :class:`Predictor`.

    Raises
    ------
    CellPolError
        No starter model at all (at construction), or none for an image's dimensionality (when called).
    """

    def __init__(self, device: Union[str, torch.device] = "auto", folder: Optional[PathLike] = None,
                 **options: Any) -> None:
        found = starter_models(folder)
        self.paths = {dims: found.get(dims) for dims in (3, 2)}
        if not any(self.paths.values()):
            raise CellPolError("No starter model is installed (resources/models): give a model file or use the "
                               "classic method.", settings={"model": None, "method": "classic"})
        self.device = select_device(device)
        self.options = options
        self._predictors: dict[int, Predictor] = {}

    def for_volume(self, volume: Volume) -> Predictor:
        """The predictor that fits ``volume`` (2D or 3D)."""
        dims = 2 if volume.is_2d else 3
        if dims not in self._predictors:
            path = self.paths[dims]
            if path is None:
                raise CellPolError(f"No {dims}D starter model is installed, and this image is "
                                   f"{'a single plane' if dims == 2 else 'a 3D stack'}: pass a {dims}D model "
                                   "file or use the classic method.", settings={"model": None, "method": "classic"})
            self._predictors[dims] = Predictor.from_files([path], self.device, **self.options)
        return self._predictors[dims]

    def __call__(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> PairSet:
        return self.for_volume(volume)(volume, progress=progress, cancel=cancel)

    def predict(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> Prediction:
        return self.for_volume(volume).predict(volume, progress=progress, cancel=cancel)

    def job(self, volume: Volume, cancel: CancelLike = None) -> Job:
        """:meth:`Predictor.job` of the starter that fits ``volume``."""
        return self.for_volume(volume).job(volume, cancel)

    def open_image(self, image: Any, read_options: Any, target: Optional[PathLike] = None) -> Any:
        """:meth:`Predictor.open_image` with the starter that fits the image."""
        from app.core.inference.streaming import open_for_prediction

        return open_for_prediction(image, read_options, self, target=target)

    def provenance(self) -> dict[str, Any]:
        """Both starter models, each labelled with the images it serves (2D or 3D)."""
        models = []
        for dims, path in self.paths.items():
            if path is not None:
                models.append({"name": path.stem, "path": str(path.resolve()), "images": f"{dims}D",
                               "weights_sha256": sha256_file(model_paths(path)[1])})
        return {"method": "cellpol", "models": models, "device": str(self.device),
                "note": "the bundled starter models: 3D stacks use the 3D one, single planes the 2D one",
                "test_time_augmentation": TTA_DESCRIPTION if self.options.get("tta") else None}
