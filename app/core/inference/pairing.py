"""Pairing nuclei with Golgi (steps 6 and 7 of :mod:`app.core.inference`), and the pairing rule, written once.

The rule
--------
A *candidate edge* joins a nucleus and a Golgi peak at most ``d_max`` µm apart (:func:`candidate_edges`).
Each edge is judged in the one window holding both ends deepest inside
(:meth:`~app.core.inference.windows.WindowGrid.best_windows`); both embeddings are read from that
window's raw output (:func:`_read_embedding`). Then, per edge:

- **embedding cost** (:func:`embedding_cost`): ``|Δe| / Δ``, the mean over ensemble members of each
  member's own ``|Δe_m| / Δ_m``; ``inf`` for an edge no window holds. The edge is admissible where it is
  below 1 (the embeddings veto).
- **edge cost** (:func:`pairing_cost`): the embedding cost itself, or, with the model's weights
  ``w = pairing_distance_weight``, ``v = pairing_height_weight``, ``ρ = pairing_ridge_weight``::

      blend = (1 − w)·min(|Δe|/Δ, 1) + w·d/d_max
      blend = (1 − v)·blend + v·(1 − √(h_n·h_g))        (v > 0; √(h_n·h_g): :func:`peak_strength`)
      blend = blend + ρ·ridge_g                          (ρ > 0; ridge_g: ``ridge_scores`` of the Golgi)
      cost  = min(blend, 1 − 10⁻⁹) where |Δe|/Δ < 1, else inf

- **matching** (:func:`match_pairs`): one-to-one, maximising ``Σ edge_weight`` with
  :func:`edge_weight` ``= (1 − cost)·(1 − 0.01·d/d_max)`` (a tiny distance tie-break).
- **score** of an accepted pair (:func:`vector_scores`): ``√(h_n·h_g) × (1 − |Δe|/Δ)``, clipped to [0, 1].

Why each term
-------------
With all weights 0 (the paper) the matching maximises ``Σ (1 − |Δe|/Δ)`` over the chosen edges: a
maximum-weight matching prefers one confident pair over two doubtful ones, where a "pair as many as
possible" cost would force chains of marginal pairs. Calibration picks ``w``, because a small network's
embeddings may separate a cell from its neighbours less well than distance does. ``v`` blends in the
peaks' strength: most wrong pairs of the starters joined a right nucleus to a faint Golgi-channel peak (a
vessel, a speck) nearer than the right Golgi. ``ρ`` counts how far the Golgi peak sits on a tube of the
heatmap (a vessel) rather than a compact hill: the wrong peaks were as tall and as near as the right
Golgi, but more tube-like. The measurements behind each: ``benchmarks/RESULTS.md``, "Pairing rule".

Judging each edge in its best window needs only ``overlap ≥ d_max`` (one window then holds any segment of
length ≤ ``d_max``); owning each *nucleus* by one window would need ``overlap ≥ 2·d_max`` to guarantee its
Golgi is in the same window, about a third more network work on a CPU.

:func:`pair_by_embedding` runs these steps for ``cellpol`` models; ``ctrdet`` models (no embeddings) are
paired by distance alone (:func:`pair_by_distance_only`, i.e. :func:`app.core.classic.pair_by_distance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from app.core.classic import pair_by_distance
from app.core.inference.peaks import Peaks
from app.core.inference.windows import WindowGrid
from app.core.modelfile import DecodingSpec

#: Relative weight of distance in the pairing tie-break.
_DISTANCE_TIE_BREAK = 0.01
#: The highest finite edge cost: an admissible edge always keeps a positive weight in the matching.
_HIGHEST_COST = 1.0 - 1e-9
#: How a vector's score is computed (recorded in every prediction's provenance).
SCORE_FORMULA = "sqrt(h_nucleus * h_golgi) * (1 - |delta_e| / delta)"

#: The 27 offsets of a 3×3×3 neighbourhood, centre included.
_CUBE = np.stack(np.meshgrid(*(np.arange(-1, 2),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------------------------
def peak_strength(heights_nucleus: np.ndarray, heights_golgi: np.ndarray) -> np.ndarray:
    """``√(h_n·h_g)``, the geometric mean of two peak heights (each clipped to [0, 1]).

    Parameters
    ----------
    heights_nucleus, heights_golgi : ndarray
        Matching heights (one per edge or per pair).

    Returns
    -------
    ndarray
    """
    return np.sqrt(np.clip(heights_nucleus, 0.0, 1.0) * np.clip(heights_golgi, 0.0, 1.0))


def embedding_cost(member_distances: Sequence[np.ndarray], member_deltas: Sequence[float],
                   has_window: np.ndarray) -> np.ndarray:
    """``|Δe| / Δ`` per edge: the mean over ensemble members of ``|Δe_m| / Δ_m``; ``inf`` without a window.

    Parameters
    ----------
    member_distances : sequence of ndarray
        Per member, ``|e_n − e_g|`` of each edge that has a window (:func:`edge_embedding_distance`).
    member_deltas : sequence of float
        Per member, its push margin Δ.
    has_window : ndarray of bool
        Which edges a window holds (all edges, in order).

    Returns
    -------
    ndarray of float64
        One cost per edge; admissible where below 1.
    """
    cost = np.full(len(has_window), np.inf)
    if has_window.any():
        cost[has_window] = np.mean([d / delta for d, delta in zip(member_distances, member_deltas)], axis=0)
    return cost


def pairing_cost(embedding: np.ndarray, distance_um: np.ndarray, heights_nucleus: np.ndarray,
                 heights_golgi: np.ndarray, ridge_golgi: np.ndarray, decoding: DecodingSpec) -> np.ndarray:
    """The cost of each candidate edge: the pairing rule (module docstring), the only place it is computed.

    Parameters
    ----------
    embedding : ndarray
        :func:`embedding_cost` of each edge.
    distance_um : ndarray
        Length of each edge (µm).
    heights_nucleus, heights_golgi : ndarray
        Heatmap height of each edge's nucleus and Golgi peak (read where ``pairing_height_weight > 0``).
    ridge_golgi : ndarray
        Ridge score of each edge's Golgi peak (read where ``pairing_ridge_weight > 0``).
    decoding : DecodingSpec
        Its ``pairing_distance_weight``, ``pairing_height_weight``, ``pairing_ridge_weight`` and
        ``max_pair_distance_um``.

    Returns
    -------
    ndarray of float64
        One cost per edge, for :func:`match_pairs`: ``inf`` where the embeddings veto the edge; with all
        three weights 0, ``embedding`` itself.
    """
    weight, height_weight = decoding.pairing_distance_weight, decoding.pairing_height_weight
    ridge_weight = decoding.pairing_ridge_weight
    if not (weight > 0 or height_weight > 0 or ridge_weight > 0):
        return embedding
    # The embeddings still veto (|Δe| ≥ Δ stays inadmissible); among the rest, distance, the strength of
    # both peaks and how tube-like the Golgi peak is count too.
    blend = (1.0 - weight) * np.minimum(embedding, 1.0) + weight * distance_um / max(decoding.max_pair_distance_um,
                                                                                    1e-12)
    if height_weight > 0:
        blend = (1.0 - height_weight) * blend + height_weight * (1.0 - peak_strength(heights_nucleus, heights_golgi))
    if ridge_weight > 0:
        blend = blend + ridge_weight * ridge_golgi
    return np.where(embedding < 1.0, np.minimum(blend, _HIGHEST_COST), np.inf)


def edge_weight(cost: np.ndarray, distance_um: np.ndarray, d_max_um: float) -> np.ndarray:
    """The weight :func:`match_pairs` maximises: ``(1 − cost)·(1 − 0.01·d/d_max)`` (a tiny distance tie-break).

    Parameters
    ----------
    cost : ndarray
        :func:`pairing_cost` of admissible edges.
    distance_um : ndarray
        Their lengths (µm).
    d_max_um : float
        The longest admissible edge (µm).

    Returns
    -------
    ndarray of float64
    """
    return (1.0 - cost) * (1.0 - _DISTANCE_TIE_BREAK * distance_um / max(d_max_um, 1e-12))


def vector_scores(heights_nucleus: np.ndarray, heights_golgi: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The score of each accepted pair: ``√(h_n·h_g) × confidence`` in [0, 1] (:data:`SCORE_FORMULA`).

    Parameters
    ----------
    heights_nucleus, heights_golgi : ndarray
        Heatmap heights of each pair's peaks.
    confidence : ndarray
        ``1 − |Δe|/Δ`` of each pair (1 for pairs made without embeddings).

    Returns
    -------
    ndarray of float64
    """
    return np.clip(peak_strength(heights_nucleus, heights_golgi) * confidence, 0.0, 1.0)


