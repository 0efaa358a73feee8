"""What the statistics read: vectors files, groups and reference directions.

:func:`load_vectors` reads vectors CSVs (or the folders holding them) into :class:`ImageVectors`, one per
image; :func:`read_groups` / :func:`assign_groups` say which group (condition) and which experimental unit
(the animal, else the image) each image belongs to; :func:`read_references` reads one :class:`Reference`
(a fixed axis or a point) per image.

Image names are the vectors files' stems: ``cells01`` for ``cells01.vectors.csv`` (an annotation) and
``cells01.pred.vectors.csv`` (a prediction). Names in a groups or references file may also be given as
the image file (``cells01.tif``) or the vectors file; :func:`image_name` reduces each to the stem.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError, FileFormatError
from app.core.imageio.reading import IMAGE_SUFFIXES
from app.core.pairs import HUMAN_SOURCES, PairSet, read_pairs, vectors_content, vectors_stem

#: Image (x, y_down, z) → the statistics' frame (x, y_up, z): see ``tables.DIRECTION_FRAME``.
_TO_FRAME = np.array([1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Reference:
    """A reference direction for one image.

    Parameters
    ----------
    kind : str
        ``"axis"``: one fixed direction for every cell (e.g. the flow direction); ``"point"``: a position
        (e.g. the optic nerve head in a retina) and each cell's reference is the direction from the point
        to its nucleus (radial polarity: a vector pointing away from the point has angle 0).
    xyz : tuple of float
        ``"axis"``: a direction ``(x, y, z)`` in µm space, any length, with y along the image rows
        (downwards as displayed) and z towards deeper slices. ``"point"``: a position ``(x, y, z)`` in
        voxels of the image (x = column, y = row, z = slice, 0-based, as in the vectors CSV).
    """

    kind: str
    xyz: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.kind not in ("axis", "point"):
            raise CellPolError(f"A reference is an axis or a point, not {self.kind!r}.")
        xyz = tuple(float(v) for v in self.xyz)
        if len(xyz) != 3 or not all(np.isfinite(xyz)):
            raise CellPolError(f"A reference needs three finite numbers x, y, z; got {self.xyz!r}.")
        if self.kind == "axis" and not any(xyz):
            raise CellPolError("A reference axis cannot be (0, 0, 0); give a direction.")
        object.__setattr__(self, "xyz", xyz)

    def axis_for(self, nuclei_um_xyz: np.ndarray, voxel_size: Optional[Sequence[float]] = None) -> np.ndarray:
        """The unit reference direction for each vector, in :data:`~app.core.stats.tables.DIRECTION_FRAME`.

        Parameters
        ----------
        nuclei_um_xyz : ndarray, shape (N, 3)
            Nucleus positions in µm as ``(x, y, z)`` with y along the rows (downwards), i.e.
            ``pairs.nuclei_um[:, ::-1]``.
        voxel_size : sequence of float, optional
            ``(z, y, x)`` µm; needed by a ``"point"`` reference (its position is in voxels).

        Returns
        -------
        ndarray, shape (N, 3)
            Unit vectors ``(x, y_up, z)``; NaN rows where the direction is undefined (a nucleus exactly at
            the reference point).
        """
        nuclei = np.asarray(nuclei_um_xyz, dtype=np.float64).reshape(-1, 3)
        if self.kind == "axis":
            axis = np.asarray(self.xyz, dtype=np.float64) * _TO_FRAME
            return np.broadcast_to(axis / np.linalg.norm(axis), nuclei.shape).copy()
        if voxel_size is None:
            raise CellPolError("A reference point is in voxels: give the image's voxel size.",
                               settings={"voxel_size": None})
        scale = np.asarray(voxel_size, dtype=np.float64)[::-1]  # (x, y, z) µm per voxel
        radial = (nuclei - np.asarray(self.xyz, dtype=np.float64) * scale) * _TO_FRAME
        with np.errstate(invalid="ignore", divide="ignore"):
            return radial / np.linalg.norm(radial, axis=1, keepdims=True)


@dataclass
class ImageVectors:
    """The vectors of one image, as read for the statistics.

    Attributes
    ----------
    image : str
        The image's name (the vectors file's stem).
    pairs : PairSet
        The pairs, with their voxel size set (after ``min_score`` filtering).
    source : Path
        The CSV read.
    group : str
        The group (condition); ``""`` until :func:`assign_groups`.
    unit : str
        The experimental unit for between-group tests and bootstrap: the animal where the groups file gives
        one, else the image's name.
    kind : str
        ``"prediction"`` or ``"annotation"`` (what the file holds, from its name and sidecar).
    """

    image: str
    pairs: PairSet
    source: Path
    group: str = ""
    unit: str = ""
    kind: str = ""


def image_name(name: str) -> str:
    """The image name a user's string refers to: a vectors file's stem, or an image file without its suffix.

    ``cells01.pred.vectors.csv``, ``cells01.vectors.csv``, ``cells01.tif`` and ``cells01`` all give
    ``cells01``. Folders are dropped.
    """
    base = Path(str(name).strip()).name
    stem, kind = vectors_stem(base)
    if stem is not None:
        return stem
    lower = base.lower()
    for suffix in sorted(IMAGE_SUFFIXES + (".csv",), key=len, reverse=True):
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def load_vectors(
    inputs: Sequence[str | os.PathLike],
    voxel_size: Optional[Sequence[float]] = None,
    min_score: Optional[float] = None,
) -> list[ImageVectors]:
    """Read vectors CSVs, or the folders that hold them, one :class:`ImageVectors` per image.

    A folder contributes its predictions (``<stem>.pred.vectors.csv``) and annotations
    (``<stem>.vectors.csv``), not recursively; autosaves are never read. A project folder (with
    ``annotations/`` and ``results/``) contributes both of those folders. A file given by name is read
    whatever it is called (its image name is :func:`image_name` of the file name), except an autosave.

    Parameters
    ----------
    inputs : sequence of path
        Files and folders.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm for files whose sidecar records none (a sidecar's value wins).
    min_score : float, optional
        Predicted pairs scoring below it are left out. Pairs without a score (manual annotations) and pairs
        a person checked (sources ``manual`` and ``corrected``) are kept.

    Returns
    -------
    list of ImageVectors
        In the order found (inputs in order, a folder's files by name); ``group`` and ``unit`` unset.

    Raises
    ------
    CellPolError
        No vectors files in the inputs, or no vectors in them at all; a file is unreadable or has a
        non-finite value (the file and line are named); files without a voxel size when none is given (all
        are named; ``settings={"voxel_size": None}``); two files for one image (e.g. its prediction and its
        annotation: both are named, pass the one to use).
    """
    files = _vectors_files(inputs)
    by_image: dict[str, list[tuple[Path, str]]] = {}
    for path, kind in files:
        by_image.setdefault(image_name(path.name), []).append((path, kind))
    clashes = {name: found for name, found in by_image.items() if len(found) > 1}
    if clashes:
        listed = "; ".join(f"{name}: " + ", ".join(str(p) for p, _ in found) for name, found in clashes.items())
        raise CellPolError(
            f"More than one vectors file for the same image ({listed}). Statistics count each image once: "
            "give the prediction or the annotation of each image, not both (name the files, or put the ones "
            "to use in one folder).")
    images: list[ImageVectors] = []
    missing: list[str] = []
    dropped = 0
    for name, [(path, kind)] in by_image.items():
        pairs = read_pairs(path)
        if pairs.voxel_size is None:
            if voxel_size is None:
                missing.append(str(path))
                continue
            pairs = pairs.with_voxel_size(voxel_size)
        if min_score is not None:
            checked = np.isin(pairs.sources.astype(str), HUMAN_SOURCES)
            low = np.isfinite(pairs.scores) & (pairs.scores < float(min_score)) & ~checked
            dropped += int(low.sum())
            pairs = pairs.subset(~low)
        content = vectors_content(pairs.meta, pairs.sources)
        images.append(ImageVectors(name, pairs, path, kind="prediction" if content == "prediction" else kind))
    if missing:
        raise CellPolError(
            "No voxel size for " + ", ".join(missing) + " (their sidecars record none). Give the voxel size "
            "(z, y, x in µm) of these images.", settings={"voxel_size": None})
    if not sum(len(image.pairs) for image in images):
        where = ", ".join(str(p) for p in inputs)
        extra = f" ({dropped} scored below the minimum score {min_score})" if dropped else ""
        raise CellPolError(f"No vectors to analyse in {where}: the files hold no pairs{extra}.",
                           settings={"min_score": None} if dropped else None)
    return images


def project_groups(inputs: Sequence[str | os.PathLike]) -> Optional[dict[str, tuple[str, str]]]:
    """The groups the app's projects among ``inputs`` give their images (Statistics panel, project file
    ``groups``), as :func:`read_groups` gives them; ``None`` when no input is a project with groups."""
    from app.core.project import PROJECT_FILE, Project

    groups: dict[str, tuple[str, str]] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir() and (path / PROJECT_FILE).is_file():
            project = Project.open(path)
            for image in project.images():
                group = project.group_of(image)
                if group:
                    name = image_name(image.name)
                    groups[name] = (group, name)
    return groups or None


def read_groups(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Read a groups CSV: ``image,group[,animal]`` → ``{image: (group, unit)}``.

    A header row (first cell ``image``) is optional. ``unit`` is the animal where the row gives one, else
    the image name. Image names go through :func:`image_name`.

    Raises
    ------
    CellPolError
        Unreadable file, a row without image or group, one image given two groups.
    """
    groups: dict[str, tuple[str, str]] = {}
    for line, cells in _csv_rows(path, ("image", "group"), "image,group[,animal]"):
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise CellPolError(f"{path}, line {line}: expected image,group[,animal], got {','.join(cells)!r}.")
        name = image_name(cells[0])
        unit = cells[2] if len(cells) > 2 and cells[2] else name
        if name in groups and groups[name] != (cells[1], unit):
            raise CellPolError(f"{path}, line {line}: image {name} is given twice, in different groups or "
                               "animals; give each image once.")
        groups[name] = (cells[1], unit)
    if not groups:
        raise CellPolError(f"{path}: the groups file names no images (expected rows image,group[,animal]).")
    return groups


def check_names(names: Sequence[str], images: Sequence[ImageVectors], what: str, path: str = "") -> None:
    """Raise a :class:`CellPolError` listing the ``names`` (from a groups or references file) that name no
    image among ``images``; ``what`` says which file it was ("groups file")."""
    known = {image.image for image in images}
    unknown = [name for name in names if name not in known]
    if unknown:
        where = f" ({path})" if path else ""
        raise CellPolError(
            f"The {what}{where} names {len(unknown)} image(s) not among the vectors read: "
            + ", ".join(sorted(unknown)) + ". The images read are: " + ", ".join(sorted(known))
            + ". Correct the names, or add those images' vectors files.")


def assign_groups(
    images: list[ImageVectors], groups: Optional[Mapping[str, tuple[str, str]]]
) -> list[ImageVectors]:
    """New :class:`ImageVectors` with ``group`` and ``unit`` set from ``groups`` (:func:`read_groups`).

    ``groups=None``: every image in group ``"all"``, each image its own unit.

    Raises
    ------
    CellPolError
        The groups name images that are not among ``images`` (all listed), or images have no group (all
        listed).
    """
    if groups is None:
        return [dataclasses.replace(image, group="all", unit=image.image) for image in images]
    check_names(list(groups), images, "groups file")
    without = [image.image for image in images if image.image not in groups]
    if without:
        raise CellPolError(
            f"{len(without)} image(s) have no group: " + ", ".join(without)
            + ". Add them to the groups file (image,group[,animal]) or leave their vectors out.")
    return [dataclasses.replace(image, group=groups[image.image][0], unit=groups[image.image][1] or image.image)
            for image in images]


def read_references(path: str | os.PathLike) -> dict[str, Reference]:
    """Read a references CSV: ``image,kind,x,y,z`` → ``{image: Reference}``.

    ``kind`` is ``axis`` or ``point`` (see :class:`Reference` for the units of x, y, z). A header row
    (first cell ``image``) is optional.

    Raises
    ------
    CellPolError
        Unreadable file, an unknown kind, a non-number, a zero axis, one image given twice.
    """
    references: dict[str, Reference] = {}
    for line, cells in _csv_rows(path, ("image", "kind"), "image,kind,x,y,z"):
        if len(cells) < 5 or not cells[0]:
            raise CellPolError(f"{path}, line {line}: expected image,kind,x,y,z, got {','.join(cells)!r}.")
        kind = cells[1].lower()
        if kind not in ("axis", "point"):
            raise CellPolError(f"{path}, line {line}: the kind must be axis or point, got {cells[1]!r}.")
        try:
            xyz = tuple(float(c) for c in cells[2:5])
        except ValueError:
            raise CellPolError(f"{path}, line {line}: x, y and z must be numbers, got {cells[2:5]}.") from None
        if not all(np.isfinite(xyz)):
            raise CellPolError(f"{path}, line {line}: x, y and z must be finite numbers.")
        if kind == "axis" and not any(xyz):
            raise CellPolError(f"{path}, line {line}: a reference axis cannot be (0, 0, 0); give a direction.")
        name = image_name(cells[0])
        if name in references:
            raise CellPolError(f"{path}, line {line}: image {name} is given twice; give one reference per image.")
        references[name] = Reference(kind, xyz)  # type: ignore[arg-type]
    return references


def _vectors_files(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every vectors file the inputs name (see :func:`load_vectors`), each once."""
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(path: Path, kind: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, kind))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folders = [path]
            project = (path / "annotations").is_dir() or (path / "results").is_dir()
            if project:  # a project: an image's annotations (reviewed, corrected) win over its predictions
                folders = [path, path / "annotations", path / "results"]
            annotated: set[str] = set()
            for folder in folders:
                if not folder.is_dir():
                    continue
                for child in sorted(folder.iterdir(), key=lambda p: p.name):
                    stem, kind = vectors_stem(child.name)
                    if stem is None or kind not in ("prediction", "annotation") or not child.is_file():
                        continue
                    if project and folder.name == "results" and image_name(child.name) in annotated:
                        continue
                    if project and folder.name == "annotations":
                        annotated.add(image_name(child.name))
                    add(child, kind)
        elif path.is_file():
            stem, kind = vectors_stem(path.name)
            if kind == "autosave":
                raise CellPolError(f"{path} is an autosave, not saved vectors: save the annotation and give "
                                   "the saved file.")
            add(path, kind or "annotation")
        else:
            raise FileFormatError(f"{path}: no such file or folder.")
    if not found:
        where = ", ".join(str(p) for p in inputs) or "(no inputs)"
        raise CellPolError(
            f"No vectors files in {where}: expected <image>.vectors.csv (annotations) or "
            "<image>.pred.vectors.csv (predictions), or folders holding them.")
    return found


def _csv_rows(path: str | os.PathLike, header: Sequence[str], layout: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, stripped cells)`` of a small CSV's non-empty rows, a header row (first cells
    ``header``) skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: cannot read it as a text CSV with rows {layout} ({exc}).") from None
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if line == 1 and [c.lower() for c in cells[: len(header)]] == list(header):
            continue
        yield line, cells
