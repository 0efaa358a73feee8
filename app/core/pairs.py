"""Polarity vectors: :class:`PairSet` and its file formats.

Positions are voxel coordinates ``(z, y, x)``, 0-based, float; the vector is Golgi − nucleus. The
voxel size travels with the set and physical (µm) values are derived on demand, never stored twice.

File formats
------------
Project CSV (read and written everywhere)::

    nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z[,score][,id][,source]

in voxels, x = column, y = row, z = slice, 0-based; plus a JSON sidecar ``<name>.vectors.json`` (for
``<name>.vectors.csv``) with voxel size, image, model, app version and parameters.

Legacy formats, read and written: the authors' header-less annotation CSV (columns ``YN,XN,YG,XG,ZN,ZG``
in their loader's naming, where their "X" is the first array axis = row) and 3DNGMic ``vectors/*.npy``
``(N, 6) = [a0_N, a1_N, z_N, a0_G, a1_G, z_G]``. Each writer sits under its reader.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from app import __version__
from app.core.errors import CellPolError, FileFormatError, OutputError
from app.core.fileutil import atomic_path, atomic_write_json, atomic_write_text, sha256_bytes
from app.core.volume import parse_voxel_size

#: Annotations (manual or corrected) and simulated ground truth: ``<stem>.vectors.csv``.
VECTORS_SUFFIX = ".vectors.csv"
#: Predictions: ``<stem>.pred.vectors.csv``, a name no reader of annotations takes.
PREDICTION_SUFFIX = ".pred.vectors.csv"
#: The annotation autosave: ``<stem>.vectors.autosave.csv``.
AUTOSAVE_SUFFIX = ".vectors.autosave.csv"
#: What a vectors file holds (the sidecar's ``content``): human work, a model's output, a simulator's
#: exact vectors, or an autosave of work in progress.
CONTENTS = ("annotation", "prediction", "ground-truth", "autosave")
HUMAN_SOURCES = ("manual", "corrected")

CSV_COLUMNS = ("nucleus_x", "nucleus_y", "nucleus_z", "golgi_x", "golgi_y", "golgi_z")
OPTIONAL_COLUMNS = ("score", "id", "source")
SOURCES = ("manual", "predicted", "corrected", "simulated", "imported")
SIDECAR_FORMAT = "cellpol-vectors"
SIDECAR_VERSION = 1
#: Pair ids are stored as 64-bit integers; these are the ones a file may hold.
ID_MIN, ID_MAX = -(2**53), 2**53  # exactly representable as the float they are parsed through


@dataclass
class PairSet:
    """N nucleus→Golgi pairs in voxel coordinates ``(z, y, x)``.

    Parameters
    ----------
    nuclei, golgi : ndarray, shape (N, 3)
        Centroids in voxels ``(z, y, x)``, 0-based, float64.
    voxel_size : tuple of float, optional
        ``(z, y, x)`` in µm; needed for every physical quantity.
    scores : ndarray, shape (N,)
        Per-pair confidence in [0, 1]; NaN where there is none (manual pairs).
    ids : ndarray, shape (N,)
        Stable integer ids (unique within the set).
    sources : ndarray of str, shape (N,)
        ``manual``, ``predicted``, ``corrected``, ...
    meta : dict
        Provenance: image, model, parameters, app version. Written to the JSON sidecar.
    """

    nuclei: np.ndarray
    golgi: np.ndarray
    voxel_size: Optional[tuple[float, float, float]] = None
    scores: Optional[np.ndarray] = None
    ids: Optional[np.ndarray] = None
    sources: Optional[np.ndarray] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nuclei = _as_points(self.nuclei, "nucleus")
        self.golgi = _as_points(self.golgi, "Golgi")
        n = len(self.nuclei)
        if len(self.golgi) != n:
            raise CellPolError(f"{n} nuclei but {len(self.golgi)} Golgi: pairs must be row-aligned.")
        self.voxel_size = parse_voxel_size(self.voxel_size)
        self.scores = (
            np.full(n, np.nan) if self.scores is None else np.asarray(self.scores, dtype=np.float64).reshape(-1)
        )
        self.ids = np.arange(n, dtype=np.int64) if self.ids is None else np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if self.sources is None:
            self.sources = np.array(["manual"] * n, dtype=object)
        elif isinstance(self.sources, str):
            self.sources = np.array([self.sources] * n, dtype=object)
        else:
            self.sources = np.asarray(self.sources, dtype=object).reshape(-1)
        for name in ("scores", "ids", "sources"):
            if len(getattr(self, name)) != n:
                raise CellPolError(f"{name} has {len(getattr(self, name))} entries for {n} pairs.")

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def empty(cls, voxel_size: Optional[Sequence[float]] = None, **kwargs: Any) -> "PairSet":
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), voxel_size=voxel_size, **kwargs)

    @classmethod
    def concatenate(cls, sets: Sequence["PairSet"]) -> "PairSet":
        """Join sets with the same voxel size; ids are renumbered."""
        if not sets:
            return cls.empty()
        voxel = sets[0].voxel_size
        for s in sets[1:]:
            if s.voxel_size != voxel:
                raise CellPolError("Cannot join vector sets with different voxel sizes.")
        joined = cls(
            np.concatenate([s.nuclei for s in sets]),
            np.concatenate([s.golgi for s in sets]),
            voxel_size=voxel,
            scores=np.concatenate([s.scores for s in sets]),
            sources=np.concatenate([s.sources for s in sets]),
            meta=dict(sets[0].meta),
        )
        return joined

    def subset(self, index: Any) -> "PairSet":
        """Pairs selected by a boolean mask or an index array (a new set; ids are kept)."""
        return dataclasses.replace(
            self,
            nuclei=self.nuclei[index],
            golgi=self.golgi[index],
            scores=self.scores[index],
            ids=self.ids[index],
            sources=self.sources[index],
            meta=dict(self.meta),
        )

    def with_voxel_size(self, voxel_size: Sequence[float]) -> "PairSet":
        return dataclasses.replace(self, voxel_size=parse_voxel_size(voxel_size), meta=dict(self.meta))

    # --- derived quantities ----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.nuclei.shape[0])

    @property
    def vectors(self) -> np.ndarray:
        """Golgi − nucleus in voxels ``(z, y, x)``."""
        return self.golgi - self.nuclei

    def _scale(self) -> np.ndarray:
        if self.voxel_size is None:
            raise CellPolError("These vectors have no voxel size; give one to get values in µm.")
        return np.asarray(self.voxel_size, dtype=np.float64)

    @property
    def nuclei_um(self) -> np.ndarray:
        return self.nuclei * self._scale()

    @property
    def golgi_um(self) -> np.ndarray:
        return self.golgi * self._scale()

    @property
    def vectors_um(self) -> np.ndarray:
        """Golgi − nucleus in µm ``(z, y, x)``."""
        return self.vectors * self._scale()

    @property
    def lengths_um(self) -> np.ndarray:
        return np.linalg.norm(self.vectors_um, axis=1)


def _as_points(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise CellPolError(f"{what} positions must be an (N, 3) array, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise CellPolError(f"{what} position of pair {bad + 1} is not a finite number.")
    return arr


# ------------------------------------------------------------------------------------------
# Project CSV + JSON sidecar
# ------------------------------------------------------------------------------------------
def sidecar_path(csv_path: str | os.PathLike) -> Path:
    """``name.vectors.csv`` → ``name.vectors.json`` (any ``.csv`` → ``.json``)."""
    p = Path(csv_path)
    return p.with_suffix(".json") if p.suffix.lower() == ".csv" else p.with_name(p.name + ".json")


def _format_number(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def pairs_to_csv_text(pairs: PairSet) -> str:
    """The project CSV as text (header + one row per pair)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + OPTIONAL_COLUMNS)
    for i in range(len(pairs)):
        nz, ny, nx = pairs.nuclei[i]
        gz, gy, gx = pairs.golgi[i]
        score = pairs.scores[i]
        writer.writerow(
            [_format_number(v) for v in (nx, ny, nz, gx, gy, gz)]
            + ["" if not math.isfinite(score) else _format_number(score), int(pairs.ids[i]), str(pairs.sources[i])]
        )
    return buffer.getvalue()