def pairing_description(decoding: DecodingSpec) -> str:
    """How :func:`pair_by_embedding` paired with ``decoding``, in words (the prediction's ``meta["pairing"]``)."""
    weight, height_weight = decoding.pairing_distance_weight, decoding.pairing_height_weight
    ridge_weight = decoding.pairing_ridge_weight
    return ("embedding, max-weight matching" + (f", distance weight {weight:g}" if weight > 0 else "")
            + (f", peak-height weight {height_weight:g}" if height_weight > 0 else "")
            + (f", ridge weight {ridge_weight:g} at {decoding.ridge_radius_um:g} µm" if ridge_weight > 0 else ""))


# ----------------------------------------------------------------------------------------------
# Edges, embeddings, matching
# ----------------------------------------------------------------------------------------------
def candidate_edges(
    nuclei: np.ndarray, golgi: np.ndarray, voxel_size: Sequence[float], d_max_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (nucleus, Golgi) index pairs at most ``d_max_um`` apart, with their distances (µm).

    Parameters
    ----------
    nuclei, golgi : ndarray, shape (N, 3) and (M, 3)
        Positions (voxels ``(z, y, x)``).
    voxel_size : sequence of float
        ``(z, y, x)`` µm.
    d_max_um : float
        Longest edge (µm).

    Returns
    -------
    rows, cols : ndarray of int64
        Nucleus and Golgi index of each edge, sorted by nucleus then Golgi.
    distance_um : ndarray of float64
        Length of each edge.
    """
    if len(nuclei) == 0 or len(golgi) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    scale = np.asarray(voxel_size, dtype=np.float64)
    tree_n, tree_g = cKDTree(nuclei * scale), cKDTree(golgi * scale)
    found = tree_n.sparse_distance_matrix(tree_g, float(d_max_um), output_type="ndarray")
    order = np.lexsort((found["j"], found["i"]))
    found = found[order]
    return found["i"].astype(np.int64), found["j"].astype(np.int64), found["v"].astype(np.float64)


def match_pairs(
    n_nuclei: int,
    n_golgi: int,
    rows: np.ndarray,
    cols: np.ndarray,
    cost: np.ndarray,
    distance_um: np.ndarray,
    d_max_um: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one pairing over candidate edges by maximum-weight matching.

    Parameters
    ----------
    n_nuclei, n_golgi : int
        How many nuclei and Golgi there are.
    rows, cols : ndarray of int
        Nucleus and Golgi index of each candidate edge.
    cost : ndarray
        Cost of each edge (:func:`pairing_cost`; the normalised embedding distance ``|Δe| / Δ`` where no
        pairing weight is set); admissible where ``< 1``.
    distance_um : ndarray
        Length of each edge (µm); admissible where ``≤ d_max_um``.
    d_max_um : float
        Longest admissible edge (µm).

    Returns
    -------
    nucleus_index, golgi_index, edge_index : ndarray of int
        The accepted pairs and the candidate edge each came from.

    Notes
    -----
    The weight of an edge is :func:`edge_weight`, ``(1 − cost) × (1 − 0.01 × distance / d_max)``; the
    assignment maximises the summed weight, which equals minimising ``Σ cost`` with every detection left
    unpaired costing one half. It is solved with :func:`scipy.optimize.linear_sum_assignment` separately on
    each connected component of the candidate graph (the same optimum as one global problem, without an
    N×M dense matrix).

    Examples
    --------
    Two nuclei and two Golgi; nucleus 0 could take either Golgi, nucleus 1 only Golgi 1:

    >>> import numpy as np
    >>> rows, cols = np.array([0, 0, 1]), np.array([0, 1, 1])
    >>> cost, length_um = np.array([0.2, 0.6, 0.1]), np.array([3.0, 9.0, 4.0])
    >>> nuclei, golgi, edges = match_pairs(2, 2, rows, cols, cost, length_um, 14.0)
    >>> nuclei.tolist(), golgi.tolist(), edges.tolist()
    ([0, 1], [0, 1], [0, 2])

    Two nuclei want one Golgi: the cheaper edge wins and the other nucleus stays unpaired:

    >>> match_pairs(2, 1, np.array([0, 1]), np.array([0, 0]), np.array([0.3, 0.1]), np.array([3.0, 5.0]),
    ...             14.0)[0].tolist()
    [1]
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    cost, distance_um = np.asarray(cost, dtype=np.float64), np.asarray(distance_um, dtype=np.float64)
    ok = np.isfinite(cost) & (cost < 1.0) & (distance_um <= d_max_um)
    edges = np.flatnonzero(ok)
    empty = np.zeros(0, dtype=np.int64)
    if len(edges) == 0:
        return empty, empty, empty
    weight = edge_weight(cost[edges], distance_um[edges], d_max_um)
    graph = coo_matrix(
        (np.ones(len(edges)), (rows[edges], n_nuclei + cols[edges])), shape=(n_nuclei + n_golgi,) * 2
    )
    _, labels = connected_components(graph, directed=False)
    component = labels[rows[edges]]
    out_n, out_g, out_e = [], [], []
    for comp in np.unique(component):
        sel = edges[component == comp]
        w_sel = weight[component == comp]
        nuc, nuc_local = np.unique(rows[sel], return_inverse=True)
        gol, gol_local = np.unique(cols[sel], return_inverse=True)
        matrix = np.zeros((len(nuc), len(gol)))
        edge_of = np.full((len(nuc), len(gol)), -1, dtype=np.int64)
        matrix[nuc_local, gol_local] = w_sel
        edge_of[nuc_local, gol_local] = sel
        r, c = linear_sum_assignment(matrix, maximize=True)
        chosen = edge_of[r, c]
        good = chosen >= 0
        out_n.append(nuc[r[good]])
        out_g.append(gol[c[good]])
        out_e.append(chosen[good])
    order = np.argsort(np.concatenate(out_n), kind="stable")
    return (np.concatenate(out_n)[order], np.concatenate(out_g)[order], np.concatenate(out_e)[order])


def _read_embedding(window: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Mean of a ``(Z, Y, X)`` embedding window over the 3×3×3 neighbourhood (clipped) of each voxel."""
    local = np.asarray(local, dtype=np.int64).reshape(-1, 3)
    shape = np.asarray(window.shape)
    points = local[:, None, :] + _CUBE[None, :, :]  # (N, 27, 3)
    inside = np.all((points >= 0) & (points < shape), axis=2)
    points = np.clip(points, 0, shape - 1)
    values = window[points[..., 0], points[..., 1], points[..., 2]].astype(np.float64)
    return (values * inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)


def edge_embedding_distance(grid: WindowGrid, embeddings: dict[int, np.ndarray], window: np.ndarray,
                            ei: np.ndarray, ej: np.ndarray, vox_n: np.ndarray, vox_g: np.ndarray,
                            has_window: np.ndarray) -> np.ndarray:
    """``|e_n − e_g|`` of each edge with a window, both read from that window's raw output.

    Parameters
    ----------
    grid : WindowGrid
    embeddings : dict of int to ndarray
        One member's raw ``(2, z, y, x)`` embedding windows, keyed by window index.
    window : ndarray of int
        Each edge's window (``-1``: none).
    ei, ej : ndarray of int
        Each edge's nucleus and Golgi index.
    vox_n, vox_g : ndarray of int, shape (N, 3) and (M, 3)
        The nucleus and Golgi peak voxels.
    has_window : ndarray of bool
        ``window >= 0``.

    Returns
    -------
    ndarray of float64
        One distance per edge with a window, in edge order.
    """
    sel = np.flatnonzero(has_window)
    out = np.empty(len(sel))
    win = window[sel]
    for w in np.unique(win):
        rows = np.flatnonzero(win == w)
        edges = sel[rows]
        stored = embeddings[int(w)]
        origin = np.asarray(grid.origin(int(w)))
        limit = np.asarray(stored.shape[1:]) - 1
        local_n = np.clip(vox_n[ei[edges]] - origin, 0, limit)
        local_g = np.clip(vox_g[ej[edges]] - origin, 0, limit)
        e_n = _read_embedding(stored[0], local_n)
        e_g = _read_embedding(stored[1], local_g)
        out[rows] = np.abs(e_n - e_g)
    return out


# ----------------------------------------------------------------------------------------------
# One pairing pass
# ----------------------------------------------------------------------------------------------
@dataclass
class Pairing:
    """The accepted pairs of one pairing pass.

    Attributes
    ----------
    nucleus_index, golgi_index : ndarray of int
        Index of each pair's nucleus and Golgi peak.
    distance_um : ndarray
        Each pair's length (µm).
    confidence : ndarray
        ``1 − |Δe|/Δ`` of each pair (1 without embeddings).
    meta : dict
        Entries for the prediction's provenance (``pairing``, and edge counts for embedding pairing).
    """

    nucleus_index: np.ndarray
    golgi_index: np.ndarray
    distance_um: np.ndarray
    confidence: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairingRun:
    """What one embedding pairing pass works on (:func:`pair_by_embedding`), and what its steps add.

    Attributes
    ----------
    grid : WindowGrid
        The windows the network ran on.
    member_embeddings : list of dict
        Per ensemble member, its raw embedding windows keyed by window index.
    member_deltas : list of float
        Per member, the push margin Δ its embeddings are normalised by.
    nuclei, golgi : Peaks
    ridge : ndarray
        Ridge score of each Golgi peak (zeros where ``pairing_ridge_weight`` is 0).
    decoding : DecodingSpec
    voxel_size : tuple of float
        The model grid's ``(z, y, x)`` µm.
    """

    grid: WindowGrid
    member_embeddings: list[dict[int, np.ndarray]]
    member_deltas: list[float]
    nuclei: Peaks
    golgi: Peaks
    ridge: np.ndarray
    decoding: DecodingSpec
    voxel_size: tuple[float, float, float]
    # Filled by the steps, one row per candidate edge:
    edge_nucleus: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edge_golgi: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edge_distance_um: np.ndarray = field(default_factory=lambda: np.zeros(0))
    edge_window: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edge_embedding_cost: np.ndarray = field(default_factory=lambda: np.zeros(0))


def pair_by_embedding(run: PairingRun) -> Pairing:
    """Pair the peaks of ``run`` by the pairing rule (module docstring): edges, their windows, embedding
    costs, edge costs, matching.

    Parameters
    ----------
    run : PairingRun
        Its edge fields are filled on the way.

    Returns
    -------
    Pairing
    """
    _find_edges(run)
    _read_embedding_costs(run)
    nucleus_of, golgi_of = run.edge_nucleus, run.edge_golgi
    cost = pairing_cost(run.edge_embedding_cost, run.edge_distance_um, run.nuclei.heights[nucleus_of],
                        run.golgi.heights[golgi_of], run.ridge[golgi_of], run.decoding)
    d_max = run.decoding.max_pair_distance_um
    rows, cols, edge = match_pairs(len(run.nuclei.positions), len(run.golgi.positions), nucleus_of, golgi_of, cost,
                                   run.edge_distance_um, d_max)
    meta = {
        "pairing": pairing_description(run.decoding),
        "candidate_edges": int(len(nucleus_of)),
        "edges_without_common_window": int((run.edge_window < 0).sum()),
    }
    return Pairing(rows, cols, run.edge_distance_um[edge], 1.0 - run.edge_embedding_cost[edge], meta)


def _find_edges(run: PairingRun) -> None:
    """Candidate edges of ``run`` and the window each is judged in (``-1``: none holds both ends)."""
    nuclei, golgi = run.nuclei.positions, run.golgi.positions
    ei, ej, dist = candidate_edges(nuclei, golgi, run.voxel_size, run.decoding.max_pair_distance_um)
    run.edge_nucleus, run.edge_golgi, run.edge_distance_um = ei, ej, dist
    run.edge_window = (run.grid.best_windows(nuclei[ei], golgi[ej], run.voxel_size) if len(ei)
                       else np.zeros(0, dtype=np.int64))


def _read_embedding_costs(run: PairingRun) -> None:
    """:func:`embedding_cost` of every edge of ``run``, each member's embeddings read in the edge's window."""
    has_window = run.edge_window >= 0
    distances = []
    if has_window.any():
        distances = [edge_embedding_distance(run.grid, embeddings, run.edge_window, run.edge_nucleus, run.edge_golgi,
                                             run.nuclei.voxels, run.golgi.voxels, has_window)
                     for embeddings in run.member_embeddings]
    run.edge_embedding_cost = embedding_cost(distances, run.member_deltas, has_window)


def pair_by_distance_only(nuclei: Peaks, golgi: Peaks, voxel_size: Sequence[float], d_max_um: float) -> Pairing:
    """Pair ``ctrdet`` peaks (no embeddings) by distance alone (:func:`app.core.classic.pair_by_distance`).

    Parameters
    ----------
    nuclei, golgi : Peaks
    voxel_size : sequence of float
        The model grid's ``(z, y, x)`` µm.
    d_max_um : float
        Longest pair (µm).

    Returns
    -------
    Pairing
        Every confidence 1.
    """
    rows, cols = pair_by_distance(nuclei.positions, golgi.positions, voxel_size, d_max_um)
    dist = np.linalg.norm((nuclei.positions[rows] - golgi.positions[cols]) * np.asarray(voxel_size), axis=1)
    return Pairing(rows, cols, dist, np.ones(len(rows)), {"pairing": "distance (ctrdet)"})
