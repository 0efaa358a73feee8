"""Reporting: the text table (:func:`format_table`) and the files of :func:`write_evaluation` (CSV tables, the
warnings, the curves PNG)."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from app.core.evaluate.protocol import MAF_LEVELS, N_LEVELS, PER_TP_METRICS
from app.core.evaluate.results import NO_PREDICTION, EvaluationResult, ImageScore, _metric_column
from app.core.fileutil import atomic_path, atomic_write_text, ensure_folder

#: Warnings :func:`format_table` prints before summarising the rest as a count.
MAX_TABLE_WARNINGS = 20


def _fmt(value: float, digits: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(result: EvaluationResult | ImageScore, max_warnings: int = MAX_TABLE_WARNINGS) -> str:
    """A fixed-width text table of the per-level metrics (aggregated, or of one image).

    Columns: level, MAF, τ_n, τ_g (µm), TP, FP, FN, TPR, FDR, mean signed cosine, mean vector error,
    ND and GD (µm). Undefined values print as "—". Below the table, when there is anything to say: the
    images without predictions (counted as FN), the predictions without ground truth, and the
    warnings (the first ``max_warnings``, then how many more; :func:`write_evaluation` saves them all).
    """
    if isinstance(result, EvaluationResult):
        title = f"{result.n_images} image(s), {result.protocol.upper()} protocol"
        if result.missing:
            title += f"; {len(result.missing)} without predictions (their ground truth counted as FN)"
    else:
        title = f"{result.name}, {result.protocol.upper()} protocol"
        if result.status == NO_PREDICTION:
            title += f"; {NO_PREDICTION} (its ground truth counted as FN)"
    columns = [
        ("level", 5), ("MAF", 5), ("τ_n", 6), ("τ_g", 6), ("TP", 6), ("FP", 6), ("FN", 6),
        ("TPR", 6), ("FDR", 6), ("cos", 6), ("error", 7), ("ND", 6), ("GD", 6),
    ]
    note = "(distances in µm; cos = mean signed cosine in µm space"
    note += "; TP/FP/FN summed, the rest averaged over images)" if isinstance(result, EvaluationResult) else ")"
    header = " ".join(name.rjust(width) for name, width in columns)
    lines = [title, note, header, "-" * len(header)]
    for level in range(N_LEVELS):
        cells = [
            str(level), f"{MAF_LEVELS[level]:.2f}", f"{result.tau_nucleus[level]:.1f}",
            f"{result.tau_golgi[level]:.1f}", str(int(result.tp[level])), str(int(result.fp[level])),
            str(int(result.fn[level])), _fmt(result.tpr[level], 3), _fmt(result.fdr[level], 3),
            _fmt(result.mean["cos"][level], 3), _fmt(result.mean["error"][level], 2),
            _fmt(result.mean["nd"][level], 2), _fmt(result.mean["gd"][level], 2),
        ]
        lines.append(" ".join(cell.rjust(width) for cell, (_, width) in zip(cells, columns)))
    lines += _report_lines(result, max_warnings)
    return "\n".join(lines) + "\n"


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _report_lines(result: EvaluationResult | ImageScore, max_warnings: int) -> list[str]:
    """What the table's numbers do not show: missing and skipped files, then the warnings."""
    lines: list[str] = []
    if isinstance(result, EvaluationResult):
        if result.missing:
            n_fn = sum(s.n_gt for s in result.images if s.status == NO_PREDICTION)
            lines.append(
                f"Images without predictions: {len(result.missing)} of {result.n_images} "
                f"({_name_list(result.missing)}); their {n_fn} ground-truth pair(s) count as misses (FN)."
            )
        if result.skipped:
            lines.append(
                f"Predictions without ground truth (not scored): {len(result.skipped)} ({_name_list(result.skipped)})."
            )
    warnings = result.warnings
    if warnings:
        shown = warnings[: max(int(max_warnings), 0)]
        lines.append(f"Warnings ({len(warnings)}):")
        lines += [f"  - {w}" for w in shown]
        if len(warnings) > len(shown):
            lines.append(f"  … and {len(warnings) - len(shown)} more (all in {WARNINGS_FILE} when written).")
    return [""] + lines if lines else []


def _csv_cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return ""
        text = f"{float(value):.6f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def _rows_to_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row[c]) for c in columns])
    return buffer.getvalue()


def _metric_columns() -> list[str]:
    cols = ["tp", "fp", "fn", "tpr", "fdr", "fnr"]
    for key in PER_TP_METRICS:
        column = _metric_column(key)
        if column.endswith("_um"):
            base = column[: -len("_um")]
            cols += [f"{base}_mean_um", f"{base}_std_um"]
        else:
            cols += [f"{key}_mean", f"{key}_std"]
    return cols


_LEVEL_COLUMNS = ["level", "maf", "tau_nucleus_um", "tau_golgi_um"]
PER_IMAGE_COLUMNS = ["image", "status"] + _LEVEL_COLUMNS + ["n_gt", "n_pred"] + _metric_columns()
SUMMARY_COLUMNS = _LEVEL_COLUMNS + ["n_images", "n_images_without_prediction"] + _metric_columns()
#: Written by :func:`write_evaluation`: every warning, one a line.
WARNINGS_FILE = "evaluation_warnings.txt"
PER_TP_COLUMNS = (
    ["image"] + _LEVEL_COLUMNS + ["gt_index", "pred_index", "gt_id", "pred_id"]
    + [_metric_column(k) for k in PER_TP_METRICS]
)


