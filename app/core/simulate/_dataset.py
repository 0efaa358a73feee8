"""The public entry points: :func:`simulate` one volume, :func:`synthesize_dataset` a folder of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.fileutil import clean_stale_temporaries, ensure_folder
from app.core.imageio import write_imagej_tiff
from app.core.jobs import CancelToken, ItemDone, Job, ProgressCallback, Result, check_cancel, progress_to_callback
from app.core.jobs import run as run_job
from app.core.pairs import PairSet, write_pairs
from app.core.simulate._config import SimConfig, varied_sample_options
from app.core.simulate._memory import check_simulation_memory
from app.core.simulate._optics import _acquire, _lighting
from app.core.simulate._render import (
    _Canvas,
    _GroundTruth,
    _render_cytoplasm,
    _render_distractors,
    _render_layout_cells,
    _render_random_cells,
)
from app.core.simulate._scene import _Scene, _sample_scene
from app.core.volume import Volume

GENERATOR = "cellpol-simulator"


def simulate(config: Optional[SimConfig] = None, **overrides: Any) -> tuple[Volume, PairSet]:
    """Simulate one two-channel volume and its ground-truth nucleus→Golgi pairs.

    Parameters
    ----------
    config : SimConfig, optional
        What to simulate; default ``SimConfig()`` (confocal, 64×256×256).
    **overrides
        Any :class:`SimConfig` field, applied on top of ``config``.

    Returns
    -------
    volume : Volume
        ``(2, Z, Y, X)`` uint16 (or uint8); channel 0 "nuclei", channel 1 "golgi"; ``metadata`` holds the
        resolved config under ``"config"``.
    pairs : PairSet
        One pair per cell whose nucleus centre and Golgi lie in the volume: the occupancy-weighted
        centroids (voxels ``(z, y, x)``) of the nucleus and Golgi as rendered and visible, i.e. where an
        annotator would click. With ``layout_um`` set, exactly the given pairs (each object rendered with
        its centroid on its point; ``meta["scene"]["layout_max_centroid_error_um"]`` says how closely).
        ``sources = "simulated"``; ``meta`` has the config and ``image_shape_zyx``.

    Raises
    ------
    CellPolError
        Invalid configuration, unreadable shapes folder, or a volume too large for the memory available
        (:func:`check_simulation_memory`, checked before anything is drawn or allocated).

    Notes
    -----
    Deterministic for a given config (seed included). The scene (positions, sizes, orientations) is
    drawn in µm from its own random stream, so the same seed at another voxel size with the same
    physical extent gives the same cells; only texture and noise differ.
    """
    cfg = (config if config is not None else SimConfig()).replace(**overrides).resolved()
    check_simulation_memory(cfg.shape)
    seed_seq = np.random.SeedSequence(int(cfg.seed))
    scene_seq, render_seq, noise_seq = seed_seq.spawn(3)
    scene = _sample_scene(cfg, np.random.default_rng(scene_seq))
    render_rng = np.random.default_rng(render_seq)

    canvas = _Canvas(cfg.shape, cfg.voxel_size, cfg.is_2d, cfg.shapes_voxel_size)
    # Distractors first. Objects combine by maximum (two solid objects never share a voxel); specks and
    # fragments add.
    _render_distractors(canvas, scene)
    if cfg.layout_um is not None:
        truth = _render_layout_cells(cfg, canvas, scene, render_rng)
    else:
        truth = _render_random_cells(cfg, canvas, scene, render_rng)
    cytoplasm = _render_cytoplasm(cfg, scene)
    if cytoplasm is not None:
        canvas.golgi += cytoplasm

    signals = ((canvas.nuclei, cfg.photons_nucleus), (canvas.golgi, cfg.photons_golgi))
    data = _acquire(cfg, signals, _lighting(cfg, scene), np.random.default_rng(noise_seq))
    return _volume_and_pairs(cfg, data, scene, truth)


def _volume_and_pairs(cfg: SimConfig, data: np.ndarray, scene: _Scene, truth: _GroundTruth) -> tuple[Volume, PairSet]:
    """The simulated image as a :class:`Volume` and its ground truth as a :class:`PairSet`, each with the
    resolved config and the scene's counts (cells, pairs, distractors, cells left out) in its metadata."""
    config_dict = cfg.to_dict()
    counts = {
        "n_cells": len(scene.nuclei),
        "n_cells_requested_in_field": scene.n_requested,
        "n_pairs": len(truth.nuclei),
        "n_vessels": len(scene.vessels),
        "n_dirt": int(len(scene.dirt)),
        "n_fragments": len(scene.fragments),
        "dropped": truth.dropped,
    }
    if cfg.layout_um is not None:
        counts["layout_max_centroid_error_um"] = truth.layout_error_um
    volume = Volume(
        data,
        voxel_size=cfg.voxel_size,
        channel_names=("nuclei", "golgi"),
        nucleus_channel=0,
        golgi_channel=1,
        source=None,
        metadata={"generator": GENERATOR, "simulated": True, "config": config_dict, "scene": counts},
    )
    pairs = PairSet(
        np.array(truth.nuclei).reshape(-1, 3),
        np.array(truth.golgi).reshape(-1, 3),
        voxel_size=cfg.voxel_size,
        sources="simulated",
        meta={"generator": GENERATOR, "config": config_dict, "image_shape_zyx": list(cfg.shape), "scene": counts},
    )
    return volume, pairs


