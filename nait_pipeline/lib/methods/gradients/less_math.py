"""LESS's influence arithmetic (methods.md sections 2 and 11), on unit-norm projected gradients.

- Instance matrix: ``A(z, v) = sum_c w_c * Gamma_c(z) . g_c(v)`` over checkpoints c, where the rows are
  unit vectors (so each dot product is a cosine) and ``w_c`` are the checkpoints' mean learning rates
  renormalised to sum 1. ``A`` is N x m, one column per target instance; BIDS starts from it.
- Capability score: the mean of A over each subtask's columns, then the max over subtasks:
  ``score(z) = max_s mean_{v in V_s} A(z, v)``.
  The official code reshapes the columns into equal, contiguous blocks per subtask; here each subtask's
  mean is over its own columns, which is the same number when the blocks are equal and contiguous and
  stays defined when subtasks have unequal sizes (BBH tasks with 2 and 3 examples, a user's file).
  :func:`official_blocks` says whether the columns have the official layout (the dump needs it).
- Combined features (G2IS): ``concat_c sqrt(w_c) * f_c``; a dot product of two of them is the weighted
  cosine sum above, and each has unit norm when its checkpoint rows do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nait_pipeline.lib.features.gradient_store import combined_features  # noqa: F401  (G2IS's features, built with the store)


class LessInputError(ValueError):
    """Checkpoint lists, weights or subtask labels that do not fit together."""


def _check(pool: Sequence[np.ndarray], targets: Sequence[np.ndarray], weights: Sequence[float]) -> None:
    if not (len(pool) == len(targets) == len(weights)) or not pool:
        raise LessInputError(f"need one pool and one target matrix per checkpoint weight: got {len(pool)} pool, "
                             f"{len(targets)} target matrices and {len(weights)} weights")
    if not np.isclose(sum(weights), 1.0):
        raise LessInputError(f"checkpoint weights must sum to 1, got {sum(weights)}")
    for p, t in zip(pool, targets):
        if p.shape[1] != t.shape[1]:
            raise LessInputError(f"pool and target gradients have different widths ({p.shape[1]} vs {t.shape[1]})")


def instance_matrix(pool: Sequence[np.ndarray], targets: Sequence[np.ndarray], weights: Sequence[float],
                    block_rows: int = 65_536) -> np.ndarray:
    """[N, m] float32: the learning-rate-weighted cosine of every pool row with every target row."""
    _check(pool, targets, weights)
    n, m = len(pool[0]), len(targets[0])
    out = np.zeros((n, m), np.float32)
    for start in range(0, n, block_rows):  # float64 accumulation, one block of rows at a time
        block = np.zeros((min(block_rows, n - start), m), np.float64)
        for p, t, w in zip(pool, targets, weights):
            block += w * (p[start : start + block_rows].astype(np.float32) @ t.astype(np.float32).T)
        out[start : start + block_rows] = block
    return out


def subtask_order(subtasks: Sequence[str]) -> list[str]:
    """Subtask names in order of first appearance."""
    return list(dict.fromkeys(subtasks))


def subtask_scores(matrix: np.ndarray, subtasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(score [N], index of the subtask that gave it [N], subtask names): max over subtasks of the mean
    over each subtask's columns. Ties go to the first subtask."""
    if matrix.shape[1] != len(subtasks):
        raise LessInputError(f"{matrix.shape[1]} target columns but {len(subtasks)} subtask labels")
    names = subtask_order(subtasks)
    labels = np.array([names.index(s) for s in subtasks])
    means = np.stack([matrix[:, labels == k].mean(axis=1, dtype=np.float64) for k in range(len(names))], axis=1)
    best = means.argmax(axis=1)
    return means[np.arange(len(matrix)), best], best, names


def official_blocks(subtasks: Sequence[str]) -> bool:
    """True when the columns come in equal, contiguous blocks per subtask: the layout the official
    ``matching.py`` reshapes (``reshape(N, n_subtasks, -1)``) and so reproduces exactly."""
    names = subtask_order(subtasks)
    if len(subtasks) % len(names):
        return False
    size = len(subtasks) // len(names)
    return all(subtasks[k * size : (k + 1) * size] == [name] * size for k, name in enumerate(names))
