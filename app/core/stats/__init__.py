"""Polarity statistics: per vector, per image, per group, and between groups (issue 20).

Pure computation (numpy, scipy), no Qt. The ``cellpol stats`` job, its CSV/PDF output and figures live in
:mod:`app.core.stats.command` and :mod:`app.core.stats.figures`; this package's core is:

:mod:`app.core.stats.inputs`
    :class:`Reference` (a per-image reference axis or point), :class:`ImageVectors`,
    :func:`load_vectors` (vectors CSVs or folders), :func:`read_groups`, :func:`assign_groups`,
    :func:`read_references`, :func:`check_names`.
:mod:`app.core.stats.tables`
    :data:`AZIMUTH_CONVENTION`, :data:`DIRECTION_FRAME`, :class:`VectorTable` / :func:`vector_table` (one row
    per vector), :class:`Summary` / :func:`summarize` (per image or group, with bootstrap CIs over the
    experimental unit), :class:`GroupTest` / :func:`compare_groups` (between groups, images or animals as
    the unit, plus the per-cell Watson–Williams test with its caveat).
:mod:`app.core.stats.directional`
    The formulas: pure numpy/scipy functions on angles and unit vectors, each citing its source.
"""

from app.core.stats.inputs import (
    Reference,
    ImageVectors,
    load_vectors,
    read_groups,
    assign_groups,
    read_references,
    check_names,
    image_name,
    project_groups,
)
from app.core.stats.tables import (
    AZIMUTH_CONVENTION,
    DIRECTION_FRAME,
    VectorTable,
    vector_table,
    Summary,
    summarize,
    GroupTest,
    compare_groups,
    PER_CELL_CAVEAT,
)

__all__ = [
    "AZIMUTH_CONVENTION",
    "DIRECTION_FRAME",
    "PER_CELL_CAVEAT",
    "Reference",
    "ImageVectors",
    "load_vectors",
    "read_groups",
    "assign_groups",
    "read_references",
    "check_names",
    "image_name",
    "project_groups",
    "VectorTable",
    "vector_table",
    "Summary",
    "summarize",
    "GroupTest",
    "compare_groups",
]