def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a dataset made with ``seed`` (reproducible one item at a time)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def synthesize_dataset(
    out_dir: str | os.PathLike,
    n: int,
    shape: tuple[int, int, int] = (64, 256, 256),
    voxel_size: Optional[Sequence[float]] = None,
    preset: str = "confocal",
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    start_index: int = 0,
    vary_samples: bool = False,
    **overrides: Any,
) -> list[Path]:
    """:func:`synthesize_job` run to its end: the TIFF paths; ``progress(done, total, message)`` hears it."""
    return run_job(synthesize_job(out_dir, n, shape, voxel_size, preset, seed, cancel=cancel, start_index=start_index,
                                  vary_samples=vary_samples, **overrides), progress_to_callback(progress))


def synthesize_job(
    out_dir: str | os.PathLike,
    n: int,
    shape: tuple[int, int, int] = (64, 256, 256),
    voxel_size: Optional[Sequence[float]] = None,
    preset: str = "confocal",
    seed: int = 0,
    cancel: Optional[CancelToken] = None,
    start_index: int = 0,
    vary_samples: bool = False,
    **overrides: Any,
) -> Job:
    """Write ``n`` simulated volumes with their ground-truth vectors: a job (:mod:`app.core.jobs`) with one
    :class:`~app.core.jobs.ItemDone` per volume (its TIFF path), then the list of paths as result.

    For item ``k`` this writes ``synth_kkkk.tif`` (ImageJ hyperstack ZCYX, voxel size in the metadata),
    ``synth_kkkk.vectors.csv`` and its sidecar ``synth_kkkk.vectors.json`` (provenance: image name,
    ``image_shape_zyx``, generator, config, dataset seed and index).

    Parameters
    ----------
    out_dir : path
        Output folder (created if needed).
    n : int
        Number of volumes.
    shape : tuple of int
        ``(Z, Y, X)`` of each volume; ``Z = 1`` for 2D.
    voxel_size : tuple of float, optional
        ``(z, y, x)`` µm; default from the preset.
    preset : str
        Key of :data:`PRESETS`.
    seed : int
        Dataset seed; item ``k`` uses :func:`item_seed` ``(seed, k)`` so any item can be regenerated alone.
    cancel : CancelToken, optional
        Checked before each volume; a cancelled run raises :class:`~app.core.errors.CancelledError`
        and leaves the completed items on disk.
    start_index : int
        Index of the first item (to extend an existing dataset).
    vary_samples : bool
        Each item draws its density, distractors, stain brightness and optics from
        :data:`SAMPLE_VARIATION` and :data:`SAMPLE_SCALES` (reproducibly from its own seed); options given in
        ``overrides`` win.
    **overrides
        Further :class:`SimConfig` fields.

    Returns
    -------
    list of Path
        The TIFF paths; each one's vectors are ``<stem>.vectors.csv`` beside it.

    Raises
    ------
    CellPolError
        Invalid options, or volumes too large for the memory available (checked before anything is written).
    """
    base = synthesis_base(n, shape, voxel_size, preset, **overrides)  # fails early, before writing anything
    out = Path(out_dir)
    ensure_folder(out)
    clean_stale_temporaries(out)
    paths: list[Path] = []
    total = int(n)
    for k in range(start_index, start_index + total):
        check_cancel(cancel)
        tif, n_pairs = synthesize_item(out, base, seed, k, vary_samples, tuple(overrides))
        paths.append(tif)
        yield ItemDone(len(paths), total, f"{tif.stem}: {n_pairs} pairs", item=tif)
    yield Result(paths, f"{len(paths)} volume(s) in {out}")
    return paths


