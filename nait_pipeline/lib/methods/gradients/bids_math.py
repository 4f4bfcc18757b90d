"""BIDS (Dai et al. 2025; methods.md section 7): influence normalised per target instance, then picked
for the target the subset serves worst.

1. Column z-score of LESS's instance matrix over the pool: ``An(i, j) = (A(i, j) - mu_j) / sigma_j``
   (population std). A column with sigma 0 (every pool row equally influential on that target) carries
   no ranking: it is an error naming the target ids.
2. Iterative balanced greedy: with the selected set T (empty at first),
   ``gain(i, j) = An(i, j) - mean_{t in T} An(t, j)`` (0 for an empty T), ``utility(i) = max_j gain(i, j)``;
   add the row of largest utility; repeat B times. Ties: the lowest row index.
3. Exact and fast (section 7.2 step 4): ``max_i max_j gain = max_j (max_i An(i, j) - mu_T(j))`` because
   ``mu_T(j)`` does not depend on i. Each column keeps its rows sorted by (An descending, index) and a
   pointer to its best row not yet taken; a step picks the column with the largest gap, takes its best
   row (the lowest index among tied columns' heads, which is the naive loop's tie rule), and updates
   every ``mu_T`` in O(m). A pointer only moves past taken rows, at most B - 1 plus the excluded ones,
   so a column needs only its first ``B + excluded`` rows in that order (a partition, then a sort of
   those): O(N m) + O(B m log B) and a [B, m] index instead of [N, m], the same picks as the naive
   O(B N m).

Variant ``task`` columns: the mean of the z-scored columns of each task, then the same greedy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BidsInputError(ValueError):
    """A matrix BIDS cannot normalise or a budget it cannot fill."""


def column_zscore(matrix: np.ndarray, target_ids: Sequence[str], block_columns: int = 16) -> np.ndarray:
    """[N, m] float32 z-scores of each column over the pool rows. A few columns at a time: the float64
    temporaries of the whole matrix at once were 4x its size (9 GB peak for 1M x 256); each column's numbers
    are the same either way."""
    if len(matrix) < 2:
        raise BidsInputError(f"column z-scores need at least 2 pool rows, got {len(matrix)}")
    out = np.empty(matrix.shape, np.float32)
    flat = []
    for start in range(0, matrix.shape[1], block_columns):
        block = matrix[:, start : start + block_columns]
        mean = block.mean(axis=0, dtype=np.float64)
        std = block.std(axis=0, dtype=np.float64)
        flat += (start + np.flatnonzero(~(std > 0))).tolist()
        out[:, start : start + block_columns] = (block - mean) / std
    if flat:
        raise BidsInputError(f"target instance(s) {[target_ids[j] for j in flat[:10]]} have the same influence on "
                             "every pool row (std 0): their column cannot be normalised")
    return out


def task_columns(normalised: np.ndarray, tasks: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """[N, T]: the mean of each task's z-scored instance columns (tasks in order of first appearance)."""
    names = list(dict.fromkeys(tasks))
    labels = np.array([names.index(t) for t in tasks])
    return np.stack([normalised[:, labels == k].mean(axis=1) for k in range(len(names))], axis=1), names


def top_rows(column: np.ndarray, depth: int) -> np.ndarray:
    """The first ``depth`` rows of ``column`` by (value descending, row index): a stable argsort's prefix,
    from a partition (O(N)) and a sort of the rows at or above the depth-th value."""
    if depth >= len(column):
        return np.argsort(-column, kind="stable")
    threshold = np.partition(column, len(column) - depth)[len(column) - depth]
    candidates = np.flatnonzero(column >= threshold)  # ascending: a stable sort keeps ties in row order
    return candidates[np.argsort(-column[candidates], kind="stable")[:depth]]


def balanced_greedy(normalised: np.ndarray, budget: int, excluded: np.ndarray | None = None) -> list[int]:
    """Row indices in pick order. ``excluded`` rows (no gradient) are never picked."""
    n, m = normalised.shape
    taken = np.zeros(n, bool) if excluded is None else excluded.astype(bool).copy()
    if budget > n - int(taken.sum()):
        raise BidsInputError(f"budget {budget} exceeds the {n - int(taken.sum())} selectable rows")
    # Column-major int32 order: each column's first ``depth`` rows by (An descending, row index).
    depth = min(n, budget + int(taken.sum()))
    order = np.empty((depth, m), np.int32, order="F")
    for j in range(m):
        order[:, j] = top_rows(normalised[:, j], depth)
    columns = np.arange(m)
    pointer = np.zeros(m, np.int64)
    total = np.zeros(m, np.float64)
    picked: list[int] = []
    for step in range(budget):
        while True:
            heads = order[pointer, columns]
            stale = taken[heads]
            if not stale.any():
                break
            pointer[stale] += 1
        gap = normalised[heads, columns].astype(np.float64) - (total / step if step else 0.0)
        best = gap.max()
        row = int(heads[gap == best].min())
        picked.append(row)
        taken[row] = True
        total += normalised[row]
    return picked
