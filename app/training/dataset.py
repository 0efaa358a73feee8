"""The user's training data: images with their annotated vectors, checked and split by image.

A training set is a folder (or list) of images plus a folder of ``<stem>.vectors.csv`` files, one per image,
where ``<stem>`` is the image's name without its image suffix (``cell_01.ome.tif`` → ``cell_01``). The
vectors may sit beside the images (as ``cellpol synth`` writes them) or in a folder of their own.

Everything a user can get wrong becomes one :class:`~app.core.errors.CellPolError` naming the file: an
image without vectors, a vectors file without an image, vectors outside the image (or off the plane of a
2D image), no pairs at all, a bad channel choice, a missing voxel size, 2D and 3D images mixed.

Validation is by whole images, never by patches of one image on both sides: explicit validation images, or
a seeded hold-out of whole images, or, with a single image, that image itself (then the caller is told so
in :attr:`Split.note`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from app.core.batch import ReadOptions, image_stem
from app.core.errors import CellPolError
from app.core.imageio import find_images
from app.core.jobs import CancelToken, check_cancel
from app.core.pairs import PREDICTION_SUFFIX, VECTORS_SUFFIX, PairSet, read_pairs, vectors_content, vectors_stem
from app.core.project import Project
from app.core.volume import Volume

PathLike = Union[str, os.PathLike]
#: Positions may reach this far (voxels) past the first/last voxel centre: the edge of the voxel itself.
OUTSIDE_TOLERANCE_VOXELS = 0.5
#: Sidecar voxel sizes that differ from the image's by more than this (relative) earn a warning.
VOXEL_SIZE_TOLERANCE = 0.02
#: At most this many file names are listed in one message.
_LIST_AT_MOST = 5


@dataclass(frozen=True)
class AnnotatedFile:
    """One image and its vectors file (and, from a project, the voxel size the user gave for it)."""

    image: Path
    vectors: Path
    voxel_size: Optional[tuple[float, float, float]] = None

    @property
    def name(self) -> str:
        return image_stem(self.image)


@dataclass
class AnnotatedImage:
    """A read and checked training image: the volume (channel roles set) and its pairs (same voxel size)."""

    name: str
    volume: Volume
    pairs: PairSet
    image_path: Optional[Path] = None
    vectors_path: Optional[Path] = None

    @property
    def is_2d(self) -> bool:
        return self.volume.is_2d


@dataclass
class Split:
    """Training and validation images, and how the split was made (shown to the user)."""

    train: list[AnnotatedImage]
    validation: list[AnnotatedImage]
    mode: str  # "explicit", "held-out" or "training-image"
    note: str = ""

    @property
    def validates_on_training_data(self) -> bool:
        return self.mode == "training-image"


def _listing(paths: Sequence[Path]) -> str:
    names = [str(p) for p in paths[:_LIST_AT_MOST]]
    more = len(paths) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _as_list(inputs: Union[PathLike, Sequence[PathLike]]) -> list[PathLike]:
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    return list(inputs)


def match_files(images: Union[PathLike, Sequence[PathLike]], vectors: Optional[PathLike] = None,
                what: str = "training") -> list[AnnotatedFile]:
    """Pair every image with its ``<stem>.vectors.csv``.

    Parameters
    ----------
    images : path or sequence of paths
        Image files and/or folders of images (not recursive; see :func:`app.core.imageio.find_images`).
    vectors : path, optional
        The folder of vectors files. Default: each image's own folder.
    what : str
        ``training`` or ``validation``, for messages.

    Raises
    ------
    CellPolError
        No images; an image without a vectors file; a vectors file without an image (when the images are
        given as folders); two images with the same stem.
    """
    inputs = _as_list(images)
    found = find_images(inputs)
    if not found:
        where = ", ".join(str(i) for i in inputs)
        raise CellPolError(f"No {what} images found in {where} (looked for .tif, .tiff, .ome.tif, .npy, .czi).")
    vectors_dir = Path(vectors) if vectors is not None else None
    if vectors_dir is not None and not vectors_dir.is_dir():
        raise CellPolError(f"{vectors_dir}: the {what} vectors folder does not exist.")

    by_stem: dict[str, Path] = {}
    for image in found:
        stem = image_stem(image)
        if stem in by_stem:
            raise CellPolError(f"{by_stem[stem]} and {image} have the same name '{stem}', so their vectors files "
                               f"would be the same {stem}{VECTORS_SUFFIX}; rename one.")
        by_stem[stem] = image

    files, missing = [], []
    for stem, image in by_stem.items():
        folder = vectors_dir if vectors_dir is not None else image.parent
        candidate = folder / f"{stem}{VECTORS_SUFFIX}"
        if candidate.is_file():
            files.append(AnnotatedFile(image, candidate))
        else:
            missing.append(image)
    if missing:
        where = str(vectors_dir) if vectors_dir is not None else "beside it"
        raise CellPolError(
            f"{len(missing)} {what} image(s) have no vectors file <name>{VECTORS_SUFFIX} ({where}): "
            f"{_listing(missing)}. Annotate them, or move them out of the {what} images."
        )

    # Vectors without an image: in the vectors folder, or in the image folders given. Images picked file by
    # file are a deliberate subset, so other vectors beside them are expected then.
    image_folders = sorted({Path(i) for i in inputs if Path(i).is_dir()})
    if len(image_folders) < len(inputs):
        folders = []
    else:
        folders = [vectors_dir] if vectors_dir is not None else image_folders
    orphans = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            stem, kind = vectors_stem(path.name)
            if path.is_file() and kind == "annotation" and stem not in by_stem:  # predictions, autosaves aside
                orphans.append(path)
    if orphans:
        raise CellPolError(
            f"{len(orphans)} vectors file(s) have no {what} image of the same name: {_listing(orphans)}. "
            "Add the image, or move the vectors file out of the folder."
        )
    return files


def match_project(project: PathLike) -> tuple[list[AnnotatedFile], int]:
    """The annotated images of a CellPol project folder and how many of its images have no annotations yet.

    A project (:class:`app.core.project.Project`) keeps images in ``images/`` and their vectors in
    ``annotations/<stem>.vectors.csv``; images not yet annotated are left out (not an error: a project
    holds work in progress). Voxel sizes the user typed for images without metadata come along.

    Raises
    ------
    CellPolError
        Not a project, or no annotated image in it.
    """
    opened = Project.open(project)
    files, unannotated = [], 0
    for image in opened.images():
        vectors = opened.vectors_path(image)
        if vectors.is_file():
            files.append(AnnotatedFile(image, vectors, opened.voxel_size_for(image)))
        else:
            unannotated += 1
    if not files:
        raise CellPolError(f"The project {opened.root} has no annotated images yet (annotations/<name>{VECTORS_SUFFIX}); "
                           "annotate at least one image.")
    return files, unannotated


def check_annotations(pairs: PairSet, vectors_path: Path | str) -> None:
    """Raise :class:`CellPolError` if the file at ``vectors_path`` holds predictions, not annotations.

    Predictions written by older versions share the annotations' name ``<stem>.vectors.csv``; their sidecar
    says what they are. Training on them would teach a model its own mistakes.
    """
    content = vectors_content(pairs.meta, pairs.sources)
    if content in ("prediction", "autosave"):
        what = "predictions of a model" if content == "prediction" else "an autosave of unsaved work"
        raise CellPolError(
            f"{vectors_path} holds {what}, not annotations, so it cannot be trained on. Review and correct it in "
            "the app and save it as annotations, or move it out of the folder (predictions are named "
            f"<name>{PREDICTION_SUFFIX})."
        )


def check_inside(volume: Volume, pairs: PairSet, vectors_path: Path | str, image_path: Path | str) -> None:
    """Raise :class:`CellPolError` if any nucleus or Golgi lies outside the image (or off a 2D image's plane)."""
    shape = np.asarray(volume.spatial_shape, dtype=np.float64)
    lo, hi = -OUTSIDE_TOLERANCE_VOXELS, shape - 1 + OUTSIDE_TOLERANCE_VOXELS
    for what, points in (("nucleus", pairs.nuclei), ("Golgi", pairs.golgi)):
        if len(points) == 0:
            continue
        bad = np.flatnonzero(np.any((points < lo) | (points > hi), axis=1))
        if len(bad):
            row = int(bad[0])
            z, y, x = points[row]
            Z, Y, X = volume.spatial_shape
            raise CellPolError(
                f"{vectors_path}: {len(bad)} pair(s) lie outside the image {image_path} "
                f"(x 0–{X - 1}, y 0–{Y - 1}, z 0–{Z - 1} voxels); e.g. pair {int(pairs.ids[row])} has its {what} at "
                f"x={x:g}, y={y:g}, z={z:g}. Were these vectors made for another image, or with other units "
                "(coordinates are 0-based voxels)?"
            )


def load_annotated(file: AnnotatedFile, voxel_size: Optional[Sequence[float]] = None, axes: Optional[str] = None,
                   nucleus_channel: Optional[int] = None, golgi_channel: Optional[int] = None,
                   warnings: Optional[list[str]] = None) -> AnnotatedImage:
    """Read one image and its vectors, check them and give the pairs the image's voxel size.

    Raises
    ------
    CellPolError
        Unreadable files, missing voxel size, bad channel roles, vectors outside the image.
    """
    options = ReadOptions(voxel_size if voxel_size is not None else file.voxel_size, axes, nucleus_channel,
                          golgi_channel)
    try:
        volume = options.read(file.image)
    except CellPolError as exc:
        if str(file.image) in str(exc) or file.image.name in str(exc):
            raise
        raise CellPolError(f"{file.image}: {exc}") from None
    pairs = read_pairs(file.vectors)
    check_annotations(pairs, file.vectors)
    pairs = _without_unreviewed(pairs, file.vectors, warnings)
    if pairs.voxel_size is not None and warnings is not None:
        given, image = np.asarray(pairs.voxel_size), np.asarray(volume.voxel_size)
        axes_checked = slice(1, 3) if volume.is_2d else slice(0, 3)
        if np.any(np.abs(given[axes_checked] / image[axes_checked] - 1) > VOXEL_SIZE_TOLERANCE):
            warnings.append(
                f"{file.vectors}: its sidecar gives the voxel size {tuple(float(v) for v in pairs.voxel_size)} µm, "
                f"the image {file.image.name} {tuple(volume.voxel_size)} µm; the positions are voxels of the image, "
                "so the image's voxel size is used."
            )
    check_inside(volume, pairs, file.vectors, file.image)
    pairs = pairs.with_voxel_size(volume.voxel_size)
    pairs.meta = {**pairs.meta, "image": file.image.name}
    return AnnotatedImage(file.name, volume, pairs, file.image, file.vectors)


def load_images(files: Sequence[AnnotatedFile], progress: Optional[Callable[[int, int, str], None]] = None,
                cancel: Optional[CancelToken] = None, warnings: Optional[list[str]] = None,
                **read_options) -> list[AnnotatedImage]:
    """:func:`load_annotated` for each file, with progress and cancel."""
    out = []
    for k, file in enumerate(files):
        check_cancel(cancel)
        out.append(load_annotated(file, warnings=warnings, **read_options))
        if progress is not None:
            progress(k + 1, len(files), file.image.name)
    return out


def _without_unreviewed(pairs: PairSet, vectors_path: Path, warnings: Optional[list[str]]) -> PairSet:
    """The pairs minus predictions not reviewed yet (source ``predicted``): only what a human placed, accepted
    or corrected teaches the model (:mod:`app.core.review`)."""
    unreviewed = np.array([str(s) == "predicted" for s in pairs.sources], dtype=bool)
    if not unreviewed.any():
        return pairs
    if warnings is not None:
        warnings.append(
            f"{vectors_path}: {int(unreviewed.sum())} prediction(s) not reviewed yet are left out of training; "
            "their cells count as unannotated. Review them (accept, reject or correct) so they count."
        )
    return pairs.subset(~unreviewed)


def check_training_set(train: Sequence[AnnotatedImage], validation: Sequence[AnnotatedImage] = ()) -> None:
    """Refuse a set without any pair, and 2D mixed with 3D."""
    if not train:
        raise CellPolError("There are no training images.")
    if sum(len(item.pairs) for item in train) == 0:
        names = _listing([item.vectors_path or Path(item.name) for item in train])
        raise CellPolError(
            f"The training vectors hold no nucleus→Golgi pairs at all ({names}). Annotate at least one pair "
            "(a dozen is a good start)."
        )
    kinds = {item.is_2d for item in list(train) + list(validation)}
    if len(kinds) > 1:
        flat = [item.image_path or Path(item.name) for item in list(train) + list(validation) if item.is_2d]
        deep = [item.image_path or Path(item.name) for item in list(train) + list(validation) if not item.is_2d]
        raise CellPolError(
            f"2D images ({_listing(flat)}) and 3D stacks ({_listing(deep)}) cannot train one model; "
            "train a 2D and a 3D model separately."
        )


def split_by_image(images: Sequence[AnnotatedImage], seed: int = 0, fraction: float = 0.2) -> Split:
    """Hold out whole images for validation.

    With two or more images, ``max(1, round(fraction · n))`` images that carry pairs are held out (seeded,
    so the same every run), keeping at least one image with pairs for training. With a single image (or
    a single image with pairs) it validates on the training image and says so in ``note``.
    """
    images = list(images)
    annotated = [k for k, item in enumerate(images) if len(item.pairs) > 0]
    if len(images) < 2 or len(annotated) < 2:
        which = images[annotated[0]] if annotated else images[0]
        note = (f"Only one {'image' if len(images) < 2 else 'image with pairs'} ({which.name}): validating on the "
                "training image itself, so the validation figures are optimistic. Add a second annotated image "
                "(or validation images) for an honest estimate.")
        return Split(images, [which], "training-image", note)
    if not 0.0 < fraction < 1.0:
        raise CellPolError(f"The validation fraction must be between 0 and 1, got {fraction}.")
    n_val = min(max(1, int(round(fraction * len(images)))), len(annotated) - 1)
    rng = np.random.default_rng([int(seed), 4242])
    held = set(int(k) for k in rng.choice(annotated, size=n_val, replace=False))
    train = [item for k, item in enumerate(images) if k not in held]
    validation = [item for k, item in enumerate(images) if k in held]
    note = (f"Validating on {len(validation)} held-out image(s) ({', '.join(v.name for v in validation)}); "
            f"training on the other {len(train)}.")
    return Split(train, validation, "held-out", note)


@dataclass
class TrainingData:
    """Everything :func:`load_training_data` found."""

    split: Split
    warnings: list[str] = field(default_factory=list)

    @property
    def is_2d(self) -> bool:
        return self.split.train[0].is_2d

    @property
    def n_train_pairs(self) -> int:
        return sum(len(item.pairs) for item in self.split.train)


def match_training_files(images: Union[PathLike, Sequence[PathLike], None], vectors: Optional[PathLike] = None,
                         val_images: Union[PathLike, Sequence[PathLike], None] = None,
                         val_vectors: Optional[PathLike] = None, project: Optional[PathLike] = None,
                         notes: Optional[list[str]] = None) -> tuple[list[AnnotatedFile], list[AnnotatedFile]]:
    """:func:`match_files` (or :func:`match_project`) for the training and the optional validation images;
    they must not overlap."""
    if val_images is None and val_vectors is not None:
        raise CellPolError("A folder of validation vectors needs validation images too.",
                           settings={"val_images": None})
    if project is not None:
        if images is not None or vectors is not None:
            raise CellPolError("Give either a project or training images and vectors, not both.")
        train_files, unannotated = match_project(project)
        if unannotated and notes is not None:
            notes.append(f"{unannotated} image(s) of the project have no annotations yet and are left out.")
    elif images is None:
        raise CellPolError("No training images given: give the images, or a project.",
                           settings={"images": None, "project": None})
    else:
        train_files = match_files(images, vectors, "training")
    val_files = match_files(val_images, val_vectors, "validation") if val_images is not None else []
    overlap = sorted({f.image.resolve() for f in train_files} & {f.image.resolve() for f in val_files})
    if overlap:
        raise CellPolError(f"These images are both training and validation images: {_listing(overlap)}. "
                           "Validation images must be other images.")
    return train_files, val_files


def make_split(train: list[AnnotatedImage], validation: list[AnnotatedImage], seed: int = 0,
               val_fraction: float = 0.2, warnings: Optional[list[str]] = None) -> Split:
    """Check the images (:func:`check_training_set`) and split them: explicit validation images when
    given, else :func:`split_by_image`. Images without pairs are noted in ``warnings``."""
    check_training_set(train, validation)
    if warnings is not None:
        for item in list(train) + list(validation):
            if len(item.pairs) == 0:
                warnings.append(f"{item.vectors_path or item.name}: no pairs; the image is used as background only.")
    if validation:
        if sum(len(v.pairs) for v in validation) == 0:
            raise CellPolError(
                f"The validation vectors hold no pairs ({_listing([v.vectors_path or Path(v.name) for v in validation])}); "
                "validation needs annotated cells."
            )
        return Split(list(train), list(validation), "explicit",
                     f"Validating on {len(validation)} given image(s); training on {len(train)}.")
    return split_by_image(train, seed, val_fraction)


def load_training_data(images: Union[PathLike, Sequence[PathLike]], vectors: Optional[PathLike] = None,
                       val_images: Union[PathLike, Sequence[PathLike], None] = None,
                       val_vectors: Optional[PathLike] = None, seed: int = 0, val_fraction: float = 0.2,
                       progress: Optional[Callable[[int, int, str], None]] = None,
                       cancel: Optional[CancelToken] = None, **read_options) -> TrainingData:
    """Find, read, check and split the training (and validation) images.

    ``read_options``: ``voxel_size``, ``axes``, ``nucleus_channel``, ``golgi_channel`` (as
    :func:`app.core.imageio.read_volume` takes them), applied to every image.
    """
    train_files, val_files = match_training_files(images, vectors, val_images, val_vectors)
    files = list(train_files) + list(val_files)
    warnings: list[str] = []
    loaded = load_images(files, progress, cancel, warnings, **read_options)
    split = make_split(loaded[:len(train_files)], loaded[len(train_files):], seed, val_fraction, warnings)
    return TrainingData(split, warnings)
