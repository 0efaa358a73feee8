"""Generation: new random layouts through a trained generator, written as 3DNGMic folders and as training
images with their vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from app.core import masks as masks_mod
from app.core.device import select_device
from app.core.errors import CellPolError
from app.core.fileutil import atomic_path, clean_stale_temporaries, ensure_folder
from app.core.imageio import write_imagej_tiff
from app.core.jobs import CancelToken, ItemDone, Job, Result, check_cancel, progress_to_callback
from app.core.jobs import run as run_job
from app.core.modelfile import model_paths
from app.core.pairs import write_pairs
from app.core.volume import Volume
from app.training.targets import make_targets
from app.training.vox2vox.evaluation import run_generator
from app.training.vox2vox.files import FORMAT_NAME, PathLike, check_shape, load_generator

GENERATED_PREFIX = "gen_"
NGMIC_FOLDERS = ("inputs", "outputs", "vectors", "heatmaps")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _ngmic(array: np.ndarray) -> np.ndarray:
    """(2 = nucleus, Golgi, Z, Y, X) → the 3DNGMic layout (Y, X, Z, 2 = Golgi, nucleus)."""
    return np.ascontiguousarray(np.transpose(array[::-1], (2, 3, 1, 0)))


def generate(model: PathLike, n: int, out: PathLike, seed: int = 0, shape: Optional[Sequence[int]] = None,
             dropout: bool = False, device: str = "auto", start_index: int = 0,
             progress: Optional[Callable[[int, int, str], None]] = None,
             cancel: Optional[CancelToken] = None) -> list[Path]:
    """:func:`generate_job` run to its end: the TIFF paths; ``progress(done, total, message)`` hears it."""
    return run_job(generate_job(model, n, out, seed=seed, shape=shape, dropout=dropout, device=device,
                                start_index=start_index, cancel=cancel), progress_to_callback(progress))


def generate_job(model: PathLike, n: int, out: PathLike, seed: int = 0, shape: Optional[Sequence[int]] = None,
                 dropout: bool = False, device: str = "auto", start_index: int = 0,
                 cancel: Optional[CancelToken] = None) -> Job:
    """Generate ``n`` volumes with exact ground truth from a generator file: a job (:mod:`app.core.jobs`)
    with one :class:`~app.core.jobs.ItemDone` per volume (the TIFF path), then the list of paths as result.

    Item ``k`` gets a random layout from its own seed (``(seed, k)``, so any item can be made again
    alone) and the generator's image of it. Written into ``out``:

    - ``inputs/k.npy`` (Y, X, Z, 2) uint8 0/255 masks, ``outputs/k.npy`` (Y, X, Z, 2) uint8 image,
      ``heatmaps/k.npy`` (Y, X, Z, 2) float32 Gaussian heatmaps (channel 0 = Golgi, 1 = nucleus, as in
      3DNGMic) and ``vectors/k.npy`` (N, 6) = [y_N, x_N, z_N, y_G, x_G, z_G] voxels;
    - ``gen_kkkk.tif`` (ImageJ ZCYX uint8, channel 0 = nucleus, 1 = Golgi, voxel size in the metadata) and
      ``gen_kkkk.vectors.csv`` + sidecar, which ``cellpol train --synthetic-dir OUT`` reads.

    Parameters
    ----------
    model : path
        Generator ``.json`` (or stem).
    n : int
        Volumes to make.
    seed : int
    shape : (Z, Y, X), optional
        Voxels at the generator's voxel size; default: the generator's (the training images' size); must
        be a multiple of its strides.
    dropout : bool
        Keep the generator's dropout on: more varied, still reproducible under ``seed``.
    device, start_index, cancel :
        As elsewhere; ``start_index`` numbers the first item (to extend a folder); cancel is checked before
        each volume.

    Returns
    -------
    list of Path
        The TIFF paths.

    Raises
    ------
    CellPolError
        A bad count or shape, a file that is not a generator.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CellPolError(f"The number of volumes must be a whole number ≥ 1, got {n!r}.")
    if isinstance(start_index, bool) or not isinstance(start_index, int) or start_index < 0:
        raise CellPolError(f"The first index must be a whole number ≥ 0, got {start_index!r}.")
    torch_device = select_device(device)
    generator, spec, library = load_generator(model, torch_device)
    library.check()
    size = check_shape(shape, spec.config.multiple, "shape") if shape is not None else spec.shape
    generator.generation_dropout = bool(dropout)
    out_dir = ensure_folder(out)
    for folder in NGMIC_FOLDERS:
        ensure_folder(out_dir / folder)
    clean_stale_temporaries(out_dir, recursive=True)
    json_path, _ = model_paths(model)
    written = []
    for k in range(start_index, start_index + n):
        check_cancel(cancel)
        item = int(np.random.SeedSequence([int(seed), k]).generate_state(1, dtype=np.uint32)[0])
        layout = masks_mod.random_layout(library, size, spec.layout, np.random.default_rng(item))
        torch.manual_seed(item)  # dropout masks, when on
        image = run_generator(generator, layout.masks, torch_device)
        image8 = np.round(image * 255.0).astype(np.uint8)
        targets = make_targets(layout.pairs, size, spec.voxel_size)
        heatmaps = np.stack([targets["heatmap_nucleus"], targets["heatmap_golgi"]]).astype(np.float32)
        pairs = layout.pairs
        _save_npy(out_dir / "inputs" / f"{k}.npy", _ngmic(layout.masks * np.uint8(255)))
        _save_npy(out_dir / "outputs" / f"{k}.npy", _ngmic(image8))
        _save_npy(out_dir / "heatmaps" / f"{k}.npy", _ngmic(heatmaps))
        _save_npy(out_dir / "vectors" / f"{k}.npy",
                  np.concatenate([pairs.nuclei[:, [1, 2, 0]], pairs.golgi[:, [1, 2, 0]]], axis=1))
        stem = f"{GENERATED_PREFIX}{k:04d}"
        volume = Volume(image8, spec.voxel_size, ("nucleus", "golgi"), 0, 1)
        tif = write_imagej_tiff(out_dir / f"{stem}.tif", volume)
        write_pairs(out_dir / f"{stem}.vectors.csv", pairs, provenance={
            "image": tif.name, "image_shape_zyx": list(size), "generator": FORMAT_NAME, "model": spec.name,
            "model_file": str(json_path), "seed": int(seed), "index": k, "dropout": bool(dropout),
            "ngmic_index": k})
        written.append(tif)
        yield ItemDone(len(written), n, f"{stem}: {len(pairs)} pairs", item=tif)
    yield Result(written, f"{len(written)} volume(s) in {out_dir}")
    return written

