"""A CellPol project folder: images, their annotations, models, results and a project file.

Layout::

    <root>/cellpol-project.json     name, creation date, voxel sizes typed by the user, image groups, settings
    <root>/images/                  the images (any format app.core.imageio reads)
    <root>/annotations/<stem>.vectors.csv   manual annotations (+ .vectors.json sidecar, + autosave)
    <root>/models/                  trained models
    <root>/results/<stem>.pred.vectors.csv  predictions (what ``cellpol predict images/ --out results/`` writes)
    <root>/synthetic/<run>/         simulated or Vox2Vox volumes with their vectors (the Synthesis panel)

The project file is JSON, ``"format": "cellpol-project"``, ``"version": 1``; keys this version does not know are
kept when the file is rewritten (atomically), so an older app does not drop a newer one's entries.
Plain Python (no Qt): the desktop app's project panel and the training CLI use the same class.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from app import __version__
from app.core.annotation import find_recovery, vectors_path_for
from app.core.batch import image_stem
from app.core.errors import CellPolError, FileFormatError
from app.core.fileutil import atomic_write_json
from app.core.imageio import find_images, read_image_info
from app.core.pairs import prediction_name, read_pairs
from app.core.review import ReviewCounts, counts_of
from app.core.volume import parse_voxel_size

PROJECT_FILE = "cellpol-project.json"
PROJECT_FOLDERS = ("images", "annotations", "models", "results", "synthetic")
PROJECT_FORMAT = "cellpol-project"
PROJECT_VERSION = 1
#: Keys of the project file this version reads and writes; any other key is carried over untouched.
_KNOWN_KEYS = ("format", "version", "name", "created", "app_version", "folders", "voxel_sizes", "settings", "groups")

#: Annotation states of an image (:attr:`ImageStatus.state`).
NOT_STARTED = "not started"
SAVED = "saved"
UNSAVED = "unsaved"          # an autosave newer than the saved file: recovered when the image is opened
UNREADABLE = "unreadable"    # the annotations file exists but cannot be read
#: Sources that count as the user's own pairs.
MANUAL_SOURCES = ("manual", "corrected")


@dataclass
class ImageStatus:
    """What the project panel shows about one image (all read without loading pixels).

    Attributes
    ----------
    path : Path
    shape : (Z, Y, X) or None
        From the file header; ``None`` when it cannot be told cheaply (ambiguous axes, unreadable).
    voxel_size : (z, y, x) µm or None
        From the file's metadata, else the one remembered in the project.
    n_pairs, n_manual : int
        Pairs in the annotations (the autosave when it is newer), and how many are the user's own
        (``manual`` or ``corrected``).
    has_predictions : bool
        The image's predictions exist (:meth:`Project.predictions_path`).
    review : ReviewCounts
        How many predictions are put up for review and how many are reviewed (:mod:`app.core.review`); before
        the review starts, the total is the number of predictions in ``results/``.
    state : str
        :data:`NOT_STARTED`, :data:`SAVED`, :data:`UNSAVED` or :data:`UNREADABLE`.
    problem : str
        Why the header or the annotations could not be read ("" when fine).
    """

    path: Path
    shape: Optional[tuple[int, int, int]] = None
    voxel_size: Optional[tuple[float, float, float]] = None
    n_pairs: int = 0
    n_manual: int = 0
    has_predictions: bool = False
    review: ReviewCounts = field(default_factory=ReviewCounts)
    state: str = NOT_STARTED
    problem: str = ""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Project:
    """A project folder: images, their annotations, models and results, and a project file.

    The project file records the voxel sizes the user typed for images without metadata (so they are
    asked once), and free-form settings (e.g. the image last worked on).
    """

    root: Path
    name: str = ""
    voxel_sizes: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer format version, kept as they are
    groups: dict[str, str] = field(default_factory=dict)  # image key -> group (condition) for the statistics

    @property
    def file(self) -> Path:
        return self.root / PROJECT_FILE

    def folder(self, kind: str) -> Path:
        if kind not in PROJECT_FOLDERS:
            raise CellPolError(f"Unknown project folder {kind!r}; one of {', '.join(PROJECT_FOLDERS)}.")
        return self.root / kind

    @classmethod
    def create(cls, root: str | os.PathLike, name: Optional[str] = None) -> "Project":
        """Make the folders and the project file (an existing project is opened instead)."""
        root = Path(root)
        if (root / PROJECT_FILE).exists():
            return cls.open(root)
        for kind in PROJECT_FOLDERS:
            (root / kind).mkdir(parents=True, exist_ok=True)
        project = cls(root, name or root.name,
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        project.save()
        return project

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Project":
        """Open a project from its folder or its project file.

        Raises
        ------
        FileFormatError
            No project file, not valid JSON, not a CellPol project file, or a field of the wrong type
            (the message names the file and the field). Unknown fields are kept, whatever they hold.
        """
        path = Path(path)
        root = path.parent if path.name == PROJECT_FILE else path
        file = root / PROJECT_FILE
        if not file.exists():
            raise FileFormatError(f"{root}: not a CellPol project (no {PROJECT_FILE}).")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FileFormatError(f"{file}: the project file is not valid JSON ({exc}).") from None
        if not isinstance(data, dict) or data.get("format") != PROJECT_FORMAT:
            raise FileFormatError(f"{file}: not a CellPol project file.")
        name, created, voxel_sizes, settings = _checked_fields(file, data, root.name)
        for kind in PROJECT_FOLDERS:
            (root / kind).mkdir(exist_ok=True)
        extra = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
        groups = data.get("groups") or {}
        if not isinstance(groups, dict) or not all(isinstance(v, str) for v in groups.values()):
            raise FileFormatError(f"{file}: the field 'groups' must be an object mapping image paths to group names "
                                  'as strings, e.g. {"images/a.tif": "control"}. Correct or remove that field.')
        return cls(root, name, voxel_sizes, settings, created, extra, dict(groups))

    def save(self) -> None:
        """Rewrite the project file atomically."""
        data: dict[str, Any] = {
            "format": PROJECT_FORMAT, "version": PROJECT_VERSION, "name": self.name, "created": self.created,
            "app_version": __version__, "folders": list(PROJECT_FOLDERS),
            "voxel_sizes": self.voxel_sizes, "settings": self.settings, "groups": self.groups,
        }
        for key, value in self.extra.items():
            data.setdefault(key, value)
        atomic_write_json(self.file, data)

    # --- images and where their files live ----------------------------------------------------
    def images(self) -> list[Path]:
        """The images in ``images/``, in natural order."""
        folder = self.folder("images")
        return find_images([folder]) if folder.is_dir() and any(folder.iterdir()) else []

    def contains(self, path: str | os.PathLike) -> bool:
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def vectors_path(self, image_path: str | os.PathLike, series: int = 0) -> Path:
        """Annotations of an image live in ``annotations/<stem>.vectors.csv`` (series N > 0 of a multi-series
        file: ``annotations/<stem>_s<N>.vectors.csv``)."""
        return vectors_path_for(image_path, self.folder("annotations"), series)

    def predictions_path(self, image_path: str | os.PathLike) -> Path:
        """Predictions of an image live in ``results/<stem>.pred.vectors.csv``.

        A project made by an earlier version keeps them in ``results/<stem>.vectors.csv``; that file is
        returned while no new one exists (read as predictions, never renamed).
        """
        results = self.folder("results")
        path = results / prediction_name(image_stem(image_path))
        older = vectors_path_for(image_path, results)
        return older if not path.exists() and older.is_file() else path

    def neighbour(self, image_path: Optional[str | os.PathLike], step: int) -> Optional[Path]:
        """The image ``step`` places after ``image_path`` in :meth:`images` (before, if negative).

        ``None`` past either end. An image not in the list (or ``None``) starts from the first image
        going forwards and from the last going backwards.
        """
        images = self.images()
        if not images or step == 0:
            return None
        keys = [p.resolve() for p in images]
        current = Path(image_path).resolve() if image_path is not None else None
        if current in keys:
            index = keys.index(current) + step
        else:
            index = 0 if step > 0 else len(images) - 1
        return images[index] if 0 <= index < len(images) else None

    # --- voxel sizes and settings -------------------------------------------------------------
    def _key(self, image_path: str | os.PathLike) -> str:
        path = Path(image_path)
        if self.contains(path):
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        return str(path.resolve())

    def voxel_size_for(self, image_path: str | os.PathLike) -> Optional[tuple[float, float, float]]:
        """The voxel size remembered for an image, or ``None``.

        A remembered value that is not a plausible voxel size (e.g. typed in nm by hand) counts as none, so
        the user is asked again and the new value replaces it.
        """
        value = self.voxel_sizes.get(self._key(image_path))
        try:
            return parse_voxel_size(value) if value else None
        except CellPolError:
            return None

    def remember_voxel_size(self, image_path: str | os.PathLike, voxel_size: Sequence[float]) -> None:
        self.voxel_sizes[self._key(image_path)] = list(parse_voxel_size(voxel_size))
        self.save()

    def group_of(self, image_path: str | os.PathLike) -> str:
        """The group (condition) of an image for the statistics; ``""`` when none was given."""
        return self.groups.get(self._key(image_path), "")

    def set_group(self, image_path: str | os.PathLike, group: str) -> None:
        """Tag an image with a group (``""`` removes the tag); the project file is rewritten."""
        key, group = self._key(image_path), str(group).strip()
        if self.groups.get(key, "") == group:
            return
        if group:
            self.groups[key] = group
        else:
            self.groups.pop(key, None)
        self.save()

    @property
    def last_image(self) -> Optional[Path]:
        """The image last opened in the app (``None`` if unknown or gone)."""
        value = self.settings.get("last_image")
        if not value or not isinstance(value, str):
            return None
        path = self.root / value if not Path(value).is_absolute() else Path(value)
        return path if path.exists() else None

    def remember_last_image(self, image_path: str | os.PathLike) -> None:
        key = self._key(image_path)
        if self.settings.get("last_image") != key:
            self.settings["last_image"] = key
            self.save()

    # --- status of each image -------------------------------------------------------------------
    def image_status(self, image_path: str | os.PathLike, read_header: bool = True) -> ImageStatus:
        """Shape, voxel size, annotation counts and state of one image, without reading its pixels."""
        path = Path(image_path)
        status = ImageStatus(path, has_predictions=self.predictions_path(path).is_file())
        if read_header:
            try:
                info = read_image_info(path)
            except CellPolError as exc:
                status.problem = str(exc)
            else:
                czyx = info.get("czyx_shape")
                if czyx:
                    status.shape = tuple(int(s) for s in czyx[1:])
                else:
                    status.problem = str(info.get("axes_problem") or "")
                if info.get("voxel_size"):
                    status.voxel_size = parse_voxel_size(info["voxel_size"])
        if status.voxel_size is None:
            try:
                status.voxel_size = self.voxel_size_for(path)
            except CellPolError:
                pass
        vectors = self.vectors_path(path)
        recovery = find_recovery(vectors)
        source = recovery if recovery is not None else vectors
        if source.is_file():
            try:
                pairs = read_pairs(source)
            except CellPolError as exc:
                status.state, status.problem = UNREADABLE, str(exc)
            else:
                status.n_pairs = len(pairs)
                status.n_manual = int(sum(1 for s in pairs.sources if str(s) in MANUAL_SOURCES))
                status.state = UNSAVED if recovery is not None else SAVED
                status.review = counts_of(pairs.sources, pairs.meta)
        if not status.review.total and status.has_predictions:  # not put up for review yet
            try:
                waiting = len(read_pairs(self.predictions_path(path)))
                status.review = ReviewCounts(total=waiting, remaining=waiting)
            except CellPolError as exc:
                status.problem = status.problem or str(exc)
        return status

    def statuses(self, read_header: bool = True) -> list[ImageStatus]:
        """:meth:`image_status` of every image, in :meth:`images` order."""
        return [self.image_status(path, read_header) for path in self.images()]


def _json_type(value: Any) -> str:
    """How JSON calls the type of ``value`` (for messages about a hand-edited project file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _checked_fields(
    file: Path, data: dict[str, Any], default_name: str
) -> tuple[str, str, dict[str, list[float]], dict[str, Any]]:
    """``name``, ``created``, ``voxel_sizes`` and ``settings`` of a project file, each of the right type.

    Raises
    ------
    FileFormatError
        A field has the wrong type; the message names the file, the field and what it should hold.
    """

    def wrong(field_name: str, expected: str, value: Any) -> FileFormatError:
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return FileFormatError(
            f"{file}: the field '{field_name}' must be {expected}, but it is {_json_type(value)} ({shown}). "
            "Correct or remove that field (the file is JSON)."
        )

    def field(key: str, default: Any) -> Any:
        value = data.get(key)
        return default if value is None else value  # null = absent

    texts = []
    for key, default in (("name", default_name), ("created", "")):
        value = field(key, default)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise wrong(key, "a string", value)
        texts.append(str(value))
    name, created = texts
    voxel_sizes = field("voxel_sizes", {})
    if not isinstance(voxel_sizes, dict):
        expected = 'an object mapping image paths to [z, y, x] in µm, e.g. {"images/a.tif": [1, 0.2, 0.2]}'
        raise wrong("voxel_sizes", expected, voxel_sizes)
    for key, value in voxel_sizes.items():
        numbers = isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not numbers:
            raise wrong(f"voxel_sizes[{json.dumps(key, ensure_ascii=False)}]", "three numbers [z, y, x] in µm", value)
    settings = field("settings", {})
    if not isinstance(settings, dict):
        raise wrong("settings", "an object", settings)
    last_image = settings.get("last_image")
    if last_image is not None and not isinstance(last_image, str):
        raise wrong('settings["last_image"]', "an image path as a string", last_image)
    return name, created, {k: list(v) for k, v in voxel_sizes.items()}, dict(settings)
