"""Object masks from annotated centroids, and new random layouts of those objects (Vox2Vox's inputs).

Two steps of the 3DNGMic recipe (reference §6.3–6.4), pure numpy/scipy:

1. :func:`annotation_masks` — for every annotated nucleus and Golgi, Otsu's threshold inside a box of a
   given size **in µm** around its centroid (the paper's 16×16×9 µm for nuclei, 8×8×5 µm for Golgi),
   keeping the connected component at the centroid. Gives a two-channel mask volume per image and the
   single-object masks that make a :class:`ShapeLibrary`.
2. :func:`random_layout` — a new mask volume: random centroid sets that respect a maximum
   nucleus→Golgi distance and a minimum separation between objects of a class (learned from the user's
   own annotations by :func:`learn_layout_params`, else the paper's 14 µm / 6 µm), with objects drawn
   from the library, rotated about z by multiples of 90° and flipped, pasted at the centroids. The
   ground-truth vectors are the centroids of the pasted masks, exactly.

What differs from the authors' code, on purpose:

- Boxes are in µm and converted with the image's voxel size per axis (not fixed voxel counts).
- The box is lightly smoothed before Otsu, and an annotation whose object does not stand out of the
  noise (:data:`MIN_CONTRAST`) gets no mask instead of a speckled box of noise.
- Touching objects of one class are split first: a voxel belongs to the object whose annotated centroid
  is nearest (in µm), so two touching nuclei never become one mask. Holes (dark nucleoli) are filled.
  When the clicked voxel itself is background the nearest component within :data:`SNAP_UM` is kept.
- A pasted object's reference point is its true centroid, not its box centre, and objects lie wholly
  inside the volume (their code tested the z edge against 128 instead of 64), so the recorded vector is
  exact. Objects never overlap one another.
- Pair vectors are drawn from the user's own annotated vectors (turned by a random angle about z) when
  there are any, so lengths and tilts look like theirs.

Arrays are ``(Z, Y, X)``; mask volumes are ``(2, Z, Y, X)`` uint8 0/1 with channel 0 = nucleus and
1 = Golgi (our channel order; the 3DNGMic files put Golgi first, :mod:`app.training.vox2vox` converts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.core.volume import parse_voxel_size

#: The paper's boxes (z, y, x) µm: 16×16×9 µm around nuclei, 8×8×5 µm around Golgi.
NUCLEUS_BOX_UM = (9.0, 16.0, 16.0)
GOLGI_BOX_UM = (5.0, 8.0, 8.0)
#: The paper's layout limits: longest nucleus→Golgi distance and least distance between two objects of a class.
PAPER_MAX_PAIR_DISTANCE_UM = 14.0
PAPER_MIN_SEPARATION_UM = 6.0
#: The 3DNGMic patches hold 11–18 pairs in 128×128 voxels of 0.666 µm: about 2 pairs per 1000 µm².
PAPER_PAIRS_PER_1000_UM2 = 14.5 / (128 * 0.666) ** 2 * 1000
#: A clicked centroid on background snaps to the nearest component closer than this (µm).
SNAP_UM = 2.0
#: The box is smoothed by a Gaussian of this σ (µm, at least half a voxel) before Otsu: compact masks.
SMOOTH_UM = 0.4
#: An object must be this many noise σ brighter than the rest of its box, else its annotation gets no mask
#: (Otsu splits pure noise too, into a speckled sponge).
MIN_CONTRAST = 3.0
#: Fewest annotated pairs from which layout limits are learned (fewer: the paper's values).
MIN_PAIRS_TO_LEARN = 10
#: Annotated vectors kept to draw new pair offsets from.
MAX_VECTORS_KEPT = 500
CLASSES = ("nucleus", "golgi")


# ----------------------------------------------------------------------------------------------
# 1. Masks from annotations
# ----------------------------------------------------------------------------------------------
@dataclass
class ObjectMask:
    """One object's mask cut to its bounding box, and where that box sits in its image (voxels)."""

    kind: str  # "nucleus" or "golgi"
    mask: np.ndarray  # (z, y, x) bool, cut to the object's bounding box
    origin: tuple[int, int, int]  # position of mask[0, 0, 0] in the image
    pair_id: int = -1

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def centroid(self) -> np.ndarray:
        """Centroid ``(z, y, x)`` in image voxels."""
        return _centroid(self.mask) + np.asarray(self.origin, dtype=np.float64)