def write_evaluation(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the evaluation tables and curves into ``out_dir`` (created if needed), atomically.

    Files: ``evaluation_per_image.csv`` (image × level, with each image's ``status``: ``scored`` or
    ``no prediction file``), ``evaluation_summary.csv`` (aggregate per level, with
    ``n_images_without_prediction``), ``evaluation_per_tp.csv`` (one row per TP and level),
    ``evaluation_curves.png`` (TPR, FDR, cosine similarity, error norm, ND and GD vs level τL; shaded
    bands are ± the image-averaged standard deviation, thin grey lines the individual images) and
    ``evaluation_warnings.txt`` (every warning, one a line; "No warnings." when there are none, so a
    report from an earlier run in the same folder is never left behind). Undefined values are empty
    cells.

    Returns
    -------
    dict
        ``{"per_image", "summary", "per_tp", "curves", "warnings"}`` → path.
    """
    out = ensure_folder(out_dir)
    paths = {
        "per_image": out / "evaluation_per_image.csv",
        "summary": out / "evaluation_summary.csv",
        "per_tp": out / "evaluation_per_tp.csv",
        "curves": out / "evaluation_curves.png",
        "warnings": out / WARNINGS_FILE,
    }
    atomic_write_text(paths["per_image"], _rows_to_csv(result.per_image_rows(), PER_IMAGE_COLUMNS))
    atomic_write_text(paths["summary"], _rows_to_csv(result.summary_rows(), SUMMARY_COLUMNS))
    atomic_write_text(paths["per_tp"], _rows_to_csv(result.per_tp_rows(), PER_TP_COLUMNS))
    _write_curves(result, paths["curves"])
    atomic_write_text(paths["warnings"], "".join(f"{w}\n" for w in result.warnings) or "No warnings.\n")
    return paths


#: The six curves of the paper against τL, in the order they are drawn (two rows of three): title, what is plotted
#: (``"tpr"``/``"fdr"``, or a per-TP metric whose image-averaged mean is plotted, see :func:`curve_values`) and the
#: y range (``None``: from the data). The curves PNG and the window's Evaluate panel draw these.
CURVES: tuple[tuple[str, str, Optional[tuple[float, float]]], ...] = (
    ("TPR", "tpr", (0.0, 1.02)),
    ("FDR", "fdr", (0.0, 1.02)),
    ("Cosine similarity (signed, µm)", "cos", (-1.02, 1.02)),
    ("Vector error (µm)", "error", None),
    ("Nucleus distance ND (µm)", "nd", None),
    ("Golgi distance GD (µm)", "gd", None),
)


def curve_values(result: EvaluationResult, key: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The values of the curve ``key`` (of :data:`CURVES`) per level and their spread (the image-averaged standard
    deviation; ``None`` for the rates)."""
    if key in ("tpr", "fdr"):
        return getattr(result, key), None
    return result.mean[key], result.std[key]


def write_set_summaries(results: Mapping[str, EvaluationResult], path: str | os.PathLike) -> Path:
    """Write the per-level summaries of several evaluations (prediction sets scored against one ground truth) into
    one CSV, atomically: the columns of ``evaluation_summary.csv`` after a ``set`` column naming each set."""
    rows = [{"set": label, **row} for label, result in results.items() for row in result.summary_rows()]
    atomic_write_text(path, _rows_to_csv(rows, ["set"] + SUMMARY_COLUMNS))
    return Path(path)


def _write_curves(result: EvaluationResult, path: Path) -> None:
    # Deliberately lazy: matplotlib takes ~0.3 s to import and only this file needs it; scoring never draws
    # (training's validation, the app's comparison with a reference), and importing app.core.evaluate must not
    # load it (tests/test_evaluate.py). Figure + Agg canvas directly: no pyplot global state, no GUI backend,
    # safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = np.arange(N_LEVELS)
    per_image = len(result.images) > 1
    panels = [(title, *curve_values(result, key), ylim) for title, key, ylim in CURVES]
    figure = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3, sharex=True)
    for ax, (title, values, spread, ylim) in zip(axes.ravel(), panels):
        if per_image and title in ("TPR", "FDR"):
            for image in result.images:  # thin grey lines: the spread between images
                ax.plot(levels, image.tpr if title == "TPR" else image.fdr, color="0.8", lw=0.8)
        ax.plot(levels, values, marker="o", ms=4, color="tab:blue")
        if spread is not None:
            low, high = values - spread, values + spread
            ax.fill_between(levels, low, high, color="tab:blue", alpha=0.15, lw=0)
        if title.startswith("Cosine"):
            ax.plot(levels, result.mean["cos_paper"], marker=".", ls="--", color="tab:orange",
                    label="paper |cos| (voxels)")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_title(title, fontsize=10)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(True, alpha=0.3)
        ax.set_xticks(levels)
    for ax in axes[1]:
        ax.set_xlabel("level τL (0 = MAF 0.75 … 13 = MAF 0.10)")
    figure.suptitle(
        f"3DCellPol scoring, {result.protocol.upper()} protocol, {result.n_images} image(s); "
        f"TP/FP/FN at τL 0: {int(result.tp[0])}/{int(result.fp[0])}/{int(result.fn[0])}",
        fontsize=11,
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
