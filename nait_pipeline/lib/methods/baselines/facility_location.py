"""Facility location on the stored RDS+ embedding: the representativeness variant of the diversity
baselines, untargeted and reading features in its policy.

Maximise ``F(S) = sum_i max_{j in S} s(i, j)`` with ``s = (1 + cos) / 2`` in [0, 1] (non-negative, so F is
monotone submodular and greedy is within 1 - 1/e of the optimum; Nemhauser et al. 1978). Greedy: each
step adds the row whose gain ``sum_i max(0, s(i, c) - covered_i)`` is largest, ties by ascending id.
Exact greedy evaluates every candidate each step from the dense N x N similarity (pools of up to
``dense_limit`` rows); larger pools use stochastic greedy (Mirzasoleiman et al. 2015): each step
evaluates ``ceil(N / k * ln(1 / epsilon))`` candidates drawn by a seeded generator, in expectation within
1 - 1/e - epsilon. A row's recorded score is its gain when it was picked (picks have non-increasing
gains under exact greedy) and, for rows never picked, the gain it would have added last.
Cost: exact O(N^2 d) once plus O(k N^2); stochastic O(N^2 d ln(1/epsilon)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.forward import FORWARD
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
from nait_pipeline.lib.methods.baselines.kcenter import EMBEDDING, dump_embedding
from nait_pipeline.lib.methods.rds.rds import unit_rows
from nait_pipeline.lib.selection import policies as selection


@dataclass(frozen=True)
class FacilityLocationParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (ceil(r * N))."""
    dense_limit: int = 8192
    """Exact greedy on the dense N x N similarity up to this many rows (4 N^2 bytes: 256 MiB at 8,192)."""
    epsilon: float = 0.01
    """Stochastic greedy's slack beyond dense_limit: candidates per step ceil(N / k * ln(1 / epsilon))."""
    seed: int = 0
    """The candidate draws of stochastic greedy (unused by exact greedy)."""


def similarities(points: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """[N, c] ``(1 + cos) / 2`` of unit rows against the unit rows ``columns``."""
    return (1.0 + points @ columns.T) / 2.0


def greedy_facility_location(points: np.ndarray, k: int, dense_limit: int = 8192, epsilon: float = 0.01,
                             seed: int = 0) -> tuple[list[int], np.ndarray, str]:
    """(the k picks in order, each row's score, "exact" or "stochastic") for unit rows ``points``."""
    n = len(points)
    if not 0 < k <= n:
        raise MethodInputError(f"facility location needs 1 <= k <= {n} rows, got k={k}")
    if not 0 < epsilon < 1:
        raise MethodInputError(f"epsilon must be in (0, 1), got {epsilon}")
    exact = n <= dense_limit
    dense = similarities(points, points).astype(np.float64) if exact else None
    sample = n if exact else min(n, math.ceil(n / k * math.log(1 / epsilon)))
    rng = np.random.default_rng(seed)
    covered = np.zeros(n, np.float64)
    picked = np.zeros(n, bool)
    chosen: list[int] = []
    scores = np.zeros(n, np.float64)
    for _ in range(k):
        open_rows = np.flatnonzero(~picked)
        candidates = open_rows if exact or sample >= len(open_rows) else \
            np.sort(rng.choice(open_rows, size=sample, replace=False))
        columns = dense[:, candidates] if exact else similarities(points, points[candidates]).astype(np.float64)
        gains = np.maximum(columns - covered[:, None], 0.0).sum(axis=0)
        best = int(np.argmax(gains))  # the first maximum: the lowest row among ties (candidates are sorted)
        pick = int(candidates[best])
        scores[pick] = gains[best]
        chosen.append(pick)
        picked[pick] = True
        covered = np.maximum(covered, columns[:, best])
    rest = np.flatnonzero(~picked)
    for start in range(0, len(rest), 4096):  # what each unpicked row would still add, in bounded blocks
        block = rest[start : start + 4096]
        columns = dense[:, block] if exact else similarities(points, points[block]).astype(np.float64)
        scores[block] = np.maximum(columns - covered[:, None], 0.0).sum(axis=0)
    return chosen, scores, "exact" if exact else "stochastic"


def _select(inp: SelectionInput, params: FacilityLocationParams) -> list[Chosen]:
    points = unit_rows(inp.pool_vectors(FORWARD, EMBEDDING, METHOD.name), "pool", inp.ids)
    k = selection.budget(len(inp.ids), params.budget_ratio)
    chosen, scores, mode = greedy_facility_location(points, k, params.dense_limit, params.epsilon, params.seed)
    covered = similarities(points, points[chosen]).max(axis=1)
    return [Chosen(ALL, chosen, scores, {"budget_ratio": params.budget_ratio, "dense_limit": params.dense_limit,
                                         "epsilon": params.epsilon, "seed": params.seed, "greedy": mode,
                                         "embedding": EMBEDDING, "similarity": "(1 + cos) / 2",
                                         "mean_coverage": round(float(covered.mean()), 6)}, params.budget_ratio)]


METHOD = Method(
    name="facility_location",
    description="Facility location on the stored RDS+ embedding: rows that together best represent the whole "
                "pool (greedy on sum_i max_j similarity), a diversity baseline with no target.",
    scorer=None,
    params=FacilityLocationParams,
    select=_select,
    policy="greedy max gain in sum_i max_j (1 + cos)/2 (stochastic greedy past dense_limit rows)",
    source="facility location (Nemhauser et al. 1978; stochastic greedy, Mirzasoleiman et al. 2015)",
    cost="the shared forward store (RDS+ embedding); O(N² d) similarity + O(k N²) greedy",
    recipe=("X = normalize(pool_rds_embedding); S = (1 + X @ X.T) / 2; covered = 0; k = ceil(budget_ratio * N) "
            "times add argmax_c sum_i max(0, S[i, c] - covered[i]) (ties: the lowest id), covered = max(covered, "
            "S[:, c]); past dense_limit rows each step scores ceil(N / k * ln(1 / epsilon)) candidates drawn by "
            "numpy.random.default_rng(seed).choice over the unpicked rows."),
    policy_reads=(FORWARD,),
    policy_vectors=(EMBEDDING,),
    dump_extra=dump_embedding,
)