@dataclass
class AnnotationMasks:
    """What :func:`annotation_masks` found in one image."""

    volume: np.ndarray  # (2, Z, Y, X) uint8 0/1: nucleus, Golgi
    objects: list[ObjectMask]
    missed: dict[str, int] = field(default_factory=lambda: {"nucleus": 0, "golgi": 0})

    def of_kind(self, kind: str) -> list[ObjectMask]:
        return [o for o in self.objects if o.kind == kind]


def box_half_size(box_um: Sequence[float], voxel_size: Sequence[float]) -> np.ndarray:
    """Half the box, in whole voxels per axis (at least 1)."""
    return np.maximum(1, np.round(np.asarray(box_um, float) / 2.0 / np.asarray(voxel_size, float))).astype(int)


def object_mask(channel: np.ndarray, centroid: Sequence[float], voxel_size: Sequence[float],
                box_um: Sequence[float], others: Optional[np.ndarray] = None,
                snap_um: float = SNAP_UM) -> Optional[tuple[np.ndarray, tuple[int, int, int]]]:
    """Otsu inside a box around ``centroid`` and the component at it.

    Parameters
    ----------
    channel : ndarray (Z, Y, X)
        The object's channel.
    centroid : (z, y, x)
        Annotated position, voxels.
    voxel_size : (z, y, x) µm
    box_um : (z, y, x) µm
        Full size of the box.
    others : ndarray (N, 3), optional
        Other annotated centroids of the same class; voxels nearer to one of them are not this object.
    snap_um : float
        If the centroid's voxel is background, the nearest component within this distance is taken.

    Returns
    -------
    (mask, origin) or None
        The mask cut to its bounding box (bool) and its origin in the image, or None where nothing is
        found: a flat box, an object not :data:`MIN_CONTRAST` noise σ brighter than its surroundings (Otsu
        of noise), or no component near the centroid.
    """
    shape = np.asarray(channel.shape)
    centre = np.asarray(centroid, dtype=np.float64)
    voxel = np.asarray(voxel_size, dtype=np.float64)
    at = np.clip(np.round(centre).astype(int), 0, shape - 1)
    half = box_half_size(box_um, voxel_size)
    lo = np.maximum(at - half, 0)
    hi = np.minimum(at + half + 1, shape)
    crop = np.asarray(channel[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    if crop.size < 2 or float(crop.max()) <= float(crop.min()):
        return None
    smooth = ndi.gaussian_filter(crop, np.maximum(0.5, SMOOTH_UM / voxel) * (np.array(crop.shape) > 1))
    if float(smooth.max()) <= float(smooth.min()):
        return None
    foreground = smooth > threshold_otsu(smooth)
    if not _stands_out(crop, foreground):
        return None
    grid = np.indices(crop.shape, dtype=np.float64).reshape(3, -1).T + lo  # voxel coordinates of the box
    if others is not None and len(others):
        others = np.asarray(others, dtype=np.float64).reshape(-1, 3)
        near = np.all(np.abs(others - centre) <= (half + 1) * 2, axis=1)
        if np.any(near):  # Voronoi split between touching objects, in µm
            own = np.sum(((grid - centre) * voxel) ** 2, axis=1)
            rival = np.min(np.sum(((grid[:, None, :] - others[near][None]) * voxel) ** 2, axis=2), axis=1)
            foreground &= (own <= rival).reshape(crop.shape)
    labels, count = ndi.label(foreground)
    if count == 0:
        return None
    local = tuple(at - lo)
    label = int(labels[local])
    if label == 0:
        distance = np.sqrt(np.sum(((grid - centre) * voxel) ** 2, axis=1)).reshape(crop.shape)
        distance[labels == 0] = np.inf
        nearest = np.unravel_index(int(np.argmin(distance)), crop.shape)
        if not distance[nearest] <= snap_um:
            return None
        label = int(labels[nearest])
    mask = ndi.binary_fill_holes(labels == label)
    bbox = ndi.find_objects(mask.astype(np.uint8))[0]
    origin = tuple(int(lo[a] + bbox[a].start) for a in range(3))
    return np.ascontiguousarray(mask[bbox]), origin  # type: ignore[return-value]


def annotation_masks(image: np.ndarray, pairs: PairSet, voxel_size: Sequence[float],
                     nucleus_box_um: Sequence[float] = NUCLEUS_BOX_UM,
                     golgi_box_um: Sequence[float] = GOLGI_BOX_UM) -> AnnotationMasks:
    """Masks of every annotated nucleus and Golgi of one image.

    Parameters
    ----------
    image : ndarray (2, Z, Y, X)
        Channel 0 = nuclei, 1 = Golgi (any intensity scale).
    pairs : PairSet
        Annotated pairs, voxels of ``image``.
    voxel_size : (z, y, x) µm
    nucleus_box_um, golgi_box_um : (z, y, x) µm
        Box sizes (default: the paper's).

    Raises
    ------
    CellPolError
        ``image`` is not two-channel 3D, or a box size is not three positive numbers.
    """
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != 2:
        raise CellPolError(f"Masks need a two-channel (2, Z, Y, X) image (nucleus, Golgi), got shape {image.shape}.")
    voxel = parse_voxel_size(voxel_size)
    boxes = {"nucleus": check_box(nucleus_box_um, "nucleus"), "golgi": check_box(golgi_box_um, "Golgi")}
    volume = np.zeros(image.shape, dtype=np.uint8)
    objects: list[ObjectMask] = []
    missed = {"nucleus": 0, "golgi": 0}
    for c, kind in enumerate(CLASSES):
        points = pairs.nuclei if kind == "nucleus" else pairs.golgi
        for k in range(len(points)):
            found = object_mask(image[c], points[k], voxel, boxes[kind], np.delete(points, k, axis=0))
            if found is None:
                missed[kind] += 1
                continue
            mask, origin = found
            region = tuple(slice(o, o + s) for o, s in zip(origin, mask.shape))
            volume[c][region] |= mask.astype(np.uint8)
            objects.append(ObjectMask(kind, mask, origin, int(pairs.ids[k])))
    return AnnotationMasks(volume, objects, missed)


def noise_sigma(array: np.ndarray) -> float:
    """Robust σ of the voxel noise: the MAD of differences between neighbours along the last axis (edges
    are few, so structure barely counts)."""
    diff = np.diff(np.asarray(array, dtype=np.float64), axis=-1).ravel()
    if diff.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / math.sqrt(2.0))


def _stands_out(crop: np.ndarray, foreground: np.ndarray) -> bool:
    """Whether the Otsu foreground is brighter than the background by :data:`MIN_CONTRAST` noise σ."""
    if foreground.all() or not foreground.any():
        return False
    contrast = float(crop[foreground].mean() - crop[~foreground].mean())
    return contrast > MIN_CONTRAST * noise_sigma(crop)


def check_box(box_um: Sequence[float], what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in box_um)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise CellPolError(f"The {what} box must be three positive sizes Z Y X in µm, got {box_um!r}.")
    return values  # type: ignore[return-value]


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0) if np.any(mask) else (np.asarray(mask.shape, float) - 1) / 2