def synthesis_base(
    n: int,
    shape: tuple[int, int, int] = (64, 256, 256),
    voxel_size: Optional[Sequence[float]] = None,
    preset: str = "confocal",
    **overrides: Any,
) -> SimConfig:
    """The configuration every item of a dataset starts from, checked before anything is written.

    Raises
    ------
    CellPolError
        A negative ``n``, invalid options, or volumes too large for the memory available.
    """
    if int(n) < 0:
        raise CellPolError(f"The number of volumes must be >= 0, got {n}.")
    base = SimConfig(shape=tuple(shape), voxel_size=None if voxel_size is None else tuple(voxel_size), preset=preset)
    base = base.replace(**overrides)
    check_simulation_memory(base.resolved().shape)
    return base


def synthesize_item(out_dir: str | os.PathLike, base: SimConfig, seed: int, index: int, vary_samples: bool = False,
                    keep: Sequence[str] = (), attempt: int = 1) -> tuple[Path, int]:
    """Simulate and write item ``index`` of a dataset: what :func:`synthesize_job` does per volume, and what
    each task of a cluster run does (:func:`app.core.cluster.synthesize_cluster_job`), so both write the same
    files. Plain arguments, importable by name.

    Parameters
    ----------
    out_dir : path
        The dataset's folder (it exists).
    base : SimConfig
        :func:`synthesis_base`'s configuration; the item's seed is :func:`item_seed` ``(seed, index)``.
    seed, index : int
        Dataset seed and item number.
    vary_samples : bool
        Draw the item's sample options (:func:`varied_sample_options`) from its own seed...
    keep : sequence of str
        ...except these options, which the caller set.
    attempt : int
        Which try this is (a cluster run tries a failed item again); it changes nothing in the item.

    Returns
    -------
    tif : Path
        ``synth_<index>.tif``; its vectors are ``synth_<index>.vectors.csv`` beside it.
    n_pairs : int
        Ground-truth pairs in the item.
    """
    cfg = base.replace(seed=item_seed(seed, index))
    if vary_samples:
        varied = varied_sample_options(np.random.default_rng([item_seed(seed, index), 1]), base.preset)
        cfg = cfg.replace(**{name: value for name, value in varied.items() if name not in keep})
    volume, pairs = simulate(cfg)
    return _write_item(Path(out_dir), f"synth_{index:04d}", volume, pairs, seed, index), len(pairs)


def _write_item(out: Path, stem: str, volume: Volume, pairs: PairSet, seed: int, index: int) -> Path:
    """Write one dataset item: ``<stem>.tif`` and ``<stem>.vectors.csv`` with its JSON sidecar; the TIFF path."""
    tif = write_imagej_tiff(out / f"{stem}.tif", volume)
    write_pairs(
        out / f"{stem}.vectors.csv",
        pairs,
        provenance={
            "image": tif.name,
            "image_shape_zyx": list(volume.spatial_shape),
            "generator": GENERATOR,
            "config": volume.metadata["config"],
            "dataset_seed": int(seed),
            "index": int(index),
        },
    )
    return tif
