"""Greedy k-center on the stored RDS+ embedding: a diversity baseline (the core-set selection of Sener and
Savarese 2018, used as a data-selection baseline since), untargeted and reading features in its policy.

Farthest-first traversal: the first center is the row first in the seeded hash order (as ``random``
draws); each next center is the row farthest from every center chosen so far, ties by ascending id.
Distance: Euclidean between L2-normalised embeddings (``sqrt(2 - 2 cos)``), so it orders as cosine does.
The greedy set is a 2-approximation of the k-center optimum (Gonzalez 1985). Each row's recorded score
is its distance to the nearest earlier center when it was picked (2, the largest possible, for the first
center) and, for rows never picked, its distance to the nearest center: picks are non-increasing, so the
subset is the top of that score. Cost: k passes over the pool's [N, d] embedding, O(k·N·d): a 10 % budget is
quadratic in N (~2 min at 100k rows, hours at 1M on two cores).

Pools above ``exact_limit`` rows use the cell-restricted traversal instead. The rows are split into cells of
about ``cell_rows`` rows by seeded spherical k-means (fitted on a sample, every row then assigned to its
nearest centroid); each cell starts with one center, its row nearest the cell's mean direction (score 2, as
the first center); then every next center is the row farthest from the centers that cover it, over all
cells, where a center covers the rows of its own cell and of the ``neighbour_cells`` cells whose mean
directions are nearest: a pick costs one pass over those cells, O(k·cell_rows·(1 + neighbour_cells)·d) in
all. The picks are still non-increasing and each row records its distance to a center that covers it, so the
recorded covering radius is an upper bound on the true one (a row's nearest center may lie in a cell that
does not cover it). bench/kcenter.py compares both radii with exact farthest-first and with random rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.forward import FORWARD
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
from nait_pipeline.lib.methods.dump import Dump
from nait_pipeline.lib.methods.rds.rds import unit_rows
from nait_pipeline.lib.selection import policies as selection

EMBEDDING = "rds_embedding"
FIRST_CENTER_SCORE = 2.0  # the diameter of the unit sphere: above every later pick's distance
# The traversals keep each row's largest cosine to a center (the farthest row has the smallest): a center's own
# entry is set above every cosine so it is never picked again.
PICKED = np.float32(np.inf)


@dataclass(frozen=True)
class KCenterParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (ceil(r * N))."""
    seed: int = 0
    """Which row is the first center: the first in sha256(seed:id) order (exact); the k-means draws (cells)."""
    exact_limit: int = 100_000
    """Exact farthest-first up to this many rows (k passes over [N, d], quadratic in N: ~2 min at 100k rows of
    576 values on two cores for a 10 % budget); larger pools use the cell-restricted traversal."""
    cell_rows: int = 1024
    """Cell-restricted traversal: about this many rows per cell (never more cells than the budget's picks)."""
    neighbour_cells: int = 4
    """Cell-restricted traversal: a pick also covers the rows of this many cells nearest its own (more: a
    covering radius nearer exact's, a proportionally slower traversal; 4: 92 s at 1M rows, bench/kcenter.py)."""


def greedy_k_center(points: np.ndarray, k: int, first: int) -> tuple[list[int], np.ndarray]:
    """Farthest-first traversal of ``points`` (unit rows) from ``first``: (the k picks in order, each row's
    score as the module docstring defines it). Ties go to the lowest row index."""
    n = len(points)
    if not 0 < k <= n:
        raise MethodInputError(f"k-center needs 1 <= k <= {n} rows, got k={k}")
    chosen = [first]
    scores = np.empty(n, np.float64)
    scores[first] = FIRST_CENTER_SCORE
    closest = _cosines(points, points[first])
    closest[first] = PICKED
    for _ in range(k - 1):
        pick = int(np.argmin(closest))  # the farthest row; the first minimum: the lowest index among ties
        scores[pick] = _chord(closest[pick])
        chosen.append(pick)
        np.maximum(closest, _cosines(points, points[pick]), out=closest)
        closest[pick] = PICKED
    rest = np.ones(n, bool)
    rest[chosen] = False
    scores[rest] = _chord(closest[rest])
    return chosen, scores


