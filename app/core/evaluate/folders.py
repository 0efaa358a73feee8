"""Scoring folders: ground truth and predictions matched by file name, each image's size settled first, then every
image scored (:func:`evaluate_job`, a job of :mod:`app.core.jobs`, and :func:`evaluate_folders`, its wrapper)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from app.core.batch import image_stem
from app.core.errors import CellPolError
from app.core.evaluate.protocol import _check_border_margin
from app.core.evaluate.results import NO_PREDICTION, EvaluationResult, ImageScore, aggregate
from app.core.evaluate.scoring import _fmt_shape, _refuse_outside, _sidecar_shape, score_pairs
from app.core.imageio import find_images, read_image_info, read_volume
from app.core.jobs import (CancelToken, Job, JobWarning, Progress, ProgressCallback, Result, check_cancel,
                           progress_to_callback)
from app.core.jobs import run as run_job
from app.core.pairs import (
    PREDICTION_SUFFIX,
    VECTORS_SUFFIX,
    PairSet,
    read_pairs,
    read_sidecar,
    vectors_content,
    vectors_stem,
)


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    progress: Optional[ProgressCallback] = None,
    *,
    border_margin_um: float = 7.0,
    protocol: str = "auto",
    cancel: Optional[CancelToken] = None,
    images_dir: Optional[str | os.PathLike] = None,
    image_axes: Optional[str] = None,
) -> EvaluationResult:
    """:func:`evaluate_job` run to its end: the :class:`EvaluationResult`; ``progress(done, total, message)``
    hears its progress."""
    return run_job(evaluate_job(gt_dir, pred_dir, voxel_size, border_margin_um=border_margin_um, protocol=protocol,
                                cancel=cancel, images_dir=images_dir, image_axes=image_axes),
                   progress_to_callback(progress))


def evaluate_job(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    voxel_size: Optional[Sequence[float]] = None,
    *,
    border_margin_um: float = 7.0,
    protocol: str = "auto",
    cancel: Optional[CancelToken] = None,
    images_dir: Optional[str | os.PathLike] = None,
    image_axes: Optional[str] = None,
) -> Job:
    """Score the predictions of ``pred_dir`` against the ground truth of ``gt_dir``, matched by stem.

    Ground truth is ``<stem>.vectors.csv``; a prediction is ``<stem>.pred.vectors.csv`` or, as older
    versions wrote them, ``<stem>.vectors.csv`` (the ``.pred`` file wins when both exist, with a
    warning). Autosaves are never read. Both may live in one folder; then only ``.pred`` files are
    predictions. Ground truth without a prediction is scored as all-FN and listed in
    :attr:`EvaluationResult.missing`; predictions without ground truth are listed in
    :attr:`EvaluationResult.skipped`. Nothing is left only in memory: every such case is also a warning.

    The image size (for border exclusion and for refusing points outside the image) comes from the
    image ``<stem>.<tif|tiff|ome.tif|ome.tiff|npy|czi>`` in ``images_dir`` when given, else from the
    vectors' sidecars (``image_shape_zyx``). Every size is settled before any scoring, so a missing one
    stops the run at once with one message listing the images concerned.

    Parameters
    ----------
    gt_dir, pred_dir : path
        Folders of project vectors CSVs (with JSON sidecars). May be the same folder.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm overriding the sidecars'.
    border_margin_um, protocol
        As for :func:`score_pairs`.
    cancel : CancelToken, optional
        Polled between images.
    images_dir : path, optional
        Folder of the images the vectors were made on. For each stem, the image whose name without its
        image suffix is the stem (the rule of :func:`app.core.batch.image_stem`, among the files
        :func:`app.core.imageio.find_images` lists; not recursive) gives the size; only its header is
        read. Its size must agree with the sidecars' where they record one. A stem without an image
        falls back to the sidecars (with a warning).
    image_axes : str, optional
        Axes of the images (as ``cellpol predict --axes``), for images whose header does not tell them
        (e.g. the authors' RGB layout ``"YXZC"``); each image is then read in full.

    Returns
    -------
    Job
        A job (:mod:`app.core.jobs`): :class:`~app.core.jobs.Progress` before the first image and after each,
        a :class:`~app.core.jobs.JobWarning` for every warning of the result, then
        :class:`~app.core.jobs.Result` with the :class:`EvaluationResult` (also the return value).

    Raises
    ------
    CellPolError
        Missing folders, no vectors files, no stem in common, unreadable files, mismatched voxel sizes
        or image sizes, points outside the image (the message names the image), or a border margin
        > 0 for images whose size is unknown.
    """
    _check_border_margin(border_margin_um)
    gt_dir, pred_dir = _checked_folders(gt_dir, pred_dir)
    gt_files, pred_files, skipped, folder_warnings = _files_to_score(gt_dir, pred_dir)
    stems = sorted(gt_files)
    shapes, shape_notes = _image_sizes(stems, gt_files, pred_files, images_dir, image_axes, border_margin_um, cancel)
    scores: list[ImageScore] = []
    yield Progress(0, len(stems), "Scoring")
    for done, stem in enumerate(stems):
        check_cancel(cancel)
        scores.append(_score_image(stem, gt_files[stem], pred_files.get(stem), shapes[stem], shape_notes[stem],
                                   voxel_size=voxel_size, border_margin_um=border_margin_um, protocol=protocol))
        yield Progress(done + 1, len(stems), f"Scored {stem}")
    result = aggregate(scores, skipped=skipped, warnings=folder_warnings)
    for warning in result.warnings:
        yield JobWarning(warning)
    yield Result(result, f"{len(stems)} image(s) scored")
    return result


# --- the steps of evaluate_job -------------------------------------------------------------------------------


def _checked_folders(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Both folders as paths; one error if either is missing."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for what, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise CellPolError(f"The {what} folder {folder} does not exist (or is not a folder).")
    return gt_dir, pred_dir


def _files_to_score(gt_dir: Path, pred_dir: Path) -> tuple[dict[str, Path], dict[str, Path], list[str], list[str]]:
    """``(ground truth by stem, predictions by stem, stems of predictions without ground truth, warnings)``.

    Raises
    ------
    CellPolError
        No ground truth, no predictions, or no stem in common.
    """
    same_folder = gt_dir.resolve() == pred_dir.resolve()
    gt_files = {stem: kinds["annotation"] for stem, kinds in _vector_files(gt_dir, ("annotation",)).items()}
    pred_files, folder_warnings = _prediction_files(pred_dir, same_folder)
    if same_folder and not pred_files:
        raise CellPolError(
            f"The ground-truth and prediction folders are the same ({gt_dir}) and it holds no predictions "
            f"(*{PREDICTION_SUFFIX}); in one folder, <name>{VECTORS_SUFFIX} is the ground truth."
        )
    if not gt_files:
        raise CellPolError(
            f"No ground-truth vectors (*{VECTORS_SUFFIX}) in {gt_dir} (predictions, *{PREDICTION_SUFFIX}, and "
            "autosaves are not ground truth)."
        )
    if not pred_files:
        raise CellPolError(f"No predicted vectors (*{PREDICTION_SUFFIX}, or *{VECTORS_SUFFIX} from older versions) "
                           f"in {pred_dir}.")
    common = sorted(set(gt_files) & set(pred_files))
    if not common:
        raise CellPolError(
            f"No file names in common between {gt_dir} and {pred_dir}: ground truth <name>{VECTORS_SUFFIX} is "
            f"matched with the prediction <name>{PREDICTION_SUFFIX} (or <name>{VECTORS_SUFFIX})."
        )
    skipped = sorted(set(pred_files) - set(gt_files))
    folder_warnings += [f"{stem}: prediction without ground truth, skipped" for stem in skipped]
    return gt_files, pred_files, skipped, folder_warnings


def _image_sizes(
    stems: Sequence[str],
    gt_files: dict[str, Path],
    pred_files: dict[str, Path],
    images_dir: Optional[str | os.PathLike],
    image_axes: Optional[str],
    border_margin_um: float,
    cancel: Optional[CancelToken],
) -> tuple[dict[str, Optional[tuple[Optional[int], int, int]]], dict[str, list[str]]]:
    """The size of every image (or ``None``) and the notes on each, settled before any scoring: a missing size
    stops the run before any work, with every image concerned named.

    Raises
    ------
    CellPolError
        A missing images folder, a size that cannot be settled (:func:`_image_size`, the message names the
        image), or a border margin > 0 for images whose size is unknown.
    """
    images, images_path = None, None
    if images_dir is not None:
        images_path = Path(images_dir)
        if not images_path.is_dir():
            raise CellPolError(f"The images folder {images_path} does not exist (or is not a folder).")
        images = _images_by_stem(images_path)
    shapes: dict[str, Optional[tuple[Optional[int], int, int]]] = {}
    shape_notes: dict[str, list[str]] = {}
    unknown: list[str] = []
    for stem in stems:
        check_cancel(cancel)
        try:
            shape, why, notes = _image_size(stem, gt_files[stem], pred_files.get(stem), images, images_path,
                                            image_axes)
        except CellPolError as exc:
            raise CellPolError(f"{stem}: {exc}") from None
        if shape is None:
            unknown.append(f"{stem} ({why})")
            if images is not None:
                notes.append(why)
        shapes[stem], shape_notes[stem] = shape, notes
    if unknown and border_margin_um > 0:
        listed = "; ".join(unknown[:5]) + (f"; and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise CellPolError(
            f"Cannot apply the {border_margin_um:g} µm border exclusion to {len(unknown)} image(s) whose size is "
            f"unknown: {listed}. Give the folder of the images so their sizes can be read, or a border margin "
            "of 0 to keep every pair.", settings={"images_dir": None, "border_margin_um": 0}
        )
    return shapes, shape_notes


def _score_image(
    stem: str,
    gt_path: Path,
    pred_path: Optional[Path],
    shape: Optional[tuple[Optional[int], int, int]],
    shape_notes: list[str],
    *,
    voxel_size: Optional[Sequence[float]],
    border_margin_um: float,
    protocol: str,
) -> ImageScore:
    """Score one image (an empty prediction when ``pred_path`` is ``None``), with the notes on its files first.

    Raises
    ------
    CellPolError
        An unreadable file, points outside the image, or anything :func:`score_pairs` refuses; the message
        names the image.
    """
    try:
        gt = read_pairs(gt_path, voxel_size=voxel_size)
        if pred_path is not None:
            pred = read_pairs(pred_path, voxel_size=voxel_size)
        else:
            pred = PairSet.empty(voxel_size=gt.voxel_size)
        if shape is not None:
            _refuse_outside(gt, shape, f"The ground truth {gt_path}")
            if pred_path is not None:
                _refuse_outside(pred, shape, f"The prediction {pred_path}")
        score = score_pairs(
            gt, pred, image_shape=shape, border_margin_um=border_margin_um, protocol=protocol,
            voxel_size=voxel_size, name=stem,
        )
    except CellPolError as exc:
        raise CellPolError(f"{stem}: {exc}") from None
    score.warnings[:0] = shape_notes
    if vectors_content(gt.meta, gt.sources) == "prediction":
        score.warnings.insert(0, f"the ground truth {gt_path.name} holds a model's predictions "
                                 "(by its sidecar or sources): is this the right ground-truth folder?")
    else:
        unreviewed = sum(1 for s in gt.sources if str(s) == "predicted")
        if unreviewed:  # annotations with a review in progress
            score.warnings.insert(0, f"the ground truth {gt_path.name} holds {unreviewed} prediction(s) not "
                                     "reviewed yet, scored as ground truth: finish reviewing that image first")
    if pred_path is None:  # says it all: no "no predicted pairs" besides
        score.status = NO_PREDICTION
        score.warnings[:] = [w for w in score.warnings if not w.startswith("no predicted pairs")]
        score.warnings.insert(0, "no prediction file: every ground-truth pair counts as FN")
    return score


# --- files and image sizes -----------------------------------------------------------------------------------


def _vector_files(folder: Path, kinds: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``{stem: {kind: path}}`` of the vectors files of ``folder`` whose kind (see
    :func:`app.core.pairs.vectors_stem`) is in ``kinds``."""
    files: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        stem, kind = vectors_stem(path.name)
        if stem is not None and kind in kinds and path.is_file():
            files.setdefault(stem, {})[kind] = path
    return files


def _prediction_files(pred_dir: Path, same_folder: bool) -> tuple[dict[str, Path], list[str]]:
    """``{stem: path}`` of the predictions: ``<stem>.pred.vectors.csv``, else (older versions)
    ``<stem>.vectors.csv`` unless the folder is also the ground truth's; notes on the choices made."""
    kinds = ("prediction",) if same_folder else ("prediction", "annotation")
    chosen, notes = {}, []
    for stem, by_kind in _vector_files(pred_dir, kinds).items():
        chosen[stem] = by_kind.get("prediction", by_kind.get("annotation"))
        if len(by_kind) == 2:
            notes.append(
                f"{stem}: both {by_kind['prediction'].name} and {by_kind['annotation'].name} are in {pred_dir}; "
                f"scored {by_kind['prediction'].name}"
            )
    return chosen, notes


#: What :func:`_image_size` returns: the size (or None), why it is unknown, warnings.
_ShapeResult = tuple[Optional[tuple[Optional[int], int, int]], str, list[str]]


def _images_by_stem(images_dir: Path) -> dict[str, list[Path]]:
    """``{stem: [image paths]}`` of the images in ``images_dir`` (those :func:`find_images` lists).

    Each image is listed under its stem (:func:`app.core.batch.image_stem`) and under its whole file
    name, the name batch prediction gives the outputs of images that share a stem (``x.tif`` and
    ``x.npy`` give ``x.tif.pred.vectors.csv`` and ``x.npy.pred.vectors.csv``).
    """
    by_stem: dict[str, list[Path]] = {}
    for path in find_images([images_dir]):
        by_stem.setdefault(image_stem(path), []).append(path)
        if path.name != image_stem(path):
            by_stem.setdefault(path.name, []).append(path)
    return by_stem


def _read_image_shape(path: Path, axes: Optional[str]) -> tuple[Optional[tuple[int, int, int]], str]:
    """``(Z, Y, X)`` of an image, from its header (or, when ``axes`` is given, by reading it as the batch
    prediction does); ``(None, why)`` when its axes are ambiguous."""
    if axes is not None:
        volume = read_volume(path, voxel_size=(1.0, 1.0, 1.0), axes=axes)  # the voxel size is not used
        return tuple(int(d) for d in volume.spatial_shape), ""  # type: ignore[return-value]
    info = read_image_info(path)
    if info["czyx_shape"] is None:
        return None, f"cannot tell the axes of {path.name} (give the images' axis order)"
    return tuple(int(d) for d in info["czyx_shape"][1:]), ""  # type: ignore[return-value]


def _image_size(
    stem: str,
    gt_path: Path,
    pred_path: Optional[Path],
    images: Optional[dict[str, list[Path]]],
    images_dir: Optional[Path],
    axes: Optional[str],
) -> _ShapeResult:
    """The size of the image ``stem`` (its file's, else the sidecars'), why it is unknown, and warnings.

    Raises
    ------
    CellPolError
        Ground-truth and prediction sidecars disagree, or the image's size differs from the one the
        vectors were made on, or several images share the stem.
    """
    sidecar = _sidecar_shape(read_sidecar(gt_path), read_sidecar(pred_path) if pred_path is not None else {})
    notes: list[str] = []
    if images is None:
        why = "" if sidecar is not None else "no image_shape_zyx in the vectors' sidecars and no images folder given"
        return sidecar, why, notes
    candidates = images.get(stem, [])
    if len(candidates) > 1:
        raise CellPolError(
            f"Several images in {images_dir} are named {stem}: {', '.join(p.name for p in candidates)}; "
            f"name the vectors after the whole file name ({candidates[0].name}{VECTORS_SUFFIX}, as batch "
            "prediction does) or keep one image per name, so they are checked against the right image."
        )
    if not candidates:
        if sidecar is not None:
            notes.append(f"no image named {stem} in {images_dir}: used the image size the vectors record")
            return sidecar, "", notes
        return None, f"no image_shape_zyx in the vectors' sidecars and no image named {stem} in {images_dir}", notes
    image_path = candidates[0]
    shape, why = _read_image_shape(image_path, axes)
    if shape is None:
        if sidecar is not None:
            notes.append(f"{why}: used the image size the vectors record")
            return sidecar, "", notes
        return None, why, notes
    if sidecar is not None and (
        sidecar[1:] != shape[1:] or (sidecar[0] is not None and sidecar[0] != shape[0])
    ):
        raise CellPolError(
            f"The image {image_path} is {_fmt_shape(shape)} voxels (z × y × x) but the vectors were made on an "
            f"image of {_fmt_shape(sidecar)} (their sidecars' image_shape_zyx): is it the image they belong to?"
        )
    return shape, "", notes