# ----------------------------------------------------------------------------------------------
# The dictionary of single-object masks
# ----------------------------------------------------------------------------------------------
@dataclass
class ShapeLibrary:
    """Single-object masks (bool ``(z, y, x)``, cut to their bounding box) at one voxel size."""

    nuclei: list[np.ndarray]
    golgi: list[np.ndarray]
    voxel_size: tuple[float, float, float]

    def __post_init__(self) -> None:
        self.voxel_size = parse_voxel_size(self.voxel_size)  # type: ignore[assignment]
        self.nuclei = [np.asarray(m, dtype=bool) for m in self.nuclei if np.any(m)]
        self.golgi = [np.asarray(m, dtype=bool) for m in self.golgi if np.any(m)]

    @classmethod
    def from_masks(cls, found: Sequence[AnnotationMasks], voxel_size: Sequence[float],
                   min_voxels: int = 4) -> "ShapeLibrary":
        """The objects of several images; specks under ``min_voxels`` voxels are left out."""
        objects = [o for item in found for o in item.objects if o.voxels >= min_voxels]
        return cls([o.mask for o in objects if o.kind == "nucleus"], [o.mask for o in objects if o.kind == "golgi"],
                   tuple(voxel_size))  # type: ignore[arg-type]

    def check(self) -> None:
        """Raise :class:`CellPolError` unless there is at least one nucleus and one Golgi."""
        if not self.nuclei or not self.golgi:
            raise CellPolError(f"The object library has {len(self.nuclei)} nuclei and {len(self.golgi)} Golgi masks; "
                               "new layouts need at least one of each (are the channels and vectors right?).")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``{"nucleus.0000": uint8 mask, ..., "golgi.0000": ...}`` (for a safetensors or npz file)."""
        out = {f"nucleus.{k:04d}": m.astype(np.uint8) for k, m in enumerate(self.nuclei)}
        out.update({f"golgi.{k:04d}": m.astype(np.uint8) for k, m in enumerate(self.golgi)})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], voxel_size: Sequence[float]) -> "ShapeLibrary":
        """Inverse of :meth:`to_arrays`."""
        def pick(kind: str) -> list[np.ndarray]:
            keys = sorted(k for k in arrays if k.startswith(kind + "."))
            return [np.asarray(arrays[k]) > 0 for k in keys]

        library = cls(pick("nucleus"), pick("golgi"), tuple(voxel_size))  # type: ignore[arg-type]
        if any(m.ndim != 3 for m in library.nuclei + library.golgi):
            raise CellPolError("The object library holds masks that are not 3D.")
        return library


def transform_shape(mask: np.ndarray, rng: np.random.Generator, voxel_size: Sequence[float]) -> np.ndarray:
    """A random rotation about z by a multiple of 90° (only 0/180° when y and x voxels differ) and random
    flips in y and x; exact on the voxel grid, so centroids stay exact."""
    square = abs(float(voxel_size[1]) - float(voxel_size[2])) < 1e-9
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    out = np.rot90(mask, turns, axes=(1, 2))
    if rng.random() < 0.5:
        out = out[:, ::-1, :]
    if rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------------------------
# 2. New layouts
# ----------------------------------------------------------------------------------------------
@dataclass
class LayoutParams:
    """Limits of a random layout (µm) and how they were obtained.

    ``vectors_um`` are annotated nucleus→Golgi vectors ``(dz, dy, dx)`` µm to draw offsets from (turned
    by a random angle about z); without them, offsets are uniform in direction with lengths uniform in
    ``[min_separation/3, max_pair_distance]`` and a z part no larger than the in-plane one.
    """

    max_pair_distance_um: float = PAPER_MAX_PAIR_DISTANCE_UM
    min_separation_um: float = PAPER_MIN_SEPARATION_UM
    pairs_per_1000_um2: float = PAPER_PAIRS_PER_1000_UM2
    vectors_um: list[list[float]] = field(default_factory=list)
    source: str = "paper"

    def __post_init__(self) -> None:
        for name in ("max_pair_distance_um", "min_separation_um", "pairs_per_1000_um2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CellPolError(f"Layout setting {name} must be a number ≥ 0, got {value!r}.")
            setattr(self, name, float(value))
        if self.max_pair_distance_um <= 0:
            raise CellPolError("The maximum nucleus→Golgi distance must be positive.")
        vectors = np.asarray(self.vectors_um, dtype=np.float64).reshape(-1, 3) if len(self.vectors_um) else np.zeros((0, 3))
        if not np.all(np.isfinite(vectors)):
            raise CellPolError("Layout vectors must be finite numbers.")
        self.vectors_um = vectors.tolist()

    def to_dict(self) -> dict[str, Any]:
        return {"max_pair_distance_um": round(self.max_pair_distance_um, 4),
                "min_separation_um": round(self.min_separation_um, 4),
                "pairs_per_1000_um2": round(self.pairs_per_1000_um2, 4), "source": self.source,
                "vectors_um": [[round(v, 4) for v in row] for row in self.vectors_um]}

    @classmethod
    def from_dict(cls, data: Any) -> "LayoutParams":
        if not isinstance(data, dict):
            raise CellPolError("The layout settings must be a JSON object.")
        known = {"max_pair_distance_um", "min_separation_um", "pairs_per_1000_um2", "vectors_um", "source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CellPolError(f"Unknown layout setting(s): {', '.join(unknown)}.")
        return cls(**data)


def learn_layout_params(annotated: Sequence[tuple[PairSet, Sequence[int]]], seed: int = 0) -> LayoutParams:
    """Layout limits from the user's annotations; the paper's values with fewer than
    :data:`MIN_PAIRS_TO_LEARN` pairs.

    Parameters
    ----------
    annotated : sequence of (PairSet with voxel size, image shape (Z, Y, X))

    Returns
    -------
    LayoutParams
        ``max_pair_distance_um`` = the longest annotated vector (the 99th percentile, so one stray click does
        not set it); ``min_separation_um`` = the 2nd percentile of the distances from each nucleus to the
        nearest other nucleus and each Golgi to the nearest other Golgi; ``pairs_per_1000_um2`` = annotated
        pairs over the images' area (median over images); up to :data:`MAX_VECTORS_KEPT` of the vectors.
    """
    lengths, separations, densities, vectors = [], [], [], []
    for pairs, shape in annotated:
        if pairs.voxel_size is None:
            raise CellPolError("Layout limits need vectors with a voxel size.")
        if len(pairs) == 0:
            continue
        voxel = np.asarray(pairs.voxel_size)
        um = pairs.vectors * voxel
        vectors.append(um)
        lengths.append(np.linalg.norm(um, axis=1))
        for points in (pairs.nuclei * voxel, pairs.golgi * voxel):
            if len(points) > 1:
                distance = np.linalg.norm(points[:, None] - points[None], axis=2)
                np.fill_diagonal(distance, np.inf)
                separations.append(distance.min(axis=1))
        area = float(shape[1] * voxel[1] * shape[2] * voxel[2])
        densities.append(len(pairs) / area * 1000.0)
    n_pairs = sum(len(v) for v in vectors)
    if n_pairs < MIN_PAIRS_TO_LEARN:
        return LayoutParams()
    all_vectors = np.concatenate(vectors)
    if len(all_vectors) > MAX_VECTORS_KEPT:
        keep = np.random.default_rng(seed).choice(len(all_vectors), MAX_VECTORS_KEPT, replace=False)
        all_vectors = all_vectors[np.sort(keep)]
    separation = float(np.percentile(np.concatenate(separations), 2)) if separations else PAPER_MIN_SEPARATION_UM
    return LayoutParams(
        max_pair_distance_um=max(1.0, float(np.percentile(np.concatenate(lengths), 99))),
        min_separation_um=separation, pairs_per_1000_um2=float(np.median(densities)),
        vectors_um=all_vectors.tolist(), source=f"learned from {n_pairs} annotated pairs",
    )


@dataclass
class Layout:
    """A new mask volume ``(2, Z, Y, X)`` uint8 0/1 (nucleus, Golgi) and its exact pairs."""

    masks: np.ndarray
    pairs: PairSet


def random_layout(library: ShapeLibrary, shape: Sequence[int], params: Optional[LayoutParams] = None,
                  rng: Optional[np.random.Generator] = None, n_pairs: Optional[int] = None,
                  attempts_per_pair: int = 60) -> Layout:
    """Place objects from ``library`` at random centroids in a volume of ``shape`` (voxels at the library's
    voxel size).

    Every nucleus is at least ``min_separation_um`` from every other nucleus, every Golgi as far from every
    other Golgi, every Golgi within ``max_pair_distance_um`` of its own nucleus; no two objects share a
    voxel, and every object lies wholly inside the volume. The pairs are the centroids of the pasted
    masks. ``n_pairs`` (default from ``pairs_per_1000_um2`` and the area, ±20 %) is a target: a crowded
    volume may hold fewer.

    Raises
    ------
    CellPolError
        An empty library, a shape that is not three positive sizes, or a volume too small to hold one pair.
    """
    library.check()
    params = params or LayoutParams()
    rng = rng if rng is not None else np.random.default_rng()
    try:
        size = np.array([int(s) for s in shape])
    except (TypeError, ValueError):
        size = np.zeros(0, dtype=int)
    if size.shape != (3,) or np.any(size < 1):
        raise CellPolError(f"The layout shape must be three positive sizes Z Y X, got {shape!r}.")
    voxel = np.asarray(library.voxel_size)
    if n_pairs is None:
        area = float(size[1] * voxel[1] * size[2] * voxel[2])
        n_pairs = max(1, int(round(params.pairs_per_1000_um2 * area / 1000.0 * rng.uniform(0.8, 1.2))))
    masks = np.zeros((2,) + tuple(size), dtype=np.uint8)
    occupied = np.zeros(tuple(size), dtype=bool)
    nuclei: list[np.ndarray] = []
    golgi: list[np.ndarray] = []
    vectors = np.asarray(params.vectors_um, dtype=np.float64).reshape(-1, 3)
    if len(vectors):
        vectors = vectors[np.linalg.norm(vectors, axis=1) <= params.max_pair_distance_um]
    failures = 0
    while len(nuclei) < n_pairs and failures < attempts_per_pair * max(1, n_pairs):
        placed = _place_pair(library, size, voxel, params, vectors, rng, occupied, nuclei, golgi)
        if placed is None:
            failures += 1
            continue
        for c, (mask, origin, centroid) in enumerate(placed):
            region = tuple(slice(o, o + s) for o, s in zip(origin, mask.shape))
            masks[c][region] |= mask.astype(np.uint8)
            occupied[region] |= mask
            (nuclei if c == 0 else golgi).append(centroid)
    if not nuclei:
        raise CellPolError(f"No nucleus→Golgi pair fits in a volume of {tuple(int(s) for s in size)} voxels with these "
                           "objects and limits; make the volume larger.")
    pairs = PairSet(np.array(nuclei), np.array(golgi), voxel_size=library.voxel_size, sources="simulated")
    return Layout(masks, pairs)


def _offset_um(params: LayoutParams, vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A nucleus→Golgi offset (dz, dy, dx) µm."""
    if len(vectors):
        dz, dy, dx = vectors[int(rng.integers(len(vectors)))]
        angle = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(angle), math.sin(angle)
        return np.array([dz * (1 if rng.random() < 0.5 else -1), c * dy - s * dx, s * dy + c * dx])
    length = rng.uniform(min(params.max_pair_distance_um, params.min_separation_um / 3), params.max_pair_distance_um)
    azimuth = rng.uniform(0, 2 * math.pi)
    tilt = rng.uniform(-math.pi / 4, math.pi / 4)  # cells are flat: Golgi mostly beside the nucleus
    return length * np.array([math.sin(tilt), math.cos(tilt) * math.sin(azimuth), math.cos(tilt) * math.cos(azimuth)])


