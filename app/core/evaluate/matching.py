"""Matching predictions to ground truth: the paper's capped Hungarian assignment (rule 3 in
:mod:`app.core.evaluate`), dense (:func:`hungarian_match`) and within the cut-off radius, with a k-d tree and one
assignment per connected component (:func:`match_within_radius`)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from app.core.errors import CellPolError
from app.core.evaluate.protocol import CAPPED_COST

#: Components of the candidate graph up to this many rows × columns are solved densely
#: (:func:`scipy.optimize.linear_sum_assignment`); larger ones with the sparse LAPJVsp solver.
_DENSE_COMPONENT_ENTRIES = 1_000_000

#: Points per k-d tree query in :func:`match_within_radius` (bounds its working memory).
_QUERY_CHUNK = 65_536


def hungarian_match(cost_um: np.ndarray, cutoff_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One global assignment on ``cost_um`` with entries above ``cutoff_um`` set to 2000.

    Parameters
    ----------
    cost_um : ndarray, shape (n_rows, n_cols)
        ``dN + dG`` in µm. Not modified.
    cutoff_um : float
        Entries strictly greater than this become :data:`CAPPED_COST` (they may still be assigned).

    Returns
    -------
    rows, cols : ndarray of int, shape (min(n_rows, n_cols),)
        Assigned row and column indices.
    capped_cost : ndarray
        The assigned entries of the capped matrix.
    """
    cost = np.asarray(cost_um, dtype=np.float64)
    if cost.ndim != 2:
        raise CellPolError(f"A cost matrix must be 2D, got shape {cost.shape}.")
    if cost.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0)
    capped = np.where(cost > cutoff_um, CAPPED_COST, cost)
    rows, cols = linear_sum_assignment(capped)
    return rows.astype(np.int64), cols.astype(np.int64), capped[rows, cols]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distances, summed in the order :func:`scipy.spatial.distance.cdist` uses,
    so that a cost equal to the cut-off falls on the same side of it as in the dense matrix."""
    d = a - b
    return np.sqrt((d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2])


def match_within_radius(
    pred_nuclei_um: np.ndarray,
    pred_golgi_um: np.ndarray,
    gt_nuclei_um: np.ndarray,
    gt_golgi_um: np.ndarray,
    cutoff_um: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's capped Hungarian assignment without the dense cost matrix.

    Gives an optimum of :func:`hungarian_match` on ``cost = dN + dG`` (the same capped total, and the
    same matches among the entries the cap keeps wherever that optimum is unique, i.e. without exact
    ties), in time and memory proportional to the number of pairs within the cut-off instead of
    ``n_pred × n_gt``:

    1. Candidates: the prediction/ground-truth pairs with ``dN + dG <= cutoff_um`` (the entries the
       dense matrix keeps), found with a k-d tree on the 6-D points ``(nucleus, Golgi)``.
    2. They are matched to maximise ``Σ (2000 - cost)``, which is what minimising the capped total
       means. Their graph splits into connected components, each an independent assignment: solved
       with :func:`scipy.optimize.linear_sum_assignment` on the component's own capped matrix (or, for
       a component too large for that, the sparse LAPJVsp solver).
    3. The rows and columns left over are assigned to each other at the capped cost 2000, in index
       order, as the dense solver does for a block of equal entries (every choice gives the same
       capped total; a leftover pair still counts as TP at a level whose thresholds it passes).

    Parameters
    ----------
    pred_nuclei_um, pred_golgi_um : ndarray, shape (n_pred, 3)
        Predicted positions in µm (rows of the assignment).
    gt_nuclei_um, gt_golgi_um : ndarray, shape (n_gt, 3)
        Ground-truth positions in µm (columns).
    cutoff_um : float
        Costs strictly above this are capped to :data:`CAPPED_COST`.

    Returns
    -------
    rows, cols : ndarray of int, shape (min(n_pred, n_gt),)
        Assigned prediction and ground-truth indices, sorted by row.
    capped_cost : ndarray
        The capped cost of each assignment (``dN + dG``, or 2000).
    """
    pred_n, pred_g = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in (pred_nuclei_um, pred_golgi_um))
    gt_n, gt_g = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in (gt_nuclei_um, gt_golgi_um))
    n_rows, n_cols = len(pred_n), len(gt_n)
    n_assign = min(n_rows, n_cols)
    if n_assign == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0)

    # dN + dG <= cutoff implies sqrt(dN² + dG²) <= cutoff; the slack covers the tree's own rounding.
    reach = float(cutoff_um) * (1 + 1e-9) + 1e-9
    edge_row, edge_col = _pairs_within(np.hstack([pred_n, pred_g]), np.hstack([gt_n, gt_g]), reach)
    cost = _distances(pred_n[edge_row], gt_n[edge_col]) + _distances(pred_g[edge_row], gt_g[edge_col])
    kept = np.flatnonzero(cost <= cutoff_um)  # as cdist(N) + cdist(G) > cutoff: the same floats
    edge_row, edge_col, cost = edge_row[kept], edge_col[kept], cost[kept]
    del kept

    chosen = _max_weight_matching(edge_row, edge_col, cost)
    row_free = np.ones(n_rows, dtype=bool)
    col_free = np.ones(n_cols, dtype=bool)
    row_free[edge_row[chosen]] = False
    col_free[edge_col[chosen]] = False
    n_rest = n_assign - len(chosen)
    rows = np.concatenate([edge_row[chosen], np.flatnonzero(row_free)[:n_rest]])
    cols = np.concatenate([edge_col[chosen], np.flatnonzero(col_free)[:n_rest]])
    capped = np.concatenate([cost[chosen], np.full(n_rest, CAPPED_COST)])
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order], capped[order]