def write_pairs(
    path: str | os.PathLike,
    pairs: PairSet,
    provenance: Optional[dict[str, Any]] = None,
    content: Optional[str] = None,
) -> Path:
    """Write the project CSV and its JSON sidecar so that a reader never sees one without the other.

    The sidecar is written first and carries the SHA-256 of the CSV it belongs to, plus the sidecar of
    the CSV being replaced (``previous``); the CSV is renamed into place last. A kill at any step leaves
    either the old pair or the new one, which :func:`read_sidecar` tells apart by the hash. Returns the
    CSV path.

    ``provenance`` entries are merged over ``pairs.meta`` into the sidecar. ``content`` (one of
    :data:`CONTENTS`) says what the file holds; default: from the sources (only ``predicted``: a
    prediction; only ``simulated``: ground truth; else an annotation).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: a folder of that name is in the way (give a file name).",
                          filename=str(path))
    text = pairs_to_csv_text(pairs)
    meta = {k: v for k, v in pairs.meta.items() if k not in _INTEGRITY_KEYS}
    meta.update({k: v for k, v in (provenance or {}).items() if k not in _INTEGRITY_KEYS})
    meta.pop("content", None)  # what a file held when read says nothing about what is written now
    if content is None:  # from the sources: only predicted, a prediction; only simulated, ground truth
        inferred = vectors_content({}, pairs.sources)
        content = "annotation" if inferred == "unknown" else inferred
    if content not in CONTENTS:
        raise CellPolError(f"Unknown vectors content {content!r}; expected one of {', '.join(CONTENTS)}.")
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "content": content,
        "voxel_size_zyx_um": list(pairs.voxel_size) if pairs.voxel_size else None,
        "n_pairs": len(pairs),
        "coordinates": "voxels, 0-based; x = column, y = row, z = slice",
        "app_version": __version__,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in meta.items():
        sidecar.setdefault(key, value)
    sidecar["csv_sha256"] = sha256_bytes(text.encode("utf-8"))
    previous = _committed_sidecar(path)
    if previous is not None:
        sidecar["previous"] = previous
    atomic_write_json(sidecar_path(path), sidecar)
    atomic_write_text(path, text)  # the commit: from here on the CSV matches the new hash
    return path


#: Sidecar keys that describe one write, not provenance to carry into the next.
_INTEGRITY_KEYS = ("csv_sha256", "previous", "integrity")


def _committed_sidecar(csv_path: Path) -> Optional[dict[str, Any]]:
    """The sidecar that agrees with the CSV now at ``csv_path`` (without its own ``previous``), if any."""
    if not csv_path.is_file():
        return None
    try:
        data = read_sidecar(csv_path)
    except CellPolError:
        return None
    if data.get("integrity") not in ("ok", "unverified"):
        return None
    kept = {k: v for k, v in data.items() if k not in ("previous", "integrity")}
    if data["integrity"] == "unverified":  # written before hashes were recorded: record the CSV's now
        try:
            kept["csv_sha256"] = sha256_bytes(csv_path.read_bytes())
        except OSError:
            return None
    return kept


def read_sidecar(csv_path: str | os.PathLike, csv_bytes: Optional[bytes] = None) -> dict[str, Any]:
    """The JSON sidecar that belongs to the vectors CSV at ``csv_path``, or ``{}`` if there is none.

    A write killed after the new sidecar but before the new CSV leaves the old CSV beside the new
    sidecar: the old CSV's own sidecar (kept under ``previous``) is returned then. The result's
    ``integrity`` says how it was matched: ``"ok"`` (the CSV's recorded hash), ``"unverified"`` (a
    sidecar from before hashes were recorded), ``"edited"`` (the CSV was changed after it was written,
    by hand or by another program: the sidecar is returned as it is) or ``"no-csv"`` (the sidecar of a
    CSV not yet in place). A corrupt sidecar is an error.
    """
    side = sidecar_path(csv_path)
    if not side.exists():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{side}: the vectors sidecar is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{side}: the vectors sidecar must hold a JSON object.")
    recorded = data.get("csv_sha256")
    if recorded is None:
        return {**data, "integrity": "unverified"}
    if csv_bytes is None:
        try:
            csv_bytes = Path(csv_path).read_bytes()
        except OSError:
            return {**data, "integrity": "no-csv"}
    actual = sha256_bytes(csv_bytes)
    if actual == recorded:
        return {**data, "integrity": "ok"}
    previous = data.get("previous")
    if isinstance(previous, dict) and previous.get("csv_sha256") == actual:
        return {**previous, "integrity": "ok"}
    return {**data, "integrity": "edited"}


def vectors_content(meta: dict[str, Any], sources: Any = None) -> str:
    """What a vectors file holds (one of :data:`CONTENTS`, or ``"unknown"``), from its sidecar.

    Sidecars written before ``content`` existed are read by what they carry: an autosave flag, a
    prediction's method or models with only predicted pairs; else by the pairs' sources. A CSV with
    neither sidecar nor sources is ``"unknown"``.
    """
    content = meta.get("content")
    if content in CONTENTS:
        return content
    if meta.get("autosave"):
        return "autosave"
    values = {str(s) for s in (sources if sources is not None else [])}
    if values & set(HUMAN_SOURCES):
        return "annotation"
    if values <= {"predicted"} and (values or "method" in meta or "models" in meta):
        return "prediction"
    if values and values <= {"simulated"}:
        return "ground-truth"
    return "unknown"


def read_vectors_content(path: str | os.PathLike) -> str:
    """:func:`vectors_content` of the file at ``path`` (``"unknown"`` where it cannot be read)."""
    try:
        pairs = read_pairs(path)
    except CellPolError:
        return "unknown"
    return vectors_content(pairs.meta, pairs.sources)


def prediction_name(stem: str) -> str:
    """``<stem>.pred.vectors.csv``: where the predictions for an image go."""
    return stem + PREDICTION_SUFFIX


def vectors_stem(name: str) -> tuple[Optional[str], str]:
    """``(stem, kind)`` of a vectors file name: ``"prediction"`` for ``<stem>.pred.vectors.csv``,
    ``"autosave"`` for ``<stem>.vectors.autosave.csv``, ``"annotation"`` for ``<stem>.vectors.csv``;
    ``(None, "")`` for anything else, hidden files included."""
    lower = name.lower()
    if name.startswith("."):
        return None, ""
    for suffix, kind in ((PREDICTION_SUFFIX, "prediction"), (AUTOSAVE_SUFFIX, "autosave"),
                         (VECTORS_SUFFIX, "annotation")):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return None, ""


def read_pairs(path: str | os.PathLike, voxel_size: Optional[Sequence[float]] = None) -> PairSet:
    """Read a project vectors CSV (and its sidecar, if present).

    ``voxel_size`` overrides the sidecar's. A header-only file is a valid, empty set.

    Raises
    ------
    FileFormatError
        Missing file, no header, missing columns, non-numeric or non-finite values.

    Examples
    --------
    >>> import tempfile
    >>> pairs = PairSet([[2, 10, 10]], [[2, 13, 14]], voxel_size=(1.0, 0.5, 0.5))   # (z, y, x) voxels
    >>> path = write_pairs(f"{tempfile.mkdtemp()}/cells.vectors.csv", pairs)
    >>> print(path.read_text().strip())
    nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z,score,id,source
    10,10,2,14,13,2,,0,manual
    >>> again = read_pairs(path)
    >>> again.voxel_size, again.meta["content"], again.lengths_um.round(2).tolist()
    ((1.0, 0.5, 0.5), 'annotation', [2.5])
    """
    path = Path(path)
    raw = _read_bytes(path)
    text = _decode(raw)
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        raise FileFormatError(f"{path}: the file is empty (expected a header {','.join(CSV_COLUMNS)}).")
    header = [cell.strip().lower() for cell in rows[0]]
    if _is_numeric_row(header):
        raise FileFormatError(
            f"{path}: no header row. The project format starts with {','.join(CSV_COLUMNS)}; "
            "for the authors' header-less annotation CSV use the legacy import (cellpol import-legacy / "
            "File ▸ Import legacy vectors)."
        )
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise FileFormatError(f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(header)}).")
    col = {name: header.index(name) for name in header}
    n = len(rows) - 1
    coords = np.zeros((n, 6))
    scores = np.full(n, np.nan)
    ids = np.arange(n, dtype=np.int64)
    sources = np.array(["imported"] * n, dtype=object)
    for r, row in enumerate(rows[1:]):
        line = r + 2
        for k, name in enumerate(CSV_COLUMNS):
            coords[r, k] = _parse_float(row, col[name], path, line, name)
        if "score" in col and col["score"] < len(row) and row[col["score"]].strip():
            scores[r] = _parse_float(row, col["score"], path, line, "score")
        if "id" in col and col["id"] < len(row) and row[col["id"]].strip():
            value = _parse_float(row, col["id"], path, line, "id")
            if value != int(value) or not ID_MIN <= value <= ID_MAX:
                raise FileFormatError(
                    f"{path}, line {line}: id must be a whole number between {ID_MIN} and {ID_MAX}, "
                    f"got {row[col['id']].strip()!r}.")
            ids[r] = int(value)
        if "source" in col and col["source"] < len(row) and row[col["source"]].strip():
            sources[r] = row[col["source"]].strip()
    if len(set(ids.tolist())) != n:
        raise FileFormatError(f"{path}: the id column has duplicates.")
    meta = read_sidecar(path, csv_bytes=raw)
    if voxel_size is None and meta.get("voxel_size_zyx_um"):
        try:
            voxel_size = parse_voxel_size(meta["voxel_size_zyx_um"])
        except CellPolError as exc:
            raise FileFormatError(f"{sidecar_path(path)}: {exc}") from None
    # CSV columns are x, y, z; PairSet stores z, y, x.
    nuclei = coords[:, [2, 1, 0]]
    golgi = coords[:, [5, 4, 3]]
    return PairSet(nuclei, golgi, voxel_size=voxel_size, scores=scores, ids=ids, sources=sources, meta=meta)


def _read_text(path: Path) -> str:
    return _decode(_read_bytes(path))


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileFormatError(f"{path}: no such file.")
    if path.is_dir():
        raise FileFormatError(f"{path}: is a folder, expected a CSV file.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read ({exc.strerror}).") from None
    if b"\x00" in raw[:4096]:
        raise FileFormatError(f"{path}: this is a binary file, not a CSV.")
    return raw


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _is_numeric_row(cells: Iterable[str]) -> bool:
    cells = [c for c in cells if c.strip()]
    if not cells:
        return False
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def _parse_float(row: Sequence[str], index: int, path: Path, line: int, name: str) -> float:
    if index >= len(row) or not row[index].strip():
        raise FileFormatError(f"{path}, line {line}: the {name} value is missing.")
    text = row[index].strip()
    try:
        value = float(text)
    except ValueError:
        raise FileFormatError(f"{path}, line {line}: {name} = {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise FileFormatError(f"{path}, line {line}: {name} = {text!r} is not a finite number.")
    return value


# ------------------------------------------------------------------------------------------
# Legacy formats
# ------------------------------------------------------------------------------------------
def read_legacy_csv(
    path: str | os.PathLike,
    one_based: bool = True,
    voxel_size: Optional[Sequence[float]] = None,
) -> PairSet:
    """Import the authors' header-less annotation CSV (Vector Annotation Tool / 3DCellPol).

    Six columns per row in their loader's order ``YN, XN, YG, XG, ZN, ZG`` where their "X" is the
    first array axis (row) and "Y" the second (column)::

        col_N, row_N, col_G, row_G, z_N, z_G

    Parameters
    ----------
    one_based : bool
        The older "Crop" files are MATLAB-style 1-based (subtract 1); files saved by their tool are
        0-based. A literal header line (e.g. ``YN,XN,ZN,YG,XG,ZG``) is skipped.
    """
    path = Path(path)
    text = _read_text(path)
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if rows and not _is_numeric_row(rows[0]):
        rows = rows[1:]
    if not rows:
        raise FileFormatError(f"{path}: no vectors in the file.")
    values = np.zeros((len(rows), 6))
    for r, row in enumerate(rows):
        cells = [c for c in row if c.strip()]
        if len(cells) != 6:
            raise FileFormatError(
                f"{path}, line {r + 1}: expected 6 values (YN,XN,YG,XG,ZN,ZG), found {len(cells)}."
            )
        for k in range(6):
            values[r, k] = _parse_float(cells, k, path, r + 1, "coordinate")
    offset = 1.0 if one_based else 0.0
    if one_based and np.any(values < 1.0):
        line, column = (int(i) for i in np.argwhere(values < 1.0)[0])
        names = ("YN", "XN", "YG", "XG", "ZN", "ZG")
        raise FileFormatError(
            f"{path}, line {line + 1}: {names[column]} = {values[line, column]:g}, which 1-based coordinates never "
            "hold (it would lie outside the image). The file is probably 0-based, as the annotation tool saves: "
            "import it as 0-based.", settings={"zero_based": True})
    col_n, row_n, col_g, row_g, z_n, z_g = (values[:, k] - offset for k in range(6))
    nuclei = np.stack([z_n, row_n, col_n], axis=1)
    golgi = np.stack([z_g, row_g, col_g], axis=1)
    meta = {"imported_from": str(path), "legacy_format": "authors-csv", "one_based": bool(one_based)}
    return PairSet(nuclei, golgi, voxel_size=voxel_size, sources="imported", meta=meta)


def write_legacy_csv(path: str | os.PathLike, pairs: PairSet, one_based: bool = False) -> Path:
    """Write the authors' header-less CSV (``col_N,row_N,col_G,row_G,z_N,z_G``), atomically; read back by
    :func:`read_legacy_csv` with the same ``one_based``. Their tool writes 0-based."""
    offset = 1.0 if one_based else 0.0
    lines = []
    for (nz, ny, nx), (gz, gy, gx) in zip(pairs.nuclei, pairs.golgi):
        values = [nx, ny, gx, gy, nz, gz]
        lines.append(",".join(repr(float(v + offset)) for v in values))
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path


def read_3dngmic_vectors(path: str | os.PathLike, voxel_size: Optional[Sequence[float]] = None) -> PairSet:
    """Import a 3DNGMic ``vectors/i.npy``: ``(N, 6) = [a0_N, a1_N, z_N, a0_G, a1_G, z_G]`` (a0 = row)."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file.")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FileFormatError(f"{path}: not a readable .npy array ({exc}).") from None
    if arr.size == 0:
        return PairSet.empty(voxel_size, sources="imported", meta={"imported_from": str(path)})
    if arr.ndim != 2 or arr.shape[1] != 6 or not np.issubdtype(arr.dtype, np.number):
        raise FileFormatError(f"{path}: expected an (N, 6) numeric array of vectors, got {arr.shape} {arr.dtype}.")
    arr = arr.astype(np.float64)
    nuclei = arr[:, [2, 0, 1]]
    golgi = arr[:, [5, 3, 4]]
    return PairSet(nuclei, golgi, voxel_size=voxel_size, sources="imported",
                   meta={"imported_from": str(path), "legacy_format": "3dngmic-npy"})


def write_3dngmic_vectors(path: str | os.PathLike, pairs: PairSet) -> Path:
    """Write a 3DNGMic ``vectors/*.npy`` atomically: ``(N, 6) = [a0_N, a1_N, z_N, a0_G, a1_G, z_G]`` float64."""
    arr = np.zeros((len(pairs), 6))
    if len(pairs):
        arr[:, [2, 0, 1]] = pairs.nuclei
        arr[:, [5, 3, 4]] = pairs.golgi
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, arr, allow_pickle=False)
    return path