def _fit(mask: np.ndarray, target: np.ndarray, size: np.ndarray, occupied: np.ndarray
         ) -> Optional[tuple[np.ndarray, tuple[int, ...], np.ndarray]]:
    """Put ``mask`` with its centroid nearest ``target``; None if it leaves the volume or overlaps."""
    local = _centroid(mask)
    origin = np.round(target - local).astype(int)
    if np.any(origin < 0) or np.any(origin + mask.shape > size):
        return None
    region = tuple(slice(o, o + s) for o, s in zip(origin, mask.shape))
    if np.any(occupied[region] & mask):
        return None
    return mask, tuple(int(o) for o in origin), origin + local


def _far_enough(point: np.ndarray, others: list[np.ndarray], voxel: np.ndarray, distance_um: float) -> bool:
    if not others or distance_um <= 0:
        return True
    return bool(np.min(np.linalg.norm((np.asarray(others) - point) * voxel, axis=1)) >= distance_um)


def _place_pair(library: ShapeLibrary, size: np.ndarray, voxel: np.ndarray, params: LayoutParams,
                vectors: np.ndarray, rng: np.random.Generator, occupied: np.ndarray, nuclei: list, golgi: list,
                golgi_tries: int = 8):
    nucleus = transform_shape(library.nuclei[int(rng.integers(len(library.nuclei)))], rng, library.voxel_size)
    target = rng.uniform(0, 1, 3) * (size - 1)
    placed_nucleus = _fit(nucleus, target, size, occupied)
    if placed_nucleus is None or not _far_enough(placed_nucleus[2], nuclei, voxel, params.min_separation_um):
        return None
    trial = occupied.copy()
    region = tuple(slice(o, o + s) for o, s in zip(placed_nucleus[1], nucleus.shape))
    trial[region] |= nucleus
    for _ in range(golgi_tries):
        shape = transform_shape(library.golgi[int(rng.integers(len(library.golgi)))], rng, library.voxel_size)
        target = placed_nucleus[2] + _offset_um(params, vectors, rng) / voxel
        placed_golgi = _fit(shape, target, size, trial)
        if placed_golgi is None:
            continue
        length = float(np.linalg.norm((placed_golgi[2] - placed_nucleus[2]) * voxel))
        if length <= params.max_pair_distance_um and _far_enough(placed_golgi[2], golgi, voxel,
                                                                  params.min_separation_um):
            return placed_nucleus, placed_golgi
    return None