def _pairs_within(
    points: np.ndarray, others: np.ndarray, radius: float, chunk: int = _QUERY_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``‖points[i] - others[j]‖ <= radius``, in memory proportional to their number.

    Nearest-neighbour queries on a k-d tree of ``others`` (all cores for large sets), a chunk of points
    at a time; a point whose k nearest are all within reach is asked again with a larger k, so none is
    missed.
    """
    tree = cKDTree(others)
    found_rows, found_cols = [], []
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        todo = np.arange(len(block))
        k = 8
        while len(todo):
            k_used = min(k, tree.n)
            workers = -1 if len(todo) >= 16_384 else 1  # threads only pay off for many queries
            dist, index = tree.query(block[todo], k=k_used, distance_upper_bound=radius, workers=workers)
            dist, index = dist.reshape(len(todo), k_used), index.reshape(len(todo), k_used)
            hit = np.isfinite(dist)
            more = hit[:, -1] if k_used < tree.n else np.zeros(len(todo), dtype=bool)
            sub_row, sub_col = np.nonzero(hit & ~more[:, None])
            found_rows.append(start + todo[sub_row])
            found_cols.append(index[sub_row, sub_col].astype(np.int64))
            todo, k = todo[more], k * 4
    if not found_rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found_rows).astype(np.int64), np.concatenate(found_cols)


def _max_weight_matching(edge_row: np.ndarray, edge_col: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the edges of a matching that maximises ``Σ (2000 - cost)`` (all costs below 2000).

    This is the capped assignment restricted to these edges: every vertex left unmatched is a capped
    entry of the dense problem. Each connected component is solved on its own: a star (one row or one
    column) by its cheapest edge, others by :func:`scipy.optimize.linear_sum_assignment` on the
    component's capped matrix or, above :data:`_DENSE_COMPONENT_ENTRIES`, by the sparse solver.
    """
    n_edges = len(edge_row)
    if n_edges == 0:
        return np.zeros(0, dtype=np.int64)
    row_ids, local_row = np.unique(edge_row, return_inverse=True)
    col_ids, local_col = np.unique(edge_col, return_inverse=True)
    n_r, n_c = len(row_ids), len(col_ids)
    graph = coo_matrix((np.ones(n_edges, dtype=np.int8), (local_row, n_r + local_col)), shape=(n_r + n_c,) * 2)
    n_components, labels = connected_components(graph, directed=False)
    del graph
    component = labels[local_row]
    rows_in = np.bincount(labels[:n_r], minlength=n_components)
    cols_in = np.bincount(labels[n_r:], minlength=n_components)
    star = (rows_in == 1) | (cols_in == 1)

    picked = []
    # Stars: one edge at most can be matched; the cheapest (then the lowest indices) wins.
    edges = np.flatnonzero(star[component])
    if len(edges):
        edges = edges[np.lexsort((local_col[edges], local_row[edges], cost[edges], component[edges]))]
        first = np.ones(len(edges), dtype=bool)
        first[1:] = component[edges[1:]] != component[edges[:-1]]
        picked.append(edges[first])
    # The rest: one assignment per component.
    edges = np.flatnonzero(~star[component])
    if len(edges):
        edges = edges[np.argsort(component[edges], kind="stable")]
        for group in np.split(edges, np.flatnonzero(np.diff(component[edges])) + 1):
            picked.append(_solve_component(local_row[group], local_col[group], cost[group], group))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def _solve_component(row: np.ndarray, col: np.ndarray, cost: np.ndarray, edge_ids: np.ndarray) -> np.ndarray:
    """The matched ``edge_ids`` of one connected component (see :func:`_max_weight_matching`)."""
    rows, r = np.unique(row, return_inverse=True)
    cols, c = np.unique(col, return_inverse=True)
    n_r, n_c = len(rows), len(cols)
    if n_r * n_c <= _DENSE_COMPONENT_ENTRIES:
        capped = np.full((n_r, n_c), CAPPED_COST)
        capped[r, c] = cost
        edge_at = np.full((n_r, n_c), -1, dtype=np.int64)
        edge_at[r, c] = np.arange(len(cost))
        assigned = edge_at[linear_sum_assignment(capped)]
        return edge_ids[assigned[assigned >= 0]]
    # Sparse: a full matching on rows + a stand-in per column × columns + a stand-in per row. Leaving a
    # row or a column unmatched costs 1000 (half the cap, so a pair left out costs 2000, as capped);
    # stand-ins meet along the transposed edges. Weights are shifted by 1: LAPJVsp needs non-zero ones.
    n_e = len(cost)
    half = CAPPED_COST / 2
    src = np.concatenate([r, np.arange(n_r), n_r + np.arange(n_c), n_r + c])
    dst = np.concatenate([c, n_c + np.arange(n_r), np.arange(n_c), n_c + r])
    weight = np.concatenate([cost, np.full(n_r, half), np.full(n_c, half), np.zeros(n_e)]) + 1.0
    graph = csr_matrix((weight, (src, dst)), shape=(n_r + n_c, n_r + n_c))
    match_row, match_col = min_weight_full_bipartite_matching(graph)
    real = (match_row < n_r) & (match_col < n_c)
    lookup = csr_matrix((np.arange(1, n_e + 1), (r, c)), shape=(n_r, n_c))
    assigned = np.asarray(lookup[match_row[real], match_col[real]]).ravel() - 1
    return edge_ids[assigned]
