"""The demo: a simulated volume, its ground truth, and predictions (starter model, else the classic peer).

Torch is imported only inside :func:`demo_predictions`, which the window runs in a worker thread after
it is shown, and only when a learned model is actually available.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.pairs import PairSet
from app.core.volume import Volume

DEMO_SHAPE = (32, 256, 256)
DEMO_VOXEL_SIZE = (0.5, 0.33, 0.33)


def demo_data(seed: int = 1, shape=DEMO_SHAPE, voxel_size=DEMO_VOXEL_SIZE) -> tuple[Volume, PairSet]:
    """A simulated two-channel volume (nuclei, Golgi) with its ground-truth vectors."""
    # Deliberately lazy, here and in demo_predictions: the window imports this module at start-up, and the
    # simulator and the classic peer bring scipy (~0.3 s), a learned model torch (~1 s); the demo loads them when
    # it runs.
    from app.core.simulate import SimConfig, simulate

    return simulate(SimConfig(shape=tuple(shape), voxel_size=tuple(voxel_size), seed=seed))


def _shipped_models() -> list[Path]:
    # Same folder as app.core.inference.models_dir(), looked up without importing torch.
    folder = Path(__file__).resolve().parents[2] / "resources" / "models"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def demo_predictions(volume: Volume) -> tuple[PairSet, dict[str, Any]]:
    """Predicted vectors for ``volume`` and how they were made.

    Uses the bundled starter model when there is one (importing torch here, in the caller's thread);
    otherwise, or if the model cannot run, the classic Otsu peer, which needs no training.
    """
    problem = ""
    if _shipped_models():
        try:
            from app.core.inference import Predictor, find_starter_model

            starter = find_starter_model()
            predictor = Predictor.from_files([starter], "cpu")
            return predictor(volume), {"method": "starter model", "model": starter.name}
        except Exception as exc:  # a broken model must not break the demo; say so in the status bar
            problem = f" (starter model failed: {exc})"
    from app.core.classic import ClassicParams, predict_classic

    return predict_classic(volume, ClassicParams()), {"method": "classic Otsu peer" + problem}
