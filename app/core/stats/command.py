"""The ``cellpol stats`` job: vectors files in, the tables, figures and report of a polarity analysis out.

:func:`stats_job` reads the vectors (:func:`app.core.stats.load_vectors`), assigns groups and references,
computes the per-vector table, the summaries per image and per group and the between-group tests, and writes
them with :func:`write_outputs`, which the app's Statistics panel calls too, to export the same files from the
data it holds. Files written into the output folder:

``vectors.csv``
    One row per vector (:attr:`app.core.stats.VectorTable.COLUMNS`).
``summary.csv``
    One row per image, then one per group (:attr:`app.core.stats.Summary.COLUMNS`; ``level`` says which).
``tests.csv``
    The between-group tests (:attr:`app.core.stats.GroupTest.COLUMNS`, with each test's ``caveat``).
``vectors.json``, ``summary.json``, ``tests.json``
    Each CSV's sidecar: its SHA-256, columns and row count, and the provenance of the analysis
    (:func:`stats_provenance`: app version, every input with its SHA-256, the models and decoding of predictions
    as their sidecars record them, voxel sizes, reference, groups file, minimum score, azimuth convention, seed
    and resample counts).
``rose``, ``elevation``, ``equal_area``, ``lengths`` (``.png`` and ``.svg``)
    The figures of :mod:`app.core.stats.figures`, one panel per group.
``report.pdf``
    The inputs and the tests on the first page, then one page per group.

Floats are written with six decimals, except values below 10⁻³ in size, which keep six significant digits
(a Rayleigh p of 1e-20 is not written as 0); undefined values are empty cells.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from app import __version__
from app.core.errors import CellPolError
from app.core.evaluate.report import _rows_to_csv
from app.core.fileutil import atomic_write_json, atomic_write_text, ensure_folder, sha256_bytes, sha256_file
from app.core.jobs import CancelToken, Job, JobWarning, Progress, Result, check_cancel
from app.core.pairs import sidecar_path
from app.core.stats import (
    AZIMUTH_CONVENTION,
    DIRECTION_FRAME,
    GroupTest,
    ImageVectors,
    Reference,
    Summary,
    VectorTable,
    assign_groups,
    check_names,
    compare_groups,
    load_vectors,
    project_groups,
    read_groups,
    read_references,
    summarize,
    vector_table,
)

#: The CSV files :func:`write_outputs` writes (key of its result → file name); each has a ``<name>.json`` sidecar.
CSV_FILES = {"vectors": "vectors.csv", "summary": "summary.csv", "tests": "tests.csv"}
#: The PDF report's file name.
REPORT_FILE = "report.pdf"
#: ``format`` of the CSV sidecars.
SIDECAR_FORMAT = "cellpol-stats"
SIDECAR_VERSION = 1
#: Provenance entries copied from an input's vectors sidecar, where it has them (what made a prediction).
_INPUT_PROVENANCE_KEYS = ("method", "architecture", "decoding", "parameters", "ensemble_size", "pairing",
                          "score_rule", "image", "image_shape_zyx", "generator", "dataset_seed", "index")


@dataclass
class StatsResult:
    """What :func:`stats_job` returns.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    paths : dict of str to Path
        Every file written (:func:`write_outputs`' keys).
    table : VectorTable
        One row per vector.
    summaries : list of Summary
        Per image, then per group.
    tests : list of GroupTest
        Between groups (empty with one group).
    provenance : dict
        As written into the sidecars.
    warnings : list of str
        What the job warned about.
    """

    out_dir: Path
    paths: dict[str, Path]
    table: VectorTable
    summaries: list[Summary]
    tests: list[GroupTest]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def group_summaries(self) -> list[Summary]:
        return [s for s in self.summaries if s.level == "group"]


def stats_job(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    voxel_size: Optional[Sequence[float]] = None,
    reference: Optional[Reference] = None,
    reference_csv: Optional[str | os.PathLike] = None,
    groups_csv: Optional[str | os.PathLike] = None,
    min_score: Optional[float] = None,
    n_boot: int = 2000,
    n_perm: int = 5000,
    seed: int = 0,
    cancel: Optional[CancelToken] = None,
) -> Job:
    """Polarity statistics of vectors files, written into ``out_dir``: a job (:mod:`app.core.jobs`).

    Parameters
    ----------
    inputs : sequence of path
        Vectors CSVs and/or folders of them (predictions or annotations; :func:`app.core.stats.load_vectors`).
    out_dir : path
        Output folder (created if needed); the files are listed in the module's notes.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` µm for files whose sidecar records none.
    reference : Reference, optional
        One reference (axis or point) for every image.
    reference_csv : path, optional
        A reference per image (:func:`app.core.stats.read_references`); not with ``reference``.
    groups_csv : path, optional
        ``image,group[,animal]`` (:func:`app.core.stats.read_groups`); without it, the groups a project among
        the inputs gives its images (:func:`app.core.stats.inputs.project_groups`), else every image is in
        group ``all``.
    min_score : float, optional
        Predicted pairs scoring below it are left out.
    n_boot, n_perm, seed : int
        Bootstrap resamples for the confidence intervals, permutations for the between-group tests, and
        the seed of both.
    cancel : CancelToken, optional
        Polled between steps.

    Returns
    -------
    Job
        :class:`~app.core.jobs.Progress` after each step, a :class:`~app.core.jobs.JobWarning` for each image
        without vectors or without a reference, then :class:`~app.core.jobs.Result` with the
        :class:`StatsResult` (also the return value).

    Raises
    ------
    CellPolError
        Both ``reference`` and ``reference_csv``; a negative count; what the readers refuse (no vectors,
        unreadable files, a missing voxel size, a groups or references file naming images that are not among
        the inputs); an output folder that cannot be written.
    """
    if reference is not None and reference_csv is not None:
        raise CellPolError("Give one reference: a fixed axis or point for every image, or a references file, not "
                           "both.")
    _check_reference(reference)
    for name, value, least in (("n_boot", n_boot, 0), ("n_perm", n_perm, 0)):
        if int(value) != value or value < least:
            raise CellPolError(f"{name} must be a whole number >= {least}, got {value}.", settings={name: None})
    steps = 6
    # Inputs are read and checked before the first event, so a bad input is one message and no progress bar.
    images = load_vectors(inputs, voxel_size=voxel_size, min_score=min_score)
    check_cancel(cancel)
    groups = read_groups(groups_csv) if groups_csv is not None else project_groups(inputs)
    images = assign_groups(images, groups)
    references: Optional[dict[str, Reference]] = None
    if reference_csv is not None:
        references = read_references(reference_csv)
        check_names(list(references), images, "references file", str(reference_csv))
    out = ensure_folder(out_dir)  # after the inputs are checked: a bad input leaves no empty folder behind
    warnings = _input_warnings(images, references)
    for warning in warnings:
        yield JobWarning(warning)
    yield Progress(1, steps, f"Read {len(images)} image(s)")
    check_cancel(cancel)
    table = vector_table(images, references if references is not None else reference)
    yield Progress(2, steps, f"{len(table)} vectors")
    check_cancel(cancel)
    summaries = summarize(table, by="image", n_boot=n_boot, seed=seed)
    yield Progress(3, steps, "Summarised the images")
    check_cancel(cancel)
    summaries += summarize(table, by="group", n_boot=n_boot, seed=seed)
    yield Progress(4, steps, "Summarised the groups")
    check_cancel(cancel)
    tests = compare_groups(table, n_perm=n_perm, seed=seed)
    yield Progress(5, steps, "Compared the groups")
    check_cancel(cancel)
    settings = StatsSettings(voxel_size, reference, reference_csv, groups_csv, min_score, n_boot, n_perm, seed)
    provenance = stats_provenance(images, inputs, settings)
    paths = write_outputs(table, summaries, tests, out, provenance)
    result = StatsResult(out, paths, table, summaries, tests, provenance, warnings)
    yield Progress(6, steps, "Wrote the tables, figures and report")
    yield Result(result, f"{len(table)} vectors of {len(images)} image(s) in {out}")
    return result


def _check_reference(reference: Optional[Reference]) -> None:
    """Refuse a reference that is not an axis or a point of three finite numbers, or a zero axis."""
    if reference is None:
        return
    if reference.kind not in ("axis", "point"):
        raise CellPolError(f"A reference is an 'axis' or a 'point', got {reference.kind!r}.")
    xyz = np.asarray(reference.xyz, dtype=np.float64).reshape(-1)
    if xyz.size != 3 or not np.all(np.isfinite(xyz)):
        raise CellPolError(f"The reference {reference.kind} must be three finite numbers x y z, got {reference.xyz}.")
    if reference.kind == "axis" and not np.any(xyz):
        raise CellPolError("The reference axis is zero: give a direction x y z, e.g. 1 0 0 for the image's +x.")


def _input_warnings(images: Sequence[ImageVectors], references: Optional[Mapping[str, Reference]]) -> list[str]:
    """Images left without vectors (all filtered out, or an empty file) and, with a references file, images it
    gives no reference."""
    warnings = [f"{im.image}: no vectors (after the minimum score), left out of its group's statistics"
                for im in images if len(im.pairs) == 0]
    if references is not None:
        missing = [im.image for im in images if im.image not in references]
        if missing:
            warnings.append(f"No reference for {len(missing)} image(s) ({', '.join(missing[:5])}"
                            f"{', …' if len(missing) > 5 else ''}): their angles to the reference are left empty.")
    return warnings


# ------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatsSettings:
    """The settings of an analysis, as :func:`stats_job` takes them (see there), for :func:`stats_provenance`."""

    voxel_size: Optional[Sequence[float]] = None
    reference: Optional[Reference] = None
    reference_csv: Optional[str | os.PathLike] = None
    groups_csv: Optional[str | os.PathLike] = None
    min_score: Optional[float] = None
    n_boot: int = 2000
    n_perm: int = 5000
    seed: int = 0


def stats_provenance(images: Sequence[ImageVectors], inputs: Sequence[str | os.PathLike] = (),
                     settings: Optional[StatsSettings] = None, **options: Any) -> dict[str, Any]:
    """The provenance of an analysis of ``images`` (read from ``inputs``), for the sidecars and the report's first
    page (JSON-ready). The settings are ``settings``, or else ``options``, the fields of :class:`StatsSettings` by
    name (``stats_provenance(images, reference=axis, min_score=0.5)``).

    Keys: ``app_version``, ``created`` (UTC), ``inputs_given`` (the paths as given), ``inputs`` (per vectors file:
    ``image``, ``path``, ``sha256`` of the file read, ``content``, ``n_vectors`` (after ``min_score``), its
    ``voxel_size_zyx_um`` and whether it came from the file's sidecar or the option, the sidecar's ``integrity``,
    ``group``, ``unit`` and, where its sidecar records them, what made it: ``method``, ``models`` (name, path,
    weights SHA-256), ``decoding`` (thresholds, minimum distances, …), ``generator`` …), ``models`` (every model
    once), ``voxel_size_option_zyx_um``, ``reference`` (``{"kind": "axis"|"point", "xyz", "units"}``, or
    ``{"kind": "per-image", "path", "sha256"}``, or ``None``), ``groups_file`` (``{"path", "sha256"}`` or
    ``None``), ``min_score``, ``azimuth_convention``, ``direction_frame``, ``n_boot``, ``n_perm``, ``seed``,
    ``n_images``, ``n_vectors`` and ``groups`` (group → number of images).
    """
    if settings is None:
        settings = StatsSettings(**options)
    elif options:
        raise TypeError("stats_provenance takes settings or options by name, not both")
    voxel_size = settings.voxel_size
    records = [_input_record(im, voxel_size) for im in images]
    models: list[dict[str, Any]] = []
    for record in records:
        for model in record.get("models", []):
            if model not in models:
                models.append(model)
    groups: dict[str, int] = {}
    for im in images:
        groups[im.group] = groups.get(im.group, 0) + 1
    return {
        "app_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs_given": [str(Path(p)) for p in inputs],
        "inputs": records,
        "models": models,
        "voxel_size_option_zyx_um": None if voxel_size is None else [float(v) for v in voxel_size],
        "reference": _reference_record(settings.reference, settings.reference_csv),
        "groups_file": _file_record(settings.groups_csv),
        "min_score": None if settings.min_score is None else float(settings.min_score),
        "azimuth_convention": AZIMUTH_CONVENTION,
        "direction_frame": DIRECTION_FRAME,
        "n_boot": int(settings.n_boot),
        "n_perm": int(settings.n_perm),
        "seed": int(settings.seed),
        "n_images": len(images),
        "n_vectors": int(sum(len(im.pairs) for im in images)),
        "groups": groups,
    }


def _input_record(image: ImageVectors, voxel_size: Optional[Sequence[float]]) -> dict[str, Any]:
    meta = dict(image.pairs.meta or {})
    record: dict[str, Any] = {
        "image": image.image,
        "path": str(Path(image.source).resolve()),
        "sha256": sha256_file(image.source),
        "content": image.kind or meta.get("content", "unknown"),
        "n_vectors": len(image.pairs),
        "voxel_size_zyx_um": None if image.pairs.voxel_size is None else [float(v) for v in image.pairs.voxel_size],
        "voxel_size_from": "sidecar" if meta.get("voxel_size_zyx_um") else ("option" if voxel_size else "unknown"),
        "sidecar_integrity": meta.get("integrity", "no sidecar"),
        "group": image.group,
        "unit": image.unit,
    }
    if isinstance(meta.get("models"), list):
        record["models"] = [{k: m.get(k) for k in ("name", "path", "weights", "weights_sha256", "images")
                             if m.get(k) is not None} for m in meta["models"] if isinstance(m, dict)]
    for key in _INPUT_PROVENANCE_KEYS:
        if key in meta:
            record[key] = meta[key]
    return record


def _file_record(path: Optional[str | os.PathLike]) -> Optional[dict[str, str]]:
    if path is None:
        return None
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def _reference_record(reference: Optional[Reference], reference_csv: Optional[str | os.PathLike]) -> Any:
    if reference_csv is not None:
        return {"kind": "per-image", **(_file_record(reference_csv) or {})}
    if reference is None:
        return None
    units = ("voxels of each image (x = column, y = row, z = slice, 0-based)" if reference.kind == "point"
             else "a direction (x, y, z) in µm space, y along the rows, z towards deeper slices")
    return {"kind": reference.kind, "xyz": [float(v) for v in reference.xyz], "units": units}


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def _csv_value(value: Any) -> Any:
    """Small floats as six significant digits (``_rows_to_csv`` writes six decimals, which would make a p of
    1e-20 a 0); everything else as ``_rows_to_csv`` writes it."""
    if isinstance(value, (float, np.floating)) and value == value and value != 0.0 and abs(value) < 1e-3:
        return f"{float(value):.6g}"
    return value


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    return _rows_to_csv([{c: _csv_value(row.get(c, "")) for c in columns} for row in rows], columns)


def _test_rows(tests: Sequence[GroupTest]) -> list[dict[str, Any]]:
    rows = []
    for test in tests:
        row = dict(test.row())
        if not row.get("caveat"):
            row["caveat"] = test.caveat
        rows.append(row)
    return rows


def write_csv_with_sidecar(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                           provenance: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``rows`` as a CSV and its ``.json`` sidecar (the CSV's SHA-256, columns, row count and
    ``provenance``), each atomically, the sidecar first (as :func:`app.core.pairs.write_pairs` does); the paths."""
    path = Path(path)
    text = _csv_text(rows, columns)
    side = sidecar_path(path)
    atomic_write_json(side, {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "file": path.name,
        "csv_sha256": sha256_bytes(text.encode("utf-8")),
        "columns": list(columns),
        "n_rows": len(rows),
        **dict(provenance),
    })
    atomic_write_text(path, text)
    return path, side


def write_outputs(
    table: VectorTable,
    summaries: Sequence[Summary],
    tests: Sequence[GroupTest],
    out_dir: str | os.PathLike,
    provenance: Mapping[str, Any],
) -> dict[str, Path]:
    """Write the tables (with sidecars), the figures and the PDF report of an analysis into ``out_dir``.

    The app's Statistics panel calls this to export what it shows; ``provenance`` is :func:`stats_provenance`'s
    (or any JSON-ready mapping).

    Returns
    -------
    dict
        ``vectors``, ``summary``, ``tests`` (CSVs), ``vectors_sidecar``, ``summary_sidecar``, ``tests_sidecar``,
        ``<figure>_png`` / ``<figure>_svg`` for each of :data:`app.core.stats.figures.FIGURES`, and ``report``.
    """
    from app.core.stats.figures import save_group_figures, write_report

    out = ensure_folder(out_dir)
    paths: dict[str, Path] = {}
    tables = {
        "vectors": (table.rows(), VectorTable.COLUMNS),
        "summary": ([s.row() for s in summaries], Summary.COLUMNS),
        "tests": (_test_rows(tests), GroupTest.COLUMNS),
    }
    for key, (rows, columns) in tables.items():
        paths[key], paths[f"{key}_sidecar"] = write_csv_with_sidecar(out / CSV_FILES[key], rows, columns, provenance)
    paths.update(save_group_figures(table, out))
    paths["report"] = write_report(out / REPORT_FILE, table, summaries, tests, provenance)
    return paths


# ------------------------------------------------------------------------------------------
# The short table the command prints
# ------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if value != value:
        return "—"
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def format_summary(result: StatsResult) -> str:
    """The groups' summaries and the between-group tests as a short plain-text table (what ``cellpol stats``
    prints at the end)."""
    lines = [f"{'group':<16} {'cells':>6} {'units':>5} {'mean az°':>8} {'R̄ 2D':>6} {'Rayleigh p 2D':>13} "
             f"{'(units)':>8} {'R̄ 3D':>6} {'Rayleigh p 3D':>13} {'(units)':>8}"]
    for s in result.group_summaries:
        row = s.row()
        lines.append(f"{str(s.name)[:16]:<16} {s.n:>6} {s.n_units:>5} {_fmt(s.circular_mean_deg, 1):>8} "
                     f"{_fmt(s.polarity_index):>6} {_fmt(s.rayleigh_p):>13} {_fmt(row.get('rayleigh_units_p')):>8} "
                     f"{_fmt(s.mean_resultant_length):>6} {_fmt(s.rayleigh_3d_p):>13} "
                     f"{_fmt(row.get('rayleigh_3d_units_p')):>8}")
    lines.append("Rayleigh p: on the cells (pooled) and on the units' mean directions (one per image or animal; "
                 "the one to quote for a group).")
    if result.tests:
        lines += ["", "Between groups:"]
        for t in result.tests:
            lines.append(f"  {t.groups[0]} vs {t.groups[1]}: p = {_fmt(t.p, 4)} ({t.n_units[0]} vs {t.n_units[1]} "
                         f"{t.unit}) {t.name}")
        caveats = []
        for t in result.tests:
            if t.caveat and t.caveat not in caveats:
                caveats.append(t.caveat)
        lines += [f"  Caveat: {c}" for c in caveats]
    else:
        lines += ["", "One group: no between-group tests (give --groups to compare conditions)."]
    lines += ["", AZIMUTH_CONVENTION]
    return "\n".join(lines)