def spherical_cells(points: np.ndarray, n_cells: int, seed: int, iterations: int = 8,
                    sample_per_cell: int = 32, block_rows: int = 65_536) -> np.ndarray:
    """[N] cell of each unit row: seeded spherical k-means with ``n_cells`` centroids fitted on a sample of
    ``sample_per_cell`` rows per cell, then every row assigned to its nearest centroid (blocked products)."""
    n = len(points)
    if not 0 < n_cells <= n:
        raise MethodInputError(f"cannot split {n} rows into {n_cells} cells")
    rng = np.random.default_rng(seed)
    sample = points[np.sort(rng.choice(n, size=min(n, n_cells * sample_per_cell), replace=False))]
    centroids = sample[np.sort(rng.choice(len(sample), size=n_cells, replace=False))]
    for _ in range(iterations):
        labels = np.argmax(sample @ centroids.T, axis=1)
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(sample[order], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        moved = norms[:, 0] > 0
        centroids[present[moved]] = sums[moved] / norms[moved]  # an emptied cell keeps its centroid
    cells = np.empty(n, np.int64)
    for start in range(0, n, block_rows):
        cells[start : start + block_rows] = np.argmax(points[start : start + block_rows] @ centroids.T, axis=1)
    return cells


def cell_k_center(points: np.ndarray, k: int, cells: np.ndarray, neighbour_cells: int = 0) -> tuple[list[int], np.ndarray]:
    """Cell-restricted farthest-first traversal of unit rows (the module docstring): (the k picks in order,
    each row's score). A pick covers the rows of its own cell and of the ``neighbour_cells`` cells whose mean
    directions are nearest its cell's. Ties go to the lowest cell, then the lowest row. Needs at most k
    non-empty cells."""
    n = len(points)
    if not 0 < k <= n:
        raise MethodInputError(f"k-center needs 1 <= k <= {n} rows, got k={k}")
    order = np.argsort(cells, kind="stable")  # rows grouped by cell, ascending inside each
    _, starts, counts = np.unique(cells[order], return_index=True, return_counts=True)
    if len(starts) > k:
        raise MethodInputError(f"{len(starts)} non-empty cells need at least as many picks, got k={k}")
    grouped = points[order]  # each cell's rows contiguous: a pick reads its cells only
    spans = [slice(start, start + count) for start, count in zip(starts.tolist(), counts.tolist())]
    cell_of = np.repeat(np.arange(len(spans)), counts)
    means = np.stack([grouped[span].sum(axis=0, dtype=np.float64) for span in spans])
    covered_by = _nearest_cells(means, neighbour_cells)  # [cells, 1 + neighbours]: itself first
    closest = np.full(n, -np.inf, grouped.dtype)  # grouped order: cosine to the closest center of the covering cells
    scores = np.empty(n, np.float64)
    cell_min = np.empty(len(spans), grouped.dtype)
    cell_argmin = np.empty(len(spans), np.int64)

    def cover(pick: int) -> None:
        for cell in covered_by[cell_of[pick]]:
            span = spans[cell]
            np.maximum(closest[span], _cosines(grouped[span], grouped[pick]), out=closest[span])

    def refresh(cell: int) -> None:
        cell_argmin[cell] = spans[cell].start + int(np.argmin(closest[spans[cell]]))
        cell_min[cell] = closest[cell_argmin[cell]]

    chosen: list[int] = []
    for span, mean in zip(spans, means):  # each cell's first center: its row nearest its mean direction
        first = span.start + (int(np.argmax(grouped[span] @ mean.astype(np.float32))) if np.any(mean) else 0)
        scores[first] = FIRST_CENTER_SCORE
        chosen.append(first)
    for first in chosen:
        cover(first)
    closest[chosen] = PICKED
    for cell in range(len(spans)):
        refresh(cell)
    while len(chosen) < k:
        cell = int(np.argmin(cell_min))
        pick = int(cell_argmin[cell])
        scores[pick] = _chord(closest[pick])
        chosen.append(pick)
        cover(pick)
        closest[pick] = PICKED
        for touched in covered_by[cell]:
            refresh(touched)
    picked = np.zeros(n, bool)
    picked[chosen] = True
    scores[~picked] = _chord(closest[~picked])
    by_row = np.empty(n, np.float64)
    by_row[order] = scores
    return order[chosen].tolist(), by_row


def _nearest_cells(means: np.ndarray, neighbours: int, block: int = 4096) -> np.ndarray:
    """[cells, 1 + neighbours]: each cell, then the ``neighbours`` others whose mean directions are nearest."""
    count = len(means)
    neighbours = min(neighbours, count - 1)
    if neighbours <= 0:
        return np.arange(count)[:, None]
    unit = (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    out = np.empty((count, 1 + neighbours), np.int64)
    for start in range(0, count, block):
        similarity = unit[start : start + block] @ unit.T
        rows = np.arange(start, min(start + block, count))
        similarity[rows - start, rows] = np.inf  # itself first
        top = np.argpartition(-similarity, neighbours, axis=1)[:, : neighbours + 1]
        ranked = np.take_along_axis(similarity, top, axis=1)
        out[rows] = np.take_along_axis(top, np.argsort(-ranked, axis=1, kind="stable"), axis=1)
    return out


def _cosines(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Cosines of unit rows to ``center``, clipped at 1 so that rows at distance 0 tie as their distances do."""
    return np.minimum(points @ center, np.float32(1.0))


def _chord(cosines) -> np.ndarray:
    """The Euclidean distance between unit vectors at these cosines (computed in float64)."""
    return np.sqrt(np.clip(2.0 - 2.0 * np.asarray(cosines, np.float64), 0.0, None))


def dump_embedding(dump: Dump, layout: LakeLayout, params: dict, capabilities: list[str]) -> dict:
    """The embedding the policy read, read as the policy reads it: rows in the dump's ``pool_ids.json`` order
    (sorted kept ids), with the same pool-version and coverage checks."""
    from nait_pipeline.lib.methods.run import selection_input

    inp = selection_input(layout, METHOD, [])
    dump.array(f"pool_{EMBEDDING}.npy", inp.pool_vectors(FORWARD, EMBEDDING, "the dump"),
               f"[N, d] {EMBEDDING} of every pool example (pool_ids.json order), from the store")
    return {}


def _select(inp: SelectionInput, params: KCenterParams) -> list[Chosen]:
    points = unit_rows(inp.pool_vectors(FORWARD, EMBEDDING, METHOD.name), "pool", inp.ids)
    n = len(inp.ids)
    k = selection.budget(n, params.budget_ratio)
    recorded = {"budget_ratio": params.budget_ratio, "seed": params.seed, "embedding": EMBEDDING,
                "distance": "euclidean on unit rows"}
    if n <= params.exact_limit:
        first = selection.seeded_random(inp.ids, 1, params.seed)[0]
        chosen, scores = greedy_k_center(points, k, first)
        recorded["traversal"] = "exact"
    else:
        if params.cell_rows < 1 or params.neighbour_cells < 0:
            raise MethodInputError(f"cell_rows must be >= 1 and neighbour_cells >= 0, got {params.cell_rows} and "
                                   f"{params.neighbour_cells}")
        n_cells = min(k, math.ceil(n / params.cell_rows))
        chosen, scores = cell_k_center(points, k, spherical_cells(points, n_cells, params.seed),
                                       params.neighbour_cells)
        recorded.update(traversal="cell-restricted", cells=n_cells, cell_rows=params.cell_rows,
                        neighbour_cells=params.neighbour_cells)
    radius = float(scores[chosen[-1]]) if k > 1 else FIRST_CENTER_SCORE
    recorded["covering_radius"] = round(radius, 6)  # cell-restricted: an upper bound on the true radius
    return [Chosen(ALL, chosen, scores, recorded, params.budget_ratio)]


METHOD = Method(
    name="kcenter",
    description="Greedy k-center (farthest-first traversal) on the stored RDS+ embedding: the most spread-out "
                "rows, a diversity baseline with no target.",
    scorer=None,
    params=KCenterParams,
    select=_select,
    policy="farthest-first: each pick the row farthest from every earlier pick (first: seeded)",
    source="core-set k-center (Sener & Savarese 2018; Gonzalez 1985), a diversity baseline",
    cost="the shared forward store (RDS+ embedding); k passes over [N, d] up to exact_limit rows, then k passes "
         "over (1 + neighbour_cells) cells of ~cell_rows rows each (plus a k-means)",
    recipe=("X = normalize(pool_rds_embedding); first = the id first in sha256(f'{seed}:{id}') order; then "
            "repeatedly the row with the largest min over centers of ||x - c|| (ties: the lowest id); keep "
            "ceil(budget_ratio * N) picks, in pick order. Above exact_limit rows the traversal is cell-restricted "
            "(kcenter.cell_k_center on kcenter.spherical_cells): compare the subset, not a re-run."),
    policy_reads=(FORWARD,),
    policy_vectors=(EMBEDDING,),
    dump_extra=dump_embedding,
)
