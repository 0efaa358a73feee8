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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.pairs import PairSet


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
        raise NotImplementedError


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
    raise NotImplementedError


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
    raise NotImplementedError


def read_groups(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Read a groups CSV: ``image,group[,animal]`` → ``{image: (group, unit)}``.

    A header row (first cell ``image``) is optional. ``unit`` is the animal where the row gives one, else
    the image name. Image names go through :func:`image_name`.

    Raises
    ------
    CellPolError
        Unreadable file, a row without image or group, one image given two groups.
    """
    raise NotImplementedError


def check_names(names: Sequence[str], images: Sequence[ImageVectors], what: str, path: str = "") -> None:
    """Raise a :class:`CellPolError` listing the ``names`` (from a groups or references file) that name no
    image among ``images``; ``what`` says which file it was ("groups file")."""
    raise NotImplementedError


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
    raise NotImplementedError


def read_references(path: str | os.PathLike) -> dict[str, Reference]:
    """Read a references CSV: ``image,kind,x,y,z`` → ``{image: Reference}``.

    ``kind`` is ``axis`` or ``point`` (see :class:`Reference` for the units of x, y, z). A header row
    (first cell ``image``) is optional.

    Raises
    ------
    CellPolError
        Unreadable file, an unknown kind, a non-number, a zero axis, one image given twice.
    """
    raise NotImplementedError
